"""Anneal: fine-tune the cloned policy with a cosine-annealed step size, watch held-out loss.

The `anneal` step of `pipelines/bc-anneal-promotion.yaml`. It writes the annealed policy
and `summary.json`, which the `promote` gate reads: `accuracy` on the held-out episodes and
`anneal_loss_flag`, true when the held-out loss ended more than `tolerance` above where it
started (the anneal made the policy worse) or is not a finite number.

`drill_flip_loss_flag` exists for incident drills: it inverts the flag in the summary, so
the team can watch the gate fail and the runbook freeze and roll back. The summary records
both the computed flag and that a drill flipped it.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from examples.bc_anneal import policy as pol
from examples.bc_anneal.data import file_sha256, read_rows, split_by_episode

__all__ = ["anneal", "cosine_schedule"]


def cosine_schedule(epochs: int, lr_max: float, lr_min: float) -> list[float]:
    """Step sizes from `lr_max` down to `lr_min` along half a cosine."""
    if epochs < 1:
        raise ValueError("epochs must be at least 1")
    if epochs == 1:
        return [lr_max]
    return [
        lr_min + (lr_max - lr_min) * (1 + math.cos(math.pi * e / (epochs - 1))) / 2
        for e in range(epochs)
    ]


def anneal(
    data: str,
    *,
    policy: str = "out/bc/policy.json",
    out_dir: str = "out/anneal",
    epochs: int = 20,
    lr_max: float = 0.5,
    lr_min: float = 0.01,
    tolerance: float = 0.02,
    eval_fraction: float = 0.25,
    seed: int = 7,
    drill_flip_loss_flag: bool = False,
) -> dict[str, Any]:
    """Fine-tune `policy` on the training episodes; write `out_dir`/summary.json.

    Uses the same split as training (same `eval_fraction` and `seed`), so the held-out
    episodes stay unseen. Returns the summary.
    """
    rows = read_rows(data)
    train, evaluation = split_by_episode(rows, eval_fraction, seed)
    weights = pol.load(policy)
    initial_loss = pol.mean_loss(weights, evaluation)
    rng = random.Random(seed + 1)  # noqa: S311  (reproducible shuffling, not security)
    losses = []
    schedule = cosine_schedule(epochs, lr_max, lr_min)
    for step_size in schedule:
        weights = pol.sgd_epoch(weights, train, step_size, rng)
        losses.append(pol.mean_loss(weights, evaluation))
    final_loss = losses[-1]
    computed = not math.isfinite(final_loss) or final_loss > initial_loss * (1 + tolerance)
    out = Path(out_dir)
    policy_out = (out / "policy.json").as_posix()
    summary = {
        "accuracy": round(pol.accuracy(weights, evaluation), 6),
        "initial_loss": round(initial_loss, 6),
        "final_loss": round(final_loss, 6),
        "best_loss": round(min(losses), 6),
        "losses": [round(x, 6) for x in losses],
        "learning_rates": [round(x, 6) for x in schedule],
        "tolerance": tolerance,
        "anneal_loss_flag": computed != drill_flip_loss_flag,
        "computed_anneal_loss_flag": computed,
        "drill": drill_flip_loss_flag,
        "policy_path": policy_out,
        "data_sha256": file_sha256(data),
        "summary_path": (out / "summary.json").as_posix(),
    }
    pol.save(weights, policy_out, accuracy=summary["accuracy"], annealed_from=policy)
    (out / "summary.json").write_text(
        json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return summary
