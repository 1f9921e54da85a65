"""Audit the demonstrations before anything trains on them.

The `audit` step of `pipelines/bc-anneal-promotion.yaml`; the `data_quality` gate reads
its outputs. The audit reports and never fixes: a bad row is counted, not dropped.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from examples.bc_anneal.data import ACTIONS, check_row, file_sha256, read_rows

__all__ = ["audit_dataset"]


def audit_dataset(data: str, min_rows: int = 200, min_class_share: float = 0.1) -> dict[str, Any]:
    """Count rows, episodes, invalid and duplicated rows, and how often each action occurs.

    `ok` is true when there are at least `min_rows` rows, none invalid or duplicated, and
    every action makes up at least `min_class_share` of the valid rows; `issues` says why not.
    """
    rows = read_rows(data)
    problems = [(i + 1, reason) for i, row in enumerate(rows) if (reason := check_row(row))]
    valid = [r for i, r in enumerate(rows) if check_row(r) is None]
    seen = Counter(json.dumps(r, sort_keys=True) for r in valid)
    duplicates = sum(n - 1 for n in seen.values())
    counts = Counter(r["action"] for r in valid)
    share = min(counts[a] for a in ACTIONS) / len(valid) if valid else 0.0
    issues = [f"line {line}: {reason}" for line, reason in problems[:20]]
    if len(rows) < min_rows:
        issues.append(f"{len(rows)} rows; at least {min_rows} are needed")
    if duplicates:
        issues.append(f"{duplicates} duplicated rows")
    if share < min_class_share:
        issues.append(f"the rarest action is {share:.1%} of rows; at least {min_class_share:.0%}")
    return {
        "rows": len(rows),
        "episodes": len({r["episode"] for r in valid}),
        "invalid_rows": len(problems),
        "duplicate_rows": duplicates,
        "action_counts": {a: counts[a] for a in ACTIONS},
        "min_class_share": round(share, 6),
        "sha256": file_sha256(data),
        "ok": not issues,
        "issues": issues,
    }
