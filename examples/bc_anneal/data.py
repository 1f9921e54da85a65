"""Demonstration rows: reading, checking and splitting them.

A row is one JSON object per line: `episode`, `t`, the walker's `x`, `y`, the goal's
`goal_x`, `goal_y` (integers on the grid) and the demonstrated `action`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any

__all__ = ["ACTIONS", "FIELDS", "GRID", "check_row", "file_sha256", "read_rows", "split_by_episode"]

ACTIONS = ("right", "left", "up", "down")
"""The action vocabulary, in the order the policy scores them."""
GRID = 10
"""Coordinates run from 0 to GRID - 1."""
FIELDS = ("episode", "t", "x", "y", "goal_x", "goal_y", "action")


def read_rows(path: str) -> list[Any]:
    """Every line of a JSONL file, parsed; blank lines are skipped."""
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_row(row: Any) -> str | None:
    """Why `row` is not a valid demonstration, or None if it is."""
    if not isinstance(row, dict) or set(row) != set(FIELDS):
        return f"expected exactly the fields {', '.join(FIELDS)}"
    for name in FIELDS[:-1]:
        value = row[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{name} must be a non-negative integer"
    if max(row["x"], row["y"], row["goal_x"], row["goal_y"]) >= GRID:
        return f"coordinates must be below {GRID}"
    if (row["x"], row["y"]) == (row["goal_x"], row["goal_y"]):
        return "the walker is already at the goal"
    if row["action"] not in ACTIONS:
        return f"action must be one of {', '.join(ACTIONS)}"
    return None


def split_by_episode(
    rows: list[dict[str, Any]], eval_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval): whole episodes go to one side, so no walk is seen in both."""
    if not 0 < eval_fraction < 1:
        raise ValueError("eval_fraction must be between 0 and 1")
    episodes = sorted({row["episode"] for row in rows})
    random.Random(seed).shuffle(episodes)  # noqa: S311  (a reproducible split, not security)
    held_out = set(episodes[: max(1, math.ceil(len(episodes) * eval_fraction))])
    train = [r for r in rows if r["episode"] not in held_out]
    evaluation = [r for r in rows if r["episode"] in held_out]
    if not train:
        raise ValueError("no episodes left to train on")
    return train, evaluation
