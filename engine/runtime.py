"""The composition root: settings, the registry, the executor, and a run from start to end.

Owns: reading the environment (the only module that does), where state lives
(`<project>/.blocks/`), run ids, the run lock and journal around an executor run, resume
rules, signal handling, and structured logging setup. Must not: print to the terminal
(the CLI renders the events this module forwards).
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import json
import os
import secrets as pysecrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from engine import __version__
from engine.checks import find_project_root
from engine.errors import EngineError, ExecutionError, UsageError
from engine.executor.cache import StepCache
from engine.executor.faults import Faults
from engine.executor.journal import JournalWriter, read_journal
from engine.executor.local import LocalExecutor, RunOptions, RunOutcome
from engine.executor.lock import RunLock
from engine.executor.outputs import render_value
from engine.executor.state import RunSummary, replay, resumable
from engine.executor.verdicts import Verdict, judge, run_gate
from engine.gates import builtin_gate_kinds
from engine.overrides import Overrides
from engine.plan import Plan, PlannedGate, build_plan, coerce_inputs, run_budget_usd
from engine.plugins import GateContext, Registry
from engine.redact import Redactor
from engine.spec import Flow, MetricGate
from engine.steps import builtin_step_kinds
from engine.validate import load_spec

if TYPE_CHECKING:
    from engine.stores import BundleStore

__all__ = ["Runtime", "Settings", "load_settings"]

JOURNAL = "journal.log"
LOCK = "lock"
MAX_SUBFLOW_DEPTH = 8


@dataclass(frozen=True, slots=True)
class Settings:
    project_root: Path
    state_dir: Path
    user: str
    store_url: str | None = None
    """BLOCKS_STORE: where bundles (and the channel ledger) live. None: `<state dir>/bundles`.
    `s3://bucket/prefix` for the S3 Object Lock store (see docs/guides/bundles-and-locks.md)."""

    @property
    def bundles_dir(self) -> Path:
        return self.state_dir / "bundles"

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"


def load_settings(
    spec_path: str | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from the environment: BLOCKS_STATE_DIR (default `<project>/.blocks`),
    BLOCKS_USER (default the login name). BLOCKS_FAULTS (fault injection for crash tests,
    see `engine.executor.faults`) is read by `Runtime`."""
    env = os.environ if environ is None else environ
    root = Path(find_project_root(spec_path or os.getcwd())).resolve()
    state = Path(env.get("BLOCKS_STATE_DIR") or root / ".blocks").resolve()
    try:
        user = env.get("BLOCKS_USER") or getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Settings(root, state, user, env.get("BLOCKS_STORE") or None)


