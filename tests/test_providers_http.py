"""The provider gateway under faults, over real loopback HTTP to the fake LLM server.

Each test drives `engine.providers.Gateway` the way a run builds it (`Runtime._resources`):
real litellm, a `CircuitBoard` persisted under `tmp_path`, `RateLimits`, a `Budget`, a
`Ledger` and a `Redactor`; only time is injected (a recording fake `sleep` / `clock`), so
Retry-After, backoff and circuit cooldowns cost no real waiting. No mocks: every request
crosses a socket to `engine.testing.fake_llm.FakeLLMServer` on 127.0.0.1.

Every chat call runs under `anyio.fail_after`, every loop is bounded.
"""

from __future__ import annotations

import base64
import bisect
import json
import os
import resource
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import anyio
import anyio.lowlevel
import pytest

# litellm reads its price table from the network at import unless told not to; the gateway
# sets this too, but only when it imports litellm itself
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

from engine.errors import (
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
)
from engine.providers import ChatReply, Gateway, provider_of
from engine.providers.budget import Budget, BudgetExceeded, Ledger
from engine.providers.circuits import CircuitBoard
from engine.providers.local import LOCAL_MODEL_VERSION
from engine.providers.ratelimit import RateLimits
from engine.redact import Redactor
from engine.spec import ModelRoute
from engine.testing.fake_llm import FakeLLMServer

pytestmark = pytest.mark.anyio

KEY = "sk-Zq8VwX3pLm7R9fT2xQ4k"
"""The API key of most tests: no 4-character piece of it occurs in ordinary English."""
CANARY = 'sk-Cn4ry/Zq8+Vw=X3p"Lm7R~qT'
"""A secret whose raw, base64, URL-encoded and JSON-escaped forms all differ."""
CALL_TIMEOUT = 30.0
"""Upper bound for one `chat` in real seconds: only there so a hang fails the test."""
MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Name one prime number."},
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("DEEPSEEK_API_KEY", KEY[::-1])


class FakeTime:
    """A monotonic clock that only `sleep` moves: each sleep is recorded, then returns at
    once (after a checkpoint, so other tasks still get their turn)."""

    def __init__(self) -> None:
        self.now = 10_000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()


class ScaledTime:
    """Real time, run `SCALE` times faster: for many concurrent calls, where one fake clock
    moved by every sleeper would add their waits up instead of overlapping them."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def clock(self) -> float:
        return time.monotonic() * self.scale

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds) / self.scale)


class WallClock:
    """The circuit board's wall clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


def make_gateway(
    server: FakeLLMServer,
    routes: Mapping[str, Mapping[str, Any]],
    tmp_path: Path,
    *,
    time_source: FakeTime | ScaledTime | None = None,
    board: CircuitBoard | None = None,
    budget: Budget | None = None,
    secrets: tuple[str, ...] = (KEY,),
) -> Gateway:
    """A gateway built as `Runtime._resources` builds one, every route aimed at `server`
    (a `local/...` route needs no address and gets none); the rate limiter and the gateway
    share `time_source`."""
    fake = time_source or FakeTime()
    parsed = {}
    for name, raw in routes.items():
        params = {} if str(raw["model"]).startswith("local/") else {"api_base": server.base_url}
        parsed[name] = ModelRoute.model_validate(
            {**raw, "params": {**params, **raw.get("params", {})}}
        )
    rpm_limits = {}
    for route in parsed.values():
        if route.rpm or route.tpm:
            rpm_limits[provider_of(route.model)] = (route.rpm, route.tpm)
    return Gateway(
        parsed,
        circuits=board or CircuitBoard(tmp_path / "circuits.json", failures=3, cooldown=30.0),
        limits=RateLimits(rpm_limits, clock=fake.clock, sleep=fake.sleep),
        budget=budget or Budget(None, None, name="run"),
        ledger=Ledger(),
        redactor=Redactor(secrets),
        sleep=fake.sleep,
        clock=fake.clock,
    )


async def chat(gateway: Gateway, route: str = "main", **kw: Any) -> ChatReply:
    kw.setdefault("step", "ask")
    kw.setdefault("instance", "ask")
    messages = kw.pop("messages", MESSAGES)
    with anyio.fail_after(CALL_TIMEOUT):
        return await gateway.chat(route, messages, **kw)


