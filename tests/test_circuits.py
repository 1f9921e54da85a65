"""The circuit board: the breaker rules on a fake clock, and the shared state file.

The file is shared by real processes (a run and a runbook), so the tests that matter for
it use a real second process: flock and atomic replace are the kernel's, tested against
the kernel.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.providers import circuits
from engine.providers.circuits import CircuitBoard

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def board(clock: Clock, path: Path | None = None, **kw: float) -> CircuitBoard:
    options: dict[str, float] = {"failures": 3, "window": 60.0, "cooldown": 30.0}
    options.update(kw)
    return CircuitBoard(path, clock=clock, **options)  # type: ignore[arg-type]


def fail(b: CircuitBoard, clock: Clock, times: int, every: float = 1.0) -> None:
    for _ in range(times):
        b.record_failure("openai")
        clock.advance(every)


# ---- the rules ---------------------------------------------------------------------------


def test_a_closed_circuit_allows_and_an_unknown_provider_is_closed(clock: Clock) -> None:
    b = board(clock)
    assert b.allow("openai")
    assert b.state("openai") == "closed"
    assert b.snapshot() == {}


def test_opens_after_n_failures_inside_the_window(clock: Clock) -> None:
    b = board(clock)
    fail(b, clock, 2, every=20.0)
    assert b.state("openai") == "closed"
    assert b.allow("openai")
    b.record_failure("openai")  # the third within 60 s (at +0, +20, +40)
    assert b.state("openai") == "open"
    assert not b.allow("openai")
    assert b.allow("anthropic")  # per provider


def test_n_failures_spread_wider_than_the_window_do_not_open(clock: Clock) -> None:
    b = board(clock)
    fail(b, clock, 10, every=30.0)  # never more than 2 inside any 60 s
    assert b.state("openai") == "closed"
    assert b.snapshot()["openai"]["failures"] == 1  # 30 s after the last: one is in


def test_open_denies_until_the_cooldown_then_admits_exactly_one_trial(clock: Clock) -> None:
    b = board(clock)
    fail(b, clock, 3, every=0.0)
    opened_at = clock.now
    clock.advance(29.9)
    assert not b.allow("openai")
    assert b.state("openai") == "open"  # the stored state: no allow has turned it yet
    clock.advance(0.1)
    assert b.allow("openai")  # the trial
    assert b.state("openai") == "half_open"
    assert [b.allow("openai") for _ in range(5)] == [False] * 5
    clock.advance(100.0)
    assert not b.allow("openai")  # still waiting for the trial to report
    assert b.snapshot()["openai"]["opened_at"] == opened_at


def test_trial_success_closes_and_forgets_failures(clock: Clock) -> None:
    b = board(clock)
    fail(b, clock, 3, every=0.0)
    clock.advance(30.0)
    assert b.allow("openai")
    b.record_success("openai")
    assert b.state("openai") == "closed"
    assert b.snapshot()["openai"]["failures"] == 0
    assert b.snapshot()["openai"]["opened_at"] is None
    assert all(b.allow("openai") for _ in range(3))
    fail(b, clock, 2, every=0.0)  # the old failures are gone: two new ones do not reopen
    assert b.state("openai") == "closed"


def test_trial_failure_reopens_with_a_new_cooldown(clock: Clock) -> None:
    b = board(clock)
    fail(b, clock, 3, every=0.0)
    clock.advance(30.0)
    assert b.allow("openai")
    clock.advance(5.0)
    b.record_failure("openai")
    reopened_at = clock.now
    assert b.state("openai") == "open"
    assert b.snapshot()["openai"]["opened_at"] == reopened_at
    clock.advance(29.0)
    assert not b.allow("openai")
    clock.advance(1.0)
    assert b.allow("openai")  # a new trial after the new cooldown


def test_a_lost_trial_is_replaced_after_the_trial_timeout(clock: Clock) -> None:
    b = board(clock, trial_timeout=120.0)
    fail(b, clock, 3, every=0.0)
    clock.advance(30.0)
    assert b.allow("openai")  # this trial's caller is cancelled and never reports
    clock.advance(119.0)
    assert not b.allow("openai")
    clock.advance(1.0)
    assert b.allow("openai")
    assert not b.allow("openai")


def test_late_reports_while_open_neither_close_it_nor_extend_the_cooldown(clock: Clock) -> None:
    b = board(clock)
    fail(b, clock, 3, every=0.0)
    b.record_success("openai")  # a call let through before it opened, succeeding late
    assert b.state("openai") == "open"
    clock.advance(20.0)
    b.record_failure("openai")  # and one failing late
    clock.advance(10.0)
    assert b.allow("openai")  # 30 s after it opened, not after the late failure


def test_success_on_a_closed_circuit_does_not_reset_the_window(clock: Clock) -> None:
    b = board(clock)
    fail(b, clock, 2, every=1.0)
    b.record_success("openai")
    b.record_failure("openai")
    assert b.state("openai") == "open"


# ---- manual override -----------------------------------------------------------------------


def test_manual_open_denies_whatever_the_clock_until_manual_close(clock: Clock) -> None:
    b = board(clock)
    b.set_manual("openai", "open", reason="INC-42 bad answers", by="alice")
    assert not b.allow("openai")
    clock.advance(10_000.0)
    assert not b.allow("openai")
    b.record_success("openai")  # automatic events do not touch a manual circuit
    b.record_failure("openai")
    snap = b.snapshot()["openai"]
    assert snap["state"] == "open"
    assert snap["manual"] is True
    assert (snap["reason"], snap["by"]) == ("INC-42 bad answers", "alice")
    assert snap["updated_at"] == clock.now - 10_000.0
    b.set_manual("openai", "closed", reason="fixed upstream", by="bob")
    assert b.allow("openai")
    snap = b.snapshot()["openai"]
    assert (snap["state"], snap["manual"], snap["failures"]) == ("closed", False, 0)
    assert (snap["reason"], snap["by"]) == ("fixed upstream", "bob")


def test_manual_close_clears_failures_and_an_automatic_open(clock: Clock) -> None:
    b = board(clock)
    fail(b, clock, 3, every=0.0)
    assert b.state("openai") == "open"
    b.set_manual("openai", "closed", reason="false alarm", by="alice")
    assert b.allow("openai")
    fail(b, clock, 2, every=0.0)
    assert b.state("openai") == "closed"


def test_set_manual_rejects_other_states(clock: Clock) -> None:
    with pytest.raises(ValueError, match="'open' or 'closed'"):
        board(clock).set_manual("openai", "half_open", reason="", by="")  # type: ignore[arg-type]


def test_snapshot_is_json_able_and_complete(clock: Clock) -> None:
    b = board(clock)
    b.record_failure("openai")
    b.set_manual("local", "open", reason="maintenance", by="ops")
    snap = b.snapshot()
    assert json.loads(json.dumps(snap)) == snap
    assert list(snap) == ["local", "openai"]
    assert set(snap["openai"]) == {
        "state",
        "failures",
        "opened_at",
        "manual",
        "reason",
        "by",
        "updated_at",
    }
    assert snap["openai"]["failures"] == 1
    clock.advance(61.0)
    assert b.snapshot()["openai"]["failures"] == 0  # counted inside the window, now


# ---- persistence ------------------------------------------------------------------------------


def test_round_trip_through_the_file(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "state" / "circuits.json"  # the folder is created on the first write
    a = board(clock, path)
    assert not path.exists()  # nothing to save yet
    fail(a, clock, 3, every=0.0)
    a.set_manual("local", "open", reason="GPU box down", by="alice")
    a.record_failure("anthropic")
    b = board(clock, path)
    assert b.snapshot() == a.snapshot()
    assert b.state("openai") == "open"
    assert not b.allow("local")
    assert b.problems == []
    document = json.loads(path.read_text())
    assert document["version"] == 1
    assert set(document["providers"]) == {"anthropic", "local", "openai"}
    # Atomic replace leaves no temp file behind; the sidecar lock file stays.
    assert sorted(p.name for p in path.parent.iterdir()) == ["circuits.json", "circuits.json.lock"]


def test_a_second_board_on_the_same_file_sees_manual_changes(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "circuits.json"
    run = board(clock, path)
    runbook = board(clock, path)
    assert run.allow("openai")
    runbook.set_manual("openai", "open", reason="INC-7", by="oncall")
    assert not run.allow("openai")
    assert run.snapshot()["openai"]["by"] == "oncall"
    runbook.set_manual("openai", "closed", reason="INC-7 resolved", by="oncall")
    assert run.allow("openai")


def test_allow_reads_the_file_only_when_it_changed(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "circuits.json"
    run = board(clock, path)
    fail(run, clock, 3, every=0.0)
    reads: list[Path] = []
    real_read = circuits._read_file

    def counting_read(p: Path) -> bytes:
        reads.append(p)
        return real_read(p)

    monkeypatch.setattr(circuits, "_read_file", counting_read)
    for _ in range(100):
        run.allow("openai")
        run.state("openai")
        run.record_success("openai")  # open: nothing to do, nothing read
    assert reads == []
    other = board(clock, path)  # reads once on construction
    other.set_manual("anthropic", "open", reason="r", by="b")  # reads under the lock
    reads.clear()
    assert not run.allow("anthropic")
    assert run.allow("local")
    assert len(reads) == 1


def test_success_on_a_closed_circuit_never_writes(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "circuits.json"
    b = board(clock, path)
    b.record_failure("openai")
    before = path.stat()
    for _ in range(50):
        assert b.allow("openai")
        b.record_success("openai")
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_corrupted_file_starts_closed_reports_and_is_kept_aside(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "circuits.json"
    path.write_bytes(b'{"version": 1, "providers": {"openai": {"state": "op')  # torn
    b = board(clock, path)
    assert b.allow("openai")
    assert b.state("openai") == "closed"
    assert len(b.problems) == 1
    assert "unreadable" in b.problems[0]
    assert b.allow("openai")
    assert len(b.problems) == 1  # reported once, not on every call
    b.record_failure("openai")  # the first write keeps the bad file for a post-mortem
    assert (tmp_path / "circuits.json.corrupt").read_bytes().endswith(b'"op')
    assert board(clock, path).snapshot()["openai"]["failures"] == 1


@pytest.mark.parametrize(
    "content",
    [b"", b"\xff\xfe", b"[]", b'{"version": 2, "providers": {}}', b'{"version": 1}', b"null"],
)
def test_unreadable_documents_start_closed(tmp_path: Path, clock: Clock, content: bytes) -> None:
    path = tmp_path / "circuits.json"
    path.write_bytes(content)
    b = board(clock, path)
    assert b.snapshot() == {}
    assert len(b.problems) == 1


def test_one_bad_entry_does_not_cost_the_others(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "circuits.json"
    good = {"state": "open", "manual": True, "opened_at": 1.0, "reason": "r", "by": "b"}
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "providers": {
                    "openai": good,
                    "anthropic": {"state": "exploded"},
                    "local": {"state": "open", "failures": [True]},
                    "other": {"state": "closed", "manual": True},
                },
            }
        )
    )
    b = board(clock, path)
    assert not b.allow("openai")  # the manual open survives its neighbours' corruption
    assert b.allow("anthropic")
    assert len(b.problems) == 3
    assert all("ignored" in p for p in b.problems)


def test_a_deleted_file_means_all_closed(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "circuits.json"
    b = board(clock, path)
    fail(b, clock, 3, every=0.0)
    path.unlink()  # an operator's reset
    assert b.allow("openai")
    assert b.state("openai") == "closed"


def test_a_failed_automatic_write_is_reported_and_kept_in_memory(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "circuits.json"
    b = board(clock, path)

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    fail(b, clock, 3, every=0.0)  # never raises into the caller
    assert b.state("openai") == "open"  # the breaker still protects this process
    assert len(b.problems) == 1  # once, not once per failure
    assert "could not be saved" in b.problems[0]
    with pytest.raises(OSError, match="No space"):
        b.set_manual("anthropic", "open", reason="r", by="b")  # the operator must know
    monkeypatch.undo()
    b.record_failure("local")  # the next successful write carries what was pending
    assert board(clock, path).state("openai") == "open"


# ---- two processes ----------------------------------------------------------------------------

# A run's board: loads the file, waits (holding a now stale view), then reports failures
# and a success without calling allow first, so its writes are based on what it saw.
STALE_RUN = """
import sys
from pathlib import Path
from engine.providers.circuits import CircuitBoard
board = CircuitBoard(Path(sys.argv[1]), failures=3)
assert board.state("openai") == "closed"
print("loaded", flush=True)
sys.stdin.readline()
for _ in range(5):
    board.record_failure("openai")
