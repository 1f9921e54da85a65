"""JSON Schemas (Draft 2020-12) generated from the spec models.

Owns: the published schema of every document kind, with a stable `$id`, so editors with
yaml-language-server complete and check specs, and CI tools can validate without us.
Must not: be edited by hand: `schemas/` is generated (`blocks schema export schemas`), and a
test fails when the committed files drift from the models.
"""

from __future__ import annotations

import json
import os
from typing import Any

from engine.spec import DOCUMENT_KINDS, LANGUAGE_VERSION

__all__ = ["SCHEMA_ID_PREFIX", "all_schemas", "export_schemas", "schema_for", "schema_text"]

SCHEMA_ID_PREFIX = f"urn:blocks:schema:v{LANGUAGE_VERSION}:"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_for(kind: str) -> dict[str, Any]:
    """The JSON Schema of one document kind."""
    model = DOCUMENT_KINDS[kind]
    body = model.model_json_schema(mode="validation", by_alias=True)
    return {
        "$schema": DIALECT,
        "$id": f"{SCHEMA_ID_PREFIX}{kind}",
        "title": f"blocks {kind} (language version {LANGUAGE_VERSION})",
        **{k: v for k, v in body.items() if k != "title"},
    }


def _any_document() -> dict[str, Any]:
    return {
        "$schema": DIALECT,
        "$id": f"{SCHEMA_ID_PREFIX}document",
        "title": f"any blocks document (language version {LANGUAGE_VERSION})",
        "description": "Dispatches on `kind` to the schema of that kind.",
        "type": "object",
        "required": ["version", "kind"],
        "properties": {"kind": {"enum": list(DOCUMENT_KINDS)}},
        "allOf": [
            {
                "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                "then": {"$ref": f"{SCHEMA_ID_PREFIX}{kind}"},
            }
            for kind in DOCUMENT_KINDS
        ],
    }


def all_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema, for every kind plus `document.schema.json` over all of them."""
    out = {f"{kind}.schema.json": schema_for(kind) for kind in DOCUMENT_KINDS}
    out["document.schema.json"] = _any_document()
    return out


def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export_schemas(folder: str) -> list[str]:
    """Write every schema into `folder`; returns the paths written."""
    os.makedirs(folder, exist_ok=True)
    written = []
    for name, schema in all_schemas().items():
        target = os.path.join(folder, name)
        tmp = target + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(schema_text(schema))
        os.replace(tmp, target)
        written.append(target)
    return written
