"""The functions the executor benchmark's generated flows call (`bench/bench_executor.py`).

Found through the flows' `pythonpath: [bench/executor_flows]`, so this folder needs no
`__init__.py`. Each returns None: the python step kind answers with a prebuilt result, so
what a run measures is the engine, not the step.
"""

from __future__ import annotations

import asyncio


async def anoop() -> None:
    """An async no-op: runs on the event loop."""


def snoop() -> None:
    """A sync no-op: the python step kind runs it in a worker thread (anyio.to_thread)."""


async def aio(seconds: float = 0.05) -> None:
    """Await `seconds`, as a step waiting on the network would."""
    await asyncio.sleep(seconds)
