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
from functools import cache
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
# Strings are matched by small per-style patterns compiled on first use (`_string_re`):
# one combined pattern cost ~15 ms to compile on every `blocks validate`.
# The alternation order gives the same result as ANTLR's longest match for these shapes.
_TOKEN_RE: Final = re.compile(
    r"(?P<ws>[ \t\n\r\f]+)"
    r"|(?P<comment>//)"
    r"|(?P<double>\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\.\d+(?:[eE][+-]?\d+)?)"
    r"|(?P<uint>(?:0x[0-9a-fA-F]+|\d+)[uU])"
    r"|(?P<int>0x[0-9a-fA-F]+|\d+)"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>==|!=|<=|>=|&&|\|\||[<>!+\-*/%?:.,\[\]{}()])"
    r"|(?P<quote>['\"])"
)
# Identifiers that, directly followed by a quote, prefix a string literal instead.
_STRING_PREFIXES: Final = frozenset({"r", "R", "b", "B", "br", "bR", "Br", "BR"})
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
            raise _lex_error(source, pos)
        kind = m.lastgroup
        end = m.end()
        if kind == "op":
            append((m.group(), pos, end, None))
        elif kind == "ident":
            text = m.group()
            if text in _STRING_PREFIXES and source[end : end + 1] in ("'", '"'):
                end = _string_end(source, end, "r" in text or "R" in text)
                bytes_ = text[0] in "bB"
                value = (_decode_bytes if bytes_ else _decode_text)(source, pos, end)
                append(("bytes" if bytes_ else "string", pos, end, value))
            else:
                append((text if text in KEYWORDS else "ident", pos, end, text))
        elif kind == "quote":
            end = _string_end(source, pos, False)
            append(("string", pos, end, _decode_text(source, pos, end)))
        elif kind != "ws":
            append(_number(str(kind), m.group(), pos, end))
        pos = end
    append(("eof", n, n, None))
    return tokens


def _number(kind: str, text: str, pos: int, end: int) -> Token:
    if kind == "int":
        # Range is checked by the parser, which knows whether a '-' belongs to the literal.
        return ("int", pos, end, _integer(text, pos))
    if kind == "uint":
        value = _integer(text[:-1], pos)
        if value > UINT64_MAX:
            raise CelSyntaxError(
                pos,
                "syntax error: uint literal out of range (max 18446744073709551615u)",
                len(text),
            )
        return ("uint", pos, end, value)
    if kind == "double":
        value_f = float(text)
        if value_f in (float("inf"), float("-inf")):
            raise CelSyntaxError(pos, "syntax error: double literal out of range", len(text))
        return ("double", pos, end, value_f)
    raise CelSyntaxError(  # the only group left is `//`
        pos,
        "syntax error: comments are not allowed ('//' is not an operator; use '/' to divide)",
        2,
    )


def _integer(digits: str, pos: int) -> int:
    hexa = digits.startswith("0x")
    significant = (digits[2:] if hexa else digits).lstrip("0")
    if len(significant) > 24:  # beyond any 64-bit value; keeps int() off its digit limit
        raise CelSyntaxError(pos, "syntax error: integer literal out of range", len(digits))
    return int(significant or "0", 16 if hexa else 10)


def _string_end(source: str, qpos: int, raw: bool) -> int:
    """End of the string literal whose opening quote is at `qpos`."""
    quote = source[qpos]
    if source.startswith(quote * 3, qpos):
        m = _string_re(quote, True, raw).match(source, qpos)
        if m is not None:
            return m.end()
    # Not a complete triple-quoted string: like ANTLR, take the longest match instead,
    # which for `'''a` is the empty string `''`.
    m = _string_re(quote, False, raw).match(source, qpos)
    if m is None:
        raise _string_error(source, qpos, raw)
    return m.end()


@cache
def _string_re(quote: str, triple: bool, raw: bool) -> re.Pattern[str]:
    delim = quote * 3 if triple else quote
    if raw:
        body = r"[\s\S]*?" if triple else rf"[^{quote}\n\r]*"
    else:
        body = rf"(?:{_ESC}|[^\\])*?" if triple else rf"(?:{_ESC}|[^\\{quote}\n\r])*"
    return re.compile(delim + body + delim)


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
                b0 + m.start(), "syntax error: \\u and \\U escapes are not allowed in bytes", 2
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
        raise CelSyntaxError(offset, f"syntax error: invalid unicode escape {esc!r}", len(esc))
    return value


def _lex_error(source: str, pos: int) -> CelSyntaxError:
    ch = source[pos]
    if ch in _OPERATOR_HINTS:
        return CelSyntaxError(pos, f"syntax error: {_OPERATOR_HINTS[ch]}")
    return CelSyntaxError(pos, f"syntax error: unexpected character {ch!r}")


def _string_error(source: str, pos: int, raw: bool) -> CelSyntaxError:
    """Explain why the string literal opening at `pos` did not match."""
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