def outcomes(gateway: Gateway) -> list[tuple[str, str]]:
    return [(e.model_asked, e.outcome) for e in gateway.ledger]


def models_seen(server: FakeLLMServer) -> list[str]:
    return [r.model for r in server.requests]


def leak_forms(secret: str) -> set[str]:
    """The shapes `secret` travels in: raw, URL-encoded, JSON-escaped, and base64 (standard
    and URL-safe) at each of the three byte alignments: for an alignment, the characters
    that come from the secret's bytes alone, so they occur in the base64 of any text that
    holds the secret at that alignment. Written here, not taken from engine.redact, so the
    check does not share the redactor's blind spots."""
    raw = secret.encode()
    forms = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * shift + raw).decode()
            forms.add(text[4 if shift else 0 : -4])
    assert all(len(f) >= 16 for f in forms), forms
    return forms


def leaks(text: str, secret: str) -> list[str]:
    return sorted(f for f in leak_forms(secret) if f in text)


def pieces(secret: str, size: int = 4) -> Iterator[str]:
    """Every `size`-character piece of `secret` (a provider's masked echo shows the last 4)."""
    for start in range(len(secret) - size + 1):
        yield secret[start : start + size]


def ledger_text(gateway: Gateway) -> str:
    """Every ledger field, both as stored and as it would be written out as JSON."""
    values = [str(v) for row in gateway.ledger.as_dicts() for v in row.values()]
    return "\n".join(values) + "\n" + json.dumps(gateway.ledger.as_dicts())


# ---- 1. Retry-After ------------------------------------------------------------------------


async def test_retry_after_is_honoured_then_the_retry_answers(tmp_path: Path) -> None:
    fake = FakeTime()
    with FakeLLMServer(script=[{"times": 1, "status": 429, "retry_after": 2}]) as server:
        gateway = make_gateway(
            server, {"main": {"model": "openai/gpt-4o-mini"}}, tmp_path, time_source=fake
        )
        reply = await chat(gateway)

    assert server.request_count == 2
    assert server.status_counts == {429: 1, 200: 1}
    assert reply.content == "ok"
    assert reply.model_answered == "gpt-4o-mini-2024-07-18"
    # the route's own backoff would wait 1 s: the provider asked for 2, and got them
    assert fake.sleeps, "the gateway retried without waiting"
    assert sum(fake.sleeps) >= 2.0
    assert max(fake.sleeps) >= 2.0
    assert outcomes(gateway) == [("openai/gpt-4o-mini", "transient"), ("openai/gpt-4o-mini", "ok")]
    first = gateway.ledger.entries[0]
    assert "429" in (first.error or "")
    # a 429 is throttling, not an outage
    assert gateway.circuits.state("openai") == "closed"


async def test_retry_after_past_the_deadline_gives_up_without_waiting(tmp_path: Path) -> None:
    fake = FakeTime()
    with FakeLLMServer(script=[{"status": 429, "retry_after": 30}]) as server:
        gateway = make_gateway(
            server, {"main": {"model": "openai/gpt-4o-mini"}}, tmp_path, time_source=fake
        )
        with pytest.raises(TransientProviderError) as info:
            await chat(gateway, deadline=fake.now + 5.0)

    assert server.request_count == 1
    assert fake.sleeps == []  # waiting 30 s could not end before the deadline: no wait at all
    assert "rate limited" in str(info.value)
    assert outcomes(gateway) == [("openai/gpt-4o-mini", "transient")]


# ---- 2. fallbacks --------------------------------------------------------------------------


async def test_fallback_answers_after_the_primarys_outage(tmp_path: Path) -> None:
    script = [{"when": {"model": "gpt-4o"}, "status": 503}]
    with FakeLLMServer(script=script) as server:
        routes = {"main": {"model": "openai/gpt-4o", "fallbacks": ["deepseek/deepseek-chat"]}}
        gateway = make_gateway(server, routes, tmp_path)
        reply = await chat(gateway)
        dated = server.dated_model("deepseek-chat")

    assert reply.model_answered == dated == "deepseek-chat-2024-07-18"
    assert reply.model_asked == "deepseek/deepseek-chat"
    assert reply.route == "main"
    # the default retry (3 attempts) on the primary, then the fallback, once
    assert models_seen(server) == ["gpt-4o"] * 3 + ["deepseek-chat"]
    assert outcomes(gateway) == [("openai/gpt-4o", "transient")] * 3 + [
        ("deepseek/deepseek-chat", "ok")
    ]
    assert all("503" in (e.error or "") for e in gateway.ledger.entries[:3])
    assert gateway.ledger.entries[-1].model_answered == dated


