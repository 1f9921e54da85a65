"""The built-in gate kinds: contract, coverage, mutation, security, review and metric.

Owns: `builtin_gate_kinds()`, which the runtime registers. Each kind lives in a module of its
own (`engine.gates.<kind>`) and shares only `engine.gates._common` (project paths, digests,
running a tool, JSON pointers, the redacted record). A kind *measures*: it runs the real tool,
parses its real output, and returns the metrics `engine.spec.flow.GATE_METRICS` names, with
evidence and a one-line summary; the engine judges `require` and applies `on_missing`.
Must not: register kinds anywhere itself (the runtime builds the `Registry`), import a kind at
module import time (each pulls in its own dependencies only when asked), or import
`engine.steps` (steps and gates never import each other).
"""

from __future__ import annotations

from engine.plugins import GateKind

__all__ = ["builtin_gate_kinds"]


def builtin_gate_kinds() -> list[GateKind]:
    """One instance of each built-in gate kind, for the runtime to register."""
    from engine.gates.contract import ContractKind  # noqa: PLC0415 - see the module docstring
    from engine.gates.coverage import CoverageKind  # noqa: PLC0415
    from engine.gates.metric import MetricKind  # noqa: PLC0415
    from engine.gates.mutation import MutationKind  # noqa: PLC0415
    from engine.gates.review import ReviewKind  # noqa: PLC0415
    from engine.gates.security import SecurityKind  # noqa: PLC0415

    return [
        ContractKind(),
        CoverageKind(),
        MutationKind(),
        SecurityKind(),
        ReviewKind(),
        MetricKind(),
    ]
