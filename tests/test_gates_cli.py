"""Every gate kind through the real CLI, on small real projects: one that passes, one that fails.

Each test builds a project folder from `tests/fixtures/gates_cli/<kind>/` (the flow, and for
some kinds a file the variant adds) and the fixture projects of `tests/fixtures/gates/` that
`tests/test_gates.py` measures in-process, runs `blocks run flow.yaml --json` in a subprocess,
and reads what the run recorded with `blocks bundle show RUN_ID --json`: the verdict, the
exit code (1 when a blocker does not pass, and the steps waiting for it are blocked), the
explanation a person reads, and the evidence (tool versions, digests of what was judged,
metrics, the `require` expression). The failing variants of the cheap kinds are judged again
by `blocks verify`, as CI does.

| kind | passes | fails |
| --- | --- | --- |
| contract | contract/good.json | contract/bad.json (4 violations) |
| coverage | covered/ plus coverage/pass/ (all of units.py tested) | covered/ (units.py half) |
| mutation | mutation_strong/ tests | mutation_weak/ tests (kill rate under 60 %) |
| security | scan_clean/ | scan_unsafe/ (`shell=True`) |
| review | `pass_score: 0.7` | `pass_score: 0.9`; a provider outage is inconclusive |
| metric | metrics/summary.json | metric/regressed.json |

mutmut runs for real (25 mutants generated, an evenly spaced 12 tested). The two mutation runs
are the slow part: each is a module-scoped fixture read by one test, so it runs once even when
pytest-xdist spreads the tests over workers, and those tests come first so that the rest fills
the other worker meanwhile. The projects' own pytest runs load no plugins they do not name
(`PYTEST_DISABLE_PLUGIN_AUTOLOAD`), which only saves start-up time.
The review uses the offline `local/...` provider; the outage is a route to a loopback port
that refuses connections. Nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Project

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GATES = FIXTURES / "gates"
"""The fixture projects tests/test_gates.py measures in-process."""
CLI = FIXTURES / "gates_cli"
"""The flows of this module, the step functions they call, and what a variant adds."""
FLOW = "flow.yaml"
VENV_BIN = str(Path(sys.executable).parent)
MUTATION_TIMEOUT = 300.0
"""Upper bound for one mutation run (mutmut is the slow part): only there so a hang fails."""
FAKE_KEY = "sk-gates-cli-0123456789abcdef"
"""The OpenAI key of the outage run: it exists only in this test, so a leak is told apart."""
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class GateProject(Project):
    """A project folder whose `blocks` calls see the test's environment without engine
    settings, API keys, proxies or the outer pytest's variables; the virtual environment's
    `python` (and so pytest-cov, mutmut and bandit) first on PATH."""

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in super().env().items()
            if not k.startswith(("BLOCKS_", "PYTEST_", "COV_"))
            and not k.endswith("_API_KEY")
            and k.lower() not in _PROXY_VARS
        }
        env.update(
            PATH=VENV_BIN + os.pathsep + env.get("PATH", ""),
            # the installed packages' bytecode is in the venv already
            PYTHONDONTWRITEBYTECODE="1",
            PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
            NO_PROXY="127.0.0.1,localhost",
        )
        env.update(extra)
        return env


@dataclass
class GateRun:
    """One `blocks run --json` and the bundle it left."""

    project: GateProject
    done: subprocess.CompletedProcess[str]
    outcome: dict[str, Any]
    bundle: dict[str, Any]

    @property
    def run_id(self) -> str:
        return str(self.outcome["run_id"])

    def gate(self, gate_id: str) -> dict[str, Any]:
        gate: dict[str, Any] = self.bundle["gates"][gate_id]
        return gate


# ---- helpers -------------------------------------------------------------------------


def make_project(
    root: Path,
    kind: str,
    copies: Mapping[str, str],
    variant: str | None = None,
    edits: Mapping[str, str] | None = None,
) -> GateProject:
    """A project: `gates_cli/<kind>/`'s flow and files, the `gates/` fixture folders in
    `copies` (source -> folder in the project), the variant's files on top, and the flow with
    each `edits` key replaced by its value (each must be there)."""
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "gates-cli"\nversion = "0"\n')
    shutil.copy2(CLI / "gatesteps.py", root / "gatesteps.py")
    for source, dest in copies.items():
        shutil.copytree(GATES / source, root / dest)
    for entry in (CLI / kind).iterdir():
        if entry.is_file():
            shutil.copy2(entry, root / entry.name)
    if variant is not None:
        shutil.copytree(CLI / kind / variant, root, dirs_exist_ok=True)
    flow = root / FLOW
    text = flow.read_text()
    for old, new in (edits or {}).items():
        assert old in text, f"{old!r} is not in {kind}/{FLOW}"
        text = text.replace(old, new)
    flow.write_text(text)
    return GateProject(root)


def finish_run(
    project: GateProject, done: subprocess.CompletedProcess[str], expect: int
) -> GateRun:
    """Check how `blocks run --json` ended and read its bundle with `blocks bundle show`."""
    assert done.returncode == expect, Project.explain(done)
    assert "Traceback" not in done.stdout + done.stderr
    outcome = json.loads(done.stdout)
    assert project.run_ids() == [outcome["run_id"]]
    show = project.blocks("bundle", "show", outcome["run_id"], "--json")
    assert show.returncode == 0, Project.explain(show)
    bundle = json.loads(show.stdout)
    assert bundle["intact"] is True, bundle["problems"]
    assert bundle["digest"] == outcome["bundle"]
    assert bundle["run"]["gates"] == outcome["gates"]
    assert bundle["run"]["status"] == outcome["status"]
    return GateRun(project, done, outcome, bundle)


def run_flow(project: GateProject, *args: str, expect: int, **env: str) -> GateRun:
    done = project.blocks("run", FLOW, "--json", "--log-format", "off", *args, env=env)
    return finish_run(project, done, expect)


def verify(project: GateProject, fmt: str = "json") -> subprocess.CompletedProcess[str]:
    """`blocks verify flow.yaml`: the gates judged again, now, as CI does."""
    done = project.blocks("verify", FLOW, "--format", fmt)
    assert "Traceback" not in done.stdout + done.stderr
    return done


def recorded(run: GateRun, gate_id: str, kind: str, status: str, require: str) -> dict[str, Any]:
    """The gate as the bundle records it, checked against the run's outcome."""
    gate = run.gate(gate_id)
    assert run.outcome["gates"] == {gate_id: status}
    assert gate["verdict"] == status
    assert gate["kind"] == kind
    assert gate["severity"] == "blocker"
    assert gate["require"] == require
    return gate