@pytest.mark.xfail(
    strict=True,
    reason=(
        "engine/providers/__init__.py Gateway.chat/_with_retries: circuits are keyed by "
        "provider (provider_of(model)), so the primary's own 3 retries on a 503 open the "
        "whole 'openai' circuit and the route's same-provider fallback (openai/gpt-4o-mini) "
        "is refused as circuit_open without ever being tried; a model-level outage should "
        "not stop the chain's untried fallback"
    ),
)
async def test_same_provider_fallback_answers_after_the_primarys_outage(tmp_path: Path) -> None:
    script = [{"when": {"model": "gpt-4o"}, "status": 503}]
    with FakeLLMServer(script=script) as server:
        routes = {"main": {"model": "openai/gpt-4o", "fallbacks": ["openai/gpt-4o-mini"]}}
        gateway = make_gateway(server, routes, tmp_path)
        try:
            reply = await chat(gateway)
        finally:
            seen = models_seen(server)
    assert seen == ["gpt-4o"] * 3 + ["gpt-4o-mini"]
    assert reply.model_answered == "gpt-4o-mini-2024-07-18"


# ---- 3. circuits ---------------------------------------------------------------------------


async def test_circuit_opens_sends_calls_to_the_fallback_and_half_opens_once(
    tmp_path: Path,
) -> None:
    wall = WallClock()
    board = CircuitBoard(tmp_path / "circuits.json", failures=3, cooldown=30.0, clock=wall)
    script = [
        {"when": {"model": "gpt-4o-mini"}, "times": 3, "status": 503},
        # the trial: slow enough that the calls started with it are all still deciding
        {"when": {"model": "gpt-4o-mini"}, "latency_ms": 300},
    ]
    routes = {
        "main": {
            "model": "openai/gpt-4o-mini",
            "fallbacks": ["deepseek/deepseek-chat"],
            "retry": {"attempts": 1},
        }
    }
    with FakeLLMServer(script=script) as server:
        gateway = make_gateway(server, routes, tmp_path, board=board)
        primary = server.dated_model("gpt-4o-mini")
        fallback = server.dated_model("deepseek-chat")

        # three chat calls, one failure each: the third opens the circuit
        for n in range(3):
            assert board.state("openai") == "closed", n
            reply = await chat(gateway, instance=f"closed-{n}")
            assert reply.model_answered == fallback
        assert board.state("openai") == "open"
        assert models_seen(server) == ["gpt-4o-mini", "deepseek-chat"] * 3

        # open: straight to the fallback, the primary's provider sees nothing
        before = server.request_count
        for n in range(2):
            reply = await chat(gateway, instance=f"open-{n}")
            assert reply.model_answered == fallback
        assert models_seen(server)[before:] == ["deepseek-chat"] * 2
        assert (
            outcomes(gateway)[-4:]
            == [
                ("openai/gpt-4o-mini", "circuit_open"),
                ("deepseek/deepseek-chat", "ok"),
            ]
            * 2
        )

        # the cooldown passes: five calls at once, exactly one of them is the trial
        wall.now += 31.0
        before = server.request_count
        replies: list[ChatReply] = []

        async def one(n: int) -> None:
            replies.append(await chat(gateway, instance=f"half-{n}"))

        with anyio.fail_after(CALL_TIMEOUT):
            async with anyio.create_task_group() as tg:
                for n in range(5):
                    tg.start_soon(one, n)
        trial = models_seen(server)[before:]
        assert trial.count("gpt-4o-mini") == 1, trial
        assert trial.count("deepseek-chat") == 4, trial
        assert sorted(r.model_answered for r in replies) == sorted([primary] + [fallback] * 4)
        # its success closed the circuit: the primary answers again
        assert board.state("openai") == "closed"
        reply = await chat(gateway, instance="closed-again")
        assert reply.model_answered == primary
        assert models_seen(server)[-1] == "gpt-4o-mini"

    # the state is on disk for runbooks and other runs
    saved = json.loads((tmp_path / "circuits.json").read_text())
    assert saved["providers"]["openai"]["state"] == "closed"


