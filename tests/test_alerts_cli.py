"""`blocks alerts check` through the real CLI, over a history made by real `blocks run`s.

One project per test process (`history`), made once: a gated flow run twice (its blocker
passes, then fails), a flow whose step fails, and an llm flow whose remote route (the fake
LLM server on loopback) fails its first call and answers the retry, beside an offline
`local/...` route. Every test then only reads that history, with alerts files of its own and
`--at` times taken from the journals (never from the clock).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import BLOCKS, CLI_TIMEOUT, Project, events

from engine.testing.fake_llm import FakeLLMServer

EPS = 0.001
"""Seconds either side of a recorded time: far above the microseconds --at can express."""

ALERTMODS = """
import json, os

def build(score, out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"score": score}, f)
    return {"score": score}
"""

GATED = """
version: 1
kind: flow
name: gated
inputs:
  score: {type: number, default: 0.95}
steps:
  build:
    kind: python
    cache: false
    call: alertmods:build
    with: {score: "${{ inputs.score }}", out: out/summary.json}
    outputs:
      score: {type: number}
gates:
  quality:
    kind: metric
    after: build
    metrics:
      score: {type: number, file: out/summary.json, pointer: /score}
    require: score >= 0.9
    severity: blocker
  advisory:
    kind: metric
    after: build
    metrics:
      score: {type: number, file: out/summary.json, pointer: /score}
    require: score >= 0.99
    severity: warn
"""

BROKEN = """
version: 1
kind: flow
name: broken
steps:
  boom:
    kind: shell
    run: [bash, -c, "exit 3"]
"""

PRICED = """
version: 1
kind: flow
name: priced
models:
  remote:
    model: openai/gpt-4o-mini
    params: {api_base: "__API_BASE__"}
    timeout: 30s
    retry: {attempts: 2, initial: 10ms, jitter: false}
  offline:
    model: local/deterministic
limits:
  budget_usd: 0.01
steps:
  ask:
    kind: llm
    model: remote
    prompt: prompts/ask.md
  ask_offline:
    kind: llm
    model: offline
    prompt: prompts/ask.md
"""

RUNBOOK = """
version: 1
kind: runbook
name: drill
params:
  flow: {type: string}
  channel: {type: string, default: prod}
steps:
  - id: announce
    do:
      kind: notify
      to: incidents.log
      message: "alert on ${{ params.flow }} (channel ${{ params.channel }})"
"""

DEFAULT_ALERTS = """
version: 1
kind: alerts
name: drill-alerts
rules:
  gates_failing:
    signal: gate_pass_rate
    flow: gated
    window: 1d
    threshold: value < 0.9
    runbook: runbooks/drill.yaml
    params: {flow: pipelines/gated.yaml, channel: prod}
    severity: page
  openai_down:
    signal: error_rate
    provider: openai
    window: 1d
    threshold: value >= 0.9
    runbook: runbooks/drill.yaml
    params: {flow: pipelines/priced.yaml}
"""


@dataclass
class History:
    project: Project
    runs: dict[str, str]
    """gated_pass, broken, gated_fail, priced -> run id."""

    def journal(self, name: str) -> list[dict[str, Any]]:
        return self.project.journal(self.runs[name])

    def finished(self, name: str) -> dict[str, Any]:
        found = events(self.journal(name), "run.finished")
        assert len(found) == 1, found
        return found[0]

    @property
    def end(self) -> float:
        """A moment just after the last run finished."""
        return max(float(self.finished(n)["t"]) for n in self.runs) + EPS


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _llm_env(root: Path) -> dict[str, str]:
    """No real keys, no proxies (loopback must not go through one), litellm's local prices."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BLOCKS_")
        and not k.endswith("_API_KEY")
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        and k != "PYTHONPYCACHEPREFIX"
    }
    env.update(
        PYTHONDONTWRITEBYTECODE="1",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        NO_PROXY="127.0.0.1,localhost",
        OPENAI_API_KEY="sk-fake-loopback-only",
    )
    return env


