"""`blocks run --replay BUNDLE`: llm steps answer from a bundle's recorded answers.

The replayed run must give identical outputs and never call a provider: between the two
runs the route is pointed at a loopback port where nothing listens, so any call would fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from engine.executor.journal import read_journal

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "llm"
BLOCKS = str(Path(sys.executable).with_name("blocks"))


def run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKS_")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env["OPENAI_API_KEY"] = "sk-test-replay-0000"
    return subprocess.run(
        [BLOCKS, *args],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_replay_gives_identical_outputs_without_calling_a_provider(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'scratch'\n")
    for name in ("prompts", "schemas"):
        shutil.copytree(FIXTURES / name, tmp_path / name)
    flow = tmp_path / "flow.yaml"
    flow.write_text((FIXTURES / "offline.yaml").read_text())
    first = run(tmp_path, "run", "flow.yaml", "--json", "--log-format", "off")
    assert first.returncode == 0, first.stdout + first.stderr
    original = json.loads(first.stdout)
    assert original["bundle"]

    unreachable = 'model: openai/gpt-4o-mini\n    params: {api_base: "http://127.0.0.1:9/v1"}'
    text = flow.read_text().replace("model: local/deterministic", unreachable)
    flow.write_text(text.replace("    params: {temperature: 0}\n", "", 1))
    replayed = run(
        tmp_path,
        "run",
        "flow.yaml",
        "--json",
        "--log-format",
        "off",
        "--replay",
        original["run_id"],
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    again = json.loads(replayed.stdout)
    assert again["steps"]["draft"]["outputs"] == original["steps"]["draft"]["outputs"]
    journal = tmp_path / ".blocks" / "runs" / again["run_id"] / "journal.log"
    done = [r for r in read_journal(journal).records if r.get("event") == "step.succeeded"]
    assert done[0]["detail"]["replayed_from"] == original["bundle"]


def test_replay_of_an_unknown_bundle_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'scratch'\n")
    for name in ("prompts", "schemas"):
        shutil.copytree(FIXTURES / name, tmp_path / name)
    shutil.copy(FIXTURES / "offline.yaml", tmp_path / "flow.yaml")
    result = run(tmp_path, "run", "flow.yaml", "--replay", "20990101-000000-abcdef")
    assert result.returncode == 2
    assert "cannot replay" in result.stderr
    assert "Traceback" not in result.stderr
