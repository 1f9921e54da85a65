"""A scripted, OpenAI-compatible LLM server on loopback, for fault tests and benchmarks.

Owns: a small HTTP/1.1 server (an asyncio Protocol, on its own event loop in a daemon thread)
that answers `POST /v1/chat/completions` (JSON, or SSE when `stream: true`) and
`GET /v1/models` the way OpenAI does, and plays a *script* of faults: latency, error statuses
with OpenAI-style bodies and `Retry-After`, hangs, dropped connections, malformed bodies,
truncated and content-filtered answers, and a server-enforced rate limit. It records every
chat request (key redacted to its last 4 characters) so tests can assert what the client sent,
how many times, and how many were in flight at once.

Must not: listen on anything but 127.0.0.1, reach the network, import the engine or any
third-party package (the stdlib only, so it starts in milliseconds and is usable from any
test or benchmark), or keep a full API key anywhere (requests store only its last 4 chars).

Use it as a context manager::

    with FakeLLMServer(script=[{"times": 2, "status": 429, "retry_after": 1},
                               {"content": "hello"}]) as server:
        litellm.completion(model="openai/gpt-4o-mini", api_base=server.base_url, ...)
        assert server.status_counts == {429: 2, 200: 1}

or as a process: `python -m engine.testing.fake_llm --port 0 --script script.json`, which
prints `fake-llm listening on http://127.0.0.1:PORT/v1` once ready (see `main`).

A script is a list of rules, tried in order against each chat request; the first rule whose
`when` holds and whose `times` budget is not spent answers it. No match: a plain `ok`.

    when        "always" (the default), or a mapping whose keys must all hold:
                  model     the requested model, exact or a glob ("gpt-4o*")
                  request   the request's 1-based number, N or [FIRST, LAST] (LAST may be null)
                  contains  a substring of the last user message
    times       the rule answers only its first N matching requests, then is skipped
    latency_ms  wait this long before answering (combines with every action but hang)
    do          ok | status | hang | drop | malformed | truncated | refusal
                (default: "status" when the rule has a "status" or "error" key, else "ok")

    ok          content: "text" | echo: true (the last user message) | json: {...} (dumped)
                answer_model: the `model` to answer with (default: the dated request model)
                chunk_chars / chunk_delay_ms: stream piece size and pacing
    status      status: 400 | 401 | 429 | 500 | 503 | 529 | any other; error: a preset name
                (rate_limit_exceeded, insufficient_quota, invalid_api_key, invalid_request_error,
                context_length_exceeded, server_error, service_unavailable, overloaded_error),
                which also sets the status; message / type / code override the body's fields
                (a message may hold {model} and {key}: the key masked as OpenAI does, last 4
                chars only); retry_after (seconds: litellm reads whole seconds only) and
                retry_after_ms set those headers
    hang        read the request and never answer; the connection is held until the client
                closes it (its timeout) or the server stops
    drop        stage: "mid_body" (default: headers and half the body, then close) or
                "before_response" (close without a byte); streams: after_chunks N events
    malformed   kind: "invalid_json" (default: a cut-off JSON body) or "no_choices"
    truncated   finish_reason "length", content cut to max_chars (default: half of it)
    refusal     finish_reason "content_filter", content null unless given

Every rule may add `headers: {...}` to its response. `rate_limit` (constructor or script
file) makes the server itself answer 429 (with Retry-After and x-ratelimit-* headers) once
`rpm` requests were admitted within `window_s` (default 60) seconds, or once `concurrent`
requests are in flight; it is checked before the rules.

Observability: `requests` (RecordedRequest snapshots), `request_count`, `in_flight`,
`max_concurrency`, `status_counts`, `outcome_counts`, `stats()`, `wait_for_requests(n)`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import json
import math
import re
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

__all__ = [
    "ERROR_PRESETS",
    "FakeLLMServer",
    "RateLimit",
    "RecordedRequest",
    "Rule",
    "load_script_file",
    "main",
]

HOST = "127.0.0.1"  # loopback only, by contract: this server must never face a network
_BACKLOG = 2048  # benchmarks open hundreds of connections at once; the kernel caps it anyway
_MAX_HEADER = 64 * 1024
_MAX_BODY = 32 * 1024 * 1024
_DEFAULT_MODELS: dict[str, str] = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
}
_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_LONG_TEXT = (
    "The quick brown fox jumps over the lazy dog, then writes a long and careful answer "
    "that goes on well past any sensible token budget."
)
_ACTIONS = frozenset({"ok", "status", "hang", "drop", "malformed", "truncated", "refusal"})

# name -> (status, type, code, message). Shapes copied from real OpenAI (and, for 529,
# Anthropic) error bodies so the client library classifies them as it would in production.
ERROR_PRESETS: dict[str, tuple[int, str, str | None, str]] = {
    "rate_limit_exceeded": (
        429,
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Please try again in 1s.",
    ),
    "insufficient_quota": (
        429,
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details. For "
        "more information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
    ),
    "invalid_api_key": (
        401,
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: {key}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    "invalid_request_error": (
        400,
        "invalid_request_error",
        None,
        "Invalid request: the fake server was told to refuse.",
    ),
    "context_length_exceeded": (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "This model's maximum context length is 128000 tokens. However, your messages resulted "
        "in 130000 tokens. Please reduce the length of the messages.",
    ),
    "server_error": (
        500,
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    "service_unavailable": (
        503,
        "server_error",
        "service_unavailable",
        "The server is overloaded or not ready yet.",
    ),
    "overloaded_error": (529, "overloaded_error", "overloaded_error", "Overloaded"),
}
_PRESET_FOR_STATUS = {status: name for name, (status, *_rest) in ERROR_PRESETS.items()}
_PRESET_FOR_STATUS[429] = "rate_limit_exceeded"  # the plain 429, not the spend-limit one
_PRESET_FOR_STATUS[400] = "invalid_request_error"

_WHEN_KEYS = frozenset({"model", "request", "contains", "always"})
_RULE_KEYS = frozenset(
    {
        "when",
        "times",
        "latency_ms",
        "do",
        "content",
        "echo",
        "json",
        "answer_model",
        "chunk_chars",
        "chunk_delay_ms",
        "status",
        "error",
        "message",
        "type",
        "code",
        "retry_after",
        "retry_after_ms",
        "headers",
        "stage",
        "after_chunks",
        "kind",
        "max_chars",
    }
)
_ERROR_KEYS = frozenset(
    {"status", "error", "message", "type", "code", "retry_after", "retry_after_ms"}
)
_NO_JSON = object()  # "json" absent, as distinct from `"json": null`


def _positive(raw: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{where}: {key!r} must be a non-negative number, not {value!r}")
    return float(value)


@dataclass(slots=True)
class Rule:
    """One parsed script rule. Build with `Rule.parse`; `used` counts the requests it answered."""

    do: str = "ok"
    model: str | None = None
    request: tuple[int, int | None] | None = None
    contains: str | None = None
    times: int | None = None
    latency_s: float = 0.0
    content: str | None = None
    echo: bool = False
    json_value: Any = _NO_JSON
    answer_model: str | None = None
    chunk_chars: int = 16
    chunk_delay_s: float = 0.0
    status: int = 200
    error_type: str = ""
    error_code: str | None = None
    message: str = ""
    retry_after: float | None = None
    retry_after_ms: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    stage: str = "mid_body"
    after_chunks: int = 1
    kind: str = "invalid_json"
    max_chars: int | None = None
    used: int = 0

    @classmethod
    def parse(cls, raw: Mapping[str, Any], index: int = 0) -> Rule:
        """Validate one rule mapping; unknown keys are errors, since a typo in a fault script
        would otherwise turn a fault test into a silent happy-path test."""
        where = f"fake_llm rule {index}"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: a rule is a mapping, not {type(raw).__name__}")
        unknown = set(raw) - _RULE_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        do = raw.get("do", "status" if "status" in raw or "error" in raw else "ok")
        if do not in _ACTIONS:
            raise ValueError(f"{where}: 'do' must be one of {sorted(_ACTIONS)}, not {do!r}")
        if do != "status" and _ERROR_KEYS & set(raw):
            raise ValueError(f"{where}: {sorted(_ERROR_KEYS & set(raw))} need do: status")
        rule = cls(do=do)
        rule._parse_when(raw.get("when", "always"), where)
        times = raw.get("times")
        if times is not None and (not isinstance(times, int) or times < 1):
            raise ValueError(f"{where}: 'times' must be a positive integer, not {times!r}")
        rule.times = times
        rule.latency_s = _positive(raw, "latency_ms", 0, where) / 1000
        rule.chunk_delay_s = _positive(raw, "chunk_delay_ms", 0, where) / 1000
        rule.chunk_chars = max(1, int(_positive(raw, "chunk_chars", 16, where)))
        rule.after_chunks = int(_positive(raw, "after_chunks", 1, where))
        if "max_chars" in raw:
            rule.max_chars = int(_positive(raw, "max_chars", 0, where))
        content = raw.get("content")
        if content is not None and not isinstance(content, str):
            raise ValueError(f"{where}: 'content' must be a string")
        rule.content = content
        rule.echo = bool(raw.get("echo", False))
        rule.json_value = raw.get("json", _NO_JSON)
        rule.answer_model = raw.get("answer_model")
        rule.headers = {str(k): str(v) for k, v in dict(raw.get("headers") or {}).items()}
        rule.stage = raw.get("stage", "mid_body")
        if rule.stage not in ("mid_body", "before_response"):
            raise ValueError(f"{where}: 'stage' must be mid_body or before_response")
        rule.kind = raw.get("kind", "invalid_json")
        if rule.kind not in ("invalid_json", "no_choices"):
            raise ValueError(f"{where}: 'kind' must be invalid_json or no_choices")
        if do == "status":
            rule._parse_error(raw, where)
        return rule

    def _parse_when(self, when: Any, where: str) -> None:
        if when == "always" or when is None:
            return
        if not isinstance(when, Mapping) or set(when) - _WHEN_KEYS:
            raise ValueError(f"{where}: 'when' is \"always\" or a mapping of {sorted(_WHEN_KEYS)}")
        self.model = when.get("model")
        self.contains = when.get("contains")
        request = when.get("request")
        if isinstance(request, int) and not isinstance(request, bool):
            self.request = (request, request)
        elif isinstance(request, list | tuple) and len(request) == 2:
            self.request = (int(request[0]), None if request[1] is None else int(request[1]))
        elif request is not None:
            raise ValueError(f"{where}: when.request is N or [FIRST, LAST], not {request!r}")

    def _parse_error(self, raw: Mapping[str, Any], where: str) -> None:
        preset = raw.get("error")
        status = raw.get("status")
        if preset is None:
            if not isinstance(status, int):
                raise ValueError(f"{where}: a status rule needs 'status' (an int) or 'error'")
            preset = _PRESET_FOR_STATUS.get(status)
        elif preset not in ERROR_PRESETS:
            raise ValueError(f"{where}: 'error' must be one of {sorted(ERROR_PRESETS)}")
        if preset is not None:
            p_status, p_type, p_code, p_message = ERROR_PRESETS[preset]
        else:  # a status with no preset: a generic body of the right family
            assert isinstance(status, int)
            p_status, p_code = status, None
            p_type = "server_error" if status >= 500 else "invalid_request_error"
            p_message = f"Fake error {status}: {_reason(status)}"
        self.status = status if isinstance(status, int) else p_status
        self.error_type = raw.get("type", p_type)
        self.error_code = raw.get("code", p_code)
        self.message = raw.get("message", p_message)
        if "retry_after" in raw:
            self.retry_after = _positive(raw, "retry_after", 0, where)
        if "retry_after_ms" in raw:
            self.retry_after_ms = int(_positive(raw, "retry_after_ms", 0, where))

    def matches(self, seq: int, model: str, last_user: str) -> bool:
        if self.times is not None and self.used >= self.times:
            return False
        if self.model is not None and not fnmatch.fnmatchcase(model, self.model):
            return False
        if self.request is not None:
            first, last = self.request
            if seq < first or (last is not None and seq > last):
                return False
        return self.contains is None or self.contains in last_user


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The server's own ceiling: `rpm` admitted requests per `window_s` seconds, and/or
    `concurrent` requests in flight. `retry_after` fixes the header; by default it is the
    time until the window frees a slot (rpm) or 1 s (concurrency)."""

    rpm: int | None = None
    concurrent: int | None = None
    window_s: float = 60.0
    retry_after: float | None = None

    @classmethod
    def parse(cls, raw: RateLimit | Mapping[str, Any] | None) -> RateLimit | None:
        if raw is None or isinstance(raw, RateLimit):
            return raw
        unknown = set(raw) - {"rpm", "concurrent", "window_s", "retry_after"}
        if unknown:
            raise ValueError(f"fake_llm rate_limit: unknown keys {sorted(unknown)}")
        return cls(**dict(raw))


