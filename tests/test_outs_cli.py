"""A step's `outs`: the files it writes are checked, recorded, kept by the step cache and put
back on a cache hit (as DVC's `outs`), through the real CLI."""

from __future__ import annotations

import hashlib
import json
import shutil

from conftest import Project, events

FLOW = """\
version: 1
kind: flow
name: outs
steps:
  build:
    kind: shell
    script: |
      echo built >> side_effects.log
      mkdir -p site/css
      printf '<h1>hello</h1>' > site/index.html
      printf 'h1 {}' > site/css/main.css
      printf '{"pages": 1}' > report.json
    outs: [site]
    outputs:
      pages: {type: integer, source: file, file: report.json, pointer: /pages}
  check:
    kind: shell
    needs: [build]
    cache: false
    run: [cat, site/index.html, site/css/main.css, report.json]
    outputs:
      shown: {type: string, source: stdout}
"""


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _project(project: Project, flow: str = FLOW) -> Project:
    (project.root / "outs.yaml").write_text(flow)
    return project


def test_outs_are_recorded_and_put_back_on_a_cache_hit(blocks_project: Project) -> None:
    project = _project(blocks_project)
    first = project.run_json("outs.yaml")
    assert first["steps"]["build"]["status"] == "succeeded"
    expected = {
        "site/index.html": _sha(b"<h1>hello</h1>"),
        "site/css/main.css": _sha(b"h1 {}"),
        "report.json": _sha(b'{"pages": 1}'),
    }
    succeeded = events(project.journal(first["run_id"]), "step.succeeded", "build")
    assert succeeded[0]["outs"] == expected

    # the outputs are gone or damaged, as in a fresh checkout or after a bad edit
    shutil.rmtree(project.root / "site")
    (project.root / "report.json").write_text('{"pages": 99}')
    second = project.run_json("outs.yaml")
    assert second["steps"]["build"]["status"] == "cached"
    assert project.side_effects()["built"] == 1  # the script did not run again
    cached = events(project.journal(second["run_id"]), "step.cached", "build")
    assert cached[0]["outs"] == expected
    assert sorted(cached[0]["restored"]) == sorted(expected)
    # the downstream step read the files the cache put back, byte for byte
    assert second["steps"]["check"]["outputs"]["shown"] == '<h1>hello</h1>h1 {}{"pages": 1}'
    assert second["steps"]["build"]["outputs"]["pages"] == 1

    # everything in place: a hit restores nothing
    third = project.run_json("outs.yaml")
    cached = events(project.journal(third["run_id"]), "step.cached", "build")
    assert cached[0]["restored"] == []


def test_a_hit_whose_copies_are_gone_runs_the_step(blocks_project: Project) -> None:
    project = _project(blocks_project)
    project.run_json("outs.yaml")
    shutil.rmtree(project.root / ".blocks" / "cache" / "blobs")
    (project.root / "site" / "index.html").unlink()
    again = project.run_json("outs.yaml")
    assert again["steps"]["build"]["status"] == "succeeded"
    assert project.side_effects()["built"] == 2
    assert (project.root / "site" / "index.html").read_text() == "<h1>hello</h1>"


def test_an_out_the_step_did_not_write_fails_it(blocks_project: Project) -> None:
    flow = FLOW.replace("outs: [site]", "outs: [site, dist/app.tar]")
    project = _project(blocks_project, flow)
    out = project.run_json("outs.yaml", expect=1)
    assert out["steps"]["build"]["status"] == "failed"
    assert out["steps"]["build"]["error"] == "outs: the step did not write dist/app.tar"
    assert out["steps"]["check"]["status"] == "blocked"
    # nothing was cached: the next run runs the step again
    again = project.run_json("outs.yaml", expect=1)
    assert again["steps"]["build"]["status"] == "failed"
    assert project.side_effects()["built"] == 2


def test_the_bundle_records_the_outs(blocks_project: Project) -> None:
    project = _project(blocks_project)
    out = project.run_json("outs.yaml")
    exported = project.blocks("bundle", "export", out["bundle"], "--to", "exported")
    assert exported.returncode == 0, project.explain(exported)
    step = json.loads((project.root / "exported" / "members" / "steps" / "build.json").read_text())
    assert step["outs"]["site/css/main.css"] == _sha(b"h1 {}")
    assert step["outs"]["report.json"] == _sha(b'{"pages": 1}')


def test_outs_outside_the_project_are_refused_with_their_position(
    blocks_project: Project,
) -> None:
    flow = FLOW.replace("outs: [site]", "outs: [site, ../elsewhere, .blocks/cache]")
    project = _project(blocks_project, flow)
    done = project.blocks("validate", "outs.yaml")
    assert done.returncode == 1, project.explain(done)
    assert "outs.yaml:13:18" in done.stdout + done.stderr
    assert "outs: ../elsewhere is outside the project" in done.stdout + done.stderr
    assert "outs.yaml:13:32" in done.stdout + done.stderr
    assert "outs: .blocks/cache is inside .blocks/" in done.stdout + done.stderr
