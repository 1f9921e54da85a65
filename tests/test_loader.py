"""The YAML loader: the rules on what a spec file may contain, and positions."""

from __future__ import annotations

import time

import pytest

from engine.errors import SpecError
from engine.loader import (
    LoaderLimits,
    YamlFloat,
    _load_exact,
    _load_fast,
    load_document,
    load_file,
)


def codes(src: bytes, limits: LoaderLimits | None = None) -> list[tuple[int, int, str]]:
    with pytest.raises(SpecError) as info:
        load_document("t.yaml", src, limits or LoaderLimits())
    return [(d.location.line, d.location.col, d.code) for d in info.value.diagnostics]


def test_yaml_1_2_core_schema_keeps_words_and_numbers_as_written() -> None:
    doc = load_document(
        "t.yaml",
        b"a: no\nb: on\nc: yes\nd: 1.10\ne: 012\nf: 0o17\ng: 0x1F\n"
        b"h: ~\ni: True\nj: 1e3\nk: '1.10'\nl: .inf\n",
    )
    data = doc.data
    assert (data["a"], data["b"], data["c"]) == ("no", "on", "yes")
    assert isinstance(data["d"], YamlFloat)
    assert data["d"].text == "1.10"
    assert data["e"] == 12  # decimal: YAML 1.2 has no implicit octal
    assert (data["f"], data["g"]) == (15, 31)
    assert data["h"] is None
    assert data["i"] is True
    assert data["j"] == 1000.0
    assert data["k"] == "1.10"
    assert data["l"] == float("inf")


def test_fast_path_handles_ordinary_specs_and_keeps_float_text() -> None:
    src = b"version: 1\nname: x\nratio: 1.10\nsteps:\n  a: {kind: shell, run: [echo, 'hi']}\n"
    fast = _load_fast("t.yaml", src, LoaderLimits())
    assert fast is not None
    assert fast.data["ratio"].text == "1.10"
    assert fast.data["steps"]["a"]["run"] == ["echo", "hi"]


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        (b"a: 1\nb: 2\na: 3\n", (3, 1, "yaml.duplicate-key")),
        (b"a:\n\tb: 1\n", (2, 1, "yaml.tab")),
        (b"a: 1\n---\nb: 2\n", (2, 1, "yaml.multi-document")),
        (b"", (1, 1, "yaml.empty")),
        (b"# only a comment\n\n", (1, 1, "yaml.empty")),
        (b"\xef\xbb\xbfa: 1\n", (1, 1, "yaml.bom")),
        (b'a: 1\nb: "caf\xc3\xa9 \xff"\n', (2, 10, "yaml.encoding")),
        (b"a: 1\nb: !!python/object:os.system x\n", (2, 4, "yaml.tag")),
        (b"a: !custom 1\n", (1, 4, "yaml.tag")),
        (b"a: [1, 2\nb: 3\n", (2, 2, "yaml.syntax")),
        (b"a: b: c\n", (1, 5, "yaml.syntax")),
    ],
)
def test_bad_yaml_is_refused_with_a_position(src: bytes, expected: tuple[int, int, str]) -> None:
    assert expected in codes(src)


def test_alias_bomb_is_refused_fast_without_expanding() -> None:
    levels = [b'a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        levels.append(f"{name}: &{name} [".encode() + b",".join([f"*{prev}".encode()] * 9) + b"]")
    src = b"\n".join(levels) + b"\n"
    assert len(src) < 400
    started = time.process_time()
    found = codes(src)
    assert found[0][2] == "yaml.too-many-nodes"
    assert time.process_time() - started < 5  # generous: it is O(source), not O(expansion)


def test_aliases_within_limits_are_expanded() -> None:
    doc = load_document("t.yaml", b"base: &b {x: 1}\nuse: *b\nmerged:\n  <<: *b\n  y: 2\n")
    assert doc.data == {"base": {"x": 1}, "use": {"x": 1}, "merged": {"y": 2, "x": 1}}


def test_limits_on_size_and_depth() -> None:
    assert codes(b"a: " + b"x" * 100 + b"\n", LoaderLimits(max_bytes=50))[0][2] == "yaml.too-large"
    deep = b"a: " + b"[" * 80 + b"]" * 80 + b"\n"
    assert codes(deep)[0][2] == "yaml.too-deep"
    nested = b"".join(b"  " * i + f"k{i}:\n".encode() for i in range(70)) + b"  " * 70 + b"v\n"
    assert codes(nested)[0][2] == "yaml.too-deep"


def test_missing_file_is_a_clear_error(tmp_path: pytest.TempPathFactory) -> None:
    with pytest.raises(SpecError) as info:
        load_file(f"{tmp_path}/nope.yaml")
    assert info.value.diagnostics[0].code == "io.unreadable"


SAMPLE = b"""version: 1
kind: flow
steps:
  build:
    kind: shell
    run: [make, "all"]
  test:
    needs: [build]
    when: 'x > 1'
    env: {A: "1"}
"""


@pytest.mark.parametrize("loader", ["fast", "exact"])
def test_positions_point_at_keys_and_values(loader: str) -> None:
    doc = (
        _load_fast("t.yaml", SAMPLE, LoaderLimits())
        if loader == "fast"
        else _load_exact("t.yaml", SAMPLE, SAMPLE.decode(), LoaderLimits())
    )
    assert doc is not None
    where = {
        ("steps", "build"): (4, 3),
        ("steps", "build", "run", 1): (6, 17),
        ("steps", "test", "needs", 0): (8, 13),
        ("steps", "test", "when"): (9, 11),
        ("steps", "test", "env", "A"): (10, 14),
    }
    for path, (line, col) in where.items():
        loc = doc.locate(path)
        assert (loc.line, loc.col) == (line, col), path
    key = doc.locate(("steps", "test", "when"), key=True)
    assert (key.line, key.col) == (9, 5)
    # a missing node points at the nearest ancestor that exists
    missing = doc.locate(("steps", "test", "nope"))
    assert (missing.line, missing.col) == (7, 3)


def test_positions_count_characters_not_bytes() -> None:
    src = "name: 'caf\u00e9'\nnote: \u00e9\u00e9 x\nk: v\n".encode()
    doc = load_document("t.yaml", src)
    assert (doc.locate(("k",)).line, doc.locate(("k",)).col) == (3, 4)
    assert doc.locate(("note",), key=True).col == 1
