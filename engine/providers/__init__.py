"""LLM providers: the one door to litellm.

Owns: importing litellm (on first use, with its price table kept local), calling
`litellm.acompletion` for every model of a flow's routes with the route's params, the `local`
offline provider, the single retry loop for LLM calls (litellm's own retries, and the
provider SDKs', are off), fallback chains, translating litellm's
exceptions into `TransientProviderError` / `PermanentProviderError` once, at this boundary,
and applying circuits, rate limits and budgets around every attempt, each recorded in the
cost ledger. Must not: know about steps, prompts or contracts (`engine.steps.llm` does), or
put provider error text that may quote a key into any message.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from engine.errors import (
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    TransientProviderError,
)
from engine.providers.budget import Budget, BudgetExceeded, Ledger, LedgerEntry
from engine.providers.circuits import CircuitBoard
from engine.providers.ratelimit import RateLimits
from engine.redact import Redactor
from engine.spec import ModelRoute, Retry

__all__ = [
    "LOCAL_MODEL_VERSION",
    "ChatReply",
    "Gateway",
    "key_env_name",
    "local_answered_as",
    "provider_of",
]

LOCAL_MODEL_VERSION = "2026-11-01"
"""The dated version a local model reports as `response.model`, so locks can pin it. Kept
here, not in `engine.providers.local`, so that a lock can read it without importing litellm."""


def local_answered_as(model: str) -> str:
    """The model name the offline provider answers `local/NAME` with: `local/NAME-<version>`."""
    return f"local/{model.rsplit('/', maxsplit=1)[-1]}-{LOCAL_MODEL_VERSION}"


_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "groq": "GROQ_API_KEY",
    "cohere": "COHERE_API_KEY",
    "azure": "AZURE_API_KEY",
    "bedrock": "AWS_ACCESS_KEY_ID",
    "together_ai": "TOGETHERAI_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "xai": "XAI_API_KEY",
}
_DEFAULT_RETRY = Retry(attempts=3, initial=1.0, max=20.0)
_SPEND_LIMIT = (
    "insufficient_quota",
    "exceeded your current quota",
    "spend limit",
    "billing",
    "credit balance",
)


def provider_of(model: str) -> str:
    """`anthropic/claude-...` -> `anthropic`; a bare OpenAI model name -> `openai`."""
    return model.split("/", 1)[0] if "/" in model else "openai"


def key_env_name(provider: str) -> str:
    return _KEY_ENV.get(provider, f"{provider.upper()}_API_KEY")


_LITELLM: Any = None


def _litellm() -> Any:
    """Import litellm once, offline: its price table from the package, never the network."""
    global _LITELLM  # noqa: PLW0603  (one import per process, like any module)
    if _LITELLM is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm  # noqa: PLC0415  (~5 s: only runs with llm steps pay it)

        from engine.providers.local import LocalLLM  # noqa: PLC0415

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        litellm.custom_provider_map = [
            *[p for p in (litellm.custom_provider_map or []) if p.get("provider") != "local"],
            {"provider": "local", "custom_handler": LocalLLM()},
        ]
        _LITELLM = litellm
    return _LITELLM


@dataclass(frozen=True, slots=True)
class ChatReply:
    content: str
    finish_reason: str
    route: str
    model_asked: str
    model_answered: str
    fingerprint: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_s: float


Sleep = Callable[[float], Awaitable[None]]


class Gateway:
    """Every LLM call of one run goes through here: routes, circuits, limits, budget, ledger."""

    def __init__(
        self,
        routes: Mapping[str, ModelRoute],
        *,
        circuits: CircuitBoard,
        limits: RateLimits,
        budget: Budget,
        ledger: Ledger,
        redactor: Redactor,
        sleep: Sleep = anyio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.routes = dict(routes)
        self.circuits = circuits
        self.limits = limits
        self.budget = budget
        self.ledger = ledger
        self.redactor = redactor
        self._sleep = sleep
        self._clock = clock
        self._route_budgets: dict[str, Budget] = {}
        # (model, estimated tokens) -> estimated USD: litellm prices a call in ~0.5 ms of CPU,
        # and a fan-out asks the same question for every item (and twice per call)
        self._prices: dict[tuple[str, int], float] = {}

    def route_budget(self, route_name: str) -> Budget:
        """The budget calls through `route_name` spend: the route's own `budget_usd` nested
        in the run's budget, or the run's budget itself."""
        if route_name not in self._route_budgets:
            route = self.routes[route_name]
            self._route_budgets[route_name] = (
                self.budget.child(route.budget_usd, None, f"route '{route_name}'")
                if route.budget_usd is not None
                else self.budget
            )
        return self._route_budgets[route_name]

    def step_budget(
        self, route_name: str, usd: float | None, tokens: int | None, name: str
    ) -> Budget:
        """A step's own budget, nested in its route's (and so in the run's)."""
        route = self.route_budget(route_name)
        if usd is None and tokens is None:
            return route
        key = f"{route_name}\0{name}"
        if key not in self._route_budgets:  # one budget per step, shared by its samples
            self._route_budgets[key] = route.child(usd, tokens, name)
        return self._route_budgets[key]

    async def chat(
        self,
        route_name: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        step: str,
        instance: str,
        sample: int = 0,
        schema: Mapping[str, Any] | None = None,
        budget: Budget | None = None,
        deadline: float | None = None,
    ) -> ChatReply:
        """One answer from `route_name`: retries transient failures, then walks fallbacks.

        Raises `PermanentProviderError` at once for 400 / 401 / spend limits / refusals and
        budget refusals; `TransientProviderError` when every model of the chain gave out.
        """
        route = self.routes[route_name]
        spend = budget or self.route_budget(route_name)
        chain = [route.model, *route.fallbacks]
        last: ProviderError | None = None
        for model in chain:
            provider = provider_of(model)
            try:
                # the budget first: a refusal must not use up a half-open circuit's one trial
                tokens = _estimate_tokens(messages)
                spend.check(self._estimate_usd(model, tokens), tokens)
                if not self.circuits.allow(provider):
                    self._ledger(
                        step,
                        instance,
                        sample,
                        route_name,
                        model,
                        outcome="circuit_open",
                        error=f"circuit for {provider} is open",
                    )
                    last = TransientProviderError(f"circuit for {provider} is open")
                    continue
                return await self._with_retries(
                    route,
                    route_name,
                    model,
                    messages,
                    step=step,
                    instance=instance,
                    sample=sample,
                    schema=schema,
                    budget=spend,
                    deadline=deadline,
                )
            except BudgetExceeded:
                if route.degrade_to and route.degrade_to != route_name:
                    return await self.chat(
                        route.degrade_to,
                        messages,
                        step=step,
                        instance=instance,
                        sample=sample,
                        schema=schema,
                        deadline=deadline,
                    )
                raise
            except TransientProviderError as exc:
                last = exc
        assert last is not None
        raise TransientProviderError(
            f"every model of route '{route_name}' failed ({', '.join(chain)}); last: {last}"
        )

    async def _with_retries(
        self,
        route: ModelRoute,
        route_name: str,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        step: str,
        instance: str,
        sample: int,
        schema: Mapping[str, Any] | None,
        budget: Budget,
        deadline: float | None,
    ) -> ChatReply:
        retry = route.retry or _DEFAULT_RETRY
        provider = provider_of(model)
        estimate_tokens = _estimate_tokens(messages)
        for attempt in range(1, retry.attempts + 1):
            budget.check(self._estimate_usd(model, estimate_tokens), estimate_tokens)
            await self.limits.limiter(provider).acquire(estimate_tokens)
            started = self._clock()
            try:
                reply = await self._call(route, route_name, model, messages, schema, deadline)
            except TransientProviderError as exc:
                if not isinstance(exc, RateLimitedError):  # throttled is not down
                    self.circuits.record_failure(provider)
                if exc.retry_after:
                    self.limits.limiter(provider).penalize(exc.retry_after)
                self._ledger(
                    step,
                    instance,
                    sample,
                    route_name,
                    model,
                    outcome="transient",
                    error=str(exc),
                    latency=self._clock() - started,
                )
                delay = _backoff(retry, attempt, exc.retry_after)
                out_of_time = deadline is not None and self._clock() + delay >= deadline
                if attempt == retry.attempts or out_of_time:
                    raise
                await self._sleep(delay)
                continue
            except PermanentProviderError as exc:
                self._ledger(
                    step,
                    instance,
                    sample,
                    route_name,
                    model,
                    outcome="permanent",
                    error=str(exc),
                    latency=self._clock() - started,
                )
                raise
            self.circuits.record_success(provider)
            budget.spend(reply.cost_usd, reply.prompt_tokens + reply.completion_tokens)
            self.ledger.append(
                LedgerEntry(
                    step=step,
                    instance=instance,
                    sample=sample,
                    route=route_name,
                    model_asked=model,
                    model_answered=self.redactor.text(reply.model_answered),
                    system_fingerprint=(
                        self.redactor.text(reply.fingerprint) if reply.fingerprint else None
                    ),
                    prompt_tokens=reply.prompt_tokens,
                    completion_tokens=reply.completion_tokens,
                    cost_usd=reply.cost_usd,
                    latency_s=reply.latency_s,
                    outcome="ok",
                )
            )
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def _estimate_usd(self, model: str, tokens: int) -> float:
        if provider_of(model) == "local":
            return 0.0
        key = (model, tokens)
        price = self._prices.get(key)
        if price is None:
            try:
                prompt_cost, completion_cost = _litellm().cost_per_token(
                    model=model, prompt_tokens=tokens, completion_tokens=256
                )
                price = float(prompt_cost + completion_cost)
            except Exception:
                price = 0.0
            if len(self._prices) >= 4096:  # distinct prompt lengths: keep it bounded
                self._prices.clear()
            self._prices[key] = price
        return price

    async def _call(
        self,
        route: ModelRoute,
        route_name: str,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        schema: Mapping[str, Any] | None,
        deadline: float | None,
    ) -> ChatReply:
        kwargs: dict[str, Any] = {}
        if schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": dict(schema), "strict": False},
            }
        timeout = route.timeout or 60.0
        limit = timeout + 1.0  # litellm's own timeout should fire first
        if deadline is not None and deadline - self._clock() < timeout:
            # the run's deadline comes first: our cancel scope ends the call. The timeout
            # given to litellm stays the route's, so its cached HTTP client is reused (the
            # timeout is part of that cache's key: one per deadline would mean one per call)
            limit = timeout = max(0.001, deadline - self._clock())
        started = self._clock()
        try:
            with anyio.fail_after(limit):
                # litellm directly, not its Router: retries, fallbacks, circuits and rate
                # limits are ours, and the Router's own per-call bookkeeping (deployment
                # lookup, usage counters, a deep copy of the model's price entry) cost
                # more CPU than everything else the gateway does (docs/benchmarks.md)
                response = await _litellm().acompletion(
                    **{
                        **route.params,
                        "model": model,
                        "messages": list(messages),
                        "timeout": route.timeout or 60.0,
                        "num_retries": 0,  # the one retry loop is ours: see `chat`
                        "max_retries": 0,  # and the provider SDK's (openai's default is 2)
                        **kwargs,
                    }
                )
        except TimeoutError:
            raise TransientProviderError(f"{model} did not answer within {timeout:g}s") from None
        except Exception as exc:
            raise _translate(exc, model, self.redactor) from None
        choice = response.choices[0]
        usage = getattr(response, "usage", None)
        hidden = getattr(response, "_hidden_params", {}) or {}
        return ChatReply(
            content=str(choice.message.content or ""),
            finish_reason=str(choice.finish_reason or ""),
            route=route_name,
            model_asked=model,
            model_answered=str(getattr(response, "model", "") or model),
            fingerprint=getattr(response, "system_fingerprint", None),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            cost_usd=float(hidden.get("response_cost") or 0.0),
            latency_s=self._clock() - started,
        )

    def _ledger(
        self,
        step: str,
        instance: str,
        sample: int,
        route: str,
        model: str,
        *,
        outcome: str,
        error: str | None = None,
        latency: float = 0.0,
    ) -> None:
        self.ledger.append(
            LedgerEntry(
                step=step,
                instance=instance,
                sample=sample,
                route=route,
                model_asked=model,
                outcome=outcome,
                error=self.redactor.text(error) if error else None,
                latency_s=latency,
            )
        )


