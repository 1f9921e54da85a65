"""Retries, in-process, with a fake clock: how many attempts, which failures are retried,
and the exact backoff delays (exponential, capped, with and without jitter).

The plan comes from the real runtime (`Runtime.plan`); the executor runs it under
`anyio.run` with a `FakeClock` (every backoff sleep is recorded and returns at once) and a
seeded `random.Random`, journaling to a file in the test's folder.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import FLOWS, events

from engine.executor.cache import StepCache
from engine.executor.journal import JournalWriter, read_journal
from engine.executor.local import LocalExecutor, RunOptions, RunOutcome
from engine.redact import Redactor
from engine.runtime import Runtime, load_settings
from engine.testing import FakeClock, RecordingSink


@dataclass
class Ran:
    outcome: RunOutcome
    clock: FakeClock
    records: list[dict[str, Any]]
    sink: RecordingSink

    @property
    def step(self) -> Any:
        return self.outcome.steps["work"]


@pytest.fixture(autouse=True)
def isolated_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    """The python kind puts the project root on `sys.path` and imports `flowmods`."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "flowmods", raising=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "retry-fixture"\nversion = "0"\n')
    shutil.copy2(FLOWS / "flowmods.py", root / "flowmods.py")
    return root


def run_step(project: Path, step: dict[str, Any], *, seed: int = 0) -> Ran:
    """Run a one-step flow (the step is called `work`) and return what happened."""
    flow = {"version": 1, "kind": "flow", "name": "retry", "steps": {"work": step}}
    path = project / "flow.yaml"
    path.write_text(json.dumps(flow, indent=2))  # JSON is YAML 1.2
    runtime = Runtime(load_settings(str(path), environ={}), environ={})
    plan = runtime.plan(str(path))
    clock = FakeClock()
    sink = RecordingSink()
    executor = LocalExecutor(
        cache=StepCache(project / ".blocks" / "cache"),
        redactor=Redactor(),
        secrets={},
        on_event=sink,
        clock=clock,
        rng=random.Random(seed),  # noqa: S311  (jitter under test)
    )
    run_dir = project / ".blocks" / "runs" / f"retry-{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)

    async def main() -> RunOutcome:
        journal = JournalWriter.open(run_dir / "journal.log")
        try:
            return await executor.run(
                plan, RunOptions(f"retry-{seed}", {}), journal, run_dir=run_dir
            )
        finally:
            await journal.aclose()

    outcome = anyio.run(main)
    return Ran(outcome, clock, read_journal(run_dir / "journal.log").records, sink)


def flaky_step(
    counter: Path, failures: int, retry: dict[str, Any], kind: str = "connection"
) -> dict[str, Any]:
    return {
        "kind": "python",
        "cache": False,
        "call": "flowmods:flaky",
        "retry": retry,
        "with": {"counter": str(counter), "failures": failures, "kind": kind},
        "outputs": {"attempts": {"type": "integer"}},
    }


def expected_delays(n: int, initial: float, cap: float) -> list[float]:
    return [min(initial * 2**k, cap) for k in range(n)]


# ---- transient failures ------------------------------------------------------------------


@pytest.mark.parametrize("failures", [0, 1, 3, 5])
def test_transient_failures_retry_with_exact_exponential_backoff(
    project: Path, failures: int
) -> None:
    counter = project / "calls"
    retry = {"attempts": 6, "initial": 0.25, "max": 2, "jitter": False, "on": ["connection"]}

    ran = run_step(project, flaky_step(counter, failures, retry))

    assert ran.outcome.status == "succeeded"
    assert int(counter.read_text()) == failures + 1  # exactly N+1 calls
    assert ran.step.attempts == failures + 1
    assert ran.step.outputs == {"attempts": failures + 1}
    # 0.25, 0.5, 1, 2, then capped at max: 2
    assert ran.clock.sleeps == expected_delays(failures, 0.25, 2.0)
    if failures == 5:
        assert ran.clock.sleeps[-2:] == [2.0, 2.0]
    assert [r["attempt"] for r in events(ran.records, "step.started", "work")] == list(
        range(1, failures + 2)
    )
    retrying = events(ran.records, "step.retrying", "work")
    assert [r["delay"] for r in retrying] == ran.clock.sleeps
    assert [r["category"] for r in retrying] == ["connection"] * failures
    assert [r["error"] for r in retrying] == [
        f"flowmods:flaky raised ConnectionError: drop #{n}" for n in range(1, failures + 1)
    ]
    assert not events(ran.records, "step.failed")
    # the executor's events are the journal's records
    assert [e["event"] for e in ran.sink.events] == [r["event"] for r in ran.records]


def test_jittered_delays_stay_within_half_to_full_delay(project: Path) -> None:
    retry = {"attempts": 6, "initial": 0.25, "max": 2, "jitter": True, "on": ["connection"]}

    ran = run_step(project, flaky_step(project / "calls-a", 5, retry), seed=0)

    nominal = expected_delays(5, 0.25, 2.0)
    assert len(ran.clock.sleeps) == 5
    for slept, full in zip(ran.clock.sleeps, nominal, strict=True):
        assert full / 2 <= slept <= full
    assert ran.clock.sleeps != nominal, "jitter on, but every delay was the nominal one"
    assert ran.outcome.status == "succeeded"
    # the rng is the only source of randomness: the same seed gives the same delays
    again = run_step(project, flaky_step(project / "calls-b", 5, retry), seed=0)
    assert again.clock.sleeps == ran.clock.sleeps


