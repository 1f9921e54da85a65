"""Spending limits of a run and its steps, and the ledger of every provider attempt.

Owns: `Budget` (limits in USD and tokens, nested run -> step -> ..., checked against an
estimate before a call and charged with the actuals after it), `BudgetExceeded`, and
`Ledger`, the append-only record of attempts with its totals.
Must not: price a call or count its tokens (the caller estimates before and reads the
provider's usage after), retry, wait, or import litellm. Nothing here does I/O.

Enforcement, as the caller uses it::

    budget.check(estimate_usd, estimate_tokens)   # raises BudgetExceeded: do not call
    ... the call ...
    budget.spend(actual_usd, actual_tokens)       # always, even when it overshoots

`check` refuses when spent + estimate would go over a limit, at this budget or any budget
it is nested in. `spend` never refuses: the money is gone, so it is recorded, and if the
actual overshot the limit the next `check` fails. Concurrent calls each pass `check`
before any of them spends; callers that fan out use `reserve` instead, which checks and
holds the estimate until the call settles, so that N calls in flight cannot together pass a
limit that each alone would fit.

`BudgetExceeded` subclasses `engine.errors.PermanentProviderError` (a `ProviderError`):
retrying cannot make money appear, and callers that classify by the error tree get that
for free. It is raised before any provider is contacted.

Money is counted in integer nanodollars, so thousands of small charges add up exactly and a
budget spent to the cent is not refused by float rounding; the API speaks float USD.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, Self

from engine.errors import PermanentProviderError

__all__ = ["Budget", "BudgetExceeded", "Ledger", "LedgerEntry", "Remaining", "Reservation"]

_NANO: Final = 1_000_000_000  # nanodollars per dollar

Unit = Literal["usd", "tokens"]


def _nano(usd: float, what: str) -> int:
    if not math.isfinite(usd) or usd < 0:
        raise ValueError(f"{what} must be a finite, non-negative amount of USD, not {usd!r}")
    return round(usd * _NANO)


def _count(tokens: int, what: str) -> int:
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"{what} must be a non-negative integer, not {tokens!r}")
    return tokens


def _show(amount: int, unit: Unit) -> str:
    if unit == "tokens":
        return f"{amount:,} tokens"
    usd = amount / _NANO
    if usd == 0 or abs(usd) >= 0.01:
        return f"${usd:,.2f}"
    return "$" + f"{usd:.9f}".rstrip("0")  # sub-cent amounts would all read $0.00


class BudgetExceeded(PermanentProviderError):
    """A call would take a budget over its limit. Permanent: never retry it.

    `budget` is the name of the budget that refused (the step's or an enclosing one),
    `unit` "usd" or "tokens"; `limit`, `spent`, `in_flight` (held by reservations) and
    `estimate` are in that unit (USD as float, tokens as int).
    """

    def __init__(
        self,
        *,
        budget: str,
        unit: Unit,
        limit: int,
        spent: int,
        in_flight: int,
        estimate: int,
    ) -> None:
        scale = _NANO if unit == "usd" else 1
        self.budget = budget
        self.unit: Unit = unit
        self.limit: float = limit / scale if unit == "usd" else limit
        self.spent: float = spent / scale if unit == "usd" else spent
        self.in_flight: float = in_flight / scale if unit == "usd" else in_flight
        self.estimate: float = estimate / scale if unit == "usd" else estimate
        message = (
            f"{budget} budget {_show(limit, unit)} would be exceeded: "
            f"spent {_show(spent, unit)}, this call ~{_show(estimate, unit)}"
        )
        if in_flight:
            message += f", {_show(in_flight, unit)} held by calls in flight"
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Remaining:
    """What is left before the tightest enclosing limit (None: no limit; never negative)."""

    usd: float | None
    tokens: int | None


class Budget:
    """Limits in USD and tokens (None: unlimited), named for messages ("run", "step x").

    `name` is the noun before "budget" in `BudgetExceeded`'s message.
    """

    def __init__(self, usd: float | None, tokens: int | None, *, name: str) -> None:
        self.name = name
        self._limit_usd = None if usd is None else _nano(usd, "a USD limit")
        self._limit_tokens = None if tokens is None else _count(tokens, "a token limit")
        self.parent: Budget | None = None
        self._spent_usd = 0
        self._spent_tokens = 0
        self._held_usd = 0  # estimates of reserved calls still in flight
        self._held_tokens = 0

    # ---- state ------------------------------------------------------------------------

    @property
    def limit_usd(self) -> float | None:
        return None if self._limit_usd is None else self._limit_usd / _NANO

    @property
    def limit_tokens(self) -> int | None:
        return self._limit_tokens

    @property
    def spent_usd(self) -> float:
        return self._spent_usd / _NANO

    @property
    def spent_tokens(self) -> int:
        return self._spent_tokens

    def remaining(self) -> Remaining:
        """What may still be spent here, the tightest of this budget and its parents."""
        usd: int | None = None
        tokens: int | None = None
        for budget in self._chain():
            if budget._limit_usd is not None:
                left = budget._limit_usd - budget._spent_usd - budget._held_usd
                usd = left if usd is None else min(usd, left)
            if budget._limit_tokens is not None:
                left = budget._limit_tokens - budget._spent_tokens - budget._held_tokens
                tokens = left if tokens is None else min(tokens, left)
        return Remaining(
            usd=None if usd is None else max(0, usd) / _NANO,
            tokens=None if tokens is None else max(0, tokens),
        )

    # ---- enforcement ------------------------------------------------------------------

    def check(self, estimate_usd: float, estimate_tokens: int) -> None:
        """Raise `BudgetExceeded` if spending the estimate would pass any enclosing limit."""
        self._check(_nano(estimate_usd, "estimate_usd"), _count(estimate_tokens, "estimate_tokens"))

    def spend(self, usd: float, tokens: int) -> None:
        """Record what a call actually cost, here and in every enclosing budget."""
        nano, count = _nano(usd, "usd"), _count(tokens, "tokens")
        for budget in self._chain():
            budget._spent_usd += nano
            budget._spent_tokens += count

    def reserve(self, estimate_usd: float, estimate_tokens: int) -> Reservation:
        """`check`, then hold the estimate until the returned reservation is settled.

        Use it as a context manager around the call and `settle` it with the actuals; one
        left without `settle` (the call raised) releases its hold on exit.
        """
        nano = _nano(estimate_usd, "estimate_usd")
        count = _count(estimate_tokens, "estimate_tokens")
        self._check(nano, count)
        self._hold(nano, count)
        return Reservation(self, nano, count)

    def child(self, usd: float | None, tokens: int | None, name: str) -> Budget:
        """A budget nested in this one: checks and spends count here too."""
        child = Budget(usd, tokens, name=name)
        child.parent = self
        return child

    def _chain(self) -> Iterator[Budget]:
        budget: Budget | None = self
        while budget is not None:
            yield budget
            budget = budget.parent

    def _check(self, nano: int, count: int) -> None:
        # Innermost first: the message names the step's budget when that is the one short.
        for budget in self._chain():
            limits: tuple[tuple[Unit, int | None, int, int, int], ...] = (
                ("usd", budget._limit_usd, budget._spent_usd, budget._held_usd, nano),
                ("tokens", budget._limit_tokens, budget._spent_tokens, budget._held_tokens, count),
            )
            for unit, limit, spent, held, estimate in limits:
                if limit is not None and spent + held + estimate > limit:
                    raise BudgetExceeded(
                        budget=budget.name,
                        unit=unit,
                        limit=limit,
                        spent=spent,
                        in_flight=held,
                        estimate=estimate,
                    )

    def _hold(self, nano: int, count: int) -> None:
        for budget in self._chain():
            budget._held_usd += nano
            budget._held_tokens += count


class Reservation:
    """An estimate held against a budget (and its parents) while its call is in flight."""

    def __init__(self, budget: Budget, nano: int, count: int) -> None:
        self.budget = budget
        self._nano = nano
        self._count = count
        self._open = True

    def settle(self, usd: float, tokens: int) -> None:
        """Release the hold and spend the actuals (which may differ from the estimate)."""
        self.release()
        self.budget.spend(usd, tokens)

    def release(self) -> None:
        """Drop the hold without spending (the call cost nothing). Idempotent."""
        if self._open:
            self._open = False
            self.budget._hold(-self._nano, -self._count)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


# ---- the ledger -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerEntry:
    """One attempt at a provider call, successful or not.

    `route` is the route or fallback entry the attempt went through; `model_answered` and
    `system_fingerprint` are what the provider reported (None when it never answered).
    `outcome` is the caller's word for how it ended ("ok", "transient", "permanent",
    "budget", "circuit_open", "cancelled", ...) and `error` its message when not ok.
    """

    step: str
    instance: str | None = None
    sample: int = 0
    route: str
    model_asked: str
    model_answered: str | None = None
    system_fingerprint: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    outcome: str
    error: str | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def model(self) -> str:
        """The model that answered, or the one asked for when none did."""
        return self.model_answered or self.model_asked


class Ledger:
    """Append-only list of `LedgerEntry`, with totals. JSON-able through `as_dicts`."""

    def __init__(self) -> None:
        self._entries: list[LedgerEntry] = []
        self._by_instance: dict[str | None, list[LedgerEntry]] = {}

    def append(self, entry: LedgerEntry) -> None:
        self._entries.append(entry)
        self._by_instance.setdefault(entry.instance, []).append(entry)

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return tuple(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[LedgerEntry]:
        return iter(tuple(self._entries))

    def total_usd(self) -> float:
        return math.fsum(e.cost_usd for e in self._entries)

    def total_tokens(self) -> int:
        return sum(e.tokens for e in self._entries)

    def by_model(self) -> dict[str, dict[str, Any]]:
        """Per model (answered, else asked): attempts, prompt/completion tokens, cost_usd."""
        costs: dict[str, list[float]] = defaultdict(list)
        totals: dict[str, dict[str, Any]] = {}
        for e in self._entries:
            row = totals.setdefault(
                e.model, {"attempts": 0, "prompt_tokens": 0, "completion_tokens": 0}
            )
            row["attempts"] += 1
            row["prompt_tokens"] += e.prompt_tokens
            row["completion_tokens"] += e.completion_tokens
            costs[e.model].append(e.cost_usd)
        for model, row in totals.items():
            row["cost_usd"] = math.fsum(costs[model])
        return dict(sorted(totals.items()))

    def as_dicts(self) -> list[dict[str, Any]]:
        return [_row(e) for e in self._entries]

    def instance_dicts(self, instance: str | None, start: int = 0) -> list[dict[str, Any]]:
        """`as_dicts` of the attempts of one step instance, in order, from its `start`-th
        (`instance_count` before a step attempt: the ones that attempt made). Indexed: each
        step of a 1,000-item fan-out reading its own attempts must not convert the run's."""
        return [_row(e) for e in self._by_instance.get(instance, ())[start:]]

    def instance_count(self, instance: str | None) -> int:
        return len(self._by_instance.get(instance, ()))


_FIELDS: Final = tuple(f.name for f in dataclasses.fields(LedgerEntry))


def _row(entry: LedgerEntry) -> dict[str, Any]:
    # What dataclasses.asdict gives, without its recursive deep copy: every field holds a
    # str, a number or None, which are immutable.
    return {name: getattr(entry, name) for name in _FIELDS}
