"""Generate a large, valid `flow` spec for benchmarks, deterministically.

    python bench/gen_flow.py OUT_DIR [--steps 5000]

writes a small project into OUT_DIR: `pyproject.toml` (the project-root marker, so relative
paths in the flow resolve there), the prompt, system-prompt, rubric and schema files the flow
names, and `big.yaml`, the flow itself. The same arguments always give the same bytes.

The flow has the shape of a monorepo CI/release pipeline: for each module a chain of
checkout -> lint / test -> summarize (llm) -> package -> publish, application modules that
wait for the packages of a few core libraries, a report step per group of modules (fan-in),
a release-notes step over all reports and an announcement, plus gates of every kind. It uses
what real flows use: `${{ }}` templates in argv, env, `with` and `vars`; `when` conditions
over inputs and upstream outputs with `&&`, `||` and `!`; retries, timeouts, typed outputs,
secrets, `for_each`, model routes with fallbacks and budgets. Every step reads only steps it
transitively needs, so `blocks validate big.yaml` exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from collections.abc import Iterator
from typing import Any

__all__ = ["DEFAULT_STEPS", "generate_flow", "write_project"]

DEFAULT_STEPS = 5000
SEED = 5000
MODULES_PER_GROUP = 10
GATE_EVERY = 250  # steps between two gates
MIN_STEPS = 8

DOMAINS = (
    "billing", "orders", "search", "auth", "catalog", "payments", "inventory", "shipping",
    "ledger", "notify", "profile", "reports", "pricing", "tax", "fraud", "media", "sessions",
    "feeds", "quotas", "audit", "checkout", "reviews", "loyalty", "support",
)  # fmt: skip
COMPONENTS = (
    "api", "worker", "core", "client", "sync", "store", "index", "gateway", "jobs", "web",
    "events", "cache",
)  # fmt: skip
LIBRARIES = ("common", "telemetry", "storage", "httpkit", "schemas", "config", "testing", "crypto")

# ---------------------------------------------------------------------------------------
# a tiny YAML emitter: block style, flow style for short scalar lists and small mappings

_PLAIN_FLOW = re.compile(r"^[A-Za-z_/][\w./@-]*$")
_PLAIN_BLOCK = re.compile(r"^[A-Za-z_/][\w ./@()-]*[\w.)]$")
_DURATION = re.compile(r"^\d+(ms|s|m|h|d)$")
_RESERVED = {"true", "false", "null", "yes", "no", "on", "off", "y", "n"}
_WIDTH = 96


def _scalar(value: Any, *, flow: bool) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    plain = _PLAIN_FLOW if flow else _PLAIN_BLOCK
    if (
        plain.match(text) and text.lower() not in _RESERVED and ": " not in text
    ) or _DURATION.match(text):
        return text
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, dict | list)


def _emit(value: dict[str, Any], indent: int) -> Iterator[str]:
    pad = " " * indent
    for key, item in value.items():
        if isinstance(item, dict):
            inline = "{" + ", ".join(f"{k}: {_scalar(v, flow=True)}" for k, v in item.items()) + "}"
            if not item or (
                all(_is_scalar(v) for v in item.values())
                and len(item) <= 3
                and len(pad) + len(key) + len(inline) + 2 <= _WIDTH
            ):
                yield f"{pad}{key}: {inline}"
            else:
                yield f"{pad}{key}:"
                yield from _emit(item, indent + 2)
        elif isinstance(item, list):
            inline = "[" + ", ".join(_scalar(v, flow=True) for v in item) + "]"
            if all(_is_scalar(v) for v in item) and len(pad) + len(key) + len(inline) + 2 <= _WIDTH:
                yield f"{pad}{key}: {inline}"
            else:
                yield f"{pad}{key}:"
                for entry in item:
                    if isinstance(entry, dict):
                        lines = list(_emit(entry, indent + 4))
                        yield f"{pad}  - {lines[0].lstrip()}"
                        yield from lines[1:]
                    else:
                        yield f"{pad}  - {_scalar(entry, flow=False)}"
        else:
            yield f"{pad}{key}: {_scalar(item, flow=False)}"


# ---------------------------------------------------------------------------------------
# the flow


def _header(steps: int) -> dict[str, Any]:
    return {
        "version": 1,
        "kind": "flow",
        "name": f"monorepo-release-{steps}",
        "revision": "3.14.0",
        "owner": "platform-team",
        "description": f"Generated benchmark flow with {steps} steps: CI, packaging and release "
        "of a monorepo, one chain of steps per module.",
        "inputs": {
            "env": {
                "type": "string",
                "default": "staging",
                "enum": ["dev", "staging", "prod"],
                "description": "Target environment.",
            },
            "branch": {"type": "string", "default": "main"},
            "regions": {"type": "array", "default": ["eu-west-1", "us-east-1"]},
            "dry_run": {"type": "boolean", "default": False},
            "force": {"type": "boolean", "default": False},
            "shards": {"type": "integer", "default": 4},
            "max_findings": {"type": "integer", "default": 25},
            "min_coverage": {"type": "number", "default": 0.8},
            "threshold": {"type": "number", "default": 0.75},
            "release_tag": {"type": "string", "description": "Tag to cut, e.g. v2.3.0."},
        },
        "secrets": ["GITHUB_TOKEN", "SLACK_WEBHOOK", "REGISTRY_PASSWORD"],
        "models": {
            "drafter": {
                "model": "anthropic/claude-sonnet-4-5",
                "fallbacks": ["openai/gpt-4o", "local/echo"],
                "params": {"temperature": 0.2, "max_tokens": 2048},
                "timeout": "2m",
                "retry": {
                    "attempts": 4,
                    "backoff": "exponential",
                    "initial": "2s",
                    "max": "1m",
                    "on": ["timeout", "rate_limit", "server_error"],
                },
                "budget_usd": 40.0,
                "degrade_to": "cheap",
            },
            "reviewer": {
                "model": "anthropic/claude-opus-4",
                "params": {"temperature": 0.0},
                "budget_usd": 25.0,
                "degrade_to": "cheap",
            },
            "cheap": {"model": "local/echo"},
        },
        "limits": {
            "concurrency": 64,
            "budget_usd": 120.0,
            "budget_tokens": 50_000_000,
            "timeout": "6h",
        },
    }


def _retry(rng: random.Random, *, exit_code: bool) -> dict[str, Any]:
    retry: dict[str, Any] = {"attempts": rng.choice((2, 3, 5))}
    roll = rng.random()
    if roll < 0.15:
        retry["initial"] = rng.choice(("500ms", "1s", "5s"))
        retry["max"] = rng.choice(("30s", "2m"))
    if roll < 0.4:
        retry["on"] = ["timeout", "connection"] + (["exit_code"] if exit_code else [])
    return retry


class _Builder:
    def __init__(self, total: int) -> None:
        self.total = total
        self.cap = total  # add() refuses steps past this count
        self.rng = random.Random(SEED)
        self.steps: dict[str, dict[str, Any]] = {}
        self.gates: dict[str, dict[str, Any]] = {}
        self.libraries: list[str] = []  # modules whose package step others may wait for
        self.group: list[str] = []  # summarize steps of the current group
        self.reports: list[str] = []
        self.names: set[str] = set()

    def room(self) -> int:
        return self.total - len(self.steps)

    def add(self, sid: str, step: dict[str, Any]) -> bool:
        if len(self.steps) >= self.cap:
            return False
        self.steps[sid] = step
        if len(self.steps) % GATE_EVERY == 0:
            self.gate_after(sid)
        return True

    def module_name(self, index: int) -> str:
        rng = self.rng
        if index < len(LIBRARIES):
            return f"lib_{LIBRARIES[index]}"
        while True:
            name = f"{rng.choice(DOMAINS)}_{rng.choice(COMPONENTS)}"
            if name not in self.names:
                self.names.add(name)
                return name
            name = f"{name}_{index:03d}"
            if name not in self.names:
                self.names.add(name)
                return name

    # -- one module: 5 to 7 steps, each kind built by its own method ---------------------

    def module(self, index: int) -> None:
        mod = self.module_name(index)
        is_lib = mod.startswith("lib_")
        path = f"libs/{mod[4:]}" if is_lib else f"services/{mod.replace('_', '-')}"
        if not self.add(f"checkout_{mod}", self.checkout(path)):
            return
        self.add(f"lint_{mod}", self.lint(mod, path))
        if not self.add(f"test_{mod}", self.test(mod, path, is_lib=is_lib)):
            return
        if self.add(f"summarize_{mod}", self.summarize(mod)):
            self.group.append(f"summarize_{mod}")
        if not self.add(f"package_{mod}", self.package(mod, path)):
            return
        if is_lib:
            self.libraries.append(mod)
            return
        if self.rng.random() < 0.8:
            self.add(f"publish_{mod}", self.publish(mod))
        if self.rng.random() < 0.15:
            self.add(f"smoke_{mod}", self.smoke(mod))

    def checkout(self, path: str) -> dict[str, Any]:
        step: dict[str, Any] = {
            "kind": "shell",
            "run": ["git", "-C", path, "fetch", "origin", "${{ inputs.branch }}"],
            "outputs": {"sha": {"source": "stdout"}},
        }
        if self.rng.random() < 0.5:
            step["retry"] = _retry(self.rng, exit_code=True)
            step["timeout"] = "2m"
        return step

    def lint(self, mod: str, path: str) -> dict[str, Any]:
        rng = self.rng
        step: dict[str, Any] = {"kind": "shell", "needs": [f"checkout_{mod}"]}
        if rng.random() < 0.25:
            step["script"] = f"ruff check {path} --output-format json | jq length\n"
            step["env"] = {"SHA": f"${{{{ steps.checkout_{mod}.outputs.sha }}}}"}
            if rng.random() < 0.5:
                step["env"]["GITHUB_TOKEN"] = {"secret": "GITHUB_TOKEN"}
        else:
            step["run"] = ["./scripts/lint.sh", path, "${{ inputs.branch }}"]
        if rng.random() < 0.5:
            step["continue_on_failure"] = True
        step["outputs"] = {"findings": {"type": "integer"}}
        return step

    def test(self, mod: str, path: str, *, is_lib: bool) -> dict[str, Any]:
        rng = self.rng
        deps = (
            []
            if is_lib or not self.libraries
            else rng.sample(self.libraries, k=min(len(self.libraries), rng.choice((0, 1, 1, 2))))
        )
        with_: dict[str, Any] = {"path": path, "shards": "${{ inputs.shards }}"}
        if deps:
            with_["pins"] = {lib: f"${{{{ steps.package_{lib}.outputs.version }}}}" for lib in deps}
        step: dict[str, Any] = {
            "kind": "python",
            "needs": [f"checkout_{mod}"] + [f"package_{lib}" for lib in deps],
            "call": "ci.tasks:run_tests",
            "with": with_,
            "outputs": {
                "passed": {"type": "integer"},
                "failed": {"type": "integer"},
                "coverage": {"type": "number"},
            },
        }
        if rng.random() < 0.6:
            step["timeout"] = rng.choice(("10m", "15m", "30m"))
        if rng.random() < 0.2:
            step["pythonpath"] = ["ci"]
        if rng.random() < 0.4:
            step["retry"] = _retry(rng, exit_code=False)
        return step

    def summarize(self, mod: str) -> dict[str, Any]:
        rng = self.rng
        lint, test = f"lint_{mod}", f"test_{mod}"
        step: dict[str, Any] = {
            "kind": "llm",
            "needs": [lint, test],
            "when": f"steps.{test}.outputs.failed > 0 || "
            f"steps.{lint}.outputs.findings > inputs.max_findings",
            "model": "drafter",
            "prompt": "prompts/summarize.md",
            "vars": {
                "findings": f"${{{{ steps.{lint}.outputs.findings }}}}",
                "failed": f"${{{{ steps.{test}.outputs.failed }}}}",
            },
            "outputs": {"verdict": {}, "score": {"type": "number"}},
        }
        if rng.random() < 0.1:
            step["description"] = f"Explain the findings and failures of {mod}"
        if rng.random() < 0.3:
            step |= {
                "system": "prompts/system.md",
                "output_schema": "schemas/summary.schema.json",
                "reask": 2,
            }
        if rng.random() < 0.2:
            step["samples"] = 3
        return step

    def package(self, mod: str, path: str) -> dict[str, Any]:
        rng = self.rng
        test = f"test_{mod}"
        step: dict[str, Any] = {
            "kind": "shell",
            "needs": [test],
            "when": f"!inputs.dry_run && steps.{test}.outputs.failed == 0",
            "run": ["make", "-C", path, "package", "TAG=${{ inputs.release_tag }}"],
            "timeout": "20m",
            "outputs": {"version": {"source": "file", "file": f"{path}/VERSION"}, "digest": {}},
        }
        if rng.random() < 0.4:
            step["when"] += f" && steps.{test}.outputs.coverage >= inputs.min_coverage"
        if rng.random() < 0.5:
            step["env"] = {"REGISTRY_PASSWORD": {"secret": "REGISTRY_PASSWORD"}}
        if rng.random() < 0.5:
            step["retry"] = _retry(rng, exit_code=True)
        if rng.random() < 0.3:
            step["idempotent"] = False
        return step

    def publish(self, mod: str) -> dict[str, Any]:
        package, summarize = f"package_{mod}", f"summarize_{mod}"
        return {
            "kind": "python",
            "needs": [package, summarize] if summarize in self.steps else [package],
            "when": f"inputs.env != 'dev' && (steps.{package}.status == 'succeeded' || "
            "inputs.force)",
            "call": "ci.tasks.release:publish",
            "for_each": {"items": "${{ inputs.regions }}", "as": "region"},
            "with": {
                "digest": f"${{{{ steps.{package}.outputs.digest }}}}",
                "region": "${{ region }}",
            },
            "cache": self.rng.random() < 0.5,
            "outputs": {"url": {}},
        }

    def smoke(self, mod: str) -> dict[str, Any]:
        after = f"publish_{mod}" if f"publish_{mod}" in self.steps else f"package_{mod}"
        return {
            "kind": "shell",
            "needs": [after],
            "when": "inputs.env == 'prod' && size(inputs.regions) > 0",
            "run": ["./scripts/smoke.sh", mod, "${{ inputs.env }}"],
            "timeout": "3m",
            "retry": {
                "attempts": 3,
                "backoff": "constant",
                "initial": "10s",
                "on": ["exit_code", "timeout"],
            },
        }

    # -- fan-in steps and gates ---------------------------------------------------------

    def group_report(self) -> None:
        if not self.group:
            return
        sid = f"report_group_{len(self.reports) + 1:03d}"
        first = self.group[0]
        self.add(
            sid,
            {
                "kind": "llm",
                "description": f"Weekly report over {len(self.group)} modules",
                "needs": list(self.group),
                "when": f"size(inputs.regions) > 0 && steps.{first}.status != 'failed'",
                "model": "drafter",
                "prompt": "prompts/report.md",
                "vars": {
                    s.removeprefix("summarize_"): f"${{{{ steps.{s}.outputs.verdict }}}}"
                    for s in self.group
                },
                "outputs": {
                    "score": {"type": "number"},
                    "regressed": {"type": "boolean"},
                    "text": {"source": "result", "pointer": "/markdown"},
                },
            },
        )
        self.reports.append(sid)
        self.group = []

    def gate_after(self, sid: str) -> None:
        step = self.steps[sid]
        kinds = ("coverage", "metric", "security", "contract", "review", "mutation")
        kind = kinds[len(self.gates) % len(kinds)]
        gid = f"{kind}_{len(self.gates) + 1:02d}"
        gate: dict[str, Any] = {"kind": kind, "after": sid}
        if kind == "coverage":
            gate |= {
                "report": ".blocks/coverage.json",
                "file_floor": 60.0,
                "require": "percent >= 80.0 && files_under_floor == 0",
            }
        elif kind == "metric":
            numbers = [
                k
                for k, v in step.get("outputs", {}).items()
                if v.get("type") in ("number", "integer")
            ]
            source = (
                f"${{{{ steps.{sid}.outputs.{numbers[0]} }}}}"
                if numbers
                else f"${{{{ steps.{sid}.attempts }}}}"
            )
            gate |= {
                "metrics": {
                    "quality": {"type": "number", "value": source},
                    "flaky": {"type": "boolean", "file": ".blocks/flaky.json", "pointer": "/flaky"},
                },
                "baseline": {"channel": "prod"},
                "require": "quality >= baseline.quality - 0.02 && !flaky",
                "severity": "warn",
            }
        elif kind == "security":
            gate |= {"paths": ["services", "libs"], "require": "high == 0 && medium <= 3"}
        elif kind == "contract":
            gate |= {
                "artifact": ".blocks/summary.json",
                "schema": "schemas/summary.schema.json",
                "require": "valid",
            }
        elif kind == "review":
            gate |= {
                "model": "reviewer",
                "rubric": "rubrics/release.md",
                "target": ["CHANGELOG.md", "docs/release.md"],
                "samples": 3,
                "pass_score": 0.8,
                "require": "pass_rate >= 0.66 || min_score >= 0.9",
                "on_missing": "inconclusive",
            }
        else:
            gate |= {
                "paths": ["libs/common"],
                "tests": ["tests/unit", "-x"],
                "max_mutants": 150,
                "timeout": "15m",
                "require": "kill_rate >= 0.7 || total == 0",
            }
        self.gates[gid] = gate

    def build(self) -> dict[str, Any]:
        tail = 2  # release notes and the announcement
        index = 0
        while self.room() > tail:
            budget = self.room() - tail
            if len(self.group) == MODULES_PER_GROUP or (self.group and budget <= 1):
                self.group_report()
                continue
            # a module may be cut short, but leaves room for its group's report
            self.cap = len(self.steps) + budget - (1 if budget > 1 else 0)
            self.module(index)
            self.cap = self.total
            index += 1
        self.group_report()
        while self.room() > tail:  # only for tiny step counts
            self.add(f"noop_{self.room():04d}", {"kind": "shell", "run": ["true"]})
        self.release()
        return self.document()

    def release(self) -> None:
        reports = self.reports or [next(iter(self.steps))]
        self.add(
            "release_notes",
            {
                "kind": "llm",
                "description": "Draft the release notes from every group report",
                "needs": reports,
                "model": "drafter",
                "prompt": "prompts/release_notes.md",
                "vars": {
                    "tag": "${{ inputs.release_tag }}",
                    "env": "${{ inputs.env }}",
                    "run": "${{ run.id }}",
                },
                "timeout": "5m",
                "outputs": {
                    "markdown": {"source": "result", "pointer": "/markdown"},
                    "url": {"description": "link to the draft release"},
                },
            },
        )
        self.add(
            "announce",
            {
                "kind": "shell",
                "needs": ["release_notes"],
                "when": "inputs.env == 'prod' && !inputs.dry_run",
                "run": [
                    "./scripts/announce.sh",
                    "--tag",
                    "${{ inputs.release_tag }}",
                    "--notes=${{ steps.release_notes.outputs.url }}",
                ],
                "env": {"SLACK_WEBHOOK": {"secret": "SLACK_WEBHOOK"}},
                "retry": {"attempts": 3, "on": ["timeout", "connection", "exit_code"]},
                "cache": False,
            },
        )

    def document(self) -> dict[str, Any]:
        doc = _header(self.total)
        doc["steps"] = self.steps
        doc["gates"] = self.gates
        doc["outputs"] = {
            "release_notes": "${{ steps.release_notes.outputs.url }}",
            "summary": "released ${{ inputs.release_tag }} to ${{ inputs.env }} "
            "(run ${{ run.id }})",
        }
        return doc


def generate_flow(steps: int = DEFAULT_STEPS) -> str:
    """The YAML text of a valid flow with exactly `steps` steps."""
    if steps < MIN_STEPS:
        raise ValueError(f"need at least {MIN_STEPS} steps")
    doc = _Builder(steps).build()
    out = [f"# Generated by bench/gen_flow.py --steps {steps}. Do not edit.", ""]
    for key, value in doc.items():
        part = list(_emit({key: value}, 0))
        if key == "steps":  # a blank line between steps, as people write them
            spaced = [part[0]]
            for line in part[1:]:
                if line.startswith("  ") and not line.startswith("   ") and len(spaced) > 1:
                    spaced.append("")
                spaced.append(line)
            part = spaced
        out.extend(part)
        if key in ("description", "inputs", "secrets", "models", "limits", "steps", "gates"):
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


_FILES = {
    "pyproject.toml": '[project]\nname = "bench-monorepo"\nversion = "0.0.0"\n',
    "prompts/system.md": "You are a careful release engineer. Answer in JSON only.\n",
    "prompts/summarize.md": (
        "Module: ${{ vars.module }}\nLint findings: ${{ vars.findings }}\n"
        "Failed tests: ${{ vars.failed }}\n\nSay whether to ship, hold or block, and why.\n"
    ),
    "prompts/report.md": "Summarise these module verdicts for the weekly report.\n",
    "prompts/release_notes.md": "Write release notes for ${{ vars.tag }} (${{ vars.env }}).\n",
    "rubrics/release.md": "Score 1 if the notes mention every breaking change, else 0.\n",
    "schemas/summary.schema.json": json.dumps(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["verdict", "score"],
            "properties": {
                "verdict": {"enum": ["ship", "hold", "block"]},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
            },
        },
        indent=2,
    )
    + "\n",
}


def write_project(folder: str, steps: int = DEFAULT_STEPS, name: str = "big.yaml") -> str:
    """Write the flow and the files it names into `folder`; returns the flow's path."""
    for rel, content in _FILES.items():
        target = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(content)
    os.makedirs(os.path.join(folder, "ci"), exist_ok=True)  # the python steps' pythonpath
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(generate_flow(steps))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="project folder to write (created if missing)")
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"number of steps (default {DEFAULT_STEPS})",
    )
    args = parser.parse_args()
    path = write_project(args.folder, args.steps)
    print(f"{path}: {args.steps} steps, {os.path.getsize(path):,} bytes")


if __name__ == "__main__":
    main()
