"""`blocks circuit open|close` and `blocks circuits` through the CLI: a circuit opened by
hand stops every run from calling the provider until it is closed by hand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import Project

LLM = Path(__file__).resolve().parent / "fixtures" / "llm"


def test_a_circuit_opened_by_hand_holds_until_closed(blocks_project: Project) -> None:
    root = blocks_project.root
    shutil.copy2(LLM / "offline.yaml", root / "offline.yaml")
    shutil.copytree(LLM / "prompts", root / "prompts")
    shutil.copytree(LLM / "schemas", root / "schemas")
    env = {"BLOCKS_USER": "alice"}

    done = blocks_project.blocks("circuits")
    assert done.returncode == 0, blocks_project.explain(done)
    assert "every provider is closed" in done.stdout

    done = blocks_project.blocks("circuit", "open", "local", "-r", "drill", env=env)
    assert done.returncode == 0, blocks_project.explain(done)
    assert "circuit local: closed -> open (by hand, alice: drill)" in done.stdout
    state = json.loads(blocks_project.blocks("circuits", "--json").stdout)["local"]
    assert state["state"] == "open"
    assert state["manual"] is True
    assert state["by"] == "alice"

    outcome = blocks_project.run_json("offline.yaml", expect=1)
    error = outcome["steps"]["draft"]["error"]
    assert "circuit" in error.lower()
    assert "local" in error

    done = blocks_project.blocks("circuit", "close", "local", "-r", "recovered", env=env)
    assert done.returncode == 0, blocks_project.explain(done)
    assert blocks_project.run_json("offline.yaml")["status"] == "succeeded"

    done = blocks_project.blocks("circuit", "open", "local")
    assert done.returncode == 2
    assert "--reason" in done.stderr
