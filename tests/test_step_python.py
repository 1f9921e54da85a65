"""The python step kind: sync and async calls, JSON results, failure categories, lookups that
fail helpfully, cancellation, code digests, and the per-call overhead budget."""

from __future__ import annotations

import importlib
import sys
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine.errors import StepFailed
from engine.plugins import StepContext, StepResult
from engine.redact import Redactor
from engine.spec.flow import PythonStep
from engine.steps.python import PythonKind

pytestmark = pytest.mark.anyio

CANARY = "canary-Zx9q-s3cr3t-value"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
MODULE = "blocks_step_fixtures"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def isolated_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kind puts project folders on `sys.path`; give each test its own copy."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def render(value: Any) -> Any:
    """A stand-in for the executor's renderer: a lone `${{ name }}` yields the value itself."""
    names: dict[str, Any] = {"n": 3, "tags": ["x", "y"], "who": "ada"}
    if isinstance(value, dict):
        return {k: render(v) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v) for v in value]
    if isinstance(value, str) and value.startswith("${{") and value.endswith("}}"):
        return names[value[3:-2].strip()]
    return value


def make_ctx(tmp_path: Path, project_root: Path = FIXTURES) -> StepContext:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return StepContext(
        run_id="run-1",
        step_id="calc",
        instance="calc[2]",
        attempt=1,
        project_root=project_root,
        workdir=work,
        env={},
        redactor=Redactor([CANARY]),
        log=lambda _s, _l: None,
    )


def python_step(call: str, pythonpath: list[str] | None = None, **kwargs: Any) -> PythonStep:
    return PythonStep.model_validate(
        {
            "kind": "python",
            "call": call,
            "with": kwargs,
            "pythonpath": ["steps"] if pythonpath is None else pythonpath,
        }
    )


def resolved_for(function: str, **kwargs: Any) -> Mapping[str, Any]:
    return PythonKind().resolve(python_step(f"{MODULE}:{function}", **kwargs), render)


async def call(
    ctx: StepContext, function: str, kind: PythonKind | None = None, **kwargs: Any
) -> StepResult:
    return await (kind or PythonKind()).run(ctx, resolved_for(function, **kwargs))


async def call_with_timeout(
    limit: float, ctx: StepContext, function: str, **kwargs: Any
) -> StepResult:
    with anyio.fail_after(limit):
        return await call(ctx, function, **kwargs)


async def failure(ctx: StepContext, function: str, **kwargs: Any) -> StepFailed:
    with pytest.raises(StepFailed) as info:
        await call(ctx, function, **kwargs)
    return info.value


def write_module(folder: Path, source: str, name: str | None = None) -> str:
    name = name or f"blocks_tmp_{uuid.uuid4().hex}"
    (folder / f"{name}.py").write_text(source)
    return name


# ---------------------------------------------------------------------------------- resolve


def test_resolve_keeps_rendered_types() -> None:
    step = python_step(
        f"{MODULE}:describe",
        name="${{ who }}",
        tags="${{ tags }}",
        options={"n": "${{ n }}", "fixed": True},
    )
    assert PythonKind().resolve(step, render) == {
        "call": f"{MODULE}:describe",
        "with": {"name": "ada", "tags": ["x", "y"], "options": {"n": 3, "fixed": True}},
        "pythonpath": ["steps"],
    }


# ---------------------------------------------------------------------------------- calls


async def test_sync_function_with_kwargs(tmp_path: Path) -> None:
    result = await call(make_ctx(tmp_path), "add", a=2, b=3)
    assert result.result == 5
    assert result.detail == {"call": f"{MODULE}:add"}


async def test_async_function(tmp_path: Path) -> None:
    result = await call(make_ctx(tmp_path), "greet", name="ada")
    assert result.result == {"greeting": "hello ada!"}


async def test_result_is_the_json_it_will_be_stored_as(tmp_path: Path) -> None:
    result = await call(
        make_ctx(tmp_path),
        "describe",
        name="${{ who }}",
        tags=["a"],
        options={"deep": {"k": [1, 2.5, None]}},
    )
    assert result.result == {
        "name": "ada",
        "tags": ["a"],
        "options": {"deep": {"k": [1, 2.5, None]}},
        "pair": [1, 2],
    }


