"""Turns CEL source text into tokens, decoding literal values on the way.

Owns: the token shapes (kept identical to the ANTLR lexer of the CEL grammar that the runtime,
common-expression-language 0.10.0, is built on: longest match, keywords `in true false null`),
string and bytes escape decoding, and numeric literal ranges.
Must not: know about precedence or types, or import the CEL runtime.

Lexical facts confirmed against the runtime:
  - ints are decimal or lower-case `0x` hex (`0X1F` is not hex); `01` is fine; a `u`/`U`
    suffix makes a uint (max 2**64-1); doubles need digits on both sides of `.` or an
    exponent (`1.` is an error, `1.e3` is `1` `.` `e3`, `.5` is a double);
    an int literal must fit int64 once its sign is applied (`-9223372036854775808` is fine);
    a double literal that overflows to infinity is an error.
  - strings: '..' "..", triple-quoted, raw with r/R; bytes with b/B (`br'..'` works,
    `rb'..'` does not). Escapes: \\a \\b \\f \\n \\r \\t \\v \\\\ \\' \\" \\` \\? \\xHH \\XHH
    \\uHHHH \\UHHHHHHHH and three-digit octal \\[0-3][0-7][0-7]; no \\u or \\U in bytes;
    surrogates and code points above U+10FFFF are errors. Single-quoted strings cannot
    span lines; triple-quoted ones can.
  - whitespace is space, tab, CR, LF and form feed only (not vertical tab or NBSP);
    identifiers are ASCII.
  - `//` starts a comment in the runtime. Specs forbid comments (a stray `//` would
    silently drop the rest of a condition), so here it is an error.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["KEYWORDS", "RESERVED", "CelSyntaxError", "Token", "tokenize"]

# (kind, start, end, value). Kinds: "int" "uint" "double" "string" "bytes" "ident", the
# text of an operator or keyword ("==", "(", "in", "true", ...), and "eof".
Token = tuple[str, int, int, object]

KEYWORDS: Final = frozenset({"in", "true", "false", "null"})
# Identifiers the runtime refuses as names (they may still follow a `.`).
RESERVED: Final = frozenset(
    {
        "as", "break", "const", "continue", "else", "for", "function", "if", "import",
        "let", "loop", "namespace", "package", "return", "var", "void", "while",
    }
)  # fmt: skip

INT64_MAX: Final = 2**63 - 1
UINT64_MAX: Final = 2**64 - 1


class CelSyntaxError(Exception):
    """Raised inside the parser package only; callers turn it into an `ExprIssue`."""

    def __init__(self, offset: int, message: str, length: int = 1) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message
        self.length = length


_ESC = r"""\\(?:[abfnrtv"'\\?`]|[xX][0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-3][0-7]{2})"""
_STRING_FORMS = (
    r"[rR](?:'''[\s\S]*?'''|\"\"\"[\s\S]*?\"\"\"|'[^'\n\r]*'|\"[^\"\n\r]*\")"
    rf"|'''(?:{_ESC}|[^\\])*?'''"
    rf"|\"\"\"(?:{_ESC}|[^\\])*?\"\"\""
    rf"|'(?:{_ESC}|[^\\'\n\r])*'"
    rf"|\"(?:{_ESC}|[^\\\"\n\r])*\""
)
# Alternation order gives the same result as ANTLR's longest match for these shapes.
_TOKEN_RE: Final = re.compile(
    r"(?P<ws>[ \t\n\r\f]+)"
    r"|(?P<comment>//)"
    rf"|(?P<bytes>[bB](?:{_STRING_FORMS}))"
    rf"|(?P<string>{_STRING_FORMS})"
    r"|(?P<double>\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\.\d+(?:[eE][+-]?\d+)?)"
    r"|(?P<uint>(?:0x[0-9a-fA-F]+|\d+)[uU])"
    r"|(?P<int>0x[0-9a-fA-F]+|\d+)"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>==|!=|<=|>=|&&|\|\||[<>!+\-*/%?:.,\[\]{}()])"
)
_ESC_RE: Final = re.compile(_ESC)
_SIMPLE_ESCAPES: Final = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    '"': '"', "'": "'", "\\": "\\", "?": "?", "`": "`",
}  # fmt: skip
_OPERATOR_HINTS: Final = {
    "=": "'=' is not an operator; did you mean '=='?",
    "&": "'&' is not an operator; did you mean '&&'?",
    "|": "'|' is not an operator; did you mean '||'?",
    "`": "backquoted names are not supported",
}


