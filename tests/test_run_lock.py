"""The run lock: one driver per run, across processes, surviving a kill -9 of the holder.

Real lock files and real processes: flock semantics are the kernel's, so they are tested
against the kernel.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine.errors import EngineError
from engine.executor.lock import RunLock, RunLocked

ROOT = Path(__file__).resolve().parent.parent

HOLD = """
import sys, time
from engine.executor.lock import RunLock
lock = RunLock(sys.argv[1], "alice")
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""

TRY = """
import sys
from engine.executor.lock import RunLock, RunLocked
try:
    RunLock(sys.argv[1], "bob").acquire()
except RunLocked as exc:
    print("locked:", exc)
else:
    print("acquired")
"""


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    run_dir = tmp_path / "20261122-194001-abcd"
    run_dir.mkdir()
    return run_dir / "lock"


def spawn_holder(path: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "held"
    return child


def try_in_child(path: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", TRY, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout.strip()


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the pid names no process now
    return child.pid


def write_lease(path: Path, **overrides: Any) -> None:
    now = time.time()
    lease = {
        "run": "r",
        "holder": "mallory",
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "acquired_at": now - 5,
        "expires_at": now + 30,
        "token": "not-ours",
    }
    lease.update(overrides)
    path.write_text(json.dumps(lease))


def read_lease(path: Path) -> dict[str, Any]:
    """The lease, or {} if caught mid-rewrite by a heartbeat."""
    try:
        value: dict[str, Any] = json.loads(path.read_text())
    except ValueError:
        return {}
    return value


def test_acquire_writes_the_lease_and_release_clears_it(lock_path: Path) -> None:
    before = time.time()
    lock = RunLock(lock_path, "alice", lease=12)
    with lock:
        assert lock.held
        lease = json.loads(lock_path.read_text())
        assert lease["holder"] == "alice"
        assert lease["pid"] == os.getpid()
        assert lease["hostname"] == socket.gethostname()
        assert lease["run"] == "20261122-194001-abcd"  # the run directory's name
        assert before <= lease["acquired_at"] <= time.time()
        assert lease["expires_at"] == pytest.approx(lease["acquired_at"] + 12, abs=0.5)
        assert lock_path.stat().st_mode & 0o777 == 0o600
    assert not lock.held
    assert lock_path.read_bytes() == b""


def test_second_lock_in_the_same_process_is_refused_naming_the_holder(lock_path: Path) -> None:
    with RunLock(lock_path, "alice"):
        with pytest.raises(RunLocked) as info:
            RunLock(lock_path, "bob").acquire()
        err = info.value
        assert isinstance(err, EngineError)
        assert (err.holder, err.pid, err.hostname) == ("alice", os.getpid(), socket.gethostname())
        message = str(err)
        assert message.startswith("run 20261122-194001-abcd is being driven by alice (pid ")
        assert f"pid {os.getpid()} on host {socket.gethostname()}) since " in message
        assert message.endswith("; wait for it or stop it")
        assert time.strftime("%H:%M", time.localtime(err.acquired_at or 0)) in message
    with RunLock(lock_path, "bob"):  # free again
        pass


def test_another_process_cannot_acquire_while_held(lock_path: Path) -> None:
    with RunLock(lock_path, "alice"):
        out = try_in_child(lock_path)
    assert out.startswith(
        f"locked: run 20261122-194001-abcd is being driven by alice (pid {os.getpid()} on host "
    )
    assert try_in_child(lock_path) == "acquired"


def test_lock_is_free_after_the_holder_is_killed(lock_path: Path) -> None:
    child = spawn_holder(lock_path)
    try:
        with pytest.raises(RunLocked) as info:
            RunLock(lock_path, "bob").acquire()
        assert (info.value.holder, info.value.pid) == ("alice", child.pid)
        assert try_in_child(lock_path).startswith("locked:")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # the kernel dropped the flock; the lease left behind names a dead pid: stale
    lock = RunLock(lock_path, "bob").acquire()
    try:
        assert json.loads(lock_path.read_text())["holder"] == "bob"
    finally:
        lock.release()


def test_stale_lease_from_a_dead_pid_is_taken_over(lock_path: Path) -> None:
    write_lease(lock_path, pid=dead_pid())  # unexpired, but its process is gone
    with RunLock(lock_path, "bob"):
        assert json.loads(lock_path.read_text())["holder"] == "bob"


def test_expired_lease_is_taken_over_even_from_another_host(lock_path: Path) -> None:
    write_lease(lock_path, hostname="elsewhere", expires_at=time.time() - 1)
    with RunLock(lock_path, "bob"):
        assert json.loads(lock_path.read_text())["holder"] == "bob"


# Without flock (a network mount that ignores it), the lease alone must still refuse.


def test_lease_guard_refuses_a_live_pid_on_this_host(lock_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lease(lock_path, pid=sleeper.pid)  # no flock held: only the lease says no
        with pytest.raises(RunLocked, match=f"mallory \\(pid {sleeper.pid} on host"):
            RunLock(lock_path, "bob").acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert json.loads(lock_path.read_text())["holder"] == "mallory"  # refused: untouched


def test_lease_guard_refuses_an_unexpired_lease_from_another_host(lock_path: Path) -> None:
    write_lease(lock_path, hostname="build-7", pid=1)
    with pytest.raises(RunLocked, match="on host build-7"):
        RunLock(lock_path, "bob").acquire()


def test_our_pid_with_a_foreign_token_is_an_earlier_incarnation(lock_path: Path) -> None:
    # Containers restart the engine with the same pid: such a lease is stale.
    write_lease(lock_path, pid=os.getpid(), token="from-before-the-restart")  # noqa: S106
    with RunLock(lock_path, "bob"):
        assert json.loads(lock_path.read_text())["holder"] == "bob"


def test_unreadable_lease_held_by_flock_still_refuses(lock_path: Path) -> None:
    with RunLock(lock_path, "alice") as lock:
        assert lock.held
        os.truncate(lock_path, 0)  # as if caught mid-rewrite
        with pytest.raises(RunLocked, match=r"another process .*unreadable"):
            RunLock(lock_path, "bob").acquire()


def test_release_is_idempotent_and_never_clears_a_foreign_lease(lock_path: Path) -> None:
    lock = RunLock(lock_path, "alice")
    lock.release()  # never acquired: fine
    lock.acquire()
    lock.release()
    lock.release()
    assert not lock.held
    with pytest.raises(RuntimeError, match="already held"), RunLock(lock_path, "alice") as held:
        held.acquire()


def test_renew_extends_and_detects_a_takeover(lock_path: Path) -> None:
    lock = RunLock(lock_path, "alice", lease=5).acquire()
    first = json.loads(lock_path.read_text())
    time.sleep(0.01)
    lock.renew()
    renewed = json.loads(lock_path.read_text())
    assert renewed["expires_at"] > first["expires_at"]
    assert renewed["acquired_at"] == first["acquired_at"]
    assert renewed["token"] == first["token"]

    write_lease(lock_path, holder="carol")  # someone else's lease now sits in the file
    with pytest.raises(RunLocked, match="lost its lock: it is now driven by carol"):
        lock.renew()
    assert not lock.held
    lock.release()  # idempotent, and leaves carol's lease alone
    assert json.loads(lock_path.read_text())["holder"] == "carol"


@pytest.mark.anyio
async def test_async_context_manager_and_heartbeat(lock_path: Path) -> None:
    async with RunLock(lock_path, "alice", lease=5) as lock:
        first = json.loads(lock_path.read_text())["expires_at"]
        async with anyio.create_task_group() as tg:
            lock.start_heartbeat(tg, every=0.01)
            with anyio.fail_after(5):
                while read_lease(lock_path).get("expires_at", 0) <= first:
                    await anyio.sleep(0.01)
            lock.release()  # stops the heartbeat, so the task group can exit
        assert not lock.held
    assert lock_path.read_bytes() == b""
