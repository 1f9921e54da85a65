"""Runbooks as executable procedures: `blocks runbook run | list | show | report`.

Owns: running a runbook spec (`runner`), what each procedure does (`procedures`), and the
post-incident review written from a run's record (`report`).
Must not: print (the CLI does) or hold channel rules (`engine.channels` does).
"""

from engine.runbook.runner import RunbookOptions, RunbookOutcome, RunbookRunner

__all__ = ["RunbookOptions", "RunbookOutcome", "RunbookRunner"]
