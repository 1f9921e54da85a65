"""Context bundles of real runs: `build_bundle_members` over journal records, the strict
manifest parser, `bundle_run` on a run made by the real `blocks run`, and `blocks bundle
list / show / verify` (the `bundle_app` typer group, through typer's CliRunner).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Project
from typer.testing import CliRunner

from engine.bundle import Manifest, build_bundle_members, canonical_bytes, leaf_digest
from engine.cli.bundle import bundle_app
from engine.errors import BundleError, WriteOnceError
from engine.executor.bundling import bundle_run, environment_facts
from engine.executor.journal import JournalWriter, read_journal
from engine.redact import Redactor
from engine.stores.local import LocalBundleStore

CANARY = "canary-bundle-4f7c-SECRET"

# ---- members from journal records ------------------------------------------------------

D = "sha256:" + "d" * 64
RECORDS: list[dict[str, Any]] = [
    {"seq": 1, "t": 1700000000.25, "event": "run.started", "run": "20261122-000000-abcdef",
     "flow": "demo", "path": "flows/demo.yaml", "spec_digest": D, "inputs": {"n": 2},
     "holder": "ana@ci-7:4242", "engine": "0.1.0", "steps": 3, "use_cache": True},
    {"seq": 2, "t": 1700000001.0, "event": "step.started", "step": "draft", "instance": "draft",
     "attempt": 1},
    {"seq": 3, "t": 1700000002.0, "event": "step.retrying", "step": "draft", "instance": "draft",
     "attempt": 1, "error": "HTTP 529", "category": "server_error", "delay": 0.5},
    {"seq": 4, "t": 1700000003.0, "event": "step.started", "step": "draft", "instance": "draft",
     "attempt": 2},
    {"seq": 5, "t": 1700000004.0, "event": "step.succeeded", "step": "draft",
     "instance": "draft", "attempt": 2, "outputs": {"verdict": "pass"},
     "result": {"verdict": "pass"}, "duration": 1.0, "key": None, "result_digest": D,
     "detail": {"route": "drafter", "prompt_sha256": "ab" * 32, "prompt": "[...]",
                "samples": [{"sample": 0, "reasks": 0, "cost_usd": 0.0125, "tokens": 72,
                             "model_answered": "gpt-x-2026-01-01", "fingerprint": "fp_1",
                             "finish_reason": "stop"}],
                "model_answered": "gpt-x-2026-01-01"},
     "cost_usd": 0.0125, "tokens": 72},
    {"seq": 6, "t": 1700000004.5, "event": "step.expanded", "step": "each", "items": 2},
    {"seq": 7, "t": 1700000005.0, "event": "step.started", "step": "each", "instance": "each[0]",
     "attempt": 1},
    {"seq": 8, "t": 1700000005.0, "event": "step.started", "step": "each", "instance": "each[1]",
     "attempt": 1},
    {"seq": 9, "t": 1700000006.0, "event": "step.succeeded", "step": "each",
     "instance": "each[1]", "attempt": 1, "outputs": {"v": 1}, "result": 1, "duration": 1.0,
     "detail": {}, "cost_usd": 0.25, "tokens": 10},
    {"seq": 10, "t": 1700000006.5, "event": "step.succeeded", "step": "each",
     "instance": "each[0]", "attempt": 1, "outputs": {"v": 0}, "result": 0, "duration": 1.5,
     "detail": {}, "cost_usd": 0.5, "tokens": 20},
    {"seq": 11, "t": 1700000007.0, "event": "step.succeeded", "step": "each",
     "outputs": {"v": [0, 1]}, "duration": 1.5, "items": 2},
    {"seq": 12, "t": 1700000007.5, "event": "step.blocked", "step": "ship",
     "reason": "not run: gate quality did not pass"},
    {"seq": 13, "t": 1700000007.1, "event": "gate.started", "gate": "quality", "kind": "metric"},
    {"seq": 14, "t": 1700000007.2, "event": "gate.evaluated", "gate": "quality",
     "kind": "metric", "severity": "blocker", "status": "fail", "require": "score >= 0.9",
     "explanation": "quality: `score >= 0.9` is false: score = 0.5", "summary": "",
     "metrics": {"score": 0.5}, "evidence": {"file": "out/score.json"}, "after": ["each"]},
    {"seq": 15, "t": 1700000007.3, "event": "gate.skipped", "gate": "late",
     "reason": "'ship' did not succeed"},
    {"seq": 16, "t": 1700000008.0, "event": "run.finished", "status": "failed", "signal": None,
     "duration": 8.0, "outputs": {}},
]  # fmt: skip
SPEC = b"version: 1\r\nkind: flow\r\nname: demo\r\n"
ENV = {"engine": "0.1.0", "python": "3.11.7", "litellm": "1.106.2"}


def members_of(records: list[dict[str, Any]], **kw: Any) -> dict[str, bytes]:
    args: dict[str, Any] = {
        "spec_name": "flows/demo.yaml",
        "spec": SPEC,
        "records": records,
        "lock": None,
        "environment": ENV,
        "redactor": Redactor(),
        "routes": {"drafter": "openai/gpt-x"},
    }
    args.update(kw)
    return build_bundle_members(**args)


def test_members_pin_the_run_its_steps_models_gates_and_journal() -> None:
    members = members_of(RECORDS)
    assert sorted(members) == [
        "gates/late.json",
        "gates/quality.json",
        "journal.jsonl",
        "llm/ledger.json",
        "run.json",
        "spec/demo.yaml",
        "steps/draft.json",
        "steps/each.json",
        "steps/ship.json",
    ]
    assert members["spec/demo.yaml"] == SPEC  # the original bytes, CRLF and all
    run = json.loads(members["run.json"])
    assert run["run"] == "20261122-000000-abcdef"
    assert run["flow"] == "demo"
    assert run["status"] == "failed"
    assert run["inputs"] == {"n": 2}
    assert run["by"] == {"holder": "ana@ci-7:4242", "user": "ana"}
    assert run["started_at"] == "2023-11-14T22:13:20.250Z"
    assert run["finished_at"] == "2023-11-14T22:13:28.000Z"
    assert run["environment"] == ENV
    assert run["spec"] == {"member": "spec/demo.yaml", "path": "flows/demo.yaml", "digest": D}
    assert run["steps"] == {"draft": "succeeded", "each": "succeeded", "ship": "blocked"}
    assert run["gates"] == {"quality": "fail", "late": "skipped"}
    assert run["cost"] == {"usd": 0.7625, "tokens": 102}

    draft = json.loads(members["steps/draft.json"])
    assert [(a["attempt"], a["outcome"]) for a in draft["attempts"]] == [
        (1, "retried"),
        (2, "succeeded"),
    ]
    assert draft["attempts"][0]["error"] == "HTTP 529"
    assert draft["detail"]["model_answered"] == "gpt-x-2026-01-01"
    each = json.loads(members["steps/each.json"])
    assert each["status"] == "succeeded"
    assert sorted(each["items"]) == ["each[0]", "each[1]"]
    assert (each["cost_usd"], each["tokens"]) == (0.75, 30)
    assert json.loads(members["steps/ship.json"])["reason"].startswith("not run")

    ledger = json.loads(members["llm/ledger.json"])
    [call] = ledger["calls"]
    assert call["model_asked"] == "openai/gpt-x"
    assert call["model_answered"] == "gpt-x-2026-01-01"
    assert (call["route"], call["fingerprint"], call["tokens"]) == ("drafter", "fp_1", 72)
    assert ledger["models_answered"] == ["gpt-x-2026-01-01"]

    quality = json.loads(members["gates/quality.json"])
    assert quality["verdict"] == "fail"
    assert quality["evidence"] == {"file": "out/score.json"}
    assert quality["metrics"] == {"score": 0.5}
    assert "is false" in quality["explanation"]

    lines = members["journal.jsonl"].split(b"\n")
    assert lines[-1] == b""
    assert [json.loads(line) for line in lines[:-1]] == RECORDS
    assert all(canonical_bytes(json.loads(line)) == line for line in lines[:-1])


def test_members_are_deterministic_and_redacted_before_hashing() -> None:
    leaky = [dict(r) for r in RECORDS]
    leaky[0] = {**leaky[0], "inputs": {"token": CANARY}}
    leaky[4] = {**leaky[4], "outputs": {"verdict": f"pass {CANARY}"}}
    spec = SPEC + f"# {CANARY}\n".encode()
    first = members_of(leaky, spec=spec, redactor=Redactor([CANARY]), lock=CANARY.encode())
    second = members_of(leaky, spec=spec, redactor=Redactor([CANARY]), lock=CANARY.encode())
    assert first == second
    assert Manifest.from_members(first).root_digest() == Manifest.from_members(second).root_digest()
    for path, data in first.items():
        assert CANARY.encode() not in data, path
    assert first["blocks.lock"] == b"***"
    assert json.loads(first["run.json"])["inputs"] == {"token": "***"}


def test_a_journal_must_start_with_the_run() -> None:
    with pytest.raises(BundleError, match=r"run\.started"):
        members_of(RECORDS[1:])
    with pytest.raises(BundleError, match=r"run\.started"):
        members_of([])


def test_an_unfinished_run_says_so() -> None:
    run = json.loads(members_of(RECORDS[:5])["run.json"])
    assert run["status"] == "unfinished"
    assert run["finished_at"] is None


# ---- the manifest parser is strict -----------------------------------------------------

GOOD = Manifest.from_members({"a.txt": b"a", "b/c.json": b"{}"}, run="r1")


def _raw(**changes: Any) -> dict[str, Any]:
    raw = GOOD.as_dict()
    raw.update(changes)
    return raw


def _member(**changes: Any) -> dict[str, Any]:
    raw = GOOD.as_dict()
    raw["members"]["a.txt"].update(changes)
    return raw


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (canonical_bytes(_raw(extra=1)), "unknown field"),
        (canonical_bytes({k: v for k, v in _raw().items() if k != "run"}), "missing field"),
        (canonical_bytes(_member(mode=644)), "unknown field"),
        (canonical_bytes(_member(digest="sha256:" + "A" * 64)), "bad digest"),
        (canonical_bytes(_member(digest="sha256:abc")), "bad digest"),
        (canonical_bytes(_member(digest="md5:" + "a" * 32)), "bad digest"),
        (canonical_bytes(_member(size=-1)), "bad size"),
        (canonical_bytes(_member(size=True)), "bad size"),
        (canonical_bytes(_member(size=1.0)), "bad size"),
        (canonical_bytes(_member(media_type="")), "bad media type"),
        (canonical_bytes(_raw(format="blocks.bundle/2")), "unsupported bundle format"),
        (canonical_bytes(_raw(run=7)), "bad run id"),
        (canonical_bytes(_raw(supersedes="sha256:xyz")), "bad digest"),
        (canonical_bytes(_raw(members={"../x": GOOD.as_dict()["members"]["a.txt"]})), "'..'"),
        (canonical_bytes(_raw(members={"/abs": GOOD.as_dict()["members"]["a.txt"]})), "relative"),
        (
            canonical_bytes(
                _raw(members={"b": GOOD.as_dict()["members"]["a.txt"]} | GOOD.as_dict()["members"])
            ),
            "also a folder",
        ),
        (GOOD.to_bytes().replace(b'"b/c.json"', b'"a.txt"'), "duplicate key"),
        (GOOD.to_bytes() + b"\n", "canonical form"),
        (GOOD.to_bytes().replace(b",", b", ", 1), "canonical form"),
        (b'{"format": NaN}', "NaN"),
        (b"\xff", "not valid JSON"),
        (b"[]", "not a JSON object"),
    ],
)
def test_parse_refuses_anything_not_written_by_us(data: bytes, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        Manifest.parse(data)


def test_parse_accepts_exactly_what_to_bytes_writes() -> None:
    assert Manifest.parse(GOOD.to_bytes()) == GOOD
    chained = Manifest(GOOD.members, run="r1", supersedes=GOOD.root_digest())
    assert Manifest.parse(chained.to_bytes()) == chained
    assert chained.root_digest() != GOOD.root_digest()
    assert GOOD.member("a.txt").digest == leaf_digest(b"a")
    with pytest.raises(BundleError, match="no member"):
        GOOD.member("zzz")


# ---- a real run, through `blocks run` --------------------------------------------------

FLOW = """\
version: 1
kind: flow
name: bundled
secrets: [CANARY_TOKEN]
inputs:
  who: {type: string, default: world}