def _run_llm(root: Path, flow: str) -> subprocess.CompletedProcess[str]:
    """`blocks run FLOW` with the environment of `_llm_env` (no real keys, no proxies)."""
    return subprocess.run(
        [str(BLOCKS), "run", flow],
        cwd=root,
        env=_llm_env(root),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _new_run(project: Project, before: set[str]) -> str:
    (new,) = set(project.run_ids()) - before
    return new


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory, engine_pycache: Path) -> Iterator[History]:
    root = tmp_path_factory.mktemp("alerts") / "project"
    for folder in ("pipelines", "runbooks", "prompts", "alerts"):
        (root / folder).mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "alerts-fixture"\nversion = "0"\n')
    (root / "alertmods.py").write_text(ALERTMODS)
    (root / "pipelines" / "gated.yaml").write_text(GATED)
    (root / "pipelines" / "broken.yaml").write_text(BROKEN)
    (root / "prompts" / "ask.md").write_text("Say ok.\n")
    (root / "runbooks" / "drill.yaml").write_text(RUNBOOK)
    project = Project(root, engine_pycache)
    runs: dict[str, str] = {}
    try:
        for name, args, code in (
            ("gated_pass", ("pipelines/gated.yaml", "-i", "score=0.95"), 0),
            ("broken", ("pipelines/broken.yaml",), 1),
            ("gated_fail", ("pipelines/gated.yaml", "-i", "score=0.5"), 1),
        ):
            before = set(project.run_ids())
            done = project.blocks("run", *args)
            assert done.returncode == code, project.explain(done)
            runs[name] = _new_run(project, before)
        # the first call to the remote model fails (500), the gateway's retry is answered
        with FakeLLMServer(script=[{"when": {"request": 1}, "error": "server_error"}]) as server:
            priced = PRICED.replace("__API_BASE__", server.base_url)
            (root / "pipelines" / "priced.yaml").write_text(priced)
            before = set(project.run_ids())
            done = _run_llm(root, "pipelines/priced.yaml")
            assert done.returncode == 0, project.explain(done)
            assert server.status_counts == {500: 1, 200: 1}
        runs["priced"] = _new_run(project, before)
        (root / "pipelines" / "alerts.yaml").write_text(DEFAULT_ALERTS)
        yield History(project, runs)
    finally:
        project.cleanup()


def write_alerts(history: History, name: str, rules: str) -> str:
    """An alerts file of the test's own, under alerts/: its path relative to the project."""
    text = f"version: 1\nkind: alerts\nname: {name}\nrules:\n{rules}"
    (history.project.root / "alerts" / f"{name}.yaml").write_text(text)
    return f"alerts/{name}.yaml"


def check(history: History, *args: str, expect: int) -> dict[str, dict[str, Any]]:
    """`blocks alerts check ARGS --json`: check the exit code; the rules by id."""
    done = history.project.blocks("alerts", "check", *args, "--json")
    assert done.returncode == expect, history.project.explain(done)
    return {r["rule"]: r for r in json.loads(done.stdout)["rules"]}


# ---- firing: exit 1 and the runbook to dry-run ---------------------------------------------


def test_default_files_fire_and_print_the_runbook_command_that_works(history: History) -> None:
    project = history.project
    done = project.blocks("alerts", "check", "--at", iso(history.end))
    assert done.returncode == 1, project.explain(done)
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "FIRING" in rows["gates_failing"]
    assert " ok " in rows["openai_down"]
    command = (
        "blocks runbook run runbooks/drill.yaml -p flow=pipelines/gated.yaml "
        "-p channel=prod --dry-run"
    )
    assert f"    {command}\n" in done.stdout
    assert "FIRING gates_failing (page, drill-alerts in pipelines/alerts.yaml)" in done.stdout
    assert done.stdout.rstrip().endswith("1 firing, 1 ok, 0 no data")

    # the suggested command is the exact command: it runs, as a dry run
    argv = shlex.split(command)
    dry = project.blocks(*argv[1:])
    assert dry.returncode == 0, project.explain(dry)
    assert "pipelines/gated.yaml" in dry.stdout
    assert not (project.root / "incidents.log").exists()  # a dry run changes nothing


def test_json_has_every_field_and_the_same_verdicts(history: History) -> None:
    done = history.project.blocks("alerts", "check", "--at", iso(history.end), "--json")
    assert done.returncode == 1, history.project.explain(done)
    report = json.loads(done.stdout)
    assert report["at"] == iso(history.end)
    assert report["firing"] == 1
    assert report["skipped"] == []
    gates = next(r for r in report["rules"] if r["rule"] == "gates_failing")
    assert gates == {
        "file": "pipelines/alerts.yaml",
        "alerts": "drill-alerts",
        "rule": "gates_failing",
        "severity": "page",
        "signal": "gate_pass_rate",
        "flow": "gated",
        "provider": None,
        "window": 86400.0,
        "value": 0.5,
        "basis": "1 of 2 runs of gated passed every blocker",
        "threshold": "value < 0.9",
        "status": "firing",
        "runbook": "runbooks/drill.yaml",
        "params": {"flow": "pipelines/gated.yaml", "channel": "prod"},
        "command": "blocks runbook run runbooks/drill.yaml -p flow=pipelines/gated.yaml "
        "-p channel=prod --dry-run",
        "needs": [],
    }


