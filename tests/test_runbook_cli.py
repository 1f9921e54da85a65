"""Runbooks through the CLI: the five core runbooks end to end (rehearsed and live), verify
failures that abort and undo in reverse, approvals that block until given, a dry run that
changes nothing, and kill -9 mid-runbook then --resume."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BLOCKS, Project, wait_for
from tests.test_channels_cli import (
    Template,
    channels,
    history,
    release_run,
    setup_release,
    two_runs,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ops(blocks_project: Project, release_template: Template) -> Project:
    """A project with the release flow, the five core runbooks, and prod serving the second
    of two good bundles."""
    setup_release(blocks_project)
    blocks_project.template = release_template  # type: ignore[attr-defined]
    shutil.copytree(REPO / "runbooks", blocks_project.root / "runbooks")
    return blocks_project


def promote_two(project: Project) -> tuple[dict[str, Any], dict[str, Any]]:
    a, b = two_runs(project)
    for run in (a, b):
        done = project.blocks("promote", run["run_id"], "-c", "prod")
        assert done.returncode == 0, project.explain(done)
    return a, b


def regress(project: Project) -> None:
    """What a regression looks like to a watcher: the artifact the gate reads went bad."""
    (project.root / "out" / "summary.json").write_text('{"score": 0.5}')


def runbook(project: Project, *args: str, expect: int = 0) -> dict[str, Any]:
    done = project.blocks("runbook", "run", *args, "--json")
    assert done.returncode == expect, project.explain(done)
    return json.loads(done.stdout)


def journal(project: Project, run_id: str) -> list[dict[str, Any]]:
    done = project.blocks("runbook", "show", run_id, "--json")
    assert done.returncode == 0, project.explain(done)
    return list(json.loads(done.stdout))


def state_digest(root: Path) -> str:
    """Every file under `.blocks` (name and bytes) and the overrides: one digest."""
    h = hashlib.sha256()
    base = root / ".blocks"
    for path in sorted(base.rglob("*")) if base.exists() else []:
        if path.is_file():
            h.update(str(path.relative_to(base)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


# ---- the five core runbooks ------------------------------------------------------------


def test_provider_outage_rehearsed_changes_only_the_sandbox(ops: Project) -> None:
    a, b = promote_two(ops)
    regress(ops)
    before = state_digest(ops.root)
    out = runbook(
        ops,
        "runbooks/provider-outage.yaml",
        "-p",
        "provider=anthropic",
        "-p",
        "notify=incidents.log",
        "--rehearse",
        "--approve-as",
        "bob",
    )
    assert out["status"] == "succeeded", out
    assert out["mode"] == "rehearsal"
    steps = out["steps"]
    assert steps["open_circuit"]["status"] == "succeeded"
    assert steps["check_quality"]["status"] == "failed"  # the regression, seen by the gate
    assert steps["rollback"]["result"]["bundle"] == a["bundle"]
    assert steps["escalate"]["status"] == "skipped"
    # production state: untouched (the rehearsal lives under .blocks/rehearsals/)
    assert channels(ops)["prod"] == {
        **channels(ops)["prod"],
        "bundle": b["bundle"],
        "frozen": False,
    }
    assert not (ops.root / ".blocks" / "circuits.json").exists()
    assert not (ops.root / "incidents.log").exists()
    sandbox = ops.root / ".blocks" / "rehearsals" / out["run_id"]
    assert "circuit for anthropic opened" in (sandbox / "notify" / "incidents.log").read_text()
    assert json.loads((sandbox / "circuits.json").read_text())
    report = ops.blocks("runbook", "report", out["run_id"])
    assert report.returncode == 0, ops.explain(report)
    assert "**Rehearsal**" in report.stdout
    assert before != state_digest(ops.root)  # only because the sandbox was added
    listed = ops.blocks("runbook", "list")
    assert "(rehearsal)" in listed.stdout


def test_provider_outage_live_opens_the_circuit_freezes_and_rolls_back(ops: Project) -> None:
    a, b = promote_two(ops)
    regress(ops)
    out = runbook(
        ops,
        "runbooks/provider-outage.yaml",
        "-p",
        "provider=anthropic",
        "-p",
        "notify=incidents.log",
        "--approve-as",
        "bob",
    )
    assert out["status"] == "succeeded", out
    prod = channels(ops)["prod"]
    assert prod["bundle"] == a["bundle"]
    assert prod["frozen"] is True
    circuits = json.loads((ops.root / ".blocks" / "circuits.json").read_text())
    assert "anthropic" in json.dumps(circuits)
    entries = history(ops, "prod")
    assert [e["action"] for e in entries[-2:]] == ["freeze", "rollback"]
    assert all(e["via"] == out["run_id"] for e in entries[-2:])
    # the incident bundle is intact and records the decision
    done = ops.blocks("bundle", "verify", out["run_id"])
    assert done.returncode == 0, ops.explain(done)
    report = ops.blocks("runbook", "report", out["run_id"]).stdout
    assert "approved by bob" in report
    assert f"rollback `prod` {b['bundle'][:19]} -> {a['bundle'][:19]}" in report
    assert "circuit `anthropic`: closed -> open" in report


def test_flow_failure_reruns_then_rolls_back_when_gates_regressed(ops: Project) -> None:
    a, _ = promote_two(ops)
    failed = release_run(ops, score=0.5, expect=1)  # the run the alert is about
    out = runbook(
        ops,
        "runbooks/flow-failure.yaml",
        "-p",
        f"run_id={failed['run_id']}",
        "-p",
        "flow=release.yaml",
        "-p",
        "notify=incidents.log",
        "--approve-as",
        "bob",
    )
    steps = out["steps"]
    assert steps["rerun_failed"]["status"] == "failed"  # same inputs, same failing gate
    assert steps["rerun_failed"]["result"]["run"] == failed["run_id"]
    assert steps["recheck"]["status"] == "failed"  # the re-run wrote score 0.5 again
    assert steps["freeze"]["status"] == "succeeded"
    assert steps["rollback"]["result"]["bundle"] == a["bundle"]
    assert steps["resolved"]["status"] == "succeeded"
    assert out["status"] == "succeeded"
    assert channels(ops)["prod"]["bundle"] == a["bundle"]


def test_rate_limit_backs_off_and_fails_the_route_over(ops: Project) -> None:
    out = runbook(
        ops,
        "runbooks/rate-limit.yaml",
        "-p",
        "flow=release.yaml",
        "-p",
        "notify=incidents.log",
        "--approve-as",
        "bob",
    )
    assert out["status"] == "succeeded", out
    overrides = json.loads((ops.root / ".blocks" / "overrides.json").read_text())
    assert overrides["release.yaml"]["limits"] == {"concurrency": 2, "rpm": 30}
    assert overrides["release.yaml"]["routes"] == {"drafter": "fallback"}
    assert out["steps"]["failover"]["result"]["model"] == "local/secondary"
    # later runs honour the overrides, and their bundles say so
    run = release_run(ops)
    show = ops.blocks("bundle", "show", run["run_id"], "--json")
    assert show.returncode == 0, ops.explain(show)
    assert '"drafter": "fallback"' in show.stdout or "fallback" in show.stdout
    plan = ops.blocks("plan", "release.yaml")
    assert "override" in plan.stdout.lower(), plan.stdout


def test_timeout_runbook_aborts_and_undoes_in_reverse_when_the_fallback_fails(
    ops: Project,
) -> None:
    failed = release_run(ops, score=0.5, expect=1)
    out = runbook(
        ops,
        "runbooks/timeout.yaml",
        "-p",
        f"run_id={failed['run_id']}",
        "-p",
        "flow=release.yaml",
        "-p",
        "notify=incidents.log",
        "--approve-as",
        "bob",
        expect=1,
    )
    assert out["status"] == "aborted"
    records = journal(ops, out["run_id"])
    undone = [r["step"] for r in records if r["event"] == "undo.succeeded"]
    assert undone == ["failover", "raise_limits"]  # newest first
    # both undos took: the route is back on its primary, the limit at the flow's own 15m
    overrides = json.loads((ops.root / ".blocks" / "overrides.json").read_text())
    assert overrides["release.yaml"]["limits"] == {"timeout": 900.0}
    assert "routes" not in overrides["release.yaml"] or not overrides["release.yaml"]["routes"]
    report = ops.blocks("runbook", "report", out["run_id"]).stdout
    assert "step `failover`: undone" in report
    assert "finished: **aborted**" in report


def test_security_incident_freezes_all_rolls_back_before_a_time_and_exports(
    ops: Project,
) -> None:
    a, b = promote_two(ops)
    assert ops.blocks("promote", a["run_id"], "-c", "staging").returncode == 0
    since = history(ops, "prod")[1]["at"]  # when b reached prod
    out = runbook(
        ops,
        "runbooks/security-incident.yaml",
        "-p",
        f"since={since}",
        "-p",
        "evidence_dir=evidence",
        "-p",
        "notify=incidents.log",
        "--approve-as",
        "bob",
        "--approve-as",
        "carol",
    )
    assert out["status"] == "succeeded", out
    state = channels(ops)
    assert state["prod"]["bundle"] == a["bundle"]
    assert state["prod"]["frozen"]
    assert state["staging"]["frozen"]
    suspect = ops.root / "evidence" / "suspect"
    statement = json.loads((suspect / "provenance.intoto.json").read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["predicate"]["runDetails"]["metadata"]["invocationId"] == b["run_id"]
    assert (ops.root / "evidence" / "restored" / "members" / "run.json").exists()
    assert out["steps"]["verify_restored"]["result"]["exit_code"] == 0


# ---- the runner's rules -------------------------------------------------------------------

ABORTS = """\
version: 1
kind: runbook
name: aborts
steps:
  - id: freeze
    do: {kind: freeze, channel: prod, reason: drill}
    verify: channels["prod"].frozen
    undo: {kind: unfreeze, channel: prod, reason: undo}
  - id: open
    do: {kind: circuit, provider: anthropic, state: open}
    verify: circuits["anthropic"].state == "open"
    undo: {kind: circuit, provider: anthropic, state: closed}
  - id: check
    do: {kind: notify, to: notes.log, message: checking}
    verify: result.sent == false
  - id: never
    do: {kind: notify, to: notes.log, message: never}
