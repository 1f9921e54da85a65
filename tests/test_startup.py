"""Start-up cost is a feature: `blocks validate` must not pull in heavy engines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json, sys
from engine.cli import main
sys.argv = ["blocks", "validate", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = ["litellm", "boto3", "botocore", "dask", "distributed", "ray", "networkx", "cel",
         "ruamel", "openai", "httpx"]
sys.stderr.write(json.dumps({"exit": code, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def test_validating_the_examples_loads_no_heavy_engine() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "pipelines", "runbooks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report["exit"] == 0, result.stdout
    assert report["loaded"] == []


def test_importing_the_cli_is_light() -> None:
    code = (
        "import sys, engine.cli, engine.validate;"
        "print(sorted(m for m in ('litellm','boto3','networkx','cel','ruamel','ryml','pydantic')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # pydantic is needed for the models; nothing that only some commands need
    assert out.stdout.strip() == "['pydantic']"