# ---- 4. permanent failures fail fast -------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "status"),
    [
        pytest.param({"error": "invalid_api_key"}, 401, id="401"),
        pytest.param(
            {
                "error": "insufficient_quota",
                "message": "You exceeded your current quota for key {key}, please check your "
                "plan and billing details.",
            },
            429,
            id="spend-limit-429",
        ),
    ],
)
async def test_rejected_key_and_spend_limit_fail_fast_naming_only_the_variable(
    tmp_path: Path, rule: dict[str, Any], status: int
) -> None:
    fake = FakeTime()
    with FakeLLMServer(script=[rule]) as server:
        routes = {
            "main": {
                "model": "openai/gpt-4o-mini",
                "fallbacks": ["deepseek/deepseek-chat"],
                "retry": {"attempts": 5},
            }
        }
        gateway = make_gateway(server, routes, tmp_path, time_source=fake)
        with pytest.raises(PermanentProviderError) as info:
            await chat(gateway)

    exc = info.value
    assert not isinstance(exc, TransientProviderError | BudgetExceeded)
    # one request: no retry, no fallback, no wait
    assert server.request_count == 1
    assert server.status_counts == {status: 1}
    assert fake.sleeps == []
    # the provider did echo the key's tail, as OpenAI does; the engine never repeats it
    assert KEY[-4:] in json.dumps(server.requests[0].headers)  # only the last 4 are recorded
    message = str(exc)
    assert "OPENAI_API_KEY" in message
    assert f"HTTP {status}" in message
    found = [p for p in pieces(KEY) if p in message]
    assert found == [], f"{message!r} quotes part of the key: {found}"
    assert outcomes(gateway) == [("openai/gpt-4o-mini", "permanent")]
    recorded = ledger_text(gateway)
    assert "OPENAI_API_KEY" in recorded
    assert [p for p in pieces(KEY) if p in recorded] == []
    # the key's fault is not the provider's: the circuit stays closed
    assert gateway.circuits.state("openai") == "closed"


# ---- 5. budgets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usd", "tokens", "unit"),
    [pytest.param(0.0001, None, "usd", id="usd"), pytest.param(None, 100, "tokens", id="tokens")],
)
async def test_run_budget_below_the_estimate_stops_before_any_request(
    tmp_path: Path, usd: float | None, tokens: int | None, unit: str
) -> None:
    with FakeLLMServer() as server:
        gateway = make_gateway(
            server,
            {"main": {"model": "openai/gpt-4o-mini"}},
            tmp_path,
            budget=Budget(usd, tokens, name="run"),
        )
        with pytest.raises(BudgetExceeded) as info:
            await chat(gateway)

    assert server.request_count == 0
    assert info.value.budget == "run"
    assert info.value.unit == unit
    assert info.value.estimate > info.value.limit
    assert "run budget" in str(info.value)
    assert gateway.budget.spent_usd == 0.0
    assert gateway.circuits.state("openai") == "closed"


async def test_run_budget_below_the_estimate_degrades_to_the_cheaper_route(
    tmp_path: Path,
) -> None:
    routes = {
        "main": {"model": "openai/gpt-4o-mini", "degrade_to": "cheap"},
        "cheap": {"model": "local/echo"},
    }
    with FakeLLMServer() as server:
        gateway = make_gateway(server, routes, tmp_path, budget=Budget(0.0001, None, name="run"))
        try:
            reply = await chat(gateway)
        finally:
            assert server.request_count == 0
    assert reply.route == "cheap"
    assert reply.model_answered == f"local/echo-{LOCAL_MODEL_VERSION}"


async def test_route_budget_below_the_estimate_degrades_to_the_cheaper_route(
    tmp_path: Path,
) -> None:
    routes = {
        "main": {"model": "openai/gpt-4o-mini", "budget_usd": 0.00001, "degrade_to": "cheap"},
        "cheap": {"model": "local/echo"},
    }
    with FakeLLMServer() as server:
        gateway = make_gateway(server, routes, tmp_path)
        reply = await chat(gateway)
        seen = server.request_count
    assert seen == 0
    assert reply.model_answered == f"local/echo-{LOCAL_MODEL_VERSION}"


# ---- 6. a 429 storm under a rate limit -----------------------------------------------------

