"""The shell step kind against real processes: argv fidelity, results, failures, output caps,
secret masking, and that cancellation leaves no process of the step's group running."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine.errors import StepFailed
from engine.plugins import StepContext, StepKind, StepResult
from engine.redact import Redactor
from engine.spec.flow import ShellStep
from engine.steps import builtin_step_kinds, shell
from engine.steps.shell import LINE_PIECE_BYTES, ShellKind

pytestmark = pytest.mark.anyio

CANARY = "canary-Zx9q-s3cr3t-value"
PY = sys.executable
VARS: dict[str, Any] = {
    "items": ["a", "b c"],
    "n": 3,
    "obj": {"b": 1, "a": [True, None]},
    "s": "x y",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def render(value: Any) -> Any:
    """A stand-in for the executor's renderer: `${{ name }}` alone yields the value itself."""
    if isinstance(value, str) and value.startswith("${{") and value.endswith("}}"):
        return VARS[value[3:-2].strip()]
    return value


def make_ctx(
    tmp_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    log: Callable[[str, str], None] | None = None,
) -> StepContext:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return StepContext(
        run_id="run-1",
        step_id="build",
        instance="build",
        attempt=1,
        project_root=tmp_path,
        workdir=work,
        env=dict(env or {}),
        redactor=Redactor([CANARY]),
        log=log or (lambda _s, _l: None),
    )


def shell_step(**fields: Any) -> ShellStep:
    return ShellStep.model_validate({"kind": "shell", **fields})


async def run_shell(ctx: StepContext, **fields: Any) -> StepResult:
    kind = ShellKind()
    return await kind.run(ctx, kind.resolve(shell_step(**fields), render))


async def run_with_timeout(seconds: float, ctx: StepContext, **fields: Any) -> StepResult:
    with anyio.fail_after(seconds):
        return await run_shell(ctx, **fields)


def python_argv(code: str, *args: str) -> list[str]:
    return [PY, "-c", code, *args]