board.record_success("openai")
print(board.state("openai"), flush=True)
"""

HAMMER = """
import sys
from pathlib import Path
from engine.providers.circuits import CircuitBoard
board = CircuitBoard(Path(sys.argv[1]), failures=1000, window=3600.0)
print("started", flush=True)
for i in range(int(sys.argv[2])):
    board.record_failure(sys.argv[3])
print("done", flush=True)
"""


def spawn(script: str, *args: str, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )


def finish(child: subprocess.Popen[str]) -> str:
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    return out


def test_manual_open_survives_a_stale_automatic_write_from_another_process(
    tmp_path: Path,
) -> None:
    path = tmp_path / "circuits.json"
    CircuitBoard(path).record_failure("anthropic")  # the file exists
    run = spawn(STALE_RUN, str(path), stdin=True)
    assert run.stdout is not None
    assert run.stdin is not None
    assert run.stdout.readline().strip() == "loaded"
    runbook = CircuitBoard(path)
    runbook.set_manual("openai", "open", reason="INC-9 wrong answers", by="oncall")
    run.stdin.write("go\n")
    run.stdin.flush()
    assert finish(run).strip() == "open"  # the run applied its events to the manual state
    fresh = CircuitBoard(path)
    snap = fresh.snapshot()["openai"]
    assert (snap["state"], snap["manual"], snap["by"]) == ("open", True, "oncall")
    assert not fresh.allow("openai")
    assert not runbook.allow("openai")
    assert fresh.snapshot()["anthropic"]["failures"] == 1  # the other entry is untouched


def test_manual_open_survives_concurrent_automatic_writes(tmp_path: Path) -> None:
    path = tmp_path / "circuits.json"
    hammer = spawn(HAMMER, str(path), "300", "openai")
    assert hammer.stdout is not None
    assert hammer.stdout.readline().strip() == "started"
    time.sleep(0.05)  # in the middle of its writes
    CircuitBoard(path).set_manual("openai", "open", reason="INC-10", by="oncall")
    finish(hammer)
    snap = CircuitBoard(path).snapshot()["openai"]
    assert (snap["state"], snap["manual"], snap["reason"]) == ("open", True, "INC-10")


def test_failures_counted_by_two_processes_add_up(tmp_path: Path) -> None:
    path = tmp_path / "circuits.json"
    children = [spawn(HAMMER, str(path), "25", "openai") for _ in range(2)]
    for child in children:
        finish(child)
    board_ = CircuitBoard(path, failures=1000, window=3600.0)
    assert board_.snapshot()["openai"]["failures"] == 50  # no update lost


def test_writers_take_the_sidecar_lock(tmp_path: Path) -> None:
    path = tmp_path / "circuits.json"
    CircuitBoard(path).record_failure("openai")
    before = path.read_bytes()
    fd = os.open(tmp_path / "circuits.json.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        child = spawn(HAMMER, str(path), "1", "openai")
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "started"
        time.sleep(0.3)
        assert path.read_bytes() == before  # blocked on the lock: nothing written
        assert child.poll() is None
    finally:
        os.close(fd)
    finish(child)
    assert CircuitBoard(path).snapshot()["openai"]["failures"] == 2
