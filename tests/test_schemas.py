"""The published JSON Schemas: generated from the models, committed, and kept in step."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
from referencing import Registry, Resource

from engine.loader import load_file
from engine.schema import SCHEMA_ID_PREFIX, all_schemas, schema_text

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"


def test_committed_schemas_match_the_models() -> None:
    """Fails when a model changed and `blocks schema export schemas` was not run."""
    generated = all_schemas()
    committed = {p.name for p in SCHEMAS.glob("*.schema.json")}
    assert committed == set(generated), "run: blocks schema export schemas"
    for name, schema in generated.items():
        on_disk = (SCHEMAS / name).read_text(encoding="utf-8")
        assert on_disk == schema_text(schema), f"{name} drifted: run blocks schema export schemas"


@pytest.mark.parametrize("name", sorted(all_schemas()))
def test_each_schema_is_valid_draft_2020_12_with_an_id(name: str) -> None:
    schema = all_schemas()[name]
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"].startswith(SCHEMA_ID_PREFIX)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def _examples() -> list[str]:
    out = []
    for folder in ("pipelines", "runbooks"):
        for dirpath, _, files in os.walk(ROOT / folder):
            out.extend(os.path.join(dirpath, f) for f in files if f.endswith((".yaml", ".yml")))
    return sorted(out)


@pytest.mark.parametrize("path", _examples(), ids=lambda p: os.path.relpath(p, ROOT))
def test_examples_also_pass_the_published_schemas(path: str) -> None:
    """An editor or a third-party tool using schemas/ agrees with blocks on the examples."""
    registry: Registry = Registry().with_resources(
        (s["$id"], Resource.from_contents(s)) for s in all_schemas().values()
    )
    data = load_file(path).data
    schema = all_schemas()["document.schema.json"]
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    errors = sorted(validator.iter_errors(_plain(data)), key=lambda e: list(e.path))
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]


def _plain(value: object) -> object:
    """JSON round trip: YamlFloat and friends become plain JSON values."""
    return json.loads(json.dumps(value))