SCALE = 60.0
"""Time for the rate limiter and the gateway runs SCALE times faster than the wall clock:
the limiter's 60 s window is one real second, and a Retry-After of 60 (s) is one real
second too, so a minute's limits are exercised in a second."""
ROUTE_RPM = 25
"""25 a (scaled) minute is 25 a real second: below what litellm can send from one event loop
(about 30 a second here), so the limiter, not the CPU, sets the pace."""
CALLS = 200


def max_in_window(times: list[float], window: float) -> int:
    ordered = sorted(times)
    return max(bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered))


async def test_concurrent_calls_through_a_429_storm_respect_the_rate_limit(
    tmp_path: Path,
) -> None:
    window = 60.0 / SCALE  # the limiter's window, in real seconds
    script = [
        # the storm: a burst of 429s with Retry-After, then the server's own per-window
        # ceiling (at the route's rpm) for anything that would still overrun it
        {"when": {"request": [2, 31]}, "status": 429, "retry_after": 1},
        # answers take a while, so calls overlap at the server
        {"latency_ms": 100},
    ]
    rate_limit = {"rpm": ROUTE_RPM, "window_s": window, "retry_after": 60}
    routes = {
        "main": {
            "model": "openai/gpt-4o-mini",
            "rpm": ROUTE_RPM,
            "retry": {"attempts": 30, "initial": 1, "max": 120},
        }
    }
    with FakeLLMServer(script=script, rate_limit=rate_limit) as server:
        gateway = make_gateway(server, routes, tmp_path, time_source=ScaledTime(SCALE))
        await chat(gateway, instance="warm-up")  # litellm's lazy imports, the connection pool
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

        results: list[ChatReply | ProviderError] = []

        async def one(n: int) -> None:
            try:
                results.append(
                    await gateway.chat("main", MESSAGES, step="fan", instance=f"fan-{n}")
                )
            except ProviderError as exc:
                results.append(exc)

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                for n in range(CALLS):
                    tg.start_soon(one, n)
        rss_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        requests = server.requests[1:]  # after the warm-up

    assert len(results) == CALLS
    failed = [r for r in results if isinstance(r, ProviderError)]
    # a call that gives up says why: rate limited, never something vaguer
    assert all(
        isinstance(e, TransientProviderError) and "rate limited" in str(e) for e in failed
    ), failed[:3]
    assert len(failed) <= CALLS // 10, Counter(str(e) for e in failed)
    assert all(
        r.model_answered == "gpt-4o-mini-2024-07-18" for r in results if isinstance(r, ChatReply)
    )
    # the storm happened, and the gateway rode it out
    statuses = Counter(r.status for r in requests)
    assert statuses[429] >= 30, statuses
    assert statuses[200] == CALLS - len(failed)
    # the limiter held, as the server saw it. Over the whole storm the rate is the route's
    # rpm at most; in any one window, two more are allowed for the jitter between the
    # limiter admitting a call and its bytes arriving (a loaded machine delays some sends
    # more than others). A limiter that let calls burst would put dozens in one window.
    arrivals = sorted(r.time for r in requests)
    per_window = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) * window
    assert per_window <= ROUTE_RPM * 1.05, per_window
    busiest = max_in_window(arrivals, window)
    assert busiest <= ROUTE_RPM + 2, busiest
    # throttling is not an outage
    assert gateway.circuits.state("openai") == "closed"
    assert {e.outcome for e in gateway.ledger} <= {"ok", "transient"}
    assert all("rate limited" in (e.error or "") for e in gateway.ledger if e.outcome != "ok")
    # memory stays modest (the time bound is the fail_after around the storm, not an assert)
    assert rss_growth_mib < 64, rss_growth_mib


# ---- 7. secrets never leak -----------------------------------------------------------------


def canary_forms_text() -> str:
    """Provider error text that quotes the canary in every shape it travels in: raw,
    URL-encoded, JSON-escaped, and inside base64 (standard and URL-safe) of longer texts
    that hold it at each of the three byte alignments."""
    shapes = [CANARY, quote(CANARY, safe=""), quote_plus(CANARY), json.dumps(CANARY)[1:-1]]
    for prefix in (b"", b"key=", b"k="):  # the canary at byte offsets 0, 4 and 2
        blob = prefix + CANARY.encode() + b"\n"
        shapes += [base64.b64encode(blob).decode(), base64.urlsafe_b64encode(blob).decode()]
    return " | ".join(shapes)


