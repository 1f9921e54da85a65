"""A linear softmax policy over the four actions, trained by plain SGD.

Features are the goal's offset from the walker, scaled to [-1, 1]. The expert moves along
the axis with the larger offset, which a linear policy without a bias can represent; a bias
would only let the few mis-recorded actions shift the decision boundaries off the diagonals.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from examples.bc_anneal.data import ACTIONS, GRID

__all__ = [
    "Policy",
    "accuracy",
    "features",
    "load",
    "mean_loss",
    "predict",
    "save",
    "sgd_epoch",
    "zeros",
]

Policy = list[list[float]]
"""One weight row per action, one weight per feature."""

N_FEATURES = 2


def features(row: dict[str, Any]) -> tuple[float, float]:
    """The goal's offset from the walker, scaled to [-1, 1]."""
    scale = GRID - 1
    return ((row["goal_x"] - row["x"]) / scale, (row["goal_y"] - row["y"]) / scale)


def zeros() -> Policy:
    return [[0.0] * N_FEATURES for _ in ACTIONS]


def _probabilities(policy: Policy, x: Sequence[float]) -> list[float]:
    scores = [sum(w * f for w, f in zip(row, x, strict=True)) for row in policy]
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def predict(policy: Policy, row: dict[str, Any]) -> str:
    probs = _probabilities(policy, features(row))
    return ACTIONS[probs.index(max(probs))]


def accuracy(policy: Policy, rows: list[dict[str, Any]]) -> float:
    """Share of rows whose demonstrated action the policy picks."""
    if not rows:
        raise ValueError("no rows to score")
    return sum(predict(policy, r) == r["action"] for r in rows) / len(rows)


def mean_loss(policy: Policy, rows: list[dict[str, Any]]) -> float:
    """Mean cross-entropy of the demonstrated actions."""
    if not rows:
        raise ValueError("no rows to score")
    total = 0.0
    for row in rows:
        probs = _probabilities(policy, features(row))
        total -= math.log(max(probs[ACTIONS.index(row["action"])], 1e-12))
    return total / len(rows)


def sgd_epoch(
    policy: Policy, rows: list[dict[str, Any]], learning_rate: float, rng: random.Random
) -> Policy:
    """One pass over `rows` in a shuffled order; returns the updated policy (a new list)."""
    weights = [list(row) for row in policy]
    order = list(range(len(rows)))
    rng.shuffle(order)
    for i in order:
        x = features(rows[i])
        probs = _probabilities(weights, x)
        target = ACTIONS.index(rows[i]["action"])
        for a, w_row in enumerate(weights):
            grad = probs[a] - (1.0 if a == target else 0.0)
            for j in range(N_FEATURES):
                w_row[j] -= learning_rate * grad * x[j]
    return weights


def save(policy: Policy, path: str, **meta: Any) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {"actions": list(ACTIONS), "weights": policy, **meta}
    out.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load(path: str) -> Policy:
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    if document.get("actions") != list(ACTIONS):
        raise ValueError(f"{path} was trained for actions {document.get('actions')}")
    weights = document["weights"]
    if len(weights) != len(ACTIONS) or any(len(r) != N_FEATURES for r in weights):
        raise ValueError(f"{path} does not hold a {len(ACTIONS)} x {N_FEATURES} policy")
    return [[float(w) for w in row] for row in weights]
