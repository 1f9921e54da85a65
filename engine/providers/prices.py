"""Model prices for estimates, from litellm's bundled price table, without importing litellm.

Owns: finding `model_prices_and_context_window_backup.json` inside the installed litellm
package and looking a model up in it, and the estimate of one call, the one the gateway's
budget check makes before a call (`prompt characters // 4 + 256` tokens priced as prompt,
256 as completion: on the high side). Must not: import litellm (about 5 s: `blocks plan`
only reads a file), or reach the network.

A model is looked up as written (`openai/gpt-4o-mini`), then without its provider prefix when
the table names that provider for it (`gpt-4o-mini`, `litellm_provider: openai`). `local/...`
models cost nothing; a model the table does not know has no price (None), and the estimate
says so rather than counting it as free.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any, Final

__all__ = ["ANSWER_TOKENS", "estimate_call_usd", "price_per_token"]

ANSWER_TOKENS: Final = 256
"""Tokens an answer is assumed to take, before one is seen (the budget check assumes it too)."""
_TABLE: Final = "model_prices_and_context_window_backup.json"


@functools.cache
def _table() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return {}
    for folder in spec.submodule_search_locations:
        path = Path(folder) / _TABLE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return {}


def price_per_token(model: str) -> tuple[float, float] | None:
    """(USD per prompt token, USD per completion token) of `model`, or None if unknown."""
    provider, _, name = model.partition("/")
    if provider == "local":
        return 0.0, 0.0
    table = _table()
    for key, want in ((model, None), (name, provider)):
        entry = table.get(key) if key else None
        if not isinstance(entry, dict):
            continue
        if want is not None and entry.get("litellm_provider") != want:
            continue
        prompt, completion = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
        if isinstance(prompt, int | float) and isinstance(completion, int | float):
            return float(prompt), float(completion)
    return None


def estimate_call_usd(model: str, characters: int) -> float | None:
    """The estimated cost of one call of `model` with `characters` of prompt, or None when
    the model has no price."""
    price = price_per_token(model)
    if price is None:
        return None
    return (characters // 4 + ANSWER_TOKENS) * price[0] + ANSWER_TOKENS * price[1]
