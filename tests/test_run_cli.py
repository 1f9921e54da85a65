"""`blocks run`, `plan`, `graph` and `runs` end to end: the real CLI in a subprocess, in a
project folder of its own, checked against what it printed and what it journaled."""

from __future__ import annotations

import base64
import collections
import json
import re
from typing import Any
from urllib.parse import quote, quote_plus

from conftest import Project, events, pid_gone, seq_of

TRICKY = (
    """it's "quoted"; echo PWNED > pwned1.txt; $(touch pwned2.txt) """
    """`touch pwned3.txt` $HOME \\n"""
)
"""Quotes, `;`, command substitution, backticks, a variable and a backslash: if any of it
reached a shell, a pwned file would appear or the text would change."""


def last_status(records: list[dict[str, Any]]) -> dict[str, str]:
    """Each step's final status as the journal tells it (whole steps, not fan-out items)."""
    status: dict[str, str] = {}
    names = {
        "step.succeeded": "succeeded",
        "step.failed": "failed",
        "step.skipped": "skipped",
        "step.blocked": "blocked",
        "step.cached": "cached",
        "step.cancelled": "cancelled",
    }
    for rec in records:
        event, step = rec.get("event"), rec.get("step")
        if event in names and rec.get("instance", step) == step:
            if event == "step.failed" and not rec.get("final", True):
                continue
            status[step] = names[event]
    return status


def assert_outcome_matches_journal(project: Project, out: dict[str, Any]) -> None:
    """`blocks run --json` says what the journal says: run id, status, outputs, each step."""
    run_id = out["run_id"]
    assert run_id in project.run_ids()
    records = project.journal(run_id)
    assert records[0]["event"] == "run.started"
    assert records[0]["run"] == run_id
    finished = events(records, "run.finished")
    assert len(finished) == 1
    assert finished[0]["status"] == out["status"]
    assert finished[0]["outputs"] == out["outputs"]
    assert last_status(records) == {
        sid: s["status"] for sid, s in out["steps"].items() if s["status"] != "pending"
    }
    for sid, step in out["steps"].items():
        if step["status"] == "succeeded":
            succeeded = events(records, "step.succeeded", sid, instance=sid)
            assert len(succeeded) == 1
            assert succeeded[0]["outputs"] == step["outputs"]
        elif step["status"] == "failed":
            failed = events(records, "step.failed", sid, instance=sid)
            assert failed[-1]["error"] == step["error"]


# ---- values through outputs and templates ----------------------------------------------


def test_values_pass_through_typed_outputs_and_templates(blocks_project: Project) -> None:
    done = blocks_project.blocks("run", "values.yaml", "--json", "-i", f"tricky={TRICKY}")
    assert done.returncode == 0, blocks_project.explain(done)
    out = json.loads(done.stdout)  # with --json, stdout is exactly one JSON document
    assert_outcome_matches_journal(blocks_project, out)

    assert out["status"] == "succeeded"
    # one argv element each: printf prints `<%s>` once per argument it got
    assert out["outputs"]["shown"] == f"<{TRICKY}><3>"
    # through env into a script: the value, byte for byte
    assert (blocks_project.root / "via_env.txt").read_text() == TRICKY
    assert not list(blocks_project.root.glob("pwned*")), "a value was run as shell code"
    # a whole-value template keeps the JSON type; a template inside text makes text
    assert out["outputs"]["types"] == {
        "n": "int",
        "flags": "list",
        "meta": "dict",
        "text": "str",
        "label": "str",
    }
    values = out["steps"]["types"]["outputs"]["values"]
    assert values == {
        "n": 3,
        "flags": [True, False],
        "meta": {"k": "v", "n": 3},
        "text": TRICKY,
        "label": "n=3",
    }
    # a shell step's JSON stdout gives typed outputs; CEL arithmetic on them stays typed
    assert out["steps"]["counted"]["outputs"] == {"count": 7, "label": "seven"}
    assert out["outputs"]["eight"] == 8


