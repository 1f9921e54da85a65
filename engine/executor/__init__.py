"""Executors run plans. `local` is the default (anyio, on this machine).

Modules: `local` (scheduling, retries, timeouts, fan-out, cancellation), `workers` (the
tasks ready steps run in, and the capacity limit), `journal` (the append-only run journal),
`lock` (one driver per run), `state` (reading a run back), `cache` (step cache keys and
index), `outputs` (typed outputs), `predict` (what `blocks plan` shows).
"""