def passed(run: GateRun) -> None:
    assert run.outcome["status"] == "succeeded"
    assert all(s["status"] == "succeeded" for s in run.outcome["steps"].values())


def blocked(run: GateRun, step: str, gate_id: str) -> None:
    """The run failed because of the gate alone: every step ran but the one waiting for it."""
    assert run.outcome["status"] == "failed"
    steps = run.outcome["steps"]
    assert steps[step]["status"] == "blocked"
    assert steps[step]["reason"] == f"not run: gate {gate_id} did not pass"
    assert all(s["status"] == "succeeded" for sid, s in steps.items() if sid != step)


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def version(distribution: str) -> str:
    return importlib.metadata.version(distribution)


def line_of(path: Path, text: str) -> int:
    """The 1-based line of the first line of `path` that contains `text`."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} is not in {path}")


# ---- mutation (first: see the module docstring) ------------------------------------


MutationRun = tuple[GateProject, subprocess.CompletedProcess[str]]


def mutation_run(factory: pytest.TempPathFactory, variant: str) -> Iterator[MutationRun]:
    """The mutation flow on the `variant` tests (weak or strong): `blocks run`, once."""
    root = factory.mktemp(f"mutation-{variant}") / "project"
    project = make_project(root, "mutation", {f"mutation_{variant}": "shipping"})
    try:
        done = project.blocks(
            "run", FLOW, "--json", "--log-format", "off", timeout=MUTATION_TIMEOUT
        )
        yield project, done
    finally:
        project.cleanup()


# One fixture per variant, each read by one test: under pytest-xdist a module-scoped fixture
# runs once per worker that needs it, so a fixture two tests share may run twice.
@pytest.fixture(scope="module")
def weak_mutation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MutationRun]:
    yield from mutation_run(tmp_path_factory, "weak")


@pytest.fixture(scope="module")
def strong_mutation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MutationRun]:
    yield from mutation_run(tmp_path_factory, "strong")


def mutation_explanation(metrics: Mapping[str, Any], verdict: str) -> str:
    rate = metrics["kill_rate"]
    rated = metrics["killed"] + metrics["survived"] + metrics["timeout"]
    return (
        f"mutation: `kill_rate >= 0.60` {verdict}: kill_rate = {rate!r} (kill rate {rate:.2f}: "
        f"{metrics['killed']} of {rated} mutants killed ({metrics['survived']} survived, "
        f"{metrics['timeout']} timed out); {metrics['skipped']} excluded; 12 of 25 generated "
        "mutants run (budget 12 hit))"
    )


def check_mutmut_ran(run: GateRun, gate: Mapping[str, Any]) -> None:
    """mutmut ran for real, on a copy: its results are in the gate's workdir, not the project."""
    evidence = gate["evidence"]
    metrics = gate["metrics"]
    assert evidence["tool"] == "mutmut"
    assert evidence["mutmut_version"] == version("mutmut")
    assert evidence["paths"] == ["shipping/shipping.py"]
    assert evidence["tests"] == ["shipping/tests"]
    assert evidence["run_folder"] == "shipping"
    assert (evidence["generated"], evidence["budget"], evidence["budget_hit"]) == (25, 12, True)
    assert evidence["selection"] == "12 of 25 mutants, evenly spaced in source order"
    argv = evidence["run"]["argv"]
    assert Path(argv[0]).name == "mutmut"
    assert argv[1] == "run"
    assert len(argv) == 2 + 12  # the chosen mutants, by name
    assert evidence["run"]["exit_code"] == 0
    assert metrics["total"] == 12
    assert metrics["killed"] + metrics["survived"] + metrics["timeout"] + metrics["skipped"] == 12
    assert metrics["kill_rate"] == pytest.approx(
        metrics["killed"] / (metrics["killed"] + metrics["survived"] + metrics["timeout"])
    )
    assert evidence["by_status"].get("killed", 0) == metrics["killed"]
    assert len(evidence["survivors"]) == metrics["survived"]
    worktree = run.project.runs_dir / run.run_id / "gates" / "mutation" / "worktree"
    assert (worktree / "mutants" / "shipping.py.meta").is_file()
    assert not (run.project.root / "shipping" / "mutants").exists()


