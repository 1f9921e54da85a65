"""What the gate kinds share: project paths, digests, running a tool, JSON pointers, the record.

Owns: resolving a spec path inside the project (escaping it is a `GateError`: bad config),
`sha256:` digests of inputs, running an external tool in a process group of its own with its
output in a log file (stopped, whole group, on timeout or cancellation), finding a tool next
to the running interpreter, RFC 6901 pointers, and `measurement`, which redacts evidence and
summary before they leave the kind.
Must not: judge (the engine evaluates `require`), import a step kind, or read the environment
(tools inherit it).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

from engine.errors import GateError
from engine.plugins import GateContext, Measurement

__all__ = [
    "MAX_LISTED",
    "ToolRun",
    "file_digest",
    "fmt_number",
    "measurement",
    "project_path",
    "resolve_pointer",
    "run_tool",
    "tool_command",
    "tool_version",
]

MAX_LISTED = 200
"""At most this many items (violations, findings, survivors) are listed in the evidence; the
count of the rest is recorded next to the list."""
TERM_GRACE_SECONDS = 2.0
"""A stopped tool's process group gets this long between SIGTERM and SIGKILL."""
TAIL_BYTES = 4000
"""How much of the end of a tool's output the evidence keeps (the log file has all of it)."""


def project_path(ctx: GateContext, rel: str, field: str) -> Path:
    """`rel` (a spec path) inside the project root, resolved; one that leaves the project is a
    configuration error the gate cannot measure around."""
    root = ctx.project_root.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise GateError(f"`{field}: {rel}` points outside the project ({root})")
    return path


def relative(ctx: GateContext, path: Path) -> str:
    """How the record names a project file: relative to the root, with `/`."""
    try:
        return path.resolve().relative_to(ctx.project_root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def file_digest(path: Path) -> str | None:
    """`sha256:<hex>` of the file's bytes, or None when it cannot be read."""
    try:
        with path.open("rb") as fh:
            return "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


def inputs_digest(ctx: GateContext, paths: Sequence[Path]) -> dict[str, Any]:
    """What a tool judged, pinned: the sha256 of every file under `paths` (folders walked,
    caches and hidden folders skipped) by project-relative path, and one digest over all of
    them, so the evidence names the exact code a verdict was about."""
    files: dict[str, str] = {}
    for path in paths:
        found = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        for f in found:
            parts = f.relative_to(path).parts if f != path else ()
            if not f.is_file() or any(p.startswith(".") or p == "__pycache__" for p in parts):
                continue
            digest = file_digest(f)
            if digest is not None:
                files[relative(ctx, f)] = digest
    whole = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(files.items())).encode())
    return {"files": len(files), "sha256": "sha256:" + whole.hexdigest(), "by_file": files}


def tool_version(distribution: str) -> str | None:
    """The installed version of a tool's distribution (the one next to the interpreter)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def tool_command(script: str, module: str) -> list[str]:
    """argv prefix that runs a Python tool of this environment: its console script next to
    the running interpreter when there is one, else `python -m module`. Raises `GateError`
    when the tool is not installed at all."""
    if tool_version(script) is None:
        raise GateError(
            f"{script} is not installed in this environment ({sys.prefix}); "
            f"install it (pip install {script}) to use this gate"
        )
    beside = Path(sys.executable).with_name(script)
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [sys.executable, "-m", module]


@dataclass(frozen=True, slots=True)
class ToolRun:
    """How one tool invocation ended."""

    argv: tuple[str, ...]
    returncode: int | None
    """None when it was stopped (timeout)."""
    timed_out: bool
    seconds: float
    log: Path
    tail: str
    """The end of its combined stdout and stderr (redacted)."""

    def record(self) -> dict[str, Any]:
        return {
            "argv": list(self.argv),
            "exit_code": self.returncode,
            "timed_out": self.timed_out,
            "seconds": round(self.seconds, 3),
            "log": self.log.as_posix(),
        }


async def run_tool(
    ctx: GateContext,
    argv: Sequence[str],
    *,
    cwd: Path,
    log: Path,
    timeout: float | None,
    env: Mapping[str, str] | None = None,
) -> ToolRun:
    """Run `argv` in `cwd` with stdout and stderr into `log`, in a session of its own so that
    a timeout or a cancellation stops every process it started (SIGTERM, then SIGKILL)."""
    started = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    timed_out = False
    with log.open("wb") as sink:
        try:
            process = await anyio.open_process(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        except OSError as exc:
            raise GateError(
                ctx.redactor.text(f"cannot start {argv[0]}: {exc.strerror or exc}")
            ) from None
        try:
            with anyio.move_on_after(timeout) as scope:
                await process.wait()
            timed_out = scope.cancelled_caught
        finally:
            # a timeout, a cancellation, or workers left behind: stop the whole group
            with anyio.CancelScope(shield=True):
                await _stop_group(process)
                await process.aclose()
    return ToolRun(
        argv=tuple(argv),
        returncode=None if timed_out else process.returncode,
        timed_out=timed_out,
        seconds=time.monotonic() - started,
        log=log,
        tail=ctx.redactor.text(_tail(log)),
    )


async def _stop_group(process: Process) -> None:
    pgid = process.pid  # start_new_session: the tool leads its own group
    if process.returncode is None:
        _signal_group(pgid, signal.SIGTERM)
        with anyio.move_on_after(TERM_GRACE_SECONDS):
            while process.returncode is None:
                await anyio.sleep(0.02)
    # forked workers may outlive their parent: the group goes, whatever is left of it
    _signal_group(pgid, signal.SIGKILL)
    with anyio.move_on_after(TERM_GRACE_SECONDS):
        await process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _tail(log: Path) -> str:
    try:
        with log.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - TAIL_BYTES))
            data = fh.read()
    except OSError:
        return ""
    # progress spinners redraw with carriage returns: keep what a terminal would show last
    lines = [line.rsplit("\r", 1)[-1] for line in data.decode("utf-8", "replace").split("\n")]
    return "\n".join(line for line in lines if line.strip())


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value at RFC 6901 `pointer`. `""` and `"/"` are the whole document, as for step
    outputs. Raises `LookupError` naming the first token that does not resolve."""
    if pointer in ("", "/"):
        return document
    if not pointer.startswith("/"):
        raise LookupError(f"'{pointer}' is not a JSON pointer (it must start with '/')")
    value = document
    walked = ""
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        walked += "/" + raw
        if isinstance(value, Mapping):
            if token not in value:
                raise LookupError(f"no member '{token}' at {walked}")
            value = value[token]
        elif isinstance(value, list):
            if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
                raise LookupError(f"'{token}' at {walked} is not an array index")
            index = int(token)
            if index >= len(value):
                raise LookupError(f"index {index} at {walked} is past the end ({len(value)} items)")
            value = value[index]
        else:
            raise LookupError(f"{walked} goes into a {type(value).__name__}, not an object")
    return value


def fmt_number(value: float, digits: int = 1) -> str:
    """`71.4`, `80.0`, `nan`: how a summary shows a measured number."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def capped(items: Sequence[Any], limit: int = MAX_LISTED) -> tuple[list[Any], int]:
    """The first `limit` items and how many were left out."""
    return list(items[:limit]), max(0, len(items) - limit)


def measurement(
    ctx: GateContext, metrics: Mapping[str, Any], evidence: Mapping[str, Any], summary: str
) -> Measurement:
    """The kind's result, with every string of the evidence and the summary redacted."""
    return Measurement(
        metrics=dict(metrics),
        evidence=ctx.redactor.value(dict(evidence)),
        summary=ctx.redactor.text(summary),
    )