def new_run_id() -> str:
    """Sortable by start time, unique without coordination: `20261122-194501-3fa9c2`."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + pysecrets.token_hex(3)


def build_registry() -> Registry:
    registry = Registry()
    for kind in builtin_step_kinds():
        registry.add_step_kind(kind)
    for gate in builtin_gate_kinds():
        registry.add_gate_kind(gate)
    return registry


Event = Callable[[dict[str, Any]], None]


class Runtime:
    """Everything a command needs to plan and run flows in one project."""

    def __init__(self, settings: Settings, *, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        self.registry = build_registry()
        self._depth = 0
        """How deep in sub-flows this runtime runs (0: the flow the user started)."""

    def store(self) -> BundleStore:
        """The bundle store this project is configured for (imported on first use: boto3
        only when the store is S3)."""
        from engine.stores import open_store  # noqa: PLC0415

        return open_store(self.settings.store_url, self.settings.bundles_dir, self.environ)

    def plan(self, flow_path: str) -> Plan:
        """Load, check and plan a flow file. Raises `SpecError` / `UsageError`."""
        doc, spec = load_spec(flow_path, project_root=str(self.settings.project_root))
        if not isinstance(spec, Flow):
            raise UsageError(f"{flow_path} is a {spec.kind}, not a flow")
        flow, applied = self.overrides().apply(spec, self.flow_key(flow_path))
        plan = build_plan(doc, flow, self.registry, self.settings.project_root)
        return dataclasses.replace(plan, overrides=applied) if applied else plan

    def overrides(self) -> Overrides:
        return Overrides(self.settings.state_dir / "overrides.json")

    def flow_key(self, flow_path: str) -> str:
        """A flow's path relative to the project root, `/`-separated: how overrides and
        runbooks name it."""
        path = Path(flow_path)
        full = path if path.is_absolute() else Path.cwd() / path
        try:
            return full.resolve().relative_to(self.settings.project_root).as_posix()
        except ValueError:
            return full.resolve().as_posix()

    def secrets_for(self, flow: Flow) -> dict[str, str]:
        return {name: self.environ[name] for name in flow.secrets if self.environ.get(name)}

    def redactor_for(self, flow: Flow, inputs: Mapping[str, Any] | None = None) -> Redactor:
        """Masks the flow's secrets, and the values of inputs declared `secret: true`."""
        values = list(self.secrets_for(flow).values())
        for name, spec in flow.inputs.items():
            value = (inputs or {}).get(name)
            if spec.secret and isinstance(value, str):
                values.append(value)
        return Redactor(values)

    def _resources(self, plan: Plan, redactor: Redactor) -> dict[str, Any]:
        """What steps and gates share in a run: the provider gateway (for flows with llm
        steps) and the baselines of gates that compare with a channel."""
        resources: dict[str, Any] = {}
        baselines = self._baselines(plan)
        if baselines:
            resources["baselines"] = baselines
        gateway = self._gateway(plan, redactor)
        if gateway is not None:
            resources["llm"] = gateway
        if any(s.spec.kind == "flow" for s in plan.steps.values()):
            resources["subflow"] = partial(self._subflow, depth=self._depth + 1)
        return resources

    async def _subflow(
        self, path: str, inputs: Mapping[str, Any], run_id: str, *, depth: int
    ) -> dict[str, Any]:
        """Run a sub-flow for a `flow` step: a run of its own (journal, lock, bundle), in
        this process, under the parent's signal handling. Resumes the child if a run of
        that id was interrupted (the parent was killed mid-step)."""
        if depth > MAX_SUBFLOW_DEPTH:
            raise ExecutionError(
                f"sub-flows nest deeper than {MAX_SUBFLOW_DEPTH} (a flow that runs itself?)"
            )
        child = Runtime(self.settings, environ=self.environ)
        child._depth = depth
        plan = child.plan(path)
        given = {k: v if isinstance(v, str) else json.dumps(v) for k, v in inputs.items()}
        resume = None
        if (self.run_dir(run_id) / JOURNAL).exists():
            summary = self.summary(run_id)
            if summary.status == "succeeded":
                return _child_outcome(summary.run_id, "succeeded", summary)
            resume = run_id
        outcome = await child.run(
            plan, given=given, resume=resume, run_id=run_id, signals=False, force=True
        )
        failed = [sid for sid, st in outcome.steps.items() if st.status == "failed"]
        reasons = [st.error for st in outcome.steps.values() if st.error]
        return {
            "run_id": outcome.run_id,
            "status": outcome.status,
            "outputs": outcome.outputs,
            "bundle": outcome.bundle,
            "failed": failed,
            "reason": reasons[0] if reasons else None,
        }

    def _baselines(self, plan: Plan) -> dict[str, dict[str, Any]]:
        """Gate id -> the metrics the same gate recorded in the bundle its baseline channel
        serves now (and that bundle's digest under `bundle`). A channel that serves nothing,
        a bundle of another flow, or one that is not intact gives no baseline: the gate is
        then inconclusive, never a pass."""
        wanted = {
            gid: g.spec.baseline.channel
            for gid, g in plan.gates.items()
            if isinstance(g.spec, MetricGate) and g.spec.baseline is not None
        }
        if not wanted:
            return {}
        import json  # noqa: PLC0415

        from engine.channels import Channels  # noqa: PLC0415

        store = self.store()
        chans = Channels(store, user=self.settings.user)
        out: dict[str, dict[str, Any]] = {}
        try:
            state = chans.state()
        except EngineError:
            return {}
        for gid, channel in wanted.items():
            current = state.get(channel)
            if current is None or current.bundle is None:
                continue
            try:
                facts = chans.facts(current.bundle)  # re-hashed once, however many gates
                if not facts.intact or facts.flow != plan.flow.name:
                    continue
                gate = json.loads(store.read_member(current.bundle, f"gates/{gid}.json"))
            except (EngineError, ValueError):
                continue
            metrics = {k: v for k, v in (gate.get("metrics") or {}).items() if k != "baseline"}
            out[gid] = {"metrics": metrics, "bundle": current.bundle, "channel": channel}
        return out

    def _gateway(self, plan: Plan, redactor: Redactor) -> Any:
        flow = plan.flow
        uses_llm = any(s.spec.kind == "llm" for s in plan.steps.values()) or any(
            g.spec.kind == "review" for g in plan.gates.values()
        )
        if not uses_llm:
            return None
        from engine.providers import Gateway, provider_of  # noqa: PLC0415
        from engine.providers.budget import Budget, Ledger  # noqa: PLC0415
        from engine.providers.circuits import CircuitBoard  # noqa: PLC0415
        from engine.providers.ratelimit import RateLimits  # noqa: PLC0415

        limits: dict[str, tuple[int | None, int | None]] = {}
        for route in flow.models.values():
            if route.rpm or route.tpm:
                limits[provider_of(route.model)] = (route.rpm, route.tpm)
        gateway = Gateway(
            flow.models,
            circuits=CircuitBoard(self.settings.state_dir / "circuits.json"),
            limits=RateLimits(limits),
            budget=Budget(flow.limits.budget_usd, flow.limits.budget_tokens, name="run"),
            ledger=Ledger(),
            redactor=redactor,
        )
        return gateway

    def run_dir(self, run_id: str) -> Path:
        return self.settings.runs_dir / run_id

    def summary(self, run_id: str) -> RunSummary:
        path = self.run_dir(run_id) / JOURNAL
        if not path.exists():
            raise UsageError(f"no run '{run_id}' under {self.settings.runs_dir}")
        summary = replay(read_journal(path).records)
        summary.run_id = summary.run_id or run_id
        return summary

    def list_runs(self) -> list[RunSummary]:
        if not self.settings.runs_dir.is_dir():
            return []
        out = []
        for entry in sorted(self.settings.runs_dir.iterdir()):
            if (entry / JOURNAL).exists():
                try:
                    out.append(self.summary(entry.name))
                except ExecutionError:
                    continue
        return out

    def last_run(self, plan: Plan) -> RunSummary | None:
        """The newest finished run of this flow (same name and file), if any."""
        runs = [
            r
            for r in self.list_runs()
            if r.flow == plan.flow.name and r.status in ("succeeded", "failed")
        ]
        return runs[-1] if runs else None

    async def verify(self, plan: Plan) -> list[tuple[PlannedGate, Verdict]]:
        """Evaluate every gate of a flow now, against the workspace and the flow's last run
        (for step outputs a metric gate reads). Nothing runs but the gates' own tools."""
        last = self.last_run(plan)
        inputs = last.inputs if last else coerce_inputs(plan.flow, {})
        steps = {
            sid: {"status": s.status, "outputs": s.outputs, "output": s.result}
            for sid, s in (last.steps.items() if last else ())
        }
        activation = {
            "inputs": inputs,
            "steps": steps,
            "run": {"id": last.run_id if last else "", "flow": plan.flow.name},
        }
        redactor = self.redactor_for(plan.flow)
        resources = self._resources(plan, redactor)
        workdir = self.settings.state_dir / "verify"
        results: dict[str, Verdict] = {}

        async def one(gate: PlannedGate) -> None:
            ctx = GateContext(
                run_id=last.run_id if last else "verify",
                gate_id=gate.id,
                project_root=self.settings.project_root,
                workdir=workdir / gate.id,
                redactor=redactor,
                render=partial(render_value, activation=activation),
                resources=resources,
            )
            ctx.workdir.mkdir(parents=True, exist_ok=True)
            results[gate.id] = await run_gate(gate, ctx)

        async with anyio.create_task_group() as tg:
            for gate in plan.gates.values():
                tg.start_soon(one, gate)
        return [(plan.gates[g], results[g]) for g in plan.gates]

    async def recheck(self, ref: str, gate_id: str | None = None) -> dict[str, Any]:
        """Watch a bundle: re-measure its flow's `metric` and `contract` gates now, from the
        files they read and the step outputs the bundle recorded, and combine them with the
        recorded verdicts of its other gates. What a runbook's `gate` step runs: an artifact
        changed since the run (a flipped flag in a summary) fails here, though the bundle's
        own record still says pass. Reads, never writes."""
        import json  # noqa: PLC0415

        store = self.store()
        try:
            root = store.resolve(ref)
        except EngineError as exc:
            raise UsageError(f"no bundle {ref!r}: {exc}") from None
        report = store.verify(root)
        if not report.ok:
            return {
                "bundle": root,
                "run": None,
                "flow": None,
                "intact": False,
                "gates_passed": False,
                "gates": {},
                "failed": [f"bundle not intact: {'; '.join(report.problems())}"],
            }
        run = json.loads(store.read_member(root, "run.json"))
        paths = set(store.get_manifest(root).paths)
        recorded: dict[str, dict[str, Any]] = {}
        for gid in run.get("gates") or {}:
            if f"gates/{gid}.json" in paths:
                recorded[gid] = json.loads(store.read_member(root, f"gates/{gid}.json"))
        steps: dict[str, Any] = {}
        for sid in run.get("steps") or {}:
            if f"steps/{sid}.json" in paths:
                rec = json.loads(store.read_member(root, f"steps/{sid}.json"))
                steps[sid] = {
                    "status": rec.get("status"),
                    "outputs": rec.get("outputs") or {},
                    "output": rec.get("result"),
                }
        spec_path = (run.get("spec") or {}).get("path")
        plan = self.plan(str(self.settings.project_root / spec_path)) if spec_path else None
        activation = {
            "inputs": run.get("inputs") or {},
            "steps": steps,
            "run": {"id": run.get("run") or "", "flow": run.get("flow") or ""},
        }
        gates: dict[str, dict[str, Any]] = {}
        for gid, rec in recorded.items():
            if gate_id is not None and gid != gate_id:
                continue
            row = {
                "severity": rec.get("severity", "blocker"),
                "recorded": rec.get("verdict"),
                "verdict": rec.get("verdict"),
                "explanation": rec.get("explanation"),
                "rechecked": False,
            }
            gate = plan.gates.get(gid) if plan is not None else None
            if gate is not None and gate.spec.kind in ("metric", "contract"):
                verdict = await self._gate_now(plan, gate, activation)  # type: ignore[arg-type]
                row.update(verdict=verdict.status, explanation=verdict.explanation, rechecked=True)
            gates[gid] = row
        if gate_id is not None and gate_id not in gates:
            raise UsageError(f"bundle {root[:19]} recorded no gate '{gate_id}'")
        failed = [
            f"{gid}: {row['verdict']} ({row['explanation']})"
            for gid, row in gates.items()
            if row["severity"] == "blocker" and row["verdict"] != "pass"
        ]
        return {
            "bundle": root,
            "run": run.get("run"),
            "flow": run.get("flow"),
            "intact": True,
            "status": run.get("status"),
            "gates_passed": not failed and run.get("status") == "succeeded",
            "gates": gates,
            "failed": failed,
        }

    async def _gate_now(
        self, plan: Plan, gate: PlannedGate, activation: Mapping[str, Any]
    ) -> Verdict:
        redactor = self.redactor_for(plan.flow)
        ctx = GateContext(
            run_id=str(activation["run"]["id"]) or "recheck",
            gate_id=gate.id,
            project_root=self.settings.project_root,
            workdir=self.settings.state_dir / "verify" / gate.id,
            redactor=redactor,
            render=partial(render_value, activation=activation),
            resources=self._resources(plan, redactor),
        )
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        return await run_gate(gate, ctx)

    def shadow(self, plan: Plan) -> list[dict[str, Any]]:
        """Re-judge the gate verdicts recorded in this flow's bundles with the flow's current
        `require` expressions: which past runs would have flipped, before a new threshold is
        enforced. Reads bundles only; runs nothing."""
        import json  # noqa: PLC0415

        from engine.plugins import Measurement  # noqa: PLC0415

        store = self.store()
        rows: list[dict[str, Any]] = []
        for entry in store.list_bundles():
            if entry.problem is not None:
                continue
            paths = {m.path for m in store.get_manifest(entry.digest).members}
            run = json.loads(store.read_member(entry.digest, "run.json"))
            if run.get("flow") != plan.flow.name:
                continue
            for gid, gate in plan.gates.items():
                if f"gates/{gid}.json" not in paths:
                    continue
                recorded = json.loads(store.read_member(entry.digest, f"gates/{gid}.json"))
                metrics = recorded.get("metrics") or {}
                now = judge(gate, Measurement(metrics=metrics, summary=""))
                rows.append(
                    {
                        "run": entry.run,
                        "bundle": entry.digest,
                        "gate": gid,
                        "then": recorded.get("verdict"),
                        "now": now.status,
                        "flipped": recorded.get("verdict") != now.status,
                        "explanation": now.explanation,
                    }
                )
        return rows

    async def run(
        self,
        plan: Plan,
        *,
        given: Mapping[str, str],
        resume: str | None = None,
        force: bool = False,
        use_cache: bool = True,
        on_event: Event | None = None,
        executor_hook: Callable[[LocalExecutor], None] | None = None,
        bundle: bool = True,
        replay: str | None = None,
        locked: bool = False,
        run_id: str | None = None,
        signals: bool = True,
    ) -> RunOutcome:
        """Run (or resume) a flow under the run lock, with SIGINT / SIGTERM handled, then
        pin it into a bundle (`bundle=False` skips that: benchmarks of the executor alone).
        `locked`: refuse (`LockError`, before anything is written) unless the flow matches
        its lock file (`engine.lockfile`)."""
        flow = plan.flow
        holder = f"{self.settings.user}@{socket.gethostname()}:{os.getpid()}"
        prior: dict[str, Any] = {}
        if resume is not None:
            summary = self.summary(resume)
            _check_resumable(summary, plan, force)
            prior = resumable(summary)
            inputs: dict[str, Any] = summary.inputs
            use_cache = use_cache and summary.use_cache
            run_id = resume
        else:
            inputs = coerce_inputs(flow, given)
            run_id = run_id or new_run_id()
        lock = self._lock_of_run(plan, locked, on_event)
        run_dir = self.run_dir(run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        redactor = self.redactor_for(flow, inputs)
        resources = self._resources(plan, redactor)
        if replay is not None:
            resources["replay"] = self._replay_answers(plan, replay)
        executor = LocalExecutor(
            cache=StepCache(self.settings.cache_dir),
            redactor=redactor,
            secrets=self.secrets_for(flow),
            on_event=on_event,
            faults=Faults(self.environ.get("BLOCKS_FAULTS", "")),
            resources=resources,
        )
        if executor_hook is not None:
            executor_hook(executor)
        with RunLock(run_dir / LOCK, holder):
            journal = JournalWriter.open(run_dir / JOURNAL)
            try:
                event = "run.resumed" if resume else "run.started"
                record = redactor.value(
                    {
                        "event": event,
                        "run": run_id,
                        "flow": flow.name,
                        "path": plan.path,
                        "spec_digest": plan.spec_digest,
                        "inputs": inputs,
                        "holder": holder,
                        "engine": __version__,
                        "steps": len(plan.order),
                        "use_cache": use_cache,
                        "budget_usd": run_budget_usd(flow),
                        **({"overrides": dict(plan.overrides)} if plan.overrides else {}),
                    }
                )
                journal.append(record)
                if on_event is not None:
                    on_event(record)
                options = RunOptions(
                    run_id, inputs, use_cache=use_cache, force=force, holder=holder
                )
                work = executor.run(plan, options, journal, prior=prior, run_dir=run_dir)
                outcome = await (_with_signals(executor, work) if signals else work)
            finally:
                await journal.aclose()
            if bundle:
                outcome.bundle = self._bundle(run_dir, redactor, on_event, lock)
            return outcome

    def _replay_answers(self, plan: Plan, ref: str) -> dict[str, Any]:
        """The recorded answers of a bundle's llm steps, for `blocks run --replay REF`: the
        run is re-executed offline and its llm steps answer exactly as they did then."""
        import json  # noqa: PLC0415

        store = self.store()
        try:
            root = store.resolve(ref)
            run = json.loads(store.read_member(root, "run.json"))
        except EngineError as exc:
            raise UsageError(f"cannot replay {ref}: {exc}") from None
        if run.get("flow") != plan.flow.name:
            raise UsageError(
                f"bundle {ref} recorded flow '{run.get('flow')}', not '{plan.flow.name}'"
            )
        answers: dict[str, Any] = {}
        paths = {m.path for m in store.get_manifest(root).members}
        for sid, step in plan.steps.items():
            if step.spec.kind != "llm" or f"steps/{sid}.json" not in paths:
                continue
            recorded = json.loads(store.read_member(root, f"steps/{sid}.json"))
            if recorded.get("status") == "succeeded":
                answers[sid] = {
                    "result": recorded.get("result"),
                    "model_answered": (recorded.get("detail") or {}).get("model_answered"),
                }
        return {"ref": root, "answers": answers}

    def _lock_of_run(self, plan: Plan, locked: bool, on_event: Event | None) -> bytes | None:
        """The bytes of the flow's lock file, for the bundle, when it matches the flow. With
        `locked`, a missing, unreadable or drifted lock refuses the run (LockError); without,
        a stale lock is left out of the bundle and reported as a `lock.stale` event."""
        from engine import lockfile  # noqa: PLC0415

        path = lockfile.lock_path(plan.path)
        if not locked and not path.is_file():
            return None
        try:
            _, data, items = lockfile.check_lock(plan, self.store)
        except lockfile.LockError as exc:
            if locked:
                raise
            problems = [str(exc)]
        else:
            if not items:
                return data
            if locked:
                raise lockfile.LockDrifted(str(path), plan.path, items)
            problems = [d.at(str(path)) for d in items]
        if on_event is not None:
            on_event({"event": "lock.stale", "lock": str(path), "drift": problems})
        return None

    def _bundle(
        self,
        run_dir: Path,
        redactor: Redactor,
        on_event: Event | None,
        lock: bytes | None = None,
    ) -> str | None:
        """Pin the finished run into a content-addressed bundle (written once, verifiable).

        A run that could not be bundled is still a finished run: the failure is reported as
        an event, and `blocks bundle` can be retried from the journal."""
        from engine.executor.bundling import bundle_run, environment_facts  # noqa: PLC0415

        try:
            return bundle_run(
                run_dir,
                self.store(),
                redactor,
                environment_facts(),
                project_root=self.settings.project_root,
                lock=lock,
            )
        except EngineError as exc:
            if on_event is not None:
                on_event({"event": "bundle.failed", "error": str(exc)})
            return None


def _child_outcome(run_id: str, status: str, summary: RunSummary) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "status": status,
        "outputs": dict(summary.outputs or {}),
        "bundle": None,
        "failed": [],
        "reason": None,
    }


