#!/usr/bin/env python3
"""Set up and run blocks from a fresh clone, with nothing but Python 3.11.

    python3.11 dev.py demo    install, then run the example job offline
    python3.11 dev.py test    install, then run the whole test suite (lint, types, layers, tests)
    python3.11 dev.py lock    re-resolve requirements.lock from pyproject.toml (needs the network)

Installs into ./.venv from requirements.lock, every package checked against its sha256
(`pip --require-hashes`), then the project itself without dependencies. A stamp file skips
the install when neither the lock nor pyproject.toml changed. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(ROOT, ".venv")
BIN = os.path.join(VENV, "Scripts" if os.name == "nt" else "bin")
PY = os.path.join(BIN, "python")
LOCK = os.path.join(ROOT, "requirements.lock")
STAMP = os.path.join(VENV, ".blocks-installed")

DEMO = [
    ["blocks", "validate", "pipelines", "runbooks"],
    ["blocks", "run", "pipelines/basel-attestation.yaml"],
]
TEST = [
    ["ruff", "check", "engine", "tests", "bench", "examples", "dev.py"],
    ["mypy"],
    ["lint-imports"],
    ["pytest", "-n", "2"],
]


def _run(argv: list[str], **kw: object) -> None:
    print("+ " + " ".join(argv), flush=True)
    result = subprocess.run(argv, cwd=ROOT, check=False, **kw)  # type: ignore[call-overload]
    if result.returncode != 0:
        sys.exit(result.returncode)


def _digest() -> str:
    h = hashlib.sha256()
    for path in (LOCK, os.path.join(ROOT, "pyproject.toml")):
        with open(path, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


def install() -> None:
    if sys.version_info[:2] != (3, 11):
        sys.exit(f"blocks needs Python 3.11; this is {sys.version.split()[0]}")
    if not os.path.exists(PY):
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = _digest()
    if os.path.exists(STAMP):
        with open(STAMP, encoding="utf-8") as fh:
            if fh.read().strip() == stamp:
                return
    pip = [PY, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "install", "--require-hashes", "--no-deps", "-r", LOCK])
    _run([*pip, "install", "--no-deps", "--no-build-isolation", "-e", ROOT])
    with open(STAMP, "w", encoding="utf-8") as fh:
        fh.write(stamp)


def _in_venv(commands: list[list[str]]) -> None:
    env = dict(os.environ)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    for argv in commands:
        _run([os.path.join(BIN, argv[0]), *argv[1:]], env=env)


def lock() -> None:
    install()
    _run([PY, "-m", "pip", "-q", "install", "uv"])
    _run(
        [
            os.path.join(BIN, "uv"),
            "pip",
            "compile",
            "pyproject.toml",
            "--extra",
            "dev",
            "--python-version",
            "3.11",
            "--generate-hashes",
            "--no-header",
            "--output-file",
            "requirements.lock",
        ]
    )


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else "help"
    if command == "demo":
        install()
        _in_venv(DEMO)
    elif command == "test":
        install()
        _in_venv(TEST)
    elif command == "lock":
        lock()
    else:
        print(__doc__)
        sys.exit(0 if command in ("help", "-h", "--help") else 2)


if __name__ == "__main__":
    main()
