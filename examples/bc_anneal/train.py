"""Behaviour cloning: fit the linear policy to the demonstrations, score held-out episodes.

The `train` step of `pipelines/bc-anneal-promotion.yaml`; the `bc_accuracy` gate reads the
`accuracy` it returns. Accuracy is measured on whole episodes the policy never trained on.
"""

from __future__ import annotations

import random
from typing import Any

from examples.bc_anneal import policy as pol
from examples.bc_anneal.data import check_row, file_sha256, read_rows, split_by_episode

__all__ = ["train_behaviour_cloning"]


def train_behaviour_cloning(
    data: str,
    *,
    model_out: str = "out/bc/policy.json",
    epochs: int = 40,
    learning_rate: float = 2.0,
    decay: float = 0.2,
    eval_fraction: float = 0.25,
    seed: int = 7,
) -> dict[str, Any]:
    """Train for `epochs` passes of SGD; write the policy to `model_out`; report accuracy.

    The step size of epoch `e` is `learning_rate / (1 + decay * e)`, so the last passes
    settle instead of chasing the few mis-recorded actions.

    Raises `ValueError` if any row is invalid (the audit step reports which).
    """
    rows = read_rows(data)
    bad = [i + 1 for i, row in enumerate(rows) if check_row(row) is not None]
    if bad:
        raise ValueError(f"invalid rows at lines {bad[:10]}: run the audit step")
    train, evaluation = split_by_episode(rows, eval_fraction, seed)
    rng = random.Random(seed)  # noqa: S311  (reproducible shuffling, not security)
    weights = pol.zeros()
    for epoch in range(epochs):
        weights = pol.sgd_epoch(weights, train, learning_rate / (1 + decay * epoch), rng)
    result = {
        "accuracy": round(pol.accuracy(weights, evaluation), 6),
        "train_accuracy": round(pol.accuracy(weights, train), 6),
        "eval_loss": round(pol.mean_loss(weights, evaluation), 6),
        "train_rows": len(train),
        "eval_rows": len(evaluation),
        "model_path": model_out,
    }
    pol.save(
        weights,
        model_out,
        data_sha256=file_sha256(data),
        seed=seed,
        epochs=epochs,
        learning_rate=learning_rate,
        decay=decay,
        eval_fraction=eval_fraction,
        accuracy=result["accuracy"],
    )
    return result