"""


def test_a_failing_verify_aborts_and_undoes_in_reverse_order(ops: Project) -> None:
    (ops.root / "aborts.yaml").write_text(ABORTS)
    out = runbook(ops, "aborts.yaml", expect=1)
    assert out["status"] == "aborted"
    records = journal(ops, out["run_id"])
    failed = next(r for r in records if r["event"] == "step.failed")
    assert failed["step"] == "check"
    assert failed["error"] == "verify failed: result.sent == false is false"
    order = [(r["event"], r["step"]) for r in records if r["event"].startswith("undo.")]
    assert order == [
        ("undo.started", "open"),
        ("undo.succeeded", "open"),
        ("undo.started", "freeze"),
        ("undo.succeeded", "freeze"),
    ]
    assert channels(ops)["prod"]["frozen"] is False
    circuits = ops.blocks("runbook", "show", out["run_id"], "--json").stdout
    assert '"state": "closed"' in circuits
    assert (ops.root / "notes.log").read_text() == "checking\n"  # `never` never ran


def test_an_approval_blocks_until_given_and_the_starter_is_not_enough(ops: Project) -> None:
    a, b = promote_two(ops)
    regress(ops)
    env = {"BLOCKS_USER": "alice"}
    args = (
        "runbook",
        "run",
        "runbooks/provider-outage.yaml",
        "-p",
        "provider=anthropic",
        "-p",
        "notify=incidents.log",
    )
    done = ops.blocks(*args, env=env)
    assert done.returncode == 5, ops.explain(done)
    assert "WAITING approve_rollback" in done.stdout
    assert "--resume" in done.stdout
    run_id = done.stdout.split("--resume ")[1].split()[0]
    assert channels(ops)["prod"]["bundle"] == b["bundle"]  # nothing rolled back yet

    done = ops.blocks(*args, "--resume", run_id, "--approve-as", "alice", env=env)
    assert done.returncode == 5, ops.explain(done)
    assert "alice started this runbook and cannot be its only approver" in done.stdout
    assert channels(ops)["prod"]["bundle"] == b["bundle"]

    # resumed by someone else: the one who started it is still not enough alone
    done = ops.blocks(
        *args, "--resume", run_id, "--approve-as", "alice", env={"BLOCKS_USER": "carol"}
    )
    assert done.returncode == 5, ops.explain(done)
    assert "alice started this runbook and cannot be its only approver" in done.stdout

    done = ops.blocks(*args, "--resume", run_id, "--approve-as", "bob", env=env)
    assert done.returncode == 0, ops.explain(done)
    assert channels(ops)["prod"]["bundle"] == a["bundle"]
    records = journal(ops, run_id)
    given = [r for r in records if r["event"] == "approval.given"]
    assert [r["by"] for r in given] == ["alice", "bob"]
    # names are not authenticated: the record keeps the account that typed each one
    assert [r["recorded_by"].split("@")[0] for r in given] == ["alice", "alice"]
    assert {r["via"] for r in given} == {"flag"}
    report = ops.blocks("runbook", "report", run_id)
    assert report.returncode == 0, ops.explain(report)
    assert "approved by bob (entered with --approve-as by alice@" in report.stdout
    assert "approved by alice (entered" not in report.stdout  # her own account: nothing to add


def test_dry_run_changes_nothing(ops: Project) -> None:
    promote_two(ops)
    regress(ops)
    before = state_digest(ops.root)
    cases = {
        "provider-outage.yaml": ["-p", "provider=anthropic"],
        "flow-failure.yaml": ["-p", "run_id=r1", "-p", "flow=release.yaml"],
        "rate-limit.yaml": ["-p", "flow=release.yaml"],
        "timeout.yaml": ["-p", "run_id=r1", "-p", "flow=release.yaml"],
        "security-incident.yaml": ["-p", "since=2026-01-01T00:00:00Z"],
    }
    for name, params in cases.items():
        done = ops.blocks("runbook", "run", f"runbooks/{name}", "--dry-run", *params)
        assert done.returncode == 0, ops.explain(done)
        assert "nothing will be changed" in done.stdout
    outage = ops.blocks(
        "runbook", "run", "runbooks/provider-outage.yaml", "--dry-run", "-p", "provider=anthropic"
    ).stdout
    assert "circuit anthropic: closed -> open (manual)" in outage
    assert "prod: not frozen -> freeze" in outage
    assert state_digest(ops.root) == before
    assert not (ops.root / "incidents.log").exists()


SLOW = """\
version: 1
kind: runbook
name: slow
steps:
  - id: freeze
    do: {kind: freeze, channel: prod, reason: drill}
    undo: {kind: unfreeze, channel: prod}
  - id: work
    idempotent: IDEMPOTENT
    do:
      kind: shell
      run:
        - sh
        - -c
        - >-
          echo $$ > work.pid; echo x >> count.log;
          if [ ! -e started ]; then touch started; sleep 60; fi
  - id: after
    do: {kind: notify, to: done.log, message: done}