def test_mutation_weak_tests_fail_with_the_survivors_listed(weak_mutation: MutationRun) -> None:
    run = finish_run(*weak_mutation, expect=1)
    assert run.outcome["status"] == "failed"
    assert run.outcome["steps"]["test"]["status"] == "succeeded"  # the weak tests pass
    gate = recorded(run, "mutation", "mutation", "fail", "kill_rate >= 0.60")
    metrics = gate["metrics"]
    assert metrics["kill_rate"] < 0.60
    assert gate["explanation"] == mutation_explanation(metrics, "is false")
    check_mutmut_ran(run, gate)
    survivors = gate["evidence"]["survivors"]
    assert survivors
    lines = (run.project.root / "shipping" / "shipping.py").read_text().splitlines()
    for survivor in survivors:
        assert survivor["mutant"].startswith("shipping.x_")
        assert survivor["file"] == "shipping/shipping.py"
        assert survivor["function"] in ("shipping_cost", "free_shipping")
        assert survivor["diff"].startswith(
            "--- a/shipping/shipping.py\n+++ b/shipping/shipping.py\n"
        )
        removed = [
            line[1:]
            for line in survivor["diff"].splitlines()
            if line.startswith("-") and not line.startswith("---")
        ]
        # the survivor points at the source line its diff changes
        assert removed[0] == lines[survivor["line"] - 1], survivor


def test_mutation_strong_tests_pass(strong_mutation: MutationRun) -> None:
    run = finish_run(*strong_mutation, expect=0)
    passed(run)
    gate = recorded(run, "mutation", "mutation", "pass", "kill_rate >= 0.60")
    metrics = gate["metrics"]
    assert metrics["kill_rate"] >= 0.60
    assert metrics["killed"] >= 10
    assert gate["explanation"] == mutation_explanation(metrics, "holds")
    check_mutmut_ran(run, gate)
    # the evidence pins the module mutated and the tests that judged it: the weak and the
    # strong variants differ only in their tests, and their digests say so
    pinned = gate["evidence"]["inputs"]["by_file"]
    assert "shipping/shipping.py" in pinned
    assert any(path.startswith("shipping/") and "test" in path for path in pinned)


# ---- contract ------------------------------------------------------------------------