def test_timeouts_are_transient_too(project: Path) -> None:
    retry = {"attempts": 3, "initial": 1, "jitter": False, "on": ["timeout"]}

    ran = run_step(project, flaky_step(project / "calls", 2, retry, kind="timeout"))

    assert ran.outcome.status == "succeeded"
    assert ran.step.attempts == 3
    assert ran.clock.sleeps == [1.0, 2.0]
    assert [r["category"] for r in events(ran.records, "step.retrying")] == ["timeout"] * 2


def test_attempts_exhausted_fails_with_the_last_error(project: Path) -> None:
    counter = project / "calls"
    retry = {"attempts": 3, "initial": 0.5, "max": 60, "jitter": False, "on": ["connection"]}

    ran = run_step(project, flaky_step(counter, 10, retry))

    assert ran.outcome.status == "failed"
    assert int(counter.read_text()) == 3
    assert ran.step.status == "failed"
    assert ran.step.attempts == 3
    assert ran.step.error == "flowmods:flaky raised ConnectionError: drop #3"
    assert ran.clock.sleeps == [0.5, 1.0]
    failed = events(ran.records, "step.failed", "work")
    assert len(failed) == 1
    assert failed[0]["attempt"] == 3
    assert failed[0]["final"] is True
    assert failed[0]["category"] == "connection"
    assert failed[0]["error"] == ran.step.error
    assert len(events(ran.records, "step.retrying")) == 2
    assert events(ran.records, "run.finished")[0]["status"] == "failed"


# ---- failures that are not retried ---------------------------------------------------------


def test_a_permanent_error_is_not_retried(project: Path) -> None:
    counter = project / "calls"
    step = {
        "kind": "python",
        "cache": False,
        "call": "flowmods:permanent",
        "with": {"counter": str(counter)},
        "retry": {"attempts": 5, "initial": 1, "jitter": False},
    }  # default `on`

    ran = run_step(project, step)

    assert ran.outcome.status == "failed"
    assert int(counter.read_text()) == 1
    assert ran.step.attempts == 1
    assert ran.step.error == "flowmods:permanent raised ValueError: malformed record #1"
    assert ran.clock.sleeps == []
    assert not events(ran.records, "step.retrying")
    failed = events(ran.records, "step.failed", "work")
    assert [(r["category"], r["final"]) for r in failed] == [("permanent", True)]


def test_a_transient_category_not_listed_in_on_is_not_retried(project: Path) -> None:
    counter = project / "calls"
    retry = {"attempts": 5, "initial": 1, "jitter": False, "on": ["timeout", "rate_limit"]}

    ran = run_step(project, flaky_step(counter, 1, retry))

    assert ran.outcome.status == "failed"
    assert int(counter.read_text()) == 1
    assert ran.clock.sleeps == []
    assert events(ran.records, "step.failed", "work")[0]["category"] == "connection"


# ---- shell exit codes ----------------------------------------------------------------------

COUNTING_SCRIPT = """
n=$(( $(cat "$COUNTER" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$COUNTER"
if [ "$n" -le 2 ]; then echo "not yet ($n)" >&2; exit 3; fi
echo '{"attempt": '"$n"'}'
"""


def shell_step(counter: Path, on: list[str] | None) -> dict[str, Any]:
    retry: dict[str, Any] = {"attempts": 4, "initial": 0.5, "jitter": False}
    if on is not None:
        retry["on"] = on
    return {
        "kind": "shell",
        "cache": False,
        "script": COUNTING_SCRIPT,
        "retry": retry,
        "env": {"COUNTER": str(counter)},
        "outputs": {"attempt": {"type": "integer"}},
    }


def test_exit_code_failures_are_retried_when_on_includes_exit_code(project: Path) -> None:
    counter = project / "calls"

    ran = run_step(project, shell_step(counter, ["exit_code"]))

    assert ran.outcome.status == "succeeded"
    assert int(counter.read_text()) == 3
    assert ran.step.attempts == 3
    assert ran.step.outputs == {"attempt": 3}
    assert ran.clock.sleeps == [0.5, 1.0]
    retrying = events(ran.records, "step.retrying", "work")
    assert [r["category"] for r in retrying] == ["exit_code", "exit_code"]
    assert "exited with code 3" in retrying[0]["error"]
    assert "not yet (1)" in retrying[0]["error"]


@pytest.mark.parametrize("on", [None, ["timeout", "connection"]], ids=["default-on", "no-exit"])
def test_exit_code_failures_are_not_retried_otherwise(project: Path, on: list[str] | None) -> None:
    counter = project / "calls"

    ran = run_step(project, shell_step(counter, on))

    assert ran.outcome.status == "failed"
    assert int(counter.read_text()) == 1
    assert ran.step.attempts == 1
    assert ran.clock.sleeps == []
    failed = events(ran.records, "step.failed", "work")
    assert [(r["category"], r["final"]) for r in failed] == [("exit_code", True)]
    assert "exited with code 3" in failed[0]["error"]
