"""Lock files: what a flow runs with, pinned by digest, and what drifted since.

Owns: the lock of a planned flow (`compute_lock`: the spec digest, every file the flow
reads by path and sha256, each model route with the dated model version it resolves to,
and the versions of the tools the flow uses), the versions real providers answered with,
read from this flow's bundles (`versions_from_bundles`), and the file beside the flow
(`read_lock`, `check_lock`, `write_lock`). The lock as data, its text and `drift` are in
`engine.lockfile.model`, re-exported here.
Must not: print, run steps, write anything but the lock file, or import litellm (the
offline provider's version is read from `engine.providers`, which does not import it).

The file is `FLOW.lock` beside the flow (`pipelines/basel-attestation.yaml.lock`). Paths
in it are relative to the project root, so a lock is the same on every machine that has the
same files and tools.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from engine.errors import EngineError
from engine.executor.bundling import environment_facts
from engine.lockfile.model import (
    FORMAT,
    MISSING,
    UNRESOLVED,
    Drift,
    Lock,
    LockDrifted,
    LockedFile,
    LockedRoute,
    LockedVersion,
    LockError,
    drift,
    parse_lock,
    render_lock,
)
from engine.plan import Plan, PlannedStep
from engine.providers import LOCAL_MODEL_VERSION, local_answered_as, provider_of
from engine.spec import (
    ContractGate,
    Flow,
    FlowStep,
    LlmStep,
    ModelRoute,
    PythonStep,
    ReviewGate,
    ShellStep,
)
from engine.steps import file_digest
from engine.steps.python import source_file
from engine.steps.shell import project_file
from engine.stores import BundleStore
from engine.validate import load_spec

__all__ = [
    "FORMAT",
    "MISSING",
    "UNRESOLVED",
    "Drift",
    "Lock",
    "LockDrifted",
    "LockError",
    "LockedFile",
    "LockedRoute",
    "LockedVersion",
    "check_lock",
    "compute_lock",
    "drift",
    "lock_path",
    "parse_lock",
    "read_lock",
    "render_lock",
    "versions_from_bundles",
    "write_lock",
]

BUNDLES_SCANNED: Final = 200
"""How many of the flow's newest bundles are searched for the versions providers answered."""

_FROM_LOCAL: Final = f"the offline local provider, version {LOCAL_MODEL_VERSION}"
_FROM_BUNDLE: Final = "the newest bundle of this flow that used the route"
_FROM_NOWHERE: Final = "no bundle of this flow used it yet: --locked checks the model name only"


def lock_path(flow_path: str | os.PathLike[str]) -> Path:
    """Where a flow's lock lives: `FLOW.lock`, beside the flow."""
    return Path(f"{os.fspath(flow_path)}.lock")


# ---- computing a lock -----------------------------------------------------------------


def compute_lock(
    plan: Plan,
    *,
    versions: Mapping[tuple[str, str], str] | None = None,
    previous: Lock | None = None,
    tools: Mapping[str, str] | None = None,
) -> Lock:
    """The lock of `plan` now. `versions` maps (route, provider model) to the version it
    answered as (`versions_from_bundles`); a model it does not cover keeps the version
    `previous` (the lock being replaced) resolved it to, or is `unresolved`. `tools`
    replaces the installed tool versions (tests)."""
    root = plan.project_root
    files: dict[str, set[str]] = {}
    digests: dict[str, str] = {}

    def add(key: str, path: Path | None, user: str) -> None:
        files.setdefault(key, set()).add(user)
        if key not in digests:
            digest = file_digest(path) if path is not None else None
            digests[key] = digest or MISSING

    for sid in plan.order:
        for key, path, role in _step_files(plan.steps[sid], root):
            add(key, path, f"steps.{sid}.{role}")
    for gid, gate in plan.gates.items():
        spec = gate.spec
        if isinstance(spec, ContractGate):
            add(_rel(spec.schema_), root / spec.schema_, f"gates.{gid}.schema")
        elif isinstance(spec, ReviewGate):
            add(_rel(spec.rubric), root / spec.rubric, f"gates.{gid}.rubric")
    return Lock(
        flow=plan.flow.name,
        spec=_spec_path(plan),
        sha256=plan.spec_digest,
        files={key: LockedFile(digests[key], tuple(sorted(users))) for key, users in files.items()},
        routes=_routes(plan, versions or {}, previous),
        tools=dict(tools) if tools is not None else tool_versions(plan),
    )


def _rel(rel: str) -> str:
    """A spec path as the lock names it: normalised, `/`-separated (symlinks not followed)."""
    return Path(os.path.normpath(rel)).as_posix()


def _spec_path(plan: Plan) -> str:
    path = Path(plan.path)
    if not path.is_absolute():
        path = Path.cwd() / path
    return Path(os.path.relpath(path, plan.project_root)).as_posix()


