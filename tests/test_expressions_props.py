"""Property tests for engine.expressions, several of them against the real CEL runtime.

1. random syntax trees print to source that parses back to the same tree;
2. generated well-typed expressions check clean and evaluate in `cel` to a value of the
   Python type their checked type promises;
3. on token soup, our parser accepts exactly what `cel.compile` accepts;
4. templates split into parts that join back to the text, at the right offsets.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from functools import cache

import cel
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine.expressions import (
    BOOL,
    BYTES,
    DOUBLE,
    DURATION,
    DYN,
    INT,
    NULL,
    STRING,
    TIMESTAMP,
    TYPE,
    UINT,
    CelType,
    ListType,
    MapType,
    ObjectType,
    check_expression,
    compile_expression,
    split_template,
)
from engine.expressions._ast import (
    BINARY_LEVEL,
    Binary,
    Call,
    Expr,
    Ident,
    Index,
    ListExpr,
    Literal,
    MapExpr,
    Select,
    StructExpr,
    Ternary,
    Unary,
    quote_string,
    to_source,
)
from engine.expressions._constants import constant_problem
from engine.expressions._lexer import KEYWORDS, RESERVED, tokenize
from engine.expressions._parser import CelSyntaxError, parse

PROPS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- 1. print / parse round trip -----------------------------------------------------------

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_word = st.builds(
    str.__add__, st.sampled_from(_LETTERS), st.text(_LETTERS + "0123456789", max_size=5)
).filter(lambda w: w not in KEYWORDS)
_name = _word.filter(lambda w: w not in RESERVED)
_var = st.builds(lambda dot, w: dot + w, st.sampled_from(["", "", "."]), _name)
_macro_names = {"all", "exists", "exists_one", "filter", "map"}
_function = _var.filter(lambda n: n != "has" and n not in _macro_names)
_method = _word.filter(lambda n: n not in _macro_names)

_literals = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(lambda v: Literal("int", v)),
    st.integers(0, 2**64 - 1).map(lambda v: Literal("uint", v)),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda v: Literal("double", v)),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=6).map(
        lambda v: Literal("string", v)
    ),
    st.binary(max_size=4).map(lambda v: Literal("bytes", v)),
    st.booleans().map(lambda v: Literal("bool", v)),
    st.just(Literal("null", None)),
)


def _compound(sub: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    args = st.lists(sub, max_size=3).map(tuple)
    select = st.builds(Select, sub, _word)
    return st.one_of(
        select,
        st.builds(Index, sub, sub),
        st.builds(Call, _function, args),
        st.builds(Call, _method, args, sub),
        st.builds(lambda s: Call("has", (s,)), select),
        st.builds(
            lambda m, target, v, body: Call(m, (Ident(v), *body), target),
            st.sampled_from(sorted(_macro_names)),
            sub,
            _var,
            st.lists(sub, min_size=1, max_size=1),
        ),
        st.builds(
            lambda target, v, p, t: Call("map", (Ident(v), p, t), target), sub, _var, sub, sub
        ),
        st.builds(Unary, st.sampled_from(["!", "-"]), st.integers(1, 3), sub),
        st.builds(Binary, st.sampled_from(sorted(BINARY_LEVEL)), sub, sub),
        st.builds(Ternary, sub, sub, sub),
        st.builds(ListExpr, args),
        st.builds(MapExpr, st.lists(st.tuples(sub, sub), max_size=2).map(tuple)),
        st.builds(
            StructExpr,
            st.builds(
                lambda dot, parts: dot + ".".join(parts),
                st.sampled_from(["", "."]),
                st.lists(_word, min_size=1, max_size=2),
            ),
            st.lists(st.tuples(_word, sub), max_size=2).map(tuple),
        ),
    )


trees = st.recursive(st.one_of(_literals, _var.map(Ident)), _compound, max_leaves=12)


@settings(PROPS, max_examples=250)
@given(trees)
def test_printed_trees_parse_back_to_the_same_tree(tree: Expr) -> None:
    source = to_source(tree)
    assert parse(source) == tree
    assert to_source(parse(source)) == source


@settings(PROPS, max_examples=100)
@given(trees)
def test_the_runtime_accepts_every_printed_tree(tree: Expr) -> None:
    cel.compile(to_source(tree))


# -- 2. well-typed expressions evaluate in the runtime -------------------------------------

ENV_TYPES: dict[str, CelType] = {
    "inputs": ObjectType(
        {
            "seed": INT,
            "ratio": DOUBLE,
            "name": STRING,
            "flag": BOOL,
            "nums": ListType(INT),
            "tags": ListType(STRING),
            "big": UINT,
        },
        what="input",
    ),
    "steps": ObjectType(
        {"build": ObjectType({"status": STRING, "outputs": MapType(STRING, INT)})}, what="step"
    ),
    "percent": DOUBLE,
    "count": INT,
}
ENV_VALUES: dict[str, object] = {
    "inputs": {
        "seed": 7,
        "ratio": 0.25,
        "name": "ci-run",
        "flag": True,
        "nums": [3, -1, 4],
        "tags": ["a", "bc"],
        "big": 2**63 + 5,  # a Python int reaches CEL as uint only from 2**63 up
    },
    "steps": {"build": {"status": "succeeded", "outputs": {"files": 3, "lines": 120}}},
    "percent": 87.5,
    "count": 2,
}

# Each generator yields source text of one static type. Every compound is parenthesized,
# divisors are non-zero literals, and values stay small, so evaluation cannot fail.
TAGS: dict[str, CelType] = {
    "int": INT,
    "uint": UINT,
    "double": DOUBLE,
    "string": STRING,
    "bool": BOOL,
    "bytes": BYTES,
    "null": NULL,
    "list_int": ListType(INT),
    "list_string": ListType(STRING),
    "map": MapType(STRING, INT),
    "duration": DURATION,
    "timestamp": TIMESTAMP,
    "type": TYPE,
}

_small = st.integers(-1000, 1000)
_divisor = st.integers(-5, 5).filter(bool)
_text = st.text(st.sampled_from("ab Z_-'\"\\\n/é{}$"), max_size=5)


def _f(template: str, *parts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(*parts).map(lambda values: template.format(*values))


def _leaves(tag: str) -> list[st.SearchStrategy[str]]:
    s = st.sampled_from
    if tag == "int":
        return [
            _small.map(str),
            s(["inputs.seed", "count", "inputs.nums[2]", "steps.build.outputs['files']"]),
        ]
    if tag == "uint":
        return [st.integers(0, 1000).map(lambda v: f"{v}u")]
    if tag == "double":
        return [
            st.floats(-1000, 1000, allow_nan=False).map(repr),
            s(["inputs.ratio", "percent"]),
        ]
    if tag == "string":
        return [_text.map(quote_string), s(["inputs.name", "steps.build.status"])]
    if tag == "bool":
        return [s(["true", "false", "inputs.flag", "has(steps.build.status)"])]
    if tag == "bytes":
        return [st.binary(max_size=4).map(lambda b: to_source(Literal("bytes", b)))]
    if tag == "null":
        return [st.just("null")]
    if tag == "list_int":
        return [st.lists(_small, min_size=1, max_size=3).map(str), st.just("inputs.nums")]
    if tag == "list_string":
        return [
            st.lists(_text.map(quote_string), min_size=1, max_size=3).map(
                lambda items: "[" + ", ".join(items) + "]"
            ),
            st.just("inputs.tags"),
        ]
    if tag == "map":
        return [
            st.dictionaries(st.sampled_from("abc"), _small, min_size=1).map(
                lambda d: "{" + ", ".join(f"'{k}': {v}" for k, v in d.items()) + "}"
            ),
            st.just("steps.build.outputs"),
        ]
    if tag == "duration":
        return [st.integers(-100, 100).map(lambda v: f"duration('{v}s')")]
    if tag == "timestamp":
        return [
            st.integers(0, 10**9).map(
                lambda v: f"timestamp('{dt.datetime.fromtimestamp(v, dt.UTC).isoformat()}')"
            )
        ]
    return [s(["int", "string", "type(1.5)"])]


Sub = Callable[[str], st.SearchStrategy[str]]


def _compounds(tag: str, sub: Sub) -> list[st.SearchStrategy[str]]:
    cond = sub("bool")
    same = [_f("({} ? {} : {})", cond, sub(tag), sub(tag))]
    if tag == "int":
        return [
            *same,
            _f("({} + {})", sub("int"), sub("int")),
            _f("({} - {})", sub("int"), sub("int")),
            _f("({} * {})", sub("int"), st.integers(-3, 3).map(str)),
            _f("({} / {})", sub("int"), _divisor.map(str)),
            _f("({} % {})", sub("int"), _divisor.map(str)),
            _f("-({})", sub("int")),
            _f("int({})", st.floats(-1e6, 1e6).map(repr)),
            _f("int({})", sub("uint")),
            _f("size({})", sub("string")),
            _f("{}.size()", sub("list_int")),
            _f("[{}, {}][1]", sub("int"), sub("int")),
            _f("{{'k': {}}}['k']", sub("int")),
        ]
    if tag == "uint":
        return [
            *same,
            _f("({} + {})", sub("uint"), sub("uint")),
            _f("({} * {}u)", sub("uint"), st.integers(0, 3).map(str)),
            _f("({} / {}u)", sub("uint"), st.integers(1, 5).map(str)),
            _f("uint(size({}))", sub("list_string")),
        ]
    if tag == "double":
        return [
            *same,
            _f("({} + {})", sub("double"), sub("double")),
            _f("({} * {})", sub("double"), sub("double")),
            _f("({} / 4.0)", sub("double")),
            _f("-({})", sub("double")),
            _f("double({})", sub("int")),
            _f("double({})", sub("uint")),
        ]
    if tag == "string":
        return [
            *same,
            _f("({} + {})", sub("string"), sub("string")),
            _f("string({})", sub("int")),
            _f("string({})", sub("double")),
            _f("string({})", sub("uint")),
            _f("{{'k': {}}}.k", sub("string")),
        ]
    if tag == "bool":
        cmp = st.sampled_from(["<", "<=", ">", ">="])
        eq = st.sampled_from(["==", "!="])
        any_tag = st.sampled_from(sorted(TAGS)).flatmap(sub)
        return [
            *same,
            _f("({} && {})", cond, cond),
            _f("({} || {})", cond, cond),
            _f("!({})", cond),
            _f("({} {} {})", sub("int"), cmp, sub("double")),
            _f("({} {} {})", sub("uint"), cmp, sub("int")),
            _f("({} {} {})", sub("string"), cmp, sub("string")),
            _f("({} {} {})", sub("duration"), cmp, sub("duration")),
            _f("({} {} {})", sub("timestamp"), cmp, sub("timestamp")),
            _f("({} {} {})", any_tag, eq, any_tag),
            _f("(inputs.big > {})", sub("uint")),
            _f("({} in {})", sub("int"), sub("list_int")),
            _f("({} in {})", sub("string"), sub("map")),
            _f("{}.contains({})", sub("string"), sub("string")),
            _f("{}.startsWith({})", sub("string"), sub("string")),
            _f("{}.matches('^[a-z]')", sub("string")),
            _f("{}.exists(x, x > {})", sub("list_int"), sub("int")),
            _f("{}.all(x, x != {})", sub("list_int"), sub("int")),
            _f("{}.exists_one(y, y.endsWith({}))", sub("list_string"), sub("string")),
        ]
    if tag == "bytes":
        return [*same, _f("({} + {})", sub("bytes"), sub("bytes")), _f("bytes({})", sub("string"))]
    if tag == "list_int":
        return [
            *same,
            _f("({} + {})", sub("list_int"), sub("list_int")),
            _f("{}.map(x, x * 2)", sub("list_int")),
            _f("{}.filter(x, x > {})", sub("list_int"), sub("int")),
        ]
    if tag == "list_string":
        return [*same, _f("{}.map(x, string(x))", sub("list_int"))]
    if tag == "duration":
        return [
            *same,
            _f("({} + {})", sub("duration"), sub("duration")),
            _f("({} - {})", sub("timestamp"), sub("timestamp")),
        ]
    if tag == "timestamp":
        return [*same, _f("({} + {})", sub("timestamp"), sub("duration"))]
    return same


@cache
def typed(tag: str, depth: int = 3) -> st.SearchStrategy[str]:
    leaves = _leaves(tag)
    if depth == 0:
        return st.one_of(leaves)
    return st.one_of(*leaves, *_compounds(tag, lambda t: typed(t, depth - 1)))


_PYTHON_TYPES: dict[CelType, type | tuple[type, ...]] = {
    BOOL: bool,
    INT: int,
    UINT: int,
    DOUBLE: float,
    STRING: str,
    BYTES: bytes,
    NULL: type(None),
    DURATION: dt.timedelta,
    TIMESTAMP: dt.datetime,
    TYPE: str,
}


def python_type_matches(value: object, t: CelType) -> bool:
    if t is DYN:
        return True
    if isinstance(t, ListType):
        return isinstance(value, list) and all(python_type_matches(v, t.elem) for v in value)
    if isinstance(t, MapType):
        return isinstance(value, dict) and all(
            python_type_matches(k, t.key) and python_type_matches(v, t.value)
            for k, v in value.items()
        )
    expected = _PYTHON_TYPES[t]
    return isinstance(value, expected) and (t is BOOL or not isinstance(value, bool))


@settings(PROPS, max_examples=300)
@given(st.sampled_from(sorted(TAGS)).flatmap(lambda tag: st.tuples(st.just(tag), typed(tag))))
def test_well_typed_expressions_check_clean_and_evaluate(case: tuple[str, str]) -> None:
    tag, source = case
    result = check_expression(source, ENV_TYPES)
    assert result.issues == ()
    assert result.type == TAGS[tag]
    value = compile_expression(source).evaluate(ENV_VALUES)
    assert python_type_matches(value, result.type), (value, result.type)


# -- 3. our parser accepts exactly what the runtime's parser accepts ------------------------

VOCABULARY = [
    "1", "2.5", "3u", "0x1F", "9223372036854775808", ".5", "e3", "0", "u",
    "'s'", '"t"', "b'x'", "r'r'", "'''q'''",
    "true", "false", "null", "a", "b", "f", "x", "has", "all", "map", "exists", "as", "in",
    "(", ")", "[", "]", "{", "}", ".", ",", ":", "?",
    "+", "-", "*", "/", "%", "!", "==", "!=", "<", "<=", "&&", "||",
]  # fmt: skip
SEEDS = [
    "a.b.c(d, e)[0]", "x ? y : z", "!a && -b || c", "[1, 2,]", "{'k': v, 1: 2}", "a{b: 1}",
    "has(a.b)", "l.all(x, x > 0)", "l.map(x, x, x)", "-1.a", "- -1", "!-1", "1 < 2 < 3",
    ".f(1)", "[,]", "r'\\d' + b'\\xff'", "1u + 0x1F - 2.5e3 * .5", "a.as()", "(((1)))",
    "-9223372036854775808", "true ? 1 : false ? 2 : 3", "has((a.b))", "a.b.c{d: 1}.e",
]  # fmt: skip
# Runtime quirks excluded on purpose (we reject, cel.compile accepts):
#   - `//` comments: specs forbid them, since `a // b` would silently drop `b`.
#   - `has(has(a.b))`: the runtime treats an inner has() as a field selection.
_QUIRKS = re.compile(r"//|has\s*\(\s*\(*\s*has\s*\(")


def _accepts_ours(source: str) -> bool:
    try:
        parse(source)
    except CelSyntaxError:
        return False
    return True


def _accepts_runtime(source: str) -> bool:
    try:
        cel.compile(source)
    except ValueError:
        return False
    return True


def _mutated(seed: str, edits: list[tuple[int, int, str]]) -> list[str]:
    tokens = [seed[start:end] for _, start, end, _ in _tokens(seed)]
    for kind, where, token in edits:
        i = where % (len(tokens) + 1)
        if kind == 0 and tokens:
            del tokens[min(i, len(tokens) - 1)]
        elif kind == 1:
            tokens.insert(i, token)
        elif tokens:
            tokens[min(i, len(tokens) - 1)] = token
    return tokens


def _tokens(source: str) -> list[tuple[str, int, int, object]]:
    return tokenize(source)[:-1]


_soups = st.one_of(
    st.lists(st.sampled_from(VOCABULARY), min_size=1, max_size=9),
    st.builds(
        _mutated,
        st.sampled_from(SEEDS),
        st.lists(
            st.tuples(st.integers(0, 2), st.integers(0, 30), st.sampled_from(VOCABULARY)),
            max_size=3,
        ),
    ),
)


@settings(PROPS, max_examples=500)
@given(_soups, st.lists(st.sampled_from([" ", " ", ""]), min_size=10, max_size=10))
def test_parser_accepts_exactly_what_the_runtime_accepts(
    tokens: list[str], gaps: list[str]
) -> None:
    source = "".join(tok + gaps[i % len(gaps)] for i, tok in enumerate(tokens)).strip()
    assume(source and not _QUIRKS.search(source))
    assert _accepts_ours(source) == _accepts_runtime(source), source


@pytest.mark.parametrize("source", ["1 // comment", "has(has(a.b))"])
def test_documented_quirks_are_still_quirks(source: str) -> None:
    # If the runtime ever stops accepting these, the exclusions above can go.
    assert _accepts_runtime(source)
    assert not _accepts_ours(source)


# -- 4. templates ----------------------------------------------------------------------------

_literal_text = st.text(st.sampled_from("ab $}{'\"\\"), min_size=1, max_size=6)
_expr_text = st.one_of(
    st.sampled_from(
        [" x ", "inputs.seed", " {'a': {'b': 1}} ", "'}}'", '"${{"', "[1, 2]", "", " r'\\' "]
    ),
    typed("string", 2),
)


@settings(PROPS, max_examples=300)
@given(
    st.lists(
        st.one_of(_literal_text.map(lambda t: (t, False)), _expr_text.map(lambda t: (t, True))),
        max_size=6,
    )
)
def test_templates_split_and_join_back(pieces: list[tuple[str, bool]]) -> None:
    merged: list[tuple[str, bool]] = []
    for text, is_expr in pieces:
        if merged and not is_expr and not merged[-1][1]:
            merged[-1] = (merged[-1][0] + text, False)
        else:
            merged.append((text, is_expr))
    assume(all(is_expr or "${{" not in text for text, is_expr in merged))
    template = "".join("${{" + t + "}}" if is_expr else t for t, is_expr in merged)

    parts, issues = split_template(template)

    assert issues == ()
    assert [(p.text, p.is_expr) for p in parts] == merged
    for part in parts:
        assert template[part.offset : part.offset + len(part.text)] == part.text
        if part.is_expr:
            assert template[part.offset - 3 : part.offset] == "${{"
            assert template[part.offset + len(part.text) :].startswith("}}")
    assert "".join("${{" + p.text + "}}" if p.is_expr else p.text for p in parts) == template


# -- 5. constant arguments: flagged only when the runtime rejects them -----------------------


def _runtime_converts(function: str, text: str) -> bool:
    source = f"{function}({quote_string(text)})"
    try:
        cel.evaluate(f"{source} == {source}")
    except Exception:
        return False
    return True


_timestamps = st.builds(
    "{:04d}-{:02d}-{:02d}{}{:02d}:{:02d}:{:02d}{}{}".format,
    st.integers(0, 10000),
    st.integers(0, 13),
    st.integers(0, 32),
    st.sampled_from(["T", "t", " ", "_"]),
    st.integers(0, 25),
    st.integers(0, 61),
    st.integers(0, 61),
    st.sampled_from(["", ".5", ".123456789", "."]),
    st.sampled_from(["Z", "z", "+01:00", "-23:59", "+24:00", "+0100", ""]),
)


@settings(PROPS, max_examples=300)
@given(
    st.one_of(
        st.tuples(
            st.sampled_from(["int", "uint", "double", "duration"]),
            st.text("0123456789.+-eEhmsunµdH infa ", max_size=7),
        ),
        st.tuples(st.just("timestamp"), _timestamps),
    )
)
def test_constant_arguments_are_flagged_only_when_the_runtime_rejects(
    case: tuple[str, str],
) -> None:
    function, text = case
    flagged = constant_problem(function, text) is not None
    accepted = _runtime_converts(function, text)
    if function == "timestamp":
        assert flagged != accepted, text  # the timestamp rule is exact
    else:
        assert not (flagged and accepted), text
