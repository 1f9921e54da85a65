"""The `shell` step kind: run a program (an argv list) or a bash script, never through a shell
parser for argv.

Owns: turning a `ShellStep` into argv, environment and working folder; running it in a process
group of its own; streaming its output line by line (redacted) to the log and to
`stdout.log` / `stderr.log` in the attempt's workdir; keeping a bounded head of stdout; and
stopping the whole group (SIGTERM, then SIGKILL after `TERM_GRACE_SECONDS`) when the step is
cancelled or when the program exits leaving background processes behind.
Must not: resolve secrets (the executor passes their values in `ctx.env`; the resolved
parameters only name them, so cache keys and records never hold a secret), render scripts
(values reach a script through `env` only), or hold an unbounded amount of output in memory.

Memory per running step is bounded by `max_output_bytes` plus two read chunks and two
`LINE_PIECE_BYTES` line buffers, whatever the program prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio
from anyio.abc import ByteReceiveStream, Process

from engine.errors import StepFailed
from engine.plugins import Render, StepContext, StepResult
from engine.spec.flow import SecretRef, ShellStep
from engine.steps import file_digest

__all__ = ["TERM_GRACE_SECONDS", "ShellKind", "project_file"]

TERM_GRACE_SECONDS = 2.0
"""How long a cancelled program's process group gets between SIGTERM and SIGKILL."""
REAP_SECONDS = 2.0
"""How long to wait, after SIGKILL, for the group to be gone before giving up waiting."""
DRAIN_SECONDS = 2.0
"""After the program exits, how long to keep reading pipes still held open by a process
that left the group (a `setsid` daemon); then the rest of its output is not read."""
READ_CHUNK_BYTES = 65_536
LINE_PIECE_BYTES = 65_536
"""A line longer than this is logged in pieces, so a newline-free stream cannot grow memory."""
STDERR_TAIL_LINES = 10
STDERR_TAIL_CHARS = 500
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "SYSTEMROOT")

_EXIT_POLL_FIRST = 0.005
_EXIT_POLL_MAX = 0.1
_GROUP_POLL = 0.02
_PROC = Path("/proc")


class ShellKind:
    """Runs `run: [argv]` or `script:`; stdout that parses as JSON becomes the result."""

    name: str = "shell"

    def resolve(self, step: Any, render: Render) -> dict[str, Any]:
        step = _shell_step(step)
        params: dict[str, Any]
        if step.run is not None:
            params = {"argv": [_as_argument(render(arg)) for arg in step.run]}
        else:
            params = {"script": step.script}
        params["env"] = {
            name: {"secret": value.secret}
            if isinstance(value, SecretRef)
            else _as_argument(render(value))
            for name, value in step.env.items()
        }
        params["cwd"] = step.cwd
        params["max_output_bytes"] = step.max_output_bytes
        return params

    def code_digest(self, step: Any, project_root: Path) -> str | None:
        """The digest of `run[0]` when it is a path to a file inside the project, else None
        (programs found on PATH are not pinned by the engine)."""
        step = _shell_step(step)
        program = step.run[0] if step.run else ""
        if "/" not in program:
            return None
        path = project_file(step, project_root, program)
        return file_digest(path) if path is not None else None

    async def run(self, ctx: StepContext, resolved: Mapping[str, Any]) -> StepResult:
        launch = _Launch.of(ctx, resolved)
        out = _Stream("stdout", ctx, capture=launch.max_output_bytes)
        err = _Stream("stderr", ctx, capture=None)
        try:
            process = await _start(ctx, launch)
            try:
                code, drained = await _supervise(process, out, err)
            except BaseException:
                # cancelled (a timeout, a failed sibling, a signal) or failing: stop the
                # whole group before letting the cancellation or the error go on
                with anyio.CancelScope(shield=True):
                    await _stop_group(process)
                raise
            finally:
                with anyio.CancelScope(shield=True):
                    await process.aclose()
        finally:
            out.close()
            err.close()
        if code != 0:
            raise _exit_failure(ctx, launch.program, code, err.tail)
        return _success(ctx, out, drained)


def project_file(step: Any, project_root: Path, arg: str) -> Path | None:
    """The file inside the project that argv entry `arg` names (relative to the step's
    `cwd`), or None: an expression, a path outside the project, or no such file."""
    step = _shell_step(step)
    if not arg or "${{" in arg:
        return None
    root = project_root.resolve()
    path = (root / (step.cwd or ".") / arg).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def _shell_step(step: Any) -> ShellStep:
    if not isinstance(step, ShellStep):
        raise TypeError(f"the shell kind was given a {type(step).__name__}, not a ShellStep")
    return step


