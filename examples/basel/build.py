"""Render a Basel I capital-adequacy block (a module and its tests) from an attestation.

The `build` step of `pipelines/basel-attestation.yaml` calls `render_block` with the
attestation the `draft` step produced. Every attested value reaches the generated code as a
Python literal made by `repr()` of a checked number or identifier, never as code. Expected
values in the generated tests are computed here with exact fractions, independently of the
float arithmetic in the generated module.

Writes into `out_dir`:

    attestation.json            the attestation, canonical JSON (the contract gate's artifact)
    basel_capital.py            the block's logic
    tests/test_basel_capital.py its unit tests
    conftest.py                 puts `out_dir` on sys.path for pytest
    .coveragerc                 measure the module, not its tests
    README.md                   how the block is shown (its UI face)
    manifest.json               what was written, with digests
"""

from __future__ import annotations

import hashlib
import json
import math
from fractions import Fraction
from pathlib import Path
from string import Template
from typing import Any

import jsonschema

__all__ = ["MODULE_NAME", "render_block"]

MODULE_NAME = "basel_capital"
_HERE = Path(__file__).resolve().parent
_TEMPLATES = _HERE / "templates"
_DEFAULT_SCHEMA = _HERE.parents[1] / "schemas" / "contracts" / "attestation.schema.json"
_EXPOSURE = Fraction(1000)

_CONFTEST = '"""Puts this folder on sys.path (pytest does so for a conftest\'s folder)."""\n'
_COVERAGERC = "[run]\nbranch = True\nomit =\n    */tests/*\n    */conftest.py\n"


