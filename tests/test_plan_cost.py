"""`blocks plan`'s estimated cost: the calls that would run, priced from litellm's bundled
price table, without importing litellm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Project

FLOW = """\
version: 1
kind: flow
name: priced
models:
  remote: {model: openai/gpt-4o-mini}
  unknown: {model: openai/no-such-model-anywhere}
  offline: {model: local/deterministic}
steps:
  ask:
    kind: llm
    model: remote
    prompt: prompt.md
    samples: 3
  odd:
    kind: llm
    model: unknown
    prompt: prompt.md
  free:
    kind: llm
    model: offline
    prompt: prompt.md
  each:
    kind: llm
    model: remote
    prompt: prompt.md
    for_each: {items: [1, 2]}
gates:
  review:
    kind: review
    after: ask
    model: remote
    rubric: rubric.md
    target: prompt.md
    samples: 2
    require: pass_rate >= 0.5
"""
PROMPT = "x" * 4000
RUBRIC = "y" * 800


def _price(model: str) -> tuple[float, float]:
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.find_spec("litellm")
    assert spec is not None
    assert spec.submodule_search_locations
    table = Path(spec.submodule_search_locations[0]) / "model_prices_and_context_window_backup.json"
    entry = json.loads(table.read_text())[model]
    return entry["input_cost_per_token"], entry["output_cost_per_token"]


@pytest.fixture
def project(blocks_project: Project) -> Project:
    root = blocks_project.root
    (root / "priced.yaml").write_text(FLOW)
    (root / "prompt.md").write_text(PROMPT)
    (root / "rubric.md").write_text(RUBRIC)
    return blocks_project


def test_the_plan_prices_the_calls_that_would_run(project: Project) -> None:
    done = project.blocks("plan", "priced.yaml")
    assert done.returncode == 0, project.explain(done)
    prompt_in, answer_out = _price("gpt-4o-mini")

    def call(chars: int) -> float:  # the gateway's budget estimate of one call
        return (chars // 4 + 256) * prompt_in + 256 * answer_out

    expected = 3 * call(len(PROMPT)) + 2 * call(len(RUBRIC) + len(PROMPT))
    line = done.stdout.splitlines()[-1]
    assert line.startswith(f"estimated cost: ${expected:.4f} for 7 model call(s) ")
    assert "(5 from llm steps, 2 from review gates;" in line  # 3 + 1 (odd) + 1 (free)
    assert "no price for openai/no-such-model-anywhere: not counted" in line
    assert "plus each item of each (a fan-out" in line


def test_the_estimate_does_not_import_litellm(project: Project) -> None:
    code = (
        "import sys; from engine.cli import main\n"
        "sys.argv = ['blocks', 'plan', 'priced.yaml']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('litellm' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project.root,
        env=project.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "estimated cost: $" in done.stdout, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False"
