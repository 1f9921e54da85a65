"""The `python` step kind: call `module:function` in the engine's process with JSON-able
keyword arguments.

Owns: importing the module (in a worker thread, once), looking the function up (once per call
string), calling it (`async def` on the event loop, plain functions in a worker thread),
checking that the return value is JSON-able, and turning the user's exceptions into
`StepFailed` with a category and a traceback file in the attempt's workdir.
Must not: import user code to compute `code_digest` (it hashes the source file it finds),
do per-call work beyond a dict lookup and the call itself (the executor's overhead budget
is 0.1 ms per step), or let a user's exception message reach the engine unredacted.

Cancellation: an `async def` function is cancelled where it awaits. A plain function runs in
a thread that cannot be interrupted: cancelling abandons the thread (it runs on, its result
is discarded) and the step is reported cancelled at once.
Modules are imported once per process: an edited module changes `code_digest` (so caches
miss) but the code that runs is the one imported first, until the engine restarts.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import importlib.util
import inspect
import json
import math
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from engine.errors import StepFailed
from engine.plugins import Render, StepContext, StepResult
from engine.spec.flow import PythonStep
from engine.steps import file_digest

__all__ = ["PythonKind", "source_file"]

TRACEBACK_FRAMES = 20
"""How many of the innermost frames `traceback.txt` keeps."""

_CATEGORIES: tuple[tuple[type[BaseException], str], ...] = (
    (TimeoutError, "timeout"),
    (ConnectionError, "connection"),
)


@dataclass(frozen=True, slots=True)
class _Target:
    call: str
    func: Callable[..., Any]
    is_async: bool
    none_result: StepResult
    """The result when the function returns None, built once: `StepResult` is frozen, and
    building one costs more than the rest of a no-op call."""


class PythonKind:
    """Calls a function; its JSON-able return value is the step's result."""

    name: str = "python"

    def __init__(self) -> None:
        self._targets: dict[str, _Target] = {}
        self._loading: dict[str, anyio.Lock] = {}

    def resolve(self, step: Any, render: Render) -> dict[str, Any]:
        step = _python_step(step)
        return {
            "call": step.call,
            "with": render(dict(step.with_)) if step.with_ else {},
            "pythonpath": list(step.pythonpath),
        }

    def code_digest(self, step: Any, project_root: Path) -> str | None:
        """sha256 of the module's source file, found without importing the module."""
        path = source_file(step, project_root)
        return file_digest(path) if path is not None else None

    async def run(self, ctx: StepContext, resolved: Mapping[str, Any]) -> StepResult:
        target = self._targets.get(resolved["call"])
        if target is None:
            target = await self._load(ctx, resolved)
        kwargs = resolved["with"]
        try:
            if target.is_async:
                value = await target.func(**kwargs)
            else:
                value = await anyio.to_thread.run_sync(
                    functools.partial(target.func, **kwargs), abandon_on_cancel=True
                )
                if inspect.isawaitable(value):
                    value = await value
        except (Exception, SystemExit) as exc:
            # `from None`: the user's own exception may carry unredacted text
            raise _user_failure(ctx, target.call, exc) from None
        if value is None:
            return target.none_result
        return StepResult(
            result=_json_result(ctx, target.call, value), detail={"call": target.call}
        )

    async def _load(self, ctx: StepContext, resolved: Mapping[str, Any]) -> _Target:
        """Import and look up once per call string; concurrent first calls wait for one
        import instead of each sending one to a worker thread."""
        call: str = resolved["call"]
        lock = self._loading.setdefault(call, anyio.Lock())
        try:
            async with lock:
                target = self._targets.get(call)
                if target is None:
                    _extend_sys_path(_roots(ctx.project_root, resolved.get("pythonpath", ())))
                    target = await _import_target(ctx, call)
                    self._targets[call] = target
                return target
        finally:
            # a lock is bound to the event loop that used it; do not keep it past the load
            if self._loading.get(call) is lock and not lock.statistics().tasks_waiting:
                del self._loading[call]


def source_file(step: Any, project_root: Path) -> Path | None:
    """The source file of the step's module, found without importing it (None if not found).
    `code_digest` hashes it; `blocks lock` pins it."""
    step = _python_step(step)
    module = step.call.partition(":")[0]
    return _module_file(module, _roots(project_root, step.pythonpath))


def _python_step(step: Any) -> PythonStep:
    if not isinstance(step, PythonStep):
        raise TypeError(f"the python kind was given a {type(step).__name__}, not a PythonStep")
    return step


