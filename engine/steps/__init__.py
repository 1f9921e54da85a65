"""The built-in step kinds, and what they share: `shell`, `python`, `llm` and `flow`.

Owns: `builtin_step_kinds()`, which the runtime registers, and `file_digest`, the cached
sha256 of a file that kinds use for `code_digest`.
Must not: register kinds anywhere itself (the runtime builds the `Registry`), import a kind at
module import time (each kind pulls in its own dependencies only when the runtime asks for
it), or import `engine.gates`.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from engine.plugins import StepKind

__all__ = ["builtin_step_kinds", "file_digest"]

_RACY_NS = 2_000_000_000
"""A file modified this recently is hashed every time: file systems stamp mtimes coarsely
(a few ms), so an edit of equal size within one tick would otherwise keep a stale digest."""

_digests: dict[str, tuple[tuple[int, int, int, int], str]] = {}


def file_digest(path: Path) -> str | None:
    """`sha256:<hex>` of the file's bytes, or None if it cannot be read.

    Cached by path and (mtime_ns, size, inode, ctime_ns), so asking again for an unchanged
    file costs one `stat`.
    """
    try:
        st = path.stat()
        key = str(path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
        cached = _digests.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        with path.open("rb") as fh:
            digest = "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None
    if time.time_ns() - st.st_mtime_ns > _RACY_NS:
        _digests[key] = (stamp, digest)
    return digest


def builtin_step_kinds() -> list[StepKind]:
    """One instance of each built-in kind, for the runtime to register."""
    from engine.steps.flow import FlowKind  # noqa: PLC0415 - see the module docstring
    from engine.steps.llm import LlmKind  # noqa: PLC0415
    from engine.steps.python import PythonKind  # noqa: PLC0415
    from engine.steps.shell import ShellKind  # noqa: PLC0415

    return [ShellKind(), PythonKind(), LlmKind(), FlowKind()]
