"""The local executor: runs a plan's steps with anyio, journaling every transition.

Owns: scheduling (a step starts the moment its needs are met, not level by level), the
flow's capacity limiter, per-step timeouts, retries with backoff and jitter, `when`,
`for_each` fan-out, `continue_on_failure`, the flow's wall-clock limit, cancellation, the
cache, and resuming from a journal. Must not: print (it emits records to `on_event`), read
environment variables (runtime hands it secrets), or know a step kind's internals.

Durability: every transition is appended to the journal (write(2), survives kill -9) before
it takes effect; `fdatasync` is group-committed in the background, and awaited before a
non-idempotent step starts and before the run reports its end (see `journal.py`).

Over the 700-line budget on purpose: `_Run` is one state machine (each step's state, the
counters that say when the run is settled, the gates waiting on steps), and splitting its
methods across modules would spread one invariant over several files. The pieces with a
contract of their own already live apart: `workers.py`, `journal.py`, `cache.py`,
`outputs.py`, `verdicts.py`.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol

import anyio

from engine.errors import ExecutionError, ExpressionError, StepFailed
from engine.executor.cache import (
    CacheEntry,
    OutsMissing,
    StepCache,
    digest_json,
    key_for_step,
    snapshot_outs,
)
from engine.executor.faults import Faults
from engine.executor.journal import JournalWriter
from engine.executor.outputs import extract_outputs, render_value
from engine.executor.verdicts import Verdict, run_gate
from engine.executor.workers import Tokens, Workers
from engine.plan import Plan, PlannedStep
from engine.plugins import GateContext, StepContext, StepResult
from engine.redact import Redactor
from engine.spec import Retry, SecretRef, ShellStep

__all__ = ["Clock", "LocalExecutor", "RunOptions", "RunOutcome", "StepState"]

DONE = frozenset({"succeeded", "skipped", "cached"})
"""Statuses that satisfy a dependent's `needs` (a skipped step counts, as in Argo)."""


_EMPTY_DIGEST = digest_json({"result": None, "outputs": {}})

_NO_ENV: Mapping[str, str] = MappingProxyType({})