def tokenize(source: str) -> list[Token]:
    tokens: list[Token] = []
    append = tokens.append
    match = _TOKEN_RE.match
    pos = 0
    n = len(source)
    while pos < n:
        m = match(source, pos)
        if m is None:
            raise _lex_error(source, pos, tokens)
        kind = m.lastgroup
        end = m.end()
        if kind == "ws":
            pass
        elif kind == "op":
            append((m.group(), pos, end, None))
        elif kind == "ident":
            text = m.group()
            append((text if text in KEYWORDS else "ident", pos, end, text))
        elif kind == "int":
            append(("int", pos, end, _int_value(m.group())))
        elif kind == "double":
            append(("double", pos, end, _double_value(m.group(), pos)))
        elif kind == "uint":
            append(("uint", pos, end, _uint_value(m.group(), pos)))
        elif kind == "string":
            append(("string", pos, end, _decode_text(source, pos, end)))
        elif kind == "bytes":
            append(("bytes", pos, end, _decode_bytes(source, pos, end)))
        else:  # comment
            raise CelSyntaxError(
                pos,
                "syntax error: comments are not allowed ('//' is not an operator; "
                "use '/' to divide)",
                2,
            )
        pos = end
    append(("eof", n, n, None))
    return tokens


def _int_value(text: str) -> int:
    # Range is checked by the parser, which knows whether a '-' belongs to the literal.
    return int(text, 16) if text.startswith("0x") else int(text)


def _uint_value(text: str, pos: int) -> int:
    digits = text[:-1]
    value = int(digits, 16) if digits.startswith("0x") else int(digits)
    if value > UINT64_MAX:
        raise CelSyntaxError(pos, "uint literal out of range (max 18446744073709551615u)", len(text))
    return value


def _double_value(text: str, pos: int) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise CelSyntaxError(pos, "double literal out of range", len(text))
    return value


def _split_quotes(source: str, start: int, end: int) -> tuple[bool, int, int]:
    """(raw, body_start, body_end) of the string literal at source[start:end], prefix skipped."""
    i = start
    raw = False
    while source[i] not in "'\"":
        raw = raw or source[i] in "rR"
        i += 1
    quote = 3 if source.startswith(source[i] * 3, i) and end - i >= 6 else 1
    return raw, i + quote, end - quote


def _decode_text(source: str, start: int, end: int) -> str:
    raw, b0, b1 = _split_quotes(source, start, end)
    body = source[b0:b1]
    if raw or "\\" not in body:
        return body

    def one(m: re.Match[str]) -> str:
        code = _escape_code(m.group(), b0 + m.start())
        return code if isinstance(code, str) else chr(code)

    return _ESC_RE.sub(one, body)


def _decode_bytes(source: str, start: int, end: int) -> bytes:
    raw, b0, b1 = _split_quotes(source, start, end)
    body = source[b0:b1]
    if raw or "\\" not in body:
        return body.encode()
    out = bytearray()
    pos = 0
    for m in _ESC_RE.finditer(body):
        out += body[pos : m.start()].encode()
        esc = m.group()
        if esc[1] in "uU":
            raise CelSyntaxError(
                b0 + m.start(), "invalid escape in bytes literal: \\u and \\U are for strings", 2
            )
        code = _escape_code(esc, b0 + m.start())
        out += code.encode() if isinstance(code, str) else bytes((code,))
        pos = m.end()
    out += body[pos:].encode()
    return bytes(out)


def _escape_code(esc: str, offset: int) -> str | int:
    """A simple escape's text, or the code point / byte value of a numeric one."""
    c = esc[1]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c]
    value = int(esc[2:], 16) if c in "xXuU" else int(esc[1:], 8)
    if c in "uU" and (value > 0x10FFFF or 0xD800 <= value <= 0xDFFF):
        raise CelSyntaxError(offset, f"invalid unicode escape {esc!r}", len(esc))
    return value


def _lex_error(source: str, pos: int, tokens: list[Token]) -> CelSyntaxError:
    ch = source[pos]
    if ch in "'\"":
        return _string_error(source, pos, tokens)
    if ch in _OPERATOR_HINTS:
        return CelSyntaxError(pos, f"syntax error: {_OPERATOR_HINTS[ch]}")
    return CelSyntaxError(pos, f"syntax error: unexpected character {ch!r}")


def _string_error(source: str, pos: int, tokens: list[Token]) -> CelSyntaxError:
    """Explain why the string literal starting at `pos` did not match."""
    prev = tokens[-1] if tokens else None
    raw = (
        prev is not None
        and prev[0] == "ident"
        and prev[2] == pos
        and str(prev[3]).lower() in ("r", "br")
    )
    quote = source[pos]
    triple = source.startswith(quote * 3, pos)
    i = pos + (3 if triple else 1)
    n = len(source)
    while i < n:
        ch = source[i]
        if ch == "\\" and not raw:
            m = _ESC_RE.match(source, i)
            if m is None:
                bad = source[i : i + 2]
                return CelSyntaxError(i, f"syntax error: invalid escape sequence {bad!r}", len(bad))
            i = m.end()
            continue
        if triple:
            if source.startswith(quote * 3, i):
                break
        elif ch == quote:
            break
        elif ch in "\n\r":
            return CelSyntaxError(
                pos, "syntax error: unterminated string (use triple quotes for several lines)"
            )
        i += 1
    return CelSyntaxError(pos, "syntax error: unterminated string")