def test_params_the_alert_cannot_know_are_named(history: History) -> None:
    runbook = history.project.root / "runbooks" / "needs_run.yaml"
    runbook.write_text(
        RUNBOOK.replace("name: drill", "name: needs-run").replace(
            "params:\n", "params:\n  run_id: {type: string, description: The failed run.}\n"
        )
    )
    path = write_alerts(
        history,
        "needs",
        "  g:\n    signal: gate_pass_rate\n    flow: gated\n    window: 1h\n"
        "    threshold: value < 0.9\n    runbook: runbooks/needs_run.yaml\n"
        "    params: {flow: pipelines/gated.yaml}\n",
    )
    assert check(history, path, "--at", iso(history.end), expect=1)["g"]["needs"] == ["run_id"]
    done = history.project.blocks("alerts", "check", path, "--at", iso(history.end))
    assert done.returncode == 1, history.project.explain(done)
    command = "blocks runbook run runbooks/needs_run.yaml -p flow=pipelines/gated.yaml --dry-run"
    assert (
        f"    {command}\n  add -p run_id=VALUE (the alert cannot know it): The failed run.\n"
    ) in done.stdout
    # without it the suggested command is refused; with it, it runs
    argv = shlex.split(command)[1:]
    refused = history.project.blocks(*argv)
    assert refused.returncode == 2, history.project.explain(refused)
    assert "param 'run_id' is required" in refused.stderr
    given = history.project.blocks(*argv, "-p", f"run_id={history.runs['gated_fail']}")
    assert given.returncode == 0, history.project.explain(given)


# ---- each signal ---------------------------------------------------------------------------


def test_gate_pass_rate_counts_blockers_only_over_the_window_edges(history: History) -> None:
    path = write_alerts(
        history,
        "gates",
        "  g:\n    signal: gate_pass_rate\n    flow: gated\n    window: 1h\n"
        "    threshold: value < 0.9\n",
    )
    t_pass = float(history.finished("gated_pass")["t"])
    t_fail = float(history.finished("gated_fail")["t"])
    assert t_fail - t_pass > 4 * EPS
    expected = [
        (t_pass - EPS, None, 0),  # the passing run had not finished yet
        (t_pass + EPS, 1.0, 0),  # the failed warn gate does not count
        (t_fail - EPS, 1.0, 0),
        (t_fail + EPS, 0.5, 1),
        (t_pass + 3600 - EPS, 0.5, 1),  # the window still holds the passing run
        (t_pass + 3600 + EPS, 0.0, 1),  # it has left the window
        (t_fail + 3600 + EPS, None, 0),  # so has the failed one
    ]
    for at, value, code in expected:
        rule = check(history, path, "--at", iso(at), expect=code)["g"]
        assert rule["value"] == value, (at, rule)
        assert rule["status"] == {None: "no data", 1.0: "ok"}.get(value, "firing"), rule


def test_latency_p95_of_finished_runs(history: History) -> None:
    path = write_alerts(
        history,
        "latency",
        "  gated_slow:\n    signal: latency_p95\n    flow: gated\n    window: 1d\n"
        "    threshold: value > 1000.0\n"
        "  broken_slow:\n    signal: latency_p95\n    flow: broken\n    window: 1d\n"
        "    threshold: value > 0.0\n",
    )
    rules = check(history, path, "--at", iso(history.end), expect=1)
    durations = [history.finished(n)["duration"] for n in ("gated_pass", "gated_fail")]
    # two runs: the nearest-rank 95th percentile is the slower one; failed runs count
    assert rules["gated_slow"]["value"] == max(durations)
    assert rules["gated_slow"]["status"] == "ok"
    assert rules["broken_slow"]["value"] == history.finished("broken")["duration"]
    assert rules["broken_slow"]["status"] == "firing"
    assert rules["broken_slow"]["basis"] == "p95 of 1 run of broken"


def _recorded_cost(history: History, name: str) -> float:
    return sum(r.get("cost_usd") or 0.0 for r in events(history.journal(name), "step.succeeded"))