class RecordedRequest(NamedTuple):
    """One chat request as received. `headers` has lower-case names, and the values of
    `authorization`, `api-key` and `x-api-key` cut to `***` plus their last 4 chars.
    (A NamedTuple: immutable, so a snapshot is safe to share, and cheap to build.)"""

    seq: int  # 1-based number among chat requests, the one `when.request` matches
    time: float  # time.time() on arrival
    model: str
    stream: bool
    headers: dict[str, str]
    body: Any  # the parsed JSON body
    outcome: str  # the action taken: ok, status, hang, drop, ..., or rate_limited
    status: int | None  # the status line sent (None: hang, or a drop before the response)
    rule: int | None  # index of the rule that answered (None: default answer or rate limit)

    @property
    def last_user_message(self) -> str:
        return _last_user(self.body)


@dataclass(slots=True)
class _HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class _Plan:
    """What was decided for one chat request, carried to whatever writes the answer."""

    rule: Rule
    seq: int
    model: str
    stream: bool
    body: dict[str, Any]
    api_key: str  # kept only for the 401 message's masked echo, never recorded
    admitted: bool  # counted against the rate limit's concurrency ceiling
    keep_alive: bool


_REASONS = {int(s): s.phrase for s in HTTPStatus} | {529: "Overloaded"}  # HTTPStatus(n) is slow


