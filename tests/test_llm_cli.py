"""`llm` steps through the real CLI: `blocks run` in a subprocess, in a project folder of its
own, against the fake LLM server started in this process (or, offline, against nothing).

Two runs serve every test here, started together once per module because each pays for
importing litellm (seconds):

* `faults`: tests/fixtures/llm/faults.yaml, its routes aimed at the fake server, whose
  script gives each route's model one fault (see `SCRIPT`); OPENAI_API_KEY is the canary,
  declared in the flow's `secrets:`, and the canary also rides in as an input the echo step
  sends to the model and gets back.
* `offline`: tests/fixtures/llm/offline.yaml, a `local/...` route, with no API key in the
  environment and the network refused by an audit hook (tests/fixtures/llm/netguard).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from conftest import BLOCKS, CLI_TIMEOUT, Project, events

from engine.testing.fake_llm import FakeLLMServer, RecordedRequest

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "llm"
CANARY = 'sk-Cn4ry/Zq8+Vw=X3p"Lm7R~qT'
"""OPENAI_API_KEY of the faults run: its raw, base64, URL-encoded and JSON-escaped forms all
differ, so a leak in any of them is told apart."""
NOTE = f"the deploy token is {CANARY} - keep it"

BAD_VERDICT = {"verdict": "maybe", "items": [{"score": "high"}]}
"""Breaks schemas/verdict.schema.json at /verdict and at /items/0/score."""
GOOD_VERDICT = {"verdict": "pass", "items": [{"score": 0.9}]}
SCRIPT: list[dict[str, Any]] = [
    # contract: breaks the schema on the first ask and on the re-ask
    {"when": {"model": "gpt-4o-mini"}, "json": BAD_VERDICT},
    # repaired: breaks it once, then answers well
    {"when": {"model": "gpt-4.1-nano"}, "times": 1, "json": {"verdict": "maybe", "items": []}},
    {"when": {"model": "gpt-4.1-nano"}, "json": GOOD_VERDICT},
    # truncated: a complete JSON answer that meets the schema, but finish_reason=length
    {
        "when": {"model": "gpt-4o"},
        "do": "truncated",
        "json": {"verdict": "pass", "items": []},
        "max_chars": 10_000,
    },
    # echo: the last user message back, canary and all
    {"when": {"model": "gpt-4.1-mini"}, "echo": True},
    # denied: the key is refused; OpenAI's message shows the key's last 4 characters
    {"when": {"model": "gpt-4.1"}, "error": "invalid_api_key"},
]
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@dataclass
class Run:
    project: Project
    done: subprocess.CompletedProcess[str]
    records: list[dict[str, Any]]
    requests: list[RecordedRequest]
    net_log: Path | None = None

    def requests_for(self, model: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.model == model]

    def only(self, event: str, step: str) -> dict[str, Any]:
        found = events(self.records, event, step, instance=step)
        assert len(found) == 1, (event, step, found, Project.explain(self.done))
        return found[0]


def _project(root: Path, flow: str, api_base: str | None = None) -> None:
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "llm-fixture"\nversion = "0"\n')
    shutil.copytree(FIXTURES / "prompts", root / "prompts")
    shutil.copytree(FIXTURES / "schemas", root / "schemas")
    text = (FIXTURES / flow).read_text()
    if api_base is not None:
        text = text.replace("__API_BASE__", api_base)
    assert "__API_BASE__" not in text
    (root / flow).write_text(text)


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without engine settings, API keys or proxies (loopback must
    not be routed through one), plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BLOCKS_")
        and not k.endswith("_API_KEY")
        and k.lower() not in _PROXY_VARS
    }
    env.update(
        # litellm's bytecode is in the venv already: a fresh cache prefix would recompile it
        PYTHONDONTWRITEBYTECODE="1",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        NO_PROXY="127.0.0.1,localhost",
    )
    env.update(extra)
    return env


def _start(root: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BLOCKS), "run", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def _finish(proc: subprocess.Popen[str], args: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate(timeout=10)
        pytest.fail(f"blocks {' '.join(args)} did not finish in {CLI_TIMEOUT}s:\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    base = tmp_path_factory.mktemp("llm-cli")
    net_log = base / "network.log"
    offline_root, faults_root = base / "offline", base / "faults"
    procs: list[subprocess.Popen[str]] = []
    try:
        with FakeLLMServer(script=SCRIPT) as server:
            _project(faults_root, "faults.yaml", server.base_url)
            _project(offline_root, "offline.yaml")
            faults_args = ["faults.yaml", "--json", "-i", f"note={NOTE}"]
            offline_args = ["offline.yaml", "--json"]
            procs.append(_start(faults_root, _env(OPENAI_API_KEY=CANARY), *faults_args))
            procs.append(_start(offline_root, _guarded_env(net_log), *offline_args))
            faults_done = _finish(procs[0], faults_args)
            offline_done = _finish(procs[1], offline_args)
            requests = server.requests
        result = {}
        for name, root, done, seen, log in (
            ("faults", faults_root, faults_done, requests, None),
            ("offline", offline_root, offline_done, [], net_log),
        ):
            project = Project(root)
            ids = project.run_ids()
            assert len(ids) == 1, (ids, Project.explain(done))
            result[name] = Run(project, done, project.journal(ids[0]), seen, log)
        yield result
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)


@pytest.fixture(scope="module")
def faults(runs: dict[str, Run]) -> Run:
    return runs["faults"]


@pytest.fixture(scope="module")
def offline(runs: dict[str, Run]) -> Run:
    return runs["offline"]


def leak_forms(secret: str) -> set[str]:
    """Raw, URL-encoded, JSON-escaped, and the part of its base64 (standard and URL-safe)
    made of its own bytes at each of the three alignments (see test_providers_http)."""
    raw = secret.encode()
    forms = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * shift + raw).decode()
            forms.add(text[4 if shift else 0 : -4])
    return forms


def leaks(text: str) -> list[str]:
    return sorted(f for f in leak_forms(CANARY) if f in text)


# ---- 8. a contract failure re-asks once, then fails with the JSON paths -------------------


def test_the_run_fails_as_a_step_failure(faults: Run) -> None:
    assert faults.done.returncode == 1, Project.explain(faults.done)
    outcome = json.loads(faults.done.stdout)
    assert outcome["status"] == "failed"
    statuses = {sid: s["status"] for sid, s in outcome["steps"].items()}
    assert statuses == {
        "contract": "failed",
        "repaired": "succeeded",
        "truncated": "failed",
        "echo": "succeeded",
        "denied": "failed",
    }
    finished = events(faults.records, "run.finished")
    assert [r["status"] for r in finished] == ["failed"]


def test_contract_failure_reasks_once_then_fails_with_json_paths(faults: Run) -> None:
    failed = faults.only("step.failed", "contract")
    assert failed["category"] == "permanent"
    assert failed["final"] is True
    error = failed["error"]
    assert "contract" in error
    assert "/items/0/score" in error
    assert "/verdict" in error
    assert not events(faults.records, "step.succeeded", "contract")
    # the first ask, and exactly one re-ask
    asked = faults.requests_for("gpt-4o-mini")
    assert len(asked) == 2
    first, second = (r.body["messages"] for r in asked)
    assert second[: len(first)] == first  # the re-ask continues the conversation
    assert second[len(first)]["role"] == "assistant"
    assert json.loads(second[len(first)]["content"]) == BAD_VERDICT
    reask = asked[1].last_user_message
    assert "/items/0/score" in reask
    assert "/verdict" in reask
    assert "'high' is not of type 'number'" in reask
    # the failure's record keeps what the attempt asked and was answered: both calls, the
    # violations, and what they spent (alerts count the calls; the bundle's ledger, the cost)
    attempts = failed["detail"]["attempts"]
    assert [(a["model_asked"], a["outcome"]) for a in attempts] == [
        ("openai/gpt-4o-mini", "ok"),
        ("openai/gpt-4o-mini", "ok"),
    ]
    (sample,) = failed["detail"]["samples"]
    assert sample["reasks"] == 1
    assert len(sample["violations"]) == 2
    assert failed["tokens"] == sum(a["prompt_tokens"] + a["completion_tokens"] for a in attempts)
    assert failed["tokens"] > 0


def test_a_refused_call_is_recorded_with_the_failure(faults: Run) -> None:
    denied = faults.only("step.failed", "denied")
    (attempt,) = denied["detail"]["attempts"]
    assert attempt["model_asked"] == "openai/gpt-4.1"
    assert attempt["outcome"] == "permanent"
    assert attempt["model_answered"] is None
    assert denied["detail"]["samples"][0].get("model_answered") is None
    assert denied["cost_usd"] == 0.0


def test_the_bundle_ledger_counts_the_calls_of_failed_steps(faults: Run) -> None:
    outcome = json.loads(faults.done.stdout)
    out = faults.project.root / "exported"
    done = faults.project.blocks("bundle", "export", outcome["bundle"], "--to", str(out))
    assert done.returncode == 0, Project.explain(done)
    ledger = json.loads((out / "members" / "llm" / "ledger.json").read_text())
    by_step = {c["step"] for c in ledger["calls"]}
    assert "contract" in by_step  # answered, then failed its contract: it cost tokens
    assert "denied" not in by_step  # refused before any answer: nothing spent
    steps = {
        name: json.loads((out / "members" / "steps" / f"{name}.json").read_text())
        for name in ("contract", "denied")
    }
    assert steps["contract"]["tokens"] > 0
    assert steps["denied"]["tokens"] == 0


def test_reask_that_repairs_the_answer_succeeds_and_records_the_violations(faults: Run) -> None:
    assert len(faults.requests_for("gpt-4.1-nano")) == 2
    done = faults.only("step.succeeded", "repaired")
    assert done["result"] == GOOD_VERDICT
    (sample,) = done["detail"]["samples"]
    assert len(sample["violations"]) == 1
    assert any(v.startswith("/verdict") for v in sample["violations"][0])
    assert sample["finish_reason"] == "stop"


def test_reask_count_is_recorded(faults: Run) -> None:
    (sample,) = faults.only("step.succeeded", "repaired")["detail"]["samples"]
    assert sample["reasks"] == 1


# ---- 9. a truncated answer is never a pass ------------------------------------------------


def test_truncated_answer_is_never_a_pass(faults: Run) -> None:
    cut = faults.requests_for("gpt-4o")
    # the answer was complete JSON that meets the schema: only finish_reason=length is wrong
    assert len(cut) == 2  # asked, re-asked, truncated both times
    assert all(r.outcome == "truncated" for r in cut)
    assert "finish_reason=length" in cut[1].last_user_message
    assert not events(faults.records, "step.succeeded", "truncated")
    failed = faults.only("step.failed", "truncated")
    assert "truncated" in failed["error"]
    assert "finish_reason=length" in failed["error"]
    assert failed["category"] == "permanent"


# ---- 10. the canary key leaks nowhere ------------------------------------------------------


def test_canary_was_the_key_and_travelled_through_the_run(faults: Run) -> None:
    """The canary did reach every place a leak could start from, so its absence below
    means masking, not a test that never exercised anything."""
    assert faults.requests
    assert all(r.headers["authorization"] == "***" + CANARY[-4:] for r in faults.requests)
    (echoed,) = faults.requests_for("gpt-4.1-mini")
    assert CANARY in echoed.last_user_message  # sent to the model, which sends it back
    done = faults.only("step.succeeded", "echo")
    assert "***" in done["outputs"]["reply"]
    assert "***" in done["detail"]["prompt"]
    started = events(faults.records, "run.started")[0]
    assert started["inputs"]["note"] == NOTE.replace(CANARY, "***")
    denied = faults.only("step.failed", "denied")
    assert "OPENAI_API_KEY" in denied["error"]


def test_canary_appears_nowhere_under_blocks_nor_on_stderr(faults: Run) -> None:
    state = faults.project.root / ".blocks"
    files = [p for p in state.rglob("*") if p.is_file()]
    assert any(p.name == "journal.log" for p in files)
    assert any("cache" in p.parts for p in files)  # the echo step's result was cached
    found = {}
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        if hits := leaks(text):
            found[str(path.relative_to(state))] = hits
    assert found == {}
    assert leaks(faults.done.stderr) == []
    assert faults.done.stderr.strip(), "no structured logs on stderr: nothing was checked"
    # nor the provider's masked echo of the key's tail
    masked_echo = "*" * 8 + CANARY[-4:]
    assert all(masked_echo not in p.read_text(errors="replace") for p in files)
    assert masked_echo not in faults.done.stderr + faults.done.stdout


def test_canary_is_not_printed_on_stdout(faults: Run) -> None:
    assert leaks(faults.done.stdout) == []


# ---- 11. offline by default ----------------------------------------------------------------


def _guarded_env(log: Path) -> dict[str, str]:
    """No API key, and an audit hook that refuses (and logs) any network use."""
    guard = str(FIXTURES / "netguard")
    path = os.pathsep.join(p for p in (guard, os.environ.get("PYTHONPATH")) if p)
    return _env(PYTHONPATH=path, LLM_TEST_NET_LOG=str(log))


def test_the_network_guard_refuses_a_connection(tmp_path: Path) -> None:
    """The guard the offline run relies on does refuse, even loopback, and logs it."""
    log = tmp_path / "network.log"
    probe = "import socket; socket.create_connection(('127.0.0.1', 9), timeout=2)"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=_guarded_env(log),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert "off limits" in done.stderr
    assert "127.0.0.1" in log.read_text()


def test_local_route_runs_offline_and_records_the_dated_model(offline: Run) -> None:
    assert offline.done.returncode == 0, Project.explain(offline.done)
    assert offline.net_log is not None
    assert Path(f"{offline.net_log}.armed").exists(), "the network guard was not loaded"
    attempts = offline.net_log.read_text() if offline.net_log.exists() else ""
    assert attempts == "", f"the offline run reached for the network:\n{attempts}"
    done = offline.only("step.succeeded", "draft")
    detail = done["detail"]
    assert detail["route"] == "drafter"
    dated = r"local/deterministic-\d{4}-\d{2}-\d{2}"
    assert re.fullmatch(dated, detail["model_answered"]), detail
    (sample,) = detail["samples"]
    assert sample["model_answered"] == detail["model_answered"]
    assert sample["finish_reason"] == "stop"
    assert done["outputs"]["verdict"] in ("pass", "fail")
    assert done["cost_usd"] == 0.0
    assert done["tokens"] > 0
    outcome = json.loads(offline.done.stdout)
    assert outcome["status"] == "succeeded"
