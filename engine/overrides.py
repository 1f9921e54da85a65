"""Operational overrides of a flow: lower concurrency, a longer timeout, a rate limit, a
model route sent to its fallback. Set by runbooks (`limits`, `route`), honoured by every
later run of the flow until undone, and shown by `blocks plan` and in the run's bundle.

Owns: the overrides file (`<state dir>/overrides.json`), its atomic read-modify-write, and
applying an override to a `Flow` before it is planned.
Must not: plan or run flows, or decide when an override is wise (runbooks do).

The file maps a flow's path (relative to the project root, `/`-separated) to what is
overridden::

    {"pipelines/basel-attestation.yaml": {
        "limits": {"concurrency": 2, "timeout": 1800.0, "rpm": 30},
        "routes": {"drafter": "fallback"},
        "by": "alice", "reason": "runbook rate-limit run 20261122-...", "at": "..."}}

Writes go to a temp file in the same folder, fsync, `os.replace`, under an `flock` on a
sidecar lock file, so two runbooks never lose each other's change and a reader sees the old
file or the new one. The spec on disk never changes: the flow's digest stays what review
approved, and the override is recorded beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from engine.errors import UsageError
from engine.spec import Flow

__all__ = ["Overrides"]

RouteUse = Literal["primary", "fallback"]
_T = TypeVar("_T")


class Overrides:
    """The overrides file of one state folder."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read the overrides file {self.path}: {exc}") from None
        if not isinstance(data, dict):
            raise UsageError(f"{self.path}: expected a JSON object")
        return data

    def for_flow(self, flow: str) -> dict[str, Any]:
        return dict(self.read().get(flow) or {})

    def set_limits(
        self, flow: str, values: dict[str, Any], *, by: str, reason: str
    ) -> dict[str, Any]:
        """Override the named limits (a `None` value clears one); return the limits
        overridden before, so the change can be described and undone."""

        def change(entry: dict[str, Any]) -> dict[str, Any]:
            before = dict(entry.get("limits") or {})
            after = dict(before)
            for key, value in values.items():
                if value is None:
                    after.pop(key, None)
                else:
                    after[key] = value
            entry["limits"] = after
            return before

        return self._update(flow, change, by=by, reason=reason)

    def set_route(self, flow: str, route: str, use: RouteUse, *, by: str, reason: str) -> str:
        """Send `route` to its fallback or back to its primary; return what it used before."""

        def change(entry: dict[str, Any]) -> str:
            routes = dict(entry.get("routes") or {})
            before = str(routes.get(route, "primary"))
            if use == "primary":
                routes.pop(route, None)
            else:
                routes[route] = use
            entry["routes"] = routes
            return before

        return self._update(flow, change, by=by, reason=reason)

    def apply(self, flow: Flow, flow_key: str) -> tuple[Flow, dict[str, Any]]:
        """The flow with its overrides applied, and the overrides that were (empty: none)."""
        entry = self.for_flow(flow_key)
        limits = dict(entry.get("limits") or {})
        routes = dict(entry.get("routes") or {})
        if not limits and not routes:
            return flow, {}
        update: dict[str, Any] = {}
        lim_update = {k: limits[k] for k in ("concurrency", "timeout") if k in limits}
        if lim_update:
            update["limits"] = flow.limits.model_copy(update=lim_update)
        models = dict(flow.models)
        if "rpm" in limits:
            models = {rid: r.model_copy(update={"rpm": limits["rpm"]}) for rid, r in models.items()}
        for rid, use in routes.items():
            route = models.get(rid)
            if use == "fallback" and route is not None and route.fallbacks:
                models[rid] = route.model_copy(
                    update={
                        "model": route.fallbacks[0],
                        "fallbacks": [*route.fallbacks[1:], route.model],
                    }
                )
        if models != dict(flow.models):
            update["models"] = models
        applied = {k: v for k, v in entry.items() if k in ("limits", "routes", "by", "reason")}
        return flow.model_copy(update=update), applied

    # ---- writing -------------------------------------------------------------------------

    def _update(
        self, flow: str, change: Callable[[dict[str, Any]], _T], *, by: str, reason: str
    ) -> _T:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            data = self.read()
            entry = dict(data.get(flow) or {})
            before = change(entry)
            entry.update(by=by, reason=reason, at=datetime.now(UTC).isoformat())
            if not entry.get("limits") and not entry.get("routes"):
                data.pop(flow, None)
            else:
                data[flow] = entry
            self._write(data)
        return before

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, data: dict[str, Any]) -> None:
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=".overrides-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
