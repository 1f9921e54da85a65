"""`blocks runbook run`: a runbook's steps in order, each verified, undone on abort,
paused for approvals, journaled so that a crash can be resumed, and pinned into an
incident bundle when it ends.

Owns: the order of steps (`when`, `on_failure: abort | continue | goto`), `verify`, undo
in reverse on abort, approvals, timeouts, the runbook journal and resume, dry runs,
rehearsals (the same runbook against a sandbox copy of the state), and the incident
bundle. Must not: act on channels, circuits or flows itself (`procedures` does), or print
(the CLI renders the events this module reports).

The rules an on-call engineer can rely on:

- Each step's `do` runs, then its `verify` (CEL over params, earlier steps, channels,
  circuits and `result`) must be true. A step that fails (its `do` raised, timed out, or its
  verify was false) follows `on_failure`: `continue` goes on; `{goto: STEP}` jumps there
  and the run ends `failed`; `abort` undoes, newest first, every step that completed and
  has an `undo` (the failing step too when its `do` completed and only the verify failed:
  it changed something), then ends `aborted`.
- An `approval` step needs N distinct approvers (`--approve-as NAME`, repeatable, or typed
  at the prompt on a terminal), and the person who started the runbook is never enough on
  their own. Without them the run pauses (exit 5) and `--resume RUN_ID --approve-as NAME`
  continues it; approvals given earlier still count.
- Every transition is appended to `<state>/runbooks/<run id>/journal.log` before the
  runner goes on (fsynced). `--resume` replays it: finished steps are not run again, their
  results are read back; a step that was in flight when the process died is run again if
  it is `idempotent` (the default), and otherwise only with `--force`.
- `--dry-run` renders each step against the state now and says what it would change,
  writing nothing at all. `--rehearse` copies the channel ledger, circuits and overrides
  into `<state>/rehearsals/<run id>/` (bundles by hard link: they are read-only) and runs
  the real runbook there; files it would write and webhooks it would call land in the
  sandbox too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio

from engine import expressions as ex
from engine.errors import EngineError, ExpressionError, RunbookError, UsageError
from engine.executor.journal import JournalWriter, read_journal
from engine.executor.lock import RunLock
from engine.executor.outputs import render_value
from engine.plan import coerce_values
from engine.runbook.procedures import ProcedureFailed, Procedures
from engine.runbook.record import incident_members
from engine.runbook.sandbox import (
    JOURNAL,
    find_run,
    make_sandbox,
    runbook_dir,
    sandbox_runtime,
)
from engine.spec import Runbook
from engine.spec.runbook import RunbookStep
from engine.validate import load_spec

if TYPE_CHECKING:
    from engine.runtime import Runtime

__all__ = ["Approver", "RunbookOptions", "RunbookOutcome", "RunbookRunner"]

Mode = Literal["live", "rehearsal"]
Status = Literal["succeeded", "failed", "aborted", "paused"]
Approver = Callable[[str, str], str | None]
"""(step id, message) -> the name of who approves, or None to refuse. Only on a terminal."""

_MAX_VISITS = 10


@dataclass
class RunbookOptions:
    params: dict[str, str] = field(default_factory=dict)
    approvers: list[str] = field(default_factory=list)
    resume: str | None = None
    force: bool = False
    rehearse: bool = False


@dataclass
class RunbookOutcome:
    run_id: str
    status: Status
    steps: dict[str, dict[str, Any]]
    mode: Mode
    bundle: str | None = None
    waiting: dict[str, Any] | None = None
    """For a paused run: the approval step, how many approvers it needs, who approved."""
    state_dir: Path | None = None


class _StepFailure(Exception):
    def __init__(self, message: str, *, did: bool, result: Any = None) -> None:
        super().__init__(message)
        self.did = did
        self.result = result


class _Paused(Exception):
    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__("paused")
        self.info = info


@dataclass
class _State:
    """What the journal says so far: enough to resume and to evaluate expressions."""

    params: dict[str, Any]
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    completed: list[str] = field(default_factory=list)
    """Steps whose `do` completed, in order: the undo candidates."""
    undone: set[str] = field(default_factory=set)
    approvals: dict[str, list[str]] = field(default_factory=dict)
    position: int = 0
    in_flight: str | None = None
    failed_hard: bool = False
    finished: str | None = None
    visits: dict[str, int] = field(default_factory=dict)
    rechecked: dict[str, bool] = field(default_factory=dict)
    starter: str = ""
    """Who started the runbook (its `runbook.started` record): never its only approver."""
    holder: str = ""
    """`user@host:pid` of this process: recorded with each approval it takes in."""


class RunbookRunner:
    """Runs runbooks of one project."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        approver: Approver | None = None,
    ) -> None:
        self.runtime = runtime
        self.on_event = on_event
        self.approver = approver

    # ---- loading -------------------------------------------------------------------------

    def load(self, path: str) -> tuple[bytes, Runbook]:
        root = str(self.runtime.settings.project_root)
        _, spec = load_spec(path, project_root=root)
        if not isinstance(spec, Runbook):
            raise UsageError(f"{path} is a {spec.kind}, not a runbook")
        return Path(path).read_bytes(), spec

    # ---- dry run -------------------------------------------------------------------------

    def dry_run(self, path: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        """Each step rendered against the state now, and what it would change. Writes
        nothing: no journal, no lock, no state."""
        _, book = self.load(path)
        values = coerce_values(book.params, params, what="param", flag="--param")
        procs = Procedures(self.runtime, run_id="dry-run")
        state = _State(params=values)
        rows: list[dict[str, Any]] = []
        for step in book.steps:
            act = self._activation(state, procs)
            row: dict[str, Any] = {"step": step.id, "kind": step.do.kind, "when": None}
            if step.when is not None:
                try:
                    row["when"] = bool(ex.compile_expression(step.when).evaluate(act))
                except ExpressionError as exc:
                    row["when"] = f"cannot tell yet: {exc}"
            try:
                args = render_value(step.do.model_dump(by_alias=True, exclude_none=True), act)
                row["args"] = args
                row["change"] = procs.describe(args)
            except ExpressionError as exc:
                row["args"] = None
                row["change"] = f"depends on earlier steps: {exc}"
            row["verify"] = step.verify
            row["undo"] = None
            if step.undo is not None:
                try:
                    row["undo"] = render_value(
                        step.undo.model_dump(by_alias=True, exclude_none=True), act
                    )
                except ExpressionError:
                    row["undo"] = {"kind": step.undo.kind}
            row["on_failure"] = (
                step.on_failure
                if isinstance(step.on_failure, str)
                else f"goto {step.on_failure.goto}"
            )
            state.steps[step.id] = {"status": "planned", "outputs": {}, "result": {}}
            rows.append(row)
        return rows

    # ---- running -------------------------------------------------------------------------

    async def run(self, path: str, options: RunbookOptions) -> RunbookOutcome:
        spec_bytes, book = self.load(path)
        runtime = self.runtime
        rehearsal: Path | None = None
        if options.resume is not None:
            run_id = options.resume
            found = find_run(runtime.settings.state_dir, run_id)
            if found is None:
                raise UsageError(f"no runbook run {run_id} to resume (see blocks runbook list)")
            run_dir, sandbox = found
            if sandbox is not None:
                rehearsal, runtime = sandbox, sandbox_runtime(runtime, sandbox)
        else:
            from engine.runtime import new_run_id  # noqa: PLC0415  (runtime sits below us)

            run_id = new_run_id()
            if options.rehearse:
                rehearsal = make_sandbox(runtime, run_id)
                runtime = sandbox_runtime(runtime, rehearsal)
            run_dir = runbook_dir(runtime.settings.state_dir, run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        user = runtime.settings.user
        holder = f"{user}@{socket.gethostname()}:{os.getpid()}"
        procs = Procedures(runtime, run_id=run_id, rehearsal=rehearsal)
        digest = "sha256:" + hashlib.sha256(spec_bytes).hexdigest()
        mode: Mode = "rehearsal" if rehearsal is not None else "live"
        with RunLock(run_dir / "lock", holder):
            journal = JournalWriter.open(run_dir / JOURNAL, durability="strict")
            try:
                records = read_journal(run_dir / JOURNAL).records
                if options.resume is not None:
                    state = self._replay(records, book, options.force)
                    state.starter = str(records[0].get("by") or user) if records else user
                    procs.rechecked.update(state.rechecked)
                    await self._emit(
                        journal,
                        {
                            "event": "runbook.resumed",
                            "by": user,
                            "holder": holder,
                            "position": state.position,
                        },
                    )
                else:
                    values = coerce_values(
                        book.params, options.params, what="param", flag="--param"
                    )
                    state = _State(params=values, starter=user)
                    await self._emit(
                        journal,
                        {
                            "event": "runbook.started",
                            "run": run_id,
                            "runbook": book.name,
                            "path": runtime.flow_key(path),
                            "spec_digest": digest,
                            "params": values,
                            "by": user,
                            "holder": holder,
                            "mode": mode,
                            "sandbox": str(rehearsal) if rehearsal else None,
                        },
                    )
                state.holder = holder
                status = await self._drive(book, state, procs, journal, options)
            finally:
                await journal.aclose()
        outcome = RunbookOutcome(
            run_id, status, state.steps, mode, state_dir=runtime.settings.state_dir
        )
        if status == "paused":
            outcome.waiting = state.steps.get(book.steps[state.position].id, {}).get("waiting")
            return outcome
        outcome.bundle = self._bundle(runtime, run_dir, spec_bytes, path, run_id)
        return outcome

    async def _drive(
        self,
        book: Runbook,
        state: _State,
        procs: Procedures,
        journal: JournalWriter,
        options: RunbookOptions,
    ) -> Status:
        steps = book.steps
        index = {s.id: i for i, s in enumerate(steps)}
        while state.position < len(steps):
            step = steps[state.position]
            seen = state.visits.get(step.id, 0) + 1
            state.visits[step.id] = seen
            if seen > _MAX_VISITS:
                await self._emit(
                    journal,
                    {
                        "event": "runbook.finished",
                        "status": "failed",
                        "error": f"step {step.id} reached {_MAX_VISITS} times: a goto loop",
                    },
                )
                return "failed"
            act = self._activation(state, procs)
            # a step that had started before a pause or a crash passed its `when` then:
            # resuming does not ask again (the state it looked at may have moved since)
            started = state.in_flight == step.id
            state.in_flight = None
            if step.when is not None and not started and not self._when(step, act):
                state.steps[step.id] = {"status": "skipped", "outputs": {}, "result": {}}
                state.position += 1
                await self._emit(
                    journal,
                    {
                        "event": "step.skipped",
                        "step": step.id,
                        "reason": f"when: {step.when}",
                        "next": state.position,
                    },
                )
                continue
            try:
                result = await self._step(step, state, procs, journal, act, options)
            except _Paused as paused:
                state.steps[step.id] = {
                    "status": "waiting",
                    "outputs": {},
                    "result": {},
                    "waiting": paused.info,
                }
                await self._emit(
                    journal, {"event": "runbook.paused", "step": step.id, **paused.info}
                )
                return "paused"
            except _StepFailure as failure:
                state.steps[step.id] = {
                    "status": "failed",
                    "outputs": {},
                    "result": failure.result or {},
                    "error": str(failure),
                }
                if failure.did:
                    state.completed.append(step.id)
                how = step.on_failure
                nxt = (
                    state.position + 1
                    if how == "continue"
                    else index[how.goto]
                    if not isinstance(how, str)
                    else None
                )
                await self._emit(
                    journal,
                    {
                        "event": "step.failed",
                        "step": step.id,
                        "error": str(failure),
                        "did": failure.did,
                        "result": failure.result,
                        "rechecked": dict(procs.rechecked),
                        "on_failure": how if isinstance(how, str) else f"goto {how.goto}",
                        "next": nxt,
                    },
                )
                if nxt is None:
                    await self._abort(book, state, procs, journal)
                    await self._emit(
                        journal,
                        {"event": "runbook.finished", "status": "aborted", "failed_step": step.id},
                    )
                    return "aborted"
                if how != "continue":
                    state.failed_hard = True
                state.position = nxt
                continue
            state.steps[step.id] = {"status": "succeeded", "outputs": result, "result": result}
            state.completed.append(step.id)
            state.position += 1
        status: Status = "failed" if state.failed_hard else "succeeded"
        await self._emit(journal, {"event": "runbook.finished", "status": status})
        return status

    async def _step(
        self,
        step: RunbookStep,
        state: _State,
        procs: Procedures,
        journal: JournalWriter,
        act: dict[str, Any],
        options: RunbookOptions,
    ) -> dict[str, Any]:
        try:
            args = render_value(step.do.model_dump(by_alias=True, exclude_none=True), act)
        except ExpressionError as exc:
            raise _StepFailure(f"cannot render the step's arguments: {exc}", did=False) from None
        await self._emit(
            journal,
            {"event": "step.started", "step": step.id, "do": args, "idempotent": step.idempotent},
        )
        if args["kind"] == "approval":
            result = await self._approve(step, args, state, journal, options)
        else:
            try:
                with anyio.fail_after(step.timeout if step.timeout else math.inf):
                    result = await procs.do(args)
            except TimeoutError:
                raise _StepFailure(f"timed out after {step.timeout:g}s", did=False) from None
            except ProcedureFailed as exc:
                raise _StepFailure(str(exc), did=False) from None
        if step.verify is not None:
            vact = {**self._activation(state, procs), "result": result}
            try:
                ok = ex.compile_expression(step.verify).evaluate(vact)
            except ExpressionError as exc:
                raise _StepFailure(
                    f"verify could not be evaluated: {exc}", did=True, result=result
                ) from None
            if ok is not True:
                raise _StepFailure(
                    f"verify failed: {step.verify} is {_cel(ok)}", did=True, result=result
                )
        await self._emit(
            journal,
            {
                "event": "step.succeeded",
                "step": step.id,
                "result": result,
                "verify": step.verify,
                "next": state.position + 1,
                "rechecked": dict(procs.rechecked),
            },
        )
        return result

    async def _approve(
        self,
        step: RunbookStep,
        args: Mapping[str, Any],
        state: _State,
        journal: JournalWriter,
        options: RunbookOptions,
    ) -> dict[str, Any]:
        """Names are taken as given (there is no identity provider here): each approval is
        recorded with the account and host of the process that took it in, so the record
        shows who typed a name, and the one who started the runbook, whoever resumes it,
        is never enough alone."""
        starter = state.starter
        need = int(args.get("approvers", 1))
        have = list(state.approvals.get(step.id, []))
        message = str(args.get("message") or f"approve step {step.id}?")
        for given in options.approvers:
            name = given.strip()
            if name and name not in have:
                have.append(name)
                await self._emit(journal, self._approval(step.id, name, state, "flag"))

        def enough() -> bool:
            return len(have) >= need and any(n != starter for n in have)

        while not enough() and self.approver is not None:
            answer = self.approver(step.id, message)
            if answer is None:
                await self._emit(journal, {"event": "approval.refused", "step": step.id})
                raise _StepFailure("approval refused at the prompt", did=False)
            name = answer.strip()
            if name and name not in have:
                have.append(name)
                await self._emit(journal, self._approval(step.id, name, state, "prompt"))
        state.approvals[step.id] = have
        if not enough():
            only_starter = have and all(n == starter for n in have)
            raise _Paused(
                {
                    "need": need,
                    "have": have,
                    "message": message,
                    "why": (
                        f"{starter} started this runbook and cannot be its only approver"
                        if only_starter
                        else f"{len(have)} of {need} approval(s) given"
                    ),
                }
            )
        return {"approved_by": have, "approvers": need}

    @staticmethod
    def _approval(sid: str, name: str, state: _State, via: str) -> dict[str, Any]:
        return {
            "event": "approval.given",
            "step": sid,
            "by": name,
            "via": via,  # `--approve-as` or the terminal prompt
            "recorded_by": state.holder,
        }

    async def _abort(
        self, book: Runbook, state: _State, procs: Procedures, journal: JournalWriter
    ) -> None:
        by_id = {s.id: s for s in book.steps}
        for sid in reversed(state.completed):
            step = by_id[sid]
            if step.undo is None or sid in state.undone:
                continue
            act = self._activation(state, procs)
            try:
                args = render_value(step.undo.model_dump(by_alias=True, exclude_none=True), act)
                await self._emit(journal, {"event": "undo.started", "step": sid, "do": args})
                result = await procs.do(args)
            except (ProcedureFailed, ExpressionError, EngineError) as exc:
                await self._emit(journal, {"event": "undo.failed", "step": sid, "error": str(exc)})
                state.steps[sid]["undo"] = {"status": "failed", "error": str(exc)}
                continue
            state.undone.add(sid)
            state.steps[sid]["undo"] = {"status": "succeeded", "result": result}
            await self._emit(journal, {"event": "undo.succeeded", "step": sid, "result": result})

    # ---- expressions ---------------------------------------------------------------------

    def _activation(self, state: _State, procs: Procedures) -> dict[str, Any]:
        view = procs.view()
        return {
            "params": state.params,
            "steps": {
                k: {kk: vv for kk, vv in v.items() if kk in ("status", "outputs", "result")}
                for k, v in state.steps.items()
            },
            "channels": view["channels"],
            "circuits": view["circuits"],
            "run": {"id": procs.run_id, "flow": ""},
        }

    def _when(self, step: RunbookStep, act: Mapping[str, Any]) -> bool:
        assert step.when is not None
        try:
            return ex.compile_expression(step.when).evaluate(act) is True
        except ExpressionError:
            return False

    # ---- journal -------------------------------------------------------------------------

    async def _emit(self, journal: JournalWriter, record: dict[str, Any]) -> None:
        await journal.append_committed(record)
        if self.on_event is not None:
            self.on_event(record)

    def _replay(self, records: Sequence[dict[str, Any]], book: Runbook, force: bool) -> _State:
        if not records or records[0].get("event") != "runbook.started":
            raise RunbookError("the runbook journal has no start record; cannot resume")
        first = records[0]
        if first.get("runbook") != book.name:
            raise RunbookError(
                f"run {first.get('run')} is of runbook {first.get('runbook')}, not {book.name}"
            )
        state = _State(params=dict(first.get("params") or {}))
        index = {s.id: i for i, s in enumerate(book.steps)}
        by_id = {s.id: s for s in book.steps}
        for rec in records[1:]:
            event, sid = rec.get("event"), rec.get("step")
            if event == "runbook.finished":
                state.finished = str(rec.get("status"))
            elif event == "step.started":
                state.in_flight = sid
                state.position = index[str(sid)]
            elif event == "step.succeeded":
                result = rec.get("result") or {}
                state.steps[str(sid)] = {"status": "succeeded", "outputs": result, "result": result}
                state.completed.append(str(sid))
                state.rechecked.update(rec.get("rechecked") or {})
                state.position, state.in_flight = int(rec["next"]), None
            elif event == "step.failed":
                state.steps[str(sid)] = {
                    "status": "failed",
                    "outputs": {},
                    "result": rec.get("result") or {},
                    "error": rec.get("error"),
                }
                if rec.get("did"):
                    state.completed.append(str(sid))
                if str(rec.get("on_failure", "")).startswith("goto"):
                    state.failed_hard = True
                state.in_flight = None
                state.rechecked.update(rec.get("rechecked") or {})
                if rec.get("next") is not None:
                    state.position = int(rec["next"])
            elif event == "step.skipped":
                state.steps[str(sid)] = {"status": "skipped", "outputs": {}, "result": {}}
                state.position, state.in_flight = int(rec["next"]), None
            elif event == "approval.given":
                state.approvals.setdefault(str(sid), []).append(str(rec.get("by")))
            elif event == "runbook.paused":
                state.in_flight = str(sid)
            elif event == "undo.succeeded":
                state.undone.add(str(sid))
        if state.finished is not None and state.finished != "paused":
            raise RunbookError(
                f"run {first.get('run')} already finished ({state.finished}); nothing to resume"
            )
        if state.in_flight is not None:
            step = by_id[state.in_flight]
            if not step.idempotent and not force and step.do.kind != "approval":
                raise RunbookError(
                    f"step {step.id} ({step.do.kind}) was in flight when the runbook stopped "
                    "and is marked idempotent: false, so it is not run again blindly. Check "
                    f"by hand whether it took effect; then resume with --force to run it "
                    "again."
                )
        return state

    # ---- the incident bundle -------------------------------------------------------------

    def _bundle(
        self, runtime: Runtime, run_dir: Path, spec: bytes, path: str, run_id: str
    ) -> str | None:
        records = read_journal(run_dir / JOURNAL).records
        members = incident_members(records, spec, Path(path).name, runtime)
        store = runtime.store()
        try:
            current = store.resolve(run_id)
        except EngineError:
            current = None
        try:
            return store.put_bundle(members, run_id=run_id, supersedes=current)
        except EngineError as exc:
            if self.on_event is not None:
                self.on_event({"event": "bundle.failed", "error": str(exc)})
            return None


def _cel(value: Any) -> str:
    if value is False:
        return "false"
    if value is None:
        return "null"
    return json.dumps(value) if isinstance(value, str | int | float | bool) else repr(value)
