"""Property tests: the fast and exact loader paths agree, and positions are right."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.loader import (
    LoaderLimits,
    YamlFloat,
    _has_irregular_scalar,
    _load_exact,
    _load_fast,
    load_document,
)

# Plain scalars that exercise the core schema and the JSON emitter's spelling of them.
TRICKY = [
    "1",
    "-1",
    "+1",
    "0",
    "-0",
    "012",
    "0o17",
    "0x1F",
    "1_000",
    "1.10",
    "1.",
    ".5",
    "-.5",
    "1e3",
    "1E-2",
    "1.0e+3",
    ".inf",
    "-.Inf",
    ".NaN",
    "inf",
    "nan",
    "~",
    "null",
    "Null",
    "NULL",
    "true",
    "True",
    "TRUE",
    "false",
    "FALSE",
    "yes",
    "no",
    "on",
    "off",
    "y",
    "n",
    "2024-01-01",
    "12:30",
    "3.14.15",
    "0b101",
    "1,000",
    "x1",
    "v1.2",
    "a-b",
    "_x",
    "@",
    "%",
]
plain_word = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
key = st.one_of(plain_word, st.sampled_from(["on", "no", "yes", "y", "1x"]))
scalar = st.one_of(
    st.sampled_from(TRICKY),
    plain_word,
    st.tuples(plain_word, plain_word).map(lambda t: f"{t[0]} {t[1]}"),
    st.text(
        alphabet=st.characters(
            codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00\x85\u2028\u2029"
        ),
        max_size=12,
    ).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.text(alphabet="ab '\"\\:#-[]{},", max_size=8).map(
        lambda s: "'" + s.replace("'", "''") + "'"
    ),
)


def tree(depth: int = 0) -> st.SearchStrategy[Any]:
    if depth >= 3:
        return scalar
    child = st.deferred(lambda: tree(depth + 1))
    return st.one_of(
        scalar,
        st.dictionaries(key, child, min_size=1, max_size=4),
        st.lists(child, min_size=1, max_size=4),
    )


def emit(value: Any, indent: int, flow: bool) -> list[str]:
    """Emit YAML lines for a value (block style, or flow style for leaf collections)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list) and not (flow and _leafy(v)):
                lines.append(f"{pad}{k}:")
                lines.extend(emit(v, indent + 2, flow))
            else:
                lines.append(f"{pad}{k}: {_inline(v)}")
    else:
        for v in value:
            if isinstance(v, dict | list) and not (flow and _leafy(v)):
                lines.append(f"{pad}-")
                lines.extend(emit(v, indent + 2, flow))
            else:
                lines.append(f"{pad}- {_inline(v)}")
    return lines


def _leafy(v: Any) -> bool:
    items = v.values() if isinstance(v, dict) else v
    return all(not isinstance(i, dict | list) for i in items)


def _inline(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_inline(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_inline(x) for x in v) + "]"
    return str(v)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float):
        if not isinstance(b, float):
            return False
        if math.isnan(a):
            return math.isnan(b)
        text_a, text_b = getattr(a, "text", None), getattr(b, "text", None)
        return a == b and text_a == text_b
    return type(a) is type(b) and a == b


documents = st.tuples(st.dictionaries(key, tree(1), min_size=1, max_size=5), st.booleans())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_fast_and_exact_paths_agree(case: tuple[dict[str, Any], bool]) -> None:
    data, flow = case
    src = ("\n".join(emit(data, 0, flow)) + "\n").encode()
    try:
        exact = _load_exact("t.yaml", src, src.decode(), LoaderLimits())
    except Exception:
        return
    chosen = load_document("t.yaml", src)
    assert same(chosen.data, exact.data)
    if not _has_irregular_scalar(src.decode()):
        fast = _load_fast("t.yaml", src, LoaderLimits())
        if fast is not None:
            assert same(fast.data, exact.data), src.decode()


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        plain_word,
        st.dictionaries(plain_word, plain_word, min_size=1, max_size=4),
        min_size=1,
        max_size=6,
    )
)
def test_every_key_is_located_on_the_line_it_was_written(data: dict[str, dict[str, str]]) -> None:
    lines = emit(data, 0, flow=False)
    src = ("\n".join(lines) + "\n").encode()
    for doc in (
        _load_fast("t.yaml", src, LoaderLimits()),
        _load_exact("t.yaml", src, src.decode(), LoaderLimits()),
    ):
        assert doc is not None
        for outer, inner in data.items():
            line = lines.index(f"{outer}:") + 1
            assert doc.locate((outer,), key=True).line == line
            for k, v in inner.items():
                loc = doc.locate((outer, k))
                assert lines[loc.line - 1] == f"  {k}: {v}"
                assert loc.col == len(k) + 5


def test_yamlfloat_keeps_text() -> None:
    value = YamlFloat("1.10")
    assert value == 1.1
    assert value.text == "1.10"
