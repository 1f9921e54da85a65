"""What each runbook procedure does, and what it would do (for `--dry-run`).

Owns: acting on channels, circuits, overrides, flows, files and webhooks for one rendered
procedure, and the one-line description of the change it would make.
Must not: decide order, verify, undo or approvals (`engine.runbook.runner` does), or print.

A procedure gets its arguments already rendered (`${{ }}` evaluated) as a plain dict, and
returns a JSON-able result that the step's `verify` and later steps read as `result` /
`steps.<id>.result`. Failures raise `ProcedureFailed` with a message for the on-call
engineer; nothing here retries.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from engine.channels import ALL, Channels
from engine.errors import EngineError
from engine.providers.circuits import CircuitBoard

if TYPE_CHECKING:
    from engine.runtime import Runtime

__all__ = ["ProcedureFailed", "Procedures"]

_OUTPUT_CAP = 64 * 1024


class ProcedureFailed(EngineError):
    """A procedure did not do what it was asked; the message says what happened."""


@dataclass
class Procedures:
    """The procedures of one runbook run, acting on one state folder (the project's, or a
    rehearsal's sandbox copy)."""

    runtime: Runtime
    run_id: str
    rehearsal: Path | None = None
    """The sandbox folder when rehearsing: files and webhooks are redirected into it."""
    rechecked: dict[str, bool] = field(default_factory=dict)
    """Bundle digest -> whether its blocking gates passed when a `gate` step re-checked it."""

    @functools.cached_property
    def channels(self) -> Channels:
        """One per runbook run: it remembers what it learnt about each bundle (bundles never
        change), so `verify` and `when` do not re-hash every served bundle at every step."""
        return Channels(self.runtime.store(), user=self.runtime.settings.user)

    @property
    def circuits(self) -> CircuitBoard:
        return CircuitBoard(self.runtime.settings.state_dir / "circuits.json")

    @property
    def root(self) -> Path:
        return self.runtime.settings.project_root

    # ---- the view expressions read -------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """`channels` and `circuits` as `verify` / `when` / `${{ }}` see them now."""
        chans = self.channels
        out: dict[str, Any] = {}
        entries = chans.entries()
        for name, st in chans.state(entries).items():
            current: dict[str, Any] = {
                "bundle": st.bundle or "",
                "run": st.run or "",
                "promoted_at": st.since or "",
                "gates_passed": False,
            }
            if st.bundle is not None:
                passed = chans.facts(st.bundle).gates_passed
                current["gates_passed"] = passed and self.rechecked.get(st.bundle, True)
            served = st.served()
            previous = next((e.bundle for e in served if e.bundle != st.bundle), None)
            out[name] = {"frozen": st.frozen, "current": current, "previous": previous}
        circuits = {
            name: {"state": c["state"], "failures": c["failures"], "manual": c["manual"]}
            for name, c in self.circuits.snapshot().items()
        }
        return {"channels": out, "circuits": circuits}

    # ---- doing ---------------------------------------------------------------------------

    async def do(self, args: Mapping[str, Any]) -> dict[str, Any]:
        kind = str(args["kind"])
        handler = getattr(self, f"_do_{kind}", None)
        if handler is None:
            raise ProcedureFailed(f"unknown procedure {kind!r}")
        try:
            result: dict[str, Any] = await handler(args)
        except ProcedureFailed:
            raise
        except EngineError as exc:
            raise ProcedureFailed(str(exc)) from None
        return result

    def _via(self) -> str:
        return self.run_id

    async def _do_promote(self, a: Mapping[str, Any]) -> dict[str, Any]:
        e = self.channels.promote(
            str(a["bundle"]), str(a["channel"]), reason=a.get("reason"), via=self._via()
        )
        return _entry_result(e)

    async def _do_rollback(self, a: Mapping[str, Any]) -> dict[str, Any]:
        e = self.channels.rollback(
            str(a["channel"]),
            to=str(a.get("to") or "last-good"),
            reason=a.get("reason"),
            via=self._via(),
        )
        return _entry_result(e)

    async def _do_freeze(self, a: Mapping[str, Any]) -> dict[str, Any]:
        reason = str(a.get("reason") or f"runbook run {self.run_id}")
        return _entry_result(
            self.channels.freeze(str(a["channel"]), reason=reason, via=self._via())
        )

    async def _do_unfreeze(self, a: Mapping[str, Any]) -> dict[str, Any]:
        reason = str(a.get("reason") or f"runbook run {self.run_id}")
        return _entry_result(
            self.channels.unfreeze(str(a["channel"]), reason=reason, via=self._via())
        )

    async def _do_circuit(self, a: Mapping[str, Any]) -> dict[str, Any]:
        provider, state = str(a["provider"]), a["state"]
        board = self.circuits
        before = board.snapshot().get(provider, {}).get("state", "closed")
        reason = str(a.get("reason") or f"runbook run {self.run_id}")
        try:
            board.set_manual(provider, state, reason=reason, by=self.runtime.settings.user)
        except (OSError, ValueError) as exc:
            raise ProcedureFailed(f"cannot set the circuit of {provider}: {exc}") from None
        return {"provider": provider, "before": before, "state": board.state(provider)}

    async def _do_limits(self, a: Mapping[str, Any]) -> dict[str, Any]:
        flow = self._flow_key(str(a["flow"]))
        values = {k: a.get(k) for k in ("concurrency", "timeout", "rpm") if a.get(k) is not None}
        before = self.runtime.overrides().set_limits(
            flow, values, by=self.runtime.settings.user, reason=f"runbook run {self.run_id}"
        )
        return {"flow": flow, "before": before, "limits": values}

    async def _do_route(self, a: Mapping[str, Any]) -> dict[str, Any]:
        flow = self._flow_key(str(a["flow"]))
        plan = self.runtime.plan(str(self.root / flow))
        route = str(a["route"])
        spec = plan.flow.models.get(route)
        if spec is None:
            raise ProcedureFailed(f"{flow} has no model route '{route}'")
        if a["use"] == "fallback" and not spec.fallbacks and not plan.overrides.get("routes"):
            raise ProcedureFailed(f"route '{route}' of {flow} has no fallback to use")
        before = self.runtime.overrides().set_route(
            flow,
            route,
            a["use"],
            by=self.runtime.settings.user,
            reason=f"runbook run {self.run_id}",
        )
        now = self.runtime.plan(str(self.root / flow)).flow.models[route].model
        return {"flow": flow, "route": route, "before": before, "use": a["use"], "model": now}

    async def _do_run(self, a: Mapping[str, Any]) -> dict[str, Any]:
        flow = self._flow_key(str(a["flow"]))
        plan = self.runtime.plan(str(self.root / flow))
        resume = a.get("rerun_failed_of") or None
        given = {
            k: v if isinstance(v, str) else json.dumps(v)
            for k, v in (a.get("inputs") or {}).items()
        }
        outcome = await self.runtime.run(plan, given=given, resume=resume, force=bool(resume))
        return {
            "run": outcome.run_id,
            "status": outcome.status,
            "bundle": outcome.bundle or "",
            "gates": dict(outcome.gates),
            "outputs": outcome.outputs,
        }

    async def _do_gate(self, a: Mapping[str, Any]) -> dict[str, Any]:
        ref = a.get("bundle")
        channel = a.get("channel")
        if not ref:
            state = self.channels.channel(str(channel))
            if state.bundle is None:
                raise ProcedureFailed(f"channel {channel} serves no bundle to check")
            ref = state.bundle
        result = await self.runtime.recheck(str(ref), a.get("gate"))
        self.rechecked[result["bundle"]] = bool(result["gates_passed"])
        if channel:
            result["channel"] = channel
        return result

    async def _do_shell(self, a: Mapping[str, Any]) -> dict[str, Any]:
        argv = [str(x) for x in a["run"]]
        if argv[0] == "blocks":  # the same engine, whatever PATH says
            argv = [sys.executable, "-m", "engine", *argv[1:]]
        env = {**os.environ, **{str(k): str(v) for k, v in (a.get("env") or {}).items()}}
        if self.rehearsal is not None:
            env["BLOCKS_STATE_DIR"] = str(self.runtime.settings.state_dir)
            env.pop("BLOCKS_STORE", None)
        try:
            proc = await anyio.run_process(
                argv, cwd=self.root, env=env, check=False, start_new_session=True
            )
        except OSError as exc:
            raise ProcedureFailed(f"cannot run {argv[0]}: {exc}") from None
        out = proc.stdout[-_OUTPUT_CAP:].decode("utf-8", "replace")
        err = proc.stderr[-_OUTPUT_CAP:].decode("utf-8", "replace")
        result = {"exit_code": proc.returncode, "stdout": out, "stderr": err}
        if proc.returncode != 0:
            last = (err.strip() or out.strip()).splitlines()[-1:] or [""]
            raise ProcedureFailed(f"{argv[0]} exited {proc.returncode}: {last[0]}")
        return result

    async def _do_notify(self, a: Mapping[str, Any]) -> dict[str, Any]:
        to, message = str(a["to"]), str(a["message"])
        if to.startswith(("https://", "http://")):
            if self.rehearsal is not None:
                path = self.rehearsal / "notify" / "webhooks.log"
                _append(path, f"POST {_host(to)}: {message}")
                return {"to": _host(to), "sent": False, "rehearsal_file": str(path)}
            await anyio.to_thread.run_sync(_post, to, message)
            return {"to": _host(to), "sent": True}
        path = self._file(to, "notify")
        _append(path, message)
        return {"to": str(path), "sent": True}

    async def _do_approval(self, a: Mapping[str, Any]) -> dict[str, Any]:
        raise ProcedureFailed("approvals are handled by the runner")  # pragma: no cover

    async def _do_export(self, a: Mapping[str, Any]) -> dict[str, Any]:
        """What `blocks bundle export` writes: the members (verified on read), the manifest
        and the unsigned in-toto provenance statement, into a new folder, all or nothing."""
        from engine.bundle_export import (  # noqa: PLC0415
            STATEMENT,
            export_files,
            provenance_statement,
            write_export,
        )

        store = self.runtime.store()
        try:
            root = store.resolve(str(a["bundle"]))
        except EngineError as exc:
            raise ProcedureFailed(f"no bundle {a['bundle']!r} to export: {exc}") from None
        manifest = store.get_manifest(root)
        members = {m.path: store.read_member(root, m.path) for m in manifest.members}
        files = export_files(manifest, members)
        statement = provenance_statement(root, manifest, members)
        files[STATEMENT] = (json.dumps(statement, indent=2, ensure_ascii=False) + "\n").encode()
        target = self._file(str(a["to"]), "exports")
        try:
            write_export(target, files)
        except OSError as exc:
            raise ProcedureFailed(f"cannot export to {target}: {exc.strerror or exc}") from None
        return {"bundle": root, "to": str(target), "members": len(manifest.members)}

    # ---- helpers -------------------------------------------------------------------------

    def _flow_key(self, flow: str) -> str:
        return self.runtime.flow_key(str(self.root / flow))

    def _file(self, rel: str, what: str) -> Path:
        path = Path(rel)
        if self.rehearsal is not None:
            return self.rehearsal / what / (path.relative_to("/") if path.is_absolute() else path)
        return path if path.is_absolute() else self.root / path

    # ---- describing (dry run) ------------------------------------------------------------

    def describe(self, args: Mapping[str, Any]) -> str:
        """What `do` would change, in one line, computed from the state now."""
        kind = str(args["kind"])
        a = args
        try:
            return self._describe(kind, a)
        except EngineError as exc:
            return f"would fail now: {exc}"

    def _describe(self, kind: str, a: Mapping[str, Any]) -> str:
        chans = self.channels
        if kind == "promote":
            facts = chans.facts(str(a["bundle"]))
            cur = chans.channel(str(a["channel"]))
            ok = "" if facts.gates_passed else f" - REFUSED: {facts.why_not()}"
            frozen = " - REFUSED: channel frozen" if cur.frozen else ""
            return f"{a['channel']}: {_s(cur.bundle)} -> {_s(facts.digest)}{ok}{frozen}"
        if kind == "rollback":
            now = chans.channel(str(a["channel"]))
            back = chans.rollback_target(now, str(a.get("to") or "last-good"))
            return f"{a['channel']}: {_s(now.bundle)} -> {_s(back.digest)} (run {back.run})"
        if kind in ("freeze", "unfreeze"):
            one = chans.channel(str(a["channel"])) if a["channel"] != ALL else None
            frozen = "frozen" if one is not None and one.frozen else "not frozen"
            return f"{a['channel']}: {frozen} -> {kind}"
        if kind == "circuit":
            before = self.circuits.snapshot().get(str(a["provider"]), {}).get("state", "closed")
            return f"circuit {a['provider']}: {before} -> {a['state']} (manual)"
        if kind == "limits":
            values = {k: a[k] for k in ("concurrency", "timeout", "rpm") if a.get(k) is not None}
            flow = self._flow_key(str(a["flow"]))
            before = self.runtime.overrides().for_flow(flow).get("limits") or {}
            return f"{flow}: limits overridden {before or '{}'} -> {values}"
        if kind == "route":
            return f"{a['flow']}: route {a['route']} -> {a['use']}"
        if kind == "run":
            what = (
                f"re-run what did not succeed in {a['rerun_failed_of']}"
                if a.get("rerun_failed_of")
                else "a new run"
            )
            return f"runs {a['flow']} ({what}); writes a run and its bundle"
        if kind == "gate":
            which = a.get("bundle") or f"the bundle {a.get('channel')} serves"
            return f"re-checks the gates of {which}; changes nothing"
        if kind == "shell":
            return "runs " + " ".join(str(x) for x in a["run"])
        if kind == "notify":
            to = str(a["to"])
            where = (
                f"POST to {_host(to)}"
                if to.startswith(("http://", "https://"))
                else (f"append to {self._file(to, 'notify')}")
            )
            return f"{where}: {a['message']}"
        if kind == "approval":
            return f"waits for {a.get('approvers', 1)} approver(s): {a.get('message') or ''}"
        if kind == "export":
            return f"exports bundle {_s(str(a['bundle']))} to {self._file(str(a['to']), 'exports')}"
        return kind


def _s(digest: str | None) -> str:
    return digest[:19] if digest else "nothing"


def _entry_result(e: Any) -> dict[str, Any]:
    return {
        "entry": e.seq,
        "action": e.action,
        "channel": e.channel,
        "bundle": e.bundle or "",
        "previous": e.previous or "",
        "run": e.run or "",
    }


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def _host(url: str) -> str:
    """A webhook's scheme and host only: its path often carries a token."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}"


def _post(url: str, message: str) -> None:
    import urllib.request  # noqa: PLC0415

    body = json.dumps({"text": message}).encode()
    req = urllib.request.Request(  # noqa: S310  (http(s) only: checked by the caller)
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            if resp.status >= 300:
                raise ProcedureFailed(f"webhook {_host(url)} answered {resp.status}")
    except OSError as exc:
        raise ProcedureFailed(f"webhook {_host(url)} failed: {type(exc).__name__}") from None
