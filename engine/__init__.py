"""blocks: a declarative pipeline engine for LLM-assisted engineering and operations.

The package is layered (see `pyproject.toml`, `[tool.importlinter]`): `errors` at the bottom,
then pure models (`spec`), then the owners of third-party engines (`loader`, `graph`,
`expressions`), then checks, validation and execution, with `cli` on top.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