def _extend_sys_path(roots: list[Path]) -> None:
    """Put the project's folders first on `sys.path`, each once."""
    for root in reversed(roots):
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
    importlib.invalidate_caches()  # a module written since the finders last looked


def _roots(project_root: Path, pythonpath: Any) -> list[Path]:
    """The folders a step's module is looked up in, in `sys.path` order."""
    return [*(project_root / p for p in pythonpath), project_root]


def _module_file(module: str, roots: list[Path]) -> Path | None:
    """The source file `import module` would load, by walking `roots` first; otherwise asks
    `importlib.util.find_spec` (which imports parent packages of a dotted name, never the
    module itself)."""
    rel = Path(*module.split("."))
    for root in roots:
        for candidate in (root / rel.parent / f"{rel.name}.py", root / rel / "__init__.py"):
            if candidate.is_file():
                return candidate
    try:
        spec = importlib.util.find_spec(module)
    except Exception:  # a parent package failing to import means "not found"
        return None
    if spec is None or not spec.has_location or not spec.origin:
        return None
    return Path(spec.origin)


async def _import_target(ctx: StepContext, call: str) -> _Target:
    module_name, _, attr = call.partition(":")
    try:
        module = await anyio.to_thread.run_sync(
            importlib.import_module, module_name, abandon_on_cancel=True
        )
    except Exception as exc:  # any failure of user code at import time
        raise _import_failure(ctx, module_name, exc) from None
    func = getattr(module, attr, None)
    if func is None:
        raise StepFailed(
            _missing_function(module, module_name, attr), step=ctx.instance, category="permanent"
        )
    if not callable(func):
        raise StepFailed(
            f"{call} is a {type(func).__name__}, not a function",
            step=ctx.instance,
            category="permanent",
        )
    # an object whose __call__ is async counts as async too; `callable()` cannot tell that
    dunder_call = getattr(func, "__call__", None)  # noqa: B004
    is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(dunder_call)
    return _Target(
        call=call,
        func=func,
        is_async=is_async,
        none_result=StepResult(result=None, detail={"call": call}),
    )


def _import_failure(ctx: StepContext, module: str, exc: Exception) -> StepFailed:
    if (
        isinstance(exc, ModuleNotFoundError)
        and exc.name
        and (module == exc.name or module.startswith(exc.name + "."))
    ):
        message = (
            f"no module named '{module}' (looked in the project root, its pythonpath "
            "entries and the engine's sys.path)"
        )
    else:
        _write_traceback(ctx, exc)
        message = f"importing '{module}' failed: {type(exc).__name__}: {exc}"
    return StepFailed(ctx.redactor.text(message), step=ctx.instance, category="permanent")


def _missing_function(module: Any, module_name: str, attr: str) -> str:
    public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
    message = f"module '{module_name}' has no function '{attr}'"
    close = difflib.get_close_matches(attr, public, n=3)
    if close:
        message += "; did you mean " + " or ".join(f"'{n}'" for n in close) + "?"
    return message


def _user_failure(ctx: StepContext, call: str, exc: BaseException) -> StepFailed:
    """A user exception as a `StepFailed`: a `StepFailed` the function raised keeps its
    category; timeouts and dropped connections are `timeout` / `connection`; anything else is
    permanent."""
    _write_traceback(ctx, exc)
    if isinstance(exc, StepFailed):
        category, retry_after = exc.category, exc.retry_after
    else:
        category = next((c for t, c in _CATEGORIES if isinstance(exc, t)), "permanent")
        retry_after = None
    text = str(exc)
    message = f"{call} raised {type(exc).__name__}" + (f": {text}" if text else "")
    return StepFailed(
        ctx.redactor.text(message), step=ctx.instance, category=category, retry_after=retry_after
    )


def _write_traceback(ctx: StepContext, exc: BaseException) -> None:
    text = "".join(traceback.format_exception(exc, limit=-TRACEBACK_FRAMES))
    # the failure itself is what matters; its traceback file is a courtesy
    with contextlib.suppress(OSError):
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        (ctx.workdir / "traceback.txt").write_text(ctx.redactor.text(text), encoding="utf-8")


def _json_result(ctx: StepContext, call: str, value: Any) -> Any:
    """The return value as the JSON it will be stored as (tuples become lists, keys strings);
    plain scalars take a fast path that skips encoding."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or (kind is float and math.isfinite(value)):
        return value
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise StepFailed(
            ctx.redactor.text(
                f"{call} returned a {kind.__name__}, which is not JSON-able "
                f"(need a dict, list, str, number, bool or None): {exc}"
            ),
            step=ctx.instance,
            category="permanent",
        ) from None