"""


@pytest.mark.parametrize("idempotent", [True, False])
def test_kill_9_mid_runbook_then_resume(ops: Project, idempotent: bool) -> None:
    (ops.root / "slow.yaml").write_text(SLOW.replace("IDEMPOTENT", str(idempotent).lower()))
    proc = ops.popen("runbook", "run", "slow.yaml")
    wait_for((ops.root / "started").exists, what="the work step to start")
    pid = ops.read_pid("work.pid")
    if pid is not None:
        ops.kill_later(pid)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    listed = json.loads(ops.blocks("runbook", "list", "--json").stdout)
    run_id = listed[0]["run"]
    assert listed[0]["status"] == "interrupted"
    if not idempotent:
        done = ops.blocks("runbook", "run", "slow.yaml", "--resume", run_id)
        assert done.returncode == 1
        assert "step work (shell) was in flight" in done.stderr
        assert "--force" in done.stderr
        assert (ops.root / "count.log").read_text() == "x\n"  # not re-run blindly
    args = ("--force",) if not idempotent else ()
    done = ops.blocks("runbook", "run", "slow.yaml", "--resume", run_id, *args)
    assert done.returncode == 0, ops.explain(done)
    assert (ops.root / "count.log").read_text() == "x\nx\n"  # the in-flight step, once more
    assert (ops.root / "done.log").read_text() == "done\n"
    freezes = [e for e in history(ops, "prod") if e["action"] == "freeze"]
    assert len(freezes) == 1  # the finished step was not run again
    done = ops.blocks("runbook", "run", "slow.yaml", "--resume", run_id)
    assert done.returncode == 1
    assert "already finished" in done.stderr


NOTIFY = """\
version: 1
kind: runbook
name: notify
params:
  hook: {type: string}
