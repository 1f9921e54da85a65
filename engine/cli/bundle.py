"""`blocks bundle list|show|verify|diff|export|gc`: the context bundles of this project's runs.

Owns: these commands' arguments, output and exit codes (0 intact, 1 tampered or unreadable,
2 when REF names no bundle; `diff` exits 0 whether or not the bundles differ, unless
`--exit-code`). REF is a run id, a root digest, or a unique prefix of one.
The store is `<state dir>/bundles` (`<project>/.blocks/bundles` by default).
Must not: hold bundle logic (`engine.bundle` and `engine.stores` do), or register itself
on the root app (the CLI's `__init__` adds `bundle_app` as `blocks bundle`).
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol, runtime_checkable

import typer

from engine.cli.units import human_size

if TYPE_CHECKING:
    from engine.bundle import Manifest
    from engine.bundle_diff import BundleSide
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
            f"{row['members']} members, {human_size(row['size'])}"
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
        typer.echo(f"members ({len(manifest.members)}, {human_size(manifest.total_size)}):")
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


# ---- diff, export, gc --------------------------------------------------------------------


def _read_side(store: BundleStore, ref: str, everything: bool = False) -> BundleSide:
    """A bundle's manifest and member bytes, every one verified on read (TamperError names
    the member). `everything`: all members, else only those a diff reads."""
    from engine.bundle_diff import BundleSide, is_diff_member  # noqa: PLC0415

    digest = _resolve(store, ref)
    manifest = store.get_manifest(digest)
    members = {
        p: store.read_member(digest, p) for p in manifest.paths if everything or is_diff_member(p)
    }
    return BundleSide(digest, manifest, members)


def _tampered(exc: Exception, *refs: str) -> typer.Exit:
    typer.echo(f"blocks: {exc}", err=True)
    checks = " && ".join(f"blocks bundle verify {ref}" for ref in refs)
    typer.echo(f"check {'it' if len(refs) == 1 else 'them'} with: {checks}", err=True)
    return typer.Exit(_code("invalid"))


@bundle_app.command("diff")
def diff(
    ref_a: Annotated[str, typer.Argument(metavar="A", help="The earlier bundle (REF).")],
    ref_b: Annotated[str, typer.Argument(metavar="B", help="The later bundle (REF).")],
    as_json: AsJson = False,
    exit_code: Annotated[
        bool,
        typer.Option("--exit-code", help="Exit 1 when the bundles differ (like git diff)."),
    ] = False,
) -> None:
    """What changed from run A to run B: spec, lock, inputs, model versions, outputs, step
    statuses, gate verdicts and metrics, cost, environment. Timings and who ran it are not
    differences. Exit 0 when the diff is made, whether or not they differ (with
    --exit-code: 1 when they differ); 1 if a member read fails verification; 2 if a REF
    names no bundle."""
    from engine.bundle_diff import diff_bundles, render_diff  # noqa: PLC0415
    from engine.errors import BundleError  # noqa: PLC0415

    store = _store()
    try:
        doc = diff_bundles(_read_side(store, ref_a), _read_side(store, ref_b))
    except BundleError as exc:  # a member changed since it was stored, or is not JSON
        raise _tampered(exc, ref_a, ref_b) from None
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render_diff(doc))
    differ = doc["differences"] > 0
    raise typer.Exit(_code("invalid") if exit_code and differ else _code("ok"))


class ExportFormat(StrEnum):
    in_toto = "in-toto"


@bundle_app.command("export")
def export(
    ref: Ref,
    to: Annotated[
        Path, typer.Option("--to", metavar="DIR", help="The folder to create (or an empty one).")
    ],
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="Provenance format.")
    ] = ExportFormat.in_toto,
    force: Annotated[
        bool, typer.Option("--force", help="Replace DIR if it holds an earlier export.")
    ] = False,
    builder_id: Annotated[
        str | None,
        typer.Option("--builder-id", metavar="URI", help="runDetails.builder.id to record."),
    ] = None,
) -> None:
    """Write the bundle's members (each verified on read) and its manifest into DIR, with
    provenance.intoto.json: an unsigned in-toto Statement v1 with a SLSA Provenance v1
    predicate. DIR appears whole or not at all. Exit 1 if a member fails verification, 2 if
    REF names no bundle or DIR is not empty (--force replaces an earlier export only)."""
    from engine.bundle_export import (  # noqa: PLC0415
        BUILDER_ID,
        STATEMENT,
        export_files,
        provenance_statement,
        write_export,
    )
    from engine.errors import BundleError  # noqa: PLC0415

    store = _store()
    try:
        side = _read_side(store, ref, everything=True)
        statement = provenance_statement(
            side.digest, side.manifest, side.members, builder_id=builder_id or BUILDER_ID
        )
        files = export_files(side.manifest, side.members)
    except BundleError as exc:
        raise _tampered(exc, ref) from None
    files[STATEMENT] = (json.dumps(statement, indent=2, ensure_ascii=False) + "\n").encode()
    try:
        write_export(to, files, force=force)
    except OSError as exc:  # nothing is left half-written: write_export removed its temp
        typer.echo(f"blocks: cannot export to {to}: {exc.strerror or exc}", err=True)
        raise typer.Exit(_code("invalid")) from None
    typer.echo(
        f"exported bundle {side.digest} ({len(side.manifest.members)} members, "
        f"{human_size(side.manifest.total_size)}) to {to}"
    )
    typer.echo(
        f"  {to / STATEMENT}: {fmt.value} Statement v1, SLSA provenance v1 predicate, unsigned"
    )


@runtime_checkable
class _PreviewsGc(Protocol):
    def gc_preview(self, keep: set[str] | frozenset[str] = ...) -> list[str]: ...


@bundle_app.command("gc")
def gc(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Remove what no bundle needs: temp files of interrupted writes and blobs no manifest
    references. Never a manifest, an index entry, a referenced blob, or a file that is not a
    blob (evidence: `verify` reports it). Exit 1 (removing nothing) if a manifest cannot be
    read, since what it references would be unknown."""
    from engine.errors import BundleError, UsageError  # noqa: PLC0415

    store = _store()
    if dry_run and not isinstance(store, _PreviewsGc):
        raise UsageError(f"the store at {store.location} cannot preview a gc")
    try:
        removed = store.gc_preview() if isinstance(store, _PreviewsGc) and dry_run else store.gc()
    except BundleError as exc:
        typer.echo(f"blocks: gc refused: {exc}", err=True)
        raise typer.Exit(_code("invalid")) from None
    if as_json:
        doc = {"store": store.location, "dry_run": dry_run, "removed": removed}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    verb = "would remove" if dry_run else "removed"
    if not removed:
        typer.echo(f"nothing to remove in {store.location}")
        return
    typer.echo(f"{verb} {len(removed)} file(s) in {store.location}:")
    for rel in removed:
        typer.echo(f"  {rel}")
