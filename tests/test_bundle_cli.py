"""`blocks bundle diff`, `export` and `gc`, run as the real CLI (subprocesses) on the bundles
of two real runs of one flow with different inputs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project
from test_bundle_export import check_statement

from engine.bundle import leaf_digest, node_digest
from engine.stores.local import LocalBundleStore

FLOW = """\
version: 1
kind: flow
name: diffed
inputs:
  who: {type: string, default: world}
  n: {type: integer, default: 3}
steps:
  produce:
    kind: python
    call: flowmods:produce
    with: {text: "${{ inputs.who }}", n: "${{ inputs.n }}"}
    outputs:
      text: {type: string}
      n: {type: integer}
gates:
  enough:
    kind: metric
    after: produce
    severity: warn
    require: n >= 3
    metrics:
      n: {type: integer, value: "${{ steps.produce.outputs.n }}"}
outputs:
  text: ${{ steps.produce.outputs.text }}
"""


class Runs:
    def __init__(self, project: Project, first: str, second: str) -> None:
        self.project = project
        self.first = first
        self.second = second
        self.store = LocalBundleStore(project.root / ".blocks" / "bundles")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, engine_pycache: Path) -> Iterator[Runs]:
    """Two runs of FLOW (module-scoped: a run costs seconds), each bundled by `blocks run`."""
    root = tmp_path_factory.mktemp("bundle-cli") / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "bundle-cli"\nversion = "0"\n')
    (root / "flowmods.py").write_bytes(
        (Path(__file__).parent / "fixtures" / "flows" / "flowmods.py").read_bytes()
    )
    (root / "diffed.yaml").write_text(FLOW)
    project = Project(root, engine_pycache)
    try:
        ids = []
        for who, n in (("ana", "3"), ("bo", "2")):
            done = project.blocks("run", "diffed.yaml", "-i", f"who={who}", "-i", f"n={n}")
            assert done.returncode == 0, project.explain(done)
            ids.append(next(i for i in project.run_ids() if i not in ids))
        yield Runs(project, *ids)
    finally:
        project.cleanup()


@pytest.fixture
def tampered(runs: Runs) -> Iterator[str]:
    """The second run's steps/produce.json blob, edited on disk (restored afterwards)."""
    blob = runs.store.blob_path(
        runs.store.get_manifest(runs.second).member("steps/produce.json").digest
    )
    original = blob.read_bytes()
    blob.chmod(0o644)
    blob.write_bytes(original.replace(b'"bo"', b'"eve"'))
    try:
        yield "steps/produce.json"
    finally:
        blob.write_bytes(original)
        blob.chmod(0o444)


# ---- diff --------------------------------------------------------------------------------


def test_diff_shows_what_changed_between_two_runs(runs: Runs) -> None:
    p = runs.project
    done = p.blocks("bundle", "diff", runs.first, runs.second)
    assert done.returncode == 0, p.explain(done)
    a, b = runs.store.resolve(runs.first), runs.store.resolve(runs.second)
    assert done.stdout.startswith(f"a: {a}  run {runs.first}  diffed  succeeded")
    assert f"\nb: {b}  run {runs.second}  diffed  succeeded" in done.stdout
    expected = """
inputs
  ~ n: 3 → 2
  ~ who: "ana" → "bo"

outputs (of the flow)
  ~ text: "ana" → "bo"

steps
  produce:
    ~ n: 3 → 2
    ~ text: "ana" → "bo"

gates
  enough: pass → fail
    ~ n: 3 → 2
"""
    assert done.stdout.endswith(expected), done.stdout
    assert done.stderr == ""

    as_json = p.blocks("bundle", "diff", runs.first, runs.second, "--json")
    assert as_json.returncode == 0, p.explain(as_json)
    doc = json.loads(as_json.stdout)
    assert doc["differences"] == 4
    assert doc["inputs"]["changed"] == {"n": {"a": 3, "b": 2}, "who": {"a": "ana", "b": "bo"}}
    assert doc["gates"]["changed"]["enough"]["verdict"] == {"a": "pass", "b": "fail"}
    assert (doc["spec"], doc["cost"], doc["environment"]) == (None, None, {})

    assert p.blocks("bundle", "diff", runs.first, runs.second, "--exit-code").returncode == 1


def test_diff_of_a_bundle_with_itself_and_of_a_missing_one(runs: Runs) -> None:
    p = runs.project
    same = p.blocks(
        "bundle", "diff", runs.first, runs.store.resolve(runs.first)[:15], "--exit-code"
    )
    assert same.returncode == 0, p.explain(same)
    assert same.stdout.endswith("the same bundle (spec, inputs, models, outputs, steps, gates, "
                                "cost, environment)\n")  # fmt: skip
    missing = p.blocks("bundle", "diff", runs.first, "no-such-run")
    assert missing.returncode == 2
    assert "no bundle matches 'no-such-run'" in missing.stderr


def test_diff_and_export_refuse_a_tampered_member(runs: Runs, tampered: str) -> None:
    p = runs.project
    done = p.blocks("bundle", "diff", runs.first, runs.second)
    assert done.returncode == 1
    assert f"member {tampered} of bundle" in done.stderr
    assert "stored bytes do not match its digest" in done.stderr
    assert done.stdout == ""
    exported = p.blocks("bundle", "export", runs.second, "--to", "tampered-export")
    assert exported.returncode == 1
    assert f"member {tampered}" in exported.stderr
    assert not (p.root / "tampered-export").exists()
    assert not [x for x in p.root.iterdir() if x.name.startswith(".tampered-export")]