def test_cost_and_budget_burn_rate(history: History) -> None:
    path = write_alerts(
        history,
        "spend",
        "  priced_cost:\n    signal: cost_usd\n    flow: priced\n    window: 1h\n"
        "    threshold: value > 100.0\n"
        "  priced_burn:\n    signal: budget_burn_rate\n    flow: priced\n    window: 1h\n"
        "    threshold: value > 0.0\n"
        "  gated_cost:\n    signal: cost_usd\n    flow: gated\n    window: 1h\n"
        "    threshold: value > 0.0\n"
        "  gated_burn:\n    signal: budget_burn_rate\n    flow: gated\n    window: 1h\n"
        "    threshold: value >= 0.0\n",
    )
    rules = check(history, path, "--at", iso(history.end), expect=1)
    cost = _recorded_cost(history, "priced")
    assert cost > 0  # litellm priced the remote call from its local price table
    assert rules["priced_cost"]["value"] == pytest.approx(cost)
    assert rules["priced_cost"]["status"] == "ok"
    # one run, budget_usd 0.01 per run
    assert rules["priced_burn"]["value"] == pytest.approx(cost / 0.01)
    assert rules["priced_burn"]["status"] == "firing"
    # python steps cost nothing: 0, not "no data"; a flow without a budget has no burn rate
    assert (rules["gated_cost"]["value"], rules["gated_cost"]["status"]) == (0.0, "ok")
    assert (rules["gated_burn"]["value"], rules["gated_burn"]["status"]) == (None, "no data")
    assert rules["gated_burn"]["basis"].startswith("no budget")
    # the budget is the one the run had (its run.started record), not the file's today
    assert events(history.journal("priced"), "run.started")[0]["budget_usd"] == 0.01
    flow = history.project.root / "pipelines" / "priced.yaml"
    original = flow.read_text()
    try:
        flow.write_text(original.replace("budget_usd: 0.01", "budget_usd: 5.0"))
        again = check(history, path, "--at", iso(history.end), expect=1)
    finally:
        flow.write_text(original)
    assert again["priced_burn"]["value"] == pytest.approx(cost / 0.01)


def test_error_rate_per_provider_from_recorded_attempts(history: History) -> None:
    path = write_alerts(
        history,
        "errors",
        "".join(
            f"  {rid}:\n    signal: error_rate\n    provider: {provider}\n"
            f"{flow}    window: 1h\n    threshold: value >= 0.0\n"
            for rid, provider, flow in (
                ("openai", "openai", ""),
                ("local", "local", ""),
                ("anthropic", "anthropic", ""),
                ("openai_of_gated", "openai", "    flow: gated\n"),
            )
        ),
    )
    step = events(history.journal("priced"), "step.succeeded", "ask")[0]
    assert [a["outcome"] for a in step["detail"]["attempts"]] == ["transient", "ok"]
    rules = check(history, path, "--at", iso(history.end), expect=1)
    assert (rules["openai"]["value"], rules["openai"]["status"]) == (0.5, "firing")
    assert rules["openai"]["basis"] == "1 of 2 calls to openai failed"
    assert (rules["local"]["value"], rules["local"]["status"]) == (0.0, "firing")
    for rid in ("anthropic", "openai_of_gated"):
        assert (rules[rid]["value"], rules[rid]["status"]) == (None, "no data"), rules[rid]
    # calls are timed by their step's record: before the first one, there were none
    first = min(float(r["t"]) for r in events(history.journal("priced"), "step.succeeded"))
    rules = check(history, path, "--at", iso(first - EPS), expect=0)
    assert {r["status"] for r in rules.values()} == {"no data"}


def test_error_rate_counts_an_outage_in_which_every_call_fails(
    tmp_path: Path, engine_pycache: Path
) -> None:
    """The case an error-rate alert exists for: no model of the route answers, the step
    fails, and its failed attempt's record still lists every call it made."""
    root = tmp_path / "project"
    (root / "pipelines").mkdir(parents=True)
    (root / "prompts").mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "outage"\nversion = "0"\n')
    (root / "prompts" / "ask.md").write_text("Say ok.\n")
    project = Project(root, engine_pycache)
    with FakeLLMServer(script=[{"error": "server_error"}]) as server:
        flow = PRICED.replace("__API_BASE__", server.base_url).replace("name: priced", "name: down")
        (root / "pipelines" / "down.yaml").write_text(flow)
        done = _run_llm(root, "pipelines/down.yaml")
        assert done.returncode == 1, project.explain(done)
        calls = server.status_counts[500]
    assert calls >= 2  # the route's retry was tried
    (root / "alerts.yaml").write_text(
        "version: 1\nkind: alerts\nname: outage\nrules:\n"
        "  openai_down:\n    signal: error_rate\n    provider: openai\n"
        "    window: 1h\n    threshold: value >= 0.5\n    severity: page\n"
    )
    checked = project.blocks("alerts", "check", "alerts.yaml", "--json")
    assert checked.returncode == 1, project.explain(checked)
    (rule,) = json.loads(checked.stdout)["rules"]
    assert (rule["value"], rule["status"]) == (1.0, "firing")
    assert rule["basis"] == f"{calls} of {calls} calls to openai failed"


