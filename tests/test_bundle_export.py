"""`engine.bundle_export`: the in-toto Statement v1 / SLSA Provenance v1 of a bundle, checked
against a JSON Schema of the two specs' required shape, and `write_export`, which never
leaves a half-written folder."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from test_bundle_diff import records, side

from engine.bundle_export import (
    BUILD_TYPE,
    BUILDER_ID,
    STATEMENT,
    export_files,
    provenance_statement,
    write_export,
)
from engine.errors import BundleError, UsageError

HEX64 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
TIMESTAMP = {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$"}
URI = {"type": "string", "pattern": "^[a-z][a-z0-9+.-]*:"}
DESCRIPTOR = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "uri": URI,
        "digest": {"type": "object", "minProperties": 1, "additionalProperties": HEX64},
        "mediaType": {"type": "string"},
        "annotations": {"type": "object"},
    },
    "anyOf": [{"required": ["uri"]}, {"required": ["digest"]}, {"required": ["content"]}],
}
STATEMENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["_type", "subject", "predicateType", "predicate"],
    "properties": {
        "_type": {"const": "https://in-toto.io/Statement/v1"},
        "predicateType": {"const": "https://slsa.dev/provenance/v1"},
        "subject": {
            "type": "array",
            "minItems": 1,
            "items": {
                "allOf": [DESCRIPTOR],
                "required": ["name", "digest"],
                "properties": {"digest": {"required": ["sha256"]}},
            },
        },
        "predicate": {
            "type": "object",
            "required": ["buildDefinition", "runDetails"],
            "properties": {
                "buildDefinition": {
                    "type": "object",
                    "required": ["buildType", "externalParameters"],
                    "properties": {
                        "buildType": URI,
                        "externalParameters": {"type": "object"},
                        "internalParameters": {"type": "object"},
                        "resolvedDependencies": {"type": "array", "items": DESCRIPTOR},
                    },
                },
                "runDetails": {
                    "type": "object",
                    "required": ["builder"],
                    "properties": {
                        "builder": {
                            "type": "object",
                            "required": ["id"],
                            "properties": {
                                "id": URI,
                                "version": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        },
                        "metadata": {
                            "type": "object",
                            "properties": {
                                "invocationId": {"type": "string"},
                                "startedOn": TIMESTAMP,
                                "finishedOn": TIMESTAMP,
                            },
                        },
                        "byproducts": {"type": "array", "items": DESCRIPTOR},
                    },
                },
            },
        },
    },
}
"""The required shape of in-toto Statement v1 (spec/v1/statement.md, resource_descriptor.md,
digest_set.md, field_types.md) and SLSA Provenance v1 (spec/v1.0/provenance.md)."""


def check_statement(statement: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(STATEMENT_SCHEMA).validate(statement)


def test_the_statement_describes_the_run_and_its_members() -> None:
    bundle = side(records(), lock=b"models: {drafter: gpt-x-2026-01-01}\n")
    statement = provenance_statement(bundle.digest, bundle.manifest, bundle.members)
    check_statement(statement)

    files = export_files(bundle.manifest, bundle.members)
    subjects = {s["name"]: s for s in statement["subject"]}
    assert set(subjects) == set(files)
    assert set(files) == {"manifest.json"} | {f"members/{p}" for p in bundle.manifest.paths}
    for name, data in files.items():
        assert subjects[name]["digest"] == {"sha256": hashlib.sha256(data).hexdigest()}
    assert subjects["manifest.json"]["annotations"] == {"blocks_rootDigest": bundle.digest}
    assert files["manifest.json"] == bundle.manifest.to_bytes()

    predicate = statement["predicate"]
    build = predicate["buildDefinition"]
    assert build["buildType"] == BUILD_TYPE
    assert build["externalParameters"] == {
        "flow": "demo",
        "spec": "flows/demo.yaml",
        "inputs": {"who": "ana", "n": 2},
    }
    assert build["internalParameters"] == {"engine": "0.1.0", "useCache": True}
    deps = {d["name"]: d for d in build["resolvedDependencies"]}
    spec = bundle.members["spec/demo.yaml"]
    assert deps["flows/demo.yaml"]["digest"] == {"sha256": hashlib.sha256(spec).hexdigest()}
    assert deps["flows/demo.yaml"]["annotations"] == {"blocks_member": "members/spec/demo.yaml"}
    assert (
        deps["blocks.lock"]["digest"]["sha256"]
        == hashlib.sha256(bundle.members["blocks.lock"]).hexdigest()
    )
    assert deps["prompt of step draft"] == {
        "name": "prompt of step draft",
        "digest": {"sha256": "ab" * 32},
        "annotations": {"blocks_step": "draft", "blocks_route": "drafter"},
    }
    assert deps["gpt-x-2026-01-01"] == {
        "uri": "litellm:gpt-x-2026-01-01",
        "name": "gpt-x-2026-01-01",
        "annotations": {
            "blocks_modelAsked": ["openai/gpt-x"],
            "blocks_routes": ["drafter"],
            "blocks_fingerprints": ["fp_1"],
            "blocks_calledBy": ["step draft"],
        },
    }
    run = predicate["runDetails"]
    assert run["builder"] == {
        "id": BUILDER_ID,
        "version": {"blocks": "0.1.0", "python": "3.11.7", "litellm": "1.106.2"},
    }
    assert run["metadata"] == {
        "invocationId": bundle.manifest.run,
        "startedOn": "2023-11-14T22:13:20.000Z",
        "finishedOn": "2023-11-14T22:13:24.000Z",
    }
    assert run["blocks_bundle"] == {
        "rootDigest": bundle.digest,
        "format": "blocks.bundle/1",
        "status": "succeeded",
        "gates": {"quality": "pass"},
    }


def test_a_review_gate_records_its_rubric_prompt_and_models() -> None:
    recs = records()
    recs[4]["evidence"] = {
        "route": "reviewer",
        "rubric": "prompts/review.md",
        "rubric_sha256": "sha256:" + "1" * 64,
        "prompt_sha256": "sha256:" + "2" * 64,
        "samples": [{"model_answered": "claude-x", "score": 1.0}],
    }
    bundle = side(recs)
    statement = provenance_statement(
        bundle.digest, bundle.manifest, bundle.members, builder_id="https://ci.example/runner/7"
    )
    check_statement(statement)
    deps = {d["name"]: d for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert deps["prompts/review.md"]["digest"] == {"sha256": "1" * 64}
    assert deps["prompt of gate quality"]["digest"] == {"sha256": "2" * 64}
    assert deps["claude-x"]["annotations"] == {
        "blocks_routes": ["reviewer"],
        "blocks_calledBy": ["gate quality"],
    }
    assert statement["predicate"]["runDetails"]["builder"]["id"] == "https://ci.example/runner/7"


def test_a_bundle_that_is_not_a_run_still_exports() -> None:
    from engine.bundle import Manifest  # noqa: PLC0415

    members = {"notes.txt": b"hello\n"}
    manifest = Manifest.from_members(members)
    statement = provenance_statement(manifest.root_digest(), manifest, members)
    check_statement(statement)
    assert "metadata" not in statement["predicate"]["runDetails"]
    with pytest.raises(BundleError, match="not that of bundle"):
        provenance_statement("sha256:" + "0" * 64, manifest, members)
    with pytest.raises(BundleError, match="was not read"):
        export_files(manifest, {})


# ---- write_export ----------------------------------------------------------------------

FILES = {STATEMENT: b"{}\n", "manifest.json": b"{}", "members/a/b.json": b"[1]", "members/c": b""}


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_write_export_makes_the_folder_and_refuses_to_overwrite(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "export"
    write_export(dest, FILES)
    assert tree(dest) == FILES
    with pytest.raises(UsageError, match="not empty"):
        write_export(dest, {**FILES, "members/c": b"new"})
    assert tree(dest) == FILES
    write_export(dest, {**FILES, "members/c": b"new"}, force=True)  # an earlier export
    assert tree(dest)["members/c"] == b"new"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["export"]  # nothing left aside

    empty = tmp_path / "empty"
    empty.mkdir()
    write_export(empty, FILES)
    assert tree(empty) == FILES

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("do not lose me")
    with pytest.raises(UsageError, match="not an earlier export"):
        write_export(mine, FILES, force=True)
    assert tree(mine) == {"thesis.tex": b"do not lose me"}
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        write_export(a_file, FILES)


@pytest.mark.parametrize("fail_at", [1, 3, 5])
@pytest.mark.parametrize("earlier", [False, True])
def test_a_full_disk_leaves_no_half_written_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int, earlier: bool
) -> None:
    dest = tmp_path / "export"
    if earlier:
        write_export(dest, FILES)
    real = os.fsync
    calls = [0]

    def fsync(fd: int) -> None:
        calls[0] += 1
        if calls[0] == fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left"):
        write_export(dest, {**FILES, "members/c": b"new"}, force=True)
    monkeypatch.undo()
    if earlier:
        assert tree(dest) == FILES  # the earlier export, untouched
    else:
        assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["export"] if earlier else [])
