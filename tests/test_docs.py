"""The docs stay true: the spec reference matches the models, its examples are real and
valid, and every `blocks` command a guide shows exists."""

from __future__ import annotations

import difflib
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import BaseModel

from engine import schema_docs
from engine.cli import app
from engine.loader import load_document
from engine.schema_docs import EXAMPLES, FIELD_NOTES, FIELD_STATUS, OUTPUT, cut_example
from engine.spec import block, common, flow, runbook
from engine.validate import validate_file

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCKS = Path(sys.executable).with_name("blocks")
GUIDES = sorted((DOCS / "guides").glob("*.md"))
CONSOLE_BLOCK = re.compile(r"^```console\n(.*?)^```", re.MULTILINE | re.DOTALL)
ENV_ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=.*")
CODE_LITERAL = re.compile(r"\"((?:yaml|spec|ref|graph|expr|io)\.[a-z][a-z-]*)\"")
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def test_reference_is_current() -> None:
    expected = schema_docs.render_reference()
    path = ROOT / OUTPUT
    actual = path.read_text(encoding="utf-8") if path.exists() else ""
    if actual != expected:
        diff = difflib.unified_diff(
            actual.splitlines(keepends=True),
            expected.splitlines(keepends=True),
            str(OUTPUT),
            "render_reference()",
        )
        shown = "".join(list(diff)[:80])
        pytest.fail(f"{OUTPUT} is out of date: run `python -m engine.schema_docs`\n{shown}")


@pytest.mark.parametrize("source", sorted({e.file for e in EXAMPLES.values()}))
def test_example_sources_validate(source: str) -> None:
    report = validate_file(str(ROOT / source), project_root=str(ROOT))
    assert report.ok, [f"{d.location}: {d.code}: {d.message}" for d in report.diagnostics]


@pytest.mark.parametrize("key", sorted(EXAMPLES))
def test_example_snippets_are_verbatim_yaml(key: str) -> None:
    example = EXAMPLES[key]
    snippet = cut_example(example, ROOT)
    source = (ROOT / example.file).read_text(encoding="utf-8").splitlines()
    assert snippet.strip()
    assert all(line in source for line in snippet.splitlines())
    loaded = load_document(f"{example.file} ({key})", snippet.encode("utf-8"))
    assert isinstance(loaded.data, dict)


def _spec_fields() -> dict[str, set[str]]:
    """Every spec model class by name, with its field names and aliases."""
    out: dict[str, set[str]] = {}
    for module in (common, flow, runbook, block):
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, BaseModel) and obj is not BaseModel:
                names = set(obj.model_fields)
                names |= {f.alias for f in obj.model_fields.values() if f.alias}
                out[obj.__name__] = names
    return out


def test_field_notes_name_real_fields() -> None:
    fields = _spec_fields()
    stale = [
        key
        for key in [*FIELD_NOTES, *FIELD_STATUS]
        if key[0] != "*" and key[1] not in fields.get(key[0], set())
    ]
    assert not stale, f"notes for fields that no longer exist: {stale}"


def test_every_diagnostic_code_is_documented() -> None:
    codes: set[str] = set()
    for path in (ROOT / "engine").rglob("*.py"):
        if path.name != "schema_docs.py":
            codes |= set(CODE_LITERAL.findall(path.read_text(encoding="utf-8")))
    assert len(codes) > 20
    reference = (ROOT / OUTPUT).read_text(encoding="utf-8")
    missing = sorted(code for code in codes if f"| `{code}` |" not in reference)
    assert not missing, f"add these codes to engine.schema_docs._CODES: {missing}"


def _guide_commands() -> dict[tuple[str, ...], str]:
    """The subcommand path of every `$ blocks ...` line of a console block, and where."""
    root: Any = typer.main.get_command(app)
    found: dict[tuple[str, ...], str] = {}
    for doc in [*GUIDES, DOCS / "README.md"]:
        for block_text in CONSOLE_BLOCK.findall(doc.read_text(encoding="utf-8")):
            for line in block_text.splitlines():
                if not line.startswith("$ "):
                    continue
                argv = shlex.split(line[2:], comments=True)
                while argv and ENV_ASSIGNMENT.fullmatch(argv[0]):
                    argv.pop(0)
                if not argv or Path(argv[0]).name != "blocks":
                    continue
                path: list[str] = []
                command = root
                for token in argv[1:]:
                    group = getattr(command, "commands", None)
                    if group is None or token.startswith("-"):
                        break
                    path.append(token)
                    command = group.get(token)
                    if command is None:
                        break
                found.setdefault(tuple(path), f"{doc.relative_to(ROOT)}: {line}")
    return found


def test_guides_show_commands() -> None:
    assert len(GUIDES) >= 3
    assert len(_guide_commands()) >= 6


@pytest.mark.parametrize(("path", "where"), sorted(_guide_commands().items()))
def test_guide_command_exists(path: tuple[str, ...], where: str) -> None:
    result = subprocess.run(
        [str(BLOCKS), *path, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{where}\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("doc", [*GUIDES, DOCS / "README.md", ROOT / OUTPUT], ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    broken = [
        target
        for target, _ in LINK.findall(text)
        if "://" not in target and not (doc.parent / target).exists()
    ]
    assert not broken, f"{doc.relative_to(ROOT)}: links to missing files {broken}"
