"""`blocks bundle list`, `show` and `verify`: the context bundles of this project's runs.

Owns: these commands' arguments, output and exit codes (0 intact, 1 tampered or unreadable,
2 when REF names no bundle). REF is a run id, a root digest, or a unique prefix of one.
The store is `<state dir>/bundles` (`<project>/.blocks/bundles` by default).
Must not: hold bundle logic (`engine.bundle` and `engine.stores` do), or register itself
on the root app (the CLI's `__init__` adds `bundle_app` as `blocks bundle`).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from engine.bundle import Manifest
    from engine.stores import BundleStore

__all__ = ["bundle_app"]

bundle_app = typer.Typer(
    help="Context bundles: what each run pinned, and proof that nothing changed since.",
    no_args_is_help=True,
)

Ref = Annotated[
    str, typer.Argument(metavar="REF", help="A run id, a root digest, or a unique prefix.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _store() -> BundleStore:
    import os  # noqa: PLC0415

    from engine.runtime import load_settings  # noqa: PLC0415  (heavy: only when asked)
    from engine.stores import open_store  # noqa: PLC0415

    settings = load_settings(None)
    return open_store(settings.store_url, settings.bundles_dir, os.environ)


def _code(name: str) -> int:
    from engine.cli import EXIT_CODES  # noqa: PLC0415  (engine.cli imports this module)

    return EXIT_CODES[name]


def _resolve(store: BundleStore, ref: str) -> str:
    from engine.errors import BundleError, TamperError  # noqa: PLC0415

    try:
        return store.resolve(ref)
    except TamperError as exc:
        typer.echo(f"blocks: {exc}", err=True)
        raise typer.Exit(_code("invalid")) from None
    except BundleError as exc:
        typer.echo(f"blocks: {exc}", err=True)
        raise typer.Exit(_code("usage")) from None


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover  (the loop always returns)


def _json_member(store: BundleStore, digest: str, path: str) -> Any:
    return json.loads(store.read_member(digest, path))


@bundle_app.command("list")
def list_bundles(as_json: AsJson = False) -> None:
    """List the bundles in this project's store, by run id."""
    from engine.errors import BundleError  # noqa: PLC0415

    store = _store()
    rows: list[dict[str, Any]] = []
    for entry in store.list_bundles():
        facts: dict[str, Any] = {}
        problem = entry.problem
        if problem is None:
            try:
                facts = _json_member(store, entry.digest, "run.json")
            except (BundleError, ValueError) as exc:
                problem = str(exc)
        rows.append(
            {
                "digest": entry.digest,
                "run": entry.run,
                "flow": facts.get("flow"),
                "status": facts.get("status"),
                "members": entry.members,
                "size": entry.size,
                "problem": problem,
            }
        )
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    if not rows:
        typer.echo(f"no bundles in {store.location}")
        return
    for row in rows:
        head = f"{row['digest'][:19]}  {row['run'] or '-'}"
        if row["problem"]:
            typer.echo(f"{head}  UNREADABLE: {row['problem']}")
            continue
        typer.echo(
            f"{head}  {row['status'] or '?':<10} {row['flow'] or '?':<24} "
            f"{row['members']} members, {_size(row['size'])}"
        )


@bundle_app.command("show")
def show(ref: Ref, as_json: AsJson = False) -> None:
    """Show a bundle: the run, models that answered, gate verdicts, cost, and each member.
    Checks it as `verify` does: exit 1 (saying what changed) if it is not intact."""
    from engine.errors import BundleError  # noqa: PLC0415

    store = _store()
    digest = _resolve(store, ref)
    try:
        manifest = store.get_manifest(digest)
        run = _json_member(store, digest, "run.json") if "run.json" in manifest.paths else {}
        ledger = (
            _json_member(store, digest, "llm/ledger.json")
            if "llm/ledger.json" in manifest.paths
            else {}
        )
        gates = {
            p.removeprefix("gates/").removesuffix(".json"): _json_member(store, digest, p)
            for p in manifest.paths
            if p.startswith("gates/")
        }
    except (BundleError, ValueError) as exc:
        typer.echo(f"blocks: bundle {digest}: {exc}", err=True)
        typer.echo(f"check it with: blocks bundle verify {digest}", err=True)
        raise typer.Exit(_code("invalid")) from None
    # what is shown is only worth reading if every member is what the manifest says
    report = store.verify(digest)
    if as_json:
        doc = {
            "digest": digest,
            "manifest": manifest.as_dict(),
            "run": run,
            "ledger": ledger,
            "gates": gates,
            "intact": report.ok,
            "problems": report.problems(),
        }
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    else:
        for line in _describe(digest, manifest, run, ledger, gates):
            typer.echo(line)
        typer.echo(f"members ({len(manifest.members)}, {_size(manifest.total_size)}):")
        width = max((len(m.path) for m in manifest.members), default=0)
        for m in manifest.members:
            typer.echo(f"  {m.path:<{width}}  {m.size:>9}  {m.digest}")
        if not report.ok:
            typer.echo("TAMPERED: this bundle no longer matches its manifest:")
            for problem in report.problems():
                typer.echo(f"  {problem}")
    if not report.ok:
        raise typer.Exit(_code("invalid"))


def _describe(
    digest: str,
    manifest: Manifest,
    run: dict[str, Any],
    ledger: dict[str, Any],
    gates: dict[str, Any],
) -> list[str]:
    env = run.get("environment") or {}
    by = run.get("by") or {}
    cost = run.get("cost") or {}
    lines = [
        f"bundle {digest}",
        f"run {manifest.run or run.get('run') or '-'}  flow {run.get('flow')}  {run.get('status')}",
        f"by {by.get('holder') or '?'}  started {run.get('started_at')}  "
        f"finished {run.get('finished_at')}",
        f"inputs: {json.dumps(run.get('inputs', {}), sort_keys=True, ensure_ascii=False)}",
        f"engine {env.get('engine') or run.get('engine')}, python {env.get('python')}, "
        f"litellm {env.get('litellm')}",
        "models answered: " + (", ".join(ledger.get("models_answered") or []) or "none"),
    ]
    if manifest.supersedes:
        resumes = len(run.get("resumed") or [])
        lines.append(f"supersedes {manifest.supersedes} (the run was resumed {resumes}x)")
    verdicts = ", ".join(f"{gid} {g.get('verdict')}" for gid, g in sorted(gates.items()))
    lines.append(f"gates: {verdicts or 'none'}")
    lines.append(f"cost: ${float(cost.get('usd') or 0):.6f}, {int(cost.get('tokens') or 0)} tokens")
    return lines


@bundle_app.command("verify")
def verify(ref: Ref, as_json: AsJson = False) -> None:
    """Re-hash every member. Exit 0 if the bundle is intact, 1 if anything changed."""
    store = _store()
    digest = _resolve(store, ref)
    report = store.verify(digest)
    if as_json:
        doc = {
            "digest": report.digest,
            "run": report.run,
            "ok": report.ok,
            "checked": report.checked,
            "first_mismatch": report.first_mismatch,
            "problems": report.problems(),
            "notes": list(report.notes),
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    elif report.ok:
        typer.echo(f"bundle {report.digest} intact: {report.checked} members verified")
        for note in report.notes:
            typer.echo(f"  note: {note}")
    else:
        typer.echo(f"bundle {report.digest} TAMPERED:")
        for problem in report.problems():
            typer.echo(f"  {problem}")
    raise typer.Exit(_code("ok") if report.ok else _code("invalid"))