async def test_non_json_return_is_permanent(tmp_path: Path) -> None:
    error = await failure(make_ctx(tmp_path), "returns_set")
    assert error.category == "permanent"
    assert "returned a set" in str(error)
    error = await failure(make_ctx(tmp_path), "returns_nan")
    assert error.category == "permanent"
    assert "returned a float" in str(error)


async def test_concurrent_first_calls_share_one_import(tmp_path: Path) -> None:
    kind = PythonKind()
    ctx = make_ctx(tmp_path)
    results: list[Any] = []

    async def one(i: int) -> None:
        results.append((await call(ctx, "add", kind, a=i, b=1)).result)

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(one, i)
    assert sorted(results) == list(range(1, 201))


async def test_project_folders_join_sys_path_once(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    kind = PythonKind()
    await call(ctx, "add", kind, a=1, b=2)
    await call(ctx, "greet", kind, name="x")
    await call(ctx, "add", PythonKind(), a=1, b=1)
    assert sys.path.count(str(FIXTURES / "steps")) == 1
    assert sys.path.count(str(FIXTURES)) == 1
    assert sys.path.index(str(FIXTURES / "steps")) < sys.path.index(str(FIXTURES))


# ---------------------------------------------------------------------------------- failures


async def test_exceptions_are_permanent_with_a_traceback_file(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    error = await failure(ctx, "fail_value")
    assert error.category == "permanent"
    assert str(error) == f"{MODULE}:fail_value raised ValueError: bad value"
    assert error.step == "calc[2]"
    assert error.__cause__ is None
    traceback_text = (ctx.workdir / "traceback.txt").read_text()
    assert "fail_value" in traceback_text
    assert "ValueError: bad value" in traceback_text


async def test_timeout_and_connection_errors_may_be_retried(tmp_path: Path) -> None:
    assert (await failure(make_ctx(tmp_path), "fail_timeout")).category == "timeout"
    error = await failure(make_ctx(tmp_path), "fail_connection")
    assert error.category == "connection"
    assert "ConnectionRefusedError: refused by upstream" in str(error)


async def test_system_exit_is_a_permanent_failure(tmp_path: Path) -> None:
    error = await failure(make_ctx(tmp_path), "exits")
    assert error.category == "permanent"
    assert "SystemExit" in str(error)


async def test_secrets_in_exception_messages_are_masked(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    error = await failure(ctx, "fail_value", token=CANARY)
    assert CANARY not in str(error)
    assert "bad value ***" in str(error)
    assert CANARY not in (ctx.workdir / "traceback.txt").read_text()


async def test_unknown_function_suggests_a_name(tmp_path: Path) -> None:
    error = await failure(make_ctx(tmp_path), "ad")
    assert error.category == "permanent"
    assert f"module '{MODULE}' has no function 'ad'" in str(error)
    assert "did you mean 'add'" in str(error)


async def test_non_callable_attribute_is_permanent(tmp_path: Path) -> None:
    error = await failure(make_ctx(tmp_path), "NOT_A_FUNCTION")
    assert error.category == "permanent"
    assert "not a function" in str(error)


async def test_missing_module_is_permanent(tmp_path: Path) -> None:
    kind = PythonKind()
    resolved = kind.resolve(python_step("blocks_no_such_module.sub:run"), render)
    with pytest.raises(StepFailed) as info:
        await kind.run(make_ctx(tmp_path), resolved)
    assert info.value.category == "permanent"
    assert "no module named 'blocks_no_such_module.sub'" in str(info.value)


async def test_a_module_failing_at_import_is_permanent(tmp_path: Path) -> None:
    name = write_module(tmp_path, "import blocks_missing_dependency_xyz\n")
    kind = PythonKind()
    ctx = make_ctx(tmp_path, project_root=tmp_path)
    with pytest.raises(StepFailed) as info:
        await kind.run(ctx, kind.resolve(python_step(f"{name}:f", pythonpath=[]), render))
    assert info.value.category == "permanent"
    assert f"importing '{name}' failed: ModuleNotFoundError" in str(info.value)
    assert "blocks_missing_dependency_xyz" in (ctx.workdir / "traceback.txt").read_text()


async def test_a_module_written_after_a_failed_lookup_is_found(tmp_path: Path) -> None:
    kind = PythonKind()
    ctx = make_ctx(tmp_path, project_root=tmp_path)
    name = f"blocks_tmp_{uuid.uuid4().hex}"
    resolved = kind.resolve(python_step(f"{name}:f", pythonpath=[]), render)
    with pytest.raises(StepFailed):
        await kind.run(ctx, resolved)
    write_module(tmp_path, "def f():\n    return 'late'\n", name)
    assert (await kind.run(ctx, resolved)).result == "late"


# ---------------------------------------------------------------------------------- cancel


async def test_cancelling_an_async_function_cancels_it(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    with pytest.raises(TimeoutError):
        await call_with_timeout(0.2, make_ctx(tmp_path), "wait_forever", tag=tag)
    fixtures = sys.modules[MODULE]
    assert tag in fixtures.CANCELLED


async def test_cancelling_a_sync_function_abandons_its_thread(tmp_path: Path) -> None:
    tag = f"abandoned-{tmp_path.name}"
    with pytest.raises(TimeoutError):
        await call_with_timeout(0.2, make_ctx(tmp_path), "block", seconds=1.5, tag=tag)
    # the step was reported cancelled while its thread still slept: it was not waited for
    assert tag not in sys.modules[MODULE].FINISHED


# ---------------------------------------------------------------------------------- digest


def test_code_digest_follows_the_source_file(tmp_path: Path) -> None:
    kind = PythonKind()
    (tmp_path / "lib").mkdir()
    name = write_module(tmp_path / "lib", "def f():\n    return 1\n")
    step = python_step(f"{name}:f", pythonpath=["lib"])
    first = kind.code_digest(step, tmp_path)
    assert first is not None
    assert first.startswith("sha256:")
    assert len(first) == len("sha256:") + 64
    assert kind.code_digest(step, tmp_path) == first
    write_module(tmp_path / "lib", "def f():\n    return 2\n", name)  # same size
    assert kind.code_digest(step, tmp_path) != first
    assert name not in sys.modules


def test_code_digest_finds_package_modules_without_importing(tmp_path: Path) -> None:
    package = f"blocks_pkg_{uuid.uuid4().hex}"
    (tmp_path / package / "sub").mkdir(parents=True)
    (tmp_path / package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (tmp_path / package / "sub" / "__init__.py").write_text("")
    (tmp_path / package / "sub" / "tool.py").write_text("def run():\n    return 1\n")
    kind = PythonKind()
    assert kind.code_digest(python_step(f"{package}.sub.tool:run", []), tmp_path) is not None
    assert kind.code_digest(python_step(f"{package}.sub:run", []), tmp_path) is not None
    assert package not in sys.modules


def test_code_digest_of_a_missing_module_is_none(tmp_path: Path) -> None:
    step = python_step("blocks_no_such_module_abc.x:f", pythonpath=[])
    assert PythonKind().code_digest(step, tmp_path) is None


# ---------------------------------------------------------------------------------- speed


async def test_an_async_function_runs_on_the_event_loop_and_is_imported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The executor's per-step budget rests on this: an `async def` step is awaited on the
    loop (no worker thread), and its module is looked up once, not per call."""
    kind = PythonKind()
    ctx = make_ctx(tmp_path)
    resolved = kind.resolve(python_step(f"{MODULE}:where"), render)
    first = await kind.run(ctx, resolved)
    assert first.result == {"thread": threading.get_ident()}

    def no_more_imports(name: str, *args: object, **kwargs: object) -> object:
        raise AssertionError(f"imported {name} again")

    monkeypatch.setattr(importlib, "import_module", no_more_imports)
    for _ in range(3):
        again = await kind.run(ctx, resolved)
        assert again.result == {"thread": threading.get_ident()}
