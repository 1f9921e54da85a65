"""Secret redaction: the one place that knows how a secret can leak and masks it.

Owns: `Redactor`, built from secret values, which masks every occurrence in text, in the
forms a secret travels in: raw, base64 (standard and URL-safe, at each of the 3 byte
alignments), URL-encoded, and JSON-escaped. Used before anything is logged, stored or hashed.
Must not: read the environment (runtime hands it the values) or log.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = ["MASK", "Redactor"]

MASK = "***"
_MIN_SECRET = 4  # shorter values would mask ordinary text ("abc"); such secrets are refused


def _forms(secret: str) -> set[str]:
    raw = secret.encode()
    forms = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    for shift in range(3):
        # base64 of the secret embedded at any byte offset: the stable middle part
        padded = b"\0" * shift + raw
        for enc in (base64.b64encode(padded), base64.urlsafe_b64encode(padded)):
            text = enc.decode().rstrip("=")
            start = (shift * 4 + 2) // 3 if shift else 0
            end = len(text) - (1 if (len(padded) % 3) else 0)
            middle = text[start:end]
            if len(middle) >= _MIN_SECRET:
                forms.add(middle)
    return {f for f in forms if len(f) >= _MIN_SECRET}


class Redactor:
    """Masks known secret values wherever they appear."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = sorted({s for s in secrets if s and len(s) >= _MIN_SECRET}, key=len, reverse=True)
        forms: set[str] = set()
        for value in values:
            forms |= _forms(value)
        self._pattern = (
            re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))
            if forms
            else None
        )
        # a string shorter than every form cannot hold one: returned as it is, unsearched
        self._shortest = min((len(f) for f in forms), default=0)

    @property
    def active(self) -> bool:
        return self._pattern is not None

    def text(self, value: str) -> str:
        if self._pattern is None:
            return value
        return self._pattern.sub(MASK, value)

    def value(self, value: Any) -> Any:
        """Redact strings inside JSON-able data (keys included)."""
        if self._pattern is None:
            return value
        return self._walk(value)

    def _walk(self, value: Any) -> Any:
        # Every journal record of a run passes through here: exact-type checks first (an
        # ABC isinstance check costs microseconds), the general ones after, same results.
        kind = type(value)
        if kind is str:
            return self._str(value)
        if kind is dict:
            return {
                self._str(k if type(k) is str else str(k)): self._walk(v) for k, v in value.items()
            }
        if kind is list or kind is tuple:
            return [self._walk(v) for v in value]
        if kind is int or kind is float or kind is bool or value is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(k)): self._walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._walk(v) for v in value]
        return value

    def _str(self, value: str) -> str:
        if len(value) < self._shortest:
            return value
        assert self._pattern is not None
        return self._pattern.sub(MASK, value)
