"""Generate `data/demos.jsonl`, the demonstrations the BC/anneal flow trains on.

Run `python -m examples.bc_anneal.make_data` from the project root; the output is the same
bytes every time. A demonstrator walks from a random start to a random goal on the grid,
always along the axis with the larger distance (horizontal on a tie). A few actions are
recorded wrongly, as real demonstrations are, so accuracy stays below 1.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from examples.bc_anneal.data import ACTIONS, GRID

__all__ = ["DEFAULT_PATH", "expert_action", "generate", "main", "render"]

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "demos.jsonl"
_MOVES = {"right": (1, 0), "left": (-1, 0), "up": (0, 1), "down": (0, -1)}


def expert_action(x: int, y: int, goal_x: int, goal_y: int) -> str:
    """The demonstrator's move: along the larger offset, horizontal on a tie."""
    dx, dy = goal_x - x, goal_y - y
    if dx == 0 and dy == 0:
        raise ValueError("already at the goal")
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "up" if dy > 0 else "down"


def generate(rows: int = 400, seed: int = 20240607, noise: float = 0.02) -> list[dict[str, Any]]:
    """`rows` demonstration rows; each action is mis-recorded with probability `noise`."""
    rng = random.Random(seed)  # noqa: S311  (reproducible data, not security)
    out: list[dict[str, Any]] = []
    episode = 0
    while len(out) < rows:
        x, y, goal_x, goal_y = (rng.randrange(GRID) for _ in range(4))
        if (x, y) == (goal_x, goal_y):
            continue
        t = 0
        while (x, y) != (goal_x, goal_y) and len(out) < rows:
            action = expert_action(x, y, goal_x, goal_y)
            recorded = action
            if rng.random() < noise:
                recorded = rng.choice([a for a in ACTIONS if a != action])
            out.append(
                {
                    "episode": episode,
                    "t": t,
                    "x": x,
                    "y": y,
                    "goal_x": goal_x,
                    "goal_y": goal_y,
                    "action": recorded,
                }
            )
            step_x, step_y = _MOVES[action]
            x, y, t = x + step_x, y + step_y, t + 1
        episode += 1
    return out


def render(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, separators=(", ", ": ")) + "\n" for r in rows)


def main(path: str = str(DEFAULT_PATH)) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(render(generate()), encoding="utf-8")


if __name__ == "__main__":
    main()