def _check_resumable(summary: RunSummary, plan: Plan, force: bool) -> None:
    if summary.status in ("succeeded",):
        raise UsageError(f"run {summary.run_id} already succeeded; nothing to resume")
    if summary.spec_digest and summary.spec_digest != plan.spec_digest and not force:
        raise UsageError(
            f"the flow changed since run {summary.run_id} started "
            f"({summary.spec_digest[:19]}... then, {plan.spec_digest[:19]}... now); "
            "resuming would mix two versions: start a new run, or pass --force"
        )
    risky = [
        sid for sid in summary.in_flight if sid in plan.steps and not plan.steps[sid].idempotent
    ]
    if risky and not force:
        names = ", ".join(risky)
        raise UsageError(
            f"step {names} was interrupted mid-flight in run {summary.run_id} and is marked "
            "idempotent: false, so running it again may repeat its side effects. Check what it "
            "did, then resume with --force to run it again"
        )


async def _with_signals(executor: LocalExecutor, work: Awaitable[RunOutcome]) -> RunOutcome:
    """Run `work`; the first SIGINT or SIGTERM cancels it cleanly (steps cancelled, recorded).

    Plain `signal.signal` handlers that hand the signal to the event loop, not
    `anyio.open_signal_receiver`: asyncio's `add_signal_handler` and `remove_signal_handler`
    each list the valid signals as enums, about 1.2 ms per run, which was a fifth of the fixed
    cost of a small in-process run. The handler runs on the main thread between bytecodes
    (an interrupted `epoll_wait` is retried after it, PEP 475), and `call_soon_threadsafe`
    wakes the loop through its self-pipe.
    """
    loop = asyncio.get_running_loop()
    previous: list[tuple[int, Any]] = []

    def restore() -> None:
        while previous:
            signum, old = previous.pop()
            signal.signal(signum, old)

    def handler(signum: int, _frame: object) -> None:
        # Only the first signal stops the run cleanly: the handlers it replaced are back at
        # once, as anyio's receiver left them, so a second Ctrl-C does what it did before.
        restore()
        loop.call_soon_threadsafe(executor.stop, signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous.append((signum, signal.signal(signum, handler)))
    try:
        return await work
    finally:
        restore()