async def test_canary_never_reaches_the_ledger_or_an_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    quoted = canary_forms_text()
    assert leaks(quoted, CANARY) == sorted(leak_forms(CANARY))  # every shape is in there
    prompt = [
        {"role": "system", "content": f"The deploy token is {CANARY}; never repeat it."},
        {"role": "user", "content": f"What is {CANARY}? {quoted}"},
    ]
    script = [
        # a model that repeats the secret, in every form
        {"when": {"model": "gpt-4o-mini"}, "content": f"It is {CANARY}. Also: {quoted}"},
        # providers whose error text quotes it: a 500 (retried), a 400 (permanent, whose text
        # the gateway keeps), a 401 that echoes the key's tail as OpenAI does
        {"when": {"model": "gpt-4o"}, "status": 500, "message": f"upstream said {quoted}"},
        {"when": {"model": "gpt-4.1"}, "status": 400, "message": f"bad request: {quoted}"},
        {"when": {"model": "gpt-4.1-mini"}, "error": "invalid_api_key"},
        {
            "when": {"model": "gpt-4.1-nano"},
            "status": 429,
            "message": f"slow down {quoted}",
            "retry_after": 1,
        },
    ]
    routes = {
        "talk": {"model": "openai/gpt-4o-mini"},
        "down": {"model": "openai/gpt-4o", "retry": {"attempts": 2}},
        "bad": {"model": "openai/gpt-4.1"},
        "denied": {"model": "openai/gpt-4.1-mini"},
        "throttled": {"model": "openai/gpt-4.1-nano", "retry": {"attempts": 2}},
    }
    errors: list[str] = []
    with FakeLLMServer(script=script) as server:
        # generous circuit: this test is about words, not breakers
        board = CircuitBoard(tmp_path / "circuits.json", failures=50)
        gateway = make_gateway(server, routes, tmp_path, board=board, secrets=(CANARY,))
        reply = await chat(gateway, "talk", messages=prompt)
        for route in ("down", "bad", "denied", "throttled"):
            with pytest.raises(ProviderError) as info:
                await chat(gateway, route, messages=prompt)
            errors += [str(info.value), repr(info.value), *map(str, info.value.args)]
        received = server.requests

    # the canary did travel: as the key, in the prompt, back in the answer and error text
    assert all(r.headers["authorization"] == "***" + CANARY[-4:] for r in received)
    assert CANARY in received[0].last_user_message
    assert CANARY in reply.content  # the caller gets the answer; the record must not
    assert {e.outcome for e in gateway.ledger} == {"ok", "transient", "permanent"}
    assert any("***" in (e.error or "") for e in gateway.ledger)  # masked, not dropped

    recorded = ledger_text(gateway)
    assert leaks(recorded, CANARY) == []
    for text in errors:
        assert leaks(text, CANARY) == [], text
    # nor the provider's masked echo of the key's tail
    for text in [recorded, *errors]:
        assert "*" * 8 + CANARY[-4:] not in text


async def test_canary_in_response_metadata_never_reaches_the_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    script = [{"content": "fine", "answer_model": f"gpt-4o-mini-{CANARY}"}]
    with FakeLLMServer(script=script, system_fingerprint=f"fp_{CANARY}") as server:
        gateway = make_gateway(
            server, {"main": {"model": "openai/gpt-4o-mini"}}, tmp_path, secrets=(CANARY,)
        )
        await chat(gateway)
    assert leaks(ledger_text(gateway), CANARY) == []


async def test_repeated_429s_wait_their_retry_after_and_never_trip_the_circuit(
    tmp_path: Path,
) -> None:
    """A plain 429 is throttling: more of them in a row than the circuit's failure threshold
    are retried after each Retry-After and leave the circuit closed."""
    fake = FakeTime()
    with FakeLLMServer(script=[{"status": 429, "retry_after": 7}]) as server:
        gateway = make_gateway(
            server,
            {"main": {"model": "openai/gpt-4o-mini", "retry": {"attempts": 4}}},
            tmp_path,
            time_source=fake,
        )
        with pytest.raises(TransientProviderError) as info:
            await chat(gateway)
    assert "rate limited" in str(info.value)
    assert server.request_count == 4
    assert len(fake.sleeps) == 3
    assert min(fake.sleeps) >= 7.0
    assert gateway.circuits.state("openai") == "closed"