def _reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def _redact(value: str) -> str:
    return "***" + value[-4:]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal parts: keep the text ones
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return ""


def _last_user(body: Any) -> str:
    messages = body.get("messages") if isinstance(body, Mapping) else None
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _tokens(text: str) -> int:
    # ~4 characters a token, the rule of thumb OpenAI documents; exactness is not the point
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# Built once: json.dumps(...) with arguments builds an encoder per call, a third of the cost
# of an answer. Our answers are trees of fresh dicts, so the cycle check is wasted work.
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)
_DECODER = json.JSONDecoder()


def _dumps(obj: Any) -> bytes:
    return _ENCODER.encode(obj).encode()


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _parse_request(buf: bytearray) -> tuple[_HttpRequest, int] | None:
    """One complete request off the front of `buf` and the bytes it used, or None if more
    bytes are needed. Raises `_HttpError` for what cannot be answered on this connection."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > _MAX_HEADER:
            raise _HttpError(431, "Request header fields too large")
        return None
    request_line, *lines = buf[:end].decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise _HttpError(400, "Bad request line")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    start = end + 4
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parsed = _parse_chunked(buf, start)
        if parsed is None:
            return None
        body, stop = parsed
    else:
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            raise _HttpError(400, "Bad Content-Length") from None
        if length > _MAX_BODY:
            raise _HttpError(413, "Request body too large")
        stop = start + length
        if len(buf) < stop:
            return None
        body = bytes(buf[start:stop])
    path = parts[1].split("?", 1)[0]
    return _HttpRequest(parts[0].upper(), path, headers, body), stop


def _parse_chunked(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    pieces: list[bytes] = []
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        try:
            size = int(buf[pos:line_end].split(b";")[0].strip(), 16)
        except ValueError:
            raise _HttpError(400, "Bad chunk size") from None
        pos = line_end + 2
        if size == 0:  # the last chunk, then optional trailers and an empty line
            if buf[pos : pos + 2] == b"\r\n":
                return b"".join(pieces), pos + 2
            trailers_end = buf.find(b"\r\n\r\n", pos)
            return None if trailers_end < 0 else (b"".join(pieces), trailers_end + 4)
        if len(buf) < pos + size + 2:
            return None
        pieces.append(bytes(buf[pos : pos + size]))
        if sum(len(p) for p in pieces) > _MAX_BODY:
            raise _HttpError(413, "Request body too large")
        pos += size + 2


def _error_body(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _head(status: int, headers: Mapping[str, str], length: int | None) -> bytes:
    """A response head; `length` None means a chunked body (our SSE streams)."""
    framing = "transfer-encoding: chunked" if length is None else f"content-length: {length}"
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"HTTP/1.1 {status} {_reason(status)}\r\n{framing}\r\n{extra}"
        "openai-processing-ms: 1\r\nconnection: keep-alive\r\n\r\n"
    ).encode("latin-1")


def _json_response(status: int, obj: Any, headers: Mapping[str, str] | None = None) -> bytes:
    payload = _dumps(obj)
    head = _head(status, {"content-type": "application/json", **(headers or {})}, len(payload))
    return head + payload


def _chunk(event: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(event), event)


_LAST_CHUNK = b"0\r\n\r\n"


class FakeLLMServer:
    """A scripted OpenAI-compatible server on 127.0.0.1; see the module docstring.

    `port=0` (the default) takes an ephemeral port. `models` maps a requested model to the
    dated name answered (merged over a small built-in table); a model in neither the table
    nor already dated is answered as `{model}-{model_date}`.
    """

    def __init__(
        self,
        script: Sequence[Mapping[str, Any] | Rule] = (),
        *,
        port: int = 0,
        rate_limit: RateLimit | Mapping[str, Any] | None = None,
        models: Mapping[str, str] | None = None,
        model_date: str = "2024-07-18",
        system_fingerprint: str = "fp_fake0001",
        default_content: str = "ok",
    ) -> None:
        # One lock guards everything the test thread reads and the loop thread writes.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiters = 0  # threads in wait_for_requests: notify only when someone listens
        self._rules = self._parse_script(script)
        self._requested_port = port
        self._rate_limit = RateLimit.parse(rate_limit)
        self._models = {**_DEFAULT_MODELS, **dict(models or {})}
        self._model_date = model_date
        self.system_fingerprint = system_fingerprint
        self.default_content = default_content
        self._default_rule = Rule(do="ok")
        self._requests: list[RecordedRequest] = []
        self._status_counts: Counter[int] = Counter()
        self._outcome_counts: Counter[str] = Counter()
        self._in_flight = 0
        self._max_in_flight = 0
        self._admitted_in_flight = 0
        self._admitted_times: deque[float] = deque()
        self._seq = 0
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._connections: set[_Connection] = set()

    @staticmethod
    def _parse_script(script: Sequence[Mapping[str, Any] | Rule]) -> list[Rule]:
        if isinstance(script, str | bytes | Mapping):
            raise ValueError("fake_llm script: a list of rules")
        return [r if isinstance(r, Rule) else Rule.parse(r, i) for i, r in enumerate(script)]

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("FakeLLMServer already started")
        self._ready.clear()
        self._start_error = None
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main()), name="fake-llm", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("FakeLLMServer did not start within 10 s")
        if self._start_error is not None:
            self._thread.join(timeout=5)
            self._thread = None
            raise RuntimeError(f"FakeLLMServer could not listen: {self._start_error}")
        return self

    def stop(self) -> None:
        """Stop listening, cut every connection (hung ones too) and join the thread."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended on its own meanwhile
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=10)
        self._thread = self._loop = self._stopping = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeLLMServer is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    # -- observability (thread-safe snapshots) --------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    @property
    def max_concurrency(self) -> int:
        with self._lock:
            return self._max_in_flight

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def status_counts(self) -> dict[int, int]:
        with self._lock:
            return dict(self._status_counts)

    @property
    def outcome_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._outcome_counts)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": len(self._requests),
                "in_flight": self._in_flight,
                "max_concurrency": self._max_in_flight,
                "status_counts": {str(k): v for k, v in sorted(self._status_counts.items())},
                "outcome_counts": dict(sorted(self._outcome_counts.items())),
            }

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Block until `count` chat requests arrived (True) or `timeout` passed (False)."""
        with self._changed:
            self._waiters += 1
            try:
                return self._changed.wait_for(lambda: len(self._requests) >= count, timeout)
            finally:
                self._waiters -= 1

    def set_script(self, script: Sequence[Mapping[str, Any] | Rule]) -> None:
        """Replace the rules (their `times` budgets start afresh); numbering continues."""
        rules = self._parse_script(script)
        with self._lock:
            self._rules = rules

    def reset(self) -> None:
        """Forget recorded requests and counters, restart request numbering at 1, and give
        every rule its `times` budget back: the state just after start."""
        with self._lock:
            for rule in self._rules:
                rule.used = 0
            self._admitted_times.clear()
            self._requests.clear()
            self._status_counts.clear()
            self._outcome_counts.clear()
            self._max_in_flight = self._in_flight
            self._seq = 0

    def dated_model(self, model: str) -> str:
        if model in self._models:
            return self._models[model]
        return model if _DATED.search(model) else f"{model}-{self._model_date}"

    # -- the event loop side --------------------------------------------------------------

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = asyncio.Event()
        try:
            # a Protocol, not streams: answers are written from data_received with no task
            # or future per request, which halves the per-request cost of the server
            server = await loop.create_server(
                lambda: _Connection(self, loop), HOST, self._requested_port, backlog=_BACKLOG
            )
        except OSError as exc:
            self._start_error = exc
            self._ready.set()
            return
        self._port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        await self._stopping.wait()
        server.close()
        # 3.11's Server.close leaves accepted connections open: cut them, hung ones included
        for connection in list(self._connections):
            connection.abort()
        await server.wait_closed()

    def _handle(self, connection: _Connection, request: _HttpRequest) -> None:
        path = request.path.rstrip("/")
        if request.method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
            self._chat(connection, request)
        elif request.method == "GET" and path in ("/v1/models", "/models"):
            data = [
                {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "fake-llm"}
                for name in sorted(set(self._models) | set(self._models.values()))
            ]
            connection.reply(_json_response(200, {"object": "list", "data": data}), keep=True)
        elif request.method == "GET" and path == "/_fake/stats":  # for subprocess servers
            connection.reply(_json_response(200, self.stats()), keep=True)
        else:
            body = _error_body(
                f"Unknown request URL: {request.method} {request.path}.",
                "invalid_request_error",
                "unknown_url",
            )
            connection.reply(_json_response(404, body), keep=True)

    def _chat(self, connection: _Connection, request: _HttpRequest) -> None:
        try:
            body = _DECODER.decode(request.body.decode())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            message = "We could not parse the JSON body of your request."
            error = _error_body(message, "invalid_request_error")
            connection.reply(_json_response(400, error), keep=True)
            return
        plan = self._decide(request, body)
        rule = plan.rule
        if rule.do == "hang" or (plan.stream and rule.chunk_delay_s and rule.do != "status"):
            connection.run(self._paced(connection, plan), plan)
            return
        data, keep = self._answer(plan)
        if rule.latency_s:
            connection.reply_later(rule.latency_s, data, keep, plan)
        else:
            connection.reply(data, keep)
            self._finish(plan)

    def _decide(self, request: _HttpRequest, body: dict[str, Any]) -> _Plan:
        """Number, rate-limit, match and record the request, all under one lock hold, so
        concurrent requests see a consistent count and each `times` budget is spent once."""
        model = str(body.get("model", ""))
        stream = bool(body.get("stream", False))
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            api_key = auth[7:]
        else:
            api_key = request.headers.get("api-key") or request.headers.get("x-api-key") or ""
        headers = {
            k: (_redact(v) if k in _SECRET_HEADERS else v) for k, v in request.headers.items()
        }
        last_user = _last_user(body)
        keep = request.headers.get("connection", "").lower() != "close"
        now = time.monotonic()
        with self._lock:
            self._seq += 1
            seq = self._seq
            limited = self._rate_limited(now, model)
            if limited is not None:
                rule, index, outcome, admitted = limited, None, "rate_limited", False
            else:
                rule, index = self._default_rule, None
                for i, candidate in enumerate(self._rules):
                    if candidate.matches(seq, model, last_user):
                        rule, index = candidate, i
                        candidate.used += 1
                        break
                outcome, admitted = rule.do, True
                self._admitted_in_flight += 1
                if self._rate_limit is not None and self._rate_limit.rpm is not None:
                    self._admitted_times.append(now)
            status = _status_sent(rule)
            self._requests.append(
                RecordedRequest(
                    seq, time.time(), model, stream, headers, body, outcome, status, index
                )
            )
            if status is not None:
                self._status_counts[status] += 1
            self._outcome_counts[outcome] += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            if self._waiters:
                self._changed.notify_all()
        return _Plan(rule, seq, model, stream, body, api_key, admitted, keep)

    def _finish(self, plan: _Plan) -> None:
        with self._lock:
            self._in_flight -= 1
            if plan.admitted:
                self._admitted_in_flight -= 1

    def _rate_limited(self, now: float, model: str) -> Rule | None:
        """The 429 rule to answer with when the server's own ceiling is hit, else None.
        Called with the lock held."""
        limit = self._rate_limit
        if limit is None:
            return None
        retry: float | None = None
        message = ""
        if limit.concurrent is not None and self._admitted_in_flight >= limit.concurrent:
            retry = 1.0
            message = (
                f"Too many concurrent requests for {model} in organization org-fake: "
                f"limit {limit.concurrent}. Please try again in 1s."
            )
        if retry is None and limit.rpm is not None:
            window = self._admitted_times
            while window and now - window[0] >= limit.window_s:
                window.popleft()
            if len(window) >= limit.rpm:
                retry = max(1.0, math.ceil(limit.window_s - (now - window[0])))
                message = (
                    f"Rate limit reached for {model} in organization org-fake on requests "
                    f"per min (RPM): Limit {limit.rpm}, Used {len(window)}, Requested 1. "
                    f"Please try again in {_seconds(retry)}s."
                )
        if retry is None:
            return None
        rule = Rule(
            do="status",
            status=429,
            error_type="requests",
            error_code="rate_limit_exceeded",
            message=message,
            retry_after=limit.retry_after if limit.retry_after is not None else retry,
        )
        if limit.rpm is not None:
            rule.headers = {
                "x-ratelimit-limit-requests": str(limit.rpm),
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": f"{_seconds(rule.retry_after or 1)}s",
            }
        return rule

    # -- building answers -----------------------------------------------------------------

    def _answer(self, plan: _Plan) -> tuple[bytes, bool]:
        """The whole answer's bytes, and whether the connection stays open after them."""
        rule = plan.rule
        headers = {"x-request-id": f"req_fake_{plan.seq}", **rule.headers}
        if rule.do == "status":
            return self._error(plan, headers), plan.keep_alive
        if rule.do == "drop" and rule.stage == "before_response":
            return b"", False
        if plan.stream:
            head = _head(200, {**_SSE_HEADERS, **headers}, None)
            events = self._events(plan)
            if rule.do == "drop":
                # some events, then close without the last chunk: a client can tell that
                # from a finished stream, as it could not with close-delimited bodies
                return head + b"".join(_chunk(e) for e in events), False
            return head + b"".join(_chunk(e) for e in events) + _LAST_CHUNK, plan.keep_alive
        if rule.do == "malformed":
            if rule.kind == "invalid_json":
                payload = _dumps(self._completion(plan))[:40]
            else:
                payload = _dumps(
                    {
                        "id": f"chatcmpl-fake{plan.seq}",
                        "object": "chat.completion",
                        "model": self._answer_model(plan),
                        "usage": None,
                    }
                )
        else:
            payload = _dumps(self._completion(plan))
        head = _head(200, {"content-type": "application/json", **headers}, len(payload))
        if rule.do == "drop":  # the full length announced, half of it sent
            return head + payload[: len(payload) // 2], False
        return head + payload, plan.keep_alive

    def _error(self, plan: _Plan, headers: dict[str, str]) -> bytes:
        rule, key = plan.rule, plan.api_key
        # OpenAI echoes the key's last 4 characters; never more, so a leak test can tell
        # "the provider's masked echo" from "the engine printed the key"
        shown = ((key[:3] if key.startswith("sk-") else "") + "*" * 8 + key[-4:]) if key else "''"
        message = rule.message.replace("{model}", plan.model).replace("{key}", shown)
        if rule.retry_after is not None:
            headers["retry-after"] = _seconds(rule.retry_after)
        if rule.retry_after_ms is not None:
            headers["retry-after-ms"] = str(rule.retry_after_ms)
        return _json_response(
            rule.status, _error_body(message, rule.error_type, rule.error_code), headers
        )

    def _answer_model(self, plan: _Plan) -> str:
        return plan.rule.answer_model or self.dated_model(plan.model)

    def _content(self, plan: _Plan) -> tuple[str | None, str]:
        """The answer's content and finish_reason."""
        rule = plan.rule
        if rule.json_value is not _NO_JSON:
            text: str | None = json.dumps(rule.json_value)
        elif rule.echo:
            text = _last_user(plan.body)
        elif rule.content is not None:
            text = rule.content
        elif rule.do == "truncated":
            text = _LONG_TEXT
        elif rule.do == "refusal":
            text = None
        else:
            text = self.default_content
        if rule.do == "truncated":
            assert text is not None
            cut = rule.max_chars if rule.max_chars is not None else max(1, len(text) // 2)
            return text[:cut], "length"
        if rule.do == "refusal":
            return text, "content_filter"
        return text, "stop"

    def _usage(self, plan: _Plan, content: str | None) -> dict[str, int]:
        messages = plan.body.get("messages")
        prompt = 0
        if isinstance(messages, list):
            for message in messages:
                if isinstance(message, Mapping):
                    prompt += 3 + _tokens(_text_of(message.get("content")))
        completion = _tokens(content or "")
        max_tokens = plan.body.get("max_tokens")
        if plan.rule.do == "truncated" and isinstance(max_tokens, int):
            completion = max_tokens  # "length" means the whole budget was spent
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _completion(self, plan: _Plan) -> dict[str, Any]:
        content, finish = self._content(plan)
        return {
            "id": f"chatcmpl-fake{plan.seq}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self._answer_model(plan),
            "system_fingerprint": self.system_fingerprint,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": self._usage(plan, content),
        }

    def _events(self, plan: _Plan) -> list[bytes]:
        """The SSE events of a streamed answer (cut short for a drop)."""
        rule = plan.rule
        content, finish = self._content(plan)
        base = {
            "id": f"chatcmpl-fake{plan.seq}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self._answer_model(plan),
            "system_fingerprint": self.system_fingerprint,
        }

        def event(obj: Any) -> bytes:
            return b"data: " + _dumps(obj) + b"\n\n"

        def delta(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return event({**base, "choices": [choice]})

        text = content or ""
        events = [delta({"role": "assistant", "content": "", "refusal": None})]
        step = rule.chunk_chars
        events += [delta({"content": text[i : i + step]}) for i in range(0, len(text), step)]
        if rule.do == "malformed":
            bad = b'data: {"id": "chatcmpl-broken", "choices": [\n\n'
            events.append(bad if rule.kind == "invalid_json" else event(base))
        before_finish = len(events)
        events.append(delta({}, finish))
        options = plan.body.get("stream_options")
        if isinstance(options, Mapping) and options.get("include_usage"):
            events.append(event({**base, "choices": [], "usage": self._usage(plan, content)}))
        events.append(b"data: [DONE]\n\n")
        if rule.do == "drop":  # never the finish event: the stream must end mid-answer
            events = events[: min(rule.after_chunks, before_finish)]
        return events

    async def _paced(self, connection: _Connection, plan: _Plan) -> bool:
        """A hang, or a stream whose events are spaced by `chunk_delay_ms`."""
        rule = plan.rule
        if rule.do == "hang":
            await connection.closed  # held until the client gives up or the server stops
            return False
        if rule.latency_s:
            await asyncio.sleep(rule.latency_s)
        if rule.do == "drop" and rule.stage == "before_response":
            return False
        headers = {"x-request-id": f"req_fake_{plan.seq}", **rule.headers}
        connection.write(_head(200, {**_SSE_HEADERS, **headers}, None))
        for event in self._events(plan):
            await asyncio.sleep(rule.chunk_delay_s)
            connection.write(_chunk(event))
        if rule.do == "drop":
            return False
        connection.write(_LAST_CHUNK)
        return plan.keep_alive


_SECRET_HEADERS = frozenset({"authorization", "api-key", "x-api-key"})
_SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


def _status_sent(rule: Rule) -> int | None:
    if rule.do == "hang" or (rule.do == "drop" and rule.stage == "before_response"):
        return None
    return rule.status if rule.do == "status" else 200


class _Connection(asyncio.Protocol):
    """One client connection. Requests are parsed off a buffer and answered in order; an
    answer is written at once, after a timer (latency), or by a task (hangs, paced streams),
    and the next buffered request waits until it is done. Writes are not flow-controlled:
    answers are a few KiB and the transport buffers what the socket does not take."""

    def __init__(self, server: FakeLLMServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._busy = False
        self._lost = False
        self._pending: asyncio.TimerHandle | asyncio.Task[bool] | None = None
        self._pending_plan: _Plan | None = None
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server._connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._server._connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)
        # the client gave up (its timeout): its request is no longer in flight
        self._settle()

    def _process(self) -> None:
        while not self._busy and not self._lost:
            try:
                parsed = _parse_request(self._buffer)
            except _HttpError as exc:
                error = _error_body(str(exc), "invalid_request_error")
                self.reply(_json_response(exc.status, error), keep=False)
                return
            if parsed is None:
                return
            request, used = parsed
            del self._buffer[:used]
            self._server._handle(self, request)

    def write(self, data: bytes) -> None:
        if not self._lost and self._transport is not None:
            self._transport.write(data)

    def reply(self, data: bytes, keep: bool) -> None:
        """Send an answer; without keep-alive, close once it is flushed (a `drop` relies on
        close, not abort, so the partial answer reaches the client before the FIN)."""
        if data:
            self.write(data)
        if not keep and self._transport is not None:
            self._transport.close()

    def reply_later(self, delay: float, data: bytes, keep: bool, plan: _Plan) -> None:
        # a timer rather than a task per delayed answer: the benchmark's 20 ms latency is
        # applied to every request, and a TimerHandle is the cheapest way to wait in asyncio
        self._busy = True
        self._pending_plan = plan
        self._pending = self._loop.call_later(delay, self._fire, data, keep, plan)

    def _fire(self, data: bytes, keep: bool, plan: _Plan) -> None:
        self._pending = self._pending_plan = None
        self._busy = False
        try:
            self.reply(data, keep)
        finally:
            self._server._finish(plan)
        if keep:
            self._process()

    def run(self, coro: Coroutine[Any, Any, bool], plan: _Plan) -> None:
        self._busy = True
        self._pending_plan = plan
        task = self._loop.create_task(coro)
        self._pending = task
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[bool]) -> None:
        plan = self._pending_plan
        self._pending = self._pending_plan = None
        self._busy = False
        if plan is not None:
            self._server._finish(plan)
        if task.cancelled():
            return
        if task.exception() is not None:
            self.abort()
            task.result()  # re-raised into the loop's exception handler: a bug, make it loud
        if task.result():
            self._process()
        elif self._transport is not None:
            self._transport.close()

    def _settle(self) -> None:
        """Drop the pending answer, if any, and settle its in-flight accounting."""
        pending, plan = self._pending, self._pending_plan
        if isinstance(pending, asyncio.TimerHandle):
            pending.cancel()
            self._pending = self._pending_plan = None
            self._busy = False
            if plan is not None:
                self._server._finish(plan)
        elif pending is not None:
            pending.cancel()  # its done callback settles the accounting

    def abort(self) -> None:
        """Cut the connection now (server stop), hung and half-answered requests included."""
        self._settle()
        if self._transport is not None:
            self._transport.abort()


# -- script files and the command line ------------------------------------------------------

_FILE_KEYS = frozenset(
    {"rules", "rate_limit", "models", "model_date", "system_fingerprint", "default_content"}
)


def load_script_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON script: a list of rules, or an object with `rules` and any of
    `rate_limit`, `models`, `model_date`, `system_fingerprint`, `default_content`.
    Returns keyword arguments for `FakeLLMServer`."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, list):
        return {"script": data}
    if not isinstance(data, dict) or set(data) - _FILE_KEYS:
        raise ValueError(f"{path}: a list of rules or an object with keys {sorted(_FILE_KEYS)}")
    kwargs = {k: v for k, v in data.items() if k != "rules"}
    kwargs["script"] = data.get("rules", [])
    return kwargs


def main(argv: Sequence[str] | None = None) -> int:
    """Run a server in the foreground until SIGINT/SIGTERM. The first stdout line is
    `fake-llm listening on BASE_URL`, so a parent process can wait for it and read the port
    (use `--port 0`); counters are at `GET /_fake/stats`."""
    parser = argparse.ArgumentParser(
        prog="python -m engine.testing.fake_llm",
        description="Scripted OpenAI-compatible fake LLM server on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: ephemeral)")
    parser.add_argument("--script", type=Path, help="JSON script file (see the module docs)")
    parser.add_argument("--rpm", type=int, help="server-enforced requests per window")
    parser.add_argument("--window-s", type=float, default=60.0, help="the rpm window, seconds")
    parser.add_argument("--max-concurrent", type=int, help="server-enforced in-flight ceiling")
    parser.add_argument("--retry-after", type=float, help="Retry-After for rate-limit 429s")
    args = parser.parse_args(argv)
    kwargs: dict[str, Any] = load_script_file(args.script) if args.script else {}
    if args.rpm is not None or args.max_concurrent is not None:
        kwargs["rate_limit"] = RateLimit(
            rpm=args.rpm,
            concurrent=args.max_concurrent,
            window_s=args.window_s,
            retry_after=args.retry_after,
        )
    done = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with FakeLLMServer(port=args.port, **kwargs) as server:
        print(f"fake-llm listening on {server.base_url}", flush=True)
        while not done.wait(0.5):
            pass
        print(f"fake-llm stopping: {json.dumps(server.stats())}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
