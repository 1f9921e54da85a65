"""The fake LLM server, driven over real loopback HTTP by litellm (the client the engine's
`llm` steps use), so each scripted fault is pinned to the exception litellm raises for it.

These tests double as the record of litellm 1.106.2's mapping that the provider layer
translates; the table is in `FAULT_CASES`. Every call has a timeout, every loop a bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine.testing.fake_llm import FakeLLMServer, Rule, load_script_file

# litellm fetches a model cost map over the network at import unless told not to
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
import litellm  # imported once per module: it costs seconds
from litellm.exceptions import MidStreamFallbackError  # not re-exported at the top

litellm.suppress_debug_info = True  # its "Give Feedback" banner on every exception

pytestmark = pytest.mark.anyio

KEY = "sk-test-fakeKEY-9f3Kq7Lw"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def ask(server: FakeLLMServer, text: str = "hello there", **kw: Any) -> Any:
    kw.setdefault("timeout", 5.0)
    return await litellm.acompletion(
        model=kw.pop("model", "openai/gpt-4o-mini"),
        api_base=server.base_url,
        api_key=KEY,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": text}],
        num_retries=0,
        **kw,
    )


async def fault(script: list[dict[str, Any]], **kw: Any) -> tuple[BaseException, FakeLLMServer]:
    # pytest.raises(Exception): the caller checks the exact class
    with FakeLLMServer(script=script) as server, pytest.raises(Exception) as info:  # noqa: PT011
        await ask(server, **kw)
    return info.value, server


# -- answers ---------------------------------------------------------------------------------


async def test_ok_answer_is_shaped_like_openai() -> None:
    with FakeLLMServer(script=[{"content": "fine, thanks"}]) as server:
        response = await ask(server)
    assert response.model == "gpt-4o-mini-2024-07-18"
    assert response.system_fingerprint == "fp_fake0001"
    assert response.id == "chatcmpl-fake1"
    assert response.choices[0].message.content == "fine, thanks"
    assert response.choices[0].finish_reason == "stop"
    usage = response.usage
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    headers = response._hidden_params["additional_headers"]
    assert headers["llm_provider-x-request-id"] == "req_fake_1"
    (request,) = server.requests
    assert (request.seq, request.model, request.stream) == (1, "gpt-4o-mini", False)
    assert (request.status, request.outcome, request.rule) == (200, "ok", 0)
    assert request.last_user_message == "hello there"
    # the key is kept as its last 4 characters only, nowhere in full
    assert request.headers["authorization"] == "***" + KEY[-4:]
    assert KEY not in repr(server.requests)


async def test_echo_json_and_dated_model_options() -> None:
    script: list[dict[str, Any]] = [
        {"when": {"contains": "echo"}, "echo": True},
        {"when": {"model": "gpt-4o"}, "json": {"verdict": "pass", "score": 3}},
        {"when": {"model": "my-*"}, "answer_model": "my-model-v2"},
    ]
    with FakeLLMServer(script=script) as server:
        echoed = await ask(server, "please echo this")
        as_json = await ask(server, model="openai/gpt-4o")
        custom = await ask(server, model="openai/my-model")
        undated = await ask(server, model="openai/o-mini")
    assert echoed.choices[0].message.content == "please echo this"
    assert json.loads(as_json.choices[0].message.content) == {"verdict": "pass", "score": 3}
    assert as_json.model == "gpt-4o-2024-08-06"
    assert custom.model == "my-model-v2"
    assert undated.model == "o-mini-2024-07-18"
    assert [r.rule for r in server.requests] == [0, 1, 2, None]


async def test_times_gives_fail_twice_then_succeed() -> None:
    script: list[dict[str, Any]] = [{"times": 2, "status": 500}, {"content": "recovered"}]
    with FakeLLMServer(script=script) as server:
        for _ in range(2):
            with pytest.raises(litellm.InternalServerError):
                await ask(server)
        response = await ask(server)
    assert response.choices[0].message.content == "recovered"
    assert server.status_counts == {500: 2, 200: 1}
    assert server.outcome_counts == {"status": 2, "ok": 1}
    assert [r.rule for r in server.requests] == [0, 0, 1]


async def test_request_number_rules_and_set_script() -> None:
    with FakeLLMServer(script=[{"when": {"request": [2, 3]}, "status": 503}]) as server:
        statuses = []
        for _ in range(4):
            try:
                await ask(server)
                statuses.append(200)
            except litellm.ServiceUnavailableError as exc:
                statuses.append(exc.status_code)
        assert statuses == [200, 503, 503, 200]
        server.set_script([{"when": {"request": 5}, "content": "fifth"}])
        assert (await ask(server)).choices[0].message.content == "fifth"
        server.reset()
        assert server.request_count == 0
        assert (await ask(server)).choices[0].message.content == "ok"
        assert server.requests[0].seq == 1


async def test_truncated_answer_finishes_with_length() -> None:
    script = [{"do": "truncated", "content": "one two three four five six", "max_chars": 7}]
    with FakeLLMServer(script=script) as server:
        response = await ask(server, max_tokens=5)
    assert response.choices[0].finish_reason == "length"
    assert response.choices[0].message.content == "one two"
    assert response.usage.completion_tokens == 5


async def test_refusal_finishes_with_content_filter() -> None:
    with FakeLLMServer(script=[{"do": "refusal"}]) as server:
        response = await ask(server)
    assert response.choices[0].finish_reason == "content_filter"
    assert response.choices[0].message.content is None


# -- faults and the litellm exceptions they become ----------------------------------------------

# (script rule, litellm exception class, its status_code). The first class is what an
# `except` must name; the notes say what else litellm attaches.
FAULT_CASES = [
    # RateLimitError(openai.RateLimitError): .litellm_response_headers has retry-after;
    # .body is the error object, .body["code"] "rate_limit_exceeded"; .response.headers empty
    pytest.param({"status": 429, "retry_after": 3}, "RateLimitError", 429, id="429"),
    # the spend limit: also RateLimitError 429; only .body["code"] "insufficient_quota"
    # (and the message) tell it from a retryable rate limit
    pytest.param({"error": "insufficient_quota"}, "RateLimitError", 429, id="quota"),
    pytest.param({"status": 401}, "AuthenticationError", 401, id="401"),
    pytest.param({"status": 400}, "BadRequestError", 400, id="400"),
    # BadRequestError subclass, picked by the message ("maximum context length")
    pytest.param(
        {"error": "context_length_exceeded"}, "ContextWindowExceededError", 400, id="context"
    ),
    pytest.param({"status": 500}, "InternalServerError", 500, id="500"),
    pytest.param({"status": 503}, "ServiceUnavailableError", 503, id="503"),
    # no dedicated class: the generic litellm.APIError (not a ServiceUnavailableError)
    pytest.param({"status": 529}, "APIError", 529, id="529"),
    # the connection closing mid-body, or before any byte: InternalServerError 500,
    # message "Connection error."
    pytest.param({"do": "drop"}, "InternalServerError", 500, id="drop"),
    pytest.param({"do": "drop", "stage": "before_response"}, "InternalServerError", 500, id="cut"),
    # a 200 whose body is cut-off JSON, or JSON without `choices`: InternalServerError 500
    pytest.param({"do": "malformed"}, "InternalServerError", 500, id="bad-json"),
    pytest.param(
        {"do": "malformed", "kind": "no_choices"}, "InternalServerError", 500, id="nochoice"
    ),
]


@pytest.mark.parametrize(("rule", "name", "status"), FAULT_CASES)
async def test_fault_maps_to_litellm_exception(
    rule: dict[str, Any], name: str, status: int
) -> None:
    exc, server = await fault([rule])
    assert type(exc) is getattr(litellm, name), repr(exc)
    assert getattr(exc, "status_code", None) == status
    assert server.request_count == 1  # num_retries=0 also stops the OpenAI SDK's own retries
    assert KEY not in str(exc)


async def test_429_retry_after_is_in_litellm_response_headers() -> None:
    exc, _ = await fault([{"status": 429, "retry_after": 3}])
    assert isinstance(exc, litellm.RateLimitError)
    assert exc.litellm_response_headers["retry-after"] == "3"
    assert litellm.utils._get_retry_after_from_exception_header(exc.litellm_response_headers) == 3
    assert "retry-after" not in exc.response.headers  # litellm's stand-in response: empty
    assert exc.body["code"] == "rate_limit_exceeded"


async def test_spend_limit_429_is_told_apart_by_the_body_code() -> None:
    exc, _ = await fault([{"error": "insufficient_quota"}])
    assert isinstance(exc, litellm.RateLimitError)
    assert exc.body["code"] == "insufficient_quota"
    assert "exceeded your current quota" in str(exc)


async def test_401_echoes_only_the_last_four_characters_of_the_key() -> None:
    exc, _ = await fault([{"status": 401}])
    assert isinstance(exc, litellm.AuthenticationError)
    assert f"Incorrect API key provided: sk-********{KEY[-4:]}." in str(exc)
    assert KEY not in str(exc)
    assert KEY[:-4] not in str(exc)


async def test_hang_becomes_a_timeout_within_the_timeout() -> None:
    exc, server = await fault([{"do": "hang"}], timeout=0.5)
    assert isinstance(exc, litellm.Timeout)
    assert exc.status_code == 408
    assert server.outcome_counts == {"hang": 1}  # the server held it: it never answered
    assert server.status_counts == {}


@pytest.mark.parametrize("rule", [{"do": "hang"}, {"latency_ms": 5000}], ids=["hang", "slow"])
async def test_request_leaves_flight_when_the_client_gives_up(rule: dict[str, Any]) -> None:
    with FakeLLMServer(script=[rule]) as server:
        with pytest.raises(litellm.Timeout):
            await ask(server, timeout=0.3)
        deadline = time.monotonic() + 5
        while server.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert server.in_flight == 0


# -- streaming -----------------------------------------------------------------------------------


async def collect(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


async def test_stream_delivers_the_content_in_chunks() -> None:
    text = "streamed words arrive in several pieces"
    with FakeLLMServer(script=[{"content": text, "chunk_chars": 8}]) as server:
        chunks = await collect(await ask(server, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert len(chunks) >= 5
    assert chunks[-1].choices[0].finish_reason == "stop"
    # litellm's stream wrapper reports the *requested* model, not the dated one answered
    assert chunks[0].model == "gpt-4o-mini"
    assert server.requests[0].stream is True


async def test_stream_usage_when_asked() -> None:
    with FakeLLMServer(script=[{"content": "four words of text"}]) as server:
        stream = await ask(server, stream=True, stream_options={"include_usage": True})
        chunks = await collect(stream)
    usages = [c.usage for c in chunks if getattr(c, "usage", None)]
    assert usages
    assert usages[-1].completion_tokens == 5


async def test_dropped_stream_raises_midstream() -> None:
    script = [{"do": "drop", "after_chunks": 2, "content": "x" * 64, "chunk_chars": 8}]
    with FakeLLMServer(script=script) as server:
        stream = await ask(server, stream=True)
        received: list[Any] = []

        async def consume() -> None:
            async for chunk in stream:
                received.append(chunk)

        with pytest.raises(MidStreamFallbackError) as info:
            await consume()
    # a ServiceUnavailableError subclass, but status_code 500, and the cause in the message
    assert isinstance(info.value, litellm.ServiceUnavailableError)
    assert info.value.status_code == 500
    assert "Response payload is not completed" in str(info.value)
    assert len(received) <= 2
    assert server.status_counts == {200: 1}


async def test_malformed_stream_event_raises_midstream() -> None:
    with FakeLLMServer(script=[{"do": "malformed"}]) as server:
        stream = await ask(server, stream=True)
        with pytest.raises(MidStreamFallbackError):
            await collect(stream)


async def test_stream_stall_longer_than_the_timeout_raises_midstream() -> None:
    # litellm's timeout bounds each read of a stream, not the whole stream
    script = [{"content": "x" * 20, "chunk_chars": 10, "chunk_delay_ms": 1500}]
    with FakeLLMServer(script=script) as server:
        stream = await ask(server, stream=True, timeout=0.4)
        # bounded well under the 1.5 s stall per chunk times the chunks left
        with (
            anyio.fail_after(4.0),
            pytest.raises(MidStreamFallbackError, match="Timeout on reading data"),
        ):
            await collect(stream)


async def test_stream_fault_before_the_stream_is_a_plain_status_error() -> None:
    exc, _ = await fault([{"status": 429, "retry_after": 2}], stream=True)
    assert isinstance(exc, litellm.RateLimitError)
    assert exc.litellm_response_headers["retry-after"] == "2"


# -- load and the server's own rate limit -------------------------------------------------------


async def test_two_hundred_concurrent_requests() -> None:
    with FakeLLMServer(script=[{"latency_ms": 300, "echo": True}]) as server:
        calls = [ask(server, f"request {i}", timeout=15.0) for i in range(200)]
        # bounded by the wait_for: 200 calls of 300 ms one at a time would take 60 s
        responses = await asyncio.wait_for(asyncio.gather(*calls), timeout=20)
    assert [r.choices[0].message.content for r in responses] == [f"request {i}" for i in range(200)]
    assert server.status_counts == {200: 200}
    # litellm's pooled client opens many connections at once; far from one at a time
    assert server.max_concurrency >= 50, server.max_concurrency


async def test_concurrency_ceiling_answers_429_with_retry_after() -> None:
    with FakeLLMServer(script=[{"latency_ms": 400}], rate_limit={"concurrent": 3}) as server:
        results = await asyncio.wait_for(
            asyncio.gather(*(ask(server) for _ in range(12)), return_exceptions=True), timeout=15
        )
    limited = [r for r in results if isinstance(r, litellm.RateLimitError)]
    ok = [r for r in results if not isinstance(r, BaseException)]
    assert len(ok) + len(limited) == 12
    assert 3 <= len(ok) < 12
    assert limited
    assert all(e.litellm_response_headers["retry-after"] == "1" for e in limited)
    assert server.outcome_counts["rate_limited"] == len(limited)
    assert server.status_counts[429] == len(limited)


async def test_rpm_ceiling_answers_429_until_the_window_passes() -> None:
    with FakeLLMServer(rate_limit={"rpm": 2, "window_s": 60}) as server:
        await ask(server)
        await ask(server)
        with pytest.raises(litellm.RateLimitError) as info:
            await ask(server)
    headers = info.value.litellm_response_headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert [r.outcome for r in server.requests] == ["ok", "ok", "rate_limited"]


# -- the server itself, without litellm ---------------------------------------------------------


def http(url: str, body: Any = None, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    """A stdlib request to the loopback server (`body`: bytes, or an iterable sent chunked)."""
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET", **kw)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_models_stats_and_unknown_paths() -> None:
    with FakeLLMServer() as server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        status, _, body = http(server.base_url + "/models")
        assert status == 200
        ids = {m["id"] for m in json.loads(body)["data"]}
        assert {"gpt-4o-mini", "gpt-4o-mini-2024-07-18"} <= ids
        status, _, body = http(f"http://127.0.0.1:{server.port}/_fake/stats")
        assert (status, json.loads(body)["requests"]) == (200, 0)
        status, _, body = http(server.base_url + "/nope")
        assert status == 404
        assert json.loads(body)["error"]["code"] == "unknown_url"
        status, _, body = http(server.base_url + "/chat/completions", b"{not json")
        assert status == 400
        assert "error" in json.loads(body)


def test_chunked_request_body_and_529_body() -> None:
    payload = json.dumps({"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]})
    pieces = iter([payload[:10].encode(), payload[10:].encode()])
    with FakeLLMServer(script=[{"status": 529}]) as server:
        status, _, body = http(
            server.base_url + "/chat/completions",
            pieces,
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        )
    assert status == 529
    assert json.loads(body)["error"]["type"] == "overloaded_error"
    assert server.requests[0].model == "claude-x"


def test_stop_cuts_hung_connections_promptly() -> None:
    server = FakeLLMServer(script=[{"do": "hang"}]).start()
    request = json.dumps({"model": "m", "messages": []}).encode()
    outcome: list[BaseException] = []

    def hung_client() -> None:
        try:
            http(server.base_url + "/chat/completions", request)
        except OSError as exc:  # what a cut connection looks like to the client
            outcome.append(exc)

    client = threading.Thread(target=hung_client, daemon=True)
    try:
        client.start()
        assert server.wait_for_requests(1, timeout=5)
    finally:
        stopper = threading.Thread(target=server.stop, daemon=True)
        stopper.start()
        stopper.join(timeout=3)  # stop() does not wait for the hung client
    assert not stopper.is_alive()
    client.join(timeout=5)
    assert not client.is_alive()
    assert outcome
    assert isinstance(outcome[0], ConnectionError)


def test_script_errors_are_loud(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        FakeLLMServer(script=[{"staus": 429}])
    with pytest.raises(ValueError, match="'do' must be one of"):
        Rule.parse({"do": "explode"})
    with pytest.raises(ValueError, match="'when'"):
        Rule.parse({"when": {"modle": "x"}})
    with pytest.raises(ValueError, match="'error' must be one of"):
        Rule.parse({"error": "nope"})
    with pytest.raises(ValueError, match="need do: status"):
        Rule.parse({"do": "hang", "retry_after": 1})
    path = tmp_path / "script.json"
    path.write_text(json.dumps({"rules": [{"status": 500}], "rate_limit": {"rpm": 5}}))
    kwargs = load_script_file(path)
    assert kwargs["rate_limit"] == {"rpm": 5}
    assert kwargs["script"] == [{"status": 500}]


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError("no line from the fake-llm process")
    return proc.stdout.readline()


def test_runs_as_a_process(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"times": 1, "status": 429, "retry_after": 7}]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.testing.fake_llm", "--port", "0", "--script", str(script)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = read_line(proc, timeout=10)
        assert line.startswith("fake-llm listening on http://127.0.0.1:")
        base_url = line.split()[-1]
        request = json.dumps({"model": "gpt-4o-mini", "messages": []}).encode()
        first = http(base_url + "/chat/completions", request)
        second = http(base_url + "/chat/completions", request)
        assert (first[0], first[1]["retry-after"]) == (429, "7")
        assert second[0] == 200
        assert json.loads(second[2])["model"] == "gpt-4o-mini-2024-07-18"
        stats = json.loads(http(base_url.removesuffix("/v1") + "/_fake/stats")[2])
        assert stats["status_counts"] == {"200": 1, "429": 1}
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "fake-llm stopping" in out
