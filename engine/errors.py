"""The engine's exception tree, and the positions errors point at.

Owns: every exception the engine raises on purpose, `SourceLocation` and `Diagnostic`.
Must not: import anything from `engine` (it is layer 0), or format output for a terminal
(the CLI does that).

The tree (the CLI maps each branch to one exit code, see `engine.cli.EXIT_CODES`)::

    EngineError
    ├── UsageError                  bad command-line use (exit 2)
    ├── SpecError                   one or more `Diagnostic`s about spec files (exit 1)
    ├── GraphError                  a dependency cycle; carries the path
    ├── ExpressionError             an expression failed to evaluate at run time
    ├── PluginError                 a kind that is unknown or cannot load
    ├── ExecutionError              a step failed, timed out or was cancelled
    │   ├── StepFailed
    │   ├── StepTimedOut
    │   └── StepCancelled
    ├── ProviderError               translated once at the litellm boundary
    │   ├── TransientProviderError  may be retried
    │   │   └── RateLimitedError    429: slow down; not a sign the provider is down
    │   └── PermanentProviderError  never retried
    ├── BundleError
    │   ├── TamperError             a digest does not match
    │   └── WriteOnceError          an attempt to overwrite stored content
    └── GateError                   a gate could not be evaluated at all

Gates *return* verdicts; they raise `GateError` only when the gate itself is broken.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "BundleError",
    "ChannelError",
    "Diagnostic",
    "EngineError",
    "ExecutionError",
    "ExpressionError",
    "GateError",
    "GraphError",
    "LedgerConflict",
    "PermanentProviderError",
    "PluginError",
    "ProviderError",
    "RateLimitedError",
    "RunbookError",
    "Severity",
    "SourceLocation",
    "SpecError",
    "StepCancelled",
    "StepFailed",
    "StepTimedOut",
    "TamperError",
    "TransientProviderError",
    "UsageError",
    "WriteOnceError",
]

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True, order=True)
class SourceLocation:
    """A 1-based line and column in a file. Columns count characters, not bytes."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding about a spec: what is wrong, where, and what was expected.

    `code` is stable and documented (for example `spec.unknown-field`), so CI tooling and
    tests can match on it; `pointer` is the RFC 6901 JSON pointer of the offending node.
    """

    code: str
    message: str
    location: SourceLocation
    pointer: str = ""
    hint: str | None = None
    severity: Severity = "error"
    related: tuple[SourceLocation, ...] = field(default=())

    def sort_key(self) -> tuple[str, int, int, str]:
        loc = self.location
        return (loc.file, loc.line, loc.col, self.code)


class EngineError(Exception):
    """The root of every error the engine raises on purpose."""


class UsageError(EngineError):
    """The command line asks for something that cannot be done as asked."""


class SpecError(EngineError):
    """A spec file is invalid. Carries every diagnostic found, not only the first."""

    def __init__(self, diagnostics: tuple[Diagnostic, ...] | list[Diagnostic]) -> None:
        self.diagnostics: tuple[Diagnostic, ...] = tuple(
            sorted(diagnostics, key=Diagnostic.sort_key)
        )
        first = self.diagnostics[0] if self.diagnostics else None
        summary = f"{first.location}: {first.message}" if first else "invalid spec"
        more = len(self.diagnostics) - 1
        super().__init__(summary + (f" (and {more} more)" if more > 0 else ""))


class GraphError(EngineError):
    """The steps do not form a DAG. `cycle` lists the step ids in order."""

    def __init__(self, message: str, cycle: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.cycle = cycle


class ExpressionError(EngineError):
    """A CEL expression failed at run time (type mismatch on dynamic data, division by zero).

    Compile-time problems never raise this: validation reports them as diagnostics.
    """

    def __init__(self, message: str, *, source: str = "") -> None:
        super().__init__(message)
        self.source = source


class PluginError(EngineError):
    """A step, gate or store kind is unknown or failed to load."""


class ExecutionError(EngineError):
    """A step did not complete."""

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step


class StepFailed(ExecutionError):
    """The step ran and reported failure.

    `category` tells the retry policy what happened: `timeout`, `rate_limit`,
    `server_error`, `connection` and `exit_code` may be transient (a step's `retry.on`
    decides); `permanent` (and anything else) is never retried. `detail`, `cost_usd` and
    `tokens` are what the failed attempt did anyway (an llm step's provider attempts and
    what they cost): the executor records them with the failure.
    """

    def __init__(
        self,
        message: str,
        *,
        step: str | None = None,
        category: str = "permanent",
        retry_after: float | None = None,
        detail: Mapping[str, Any] | None = None,
        cost_usd: float = 0.0,
        tokens: int = 0,
    ) -> None:
        super().__init__(message, step=step)
        self.category = category
        self.retry_after = retry_after
        self.detail = detail
        self.cost_usd = cost_usd
        self.tokens = tokens

    def spent(self) -> dict[str, Any]:
        """The fields a journal record of this failure adds (none for a plain failure)."""
        if self.detail is None and not self.cost_usd and not self.tokens:
            return {}
        return {"detail": dict(self.detail or {}), "cost_usd": self.cost_usd, "tokens": self.tokens}


class StepTimedOut(ExecutionError):
    """The step ran past its timeout and was stopped."""


class StepCancelled(ExecutionError):
    """The step was cancelled (a signal, a failed sibling, a flow timeout)."""


class ProviderError(EngineError):
    """An LLM provider call failed. Raised only by `engine.providers`."""


class TransientProviderError(ProviderError):
    """Worth retrying: 429 (not a spend limit), 5xx, 529, timeouts, dropped connections."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitedError(TransientProviderError):
    """HTTP 429 (not a spend limit). Retried after Retry-After; does not trip a circuit."""


class PermanentProviderError(ProviderError):
    """Never retried: 400, 401, spend limits, content refusals."""


class BundleError(EngineError):
    """A context bundle could not be written, read or trusted."""


class TamperError(BundleError):
    """Stored content does not match its digest."""


class WriteOnceError(BundleError):
    """Something tried to overwrite content that is written once."""


class LedgerConflict(BundleError):
    """Another writer appended the ledger entry this one meant to write: re-read and retry."""


class ChannelError(EngineError):
    """A promotion, rollback or freeze was refused (blockers failed, channel frozen, no good
    bundle to return to). The message says why and what to do."""


class RunbookError(EngineError):
    """A runbook could not be started, resumed or continued (not a failing step)."""


class GateError(EngineError):
    """A gate could not be evaluated at all (not the same as a failing verdict)."""
