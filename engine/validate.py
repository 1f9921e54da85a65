"""Validation of spec files: load, pick the kind, check the schema, check the semantics.

Owns: the pipeline `blocks validate` runs for each file, finding spec files under folders,
and `load_spec` (the one way the rest of the engine gets a checked spec).
Must not: print, exit, or import litellm, boto3 or networkx (CI runs this on every push and
it must stay fast; a test holds it to that).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from engine.checks import check_document, check_raw_graph, find_project_root
from engine.errors import Diagnostic, SpecError
from engine.loader import DEFAULT_LIMITS, LoadedDocument, LoaderLimits, load_file
from engine.schema_errors import convert_validation_error, describe_value, did_you_mean
from engine.spec import DOCUMENT_KINDS, LANGUAGE_VERSION, Document

__all__ = [
    "FileReport",
    "check_loaded",
    "find_spec_files",
    "load_spec",
    "validate_file",
    "validate_paths",
]

SPEC_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class FileReport:
    """The outcome for one file."""

    path: str
    kind: str | None
    name: str | None
    diagnostics: tuple[Diagnostic, ...]

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)


def find_spec_files(paths: Iterable[str]) -> tuple[list[str], list[str]]:
    """Expand files and folders (recursively) into spec files; also return missing paths."""
    found: list[str] = []
    missing: list[str] = []
    for given in paths:
        if os.path.isdir(given):
            for folder, dirs, files in os.walk(given):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
                found.extend(
                    os.path.join(folder, f) for f in sorted(files) if f.endswith(SPEC_SUFFIXES)
                )
        elif os.path.isfile(given):
            found.append(given)
        else:
            missing.append(given)
    unique = list(dict.fromkeys(os.path.normpath(p) for p in found))
    return unique, missing


def validate_paths(paths: Sequence[str], limits: LoaderLimits = DEFAULT_LIMITS) -> list[FileReport]:
    """Validate every spec file under `paths`. One bad file never hides the others."""
    files, _ = find_spec_files(paths)
    return [validate_file(p, limits=limits) for p in files]


def validate_file(
    path: str, *, project_root: str | None = None, limits: LoaderLimits = DEFAULT_LIMITS
) -> FileReport:
    try:
        doc = load_file(path, limits)
    except SpecError as exc:
        return FileReport(path, None, None, exc.diagnostics)
    _, found = check_loaded(doc, project_root=project_root)
    data = doc.data if isinstance(doc.data, dict) else {}
    kind, name = data.get("kind"), data.get("name")
    return FileReport(
        path,
        kind if isinstance(kind, str) else None,
        name if isinstance(name, str) else None,
        tuple(sorted(found, key=Diagnostic.sort_key)),
    )


def load_spec(
    path: str, *, project_root: str | None = None, limits: LoaderLimits = DEFAULT_LIMITS
) -> tuple[LoadedDocument, Document]:
    """Load, schema-check and semantically check one spec file.

    Raises `SpecError` with every diagnostic of the file, sorted by position.
    """
    doc = load_file(path, limits)
    spec, found = check_loaded(doc, project_root=project_root)
    if spec is None or any(d.severity == "error" for d in found):
        raise SpecError(found)
    return doc, spec


def check_loaded(
    doc: LoadedDocument, *, project_root: str | None = None
) -> tuple[Document | None, list[Diagnostic]]:
    """Schema and semantic checks on loaded data: the spec (if it parsed) and all findings."""
    model, problems = _document_model(doc)
    if model is None:
        return None, problems
    try:
        spec: Document = model.model_validate(doc.data)
    except ValidationError as exc:
        return None, convert_validation_error(exc, model, doc) + check_raw_graph(doc)
    return spec, check_document(doc, spec, project_root or find_project_root(doc.path))


def _document_model(doc: LoadedDocument) -> tuple[Any, list[Diagnostic]]:
    data = doc.data
    if not isinstance(data, dict):
        return None, [
            Diagnostic(
                "spec.not-a-mapping",
                "expected a mapping with `version` and `kind` at the top, "
                f"got {describe_value(data)}",
                doc.locate(()),
                "",
            )
        ]
    problems: list[Diagnostic] = []
    version = data.get("version")
    if "version" not in data:
        problems.append(
            Diagnostic(
                "spec.missing-field",
                "missing required field 'version'",
                doc.locate(()),
                "/version",
                f"add `version: {LANGUAGE_VERSION}`",
            )
        )
    elif version != LANGUAGE_VERSION or type(version) is not int:
        problems.append(
            Diagnostic(
                "spec.bad-version",
                f"unsupported language version {describe_value(version)}; this engine reads "
                f"version {LANGUAGE_VERSION}",
                doc.locate(("version",)),
                "/version",
                None,
            )
        )
    kind = data.get("kind")
    if "kind" not in data:
        problems.append(
            Diagnostic(
                "spec.missing-field",
                "missing required field 'kind'",
                doc.locate(()),
                "/kind",
                "one of: " + ", ".join(DOCUMENT_KINDS),
            )
        )
    elif not isinstance(kind, str) or kind not in DOCUMENT_KINDS:
        shown = kind if isinstance(kind, str) else describe_value(kind)
        problems.append(
            Diagnostic(
                "spec.unknown-kind",
                f"unknown document kind '{shown}'; expected one of: {', '.join(DOCUMENT_KINDS)}",
                doc.locate(("kind",)),
                "/kind",
                did_you_mean(kind, DOCUMENT_KINDS) if isinstance(kind, str) else None,
            )
        )
    if problems:
        return None, problems
    return DOCUMENT_KINDS[str(kind)], []
