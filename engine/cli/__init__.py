"""The `blocks` command: argument parsing, output, and exit codes.

Owns: the typer app, the only place that prints, and the table from outcomes to exit codes.
Must not: hold engine logic; every command is a thin call into the layers below.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer

from engine import __version__
from engine.errors import EngineError, SpecError, UsageError

__all__ = ["EXIT_CODES", "app", "main"]

EXIT_CODES: dict[str, int] = {
    "ok": 0,  # everything valid / the run succeeded
    "invalid": 1,  # a spec is invalid, a step failed, or a blocking gate failed
    "usage": 2,  # the command line is wrong (unknown option, missing path)
    "internal": 3,  # a bug in blocks: please report it
    "conflict": 4,  # another writer changed the channel (or runbook) first: nothing written
    "waiting": 5,  # a runbook paused for an approval: resume it with --resume RUN_ID
    "interrupted": 130,  # SIGINT (Ctrl-C)
    "terminated": 143,  # SIGTERM
}
"""Documented in README.md (Exit codes). Tests hold the CLI to this table."""

app = typer.Typer(
    name="blocks",
    help="Declarative pipelines of LLM calls, shell and Python steps, with gates and runbooks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
schema_app = typer.Typer(help="JSON Schemas of the spec language.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")


class Format(StrEnum):
    text = "text"
    json = "json"
    github = "github"
    sarif = "sarif"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"blocks {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """blocks: declarative LLM pipelines, gates and runbooks."""


@app.command()
def validate(
    paths: Annotated[
        list[str],
        typer.Argument(metavar="PATH...", help="Spec files or folders (searched recursively)."),
    ],
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.text,
) -> None:
    """Check spec files: YAML, schema, references, cycles, expressions. Exit 1 if any is invalid."""
    from engine.cli.formats import render  # noqa: PLC0415  (keeps `blocks --help` light)
    from engine.validate import find_spec_files, validate_file  # noqa: PLC0415

    files, missing = find_spec_files(paths)
    if not files and not missing:
        raise UsageError("no .yaml or .yml files found under: " + " ".join(paths))
    reports = [validate_file(p) for p in files]
    sys.stdout.write(render(fmt.value, reports, missing))
    if missing:
        raise typer.Exit(EXIT_CODES["usage"])
    raise typer.Exit(EXIT_CODES["ok"] if all(r.ok for r in reports) else EXIT_CODES["invalid"])


@schema_app.command("export")
def schema_export(
    folder: Annotated[str, typer.Argument(help="Where to write the *.schema.json files.")],
) -> None:
    """Write the JSON Schema of every document kind (Draft 2020-12) into FOLDER."""
    from engine.schema import export_schemas  # noqa: PLC0415

    for path in export_schemas(folder):
        typer.echo(path)


def _register_commands() -> None:
    from engine.cli import channels as channel_commands  # noqa: PLC0415
    from engine.cli import lock as lock_commands  # noqa: PLC0415
    from engine.cli import run as run_commands  # noqa: PLC0415
    from engine.cli.alerts import alerts_app  # noqa: PLC0415
    from engine.cli.bundle import bundle_app  # noqa: PLC0415
    from engine.cli.cache import cache_app  # noqa: PLC0415
    from engine.cli.circuits import circuit_app, circuits  # noqa: PLC0415
    from engine.cli.runbook import runbook_app  # noqa: PLC0415

    run_commands.register(app)
    lock_commands.register(app)
    channel_commands.register(app)
    app.add_typer(bundle_app, name="bundle")
    app.add_typer(runbook_app, name="runbook")
    app.add_typer(circuit_app, name="circuit")
    app.add_typer(alerts_app, name="alerts")
    app.add_typer(cache_app, name="cache")
    app.command()(circuits)


_register_commands()


def main() -> None:
    """Console entry point: runs the app, maps engine errors to exit codes, never a traceback."""
    try:
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except UsageError as exc:
        sys.stderr.write(f"blocks: {exc}\n")
        sys.exit(EXIT_CODES["usage"])
    except SpecError as exc:
        for diag in exc.diagnostics:
            sys.stderr.write(f"{diag.location}: {diag.severity}[{diag.code}]: {diag.message}\n")
        sys.exit(EXIT_CODES["invalid"])
    except EngineError as exc:
        sys.stderr.write(f"blocks: {exc}\n")
        sys.exit(EXIT_CODES["invalid"])
    except KeyboardInterrupt:
        sys.stderr.write("blocks: interrupted\n")
        sys.exit(EXIT_CODES["interrupted"])
    except Exception as exc:
        from typer._click import exceptions as click_errors  # noqa: PLC0415  (typer vendors click)

        if isinstance(exc, click_errors.NoArgsIsHelpError):
            sys.stdout.write(exc.format_message() + "\n")
            sys.exit(EXIT_CODES["usage"])
        if isinstance(exc, click_errors.ClickException):
            exc.show()
            sys.exit(EXIT_CODES["usage"])
        sys.stderr.write(
            f"blocks: internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in blocks; please report it with the command you ran.\n"
        )
        sys.exit(EXIT_CODES["internal"])
    sys.exit(code if isinstance(code, int) else EXIT_CODES["ok"])
