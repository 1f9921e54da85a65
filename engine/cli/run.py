"""`blocks run`, `blocks plan`, `blocks graph` and `blocks runs`.

Owns: these commands' arguments and output. Must not: hold engine logic (runtime does).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from enum import StrEnum
from typing import Annotated, Any, cast

import typer

from engine.cli.progress import Progress, format_duration, step_table

__all__ = ["register"]


class LogFormat(StrEnum):
    auto = "auto"
    json = "json"
    console = "console"
    off = "off"


class GraphFormat(StrEnum):
    mermaid = "mermaid"
    dot = "dot"


def _pairs(values: list[str]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            from engine.errors import UsageError  # noqa: PLC0415

            raise UsageError(f"-i expects key=value, got {item!r}")
        out[key.strip()] = value
    return out


def _runtime(spec_path: str | None = None) -> Any:
    from engine.runtime import Runtime, load_settings  # noqa: PLC0415  (heavy: steps, anyio)

    if spec_path is not None and not os.path.isfile(spec_path):
        from engine.errors import UsageError  # noqa: PLC0415

        raise UsageError(f"no such flow file: {spec_path}")
    return Runtime(load_settings(spec_path))


def run(
    flow: Annotated[str, typer.Argument(metavar="FLOW", help="The flow file to run.")],
    inputs: Annotated[
        list[str],
        typer.Option("-i", "--input", metavar="KEY=VALUE", help="A flow input (repeatable)."),
    ] = [],  # noqa: B006
    resume: Annotated[
        str | None, typer.Option("--resume", metavar="RUN_ID", help="Finish an interrupted run.")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="With --resume: re-run interrupted non-idempotent steps; "
            "resume even if the flow changed.",
        ),
    ] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Run every step.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
    replay: Annotated[
        str | None,
        typer.Option(
            "--replay",
            metavar="BUNDLE",
            help="Answer llm steps from a bundle's recorded answers (a run id or digest): "
            "offline, identical outputs.",
        ),
    ] = None,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            help="Structured logs on stderr: auto is JSON when stderr is not a "
            "terminal and off when it is (the live display is there).",
        ),
    ] = LogFormat.auto,
    locked: Annotated[
        bool,
        typer.Option(
            "--locked",
            help="Refuse to run (exit 1, nothing written) unless FLOW.lock exists and "
            "nothing it pins drifted (see `blocks lock`).",
        ),
    ] = False,
) -> None:
    """Run a flow. Exit 0 if it succeeded, 1 if a step or blocking gate failed."""
    import anyio  # noqa: PLC0415

    from engine.cli import EXIT_CODES  # noqa: PLC0415

    runtime = _runtime(flow)
    plan = runtime.plan(flow)
    progress = Progress(quiet=as_json)
    sinks: list[Any] = [progress]
    fmt = log_format
    if fmt is LogFormat.auto:
        fmt = LogFormat.off if sys.stderr.isatty() else LogFormat.json
    if fmt is not LogFormat.off:
        from engine.logs import event_logger  # noqa: PLC0415

        sinks.append(event_logger(sys.stderr, json_lines=fmt is LogFormat.json))

    def on_event(record: Any) -> None:
        for sink in sinks:
            sink(record)

    try:
        outcome = anyio.run(
            lambda: runtime.run(
                plan,
                given=_pairs(inputs),
                resume=resume,
                force=force,
                use_cache=not no_cache and replay is None,
                on_event=on_event,
                replay=replay,
                locked=locked,
            )
        )
    finally:
        progress.close()
    if as_json:
        # the outcome holds values as steps made them: mask secrets as the journal does
        shown = runtime.redactor_for(plan.flow).value(_outcome_json(outcome))
        sys.stdout.write(json.dumps(shown, indent=2, default=str) + "\n")
    else:
        counts: dict[str, int] = {}
        for state in outcome.steps.values():
            counts[state.status] = counts.get(state.status, 0) + 1
        shown = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        verdicts: dict[str, int] = {}
        for verdict in outcome.gates.values():
            verdicts[verdict] = verdicts.get(verdict, 0) + 1
        if verdicts:
            shown += "; gates: " + ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items()))
        typer.echo(
            f"run {outcome.run_id} {outcome.status} in {format_duration(outcome.duration)}: {shown}"
        )
        if outcome.bundle:
            typer.echo(f"bundle {outcome.bundle} (blocks bundle show {outcome.run_id})")
        if outcome.status != "succeeded":
            typer.echo(f"resume with: blocks run {flow} --resume {outcome.run_id}")
    if outcome.status == "cancelled":
        code = (
            EXIT_CODES["terminated"]
            if outcome.signal == signal.SIGTERM
            else EXIT_CODES["interrupted"]
        )
        raise typer.Exit(code)
    raise typer.Exit(EXIT_CODES["ok"] if outcome.status == "succeeded" else EXIT_CODES["invalid"])


def _outcome_json(outcome: Any) -> dict[str, Any]:
    return {
        "run_id": outcome.run_id,
        "status": outcome.status,
        "duration": outcome.duration,
        "outputs": outcome.outputs,
        "gates": dict(getattr(outcome, "gates", {})),
        "bundle": getattr(outcome, "bundle", None),
        "steps": {
            sid: {
                "status": s.status,
                "duration": s.duration,
                "attempts": s.attempts,
                "outputs": s.outputs,
                "error": s.error,
                "reason": s.reason,
                "cached_from": s.cached_from,
            }
            for sid, s in outcome.steps.items()
        },
    }


def plan(
    flow: Annotated[str, typer.Argument(metavar="FLOW", help="The flow file.")],
    inputs: Annotated[list[str], typer.Option("-i", "--input", metavar="KEY=VALUE")] = [],  # noqa: B006
) -> None:
    """Show what `blocks run` would do: order, what is cached, estimated cost."""
    from engine.executor.predict import predict  # noqa: PLC0415
    from engine.plan import coerce_inputs  # noqa: PLC0415

    runtime = _runtime(flow)
    the_plan = runtime.plan(flow)
    values = coerce_inputs(the_plan.flow, _pairs(inputs))
    forecast = predict(the_plan, values, runtime.settings.cache_dir)
    limits = the_plan.flow.limits
    typer.echo(
        f"plan for {the_plan.flow.name} ({the_plan.path}): {len(the_plan.order)} steps, "
        f"concurrency {limits.concurrency}"
        + (f", timeout {format_duration(limits.timeout)}" if limits.timeout else "")
    )
    if the_plan.overrides:
        o = the_plan.overrides
        typer.echo(
            f"overrides in effect (set by {o.get('by')}: {o.get('reason')}): "
            f"limits {o.get('limits') or {}}, routes {o.get('routes') or {}}"
        )
    width = max(len(s) for s in the_plan.order)
    for index, sid in enumerate(the_plan.order, 1):
        ps = the_plan.steps[sid]
        needs = ", ".join(ps.needs) or "-"
        typer.echo(
            f"  {index:>3}  {sid:<{width}}  {ps.spec.kind:<7} needs: {needs:<24} "
            f"{forecast.decisions[sid]}"
        )
    typer.echo(f"estimated cost: {forecast.cost_text}")


def graph(
    flow: Annotated[str, typer.Argument(metavar="FLOW", help="The flow file.")],
    fmt: Annotated[GraphFormat, typer.Option("--format", "-f")] = GraphFormat.mermaid,
) -> None:
    """Print the step graph as Mermaid or Graphviz dot."""
    the_plan = _runtime(flow).plan(flow)
    lines: list[str]
    if fmt is GraphFormat.mermaid:
        lines = ["flowchart TD"]
        lines += [f'  {sid}["{sid} ({the_plan.steps[sid].spec.kind})"]' for sid in the_plan.order]
        lines += [
            f"  {dep} --> {sid}" for sid in the_plan.order for dep in the_plan.steps[sid].needs
        ]
        for gid, gate in the_plan.flow.gates.items():
            after = [gate.after] if isinstance(gate.after, str) else gate.after
            lines.append(f'  gate_{gid}{{{{"gate {gid} ({gate.kind})"}}}}')
            lines += [f"  {a} -.-> gate_{gid}" for a in after]
    else:
        lines = [f'digraph "{the_plan.flow.name}" {{', "  rankdir=TB;"]
        lines += [
            f'  "{sid}" [label="{sid}\\n{the_plan.steps[sid].spec.kind}"];'
            for sid in the_plan.order
        ]
        lines += [
            f'  "{dep}" -> "{sid}";' for sid in the_plan.order for dep in the_plan.steps[sid].needs
        ]
        lines.append("}")
    typer.echo("\n".join(lines))


runs_app = typer.Typer(help="Runs recorded in this project.", no_args_is_help=True)


@runs_app.command("list")
def runs_list(
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List runs, newest last."""
    runtime = _runtime()
    summaries = runtime.list_runs()
    if as_json:
        sys.stdout.write(
            json.dumps(
                [
                    {
                        "run_id": s.run_id,
                        "flow": s.flow,
                        "status": s.status,
                        "started_at": s.started_at,
                    }
                    for s in summaries
                ],
                indent=2,
            )
            + "\n"
        )
        return
    if not summaries:
        typer.echo(f"no runs under {runtime.settings.runs_dir}")
        return
    for s in summaries:
        done = sum(1 for st in s.steps.values() if st.status in ("succeeded", "cached", "skipped"))
        typer.echo(f"{s.run_id}  {s.status:<11} {s.flow:<28} {done}/{len(s.steps)} steps done")


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show one run: status, inputs, each step."""
    summary = _runtime().summary(run_id)
    if as_json:
        sys.stdout.write(
            json.dumps(
                _outcome_json(_as_outcome(summary))
                | {"flow": summary.flow, "inputs": summary.inputs, "in_flight": summary.in_flight},
                indent=2,
                default=str,
            )
            + "\n"
        )
        return
    typer.echo(f"run {summary.run_id}  flow {summary.flow} ({summary.path})  {summary.status}")
    typer.echo(f"inputs: {json.dumps(summary.inputs, sort_keys=True)}")
    for line in step_table(summary.steps):
        typer.echo(line)
    for sid, instances in summary.in_flight.items():
        typer.echo(f"  in flight when it stopped: {sid} ({', '.join(instances)})")


def _as_outcome(summary: Any) -> Any:
    from engine.executor.local import RunOutcome  # noqa: PLC0415

    status = summary.status  # "interrupted" too: runs show says what the journal says
    return RunOutcome(summary.run_id, cast(Any, status), summary.steps, 0.0, None, summary.outputs)


def register(app: typer.Typer) -> None:
    from engine.cli.verify import verify  # noqa: PLC0415

    app.command()(run)
    app.command()(verify)
    app.command()(plan)
    app.command()(graph)
    app.add_typer(runs_app, name="runs")