def _as_argument(value: Any) -> str:
    """One rendered value as one argv element: strings as they are, anything else as compact
    JSON (sorted keys, like template text), so a list never becomes several arguments."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True, slots=True)
class _Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    max_output_bytes: int
    program: str
    """How messages name the program: argv[0], or `bash script`."""

    @classmethod
    def of(cls, ctx: StepContext, resolved: Mapping[str, Any]) -> _Launch:
        script = resolved.get("script")
        argv = (
            ["bash", "-euo", "pipefail", "-c", str(script)]
            if script is not None
            else [str(a) for a in resolved["argv"]]
        )
        cwd = ctx.project_root / (resolved.get("cwd") or ".")
        if not cwd.is_dir():
            raise StepFailed(
                f"working folder '{resolved.get('cwd')}' does not exist in the project",
                step=ctx.instance,
                category="permanent",
            )
        return cls(
            argv=argv,
            env=_environment(ctx, resolved.get("env") or {}),
            cwd=cwd,
            max_output_bytes=int(resolved.get("max_output_bytes") or 1_048_576),
            program="bash script" if script is not None else argv[0],
        )


def _environment(ctx: StepContext, declared: Mapping[str, Any]) -> dict[str, str]:
    """A minimal inherited environment, the step's plain values, then `ctx.env` (secrets)."""
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    env.update({k: v for k, v in declared.items() if isinstance(v, str)})
    env.update(ctx.env)
    for name, value in declared.items():
        if isinstance(value, Mapping) and name not in ctx.env:
            # the executor may key a secret by its own name rather than the variable's
            secret = str(value.get("secret"))
            if secret not in ctx.env:
                raise StepFailed(
                    f"secret {secret} (for env {name}) was not provided to the step",
                    step=ctx.instance,
                    category="permanent",
                )
            env[name] = ctx.env[secret]
    return env


async def _start(ctx: StepContext, launch: _Launch) -> Process:
    try:
        return await anyio.open_process(
            launch.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=launch.cwd,
            env=launch.env,
            start_new_session=True,
        )
    except FileNotFoundError:
        where = (
            "relative to the working folder"
            if "/" in launch.argv[0]
            else f"on PATH ({launch.env.get('PATH', os.defpath)})"
        )
        reason = f"program '{launch.argv[0]}' was not found {where}"
    except PermissionError:
        reason = f"program '{launch.argv[0]}' is not executable (permission denied)"
    except OSError as exc:
        reason = f"program '{launch.argv[0]}' could not be started: {exc.strerror or exc}"
    raise StepFailed(ctx.redactor.text(reason), step=ctx.instance, category="permanent")


class _Stream:
    """One output stream: split into lines, redacted, logged, written to `<name>.log`; for
    stdout, also the head of the raw bytes up to `capture` bytes."""

    def __init__(self, name: str, ctx: StepContext, *, capture: int | None) -> None:
        self.name = name
        self._log = ctx.log
        self._redact = ctx.redactor.text
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] | None = (ctx.workdir / f"{name}.log").open("wb")
        self.file_failed = False
        self._pending = bytearray()
        self._capture = capture
        self.head = bytearray()
        self.total = 0
        self.tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)

    @property
    def dropped(self) -> int:
        return self.total - len(self.head)

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self._capture is not None and len(self.head) < self._capture:
            self.head += chunk[: self._capture - len(self.head)]
        pending = self._pending
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) != -1:
            self._emit(pending[start:end], b"\n")
            start = end + 1
        del pending[:start]
        while len(pending) > LINE_PIECE_BYTES:
            cut = _cut_point(pending)
            self._emit(pending[:cut], b"")
            del pending[:cut]

    def _emit(self, raw: bytes | bytearray, end: bytes) -> None:
        text = self._redact(raw.decode("utf-8", "replace"))
        if self._file is not None:
            try:
                self._file.write(text.encode() + end)
            except OSError:
                # a full disk must not fail the step (it may be the incident's diagnosis);
                # the log callback still gets every line
                self._close_file()
                self.file_failed = True
        line = text.removesuffix("\r")
        self._log(self.name, line)
        self.tail.append(line[-STDERR_TAIL_CHARS:])

    def close(self) -> None:
        if self._pending:
            self._emit(self._pending, b"")
            self._pending.clear()
        self._close_file()

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()