# ---- when, failures, continue_on_failure -----------------------------------------------


def test_when_false_skips_and_dependents_still_run(blocks_project: Project) -> None:
    out = blocks_project.run_json("when.yaml")
    assert_outcome_matches_journal(blocks_project, out)

    statuses = {sid: s["status"] for sid, s in out["steps"].items()}
    assert statuses == {
        "probe": "succeeded",
        "by_input": "skipped",
        "by_output": "skipped",
        "taken": "succeeded",
        "after_skips": "succeeded",
    }
    assert "when:" in out["steps"]["by_input"]["reason"]
    ran = {p.name for p in blocks_project.root.glob("*.ran")}
    assert ran == {"taken.ran", "after_skips.ran"}
    records = blocks_project.journal(out["run_id"])
    assert {r["step"] for r in events(records, "step.skipped")} == {"by_input", "by_output"}
    assert not events(records, "step.started", "by_input")


def test_failure_blocks_dependents_while_independent_branch_completes(
    blocks_project: Project,
) -> None:
    done = blocks_project.blocks("run", "failure.yaml")

    assert done.returncode == 1, blocks_project.explain(done)
    run_id = blocks_project.only_run_id()
    records = blocks_project.journal(run_id)
    assert last_status(records) == {
        "boom": "failed",
        "child": "blocked",
        "grandchild": "blocked",
        "side_a": "succeeded",
        "side_b": "succeeded",
    }
    failed = events(records, "step.failed", "boom")[0]
    assert "exited with code 3" in failed["error"]
    assert "kaput" in failed["error"]
    assert "'boom' did not succeed" in events(records, "step.blocked", "child")[0]["reason"]
    assert "'child' did not succeed" in events(records, "step.blocked", "grandchild")[0]["reason"]
    assert not events(records, "step.started", "child")
    assert not events(records, "step.started", "grandchild")
    # the branch finished after the failure: the failure cancelled nothing
    assert seq_of(records, "step.failed", "boom") < seq_of(records, "step.succeeded", "side_b")
    assert events(records, "run.finished")[0]["status"] == "failed"
    assert not (blocks_project.root / "child.ran").exists()
    assert (blocks_project.root / "side_b.ran").exists()
    assert "failed" in done.stdout
    assert f"--resume {run_id}" in done.stdout


def test_continue_on_failure_records_failure_and_runs_dependents(blocks_project: Project) -> None:
    out = blocks_project.run_json("tolerate.yaml")
    assert_outcome_matches_journal(blocks_project, out)

    assert out["status"] == "succeeded"
    assert out["steps"]["optional"]["status"] == "failed"
    assert "exited with code 4" in out["steps"]["optional"]["error"]
    assert out["steps"]["next"]["status"] == "succeeded"
    assert out["outputs"] == {"done": "succeeded"}
    failed = events(blocks_project.journal(out["run_id"]), "step.failed", "optional")
    assert len(failed) == 1
    assert failed[0]["tolerated"] is True


# ---- scheduling --------------------------------------------------------------------------


def test_for_each_fans_out_over_a_thousand_items(blocks_project: Project) -> None:
    out = blocks_project.run_json("fanout.yaml")

    square = out["steps"]["square"]
    assert square["status"] == "succeeded"
    # aggregated as lists, in item order (not completion order)
    assert out["outputs"]["squares"] == [i * i for i in range(1000)]
    assert square["outputs"]["sq"] == [i * i for i in range(1000)]
    # the step's own concurrency (10), not the flow's (200), bounds the instances in flight
    peak = max(square["outputs"]["peak"])
    assert 2 <= peak <= 10

    records = blocks_project.journal(out["run_id"])
    expanded = events(records, "step.expanded", "square")
    assert [r["items"] for r in expanded] == [1000]
    instances = [
        r["instance"]
        for r in events(records, "step.succeeded", "square")
        if r.get("instance", "square") != "square"
    ]
    assert len(instances) == 1000
    assert set(instances) == {f"square[{i}]" for i in range(1000)}
    whole = events(records, "step.succeeded", "square", instance="square")
    assert len(whole) == 1
    assert whole[0]["items"] == 1000