def test_no_data_never_fires(history: History) -> None:
    """Thresholds true for every value: only "no data" keeps them quiet."""
    path = write_alerts(
        history,
        "quiet",
        "".join(
            f"  {signal}:\n    signal: {signal}\n    flow: gated\n    window: 1h\n"
            "    threshold: value >= 0.0 || value < 0.0\n"
            for signal in ("latency_p95", "gate_pass_rate", "cost_usd", "budget_burn_rate")
        ),
    )
    first = float(events(history.journal("gated_pass"), "run.started")[0]["t"])
    rules = check(history, path, "--at", iso(first - EPS), expect=0)
    assert {r["status"] for r in rules.values()} == {"no data"}
    assert {r["value"] for r in rules.values()} == {None}
    done = history.project.blocks("alerts", "check", path, "--at", iso(first - EPS))
    assert done.returncode == 0
    assert "0 firing, 0 ok, 4 no data" in done.stdout


# ---- bad input -----------------------------------------------------------------------------


def test_bad_yaml_points_at_file_line_col(history: History) -> None:
    bad = history.project.root / "alerts" / "bad_yaml.yaml"
    bad.write_text("version: 1\nkind: alerts\nname: x\nrules:\n  r: {signal: [unclosed\n")
    done = history.project.blocks("alerts", "check", "alerts/bad_yaml.yaml")
    assert done.returncode == 1, history.project.explain(done)
    assert re.search(r"alerts/bad_yaml\.yaml:\d+:\d+: error\[", done.stderr), done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_bad_rule_points_at_the_field(history: History) -> None:
    path = write_alerts(
        history,
        "bad_rule",
        "  r:\n    signal: error_rte\n    window: 1h\n    threshold: value > 1.0\n",
    )
    done = history.project.blocks("alerts", "check", path)
    assert done.returncode == 1, history.project.explain(done)
    assert f"{path}:6:13: error[" in done.stderr, done.stderr
    assert "error_rate" in done.stderr  # what was expected
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("pipelines/gated.yaml",), "is a flow document, not kind: alerts"),
        (("nowhere.yaml",), "no such file or folder: nowhere.yaml"),
        (("prompts",), "no `kind: alerts` file under prompts"),
        (("--at", "2026-11-01T00:00:00"), "say which time zone"),
        (("--at", "yesterday"), "expected ISO 8601"),
    ],
)
def test_usage_errors_exit_2(history: History, args: tuple[str, ...], message: str) -> None:
    done = history.project.blocks("alerts", "check", *args)
    assert done.returncode == 2, history.project.explain(done)
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_corrupt_journal_is_skipped_with_a_warning(
    history: History, tmp_path: Path, engine_pycache: Path
) -> None:
    """A copy of the project whose failing gated run has a damaged record mid-journal."""
    root = tmp_path / "copy"
    shutil.copytree(history.project.root, root)
    copy = Project(root, engine_pycache)
    journal = copy.journal_path(history.runs["gated_fail"])
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"event"', b'"evenT"')  # the checksum no longer matches
    journal.write_bytes(b"".join(lines))

    done = copy.blocks("alerts", "check", "--at", iso(history.end), "--json")
    assert done.returncode == 0, copy.explain(done)  # the failing run is not counted
    report = json.loads(done.stdout)
    assert len(report["skipped"]) == 1
    assert report["skipped"][0].startswith(history.runs["gated_fail"] + ": ")
    assert "checksum mismatch" in report["skipped"][0]
    assert "warning: skipped an unreadable journal" in done.stderr
    gates = next(r for r in report["rules"] if r["rule"] == "gates_failing")
    assert (gates["value"], gates["status"]) == (1.0, "ok")