def _step_files(ps: PlannedStep, root: Path) -> Iterator[tuple[str, Path | None, str]]:
    """(lock key, file, role) for each file a step reads as code or configuration."""
    step = ps.spec
    if isinstance(step, LlmStep):
        for role, rel in (
            ("prompt", step.prompt),
            ("system", step.system),
            ("output_schema", step.output_schema),
        ):
            if rel is not None:
                yield _rel(rel), root / rel, role
    elif isinstance(step, PythonStep):
        found = source_file(step, root)
        if found is None:
            yield "python:" + step.call.partition(":")[0], None, "call"
        elif found.resolve().is_relative_to(root.resolve()):
            yield found.resolve().relative_to(root.resolve()).as_posix(), found, "call"
        else:  # an installed module: named by module, not by a machine's absolute path
            yield "python:" + step.call.partition(":")[0], found, "call"
    elif isinstance(step, ShellStep):
        script = _shell_script(step, root)
        if script is not None:
            yield script.relative_to(root.resolve()).as_posix(), script, "run"
    elif isinstance(step, FlowStep):
        yield _rel(step.flow), root / step.flow, "flow"
    for rel in step.deps:
        base = root / rel
        if base.is_dir():
            for path in sorted(p for p in base.rglob("*") if p.is_file() and not _ignored(p)):
                yield _rel(os.path.relpath(path, root)), path, "deps"
        else:
            yield _rel(rel), base, "deps"


def _shell_script(step: ShellStep, root: Path) -> Path | None:
    """The program when `run[0]` is a project file (`./tools/check.sh`), else the first
    argument that is not an option when it names a project file (`bash tools/check.sh`)."""
    if not step.run:
        return None
    if "/" in step.run[0]:
        return project_file(step, root, step.run[0])
    for arg in step.run[1:]:
        if not arg.startswith("-"):
            return project_file(step, root, arg)
    return None


def _ignored(path: Path) -> bool:
    """Interpreter by-products change whenever code is imported, not when it changes."""
    return path.suffix in (".pyc", ".pyo") or "__pycache__" in path.parts


def _written_routes(plan: Plan) -> Mapping[str, ModelRoute]:
    """The flow's routes as its file writes them. A runbook's override (a route sent to its
    fallback) changes the plan's routes, not what review approved: the lock pins the file."""
    if not getattr(plan, "overrides", None):
        return plan.flow.models
    _, spec = load_spec(plan.path, project_root=str(plan.project_root))
    return spec.models if isinstance(spec, Flow) else plan.flow.models


def _routes(
    plan: Plan, versions: Mapping[tuple[str, str], str], previous: Lock | None
) -> dict[str, LockedRoute]:
    out: dict[str, LockedRoute] = {}
    for rid, route in _written_routes(plan).items():
        resolved: dict[str, LockedVersion] = {}
        for model in (route.model, *route.fallbacks):
            if provider_of(model) == "local":
                resolved[model] = LockedVersion(local_answered_as(model), _FROM_LOCAL)
            elif (rid, model) in versions:
                resolved[model] = LockedVersion(versions[rid, model], _FROM_BUNDLE)
            else:
                kept = previous.routes.get(rid) if previous is not None else None
                before = kept.versions.get(model) if kept is not None else None
                if before is not None and before.version != UNRESOLVED:
                    resolved[model] = before
                else:
                    resolved[model] = LockedVersion(UNRESOLVED, _FROM_NOWHERE)
        out[rid] = LockedRoute(route.model, tuple(route.fallbacks), resolved)
    return out


def tool_versions(plan: Plan) -> dict[str, str]:
    """The engine and Python always; litellm, jsonschema, coverage, mutmut and bandit when
    the flow's steps or gates use them."""
    facts = environment_facts()
    out = {"engine": str(facts["engine"]), "python": str(facts["python"])}
    used: set[str] = set()
    for ps in plan.steps.values():
        if isinstance(ps.spec, LlmStep):
            used.add("litellm")
            if ps.spec.output_schema is not None:
                used.add("jsonschema")
    for gate in plan.gates.values():
        used.update(
            {
                "contract": ("jsonschema",),
                "coverage": ("coverage",),
                "mutation": ("mutmut",),
                "security": (str(getattr(gate.spec, "tool", "bandit")),),
                "review": ("litellm",),
            }.get(gate.spec.kind, ())
        )
    for name in used:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def versions_from_bundles(
    store: BundleStore, plan: Plan, *, limit: int = BUNDLES_SCANNED
) -> dict[tuple[str, str], str]:
    """(route, provider model) -> the model name the provider answered with, from the
    newest of this flow's bundles (at most `limit`) whose llm steps, or review gates, used
    it. Local models are not looked up (their version is the engine's)."""
    wanted = {
        (rid, model)
        for rid, route in plan.flow.models.items()
        for model in (route.model, *route.fallbacks)
        if provider_of(model) != "local"
    }
    found: dict[tuple[str, str], str] = {}
    if not wanted:
        return found
    members = {f"steps/{sid}.json" for sid, s in plan.steps.items() if s.spec.kind == "llm"}
    members |= {f"gates/{gid}.json" for gid, g in plan.gates.items() if g.spec.kind == "review"}
    entries = sorted(
        (e for e in store.list_bundles() if e.problem is None),
        key=lambda e: (e.run or "", e.digest),
        reverse=True,
    )
    scanned = 0
    for entry in entries:
        if scanned >= limit or wanted <= found.keys():
            break
        try:
            run = json.loads(store.read_member(entry.digest, "run.json"))
            if not isinstance(run, dict) or run.get("flow") != plan.flow.name:
                continue
            scanned += 1
            paths = set(store.get_manifest(entry.digest).paths) & members
            records = [json.loads(store.read_member(entry.digest, p)) for p in sorted(paths)]
        except (EngineError, ValueError):
            continue
        for key, answered in _answers(records, plan):
            if key in wanted and key not in found:
                found[key] = answered
    return found