steps:
  produce:
    kind: python
    call: flowmods:produce
    with: {text: "${{ inputs.who }}", n: 3}
    outputs:
      text: {type: string}
      n: {type: integer}
  leak:
    kind: shell
    env:
      TOKEN: {secret: CANARY_TOKEN}
    script: |
      echo "token=$TOKEN"
      printf '%s' "$TOKEN" | base64 -w0; echo
    outputs:
      shown: {type: string, source: stdout}
gates:
  enough:
    kind: metric
    after: produce
    severity: warn
    require: n >= 3
    metrics:
      n: {type: integer, value: "${{ steps.produce.outputs.n }}"}
outputs:
  text: ${{ steps.produce.outputs.text }}
"""


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory, engine_pycache: Path) -> Iterator[Project]:
    """One project, one real run of FLOW (module-scoped: a run costs seconds)."""
    root = tmp_path_factory.mktemp("bundled") / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "bundle-fixture"\nversion = "0"\n')
    (root / "flowmods.py").write_bytes(
        (Path(__file__).parent / "fixtures" / "flows" / "flowmods.py").read_bytes()
    )
    (root / "bundled.yaml").write_text(FLOW)
    project = Project(root, engine_pycache)
    try:
        done = project.blocks("run", "bundled.yaml", "-i", "who=auditor", "--json",
                              env={"CANARY_TOKEN": CANARY})  # fmt: skip
        assert done.returncode == 0, project.explain(done)
        yield project
    finally:
        project.cleanup()


@pytest.fixture
def bundled(ran: Project, tmp_path: Path) -> tuple[Project, LocalBundleStore, str]:
    """The run bundled into a fresh store where the CLI looks: `<project>/.blocks/bundles`."""
    shutil.rmtree(ran.root / ".blocks" / "bundles", ignore_errors=True)
    store = LocalBundleStore(ran.root / ".blocks" / "bundles")
    root = bundle_run(
        ran.runs_dir / ran.only_run_id(), store, Redactor([CANARY]), environment_facts()
    )
    return ran, store, root


def test_bundle_run_pins_a_real_run(bundled: tuple[Project, LocalBundleStore, str]) -> None:
    project, store, root = bundled
    run_id = project.only_run_id()
    records = project.journal(run_id)
    manifest = store.get_manifest(root)
    assert manifest.run == run_id
    assert set(manifest.paths) >= {
        "spec/bundled.yaml",
        "run.json",
        "steps/produce.json",
        "steps/leak.json",
        "gates/enough.json",
        "llm/ledger.json",
        "journal.jsonl",
    }
    assert (
        store.read_member(run_id, "spec/bundled.yaml")
        == (project.root / "bundled.yaml").read_bytes()
    )
    run = json.loads(store.read_member(run_id, "run.json"))
    assert (run["run"], run["flow"], run["status"]) == (run_id, "bundled", "succeeded")
    assert run["inputs"] == {"who": "auditor"}
    assert run["outputs"] == {"text": "auditor"}
    assert run["environment"]["python"].startswith("3.11")
    assert run["environment"]["engine"] == run["engine"] == "0.1.0"
    produce = json.loads(store.read_member(run_id, "steps/produce.json"))
    assert produce["status"] == "succeeded"
    assert produce["outputs"]["n"] == 3
    [evaluated] = [r for r in records if r["event"] == "gate.evaluated"]
    gate = json.loads(store.read_member(run_id, "gates/enough.json"))
    assert gate["verdict"] == evaluated["status"]
    assert gate["evidence"] == evaluated["evidence"]
    journal = store.read_member(run_id, "journal.jsonl").splitlines()
    assert len(journal) == len(records)
    # the canary went through a real shell step: it is in no stored byte
    for path in sorted(p for p in store.root.rglob("*") if p.is_file()):
        assert CANARY.encode() not in path.read_bytes(), path
    # bundling again is idempotent; the run index is written once
    assert (
        bundle_run(project.runs_dir / run_id, store, Redactor([CANARY]), environment_facts())
        == root
    )


def test_bundle_run_refuses_an_edited_spec_and_an_unfinished_run(
    ran: Project, tmp_path: Path
) -> None:
    store = LocalBundleStore(tmp_path / "store")
    run_dir = ran.runs_dir / ran.only_run_id()
    copy = tmp_path / "project"
    copy.mkdir()
    (copy / "bundled.yaml").write_text(FLOW + "# edited after the run\n")
    with pytest.raises(BundleError, match="changed since the run"):
        bundle_run(run_dir, store, Redactor(), {}, project_root=copy)
    (copy / "bundled.yaml").write_text(FLOW)
    assert bundle_run(run_dir, store, Redactor(), {}, project_root=copy).startswith("sha256:")

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    lines = (run_dir / "journal.log").read_bytes().splitlines(keepends=True)
    (unfinished / "journal.log").write_bytes(b"".join(lines[:3]))
    assert len(read_journal(unfinished / "journal.log").records) == 3
    with pytest.raises(BundleError, match="has not finished"):
        bundle_run(unfinished, store, Redactor(), {})


def _write_journal(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with JournalWriter.open(path) as journal:
        for record in records:
            journal.append({k: v for k, v in record.items() if k != "seq"})


def test_a_resumed_run_gets_a_bundle_that_supersedes_the_first(
    ran: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalBundleStore(tmp_path / "state" / "bundles")
    records = ran.journal(ran.only_run_id())
    failed = [*records[:-1], {**records[-1], "status": "failed", "outputs": {}}]
    run_dir = ran.runs_dir / "copy" / "run"  # a copy of the run, so `ran` stays as it was
    _write_journal(run_dir / "journal.log", failed)
    first = bundle_run(run_dir, store, Redactor([CANARY]), {}, project_root=ran.root)
    assert json.loads(store.read_member(first, "run.json"))["status"] == "failed"
    assert bundle_run(run_dir, store, Redactor([CANARY]), {}, project_root=ran.root) == first

    resumed = {**records[0], "event": "run.resumed", "t": records[-1]["t"] + 1}
    finished = {**records[-1], "t": records[-1]["t"] + 2}
    _write_journal(run_dir / "journal.log", [resumed, finished])  # appended
    second = bundle_run(run_dir, store, Redactor([CANARY]), {}, project_root=ran.root)
    assert second != first
    assert store.get_manifest(second).supersedes == first
    run = json.loads(store.read_member(second, "run.json"))
    assert run["status"] == "succeeded"
    assert len(run["resumed"]) == 1
    assert store.resolve(ran.only_run_id()) == second
    assert store.verify(first).ok
    assert store.verify(second).ok
    monkeypatch.chdir(ran.root)
    monkeypatch.setenv("BLOCKS_STATE_DIR", str(tmp_path / "state"))  # the CLI finds it there
    shown = invoke("show", ran.only_run_id())
    assert shown.exit_code == 0, shown.output
    assert f"supersedes {first} (the run was resumed 1x)" in shown.output
    assert invoke("verify", f"{ran.only_run_id()}~1").exit_code == 0
    assert len(json.loads(invoke("list", "--json").stdout)) == 2

    # history rewritten under the bundle: refused, nothing superseded
    (run_dir / "journal.log").unlink()
    _write_journal(run_dir / "journal.log", [{**records[0], "inputs": {"who": "x"}}, *records[1:]])
    with pytest.raises(WriteOnceError, match="changed, not grown"):
        bundle_run(run_dir, store, Redactor([CANARY]), {}, project_root=ran.root)
    assert store.resolve(ran.only_run_id()) == second


# ---- blocks bundle list / show / verify ------------------------------------------------


@pytest.fixture
def cli(
    bundled: tuple[Project, LocalBundleStore, str], monkeypatch: pytest.MonkeyPatch
) -> tuple[Project, LocalBundleStore, str]:
    project, _, _ = bundled
    monkeypatch.chdir(project.root)
    monkeypatch.delenv("BLOCKS_STATE_DIR", raising=False)
    return bundled


def invoke(*args: str) -> Any:
    return CliRunner().invoke(bundle_app, list(args))


def test_cli_list_show_and_verify(cli: tuple[Project, LocalBundleStore, str]) -> None:
    project, store, root = cli
    run_id = project.only_run_id()
    listed = invoke("list")
    assert listed.exit_code == 0, listed.output
    assert run_id in listed.output
    assert root[:19] in listed.output
    assert "succeeded" in listed.output
    as_json = json.loads(invoke("list", "--json").stdout)
    assert [(b["digest"], b["run"], b["flow"]) for b in as_json] == [(root, run_id, "bundled")]

    shown = invoke("show", run_id)
    assert shown.exit_code == 0, shown.output
    verdict = json.loads(store.read_member(root, "gates/enough.json"))["verdict"]
    for text in (
        f"bundle {root}",
        f"run {run_id}  flow bundled  succeeded",
        'inputs: {"who": "auditor"}',
        f"gates: enough {verdict}",
        "cost: $",
        "models answered: none",
        "spec/bundled.yaml",
        "journal.jsonl",
    ):
        assert text in shown.output, text
    for member in store.get_manifest(root).members:
        assert member.digest in shown.output
    shown_json = json.loads(invoke("show", root[:12], "--json").stdout)
    assert shown_json["run"]["inputs"] == {"who": "auditor"}

    for ref in (run_id, root, root.removeprefix("sha256:")[:8]):
        verified = invoke("verify", ref)
        assert verified.exit_code == 0, verified.output
        assert "intact" in verified.output


def test_cli_verify_names_the_tampered_member(cli: tuple[Project, LocalBundleStore, str]) -> None:
    project, store, root = cli
    run_id = project.only_run_id()
    blob = store.blob_path(store.get_manifest(root).member("steps/leak.json").digest)
    original = blob.read_bytes()
    blob.chmod(0o644)
    blob.write_bytes(original.replace(b"succeeded", b"SUCCEEDED"))
    try:
        verified = invoke("verify", run_id)
        assert verified.exit_code == 1, verified.output
        assert "TAMPERED" in verified.output
        assert "member steps/leak.json: stored bytes do not match its digest" in verified.output
        report = json.loads(invoke("verify", run_id, "--json").stdout)
        assert report["ok"] is False
        assert report["first_mismatch"] == "steps/leak.json"
        shown = invoke("show", run_id)  # shows what it can, and says it is not intact
        assert shown.exit_code == 1
        assert f"run {run_id}  flow bundled  succeeded" in shown.output
        assert "TAMPERED" in shown.output
        assert "member steps/leak.json: stored bytes do not match its digest" in shown.output
        assert json.loads(invoke("show", run_id, "--json").stdout)["intact"] is False
        os.unlink(store.blob_path(store.get_manifest(root).member("run.json").digest))
        shown = invoke("show", run_id)
        assert shown.exit_code == 1
        assert "run.json" in shown.output
    finally:
        blob.write_bytes(original)


def test_cli_ref_that_names_nothing_is_a_usage_error(
    cli: tuple[Project, LocalBundleStore, str],
) -> None:
    for command in ("show", "verify"):
        result = invoke(command, "no-such-run")
        assert result.exit_code == 2
        assert "no bundle matches 'no-such-run'" in result.output
