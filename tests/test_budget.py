"""Budgets (run and step, USD and tokens) and the attempt ledger. Pure: no I/O, no clock."""

from __future__ import annotations

import json

import pytest

from engine.errors import PermanentProviderError, ProviderError
from engine.providers.budget import (
    Budget,
    BudgetExceeded,
    Ledger,
    LedgerEntry,
    Remaining,
)


def left(budget: Budget) -> tuple[float | None, int | None]:
    remaining = budget.remaining()
    return remaining.usd, remaining.tokens


# ---- a single budget --------------------------------------------------------------------


def test_budget_exceeded_is_a_permanent_provider_error() -> None:
    assert issubclass(BudgetExceeded, PermanentProviderError)
    assert issubclass(BudgetExceeded, ProviderError)


def test_check_passes_within_the_limit_and_refuses_past_it() -> None:
    run = Budget(1.50, None, name="run")
    run.spend(1.43, 1000)
    run.check(0.07, 10)  # exactly to the limit is allowed
    with pytest.raises(BudgetExceeded) as info:
        run.check(0.12, 10)
    assert str(info.value) == "run budget $1.50 would be exceeded: spent $1.43, this call ~$0.12"
    assert (info.value.budget, info.value.unit) == ("run", "usd")
    assert info.value.limit == pytest.approx(1.50)
    assert info.value.spent == pytest.approx(1.43)
    assert info.value.estimate == pytest.approx(0.12)


def test_token_limit() -> None:
    run = Budget(None, 10_000, name="run")
    run.spend(0.0, 9_500)
    run.check(0.0, 500)
    with pytest.raises(
        BudgetExceeded,
        match=r"run budget 10,000 tokens would be exceeded: "
        r"spent 9,500 tokens, this call ~501 tokens",
    ):
        run.check(0.0, 501)


def test_unlimited_budget_never_refuses() -> None:
    run = Budget(None, None, name="run")
    run.spend(1e6, 10**12)
    run.check(1e6, 10**12)
    assert run.remaining() == Remaining(usd=None, tokens=None)


def test_overshoot_is_recorded_then_the_next_check_refuses() -> None:
    run = Budget(1.00, 1000, name="run")
    run.check(0.10, 100)
    run.spend(1.25, 1200)  # the call cost more than estimated, and more than was left
    assert run.spent_usd == pytest.approx(1.25)
    assert run.spent_tokens == 1200
    assert run.remaining() == Remaining(usd=0.0, tokens=0)  # never negative
    with pytest.raises(BudgetExceeded):
        run.check(0.0, 0)  # even a free call: the budget is already over
    with pytest.raises(BudgetExceeded):
        run.check(0.01, 0)


def test_many_small_charges_add_up_exactly() -> None:
    # 0.1 + 0.2 > 0.3 in floats; a budget of $0.30 must still take three $0.10 calls.
    run = Budget(0.30, None, name="run")
    for _ in range(3):
        run.check(0.10, 0)
        run.spend(0.10, 0)
    with pytest.raises(BudgetExceeded):
        run.check(0.000000001, 0)
    tiny = Budget(1.0, None, name="run")
    for _ in range(100_000):
        tiny.spend(0.00001, 0)
    assert tiny.remaining().usd == 0.0
    tiny.check(0.0, 0)


def test_sub_cent_amounts_show_in_messages() -> None:
    run = Budget(0.001, None, name="run")
    with pytest.raises(BudgetExceeded, match=r"this call ~\$0\.0015$"):
        run.check(0.0015, 0)


@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf")])
def test_bad_amounts_are_rejected(bad: float) -> None:
    run = Budget(1.0, 100, name="run")
    with pytest.raises(ValueError, match="USD"):
        run.check(bad, 0)
    with pytest.raises(ValueError, match="USD"):
        run.spend(bad, 0)


def test_bad_token_counts_are_rejected() -> None:
    run = Budget(1.0, 100, name="run")
    with pytest.raises(ValueError, match="estimate_tokens"):
        run.check(0.0, -1)
    with pytest.raises(ValueError, match="tokens"):
        run.spend(0.0, -1)
    with pytest.raises(ValueError, match="token limit"):
        Budget(None, -5, name="run")


# ---- nesting ------------------------------------------------------------------------------


def test_spending_in_a_step_spends_in_the_run() -> None:
    run = Budget(2.00, 5000, name="run")
    step = run.child(1.00, None, "step summarize")
    step.spend(0.40, 1000)
    assert (step.spent_usd, step.spent_tokens) == pytest.approx((0.40, 1000))
    assert (run.spent_usd, run.spent_tokens) == pytest.approx((0.40, 1000))
    other = run.child(None, None, "step judge")
    other.spend(0.10, 10)
    assert run.spent_usd == pytest.approx(0.50)
    assert step.spent_usd == pytest.approx(0.40)  # siblings do not see each other


def test_the_step_limit_refuses_first_and_is_named() -> None:
    run = Budget(2.00, None, name="run")
    step = run.child(0.50, None, "step summarize")
    step.spend(0.45, 0)
    with pytest.raises(BudgetExceeded, match=r"^step summarize budget \$0\.50") as info:
        step.check(0.10, 0)
    assert info.value.budget == "step summarize"
    run.check(0.10, 0)  # the run itself has room


