"""CEL expressions in specs: static checking at validate time, evaluation at run time.

Owns the public API for everything expression-shaped: the static types (`CelType` and its
kinds), `check_expression` (parse + type-check against the names an expression may use,
with issues pointing at exact character offsets), `${{ }}` template splitting, and
`compile_expression` / `render_template` for run time.
Must not: import the CEL runtime (`cel`) at import time - `blocks validate` imports this
package and must stay fast; only `Program.evaluate` loads it. Nothing here uses eval/exec.

The syntax and typing rules mirror what common-expression-language 0.10.0 really does; the
facts are documented in `_lexer`, `_parser`, `_functions` and `_constants`.
"""

from ._checker import check_expression
from ._runtime import Program, compile_expression, render_template
from ._template import TemplatePart, has_template, split_template
from ._types import (
    BOOL,
    BYTES,
    DOUBLE,
    DURATION,
    DYN,
    INT,
    NULL,
    STRING,
    TIMESTAMP,
    TYPE,
    UINT,
    CelType,
    CheckResult,
    ExprIssue,
    ListType,
    MapType,
    ObjectType,
    Reference,
    type_from_schema_name,
)

__all__ = [
    "BOOL",
    "BYTES",
    "DOUBLE",
    "DURATION",
    "DYN",
    "INT",
    "NULL",
    "STRING",
    "TIMESTAMP",
    "TYPE",
    "UINT",
    "CelType",
    "CheckResult",
    "ExprIssue",
    "ListType",
    "MapType",
    "ObjectType",
    "Program",
    "Reference",
    "TemplatePart",
    "check_expression",
    "compile_expression",
    "has_template",
    "render_template",
    "split_template",
    "type_from_schema_name",
]
