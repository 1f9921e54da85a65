"""Signals and timeouts: SIGTERM / SIGINT cancel a run cleanly (steps cancelled, children
gone, the documented exit code), and a step timeout kills the step's whole process tree."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from conftest import Project, events, pid_gone, wait_for

STEPS = ("s1", "s2", "s3", "s4", "s5")
PROMPT = 20.0
"""Generous bound for "promptly": the engine gives children a 2 s grace before SIGKILL."""


def start_five(project: Project) -> tuple[subprocess.Popen[str], dict[str, int]]:
    engine = project.popen("run", "five.yaml")

    def all_pids() -> dict[str, int] | None:
        pids = {sid: project.read_pid(f"{sid}.pid") for sid in STEPS}
        return {k: v for k, v in pids.items() if v} if all(pids.values()) else None

    pids: dict[str, int] = wait_for(all_pids, what="five steps to write their pids")
    for pid in pids.values():
        project.kill_later(pid)
    return engine, pids


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"]
)
def test_signal_cancels_the_run_and_its_children(
    blocks_project: Project, signum: int, code: int
) -> None:
    engine, pids = start_five(blocks_project)
    assert all(not pid_gone(pid) for pid in pids.values())

    engine.send_signal(signum)
    # promptly: communicate raises TimeoutExpired if the engine is still running by then
    stdout, stderr = engine.communicate(timeout=PROMPT)

    assert engine.returncode == code, f"{stdout}\n{stderr}"
    assert "Traceback" not in stderr
    for sid, pid in pids.items():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped by the engine, not just killed: gone
        assert sid in stdout
    run_id = blocks_project.only_run_id()
    records = blocks_project.journal(run_id)
    finished = events(records, "run.finished")
    assert len(finished) == 1
    assert finished[0]["status"] == "cancelled"
    assert finished[0]["signal"] == signum
    assert sorted(r["step"] for r in events(records, "step.cancelled")) == list(STEPS)
    assert not events(records, "step.failed")
    assert f"run {run_id} cancelled" in stdout


def test_step_timeout_kills_the_process_tree(blocks_project: Project) -> None:
    done = blocks_project.blocks("run", "tree.yaml")

    assert done.returncode == 1, blocks_project.explain(done)
    pids = [
        blocks_project.read_pid(name)
        for name in ("child.pid", "grandchild1.pid", "grandchild2.pid")
    ]
    assert all(pids), pids
    for pid in pids:
        assert pid is not None
        blocks_project.kill_later(pid)
        assert pid_gone(pid), f"process {pid} of the timed-out step is still running"
    records = blocks_project.journal(blocks_project.only_run_id())
    failed = events(records, "step.failed", "tree")
    assert len(failed) == 1
    assert failed[0]["category"] == "timeout"
    assert failed[0]["error"] == "timed out after 1s"
    assert failed[0]["final"] is True
    assert events(records, "run.finished")[0]["status"] == "failed"
    assert "timed out after 1s" in done.stdout