def _cut_point(buf: bytearray) -> int:
    """Where to split an over-long line: after the last space in its final 4 KiB (so a secret,
    which has no spaces, is rarely cut in two and escapes masking), else at a UTF-8 boundary."""
    space = buf.rfind(b" ", LINE_PIECE_BYTES - 4096, LINE_PIECE_BYTES)
    if space != -1:
        return space + 1
    cut = LINE_PIECE_BYTES
    while cut > LINE_PIECE_BYTES - 3 and (buf[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut


async def _supervise(process: Process, out: _Stream, err: _Stream) -> tuple[int, bool]:
    """Pump both pipes until the program exits; stop what it left running in its group; then
    drain the pipes (bounded). Returns the exit code and whether the pipes reached EOF."""
    drained = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_pump_both, process, out, err, drained)
        code = await _wait_exit(process, drained)
        await _stop_group(process)
        with anyio.move_on_after(DRAIN_SECONDS):
            await drained.wait()
        tg.cancel_scope.cancel()
    return code, drained.is_set()


async def _pump_both(process: Process, out: _Stream, err: _Stream, drained: anyio.Event) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(_pump, process.stdout, out)
        tg.start_soon(_pump, process.stderr, err)
    drained.set()


async def _pump(stream: ByteReceiveStream | None, sink: _Stream) -> None:
    if stream is None:
        return
    try:
        while True:
            sink.feed(await stream.receive(READ_CHUNK_BYTES))
    except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
        return


async def _wait_exit(process: Process, drained: anyio.Event) -> int:
    """The program's exit code. asyncio's `Process.wait()` (and anyio's, before it worked
    around it) also waits for the pipes to close, which a background child can hold open for
    ever; so until they close, poll the return code (set once the child is reaped)."""
    delay = _EXIT_POLL_FIRST
    while (code := process.returncode) is None:
        if drained.is_set():
            return await process.wait()
        with anyio.move_on_after(delay):
            await drained.wait()
        delay = min(delay * 2, _EXIT_POLL_MAX)
    return code


async def _stop_group(process: Process) -> None:
    """SIGTERM the program's process group, SIGKILL it after the grace period, and wait
    (bounded) until no process of it is alive and the program itself is reaped."""
    pgid = process.pid  # start_new_session: the program leads its own group
    if process.returncode is not None and not _group_alive(pgid):
        return
    _signal_group(pgid, signal.SIGTERM)
    with anyio.move_on_after(TERM_GRACE_SECONDS):
        await _until_stopped(process, pgid)
    if process.returncode is None or _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
        with anyio.move_on_after(REAP_SECONDS):
            await _until_stopped(process, pgid)


async def _until_stopped(process: Process, pgid: int) -> None:
    while process.returncode is None or _group_alive(pgid):
        await anyio.sleep(_GROUP_POLL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # already gone (or, on macOS, only zombies left)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Is any process of the group still running? Zombies do not count: where PID 1 does not
    reap orphans (many containers), killed grandchildren stay zombies and `killpg(pgid, 0)`
    keeps succeeding, so on Linux ask /proc."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _live_member_in_proc(pgid) if _PROC.is_dir() else True


def _live_member_in_proc(pgid: int) -> bool:
    for entry in os.listdir(_PROC):
        if not entry.isdigit():
            continue
        try:
            stat = (_PROC / entry / "stat").read_bytes()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _exit_failure(ctx: StepContext, program: str, code: int, tail: deque[str]) -> StepFailed:
    if code < 0:
        try:
            how = f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    message = f"'{program}' {how}"
    if tail:
        message += "; stderr ends with:\n" + "\n".join(f"  {line}" for line in tail)
    return StepFailed(ctx.redactor.text(message), step=ctx.instance, category="exit_code")


def _success(ctx: StepContext, out: _Stream, drained: bool) -> StepResult:
    stdout = ctx.redactor.text(out.head.decode("utf-8", "replace"))
    detail: dict[str, Any] = {
        "exit_code": 0,
        "stdout_bytes": out.total,
        "stdout_dropped_bytes": out.dropped,
    }
    if not drained:
        detail["output_pipes_held_open"] = True
    if out.file_failed:
        detail["stdout_log_incomplete"] = True
    # a truncated head may still parse ("12" of "1234"), so it is never a result
    return StepResult(
        result=_parse_json(stdout) if not out.dropped else None, stdout=stdout, detail=detail
    )


def _parse_json(text: str) -> Any:
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
