"""The `block` and `alerts` kinds.

Owns: the six faces of a verified block (structure, UI, integration, logic, input, output),
and alert rules over run history. Must not: read the files they name.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from engine.spec.common import (
    DocumentHeader,
    Duration,
    Expression,
    Identifier,
    Pattern,
    RelPath,
    SpecModel,
    Text,
)

__all__ = ["AlertRule", "Alerts", "Block"]


class StructureFace(SpecModel):
    """Where the block's code lives."""

    paths: list[RelPath] = Field(min_length=1)


class UiFace(SpecModel):
    """How the block's result is shown to people."""

    renders: Literal["markdown", "html", "json", "none"] = "markdown"
    template: RelPath | None = None


class IntegrationFace(SpecModel):
    """How the block plugs into flows: what it provides and what it needs."""

    provides: list[Text] = Field(default_factory=list)
    requires: list[Text] = Field(default_factory=list)
    flows: list[RelPath] = Field(default_factory=list)


class LogicFace(SpecModel):
    """The entry point, and the tests that pin its behaviour."""

    call: Annotated[Text, Pattern(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")]
    tests: list[RelPath] = Field(default_factory=list)


class ContractFace(SpecModel):
    """A JSON Schema contract for data going in or coming out."""

    schema_: RelPath = Field(alias="schema")


class Block(DocumentHeader):
    """A verified block: six faces, each checkable."""

    kind: Literal["block"]
    structure: StructureFace
    ui: UiFace = Field(default_factory=UiFace)
    integration: IntegrationFace = Field(default_factory=IntegrationFace)
    logic: LogicFace
    input: ContractFace
    output: ContractFace


class AlertRule(SpecModel):
    """Fire when a signal over a window crosses a threshold; suggest a runbook."""

    signal: Literal["budget_burn_rate", "error_rate", "gate_pass_rate", "latency_p95", "cost_usd"]
    flow: Text | None = None
    provider: Text | None = None
    window: Duration = 3600.0
    threshold: Expression
    """CEL over `value` (the signal over the window), e.g. `value > 0.05`."""
    runbook: RelPath | None = None
    params: dict[Identifier, Text] = Field(default_factory=dict)
    severity: Literal["page", "ticket", "info"] = "ticket"


class Alerts(DocumentHeader):
    """Rules over run history."""

    kind: Literal["alerts"]
    rules: dict[Identifier, AlertRule] = Field(min_length=1)