def test_steps_start_as_soon_as_their_needs_are_met(blocks_project: Project) -> None:
    out = blocks_project.run_json("eager.yaml")

    assert out["status"] == "succeeded"
    records = blocks_project.journal(out["run_id"])
    # short2 is on the second level; long is on the first and still running when it starts
    assert seq_of(records, "step.started", "long") < seq_of(records, "step.started", "short2")
    assert seq_of(records, "step.started", "short2") < seq_of(records, "step.succeeded", "long")
    assert seq_of(records, "step.succeeded", "short1") < seq_of(records, "step.started", "short2")
    assert seq_of(records, "step.succeeded", "long") < seq_of(records, "step.started", "long_next")


def test_flow_concurrency_limit_is_honoured(blocks_project: Project) -> None:
    out = blocks_project.run_json("limit.yaml")

    assert out["status"] == "succeeded"
    lines = (blocks_project.root / "concurrency.log").read_text().split("\n")
    active: set[str] = set()
    peak = 0
    for line in filter(None, lines):
        what, name = line.split()
        if what == "start":
            active.add(name)
            peak = max(peak, len(active))
        else:
            active.remove(name)
    assert not active
    assert sum(1 for line in lines if line.startswith("end ")) == 8
    assert peak == 3  # eight steps ready at once, limit 3: never more, and the limit is used


def test_flow_timeout_stops_the_run_as_timed_out(blocks_project: Project) -> None:
    done = blocks_project.blocks("run", "timeout.yaml", "--json")

    assert done.returncode == 1, blocks_project.explain(done)
    out = json.loads(done.stdout)
    assert_outcome_matches_journal(blocks_project, out)
    assert out["status"] == "timed_out"
    assert out["steps"]["nap"]["status"] == "cancelled"
    assert out["steps"]["after"]["status"] == "pending"
    records = blocks_project.journal(out["run_id"])
    assert events(records, "run.finished")[0]["status"] == "timed_out"
    assert events(records, "step.cancelled", "nap")
    assert not (blocks_project.root / "after.ran").exists()
    pid = blocks_project.read_pid("nap.pid")
    if pid is not None:  # the step got as far as starting its program
        blocks_project.kill_later(pid)
        assert pid_gone(pid), "the timed-out step's process outlived the run"


# ---- the outcome as JSON, the plan, the cache --------------------------------------------


def _plan_decisions(text: str) -> dict[str, str]:
    decisions = {}
    for line in text.splitlines():
        match = re.match(r"\s+\d+\s+(\w+)\s+\w+\s+needs: .*?\s{2,}(\S.*)$", line)
        if match:
            decisions[match.group(1)] = match.group(2)
    return decisions


def test_plan_shows_cached_steps_and_no_cache_runs_everything(blocks_project: Project) -> None:
    first = blocks_project.run_json("cached.yaml")
    assert blocks_project.side_effects() == {"first": 1, "volatile": 1}

    plan = blocks_project.blocks("plan", "cached.yaml")
    assert plan.returncode == 0, blocks_project.explain(plan)
    assert plan.stdout.startswith("plan for cached (cached.yaml): 3 steps")
    assert _plan_decisions(plan.stdout) == {
        "first": f"cached (from run {first['run_id']})",
        "second": f"cached (from run {first['run_id']})",
        "volatile": "runs (not cached: cache: false)",
    }
    assert blocks_project.run_ids() == [first["run_id"]], "plan must not run anything"

    fresh = blocks_project.run_json("cached.yaml", "--no-cache")
    assert {s: v["status"] for s, v in fresh["steps"].items()} == dict.fromkeys(
        ("first", "second", "volatile"), "succeeded"
    )
    assert blocks_project.side_effects() == {"first": 2, "volatile": 2}
    records = blocks_project.journal(fresh["run_id"])
    assert records[0]["use_cache"] is False
    assert not events(records, "step.cached")
    assert fresh["steps"]["first"]["outputs"] != first["steps"]["first"]["outputs"]