def test_checking_a_step_checks_the_run() -> None:
    run = Budget(1.00, 1000, name="run")
    a = run.child(0.80, None, "step a")
    b = run.child(0.80, None, "step b")
    a.spend(0.70, 0)
    b.check(0.30, 0)
    with pytest.raises(BudgetExceeded, match=r"^run budget \$1\.00 .* spent \$0\.70") as info:
        b.check(0.31, 0)  # b has 0.80 of its own, but the run only 0.30
    assert info.value.budget == "run"
    with pytest.raises(BudgetExceeded, match="run budget 1,000 tokens"):
        b.check(0.0, 1001)  # the step has no token limit; the run does


def test_remaining_is_the_tightest_enclosing_limit() -> None:
    run = Budget(1.00, 1000, name="run")
    step = run.child(0.50, 5000, "step x")
    assert step.remaining() == Remaining(usd=0.50, tokens=1000)
    run.child(None, None, "step y").spend(0.80, 100)
    assert left(step) == pytest.approx((0.20, 900))
    assert left(run) == pytest.approx((0.20, 900))


def test_three_levels() -> None:
    run = Budget(1.00, None, name="run")
    step = run.child(None, None, "step s")
    sample = step.child(0.30, None, "sample 2")
    sample.spend(0.25, 0)
    assert run.spent_usd == pytest.approx(0.25)
    with pytest.raises(BudgetExceeded, match=r"^sample 2 budget"):
        sample.check(0.10, 0)


# ---- reservations (calls in flight) ------------------------------------------------------


def test_reservations_hold_estimates_of_calls_in_flight() -> None:
    run = Budget(1.00, None, name="run")
    step = run.child(None, None, "step fan")
    held = [step.reserve(0.30, 0) for _ in range(3)]  # 0.90 in flight
    with pytest.raises(BudgetExceeded, match=r"\$0\.90 held by calls in flight") as info:
        step.reserve(0.30, 0)  # check alone would pass: nothing is spent yet
    assert info.value.in_flight == pytest.approx(0.90)
    assert run.remaining().usd == pytest.approx(0.10)
    held[0].settle(0.10, 50)  # cheaper than estimated: frees the difference
    assert run.spent_usd == pytest.approx(0.10)
    assert run.remaining().usd == pytest.approx(0.30)
    step.reserve(0.30, 0).release()
    with held[1]:
        pass  # a call that raised: leaving the block releases its hold
    held[1].release()  # idempotent
    assert run.remaining().usd == pytest.approx(0.60)


def test_a_settled_reservation_is_not_released_twice() -> None:
    run = Budget(1.00, 100, name="run")
    with run.reserve(0.50, 50) as r:
        r.settle(0.50, 50)
    assert left(run) == pytest.approx((0.50, 50))


# ---- the ledger -----------------------------------------------------------------------------


def _entry(**kw: object) -> LedgerEntry:
    fields: dict[str, object] = {
        "step": "summarize",
        "route": "primary",
        "model_asked": "gpt-4o-mini",
        "outcome": "ok",
    }
    fields.update(kw)
    return LedgerEntry(**fields)  # type: ignore[arg-type]


def test_ledger_totals_and_by_model() -> None:
    ledger = Ledger()
    ledger.append(
        _entry(
            model_answered="gpt-4o-mini-2024-07-18",
            prompt_tokens=100,
            completion_tokens=20,
            cost_usd=0.1,
        )
    )
    ledger.append(
        _entry(
            model_answered="gpt-4o-mini-2024-07-18",
            prompt_tokens=50,
            completion_tokens=5,
            cost_usd=0.2,
        )
    )
    ledger.append(
        _entry(
            model_asked="claude-3-5-haiku",
            outcome="transient",
            error="529 overloaded",
            latency_s=1.5,
        )
    )
    assert len(ledger) == 3
    assert ledger.total_usd() == pytest.approx(0.3)
    assert ledger.total_tokens() == 175
    assert ledger.by_model() == {
        "claude-3-5-haiku": {
            "attempts": 1,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": 0.0,
        },
        "gpt-4o-mini-2024-07-18": {
            "attempts": 2,
            "prompt_tokens": 150,
            "completion_tokens": 25,
            "cost_usd": pytest.approx(0.3),
        },
    }


def test_ledger_is_append_only_and_json_able() -> None:
    ledger = Ledger()
    entry = _entry(instance="region=eu", sample=2, system_fingerprint="fp_1", cost_usd=0.01)
    ledger.append(entry)
    with pytest.raises(AttributeError):
        entry.cost_usd = 0.0  # type: ignore[misc]
    assert isinstance(ledger.entries, tuple)
    rows = ledger.as_dicts()
    assert json.loads(json.dumps(rows)) == rows
    assert rows[0] == {
        "step": "summarize",
        "instance": "region=eu",
        "sample": 2,
        "route": "primary",
        "model_asked": "gpt-4o-mini",
        "model_answered": None,
        "system_fingerprint": "fp_1",
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost_usd": 0.01,
        "latency_s": 0.0,
        "outcome": "ok",
        "error": None,
    }
    assert [e.step for e in ledger] == ["summarize"]


def test_empty_ledger() -> None:
    ledger = Ledger()
    assert (ledger.total_usd(), ledger.total_tokens(), ledger.by_model()) == (0.0, 0, {})
    assert ledger.as_dicts() == []