def _estimate_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Roughly four characters a token, plus room for the answer: a budget check, not a bill."""
    return sum(len(str(m.get("content", ""))) for m in messages) // 4 + 256


def _backoff(retry: Retry, attempt: int, retry_after: float | None) -> float:
    delay = retry.base_delay(attempt)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def _status(exc: Exception) -> int | None:
    for attr in ("status_code", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
    response = getattr(exc, "response", None)
    value = getattr(response, "status_code", None)
    return value if isinstance(value, int) else None


def _retry_after(exc: Exception) -> float | None:
    for holder in (
        getattr(exc, "litellm_response_headers", None),
        getattr(getattr(exc, "response", None), "headers", None),
    ):
        if holder is None:
            continue
        try:
            value = holder.get("retry-after") or holder.get("Retry-After")
        except AttributeError:
            continue
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except (TypeError, ValueError):
            return None
    return None


def _translate(exc: Exception, model: str, redactor: Redactor) -> ProviderError:
    """The one place litellm's exceptions become ours. Auth messages never quote the
    provider (some echo part of the key): they name the environment variable only."""
    provider = provider_of(model)
    status = _status(exc)
    name = type(exc).__name__
    text = redactor.text(str(getattr(exc, "message", "") or exc))[:300]
    if status in (401, 403) or name in ("AuthenticationError", "PermissionDeniedError"):
        return PermanentProviderError(
            f"{provider} rejected the API key in {key_env_name(provider)} (HTTP {status or 401}); "
            f"check that variable"
        )
    if status == 429 or name == "RateLimitError":
        body = getattr(exc, "body", None)
        code = str(body.get("code", "")) if isinstance(body, Mapping) else ""
        if code == "insufficient_quota" or any(m in text.lower() for m in _SPEND_LIMIT):
            return PermanentProviderError(
                f"{provider} refused {model}: spend limit or quota reached for the key in "
                f"{key_env_name(provider)} (HTTP 429)"
            )
        return RateLimitedError(
            f"{model} is rate limited (HTTP 429)", retry_after=_retry_after(exc)
        )
    if name in ("ContentPolicyViolationError",) or "content_filter" in text:
        return PermanentProviderError(f"{model} refused the request (content policy)")
    if name == "Timeout" or status == 408:
        return TransientProviderError(f"{model} timed out")
    if name in ("APIConnectionError",) or (status is None and "connect" in text.lower()):
        return TransientProviderError(f"cannot reach {model}: {text}")
    if status is not None and (status >= 500 or status == 529):
        return TransientProviderError(
            f"{model} failed with HTTP {status}: {text}", retry_after=_retry_after(exc)
        )
    if name in ("InternalServerError", "ServiceUnavailableError", "APIError"):
        return TransientProviderError(f"{model} failed: {name}: {text}")
    return PermanentProviderError(f"{model} refused the request ({name}, HTTP {status}): {text}")