def test_cache_is_invalidated_when_an_upstream_result_changes(blocks_project: Project) -> None:
    data = blocks_project.root / "data.txt"
    data.write_text("one\n")
    first = blocks_project.run_json("invalidate.yaml")
    second = blocks_project.run_json("invalidate.yaml")
    assert second["steps"]["uses"]["status"] == "cached"
    assert second["steps"]["after_only"]["status"] == "cached"
    assert blocks_project.side_effects() == {"after_only": 1}

    data.write_text("two\n")
    third = blocks_project.run_json("invalidate.yaml")
    assert third["steps"]["uses"]["status"] == "succeeded"
    assert third["steps"]["uses"]["outputs"] == {"value": "two"}
    # reads nothing of src's result through a template: only the upstream digest changed
    assert third["steps"]["after_only"]["status"] == "succeeded"
    assert blocks_project.side_effects() == {"after_only": 2}
    assert first["steps"]["uses"]["outputs"] == {"value": "one"}


def test_cache_is_invalidated_when_an_upstream_shell_stdout_output_changes(
    blocks_project: Project,
) -> None:
    data = blocks_project.root / "data.txt"
    data.write_text("one\n")
    blocks_project.run_json("invalidate_shell.yaml")
    data.write_text("two\n")
    changed = blocks_project.run_json("invalidate_shell.yaml")
    assert changed["steps"]["src"]["outputs"] == {"text": "two"}
    assert changed["steps"]["after_only"]["status"] == "succeeded"


# ---- graph and runs ----------------------------------------------------------------------


def test_graph_as_mermaid_and_dot(blocks_project: Project) -> None:
    edges = {("boom", "child"), ("child", "grandchild"), ("side_a", "side_b")}
    steps = {"boom", "child", "grandchild", "side_a", "side_b"}

    mermaid, dot = blocks_project.blocks_parallel(
        ("graph", "failure.yaml", "--format", "mermaid"), ("graph", "failure.yaml", "-f", "dot")
    )
    assert mermaid.returncode == 0, blocks_project.explain(mermaid)
    lines = mermaid.stdout.splitlines()
    assert lines[0] == "flowchart TD"
    assert set(re.findall(r"^\s+(\w+) --> (\w+)$", mermaid.stdout, re.M)) == edges
    assert set(re.findall(r'^\s+(\w+)\["\1 \(shell\)"\]$', mermaid.stdout, re.M)) == steps

    assert dot.returncode == 0, blocks_project.explain(dot)
    assert dot.stdout.startswith('digraph "failure" {')
    assert dot.stdout.rstrip().endswith("}")
    assert set(re.findall(r'^\s+"(\w+)" -> "(\w+)";$', dot.stdout, re.M)) == edges
    assert set(re.findall(r'^\s+"(\w+)" \[label=', dot.stdout, re.M)) == steps


