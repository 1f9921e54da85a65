"""Read the institution's policy document so a flow can put its text into a prompt.

Prompt variables take values, not files, so the flow reads the file in a python step and
passes `steps.policy.outputs.text` on. The digest lets a reviewer see which text was used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["load_policy"]

MAX_POLICY_BYTES = 64 * 1024
"""Policies are short documents; a larger file is more likely a mistake than a policy."""


def load_policy(path: str) -> dict[str, object]:
    """Return the policy's `text`, its `sha256` and its length in `chars`.

    Raises `ValueError` if the file is empty or larger than `MAX_POLICY_BYTES`.
    """
    raw = Path(path).read_bytes()
    if not raw.strip():
        raise ValueError(f"policy {path} is empty")
    if len(raw) > MAX_POLICY_BYTES:
        raise ValueError(f"policy {path} is {len(raw)} bytes; the limit is {MAX_POLICY_BYTES}")
    text = raw.decode("utf-8")
    return {"text": text, "sha256": hashlib.sha256(raw).hexdigest(), "chars": len(text)}
