"""`flow` steps through the CLI: a sub-flow runs as a run of its own, its outputs become the
step's outputs, a failing child fails the step, a pinned digest refuses a changed sub-flow,
and a parent killed mid-sub-flow resumes without re-running what the child finished."""

from __future__ import annotations

import hashlib
import json
import signal

from tests.conftest import Project, wait_for

CHILD = """\
version: 1
kind: flow
name: child
inputs:
  n: {type: integer, default: 2}
  hold: {type: boolean, default: false}
steps:
  double:
    kind: shell
    cache: false
    run: [sh, -c, 'echo double >> side_effects.log; echo "{\\"v\\": $((N * 2))}"']
    env: {N: "${{ inputs.n }}"}
    outputs:
      v: {type: integer, source: stdout, pointer: /v}
  wait:
    kind: shell
    cache: false
    needs: [double]
    run:
      - sh
      - -c
      - >-
        echo wait >> side_effects.log;
        if [ "$HOLD" = true ] && [ ! -e held ]; then touch held; sleep 60; fi
    env: {HOLD: "${{ inputs.hold }}"}
  check:
    kind: shell
    cache: false
    needs: [wait]
    run: [sh, -c, 'test "$N" -lt 100 || { echo "n too large" >&2; exit 3; }']
    env: {N: "${{ inputs.n }}"}
outputs:
  value: ${{ steps.double.outputs.v }}
"""

PARENT = """\
version: 1
kind: flow
name: parent
inputs:
  n: {type: integer, default: 21}
  hold: {type: boolean, default: false}
steps:
  sub:
    kind: flow
    flow: child.yaml
    DIGEST
    inputs: {n: "${{ inputs.n }}", hold: "${{ inputs.hold }}"}
    outputs:
      value: {type: integer, pointer: /value}
  after:
    kind: shell
    needs: [sub]
    run: [echo, "${{ steps.sub.outputs.value }}"]
outputs:
  answer: ${{ steps.sub.outputs.value }}
"""


def _write(project: Project, digest: str | None = None) -> None:
    (project.root / "child.yaml").write_text(CHILD)
    line = f"digest: {digest}" if digest else ""
    (project.root / "parent.yaml").write_text(PARENT.replace("DIGEST", line))


def test_a_sub_flow_runs_as_its_own_run_and_returns_its_outputs(blocks_project: Project) -> None:
    _write(blocks_project)
    done = blocks_project.blocks("validate", "parent.yaml", "child.yaml")
    assert done.returncode == 0, blocks_project.explain(done)
    outcome = blocks_project.run_json("parent.yaml")
    assert outcome["outputs"] == {"answer": 42}
    child_id = f"{outcome['run_id']}.sub.1"
    assert child_id in blocks_project.run_ids()
    child = blocks_project.journal(child_id)
    assert child[-1]["event"] == "run.finished"
    assert child[-1]["status"] == "succeeded"
    parent = blocks_project.journal(outcome["run_id"])
    finished = next(r for r in parent if r["event"] == "step.succeeded" and r["step"] == "sub")
    assert finished["detail"]["run"] == child_id
    assert finished["detail"]["bundle"].startswith("sha256:")
    assert blocks_project.blocks("bundle", "verify", child_id).returncode == 0


def test_a_failing_sub_flow_fails_the_step_with_the_child_reason(blocks_project: Project) -> None:
    _write(blocks_project)
    outcome = blocks_project.run_json("parent.yaml", "-i", "n=500", expect=1)
    sub = outcome["steps"]["sub"]
    assert sub["status"] == "failed"
    assert "sub-flow child.yaml run" in sub["error"]
    assert "failed (failed: check)" in sub["error"]
    assert outcome["steps"]["after"]["status"] != "succeeded"


def test_a_pinned_digest_refuses_a_changed_sub_flow(blocks_project: Project) -> None:
    _write(blocks_project)
    digest = "sha256:" + hashlib.sha256(CHILD.encode()).hexdigest()
    _write(blocks_project, digest)
    assert blocks_project.run_json("parent.yaml")["outputs"] == {"answer": 42}
    (blocks_project.root / "child.yaml").write_text(CHILD.replace("* 2", "* 3"))
    outcome = blocks_project.run_json("parent.yaml", expect=1)
    error = outcome["steps"]["sub"]["error"]
    assert f"pinned to {digest}" in error
    assert "review the change and update `digest`" in error


def test_a_parent_killed_mid_sub_flow_resumes_the_child(blocks_project: Project) -> None:
    _write(blocks_project)
    proc = blocks_project.popen("run", "parent.yaml", "-i", "hold=true")
    wait_for((blocks_project.root / "held").exists, what="the child to hold")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    parent = next(r for r in blocks_project.run_ids() if "." not in r)
    done = blocks_project.blocks("run", "parent.yaml", "--resume", parent, "--json")
    assert done.returncode == 0, blocks_project.explain(done)
    assert json.loads(done.stdout)["outputs"] == {"answer": 42}
    effects = blocks_project.side_effects()
    assert effects["double"] == 1  # finished in the child before the kill: not run again
    assert effects["wait"] == 2  # in flight when killed: run once more


def test_a_flow_that_runs_itself_stops_at_the_depth_limit(blocks_project: Project) -> None:
    (blocks_project.root / "loop.yaml").write_text(
        "version: 1\nkind: flow\nname: loop\nsteps:\n"
        "  again:\n    kind: flow\n    flow: loop.yaml\n"
    )
    outcome = blocks_project.run_json("loop.yaml", expect=1)
    error = outcome["steps"]["again"]["error"]
    assert "failed (failed: again)" in error
    runs = blocks_project.run_ids()
    assert len(runs) == 9  # the flow the user started and eight nested runs
    deepest = max(runs, key=len)
    failed = [r for r in blocks_project.journal(deepest) if r["event"] == "step.failed"]
    assert "sub-flows nest deeper than 8" in failed[-1]["error"]
