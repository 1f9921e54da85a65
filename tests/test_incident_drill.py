"""The incident drill from the BC/anneal plan, through the CLI on the shipped flow and
runbook: two good runs are promoted to prod; someone flips `anneal_loss_flag` in the
promoted run's summary; the watcher-style `gate` step of the flow-failure runbook sees the
promotion gate fail, and the runbook freezes prod and rolls it back to the last good
bundle, with the approval and the decision recorded in the incident bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import Project
from tests.test_channels_cli import channels, history

REPO = Path(__file__).resolve().parents[1]
FLOW = "pipelines/bc-anneal-promotion.yaml"


def _copy_example(root: Path) -> None:
    (root / "pipelines").mkdir()
    shutil.copy2(REPO / FLOW, root / FLOW)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    (root / "examples").mkdir()
    shutil.copy2(REPO / "examples" / "__init__.py", root / "examples" / "__init__.py")
    shutil.copytree(REPO / "examples" / "bc_anneal", root / "examples" / "bc_anneal", ignore=ignore)
    shutil.copytree(REPO / "schemas", root / "schemas")
    shutil.copytree(REPO / "runbooks", root / "runbooks")


def test_flipping_anneal_loss_flag_freezes_prod_and_rolls_back(blocks_project: Project) -> None:
    project = blocks_project
    _copy_example(project.root)
    a = project.run_json(FLOW)
    b = project.run_json(FLOW)
    for run in (a, b):
        done = project.blocks("promote", run["run_id"], "-c", "prod", "-r", "weekly promotion")
        assert done.returncode == 0, project.explain(done)

    # the drill: the promoted run's summary now says the anneal made the held-out loss worse
    summary_path = project.root / "out" / "anneal" / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert summary["anneal_loss_flag"] is False
    summary["anneal_loss_flag"] = True
    summary_path.write_text(json.dumps(summary))

    done = project.blocks(
        "runbook", "run", "runbooks/flow-failure.yaml",
        "-p", f"run_id={b['run_id']}", "-p", f"flow={FLOW}", "-p", "notify=incidents.log",
        "--approve-as", "oncall-bob", "--json",
        env={"BLOCKS_USER": "alice"},
    )  # fmt: skip
    assert done.returncode == 0, project.explain(done)
    out = json.loads(done.stdout)
    inspect = out["steps"]["inspect"]["result"]
    assert inspect["bundle"] == b["bundle"]
    assert inspect["gates_passed"] is False
    assert inspect["gates"]["promote"]["recorded"] == "pass"
    assert inspect["gates"]["promote"]["verdict"] == "fail"
    assert "anneal_loss_flag" in inspect["gates"]["promote"]["explanation"]

    prod = channels(project)["prod"]
    assert prod["frozen"] is True
    assert prod["bundle"] == a["bundle"]
    entries = history(project, "prod")
    assert [e["action"] for e in entries] == ["promote", "promote", "freeze", "rollback"]
    assert entries[-1]["by"] == "alice"
    assert entries[-1]["via"] == out["run_id"]

    # the incident bundle holds the decision: who approved, and what moved
    bundle = project.blocks("bundle", "show", out["run_id"], "--json")
    assert bundle.returncode == 0, project.explain(bundle)
    run = json.loads(bundle.stdout)["run"]
    assert run["kind"] == "runbook"
    assert run["approvals"][0]["by"] == "oncall-bob"
    assert [e["action"] for e in run["ledger"]] == ["freeze", "rollback"]
    assert run["ledger"][1]["bundle"] == a["bundle"]
    assert run["steps"]["rollback"] == "succeeded"
    verify = project.blocks("bundle", "verify", out["run_id"])
    assert verify.returncode == 0, project.explain(verify)
    report = project.blocks("runbook", "report", out["run_id"])
    assert "approved by oncall-bob" in report.stdout
    assert f"rollback `prod` {b['bundle'][:19]} -> {a['bundle'][:19]}" in report.stdout
    assert "freeze `prod`" in report.stdout
    assert "flow-failure resolved" in (project.root / "incidents.log").read_text()