def test_contract_passes_an_artifact_that_meets_its_schema(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", "contract", {"contract": "contract"})
    run = run_flow(project, expect=0)
    passed(run)
    gate = recorded(run, "contract", "contract", "pass", "valid && violations == 0")
    assert gate["explanation"] == (
        "contract: `valid && violations == 0` holds: valid = True, violations = 0 "
        "(out/summary.json meets contract/summary.schema.json: no violations)"
    )
    assert gate["metrics"] == {"valid": True, "violations": 0}
    evidence = gate["evidence"]
    assert evidence["validator"] == f"jsonschema {version('jsonschema')}"
    assert evidence["dialect"] == "https://json-schema.org/draft/2020-12/schema"
    # the file the step wrote is the one judged
    assert evidence["artifact"] == "out/summary.json"
    assert evidence["artifact_sha256"] == sha256(GATES / "contract" / "good.json")
    assert evidence["artifact_sha256"] == run.outcome["steps"]["train"]["outputs"]["sha256"]
    assert evidence["schema_sha256"] == sha256(project.root / "contract" / "summary.schema.json")
    assert evidence["violations"] == []


def test_contract_fails_an_artifact_that_breaks_it_and_verify_agrees(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", "contract", {"contract": "contract"})
    run = run_flow(project, "-i", "summary=contract/bad.json", expect=1)
    blocked(run, "ship", "contract")
    gate = recorded(run, "contract", "contract", "fail", "valid && violations == 0")
    assert gate["explanation"] == (
        "contract: `valid && violations == 0` is false: valid = False, violations = 4 "
        "(4 violations of contract/summary.schema.json in out/summary.json; "
        "first at $: 'epochs' is a required property)"
    )
    assert gate["metrics"] == {"valid": False, "violations": 4}
    evidence = gate["evidence"]
    assert evidence["artifact_sha256"] == sha256(GATES / "contract" / "bad.json")
    assert evidence["validator"] == f"jsonschema {version('jsonschema')}"
    # every violation with its JSON path; two are checked through a $ref to a sibling file
    assert {v["path"]: (v["keyword"], v["pointer"]) for v in evidence["violations"]} == {
        "$": ("required", ""),
        "$.accuracy": ("maximum", "/accuracy"),
        "$.classes[1]": ("required", "/classes/1"),
        "$.model": ("pattern", "/model"),
    }

    checked = verify(project)
    assert checked.returncode == 1, Project.explain(checked)
    (row,) = json.loads(checked.stdout)
    assert (row["gate"], row["status"]) == ("contract", "fail")
    assert row["explanation"] == gate["explanation"]
    assert row["evidence"]["violations"] == evidence["violations"]


# ---- coverage ------------------------------------------------------------------------

COVERAGE_REQUIRE = "percent >= 80.0 && files_under_floor == 0"


def coverage_report(project: GateProject) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((project.root / "out" / "coverage.json").read_text())
    return report


def test_coverage_passes_when_every_file_is_tested(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", "coverage", {"covered": "covered"}, "pass")
    run = run_flow(project, expect=0)
    passed(run)
    report = coverage_report(project)
    lines = report["totals"]["num_statements"]
    gate = recorded(run, "coverage", "coverage", "pass", COVERAGE_REQUIRE)
    assert gate["explanation"] == (
        f"coverage: `{COVERAGE_REQUIRE}` holds: percent = 100.0, files_under_floor = 0 "
        f"(100.0 % of {lines} lines (branches 100.0 %); 0 files under the 80.0 % floor)"
    )
    assert gate["metrics"] == {
        "percent": 100.0,
        "branch_percent": 100.0,
        "lines_covered": lines,
        "lines_total": lines,
        "files_under_floor": 0,
    }
    assert run.outcome["steps"]["test"]["outputs"] == {"percent": 100.0}
    evidence = gate["evidence"]
    assert evidence["coverage_version"] == report["meta"]["version"] == version("coverage")
    assert evidence["report_sha256"] == sha256(project.root / "out" / "coverage.json")
    assert evidence["branch_coverage"] is True
    # the code is measured, not its tests (coverage.ini)
    assert evidence["percent_by_file"] == {"covered/geometry.py": 100.0, "covered/units.py": 100.0}
    assert evidence["files_under_floor"] == []


def test_coverage_fails_a_half_tested_file_and_verify_says_why(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", "coverage", {"covered": "covered"})
    run = run_flow(project, expect=1)
    assert run.outcome["status"] == "failed"
    assert run.outcome["steps"]["test"]["status"] == "succeeded"
    report = coverage_report(project)
    totals = report["totals"]
    percent = totals["percent_covered"]
    branches = totals.get(
        "percent_branches_covered", 100.0 * totals["covered_branches"] / totals["num_branches"]
    )
    units = report["files"]["covered/units.py"]["summary"]["percent_covered"]
    assert percent < 80.0
    assert units < 80.0
    gate = recorded(run, "coverage", "coverage", "fail", COVERAGE_REQUIRE)
    assert gate["explanation"] == (
        f"coverage: `{COVERAGE_REQUIRE}` is false: percent = {percent!r}, files_under_floor = 1 "
        f"({percent:.1f} % of {totals['num_statements']} lines (branches {branches:.1f} %); "
        f"1 file under the 80.0 % floor: covered/units.py {units:.1f} %)"
    )
    assert gate["metrics"]["percent"] == percent
    assert gate["metrics"]["lines_covered"] == totals["covered_lines"]
    assert gate["metrics"]["files_under_floor"] == 1
    evidence = gate["evidence"]
    assert evidence["coverage_version"] == version("coverage")
    assert evidence["report_sha256"] == sha256(project.root / "out" / "coverage.json")
    (under,) = evidence["files_under_floor"]
    source = project.root / "covered" / "units.py"
    assert (under["file"], under["percent"]) == ("covered/units.py", units)
    assert line_of(source, "return miles / 0.621371") in under["missing_lines"]
    assert line_of(source, "return km * 0.621371") not in under["missing_lines"]

    checked = verify(project, "text")
    assert checked.returncode == 1, Project.explain(checked)
    assert checked.stdout.splitlines() == [
        "✗ flow.yaml gate coverage (coverage, blocker): fail",
        f"    {gate['explanation']}",
        "1 gates: 0 passed, 1 blocking, 0 warnings",
    ]


# ---- security ------------------------------------------------------------------------

SECURITY_COPIES = {"scan_clean": "scan_clean", "scan_unsafe": "scan_unsafe"}


def test_security_passes_clean_code(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", "security", SECURITY_COPIES)
    run = run_flow(project, expect=0)
    passed(run)
    gate = recorded(run, "security", "security", "pass", "high == 0")
    assert gate["explanation"] == (
        "security: `high == 0` holds: high = 0 (0 findings: 0 high, 0 medium, 0 low)"
    )
    assert gate["metrics"] == {"high": 0, "medium": 0, "low": 0, "findings": 0}
    evidence = gate["evidence"]
    assert evidence["tool"] == "bandit"
    assert evidence["bandit_version"] == version("bandit")
    assert evidence["paths"] == ["out/app"]
    assert evidence["files_scanned"] == ["out/app/runner.py"]
    # the gate pins what it scanned, as the step that rendered it does
    scanned = sha256(GATES / "scan_clean" / "runner.py")
    assert run.outcome["steps"]["build"]["outputs"]["sha256"] == scanned
    assert evidence["inputs"]["by_file"] == {"out/app/runner.py": scanned}
    assert evidence["inputs"]["files"] == 1
    assert evidence["findings"] == []
    assert evidence["lines_scanned"] > 0
    assert evidence["run"]["exit_code"] == 0


def test_security_fails_a_shell_injection_and_verify_agrees(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", "security", SECURITY_COPIES)
    run = run_flow(project, "-i", "source=scan_unsafe/runner.py", expect=1)
    assert run.outcome["status"] == "failed"
    gate = recorded(run, "security", "security", "fail", "high == 0")
    line = line_of(project.root / "out" / "app" / "runner.py", "shell=True")
    assert gate["explanation"] == (
        "security: `high == 0` is false: high = 1 (2 findings: 1 high, 0 medium, 1 low; "
        f"first out/app/runner.py:{line} B602 (high): subprocess call with shell=True "
        "identified, security issue.)"
    )
    assert gate["metrics"] == {"high": 1, "medium": 0, "low": 1, "findings": 2}
    evidence = gate["evidence"]
    assert evidence["bandit_version"] == version("bandit")
    assert evidence["run"]["exit_code"] == 1  # bandit's "found something"
    assert evidence["files_scanned"] == ["out/app/runner.py"]
    assert run.outcome["steps"]["build"]["outputs"]["sha256"] == sha256(
        GATES / "scan_unsafe" / "runner.py"
    )
    first, second = evidence["findings"]
    assert (first["file"], first["line"], first["test_id"]) == ("out/app/runner.py", line, "B602")
    assert (first["severity"], first["confidence"], first["cwe"]) == ("HIGH", "HIGH", 78)
    assert (second["test_id"], second["severity"]) == ("B404", "LOW")

    checked = verify(project)
    assert checked.returncode == 1, Project.explain(checked)
    (row,) = json.loads(checked.stdout)
    assert (row["gate"], row["status"], row["metrics"]) == ("security", "fail", gate["metrics"])
    assert row["explanation"] == gate["explanation"]


# ---- review --------------------------------------------------------------------------

REVIEW_REQUIRE = "pass_rate >= 0.67"
LOCAL_ROUTE = "reviewer: {model: local/reviewer, params: {temperature: 0.3}}"


def check_review_inputs(run: GateRun, evidence: Mapping[str, Any]) -> None:
    root = run.project.root
    assert evidence["route"] == "reviewer"
    assert evidence["rubric"] == "review/rubric.md"
    assert evidence["rubric_sha256"] == sha256(root / "review" / "rubric.md")
    # what the step rendered is what was reviewed
    assert evidence["targets"] == {"out/interest.py": sha256(GATES / "review" / "interest.py")}
    assert evidence["prompt_sha256"].startswith("sha256:")
    assert evidence["samples_asked"] == 3


@pytest.mark.parametrize(
    ("pass_score", "verdict", "code"), [("0.7", "pass", 0), ("0.9", "fail", 1)]
)
def test_review_through_the_offline_provider(
    tmp_path: Path, pass_score: str, verdict: str, code: int
) -> None:
    """The local model scores 0.8 every time: a pass at `pass_score: 0.7`, a fail at 0.9."""
    project = make_project(
        tmp_path / "project",
        "review",
        {"review": "review"},
        edits={"pass_score: 0.7": f"pass_score: {pass_score}"},
    )
    run = run_flow(project, expect=code)
    assert run.outcome["status"] == ("succeeded" if verdict == "pass" else "failed")
    gate = recorded(run, "review", "review", verdict, REVIEW_REQUIRE)
    rate = 1.0 if verdict == "pass" else 0.0
    holds = "holds" if verdict == "pass" else "is false"
    assert gate["explanation"] == (
        f"review: `{REVIEW_REQUIRE}` {holds}: pass_rate = {rate!r} ({int(rate * 3)} of 3 "
        f"samples scored at least {pass_score} (mean 0.80, min 0.80); 0 findings)"
    )
    assert gate["metrics"] == {
        "pass_rate": rate,
        "score": pytest.approx(0.8),
        "min_score": 0.8,
        "samples": 3,
    }
    evidence = gate["evidence"]
    check_review_inputs(run, evidence)
    assert evidence["pass_score"] == float(pass_score)
    samples = evidence["samples"]
    assert [s["sample"] for s in samples] == [0, 1, 2]
    for sample in samples:
        assert sample["model_answered"].startswith("local/reviewer-")
        assert (sample["score"], sample["passed"], sample["findings"]) == (
            0.8,
            verdict == "pass",
            [],
        )
        assert sample["finish_reason"] == "stop"
    # the review's model calls are in the bundle's cost ledger and the run's cost
    calls = [c for c in run.bundle["ledger"]["calls"] if c.get("gate") == "review"]
    assert [c["sample"] for c in calls] == [0, 1, 2]
    assert all(c["model_answered"].startswith("local/reviewer-") for c in calls)
    tokens = sum(s["tokens"] for s in samples)
    assert tokens > 0
    assert run.bundle["run"]["cost"]["tokens"] == tokens
    assert run.bundle["ledger"]["models_answered"] == [samples[0]["model_answered"]]


def test_review_during_a_provider_outage_is_inconclusive(tmp_path: Path) -> None:
    # bound but not listening: a connection to it is refused at once
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        outage_route = (
            "reviewer:\n"
            "    model: openai/gpt-4o-mini\n"
            f'    params: {{api_base: "http://127.0.0.1:{port}/v1"}}\n'
            "    retry: {attempts: 1}\n"
            "    timeout: 10s"
        )
        project = make_project(
            tmp_path / "project", "review", {"review": "review"}, edits={LOCAL_ROUTE: outage_route}
        )
        run = run_flow(project, expect=1, OPENAI_API_KEY=FAKE_KEY)
    # a blocker that is inconclusive does not pass: the run fails
    assert run.outcome["status"] == "failed"
    gate = recorded(run, "review", "review", "inconclusive", REVIEW_REQUIRE)
    assert gate["explanation"].startswith(
        f"review: no data for pass_rate, so `{REVIEW_REQUIRE}` cannot pass (no review: route "
        "'reviewer' failed on sample 0: TransientProviderError: every model of route "
        "'reviewer' failed (openai/gpt-4o-mini)"
    )
    assert gate["metrics"] == {}
    evidence = gate["evidence"]
    check_review_inputs(run, evidence)
    assert evidence["reason"].startswith(
        "the provider failed on 3 of 3 samples, so the review is inconclusive: "
    )
    assert all("provider_error" in s and "score" not in s for s in evidence["samples"])
    # each provider attempt is recorded, so an error-rate alert sees the outage
    assert [(a["model_asked"], a["outcome"]) for a in evidence["attempts"]] == [
        ("openai/gpt-4o-mini", "transient")
    ] * 3
    (project.root / "alerts.yaml").write_text(
        "version: 1\nkind: alerts\nname: a\nrules:\n  down:\n    signal: error_rate\n"
        "    provider: openai\n    window: 1h\n    threshold: value > 0.5\n"
    )
    alerts = project.blocks("alerts", "check", "alerts.yaml", "--json")
    assert alerts.returncode == 1, project.explain(alerts)
    (rule,) = json.loads(alerts.stdout)["rules"]
    assert (rule["value"], rule["basis"]) == (1.0, "3 of 3 calls to openai failed")
    # the key is never recorded or shown
    journal = project.journal_path(run.run_id).read_text()
    shown = json.dumps(run.bundle) + run.done.stdout + run.done.stderr + journal
    assert FAKE_KEY not in shown


# ---- metric --------------------------------------------------------------------------

METRIC_REQUIRE = "accuracy >= 0.92 && !anneal_loss_flag"


def check_metric_sources(run: GateRun, evidence: Mapping[str, Any], accuracy: float) -> None:
    flag = evidence["metrics"]["anneal_loss_flag"]["value"]
    assert evidence["metrics"] == {
        "accuracy": {
            "type": "number",
            "value_template": "${{ steps.train.outputs.accuracy }}",
            "value": accuracy,
        },
        "anneal_loss_flag": {
            "type": "boolean",
            "file": "out/summary.json",
            "pointer": "/anneal_loss_flag",
            "value": flag,
        },
    }
    assert evidence["files"] == {"out/summary.json": sha256(run.project.root / "out/summary.json")}


def test_metric_passes_a_good_training_summary(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", "metric", {"metrics": "metrics"})
    run = run_flow(project, expect=0)
    passed(run)
    assert run.outcome["steps"]["train"]["outputs"] == {"accuracy": 0.943, "epochs": 12}
    gate = recorded(run, "promote", "metric", "pass", METRIC_REQUIRE)
    assert gate["explanation"] == (
        f"promote: `{METRIC_REQUIRE}` holds: accuracy = 0.943, anneal_loss_flag = False "
        "(accuracy = 0.943; anneal_loss_flag = false)"
    )
    assert gate["metrics"] == {"accuracy": 0.943, "anneal_loss_flag": False}
    check_metric_sources(run, gate["evidence"], 0.943)


def test_metric_fails_a_regressed_summary_and_verify_agrees(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", "metric", {"metrics": "metrics"})
    run = run_flow(project, "-i", "summary=regressed.json", expect=1)
    blocked(run, "release", "promote")
    gate = recorded(run, "promote", "metric", "fail", METRIC_REQUIRE)
    assert gate["explanation"] == (
        f"promote: `{METRIC_REQUIRE}` is false: accuracy = 0.874, anneal_loss_flag = True "
        "(accuracy = 0.874; anneal_loss_flag = true)"
    )
    assert gate["metrics"] == {"accuracy": 0.874, "anneal_loss_flag": True}
    check_metric_sources(run, gate["evidence"], 0.874)

    # verify reads the step output from the last run, and the file as it is now
    checked = verify(project)
    assert checked.returncode == 1, Project.explain(checked)
    (row,) = json.loads(checked.stdout)
    assert (row["gate"], row["status"]) == ("promote", "fail")
    assert row["explanation"] == gate["explanation"]
    assert row["evidence"] == gate["evidence"]
