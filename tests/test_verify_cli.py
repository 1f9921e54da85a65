"""`blocks run` with gates and `blocks verify` through the CLI, on the BC/anneal example.

The promotion gate (`accuracy >= 0.92 && !anneal_loss_flag`) passes on the shipped data,
fails when the flag is flipped (the incident drill), and each decision is recorded with its
evidence in the run's journal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from engine.executor.journal import read_journal

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = str(Path(sys.executable).with_name("blocks"))
FLOW = "pipelines/bc-anneal-promotion.yaml"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("pipelines", "examples", "schemas", "prompts"):
        shutil.copytree(ROOT / name, tmp_path / name)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'scratch'\n")
    return tmp_path


def blocks(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKS_")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return subprocess.run(
        [BLOCKS, *args],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def gate_records(project: Path, gate: str) -> list[dict[str, object]]:
    records = []
    for journal in sorted((project / ".blocks" / "runs").glob("*/journal.log")):
        records += [
            r
            for r in read_journal(journal).records
            if r.get("event") == "gate.evaluated" and r.get("gate") == gate
        ]
    return records


def test_promotion_gate_passes_then_the_drill_fails_it(project: Path) -> None:
    ok = blocks(project, "run", FLOW, "--log-format", "off")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "gate promote" in ok.stdout
    drill = blocks(project, "run", FLOW, "--log-format", "off", "-i", "drill_flip_loss_flag=true")
    assert drill.returncode == 1, drill.stdout + drill.stderr
    assert "Traceback" not in drill.stdout + drill.stderr
    verdicts = [r["status"] for r in gate_records(project, "promote")]
    assert verdicts == ["pass", "fail"]
    failed = gate_records(project, "promote")[-1]
    assert failed["metrics"] == {
        "accuracy": failed["metrics"]["accuracy"],
        "anneal_loss_flag": True,
    }
    assert "anneal_loss_flag = True" in str(failed["explanation"])
    assert "is false" in str(failed["explanation"])


def test_verify_judges_the_workspace_and_fails_on_a_blocker(project: Path) -> None:
    assert blocks(project, "run", FLOW, "--log-format", "off").returncode == 0
    good = blocks(project, "verify", FLOW)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "gate promote (metric, blocker): pass" in good.stdout
    summary = project / "out" / "anneal" / "summary.json"
    data = json.loads(summary.read_text())
    data["anneal_loss_flag"] = not data["anneal_loss_flag"]
    summary.write_text(json.dumps(data))
    bad = blocks(project, "verify", FLOW, "--format", "junit")
    assert bad.returncode == 1
    suite = ElementTree.fromstring(bad.stdout)  # noqa: S314  (our own output, in a test)
    failures = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failures == ["promote (metric)"]
    sarif = json.loads(blocks(project, "verify", FLOW, "--format", "sarif").stdout)
    levels = {r["properties"]["gate"]: r["level"] for r in sarif["runs"][0]["results"]}
    assert levels["promote"] == "error"
    github = blocks(project, "verify", FLOW, "--format", "github").stdout
    assert "::error file=pipelines/bc-anneal-promotion.yaml,title=blocks gate promote::" in github


def test_a_missing_metric_never_passes(project: Path) -> None:
    assert blocks(project, "run", FLOW, "--log-format", "off").returncode == 0
    (project / "out" / "anneal" / "summary.json").unlink()
    result = blocks(project, "verify", FLOW, "--format", "json")
    assert result.returncode == 1
    promote = next(v for v in json.loads(result.stdout) if v["gate"] == "promote")
    assert promote["status"] == "fail"
    assert "no data for accuracy, anneal_loss_flag" in promote["explanation"]


def test_shadow_reports_the_past_runs_a_new_threshold_would_flip(project: Path) -> None:
    assert blocks(project, "run", FLOW, "--log-format", "off").returncode == 0
    drill = blocks(project, "run", FLOW, "--log-format", "off", "-i", "drill_flip_loss_flag=true")
    assert drill.returncode == 1
    flow = project / FLOW
    text = flow.read_text()
    assert "require: accuracy >= 0.92 && !anneal_loss_flag" in text
    flow.write_text(
        text.replace(
            "require: accuracy >= 0.92 && !anneal_loss_flag",
            "require: accuracy >= 0.995 && !anneal_loss_flag",
        )
    )
    result = blocks(project, "verify", FLOW, "--shadow", "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [r for r in json.loads(result.stdout) if r["gate"] == "promote"]
    assert sorted((r["then"], r["now"]) for r in rows) == [("fail", "fail"), ("pass", "fail")]
    assert [r["flipped"] for r in rows if r["then"] == "pass"] == [True]
    text_out = blocks(project, "verify", FLOW, "--shadow").stdout
    assert "gate promote: pass -> fail" in text_out
    assert "1 would flip" in text_out