# ---- export ------------------------------------------------------------------------------


def test_export_writes_members_manifest_and_a_provenance_statement(runs: Runs) -> None:
    p = runs.project
    done = p.blocks("bundle", "export", runs.first, "--to", "exports/first")
    assert done.returncode == 0, p.explain(done)
    digest = runs.store.resolve(runs.first)
    manifest = runs.store.get_manifest(digest)
    assert done.stdout.startswith(f"exported bundle {digest} ({len(manifest.members)} members")
    assert (
        "provenance.intoto.json: in-toto Statement v1, SLSA provenance v1 predicate" in done.stdout
    )
    assert "unsigned" in done.stdout
    out = p.root / "exports" / "first"
    files = sorted(x.relative_to(out).as_posix() for x in out.rglob("*") if x.is_file())
    assert files == sorted(
        ["provenance.intoto.json", "manifest.json", *(f"members/{m}" for m in manifest.paths)]
    )
    assert node_digest((out / "manifest.json").read_bytes()) == digest
    for m in manifest.members:
        assert (out / "members" / m.path).read_bytes() == runs.store.read_member(digest, m.path)

    statement = json.loads((out / "provenance.intoto.json").read_text())
    check_statement(statement)
    assert sorted(s["name"] for s in statement["subject"]) == sorted(
        f for f in files if f != "provenance.intoto.json"
    )
    for subject in statement["subject"]:  # what `sha256sum -c` checks
        data = (out / subject["name"]).read_bytes()
        assert subject["digest"]["sha256"] == hashlib.sha256(data).hexdigest()
    predicate = statement["predicate"]
    assert predicate["buildDefinition"]["externalParameters"] == {
        "flow": "diffed",
        "spec": "diffed.yaml",
        "inputs": {"who": "ana", "n": 3},
    }
    assert predicate["runDetails"]["metadata"]["invocationId"] == runs.first
    assert predicate["runDetails"]["blocks_bundle"]["rootDigest"] == digest
    [spec] = predicate["buildDefinition"]["resolvedDependencies"]
    assert spec["name"] == "diffed.yaml"
    assert spec["digest"]["sha256"] == hashlib.sha256(FLOW.encode()).hexdigest()


def test_export_refuses_a_folder_in_use_and_force_replaces_an_earlier_export(runs: Runs) -> None:
    p = runs.project
    assert p.blocks("bundle", "export", runs.first, "--to", "again").returncode == 0
    refused = p.blocks("bundle", "export", runs.second, "--to", "again")
    assert refused.returncode == 2
    assert "is not empty" in refused.stderr
    replaced = p.blocks("bundle", "export", runs.second, "--to", "again", "--force",
                        "--builder-id", "https://ci.example/runners/7")  # fmt: skip
    assert replaced.returncode == 0, p.explain(replaced)
    statement = json.loads((p.root / "again" / "provenance.intoto.json").read_text())
    assert statement["predicate"]["runDetails"]["metadata"]["invocationId"] == runs.second
    assert statement["predicate"]["runDetails"]["builder"]["id"] == "https://ci.example/runners/7"
    (p.root / "notes").mkdir()
    (p.root / "notes" / "todo.txt").write_text("mine")
    kept = p.blocks("bundle", "export", runs.first, "--to", "notes", "--force")
    assert kept.returncode == 2
    assert "not an earlier export" in kept.stderr
    assert (p.root / "notes" / "todo.txt").read_text() == "mine"


# ---- gc ----------------------------------------------------------------------------------


def test_gc_lists_then_removes_debris_and_keeps_every_bundle(runs: Runs) -> None:
    p, store = runs.project, runs.store
    orphan_data = b"a blob no manifest references"
    orphan = store.blob_path(leaf_digest(orphan_data))
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(orphan_data)
    temp = store.root / "blobs" / "sha256" / ".tmp-interrupted"
    temp.write_bytes(b"half a blob")
    debris = sorted(x.relative_to(store.root).as_posix() for x in (orphan, temp))

    preview = p.blocks("bundle", "gc", "--dry-run")
    assert preview.returncode == 0, p.explain(preview)
    assert preview.stdout.splitlines() == [
        f"would remove 2 file(s) in {store.root}:",
        *(f"  {rel}" for rel in sorted(debris)),
    ]
    assert orphan.exists()
    assert temp.exists()
    as_json = json.loads(p.blocks("bundle", "gc", "--dry-run", "--json").stdout)
    assert as_json == {"store": str(store.root), "dry_run": True, "removed": debris}

    done = p.blocks("bundle", "gc")
    assert done.returncode == 0, p.explain(done)
    assert done.stdout.splitlines()[0] == f"removed 2 file(s) in {store.root}:"
    assert not orphan.exists()
    assert not temp.exists()
    for run in (runs.first, runs.second):
        assert p.blocks("bundle", "verify", run).returncode == 0
    again = p.blocks("bundle", "gc")
    assert again.stdout == f"nothing to remove in {store.root}\n"
