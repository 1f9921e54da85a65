"""Checks on constant string arguments of conversions, such as `duration('1d')`.

Owns: `constant_problem(function, text)` - whether the runtime would reject a literal string
given to `int uint double duration timestamp`, with a hint. The rules follow what
common-expression-language 0.10.0 does (probed with `cel.evaluate`):
  - `int`/`uint`: optional sign (`+` only for uint) and decimal digits, no spaces, in range;
  - `double`: a decimal or exponent number, or inf/infinity/nan in any case, no spaces;
  - `duration`: number+unit pairs with units `h m s ms us ns` (not `d`, `H` or `µs`),
    no space in between; a bare number is rejected except `0` and `-0`; whatever follows
    the first readable pair is ignored (`1h30x` is one hour);
  - `timestamp`: RFC 3339 with a `T`, `t` or space separator and a `Z` or `+hh:mm` zone,
    on a real calendar date.
Must not: reject anything the runtime accepts - where its parser is lenient the check
errs towards silence. No runtime import.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

__all__ = ["constant_problem"]

_INT: Final = re.compile(r"[+-]?\d+")
_UINT: Final = re.compile(r"\+?\d+")
_DOUBLE: Final = re.compile(
    r"[+-]?(?:inf|infinity|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)", re.IGNORECASE
)
_BARE_NUMBER: Final = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)\s*")
_NUMBER_WORD: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(\s*)([A-Za-zµ]+)\s*")
_ZERO: Final = re.compile(r"-?0")
_UNITS: Final = ("h", "m", "s", "us", "ns")  # as prefixes: "ms" starts with "m"
_TIMESTAMP: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|[+-](\d{2}):(\d{2}))"
)
_DAYS: Final = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def constant_problem(function: str, text: str) -> tuple[str, str] | None:
    """(message, hint) if `function(text)` is certain to fail at run time, else None."""
    check = _CHECKS.get(function)
    return None if check is None else check(function, text)


def _integer_problem(function: str, text: str) -> tuple[str, str] | None:
    pattern = _INT if function == "int" else _UINT
    limit = 2**63 if function == "int" else 2**64
    if pattern.fullmatch(text) is None or not -limit <= _bounded_int(text) < limit:
        return f"{function}() cannot convert {text!r}", f"{function}() needs decimal digits"
    return None


def _bounded_int(text: str) -> int:
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 21:  # far out of range; also keeps int() off its digit limit
        return 2**65
    return int(text)


def _double_problem(function: str, text: str) -> tuple[str, str] | None:
    if _DOUBLE.fullmatch(text) is None:
        return f"{function}() cannot convert {text!r}", "double() needs a number like '1.5'"
    return None


def _timestamp_problem(function: str, text: str) -> tuple[str, str] | None:
    if _valid_timestamp(text):
        return None
    return f"invalid timestamp {text!r}", "use RFC 3339, like '2024-01-31T12:00:00Z'"


def _duration_problem(function: str, text: str) -> tuple[str, str] | None:
    # The runtime reads number+unit pairs and ignores anything after the first pair it
    # cannot read ('1h30x' is 1h, '10sec' is 10s), so only a bad first pair is certain
    # to fail: a missing unit, a space before it, or a unit that is none of h m s ms us ns.
    bare = _BARE_NUMBER.fullmatch(text)
    word = _NUMBER_WORD.fullmatch(text)
    if (
        not text.strip()
        or (bare is not None and _ZERO.fullmatch(text) is None)
        or (word is not None and (word.group(1) or not word.group(2).startswith(_UNITS)))
    ):
        return (
            f"invalid duration {text!r}",
            "use the units h, m, s, ms, us or ns, like '24h' or '1h30m'",
        )
    return None


def _valid_timestamp(text: str) -> bool:
    m = _TIMESTAMP.fullmatch(text)
    if m is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not 1 <= month <= 12 or not 1 <= day <= _DAYS[month - 1]:
        return False
    if month == 2 and day == 29 and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
        return False
    zone_ok = m.group(7) is None or (int(m.group(7)) <= 23 and int(m.group(8)) <= 59)
    return hour <= 23 and minute <= 59 and second <= 60 and zone_ok


_CHECKS: Final[dict[str, Callable[[str, str], tuple[str, str] | None]]] = {
    "int": _integer_problem,
    "uint": _integer_problem,
    "double": _double_problem,
    "duration": _duration_problem,
    "timestamp": _timestamp_problem,
}