steps:
  - id: page
    do: {kind: notify, to: "${{ params.hook }}", message: "prod frozen by the drill"}
    verify: result.sent
  - id: slow
    timeout: 1s
    do: {kind: shell, run: [sleep, "30"]}
    on_failure: continue
  - id: after
    do: {kind: notify, to: notes.log, message: "slow step gave up"}
"""


def test_a_webhook_is_posted_and_a_step_timeout_is_honoured(ops: Project) -> None:
    received: list[tuple[str, bytes]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        (ops.root / "notify.yaml").write_text(NOTIFY)
        hook = f"http://127.0.0.1:{server.server_port}/hooks/T0KEN-s3cret"
        out = runbook(ops, "notify.yaml", "-p", f"hook={hook}")
    finally:
        server.shutdown()
    assert out["status"] == "succeeded", out
    assert len(received) == 1
    assert received[0][0] == "/hooks/T0KEN-s3cret"
    assert json.loads(received[0][1]) == {"text": "prod frozen by the drill"}
    # only the webhook's host is recorded: its path carries a token
    assert out["steps"]["page"]["result"] == {"to": "http://127.0.0.1", "sent": True}
    assert out["steps"]["slow"]["status"] == "failed"
    assert out["steps"]["slow"]["error"] == "timed out after 1s"
    assert (ops.root / "notes.log").read_text() == "slow step gave up\n"


APPROVE = """\
version: 1
kind: runbook
name: approve
steps:
  - id: ask
    do: {kind: approval, message: "Freeze prod?"}
  - id: freeze
    do: {kind: freeze, channel: prod, reason: approved at the prompt}
"""


@pytest.mark.parametrize(("answer", "code"), [("bob", 0), ("no", 1)])
def test_an_approval_typed_at_the_terminal_prompt(ops: Project, answer: str, code: int) -> None:
    import pty  # noqa: PLC0415  (POSIX only, like the engine's process groups)

    (ops.root / "approve.yaml").write_text(APPROVE)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [str(BLOCKS), "runbook", "run", "approve.yaml"],
        cwd=ops.root,
        env=ops.env(BLOCKS_USER="alice"),
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(follower)
    try:
        os.write(leader, f"{answer}\n".encode())
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(leader)
    assert proc.returncode == code, (out, err)
    assert "approval needed for step ask: Freeze prod?" in out
    frozen = channels(ops).get("prod", {}).get("frozen", False)
    assert frozen is (answer == "bob")
    if answer == "no":
        assert "approval refused at the prompt" in out
