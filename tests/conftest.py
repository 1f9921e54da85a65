"""Shared fixtures for the tests that drive `blocks` end to end.

`blocks_project` gives each test its own project folder (a `pyproject.toml` marker, so the
project root and `.blocks/` live there) holding the flows and the python module under
`tests/fixtures/flows/`, and runs the real CLI in subprocesses from that folder.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.executor.journal import read_journal

FLOWS = Path(__file__).resolve().parent / "fixtures" / "flows"
BLOCKS = Path(sys.executable).with_name("blocks")
CLI_TIMEOUT = 120.0
"""Upper bound for one CLI call: generous, only there so a hung engine fails the test."""
_ENGINE_ENV = ("BLOCKS_FAULTS", "BLOCKS_STATE_DIR", "BLOCKS_USER", "PYTHONDONTWRITEBYTECODE")


def pid_gone(pid: int) -> bool:
    """Has process `pid` exited? A zombie counts as exited: where PID 1 does not reap
    orphans (many containers), a killed grandchild stays a zombie and `kill(pid, 0)` keeps
    succeeding on it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :].split()[0] in ("Z", "X")


def _started_at(pid: int) -> str | None:
    """The start time of process `pid` (field 22 of /proc/PID/stat), to tell it from a later
    process that reused its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()[19]


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll until `predicate()` is truthy and return its value; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Project:
    """A project folder with the fixture flows, and the `blocks` CLI run inside it."""

    def __init__(self, root: Path, pycache: Path | None = None) -> None:
        self.root = root
        self.pycache = pycache
        self.spawned: list[subprocess.Popen[str]] = []
        self.orphans: list[tuple[int, str]] = []

    # ---- running blocks --------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _ENGINE_ENV}
        if self.pycache is not None:
            # every call starts a fresh engine; compiled modules shared across the session
            # (outside the repository) save a good share of each start
            env["PYTHONPYCACHEPREFIX"] = str(self.pycache)
        env.update(extra)
        return env

    def blocks(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run `blocks ARGS` to completion in the project folder (stderr is not a TTY)."""
        return subprocess.run(
            [str(BLOCKS), *args],
            cwd=self.root,
            env=self.env(**(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def blocks_parallel(self, *calls: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
        """Run independent read-only `blocks` calls at the same time; results in order."""
        procs = [self.popen(*args) for args in calls]
        results = []
        for args, proc in zip(calls, procs, strict=True):
            stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT)
            results.append(
                subprocess.CompletedProcess([str(BLOCKS), *args], proc.returncode, stdout, stderr)
            )
        return results

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start `blocks ARGS` in the background; killed at teardown if still running."""
        proc = subprocess.Popen(
            [str(BLOCKS), *args],
            cwd=self.root,
            env=self.env(**(env or {})),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        self.spawned.append(proc)
        return proc

    def run_json(
        self, *args: str, env: dict[str, str] | None = None, expect: int = 0
    ) -> dict[str, Any]:
        """`blocks run ARGS --json`: check the exit code and return the parsed outcome."""
        done = self.blocks("run", *args, "--json", env=env)
        assert done.returncode == expect, self.explain(done)
        return json.loads(done.stdout)

    @staticmethod
    def explain(done: subprocess.CompletedProcess[str]) -> str:
        return (
            f"exit {done.returncode}\n--- stdout ---\n{done.stdout[-4000:]}\n"
            f"--- stderr ---\n{done.stderr[-4000:]}"
        )

    # ---- reading what a run left -----------------------------------------------------

    @property
    def runs_dir(self) -> Path:
        return self.root / ".blocks" / "runs"

    def run_ids(self) -> list[str]:
        if not self.runs_dir.is_dir():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir() if (p / "journal.log").exists())

    def only_run_id(self) -> str:
        ids = self.run_ids()
        assert len(ids) == 1, ids
        return ids[0]

    def journal_path(self, run_id: str) -> Path:
        return self.runs_dir / run_id / "journal.log"

    def journal(self, run_id: str) -> list[dict[str, Any]]:
        return read_journal(self.journal_path(run_id)).records

    def side_effects(self) -> collections.Counter[str]:
        """How many times each step really executed (one line per execution)."""
        path = self.root / "side_effects.log"
        if not path.exists():
            return collections.Counter()
        return collections.Counter(path.read_text().split())

    def read_pid(self, name: str) -> int | None:
        try:
            text = (self.root / name).read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text else None

    # ---- cleanup ---------------------------------------------------------------------

    def kill_later(self, pid: int) -> None:
        """A step's process the engine may leave behind (steps run in sessions of their own,
        so a SIGKILLed engine orphans them): SIGKILL it at teardown if it still runs. Only
        that very process: a pid reused since then has another start time and is spared."""
        started = _started_at(pid)
        if started is not None:
            self.orphans.append((pid, started))

    def cleanup(self) -> None:
        for proc in self.spawned:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=10)
        for pid, started in self.orphans:
            if _started_at(pid) == started and not pid_gone(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def events(
    records: list[dict[str, Any]], event: str, step: str | None = None, instance: str | None = None
) -> list[dict[str, Any]]:
    """The records of one event, optionally of one step (and instance)."""
    return [
        r
        for r in records
        if r.get("event") == event
        and (step is None or r.get("step") == step)
        and (instance is None or r.get("instance", r.get("step")) == instance)
    ]


def seq_of(records: list[dict[str, Any]], event: str, step: str) -> int:
    """The seq of the single `event` record of `step` (the whole step, not an item)."""
    found = events(records, event, step, instance=step)
    assert len(found) == 1, (event, step, found)
    return int(found[0]["seq"])


@pytest.fixture(scope="session")
def engine_pycache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pycache")


@pytest.fixture
def blocks_project(tmp_path: Path, engine_pycache: Path) -> Iterator[Project]:
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "e2e-fixture"\nversion = "0"\n')
    for source in FLOWS.iterdir():
        if source.is_file() and source.suffix in (".yaml", ".py"):
            shutil.copy2(source, root / source.name)
    project = Project(root, engine_pycache)
    try:
        yield project
    finally:
        project.cleanup()


@pytest.fixture(scope="session")
def release_template(
    tmp_path_factory: pytest.TempPathFactory, engine_pycache: Path
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Two good runs of the release flow, made once per test process: most tests here start
    from them, and each gets its own copy of the state (`two_runs`)."""
    from tests.test_channels_cli import release_run, setup_release  # noqa: PLC0415

    root = tmp_path_factory.mktemp("release-template") / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "e2e-fixture"\nversion = "0"\n')
    project = Project(root, engine_pycache)
    setup_release(project)
    try:
        a = release_run(project)
        b = release_run(project)
    finally:
        project.cleanup()
    return root, a, b