def test_runs_list_and_show(blocks_project: Project) -> None:
    ok_run, bad_run = blocks_project.blocks_parallel(
        ("run", "tolerate.yaml", "--json"), ("run", "failure.yaml", "--json")
    )
    assert ok_run.returncode == 0, blocks_project.explain(ok_run)
    assert bad_run.returncode == 1, blocks_project.explain(bad_run)
    ok, bad = json.loads(ok_run.stdout), json.loads(bad_run.stdout)
    ok_id, bad_id = ok["run_id"], bad["run_id"]

    listed, text, shown, shown_json = blocks_project.blocks_parallel(
        ("runs", "list", "--json"),
        ("runs", "list"),
        ("runs", "show", bad_id),
        ("runs", "show", ok_id, "--json"),
    )

    assert listed.returncode == 0, blocks_project.explain(listed)
    runs = {r["run_id"]: r for r in json.loads(listed.stdout)}
    assert {k: (v["flow"], v["status"]) for k, v in runs.items()} == {
        ok_id: ("tolerate", "succeeded"),
        bad_id: ("failure", "failed"),
    }

    assert text.returncode == 0, blocks_project.explain(text)
    rows = [line.split()[:4] for line in text.stdout.splitlines()]
    # a tolerated failure is not "done"
    assert sorted(rows) == sorted(
        [[ok_id, "succeeded", "tolerate", "1/2"], [bad_id, "failed", "failure", "2/5"]]
    )

    assert shown.returncode == 0, blocks_project.explain(shown)
    lines = shown.stdout.splitlines()
    assert lines[0] == f"run {bad_id}  flow failure (failure.yaml)  failed"
    assert lines[1] == "inputs: {}"
    rows = [line.split() for line in lines[2:]]
    table = {row[1]: row[2] for row in rows if len(row) >= 3 and row[0] in "✓✗·≡↷⊘…"}
    assert table == {sid: s["status"] for sid, s in bad["steps"].items()}
    assert table == {
        "boom": "failed",
        "child": "blocked",
        "grandchild": "blocked",
        "side_a": "succeeded",
        "side_b": "succeeded",
    }
    assert "'boom' did not succeed" in shown.stdout

    assert shown_json.returncode == 0, blocks_project.explain(shown_json)
    summary = json.loads(shown_json.stdout)
    assert summary["run_id"] == ok_id
    assert summary["status"] == "succeeded"
    assert summary["flow"] == "tolerate"
    assert summary["outputs"] == ok["outputs"]
    assert summary["in_flight"] == {}
    assert {s: (v["status"], v["outputs"]) for s, v in summary["steps"].items()} == {
        s: (v["status"], v["outputs"]) for s, v in ok["steps"].items()
    }


# ---- structured logs and secrets ---------------------------------------------------------

CANARY = "Canary-s3cr3t/Zx9+q=w&v@lue"


def _leak_forms(secret: str) -> set[str]:
    raw = secret.encode()
    forms = {secret, quote(secret, safe=""), quote_plus(secret)}
    for enc in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        forms |= {enc.decode(), enc.decode().rstrip("=")}
    return forms


def test_structured_logs_one_event_per_transition_and_no_secret_anywhere(
    blocks_project: Project,
) -> None:
    done = blocks_project.blocks("run", "secrets.yaml", env={"CANARY_TOKEN": CANARY})
    assert done.returncode == 0, blocks_project.explain(done)
    run_id = blocks_project.only_run_id()
    records = blocks_project.journal(run_id)

    # the step really did print the secret, in every form (masked on the way out)
    leak = events(records, "step.succeeded", "leak")[0]
    assert leak["outputs"]["shown"].count("***") >= 4

    logs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert logs, f"no structured log lines on stderr:\n{done.stderr}"
    assert all(log["run_id"] == run_id for log in logs)
    step_logs = [log for log in logs if log["event"].startswith("step.")]
    assert all("step_id" in log for log in step_logs)

    def key(event: str, step: str | None, instance: str | None) -> tuple[str, str, str]:
        return (event, step or "", instance or step or "")

    logged = collections.Counter(
        key(log["event"], log.get("step_id"), log.get("instance")) for log in logs
    )
    journaled = collections.Counter(
        key(r["event"], r.get("step"), r.get("instance")) for r in records
    )
    assert logged == journaled

    forms = _leak_forms(CANARY)
    haystacks = {"stdout": done.stdout, "stderr": done.stderr}
    state = blocks_project.root / ".blocks"
    files = [p for p in state.rglob("*") if p.is_file()]
    assert any(p.name == "stdout.log" for p in files)
    for path in files:
        haystacks[str(path.relative_to(state))] = path.read_bytes().decode("utf-8", "replace")
    for where, text in haystacks.items():
        for form in forms:
            assert form not in text, f"the secret leaked into {where} as {form!r}"
