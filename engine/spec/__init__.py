"""Spec documents as frozen pydantic models: one module per family of kinds.

Owns: the public names of the spec language and the table from `kind` to model.
Must not: parse YAML, check references across a document, or touch the file system.
"""

from __future__ import annotations

from engine.spec.block import AlertRule, Alerts, Block
from engine.spec.common import (
    LANGUAGE_VERSION,
    DocumentHeader,
    InputSpec,
    SpecModel,
    parse_duration,
)
from engine.spec.flow import (
    GATE_METRICS,
    ContractGate,
    CoverageGate,
    Flow,
    FlowStep,
    ForEach,
    Gate,
    Limits,
    LlmStep,
    MetricGate,
    MetricSource,
    ModelRoute,
    MutationGate,
    OutputSpec,
    PythonStep,
    Retry,
    ReviewGate,
    SecretRef,
    SecurityGate,
    ShellStep,
    Step,
)
from engine.spec.runbook import IRREVERSIBLE, Procedure, Runbook, RunbookStep

__all__ = [
    "DOCUMENT_KINDS",
    "GATE_METRICS",
    "IRREVERSIBLE",
    "LANGUAGE_VERSION",
    "AlertRule",
    "Alerts",
    "Block",
    "ContractGate",
    "CoverageGate",
    "Document",
    "DocumentHeader",
    "Flow",
    "FlowStep",
    "ForEach",
    "Gate",
    "InputSpec",
    "Limits",
    "LlmStep",
    "MetricGate",
    "MetricSource",
    "ModelRoute",
    "MutationGate",
    "OutputSpec",
    "Procedure",
    "PythonStep",
    "Retry",
    "ReviewGate",
    "Runbook",
    "RunbookStep",
    "SecretRef",
    "SecurityGate",
    "ShellStep",
    "SpecModel",
    "Step",
    "parse_duration",
]

Document = Flow | Runbook | Block | Alerts

DOCUMENT_KINDS: dict[str, type[Flow] | type[Runbook] | type[Block] | type[Alerts]] = {
    "flow": Flow,
    "runbook": Runbook,
    "block": Block,
    "alerts": Alerts,
}
"""Every document kind, by the value of its `kind` field."""
