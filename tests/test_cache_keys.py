"""What the step cache key sees: a change in a step's route (its model, params) is new work,
while a change in what only schedules the step (`needs` order, `retry`) is not."""

from __future__ import annotations

from pathlib import Path

from engine.executor.cache import key_for_step
from engine.runtime import Runtime, load_settings

FLOW = """\
version: 1
kind: flow
name: keys
models:
  fast:
    model: local/deterministic
    params: {temperature: 0}
steps:
  classify:
    kind: llm
    model: fast
    prompt: prompt.md
"""


def _key(root: Path, text: str) -> str:
    (root / "keys.yaml").write_text(text)
    runtime = Runtime(load_settings(str(root / "keys.yaml")))
    plan = runtime.plan(str(root / "keys.yaml"))
    ps = plan.steps["classify"]
    resolved = ps.kind.resolve(ps.spec, lambda value: value)
    return key_for_step(plan, ps, resolved, {}, {})


def test_the_route_is_part_of_an_llm_steps_key(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "keys"\nversion = "0"\n')
    (tmp_path / "prompt.md").write_text("Say hello.\n")
    base = _key(tmp_path, FLOW)
    assert _key(tmp_path, FLOW) == base  # stable
    assert _key(tmp_path, FLOW.replace("local/deterministic", "local/other-model")) != base
    assert _key(tmp_path, FLOW.replace("temperature: 0", "temperature: 1")) != base
    # the prompt file is code: editing it is new work too
    (tmp_path / "prompt.md").write_text("Say goodbye.\n")
    assert _key(tmp_path, FLOW) != base
    (tmp_path / "prompt.md").write_text("Say hello.\n")
    # scheduling fields are not work
    retried = FLOW + "    retry: {attempts: 3}\n    timeout: 30s\n"
    assert _key(tmp_path, retried) == base
