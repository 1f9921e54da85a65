"""Small text helpers the commands share (no engine imports: `blocks --help` stays light).

Owns: how a byte count is shown. Must not: import anything heavy.
"""

from __future__ import annotations

__all__ = ["human_size"]


def human_size(n: int) -> str:
    """Bytes as `512 B`, `3.2 KiB`, `1.5 MiB` or `2.0 GiB`."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover  (the loop always returns)