def _answers(records: list[Any], plan: Plan) -> Iterator[tuple[tuple[str, str], str]]:
    """((route, model asked), model answered) for every successful call in bundle members."""
    for record in records:
        if not isinstance(record, dict):
            continue
        details = [record.get("detail")]
        items = record.get("items")
        if isinstance(items, dict):
            details += [i.get("detail") for i in items.values() if isinstance(i, dict)]
        for detail in details:
            attempts = detail.get("attempts") if isinstance(detail, dict) else None
            for attempt in attempts if isinstance(attempts, list) else ():
                if (
                    isinstance(attempt, dict)
                    and attempt.get("outcome") == "ok"
                    and attempt.get("model_answered")
                ):
                    key = (str(attempt.get("route")), str(attempt.get("model_asked")))
                    yield key, str(attempt["model_answered"])
        evidence = record.get("evidence")
        if isinstance(evidence, dict) and isinstance(evidence.get("route"), str):
            route = plan.flow.models.get(evidence["route"])
            if route is None or route.fallbacks:  # which model of the chain answered is unknown
                continue
            for sample in evidence.get("samples") or ():
                if isinstance(sample, dict) and sample.get("model_answered"):
                    yield (evidence["route"], route.model), str(sample["model_answered"])


# ---- the file beside the flow ---------------------------------------------------------


StoreOpener = Callable[[], BundleStore]
"""Opens the project's bundle store; only called when a route names a provider model."""


def _now(plan: Plan, store: StoreOpener | None, previous: Lock | None = None) -> Lock:
    versions: dict[tuple[str, str], str] = {}
    needs_bundles = any(
        provider_of(m) != "local"
        for route in plan.flow.models.values()
        for m in (route.model, *route.fallbacks)
    )
    if store is not None and needs_bundles:
        try:
            versions = versions_from_bundles(store(), plan)
        except EngineError:  # an unreachable store resolves nothing: names are still checked
            versions = {}
    return compute_lock(plan, versions=versions, previous=previous)


def read_lock(plan: Plan) -> tuple[Path, bytes, Lock]:
    """The lock beside the plan's flow: its path, bytes and contents. LockError if there is
    none or it cannot be read."""
    path = lock_path(plan.path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LockError(
            f"{path}: no lock file for {plan.path}; write it with: blocks lock {plan.path}"
        ) from None
    except OSError as exc:
        raise LockError(f"{path}: cannot read the lock file: {exc.strerror or exc}") from None
    return path, data, parse_lock(data, str(path))


def check_lock(plan: Plan, store: StoreOpener | None = None) -> tuple[Path, bytes, list[Drift]]:
    """Compare the lock beside the flow with the flow now: its path, bytes, and what
    drifted (empty when it is up to date). LockError if there is no readable lock."""
    path, data, locked = read_lock(plan)
    return path, data, drift(locked, _now(plan, store))


def write_lock(plan: Plan, store: StoreOpener | None = None) -> tuple[Path, Lock, bool]:
    """Write the lock beside the flow (atomically; untouched when its bytes would not
    change). Returns its path, the lock, and whether the file changed. Versions resolved
    by the lock being replaced are kept when no bundle resolves them now."""
    path = lock_path(plan.path)
    try:
        old: bytes | None = path.read_bytes()
    except FileNotFoundError:
        old = None
    except OSError as exc:
        raise LockError(f"{path}: cannot read the lock file: {exc.strerror or exc}") from None
    previous: Lock | None = None
    if old is not None:
        try:
            previous = parse_lock(old, str(path))
        except LockError:
            previous = None  # replaced whole: nothing in it can be trusted
    lock = _now(plan, store, previous)
    data = render_lock(lock)
    if data == old:
        return path, lock, False
    folder = path.parent if str(path.parent) else Path()
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, path.stat().st_mode & 0o777 if old is not None else _new_file_mode())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise LockError(f"{path}: cannot write the lock file: {exc.strerror or exc}") from None
    return path, lock, True


def _new_file_mode() -> int:
    """0o666 less the umask, as `open()` would create it (mkstemp makes 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
