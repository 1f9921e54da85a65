"""`python -m engine` is `blocks`: runbook shell steps use it to reach this very engine."""

from engine.cli import main

main()
