"""Unit tests for engine.expressions: types, checking, templates and run-time evaluation."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Mapping

import pytest

from engine.errors import ExpressionError
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
    CheckResult,
    ExprIssue,
    ListType,
    MapType,
    ObjectType,
    Program,
    Reference,
    TemplatePart,
    check_expression,
    compile_expression,
    has_template,
    render_template,
    split_template,
    type_from_schema_name,
)
from engine.expressions._parser import MAX_DEPTH, parse

STEP = ObjectType(
    {
        "status": STRING,
        "output": DYN,
        "outputs": ObjectType({"coverage": DOUBLE, "files": ListType(STRING)}, what="output"),
    },
    what="field",
)
ENV: Mapping[str, CelType] = {
    "steps": ObjectType({"build": STEP, "draft": STEP}, what="step"),
    "inputs": ObjectType(
        {"seed": INT, "mode": STRING, "day": STRING, "ratio": DOUBLE, "tags": ListType(STRING)},
        what="input",
    ),
    "percent": DOUBLE,
    "labels": MapType(STRING, STRING),
    "extra": ObjectType({"known": INT}, what="extra field", open=True),
    "started": TIMESTAMP,
    "anything": DYN,
}


def issues(source: str, expect: CelType | None = None) -> list[tuple[int, str, str | None]]:
    return [
        (i.offset, i.message, i.hint) for i in check_expression(source, ENV, expect=expect).issues
    ]


# -- types ---------------------------------------------------------------------------------


def test_types_are_values_that_hash_and_compare() -> None:
    assert ListType(INT) == ListType(INT)
    assert MapType(STRING, DYN) != MapType(STRING, INT)
    obj = ObjectType({"a": INT}, what="step")
    assert obj == ObjectType({"a": INT}, what="step")
    assert len({obj, ObjectType({"a": INT}, what="step"), ListType(obj)}) == 2
    assert str(MapType(STRING, ListType(DOUBLE))) == "map(string, list(double))"
    with pytest.raises(AttributeError):
        obj.open = True  # type: ignore[misc]


def test_object_fields_are_a_frozen_copy() -> None:
    fields = {"a": INT}
    obj = ObjectType(fields)
    fields["b"] = STRING
    assert "b" not in obj.fields
    with pytest.raises(TypeError):
        obj.fields["c"] = INT  # type: ignore[index]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("string", STRING),
        ("integer", INT),
        ("number", DOUBLE),
        ("boolean", BOOL),
        ("array", ListType(DYN)),
        ("object", MapType(STRING, DYN)),
        ("any", DYN),
    ],
)
def test_type_from_schema_name(name: str, expected: CelType) -> None:
    assert type_from_schema_name(name) == expected


def test_type_from_unknown_schema_name_raises() -> None:
    with pytest.raises(ValueError, match="unknown schema type 'float'"):
        type_from_schema_name("float")


# -- well-typed expressions ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("inputs.seed > 3 && steps.build.status == 'succeeded'", BOOL),
        ("percent >= 80.0", BOOL),
        ("1 < 2.0", BOOL),
        ("1 == 1.0", BOOL),
        ("inputs.seed + 1", INT),
        ("1u * 2u", UINT),
        ("inputs.ratio / 2.0", DOUBLE),
        ("'report-' + inputs.day + '.json'", STRING),
        ("b'a' + b'b'", BYTES),
        ("null", NULL),
        ("[1, 2] + [3]", ListType(INT)),
        ("[1] + ['a']", ListType(DYN)),
        ("[]", ListType(DYN)),
        ("{'a': 1}", MapType(STRING, INT)),
        ("{'a': 1, 'b': 'x'}", MapType(STRING, DYN)),
        ("labels['team']", STRING),
        ("labels.team", STRING),
        ("steps.build.outputs.coverage", DOUBLE),
        ("steps.build.outputs['coverage']", DOUBLE),
        ("steps.build.outputs.files[0]", STRING),
        ("steps.build.output.anything.goes", DYN),
        ("extra.unlisted", DYN),
        ("extra.known", INT),
        ("inputs.seed > 3 ? 'big' : 'small'", STRING),
        ("inputs.seed > 3 ? 1 : 'small'", DYN),
        ("size(inputs.tags)", INT),
        ("inputs.mode.size()", INT),
        ("int('42') + 1", INT),
        ("double(inputs.seed)", DOUBLE),
        ("string(inputs.ratio)", STRING),
        ("uint(1)", UINT),
        ("type(inputs.seed) == int", BOOL),
        ("type(inputs.seed)", TYPE),
        ("duration('1h') + duration('1m')", DURATION),
        ("started + duration('1h')", TIMESTAMP),
        ("started - started", DURATION),
        ("started.getHours() + duration('1h').getMinutes()", INT),
        ("inputs.mode.startsWith('st') || inputs.mode.matches('^s')", BOOL),
        ("inputs.tags.exists(t, t == 'ci')", BOOL),
        ("inputs.tags.all(t, t.size() > 0)", BOOL),
        ("inputs.tags.map(t, t.size())", ListType(INT)),
        ("inputs.tags.map(t, t != '', t + '!')", ListType(STRING)),
        ("inputs.tags.filter(t, t != '')", ListType(STRING)),
        ("labels.map(k, k)", ListType(STRING)),
        ("has(steps.build.output)", BOOL),
        ("'ci' in inputs.tags", BOOL),
        ("'team' in labels", BOOL),
        ("anything + 1", DYN),
        ("anything.x.y[3]", DYN),
        ("-true", BOOL),
        ("!!inputs.seed", INT),
        ("[1].map(inputs, inputs + 1)", ListType(INT)),
    ],
)
def test_good_expressions_have_the_right_type(source: str, expected: CelType) -> None:
    result = check_expression(source, ENV)
    assert result.issues == ()
    assert result.ok
    assert result.type == expected


def test_result_records() -> None:
    result = check_expression("steps.build.status == 'ok' && inputs['seed'] > 1", ENV)
    assert isinstance(result, CheckResult)
    assert result.references == (
        Reference(("steps", "build", "status"), 0),
        Reference(("inputs", "seed"), 30),
    )


def test_references_stop_at_calls_and_skip_macro_variables() -> None:
    result = check_expression(
        "steps.build.outputs.files.exists(f, f.size() > 1) && inputs.tags[0] == 'x'", ENV
    )
    assert [r.path for r in result.references] == [
        ("steps", "build", "outputs", "files"),
        ("inputs", "tags"),
    ]


def test_references_inside_has_and_after_unknown_fields() -> None:
    result = check_expression("has(steps.buidl.output.x)", ENV)
    assert [r.path for r in result.references] == [("steps", "buidl", "output", "x")]
    assert result.references[0].offset == 4


# -- bad expressions -----------------------------------------------------------------------


def test_unknown_name_with_did_you_mean() -> None:
    assert issues("inptus.seed > 1") == [(0, "unknown name 'inptus'", "did you mean 'inputs'?")]


def test_unknown_name_without_close_match_has_no_hint() -> None:
    assert issues("zzz + 1") == [(0, "unknown name 'zzz'", None)]


def test_unknown_step_on_closed_object() -> None:
    result = check_expression("steps.buidl.status == 'ok'", ENV)
    assert result.issues == (ExprIssue(6, 5, "unknown step 'buidl'", "did you mean 'build'?"),)
    assert result.type == BOOL


def test_unknown_field_on_nested_object_uses_its_noun() -> None:
    assert issues("steps.build.outputs.covrage > 1.0") == [
        (20, "unknown output 'covrage'", "did you mean 'coverage'?")
    ]


def test_unknown_field_on_open_object_is_fine() -> None:
    assert issues("extra.whatever") == []


@pytest.mark.parametrize(
    ("source", "offset", "message"),
    [
        ("inputs.seed + 2.0", 12, "cannot apply '+' to int and double"),
        ("1u + 1", 3, "cannot apply '+' to uint and int"),
        ("2 * 3.0", 2, "cannot apply '*' to int and double"),
        ("5.0 % 2.0", 4, "cannot apply '%' to double and double"),
        ("'a' + 1", 4, "cannot apply '+' to string and int"),
        ("{'a': 1} + {'b': 2}", 9, "cannot apply '+' to map(string, int) and map(string, int)"),
        ("duration('1h') + started", 15, "cannot apply '+' to duration and timestamp"),
        ("duration('1h') * 2", 15, "cannot apply '*' to duration and int"),
    ],
)
def test_arithmetic_on_mismatched_types(source: str, offset: int, message: str) -> None:
    found = issues(source)
    assert [(o, m) for o, m, _ in found] == [(offset, message)]


def test_numeric_mismatch_hint_suggests_conversion() -> None:
    hint = check_expression("1 + 2.0", ENV).issues[0].hint
    assert hint is not None
    assert "double()" in hint


@pytest.mark.parametrize(
    ("source", "got"),
    [("inputs.seed", "int"), ("'yes'", "string"), ("[true]", "list(bool)"), ("null", "null")],
)
def test_condition_must_be_bool(source: str, got: str) -> None:
    result = check_expression(source, ENV, expect=BOOL)
    assert [(i.offset, i.message) for i in result.issues] == [
        (0, f"expected a bool expression, got {got}")
    ]
    assert result.issues[0].length == len(source)


def test_expect_accepts_dyn_and_matching_types() -> None:
    assert check_expression("anything", ENV, expect=BOOL).ok
    assert check_expression("steps.build.output", ENV, expect=BOOL).ok
    assert check_expression("inputs.mode", ENV, expect=STRING).ok
    assert not check_expression("inputs.mode", ENV, expect=INT).ok


@pytest.mark.parametrize(
    ("source", "offset", "message"),
    [
        ("1 +", 3, "syntax error: expected an operand after '+'"),
        ("inputs.seed > ", 14, "syntax error: expected an operand after '>'"),
        ("(1 + 2", 6, "syntax error: expected ')' to close '(' at 0, got end of expression"),
        ("a b", 2, "syntax error: unexpected 'b' after a complete expression"),
        ("f(1,)", 4, "syntax error: expected an operand after ',', got ')'"),
        ("x = 1", 2, "syntax error: '=' is not an operator; did you mean '=='?"),
        ("a & b", 2, "syntax error: '&' is not an operator; did you mean '&&'?"),
        ("'abc", 0, "syntax error: unterminated string"),
        ("'a\\z'", 2, "syntax error: invalid escape sequence '\\\\z'"),
        (
            "1 // note",
            2,
            "syntax error: comments are not allowed ('//' is not an operator; use '/' to divide)",
        ),
        ("as + 1", 0, "syntax error: 'as' is a reserved word and cannot be used as a name"),
        (
            "9223372036854775808",
            0,
            "syntax error: int literal out of range (max 9223372036854775807)",
        ),
        (
            "1 ? 2 ? 3 : 4 : 5",
            6,
            "syntax error: a conditional in the middle of '?:' needs parentheses",
        ),
        ("has(inputs)", 4, "syntax error: has() needs a field selection, like has(a.b)"),
        ("[1].all(1, true)", 8, "syntax error: the first argument of all() must be a simple name"),
        ("a.?b", 2, "syntax error: optional field selection '.?' is not supported"),
        ("x.in", 2, "syntax error: expected a field name after '.', got 'in'"),
        ("1 # 2", 2, "syntax error: unexpected character '#'"),
        ("!-x", 1, "syntax error: '-' cannot follow '!' here; add parentheses"),
        (")", 0, "syntax error: unexpected ')'"),
    ],
)
def test_syntax_errors_point_at_the_failure(source: str, offset: int, message: str) -> None:
    result = check_expression(source, ENV)
    assert [(i.offset, i.message) for i in result.issues] == [(offset, message)]
    assert result.type == DYN


@pytest.mark.parametrize("source", ["", "   ", "\n\t"])
def test_blank_expression_is_an_issue(source: str) -> None:
    assert [i.message for i in check_expression(source, ENV).issues] == ["empty expression"]


def test_unknown_function_with_did_you_mean() -> None:
    assert issues("sise(inputs.tags)") == [(0, "unknown function 'sise'", "did you mean 'size'?")]
    assert issues("inputs.mode.startwith('a')") == [
        (12, "unknown function 'startwith'", "did you mean 'startsWith'?")
    ]


@pytest.mark.parametrize(
    ("source", "message", "hint"),
    [
        (
            "contains(inputs.mode, 'a')",
            "unknown function 'contains'",
            "'contains' is a method: write x.contains(...)",
        ),
        ("inputs.mode.int()", "unknown function 'int'", "'int' is not a method: write int(x)"),
        ("min(1, 2)", "unknown function 'min'", "did you mean 'int'?"),
        ("inputs.mode.lowerAscii()", "unknown function 'lowerAscii'", None),
    ],
)
def test_functions_the_runtime_lacks(source: str, message: str, hint: str | None) -> None:
    assert [(m, h) for _, m, h in issues(source)] == [(message, hint)]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("!inputs.seed", "'!' needs a bool, got int"),
        ("-inputs.mode", "cannot negate string"),
        ("-1u", "cannot negate uint"),
        ("inputs.seed && true", "'&&' needs bool operands, got int"),
        ("inputs.seed ? 1 : 2", "the condition of '?:' must be bool, got int"),
        ("'a' < 1", "cannot compare string and int with '<'"),
        ("[1] < [2]", "cannot compare list(int) and list(int) with '<'"),
        ("'a' in 'abc'", "'in' needs a list or map on the right, got string"),
        ("1.5 in labels", "double cannot be a map key"),
        ("{1.5: 1}", "double cannot be a map key (use int, uint, bool or string)"),
        ("inputs.tags['x']", "list index must be int or uint, got string"),
        ("labels[1]", "the keys of map(string, string) are string, got int"),
        ("inputs.mode[0]", "cannot index string"),
        ("inputs.seed.x", "cannot select field 'x' on int"),
        ("int(true)", "int() does not accept bool"),
        ("size(1)", "size() does not accept int"),
        ("size(1, 2)", "size() takes 1 argument, got 2"),
        ("inputs.seed.contains('a')", "contains() is not defined on int"),
        ("inputs.mode.contains(1)", "contains() needs string, got int"),
        ("inputs.seed.all(x, true)", "all() needs a list or map, got int"),
        ("inputs.tags.all(t, 1)", "the predicate of all() must be bool, got int"),
        ("inputs.tags.all(t)", "all() takes 2 arguments, got 1"),
        ("a{b: 1}", "message construction is not supported"),
        ("optional.of(1)", "optional values are not supported"),
        ("inputs.seed / 0", "division by zero"),
        ("[1].map(x, y)", "unknown name 'y'"),
    ],
)
def test_type_errors_the_runtime_would_raise(source: str, message: str) -> None:
    assert [m for _, m, _ in issues(source)] == [message]


@pytest.mark.parametrize(
    ("source", "offset", "message"),
    [
        ("duration('1d')", 9, "invalid duration '1d'"),
        ("duration('30')", 9, "invalid duration '30'"),
        ("duration('5 min')", 9, "invalid duration '5 min'"),
        ("timestamp('2024-02-30T00:00:00Z')", 10, "invalid timestamp '2024-02-30T00:00:00Z'"),
        ("timestamp('2024-01-01')", 10, "invalid timestamp '2024-01-01'"),
        ("int('1.5')", 4, "int() cannot convert '1.5'"),
        ("uint('-1')", 5, "uint() cannot convert '-1'"),
        ("double('one')", 7, "double() cannot convert 'one'"),
    ],
)
def test_constant_arguments_the_runtime_rejects(source: str, offset: int, message: str) -> None:
    assert [(o, m) for o, m, _ in issues(source)] == [(offset, message)]


@pytest.mark.parametrize(
    "source",
    [
        "duration('1h30m')",
        "duration('-0')",
        "duration('10sec')",  # the runtime reads '10s' and ignores the rest
        "timestamp('2024-02-29T23:59:60.5+05:30')",
        "int('-42')",
        "uint('+7')",
        "double('-Infinity')",
    ],
)
def test_constant_arguments_the_runtime_accepts(source: str) -> None:
    assert issues(source) == []


def test_macro_variable_is_scoped_to_the_macro() -> None:
    assert [m for _, m, _ in issues("inputs.tags.exists(t, t == 'x') && t == 'y'")] == [
        "unknown name 't'"
    ]


def test_issue_lengths_cover_the_token() -> None:
    (issue,) = check_expression("inputs.tags.contians('x')", ENV).issues
    assert (issue.offset, issue.length) == (12, len("contians"))


def test_several_issues_are_all_reported() -> None:
    found = issues("inptus.seed + steps.buidl.status")
    assert [m for _, m, _ in found] == ["unknown name 'inptus'", "unknown step 'buidl'"]


@pytest.mark.parametrize(
    "source",
    [
        "'\\",
        '"',
        "b'",
        "r'''",
        "0x",
        "1e",
        "1..2",
        "..",
        "{:}",
        "[?]",
        "`a`",
        "\x00",
        "é",
        "\u2028",
    ],
)
def test_bad_input_never_raises(source: str) -> None:
    assert not check_expression(source, ENV).ok


def test_nesting_limit_matches_the_runtime() -> None:
    ok = "(" * (MAX_DEPTH - 1) + "1" + ")" * (MAX_DEPTH - 1)
    too_deep = "(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH
    assert check_expression(ok, ENV).ok
    assert "nested too deeply" in check_expression(too_deep, ENV).issues[0].message


@pytest.mark.parametrize(
    ("prefix", "suffix"),
    [
        ("anything || true && 1 == 2 + 3 * (", ")"),
        ("anything || true && 1 == 2 + 3 * size(", ")"),
        ("anything || true && 1 == 2 + 3 * [", "][0]"),
        ("anything || true && 1 == 2 + 3 * anything.f(", ")"),
        ("(true ? 1 : ", ")"),
    ],
)
def test_deep_nesting_the_runtime_accepts_is_checked(prefix: str, suffix: str) -> None:
    levels = (MAX_DEPTH - 1) // 2 if prefix.startswith("(true") else MAX_DEPTH - 1
    source = prefix * levels + "anything" + suffix * levels
    result = check_expression(source, ENV)
    assert not [i for i in result.issues if "deeply" in i.message]


def test_long_flat_chains_do_not_exhaust_the_stack() -> None:
    assert check_expression(" + ".join(["1"] * 5000), ENV).type == INT
    assert check_expression("anything" + ".f" * 3000, ENV).type == DYN


def test_parses_are_cached_by_source() -> None:
    source = "inputs.seed + 12345 > 0"
    parse.cache_clear()
    check_expression(source, ENV)
    check_expression(source, ENV, expect=BOOL)
    info = parse.cache_info()
    assert (info.misses, info.hits) == (1, 1)


def test_builtin_type_names_are_values() -> None:
    assert check_expression("type(1) == int && type('a') != string", ENV).ok
    assert issues("dyn == int")[0][1] == "unknown name 'dyn'"


# -- templates -----------------------------------------------------------------------------


def test_split_template() -> None:
    parts, found = split_template("report-${{ inputs.day }}.json")
    assert found == ()
    assert parts == (
        TemplatePart("report-", 0, False),
        TemplatePart(" inputs.day ", 10, True),
        TemplatePart(".json", 24, False),
    )


def test_split_template_handles_braces_and_strings_inside() -> None:
    text = "${{ {'a': {'b': '}}'}} }}!"
    parts, found = split_template(text)
    assert found == ()
    assert [p.text for p in parts] == [" {'a': {'b': '}}'}} ", "!"]


def test_unterminated_template() -> None:
    parts, found = split_template("a-${{ inputs.day")
    assert found == (ExprIssue(2, 3, "unterminated '${{' (missing '}}')"),)
    assert parts == (TemplatePart("a-${{ inputs.day", 0, False),)


def test_has_template() -> None:
    assert has_template("x ${{ y }}")
    assert not has_template("x ${ y } {{ z }}")


# -- run time ------------------------------------------------------------------------------

ACTIVATION = {
    "inputs": {"seed": 7, "mode": "strict", "day": "mon", "ratio": 0.5, "tags": ["ci"]},
    "steps": {"draft": {"status": "succeeded", "output": "hello"}},
    "payload": {"b": [1, 2], "a": True, "n": None},
}


def test_program_evaluates() -> None:
    program = compile_expression("inputs.seed > 3 && steps.draft.status == 'succeeded'")
    assert isinstance(program, Program)
    assert program.source.startswith("inputs.seed")
    assert program.evaluate(ACTIVATION) is True


def test_compile_expression_reports_syntax_errors() -> None:
    with pytest.raises(ExpressionError, match="expected an operand after") as info:
        compile_expression("1 +")
    assert info.value.source == "1 +"


@pytest.mark.parametrize(
    ("source", "exc_type"),
    [
        ("1 / (inputs.seed - 7)", ZeroDivisionError),
        ("inputs.seed + 1.0", TypeError),
        ("nope > 1", RuntimeError),
        ("inputs.missing", KeyError),
        ("9223372036854775807 + inputs.seed", OverflowError),
    ],
)
def test_runtime_errors_become_expression_errors(source: str, exc_type: type[Exception]) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(source).evaluate(ACTIVATION)
    assert isinstance(info.value.__cause__, exc_type)
    assert info.value.source == source
    assert str(info.value)


def test_render_template_single_expression_keeps_the_value() -> None:
    assert render_template("${{ inputs.tags }}", ACTIVATION) == ["ci"]
    assert render_template("${{ inputs.seed * 2 }}", ACTIVATION) == 14
    assert render_template("${{ steps.draft.output }}", ACTIVATION) == "hello"


def test_render_template_concatenates_formatted_values() -> None:
    text = (
        "r-${{ inputs.day }}-${{ inputs.seed > 3 }}-${{ null }}-${{ inputs.ratio }}-${{ payload }}"
    )
    assert render_template(text, ACTIVATION) == 'r-mon-true-null-0.5-{"a":true,"b":[1,2],"n":null}'


def test_render_template_formats_other_runtime_values() -> None:
    text = (
        "${{ duration('90s') }} ${{ timestamp('2024-01-02T03:04:05Z') }} "
        "${{ b'hi' }} ${{ {1: 'x'} }}"
    )
    assert render_template(text, ACTIVATION) == '90s 2024-01-02T03:04:05Z hi {"1":"x"}'


def test_render_template_without_expressions_returns_text() -> None:
    assert render_template("plain text", ACTIVATION) == "plain text"


def test_render_template_errors() -> None:
    with pytest.raises(ExpressionError, match="unterminated"):
        render_template("x ${{ y", ACTIVATION)
    with pytest.raises(ExpressionError, match="no such key"):
        render_template("x ${{ inputs.nope }}", ACTIVATION)


def test_evaluation_values_match_python_types() -> None:
    assert render_template("${{ timestamp('2024-01-01T00:00:00Z') }}", {}) == dt.datetime(
        2024, 1, 1, tzinfo=dt.UTC
    )


def test_importing_the_package_does_not_import_cel() -> None:
    code = "import engine.expressions, sys; assert 'cel' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_runtime_loads_cel_lazily() -> None:
    code = (
        "import sys; from engine.expressions import compile_expression\n"
        "p = compile_expression('1 + 1'); assert 'cel' not in sys.modules\n"
        "assert p.evaluate({}) == 2; assert 'cel' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