def render_block(
    attestation: dict[str, Any],
    out_dir: str = "out/basel",
    schema: str | None = None,
) -> dict[str, Any]:
    """Check `attestation`, write the block into `out_dir`, and return its manifest.

    Raises `jsonschema.ValidationError` if the attestation breaks its contract, and
    `ValueError` for what a schema cannot say (duplicate names, no positive weight, a
    Tier 1 minimum above the total minimum).
    """
    contract = json.loads(Path(schema).read_text() if schema else _DEFAULT_SCHEMA.read_text())
    jsonschema.Draft202012Validator(contract).validate(attestation)
    facts = _Facts(attestation)
    out = Path(out_dir)
    (out / "tests").mkdir(parents=True, exist_ok=True)
    canonical = json.dumps(attestation, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    files = {
        "attestation.json": json.dumps(attestation, indent=2, sort_keys=True, ensure_ascii=False)
        + "\n",
        f"{MODULE_NAME}.py": _render("module.py.tmpl", facts.module_fields(digest)),
        f"tests/test_{MODULE_NAME}.py": _render("test_module.py.tmpl", facts.test_fields(digest)),
        "conftest.py": _CONFTEST,
        ".coveragerc": _COVERAGERC,
        "README.md": _render("README.md.tmpl", facts.readme_fields(digest)),
    }
    for rel, text in files.items():
        (out / rel).write_text(text, encoding="utf-8")
    manifest = {
        "module": (out / f"{MODULE_NAME}.py").as_posix(),
        "module_dir": out.as_posix(),
        "tests_dir": (out / "tests").as_posix(),
        "coverage_config": (out / ".coveragerc").as_posix(),
        "attestation": (out / "attestation.json").as_posix(),
        "attestation_sha256": digest,
        "asset_classes": len(facts.weights),
        "off_balance_items": len(facts.factors),
        "files": {rel: hashlib.sha256(text.encode()).hexdigest() for rel, text in files.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _render(template: str, fields: dict[str, str]) -> str:
    return Template((_TEMPLATES / template).read_text(encoding="utf-8")).substitute(fields)


def _lit(value: Fraction | float) -> str:
    """A float literal that reads back to the nearest double of `value`."""
    return repr(float(value))


class _Facts:
    """The attested numbers as exact fractions, checked for what the schema cannot say."""

    def __init__(self, att: dict[str, Any]) -> None:
        self.att = att
        self.weights = _unique(att["risk_weights"], "asset_class", "weight")
        self.factors = _unique(att["credit_conversion_factors"], "item", "factor")
        self.total_min = Fraction(str(att["minimum_total_ratio"]["value"]))
        self.tier1_min = Fraction(str(att["minimum_tier1_ratio"]["value"]))
        self.tier2_limit = Fraction(str(att["tier2_limit_of_tier1"]["value"]))
        if max(w for w, _ in self.weights.values()) <= 0:
            raise ValueError("no asset class has a positive risk weight: no ratio can be computed")
        if self.tier1_min > self.total_min:
            raise ValueError("the Tier 1 minimum is above the total capital minimum")
        # the class with the largest weight (first attested on a tie) anchors the ratio cases
        self.probe = max(self.weights, key=lambda k: self.weights[k][0])
        self.probe_rwa = _EXPOSURE * self.weights[self.probe][0]
        # the class with the smallest positive weight owes the off-balance items, so a
        # weight of 1 cannot hide whether it multiplies or divides
        self.counterparty = min(
            (k for k, (w, _) in self.weights.items() if w > 0), key=lambda k: self.weights[k][0]
        )

    def _common(self, digest: str) -> dict[str, str]:
        att = self.att
        return {
            "digest": digest,
            "minimum_total_ratio": _lit(self.total_min),
            "minimum_tier1_ratio": _lit(self.tier1_min),
            "tier2_limit_of_tier1": _lit(self.tier2_limit),
            "total_basis": att["minimum_total_ratio"]["basis"],
            "tier1_basis": att["minimum_tier1_ratio"]["basis"],
            "tier2_basis": att["tier2_limit_of_tier1"]["basis"],
        }

    def module_fields(self, digest: str) -> dict[str, str]:
        return {
            **self._common(digest),
            "digest_literal": repr(digest),
            "institution": repr(self.att["institution"]),
            "as_of": repr(self.att["as_of"]),
            "risk_weights": _dict_body(self.weights),
            "conversion_factors": _dict_body(self.factors),
        }

    def readme_fields(self, digest: str) -> dict[str, str]:
        def table(rows: dict[str, tuple[Fraction, str]]) -> str:
            return "".join(f"| {k} | {float(v):.0%} | {b} |\n" for k, (v, b) in rows.items())

        return {
            **self._common(digest),
            "institution": self.att["institution"],
            "as_of": self.att["as_of"],
            "attested_by": self.att["attested_by"],
            "weights_table": table(self.weights),
            "factors_table": table(self.factors),
            "probe_class": repr(self.probe),
        }

    def test_fields(self, digest: str) -> dict[str, str]:
        owed = self.weights[self.counterparty][0]
        portfolio = [(k, float(_EXPOSURE * (i + 1))) for i, k in enumerate(self.weights)]
        off_balance = [(k, self.counterparty, float(_EXPOSURE)) for k in self.factors]
        portfolio_rwa = sum(
            (Fraction(amount) * self.weights[k][0] for k, amount in portfolio), Fraction(0)
        ) + sum((_EXPOSURE * f * owed for f, _ in self.factors.values()), Fraction(0))
        return {
            "digest": digest,
            "probe_class": repr(self.probe),
            "counterparty": repr(self.counterparty),
            "probe_rwa": _lit(self.probe_rwa),
            "tiny_ratio": _lit(1 / self.weights[self.probe][0]),
            "off_balance_cases": "".join(
                f"    ({k!r}, {_lit(_EXPOSURE * f * owed)}),\n"
                for k, (f, _) in self.factors.items()
                if f > 0
            ),
            "weight_cases": "".join(
                f"    pytest.param({k!r}, {_lit(w)}, id={f'{b}-{k}'!r}),\n"
                for k, (w, b) in self.weights.items()
            ),
            "factor_cases": "".join(
                f"    pytest.param({k!r}, {_lit(f)}, {_lit(_EXPOSURE * f * owed)}, "
                f"id={f'{b}-{k}'!r}),\n"
                for k, (f, b) in self.factors.items()
            ),
            "sorted_classes": repr(sorted(self.weights)),
            "sorted_items": repr(sorted(self.factors)),
            "portfolio": repr(portfolio),
            "off_balance": repr(off_balance),
            "portfolio_rwa": _lit(portfolio_rwa),
            "eligible_cases": self._eligible_cases(),
            "tier1_boundary": _boundary(self.tier1_min),
            "total_boundary": _boundary(self.total_min),
            "assess_cases": self._assess_cases(),
        }

    def _eligible_cases(self) -> str:
        tier1 = Fraction(100)
        cases = []
        for tier2 in (Fraction(0), tier1 * self.tier2_limit / 2, tier1 * self.tier2_limit * 3 + 1):
            eligible = tier1 + min(tier2, self.tier2_limit * tier1)
            cases.append(f"    ({_lit(tier1)}, {_lit(tier2)}, {_lit(eligible)}),\n")
        return "".join(cases)

    def _assess_cases(self) -> str:
        rwa = self.probe_rwa
        cases = []
        # comfortably adequate; Tier 1 short; total short with Tier 1 met (no Tier 2)
        for tier1, tier2 in (
            (rwa * self.total_min * 2, rwa * self.total_min),
            (rwa * self.tier1_min / 2, rwa * self.total_min * 4),
            (rwa * (self.tier1_min + self.total_min) / 2, Fraction(0)),
        ):
            t1_ratio = tier1 / rwa
            total_ratio = (tier1 + min(tier2, self.tier2_limit * tier1)) / rwa
            adequate = t1_ratio >= self.tier1_min and total_ratio >= self.total_min
            cases.append(
                f"    ({_lit(tier1)}, {_lit(tier2)}, {_lit(t1_ratio)}, {_lit(total_ratio)}, "
                f"{adequate}),\n"
            )
        return "".join(cases)


def _unique(rows: list[dict[str, Any]], key: str, value: str) -> dict[str, tuple[Fraction, str]]:
    """Rows as `{name: (value, basis)}`; a name attested twice is an error."""
    found: dict[str, tuple[Fraction, str]] = {}
    for row in rows:
        if row[key] in found:
            raise ValueError(f"{key} {row[key]!r} is attested twice")
        found[row[key]] = (Fraction(str(row[value])), row["basis"])
    return found


def _dict_body(rows: dict[str, tuple[Fraction, str]]) -> str:
    return "".join(f"    {k!r}: {_lit(v)},  # section {b}\n" for k, (v, b) in rows.items())


def _boundary(minimum: Fraction) -> str:
    """The minimum meets itself; the next double below it does not."""
    at = float(minimum)
    below = math.nextafter(at, 0.0)
    return f"    ({at!r}, True),\n    ({below!r}, False),\n"