class Clock(Protocol):
    def now(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


@dataclass
class StepState:
    """Where one step stands in a run (aggregated over its fan-out items)."""

    status: str = "pending"
    outputs: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    attempts: int = 0
    duration: float = 0.0
    error: str | None = None
    reason: str | None = None
    cached_from: str | None = None
    result_digest: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    cost_usd: float = 0.0
    tokens: int = 0
    files: dict[str, str] = field(default_factory=dict)
    """The step's `outs`: project-relative path -> sha256 (`engine.executor.cache`)."""


@dataclass(frozen=True)
class RunOptions:
    run_id: str
    inputs: Mapping[str, Any]
    use_cache: bool = True
    force: bool = False
    holder: str = "unknown"


@dataclass
class RunOutcome:
    run_id: str
    status: Literal["succeeded", "failed", "cancelled", "timed_out"]
    steps: dict[str, StepState]
    duration: float
    signal: int | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    gates: dict[str, str] = field(default_factory=dict)
    bundle: str | None = None
    """The root digest of the run's context bundle, once written."""

    def __repr__(self) -> str:
        # Short on purpose: asyncio.Runner formats the main task, and so its result, with %r
        # when it restores SIGINT at the end of `anyio.run` (`signal.getsignal` tries the
        # handler as an enum); a full repr of every step's state cost ~1.5 µs per step there.
        return (
            f"RunOutcome(run_id={self.run_id!r}, status={self.status!r}, "
            f"steps={len(self.steps)}, bundle={self.bundle!r})"
        )


Event = Callable[[dict[str, Any]], None]


class LocalExecutor:
    """Runs plans on this machine. One executor may run many plans, one at a time."""

    def __init__(
        self,
        *,
        cache: StepCache,
        redactor: Redactor,
        secrets: Mapping[str, str],
        on_event: Event | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        faults: Faults | None = None,
        resources: Mapping[str, Any] | None = None,
    ) -> None:
        self.cache = cache
        self.redactor = redactor
        self.secrets = dict(secrets)
        self.on_event: Event = on_event or (lambda record: None)
        self.clock: Clock = clock or RealClock()
        self.rng = rng or random.Random()  # noqa: S311  (jitter, not cryptography)
        self.faults = faults or Faults()
        self.resources = dict(resources or {})
        self._active: _Run | None = None

    def stop(self, signum: int) -> None:
        """Cancel the run in progress (a signal arrived): steps are cancelled, not failed."""
        if self._active is not None:
            self._active.stop(signum)

    async def run(
        self,
        plan: Plan,
        options: RunOptions,
        journal: JournalWriter,
        *,
        prior: Mapping[str, StepState] | None = None,
        run_dir: Path,
    ) -> RunOutcome:
        """Run `plan`. `prior` holds what an earlier, interrupted attempt finished."""
        run = _Run(self, plan, options, journal, dict(prior or {}), run_dir)
        self._active = run
        try:
            return await run.execute()
        finally:
            self._active = None


class _Run:
    def __init__(
        self,
        executor: LocalExecutor,
        plan: Plan,
        options: RunOptions,
        journal: JournalWriter,
        prior: dict[str, StepState],
        run_dir: Path,
    ) -> None:
        self.x = executor
        self.plan = plan
        self.options = options
        self.journal = journal
        self.run_dir = run_dir
        self.steps_dir = run_dir / "steps"
        self.steps_path = os.fspath(self.steps_dir)
        # looked up once: a fault plan is fixed for the run (and empty outside tests)
        self.faults = executor.faults if executor.faults else None
        self.redact = executor.redactor.value if executor.redactor.active else None
        self.state: dict[str, StepState] = {sid: StepState() for sid in plan.order}
        finished = 0  # steps an earlier, interrupted attempt of this run finished
        for sid, done in prior.items():
            if sid in self.state and done.status in DONE:
                self.state[sid] = done
                finished += 1
        self.scope_steps: dict[str, dict[str, Any]] = {
            sid: self._scope_entry(s) for sid, s in self.state.items() if s.status in DONE
        }
        # needs not met yet (counted only on a resume: a new run has met none)
        self.remaining = {
            sid: sum(1 for d in plan.steps[sid].needs if self.state[d].status not in DONE)
            if finished
            else len(plan.steps[sid].needs)
            for sid in plan.order
        }
        self.gates: dict[str, str] = dict.fromkeys(plan.gates, "pending")
        self.gate_remaining = {
            gid: sum(1 for a in g.after if self.state[a].status not in DONE)
            for gid, g in plan.gates.items()
        }
        # only the steps that wait for gates: most flows have none
        self.waiting = {
            sid: set(g) for sid, g in plan.gate_waits.items() if g and sid in self.state
        }
        # steps and gates still to reach an end (done, failed, skipped, blocked, cancelled)
        self.unsettled = len(self.state) - finished + len(plan.gates)
        limit = plan.flow.limits.concurrency
        # a limit that can never be reached is no limit (a for_each step's items count as
        # steps, and how many there are is known only when the step runs)
        reachable = limit < len(plan.order) or any(
            ps.spec.for_each is not None for ps in plan.steps.values()
        )
        self.limiter: Any = Tokens(limit) if reachable else contextlib.nullcontext()
        self.secret_env: dict[str, dict[str, str]] = {}
        self.scope: anyio.CancelScope | None = None
        self.signal: int | None = None
        self.tg: Any = None
        self.workers: Workers[str] | None = None
        self.token_returned: Callable[[], None] | None = None
        self.code_digests: dict[str, str | None] = {}
        self.activation_base = {
            "inputs": dict(options.inputs),
            "run": {"id": options.run_id, "flow": plan.flow.name},
        }

    # ---- records ---------------------------------------------------------------------

    def record(self, event: str, **fields: Any) -> None:
        rec = {"event": event, **fields}
        if self.redact is not None:
            rec = self.redact(rec)
        faults = self.faults
        if faults is not None:
            faults.before(rec, self.journal.path)
        self.journal.append(rec)
        if faults is not None:
            faults.after(rec)
        self.x.on_event(rec)

    # ---- the run ---------------------------------------------------------------------

    def stop(self, signum: int) -> None:
        self.signal = signum
        if self.scope is not None:
            self.scope.cancel()

    async def execute(self) -> RunOutcome:
        started = self.x.clock.now()
        limit = self.plan.flow.limits.timeout
        status: Literal["succeeded", "failed", "cancelled", "timed_out"]
        self._settled = anyio.Event()
        with anyio.CancelScope() as self.scope:
            if limit is not None:
                self.scope.deadline = anyio.current_time() + limit
            async with anyio.create_task_group() as tg:
                self.tg = tg
                # steps run in as few tasks as keeps them concurrent (see workers.py)
                limiter = self.limiter
                limited = isinstance(limiter, Tokens)
                self.workers = Workers(
                    tg,
                    self._step,
                    self._never_started,
                    name="steps",
                    # no new task for a step that would only wait for a token: whoever
                    # returns one kicks the workers (`_attempts`)
                    room=(lambda: limiter.available) if limited else None,
                )
                self.token_returned = self.workers.kick if limited else None
                self.journal.start_flusher(tg)
                for gid, left in self.gate_remaining.items():
                    if left == 0:
                        self._start_gate(gid)
                for sid in self.plan.order:
                    self._start_if_ready(sid)
                if self._all_settled():
                    tg.cancel_scope.cancel()
                else:
                    await self._wait_steps()
                    tg.cancel_scope.cancel()
        if self.signal is not None:
            status = "cancelled"
        elif self.scope.cancelled_caught and limit is not None and not self._all_settled():
            status = "timed_out"
        elif (
            any(s.status == "failed" and not self._tolerated(sid) for sid, s in self.state.items())
            or not self._all_settled()
            or any(
                self.plan.gates[g].blocker and v in ("fail", "inconclusive")
                for g, v in self.gates.items()
            )
        ):
            status = "failed"
        else:
            status = "succeeded"
        outputs = self._flow_outputs() if status == "succeeded" else {}
        duration = self.x.clock.now() - started
        with anyio.CancelScope(shield=True):
            self.record(
                "run.finished",
                status=status,
                signal=self.signal,
                duration=round(duration, 6),
                outputs=outputs,
            )
            await self.journal.commit()
        return RunOutcome(
            self.options.run_id,
            status,
            self.state,
            duration,
            self.signal,
            outputs,
            dict(self.gates),
        )

    def _all_settled(self) -> bool:
        """Counted, not rescanned: called after every step, a scan would make runs quadratic."""
        return self.unsettled == 0

    def _settle(self) -> None:
        self.unsettled -= 1

    def _start_if_ready(self, sid: str) -> None:
        if (
            self.state[sid].status == "pending"
            and self.remaining[sid] == 0
            and not self.waiting.get(sid)
        ):
            self.state[sid].status = "running"
            assert self.workers is not None
            self.workers.submit(sid)

    # ---- gates ---------------------------------------------------------------------

    def _start_gate(self, gid: str) -> None:
        if self.gates[gid] == "pending":
            self.gates[gid] = "running"
            self.tg.start_soon(self._gate, gid)

    def _gate_after_done(self, sid: str, ok: bool) -> None:
        for gid, gate in self.plan.gates.items():
            if sid not in gate.after or self.gates[gid] != "pending":
                continue
            if ok:
                self.gate_remaining[gid] -= 1
                if self.gate_remaining[gid] == 0:
                    self._start_gate(gid)
            else:
                self.gates[gid] = "skipped"
                self._settle()
                self.record("gate.skipped", gate=gid, reason=f"'{sid}' did not succeed")
                self._release(gid, passed=False)

    async def _gate(self, gid: str) -> None:
        gate = self.plan.gates[gid]
        activation = {**self.activation_base, "steps": dict(self.scope_steps)}
        ctx = GateContext(
            run_id=self.options.run_id,
            gate_id=gid,
            project_root=self.plan.project_root,
            workdir=self.run_dir / "gates" / gid,
            redactor=self.x.redactor,
            render=lambda v: render_value(v, activation),
            resources=self.x.resources,
        )
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        self.record("gate.started", gate=gid, kind=gate.spec.kind)
        try:
            verdict = await run_gate(gate, ctx)
        except Exception as exc:
            verdict = Verdict("inconclusive", f"{gid}: {type(exc).__name__}: {exc}")
        self.gates[gid] = verdict.status
        self._settle()
        self.record("gate.evaluated", **verdict.as_record(gate))
        self._release(gid, passed=verdict.status == "pass")
        self._check_settled()

    def _release(self, gid: str, *, passed: bool) -> None:
        """A blocker that did not pass stops what waits for it; otherwise they may go on."""
        for sid, waits in self.waiting.items():
            if gid not in waits:
                continue
            waits.discard(gid)
            if passed or not self.plan.gates[gid].blocker:
                self._start_if_ready(sid)
            else:
                self._block(sid, f"gate {gid}")

    def _tolerated(self, sid: str) -> bool:
        return self.plan.steps[sid].spec.continue_on_failure

    async def _wait_steps(self) -> None:
        if not self._all_settled():
            await self._settled.wait()

    def _check_settled(self) -> None:
        if self._all_settled():
            self._settled.set()

    # ---- one step --------------------------------------------------------------------

    async def _step(self, sid: str) -> None:
        ps = self.plan.steps[sid]
        state = self.state[sid]
        try:
            await self._step_body(ps, state)
        except anyio.get_cancelled_exc_class():
            if state.status == "running":
                state.status = "cancelled"
            raise
        finally:
            if state.status in DONE:
                self.scope_steps[sid] = self._scope_entry(state)
            self._after(sid)

    def _never_started(self, sid: str) -> None:
        """A step queued to run when the run was cancelled: it ends cancelled, unstarted."""
        self.state[sid].status = "cancelled"
        self._after(sid)

    def _after(self, sid: str) -> None:
        state = self.state[sid]
        self._settle()
        ok = state.status in DONE or (state.status == "failed" and self._tolerated(sid))
        if state.status == "cancelled":
            self._check_settled()
            return
        self._gate_after_done(sid, ok)
        for dep in self.plan.steps[sid].dependents:
            if ok:
                self.remaining[dep] -= 1
                self._start_if_ready(dep)
            else:
                self._block(dep, sid)
        self._check_settled()

    def _block(self, sid: str, because: str) -> None:
        state = self.state[sid]
        if state.status != "pending":
            return
        state.status = "blocked"
        state.reason = (
            f"not run: {because} did not pass"
            if because.startswith("gate ")
            else f"not run: '{because}' did not succeed"
        )
        self.record("step.blocked", step=sid, reason=state.reason)
        self._settle()
        self._gate_after_done(sid, ok=False)
        for dep in self.plan.steps[sid].dependents:
            self._block(dep, sid)

    def _activation(self, ps: PlannedStep) -> dict[str, Any]:
        steps = {sid: self.scope_steps[sid] for sid in ps.reads if sid in self.scope_steps}
        return {**self.activation_base, "steps": steps}

    @staticmethod
    def _scope_entry(state: StepState) -> dict[str, Any]:
        return {
            "status": state.status,
            "outputs": state.outputs,
            "output": state.result,
            "duration": state.duration,
            "attempts": state.attempts,
        }

    async def _step_body(self, ps: PlannedStep, state: StepState) -> None:
        if ps.when is None and ps.spec.for_each is None:
            try:
                # the activation is built only if the kind renders something (`_instance`)
                await self._instance(ps, ps.id, None, state)
            except (ExpressionError, StepFailed) as exc:
                self._fail(ps, state, ps.id, str(exc), "permanent", 0.0, final=True)
            return
        activation = self._activation(ps)
        try:
            if ps.when is not None and not self._condition(ps, activation):
                state.status = "skipped"
                state.reason = f"when: {ps.spec.when} is false"
                self.record("step.skipped", step=ps.id, reason=state.reason)
                return
            if ps.spec.for_each is None:
                await self._instance(ps, ps.id, activation, state)
                return
            items = render_value(ps.spec.for_each.items, activation)
        except (ExpressionError, StepFailed) as exc:
            self._fail(ps, state, ps.id, str(exc), "permanent", 0.0, final=True)
            return
        if not isinstance(items, list):
            self._fail(
                ps,
                state,
                ps.id,
                f"for_each.items gave {type(items).__name__}, not a list",
                "permanent",
                0.0,
                final=True,
            )
            return
        await self._fan_out(ps, items, activation, state)

    def _condition(self, ps: PlannedStep, activation: Mapping[str, Any]) -> bool:
        assert ps.when is not None
        value = ps.when.evaluate(activation)
        if not isinstance(value, bool):
            raise ExpressionError(
                f"when: expected a bool, got {type(value).__name__}", source=ps.when.source
            )
        return value

    async def _fan_out(
        self, ps: PlannedStep, items: list[Any], activation: dict[str, Any], state: StepState
    ) -> None:
        assert ps.spec.for_each is not None
        name = ps.spec.for_each.as_
        cap = ps.spec.for_each.concurrency
        limit: Any = Tokens(cap) if cap and cap < len(items) else contextlib.nullcontext()
        results: list[StepState] = [StepState() for _ in items]
        self.record("step.expanded", step=ps.id, items=len(items))

        async def one(index: int) -> None:
            async with limit:
                scope = {**activation, name: items[index]}
                await self._instance(ps, f"{ps.id}[{index}]", scope, results[index])
            workers.kick()  # a token of `concurrency` is free: the next item may start

        async with anyio.create_task_group() as tg:
            # an item never started when the fan-out is cancelled stays pending; with a
            # `concurrency`, no task is started for an item that would only wait for it
            workers: Workers[int] = Workers(
                tg,
                one,
                lambda index: None,
                name=ps.id,
                room=(lambda: limit.available) if isinstance(limit, Tokens) else None,
            )
            for index in range(len(items)):
                workers.submit(index)
        failed = [r for r in results if r.status == "failed"]
        state.attempts = sum(r.attempts for r in results)
        state.duration = max((r.duration for r in results), default=0.0)
        state.result = [r.result for r in results]
        state.outputs = {k: [r.outputs.get(k) for r in results] for k in ps.spec.outputs}
        state.result_digest = digest_json([r.result_digest for r in results])
        if failed:
            state.status = "failed"
            state.error = f"{len(failed)} of {len(items)} items failed: {failed[0].error}"
            self.record(
                "step.failed", step=ps.id, error=state.error, category="permanent", final=True
            )
        else:
            state.status = "succeeded"
            self.record(
                "step.succeeded",
                step=ps.id,
                outputs=state.outputs,
                duration=round(state.duration, 6),
                items=len(items),
            )

    async def _instance(
        self,
        ps: PlannedStep,
        instance: str,
        activation: Mapping[str, Any] | None,
        state: StepState,
    ) -> None:
        def render(value: Any) -> Any:
            nonlocal activation
            if activation is None:
                activation = self._activation(ps)
            return render_value(value, activation)

        try:
            resolved = ps.kind.resolve(ps.spec, render)
        except ExpressionError as exc:
            self._fail(ps, state, instance, str(exc), "permanent", 0.0, final=True)
            return
        key = self._cache_key(ps, resolved) if ps.cache and self.options.use_cache else None
        if key is not None and self._from_cache(ps, instance, key, state):
            return
        await self._attempts(ps, instance, resolved, key, state)

    def _cache_key(self, ps: PlannedStep, resolved: Mapping[str, Any]) -> str:
        upstream = {d: self.state[d].result_digest for d in ps.needs}
        return key_for_step(self.plan, ps, resolved, upstream, self.code_digests)

    def _from_cache(self, ps: PlannedStep, instance: str, key: str, state: StepState) -> bool:
        entry = self.x.cache.get(key)
        if entry is None:
            return False
        restored: list[str] | None = []
        if entry.files:
            try:
                restored = self.x.cache.restore_files(self.plan.project_root, entry.files)
            except OSError:
                restored = None
            if restored is None:
                return False  # an out the entry needs is gone from the cache: run the step
            state.files = dict(entry.files)
        self.x.cache.touch(key)
        state.status = "cached"
        state.outputs = entry.outputs
        state.result = entry.result
        state.result_digest = entry.result_digest
        state.cached_from = entry.run_id
        self.record(
            "step.cached",
            step=ps.id,
            instance=instance,
            from_run=entry.run_id,
            outputs=entry.outputs,
            result=entry.result,
            key=key,
            result_digest=entry.result_digest,
            **({"outs": state.files, "restored": restored} if entry.files else {}),
        )
        return True

    async def _attempts(
        self,
        ps: PlannedStep,
        instance: str,
        resolved: Mapping[str, Any],
        key: str | None,
        state: StepState,
    ) -> None:
        retry = ps.retry
        try:
            env = self._secret_env(ps)
        except StepFailed as exc:
            self._fail(ps, state, instance, str(exc), "permanent", 0.0, final=True)
            return
        for attempt in range(1, retry.attempts + 1):
            state.attempts = attempt
            async with self.limiter:
                self.record("step.started", step=ps.id, instance=instance, attempt=attempt)
                if not ps.idempotent:
                    await self.journal.commit()  # a resume must know it was in flight
                started = self.x.clock.now()
                error = await self._attempt(ps, instance, attempt, resolved, env, state)
                elapsed = self.x.clock.now() - started
            if self.token_returned is not None:
                self.token_returned()  # a queued step may start now, in a new task
            if error is None:
                state.duration = elapsed
                self._succeeded(ps, instance, key, state)
                return
            message, category, retry_after, spent = error
            final = attempt == retry.attempts or category not in retry.on
            if final:
                self._fail(ps, state, instance, message, category, elapsed, final=True, **spent)
                return
            delay = self._delay(retry, attempt, retry_after)
            self.record(
                "step.retrying",
                step=ps.id,
                instance=instance,
                attempt=attempt,
                error=message,
                category=category,
                delay=round(delay, 6),
                **spent,
            )
            await self.x.clock.sleep(delay)

    async def _attempt(
        self,
        ps: PlannedStep,
        instance: str,
        attempt: int,
        resolved: Mapping[str, Any],
        env: Mapping[str, str],
        state: StepState,
    ) -> tuple[str, str, float | None, dict[str, Any]] | None:
        """One try. Returns None on success, else (message, category, retry_after, what
        the failed try spent: fields for its record, see `StepFailed.spent`)."""
        ctx = StepContext(
            run_id=self.options.run_id,
            step_id=ps.id,
            instance=instance,
            attempt=attempt,
            project_root=self.plan.project_root,
            # a string: the Path is built only if the kind asks (pathlib's parsing was a
            # visible per-step cost, and most steps never use their workdir)
            workdir=f"{self.steps_path}/{instance}/attempt-{attempt}",
            env=env,
            redactor=self.x.redactor,
            log=self._logger(ps.id, instance),
            resources=self.x.resources,
        )
        try:
            timeout = ps.timeout
            result: StepResult
            if timeout is None:
                result = await ps.kind.run(ctx, resolved)
            else:
                with anyio.fail_after(timeout):
                    result = await ps.kind.run(ctx, resolved)
            state.outputs = (
                extract_outputs(ps.id, ps.spec.outputs, result, self.plan.project_root)
                if ps.spec.outputs
                else {}
            )
            if ps.outs:
                state.files = snapshot_outs(self.plan.project_root, ps.outs)
            state.result = result.result
            # outputs too: a shell step's value may live in its stdout, not its result
            state.result_digest = (
                _EMPTY_DIGEST
                if result.result is None and not state.outputs
                else digest_json({"result": result.result, "outputs": state.outputs})
            )
            state.detail = dict(result.detail)
            state.cost_usd = result.cost_usd
            state.tokens = result.tokens
            return None
        except StepFailed as exc:
            return str(exc), exc.category, exc.retry_after, exc.spent()
        except OutsMissing as exc:
            return str(exc), "permanent", None, {}
        except TimeoutError:
            return f"timed out after {_seconds(ps.timeout)}", "timeout", None, {}
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                state.status = "cancelled"
                self.record("step.cancelled", step=ps.id, instance=instance, attempt=attempt)
            raise
        except ExecutionError as exc:
            return str(exc), "permanent", None, {}
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}", "permanent", None, {}

    def _logger(self, sid: str, instance: str) -> Callable[[str, str], None]:
        def log(stream: str, line: str) -> None:
            self.x.on_event(
                {
                    "event": "step.output",
                    "step": sid,
                    "instance": instance,
                    "stream": stream,
                    "line": self.x.redactor.text(line),
                }
            )

        return log

    def _secret_env(self, ps: PlannedStep) -> Mapping[str, str]:
        if not isinstance(ps.spec, ShellStep):
            return _NO_ENV  # only shell steps take secrets into their environment
        if ps.id in self.secret_env:
            return self.secret_env[ps.id]
        env: dict[str, str] = {}
        self.secret_env[ps.id] = env
        for name, value in ps.spec.env.items():
            if isinstance(value, SecretRef):
                if value.secret not in self.x.secrets:
                    raise StepFailed(
                        f"secret {value.secret} is not set in the environment", step=ps.id
                    )
                env[name] = self.x.secrets[value.secret]
        return env

    def _delay(self, retry: Retry, attempt: int, retry_after: float | None) -> float:
        delay = retry.base_delay(attempt)
        if retry.jitter:
            delay = delay / 2 + self.x.rng.uniform(0, delay / 2)  # "equal jitter"
        if retry_after is not None:
            delay = max(delay, min(retry_after, retry.max))
        return delay

    def _succeeded(self, ps: PlannedStep, instance: str, key: str | None, state: StepState) -> None:
        state.status = "succeeded"
        state.error = None
        self.record(
            "step.succeeded",
            step=ps.id,
            instance=instance,
            attempt=state.attempts,
            outputs=state.outputs,
            result=state.result,
            duration=round(state.duration, 6),
            key=key,
            result_digest=state.result_digest,
            detail=state.detail,
            cost_usd=state.cost_usd,
            tokens=state.tokens,
            **({"outs": state.files} if state.files else {}),
        )
        if key is not None:
            self._cache_put(ps, key, state)

    def _cache_put(self, ps: PlannedStep, key: str, state: StepState) -> None:
        cache = self.x.cache
        if state.files:
            try:
                cache.keep_files(self.plan.project_root, state.files)
            except OSError as exc:
                # no copy of the outs, so no entry: a hit could not put them back
                self.record("step.not-cached", step=ps.id, reason=f"outs not kept: {exc}")
                return
        cache.put(
            CacheEntry(
                key,
                self.options.run_id,
                ps.id,
                self.x.redactor.value(state.outputs),
                self.x.redactor.value(state.result),
                state.result_digest,
                state.files,
            )
        )

    def _fail(
        self,
        ps: PlannedStep,
        state: StepState,
        instance: str,
        message: str,
        category: str,
        elapsed: float,
        *,
        final: bool,
        **spent: Any,
    ) -> None:
        state.status = "failed"
        state.error = message
        state.duration = elapsed
        self.record(
            "step.failed",
            step=ps.id,
            instance=instance,
            attempt=state.attempts,
            error=message,
            category=category,
            duration=round(elapsed, 6),
            final=final,
            tolerated=ps.spec.continue_on_failure,
            **spent,
        )

    def _flow_outputs(self) -> dict[str, Any]:
        activation = {**self.activation_base, "steps": self.scope_steps}
        try:
            return {k: render_value(v, activation) for k, v in self.plan.flow.outputs.items()}
        except ExpressionError as exc:
            return {"error": str(exc)}


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:g}s" if value < 60 or not math.isclose(value % 60, 0) else f"{value / 60:g}m"
