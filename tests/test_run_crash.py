"""Crash and resume: the engine SIGKILLed at named points (BLOCKS_FAULTS) and from outside,
then `blocks run FLOW --resume RUN_ID`. Completed steps are never re-run (each step leaves a
line in side_effects.log per real execution), nothing finished is lost, a non-idempotent
step caught in flight needs --force, a torn journal tail is dropped, and one run has one
driver."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest
from conftest import CLI_TIMEOUT, Project, events, wait_for

from engine.executor.journal import JournalWriter, read_journal

KILLED = (-signal.SIGKILL, 128 + signal.SIGKILL)
"""How a SIGKILLed engine's exit shows: -9 from subprocess, 137 through a shell."""


def finished_outputs(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Outputs of every step whose success is in the journal."""
    return {r["step"]: r["outputs"] for r in events(records, "step.succeeded")}


def started_after(records: list[dict[str, Any]], seq: int) -> list[str]:
    return [r["step"] for r in events(records, "step.started") if r["seq"] > seq]


def assert_interrupted(project: Project, run_id: str, in_flight: list[str]) -> None:
    shown = project.blocks("runs", "show", run_id)
    assert shown.returncode == 0, project.explain(shown)
    head = shown.stdout.splitlines()[0]
    assert head.startswith(f"run {run_id}  flow ")
    assert head.endswith("interrupted")
    for sid in in_flight:
        assert f"in flight when it stopped: {sid} ({sid})" in shown.stdout
    if not in_flight:
        assert "in flight" not in shown.stdout


def resume(project: Project, flow: str, run_id: str, *extra: str) -> dict[str, Any]:
    done = project.blocks("run", flow, "--resume", run_id, "--json", *extra)
    assert done.returncode == 0, project.explain(done)
    out = json.loads(done.stdout)
    assert out["run_id"] == run_id
    assert out["status"] == "succeeded"
    return out


CRASH_POINTS = {
    # fault: (steps finished before the crash, in flight at the crash, side effects at the
    #         crash, side effects after the resume)
    "kill@step.started:middle": (
        ["first"],
        ["middle"],
        {"first": 1},
        {"first": 1, "middle": 1, "last": 1},
    ),
    "kill@step.succeeded:middle": (
        ["first", "middle"],
        [],
        {"first": 1, "middle": 1},
        {"first": 1, "middle": 1, "last": 1},
    ),
    # middle ran but its success never reached the journal: it was in flight, so it runs again
    "torn@step.succeeded:middle": (
        ["first"],
        ["middle"],
        {"first": 1, "middle": 1},
        {"first": 1, "middle": 2, "last": 1},
    ),
}


@pytest.mark.parametrize(
    "fault", list(CRASH_POINTS), ids=["mid-step", "between-steps", "torn-journal-write"]
)
def test_resume_after_a_kill_at_a_named_point(blocks_project: Project, fault: str) -> None:
    done_before, in_flight, effects_at_crash, effects_after = CRASH_POINTS[fault]

    crash = blocks_project.blocks("run", "chain.yaml", env={"BLOCKS_FAULTS": fault})
    assert crash.returncode in KILLED, blocks_project.explain(crash)
    run_id = blocks_project.only_run_id()
    path = blocks_project.journal_path(run_id)
    contents = read_journal(path)
    torn = fault.startswith("torn@")
    assert contents.torn is torn
    raw = path.read_bytes()
    complete = raw[: raw.rindex(b"\n") + 1]
    if torn:  # half a record at the end: dropped by readers, not fatal
        assert len(raw) > len(complete)
        assert contents.valid_bytes == len(complete)
    before = finished_outputs(contents.records)
    assert sorted(before) == sorted(done_before)
    assert not events(contents.records, "run.finished")
    assert blocks_project.side_effects() == effects_at_crash

    assert_interrupted(blocks_project, run_id, in_flight)

    out = resume(blocks_project, "chain.yaml", run_id)

    # completed steps did not run again; in-flight ones ran exactly once more
    assert blocks_project.side_effects() == effects_after
    # nothing finished was lost: same values as before the crash
    for sid, outputs in before.items():
        assert out["steps"][sid]["outputs"] == outputs
        assert out["outputs"][sid] == outputs["token"]
    assert out["outputs"]["last"] == out["steps"]["last"]["outputs"]["token"]

    after = read_journal(path)
    assert not after.torn, "the torn tail must be cut before new records are appended"
    assert path.read_bytes().startswith(complete)
    records = after.records
    assert records[: len(contents.records)] == contents.records
    assert records[len(contents.records)]["event"] == "run.resumed"
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert [r["event"] for r in records if r["event"].startswith("run.")] == [
        "run.started",
        "run.resumed",
        "run.finished",
    ]
    resumed = events(records, "run.resumed")[0]
    assert sorted(started_after(records, resumed["seq"])) == sorted(
        {"first", "middle", "last"} - set(done_before)
    )
    assert events(records, "run.finished")[0]["status"] == "succeeded"


def test_resume_after_external_kill_9_while_a_shell_step_sleeps(blocks_project: Project) -> None:
    engine = blocks_project.popen("run", "sleeper.yaml")

    def nap_running() -> int | None:
        ids = blocks_project.run_ids()
        if not ids or not events(blocks_project.journal(ids[0]), "step.started", "nap"):
            return None
        return (
            blocks_project.read_pid("nap.pid")
            if (blocks_project.root / "nap.once").exists()
            else None
        )

    nap_pid = wait_for(nap_running, what="the nap step's sleep to start")
    blocks_project.kill_later(nap_pid)  # in its own session: the engine's death leaves it
    run_id = blocks_project.only_run_id()
    before = finished_outputs(blocks_project.journal(run_id))
    assert list(before) == ["first"]

    os.kill(engine.pid, signal.SIGKILL)
    engine.communicate(timeout=CLI_TIMEOUT)
    assert engine.returncode in KILLED
    assert blocks_project.side_effects() == {"first": 1, "nap": 1}
    assert_interrupted(blocks_project, run_id, ["nap"])

    out = resume(blocks_project, "sleeper.yaml", run_id)

    assert blocks_project.side_effects() == {"first": 1, "nap": 2, "last": 1}
    assert out["steps"]["first"]["outputs"] == before["first"]
    assert out["outputs"]["first"] == before["first"]["token"]
    records = blocks_project.journal(run_id)
    resumed = events(records, "run.resumed")[0]
    assert sorted(started_after(records, resumed["seq"])) == ["last", "nap"]


def test_in_flight_non_idempotent_step_needs_force(blocks_project: Project) -> None:
    crash = blocks_project.blocks(
        "run", "charge.yaml", env={"BLOCKS_FAULTS": "kill@step.started:charge_card"}
    )
    assert crash.returncode in KILLED, blocks_project.explain(crash)
    run_id = blocks_project.only_run_id()
    before = blocks_project.journal(run_id)
    assert [r["step"] for r in events(before, "step.started")] == ["prepare", "charge_card"]

    refused = blocks_project.blocks("run", "charge.yaml", "--resume", run_id)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr + refused.stdout
    message = refused.stderr
    assert "charge_card" in message
    assert "idempotent: false" in message
    assert "interrupted mid-flight" in message
    assert "--force" in message
    assert blocks_project.journal(run_id) == before, "a refused resume must not touch the run"
    assert blocks_project.side_effects() == {"prepare": 1}

    out = resume(blocks_project, "charge.yaml", run_id, "--force")
    assert blocks_project.side_effects() == {"prepare": 1, "charge_card": 1, "receipt": 1}
    assert out["steps"]["prepare"]["outputs"] == finished_outputs(before)["prepare"]


def test_a_second_process_cannot_drive_a_run_in_progress(blocks_project: Project) -> None:
    holder = blocks_project.popen("run", "hold.yaml", env={"BLOCKS_USER": "alice-e2e"})

    def held() -> str | None:
        ids = blocks_project.run_ids()
        if ids and events(blocks_project.journal(ids[0]), "step.started", "hold"):
            return ids[0]
        return None

    run_id = wait_for(held, what="the hold step to start")
    before = blocks_project.journal(run_id)

    second = blocks_project.blocks("run", "hold.yaml", "--resume", run_id)
    assert second.returncode != 0
    assert "Traceback" not in second.stderr
    assert f"run {run_id} is being driven by alice-e2e@" in second.stderr
    assert f"(pid {holder.pid} on host " in second.stderr
    assert blocks_project.journal(run_id)[: len(before)] == before
    assert not events(blocks_project.journal(run_id), "run.resumed")

    (blocks_project.root / "release").touch()
    stdout, stderr = holder.communicate(timeout=CLI_TIMEOUT)
    assert holder.returncode == 0, f"{stdout}\n{stderr}"
    records = blocks_project.journal(run_id)
    assert [r["event"] for r in records if r["event"].startswith("run.")] == [
        "run.started",
        "run.finished",
    ]
    assert len(events(records, "step.started", "hold")) == 1


def test_runs_show_json_reports_an_interrupted_run_as_interrupted(blocks_project: Project) -> None:
    run_id = "20261122-120000-abcdef"
    run_dir = blocks_project.runs_dir / run_id
    run_dir.mkdir(parents=True)
    with JournalWriter.open(run_dir / "journal.log") as journal:  # as a kill -9 leaves it
        journal.append(
            {
                "event": "run.started",
                "run": run_id,
                "flow": "chain",
                "path": "chain.yaml",
                "inputs": {},
                "steps": 3,
            }
        )
        journal.append(
            {"event": "step.started", "step": "first", "instance": "first", "attempt": 1}
        )
    text, as_json = blocks_project.blocks_parallel(
        ("runs", "show", run_id), ("runs", "show", run_id, "--json")
    )
    assert text.stdout.splitlines()[0].endswith("interrupted"), blocks_project.explain(text)
    assert as_json.returncode == 0, blocks_project.explain(as_json)
    summary = json.loads(as_json.stdout)
    assert summary["in_flight"] == {"first": ["first"]}
    assert summary["status"] == "interrupted"