def live_members(pgid: int) -> list[int]:
    """Pids of the group that are still running. Zombies do not count: in containers whose
    PID 1 does not reap orphans, killed grandchildren stay zombies for ever, so
    `os.killpg(pgid, 0)` alone would keep succeeding."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                found.append(int(entry))
    return found


def pid_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


async def group_gone(pgid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while live_members(pgid):
        if time.monotonic() > deadline:
            return False
        await anyio.sleep(0.05)
    return True


# ---------------------------------------------------------------------------------- resolve


def test_resolve_gives_one_argv_element_per_value() -> None:
    step = shell_step(run=["prog", "${{ items }}", "${{ n }}", "${{ obj }}", "${{ s }}", "lit"])
    resolved = ShellKind().resolve(step, render)
    assert resolved["argv"] == ["prog", '["a","b c"]', "3", '{"a":[true,null],"b":1}', "x y", "lit"]


def test_resolve_names_secrets_and_never_renders_scripts() -> None:
    seen: list[Any] = []

    def recording(value: Any) -> Any:
        seen.append(value)
        return render(value)

    step = shell_step(
        script='echo "$A" | tr a-z A-Z',
        env={"A": "${{ s }}", "TOKEN": {"secret": "API_TOKEN"}},
        cwd="sub",
        max_output_bytes=4096,
    )
    resolved = ShellKind().resolve(step, recording)
    assert resolved == {
        "script": 'echo "$A" | tr a-z A-Z',
        "cwd": "sub",
        "max_output_bytes": 4096,
        "env": {"A": "x y", "TOKEN": {"secret": "API_TOKEN"}},
    }
    assert step.script not in seen
    json.dumps(resolved)  # hashed into the cache key: must be JSON-able


def test_builtin_kinds_satisfy_the_protocol() -> None:
    kinds = builtin_step_kinds()
    assert [k.name for k in kinds] == ["shell", "python", "llm", "flow"]
    assert all(isinstance(k, StepKind) for k in kinds)


# ---------------------------------------------------------------------------------- results


async def test_argv_values_arrive_as_single_literal_arguments(tmp_path: Path) -> None:
    args = [
        "two words",
        'it\'s "quoted"',
        "$(touch pwned)",
        "x; touch pwned2",
        "`id`",
        "*",
        "",
        "a\nb",
    ]
    result = await run_shell(
        make_ctx(tmp_path),
        run=python_argv("import sys, json; print(json.dumps(sys.argv[1:]))", *args),
    )
    assert result.result == args
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "pwned2").exists()


async def test_rendered_values_arrive_as_single_arguments(tmp_path: Path) -> None:
    result = await run_shell(
        make_ctx(tmp_path),
        run=python_argv(
            "import sys, json; print(json.dumps(sys.argv[1:]))", "${{ items }}", "${{ n }}"
        ),
    )
    assert result.result == ['["a","b c"]', "3"]


async def test_stdout_json_becomes_the_result(tmp_path: Path) -> None:
    result = await run_shell(
        make_ctx(tmp_path), run=python_argv('print(\'{"ok": true, "n": [1, 2]}\')')
    )
    assert result.result == {"ok": True, "n": [1, 2]}
    assert result.stdout == '{"ok": true, "n": [1, 2]}\n'
    assert result.detail["exit_code"] == 0
    assert result.detail["stdout_dropped_bytes"] == 0


async def test_plain_stdout_has_no_result_and_is_logged(tmp_path: Path) -> None:
    lines: list[tuple[str, str]] = []
    ctx = make_ctx(tmp_path, log=lambda s, line: lines.append((s, line)))
    result = await run_shell(
        ctx,
        run=python_argv(
            "import sys; print('hello'); print('world'); print('warn', file=sys.stderr)"
        ),
    )
    assert result.result is None
    assert result.stdout == "hello\nworld\n"
    assert ("stdout", "hello") in lines
    assert ("stdout", "world") in lines
    assert ("stderr", "warn") in lines
    assert (ctx.workdir / "stdout.log").read_text() == "hello\nworld\n"
    assert (ctx.workdir / "stderr.log").read_text() == "warn\n"


async def test_script_mode_gets_values_through_env(tmp_path: Path) -> None:
    result = await run_shell(
        make_ctx(tmp_path),
        env={"GREETING": "${{ s }}"},
        script='printf \'{"greeting": "%s"}\' "$GREETING" | cat',
    )
    assert result.result == {"greeting": "x y"}


async def test_script_mode_runs_with_pipefail(tmp_path: Path) -> None:
    with pytest.raises(StepFailed) as info:
        await run_shell(make_ctx(tmp_path), script="false | true\necho unreachable")
    assert info.value.category == "exit_code"
    assert "bash script" in str(info.value)


async def test_environment_is_minimal_plus_declared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BLOCKS_TEST_AMBIENT", "leak")
    result = await run_shell(
        make_ctx(tmp_path),
        env={"PLAIN": "value"},
        run=python_argv("import os, json; print(json.dumps(dict(os.environ)))"),
    )
    assert result.result["PLAIN"] == "value"
    assert "BLOCKS_TEST_AMBIENT" not in result.result
    assert result.result["PATH"] == os.environ["PATH"]


async def test_cwd_is_relative_to_the_project(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    result = await run_shell(
        make_ctx(tmp_path),
        cwd="sub",
        run=python_argv("import os, json; print(json.dumps(os.getcwd()))"),
    )
    assert Path(result.result) == (tmp_path / "sub").resolve()


# ---------------------------------------------------------------------------------- failures


async def test_nonzero_exit_names_program_code_and_stderr_tail(tmp_path: Path) -> None:
    code = (
        "import sys\nfor i in range(30): print(f'line {i}', file=sys.stderr)\n"
        "print('boom: disk full', file=sys.stderr); sys.exit(3)"
    )
    with pytest.raises(StepFailed) as info:
        await run_shell(make_ctx(tmp_path), run=python_argv(code))
    message = str(info.value)
    assert info.value.category == "exit_code"
    assert info.value.step == "build"
    assert "exited with code 3" in message
    assert PY in message
    assert "boom: disk full" in message
    assert "line 29" in message
    assert "line 5\n" not in message  # only the tail


async def test_killed_by_a_signal_says_which(tmp_path: Path) -> None:
    with pytest.raises(StepFailed) as info:
        await run_shell(make_ctx(tmp_path), run=["bash", "-c", "kill -KILL $$"])
    assert "killed by signal SIGKILL" in str(info.value)
    assert info.value.category == "exit_code"


async def test_missing_program_is_permanent(tmp_path: Path) -> None:
    with pytest.raises(StepFailed) as info:
        await run_shell(make_ctx(tmp_path), run=["blocks-no-such-program-xyz", "--help"])
    assert info.value.category == "permanent"
    assert "blocks-no-such-program-xyz" in str(info.value)
    assert "not found" in str(info.value)


async def test_non_executable_program_is_permanent(tmp_path: Path) -> None:
    tool = tmp_path / "tool.sh"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o644)
    with pytest.raises(StepFailed) as info:
        await run_shell(make_ctx(tmp_path), run=["./tool.sh"])
    assert info.value.category == "permanent"
    assert "not executable" in str(info.value)


async def test_missing_cwd_is_permanent(tmp_path: Path) -> None:
    with pytest.raises(StepFailed) as info:
        await run_shell(make_ctx(tmp_path), cwd="nowhere", run=["true"])
    assert info.value.category == "permanent"
    assert "nowhere" in str(info.value)


async def test_missing_secret_is_permanent(tmp_path: Path) -> None:
    with pytest.raises(StepFailed) as info:
        await run_shell(make_ctx(tmp_path), env={"TOKEN": {"secret": "API_TOKEN"}}, run=["true"])
    assert info.value.category == "permanent"
    assert "API_TOKEN" in str(info.value)


# ---------------------------------------------------------------------------------- output


async def test_output_cap_keeps_the_head_and_memory_bounded(tmp_path: Path) -> None:
    count = [0]

    def log(_stream: str, _line: str) -> None:
        count[0] += 1

    total = 50 * 1024 * 1024
    code = (
        "import sys\nline = b'x' * 1023 + b'\\n'\nw = sys.stdout.buffer.write\n"
        f"for _ in range({total // 1024}): w(line)\n"
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ctx = make_ctx(tmp_path, log=log)
    result = await run_shell(ctx, run=python_argv(code))
    growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert growth_kib < 15 * 1024, f"peak RSS grew by {growth_kib} KiB"
    assert len(result.stdout) == 1_048_576
    assert result.detail["stdout_bytes"] == total
    assert result.detail["stdout_dropped_bytes"] == total - 1_048_576
    assert result.result is None
    assert count[0] == total // 1024
    assert (ctx.workdir / "stdout.log").stat().st_size == total


async def test_a_huge_line_without_newline_is_read_in_pieces(tmp_path: Path) -> None:
    pieces: list[int] = []
    ctx = make_ctx(tmp_path, log=lambda _s, line: pieces.append(len(line)))
    size = 5_000_000
    result = await run_shell(
        ctx, max_output_bytes=4096, run=python_argv(f"import sys; sys.stdout.write('x' * {size})")
    )
    assert result.stdout == "x" * 4096
    assert result.detail["stdout_dropped_bytes"] == size - 4096
    assert result.result is None
    assert max(pieces) <= LINE_PIECE_BYTES
    assert sum(pieces) == size
    assert (ctx.workdir / "stdout.log").stat().st_size == size


async def test_truncated_json_is_not_a_result(tmp_path: Path) -> None:
    result = await run_shell(
        make_ctx(tmp_path), max_output_bytes=1024, run=python_argv("print('1' * 5000)")
    )
    assert result.result is None
    assert result.stdout == "1" * 1024


async def test_secrets_are_masked_in_logs_files_and_stdout(tmp_path: Path) -> None:
    lines: list[str] = []
    ctx = make_ctx(tmp_path, env={"API_TOKEN": CANARY}, log=lambda _s, line: lines.append(line))
    code = (
        "import os, sys\nt = os.environ['API_TOKEN']\nprint('token=' + t)\n"
        "print('again ' + t, file=sys.stderr)\nprint(os.environ['ALIAS'])"
    )
    result = await run_shell(
        ctx,
        run=python_argv(code),
        env={"API_TOKEN": {"secret": "API_TOKEN"}, "ALIAS": {"secret": "API_TOKEN"}},
    )
    assert "token=***" in lines
    assert "again ***" in lines
    assert all(CANARY not in line for line in lines)
    assert CANARY not in result.stdout
    assert "***" in result.stdout
    for name in ("stdout.log", "stderr.log"):
        text = (ctx.workdir / name).read_text()
        assert CANARY not in text
        assert "***" in text


async def test_secret_in_failure_message_is_masked(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, env={"API_TOKEN": CANARY})
    with pytest.raises(StepFailed) as info:
        await run_shell(
            ctx, run=python_argv("import os, sys; sys.exit('rejected ' + os.environ['API_TOKEN'])")
        )
    assert CANARY not in str(info.value)
    assert "rejected ***" in str(info.value)


async def test_a_full_disk_does_not_fail_the_step(tmp_path: Path) -> None:
    lines: list[str] = []
    ctx = make_ctx(tmp_path, log=lambda _s, line: lines.append(line))
    (ctx.workdir / "stdout.log").symlink_to("/dev/full")  # every write fails with ENOSPC
    result = await run_shell(ctx, run=python_argv("for i in range(20000): print(i)"))
    assert result.detail["stdout_log_incomplete"] is True
    assert len(lines) == 20000
    assert result.stdout.endswith("19999\n")


# ---------------------------------------------------------------------------------- stopping


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    lines: list[str] = []
    ctx = make_ctx(tmp_path, log=lambda _s, line: lines.append(line))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await run_with_timeout(
            0.5, ctx, run=["bash", "-c", "echo $$; sleep 30 & echo $!; sleep 30; wait"]
        )
    assert time.monotonic() - started < 5
    pgid, background = int(lines[0]), int(lines[1])
    assert await group_gone(pgid), f"still running: {live_members(pgid)}"
    assert not pid_running(background)


async def test_a_group_ignoring_sigterm_is_killed_after_the_grace(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shell, "TERM_GRACE_SECONDS", 0.3)
    lines: list[str] = []
    ctx = make_ctx(tmp_path, log=lambda _s, line: lines.append(line))
    with pytest.raises(TimeoutError):
        await run_with_timeout(
            0.5,
            ctx,
            run=["bash", "-c", "trap '' TERM; echo $$; sleep 30 & echo $!; sleep 30; wait"],
        )
    pgid, background = int(lines[0]), int(lines[1])
    assert await group_gone(pgid), f"still running: {live_members(pgid)}"
    assert not pid_running(background)


async def test_task_group_cancellation_stops_the_group(tmp_path: Path) -> None:
    lines: list[str] = []
    ctx = make_ctx(tmp_path, log=lambda _s, line: lines.append(line))
    outcome: list[str] = []

    async def step() -> None:
        try:
            await run_shell(ctx, script="echo $$\nsleep 30")
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(step)
        while not lines:
            await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert outcome == ["cancelled"]
    assert await group_gone(int(lines[0]))


async def test_background_children_left_at_exit_are_stopped(tmp_path: Path) -> None:
    started = time.monotonic()
    result = await run_with_timeout(
        10, make_ctx(tmp_path), run=["bash", "-c", "sleep 30 & echo $!"]
    )
    assert time.monotonic() - started < 5
    assert result.detail["exit_code"] == 0
    assert not pid_running(int(result.result))


# ---------------------------------------------------------------------------------- digest


def test_code_digest_pins_project_programs_only(tmp_path: Path) -> None:
    kind = ShellKind()
    tool = tmp_path / "bin" / "tool.sh"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho one\n")
    first = kind.code_digest(shell_step(run=["./bin/tool.sh"]), tmp_path)
    assert first is not None
    assert first.startswith("sha256:")
    tool.write_text("#!/bin/sh\necho two\n")
    assert kind.code_digest(shell_step(run=["./bin/tool.sh"]), tmp_path) != first
    assert kind.code_digest(shell_step(run=["tool.sh"], cwd="bin"), tmp_path) is None
    assert kind.code_digest(shell_step(run=["./tool.sh"], cwd="bin"), tmp_path) is not None
    assert kind.code_digest(shell_step(run=["bash", "-c", "true"]), tmp_path) is None
    assert kind.code_digest(shell_step(run=["/bin/sh"]), tmp_path) is None
    assert kind.code_digest(shell_step(run=["../outside.sh"]), tmp_path) is None
    assert kind.code_digest(shell_step(script="./bin/tool.sh"), tmp_path) is None
