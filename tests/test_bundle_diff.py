"""`engine.bundle_diff`: the semantic diff of two bundles, on members built from journal
records the way a real run's are (`build_bundle_members`), and its text form."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from engine.bundle import Manifest, build_bundle_members
from engine.bundle_diff import BundleSide, diff_bundles, render_diff, value_changes
from engine.errors import BundleError
from engine.redact import Redactor

SPEC = b"version: 1\nkind: flow\nname: demo\nsteps:\n  draft: {kind: llm}\n"
D = "sha256:" + "d" * 64


def records(
    *,
    who: str = "ana",
    weight: float = 0.2,
    model: str = "gpt-x-2026-01-01",
    fingerprint: str = "fp_1",
    cost: float = 0.0125,
    tokens: int = 72,
    score: float = 0.95,
    verdict: str = "pass",
    status: str = "succeeded",
    extra_input: dict[str, Any] | None = None,
    t0: float = 1700000000.0,
    holder: str = "ana@ci:1",
) -> list[dict[str, Any]]:
    inputs: dict[str, Any] = {"who": who, "n": 2, **(extra_input or {})}
    outputs = {
        "verdict": "pass",
        "weights": [{"class": "cash", "weight": 0.0}, {"class": "bank", "weight": weight}],
    }
    return [
        {"seq": 1, "t": t0, "event": "run.started", "run": f"run-{who}-{t0:.0f}", "flow": "demo",
         "path": "flows/demo.yaml", "spec_digest": D, "inputs": inputs, "holder": holder,
         "engine": "0.1.0", "use_cache": True},
        {"seq": 2, "t": t0 + 1, "event": "step.started", "step": "draft", "instance": "draft",
         "attempt": 1},
        {"seq": 3, "t": t0 + 2.5, "event": "step.succeeded", "step": "draft", "instance": "draft",
         "attempt": 1, "outputs": outputs, "result": outputs, "duration": 1.5 + t0 % 7,
         "detail": {"route": "drafter", "prompt_sha256": "ab" * 32,
                    "samples": [{"sample": 0, "cost_usd": cost, "tokens": tokens,
                                 "model_answered": model, "fingerprint": fingerprint,
                                 "finish_reason": "stop"}],
                    "model_answered": model},
         "cost_usd": cost, "tokens": tokens},
        {"seq": 4, "t": t0 + 3, "event": "gate.started", "gate": "quality", "kind": "metric"},
        {"seq": 5, "t": t0 + 3.2, "event": "gate.evaluated", "gate": "quality", "kind": "metric",
         "severity": "blocker", "status": verdict, "require": "score >= 0.9",
         "explanation": f"score = {score}", "summary": "", "metrics": {"score": score},
         "evidence": {}, "after": ["draft"]},
        {"seq": 6, "t": t0 + 4, "event": "run.finished", "status": status, "duration": 4.0,
         "outputs": {"verdict": "pass"} if status == "succeeded" else {}},
    ]  # fmt: skip


def side(
    recs: list[dict[str, Any]],
    *,
    spec: bytes = SPEC,
    env: dict[str, Any] | None = None,
    lock: bytes | None = None,
) -> BundleSide:
    members = build_bundle_members(
        spec_name="flows/demo.yaml",
        spec=spec,
        records=recs,
        lock=lock,
        environment=env or {"engine": "0.1.0", "python": "3.11.7", "litellm": "1.106.2"},
        redactor=Redactor(),
        routes={"drafter": "openai/gpt-x"},
    )
    manifest = Manifest.from_members(members, run=recs[0]["run"])
    return BundleSide(manifest.root_digest(), manifest, members)


def test_two_runs_that_differ_only_in_timing_and_who_ran_them_have_no_differences() -> None:
    a = side(records(t0=1700000000.0, holder="ana@ci:1"))
    b = side(records(t0=1700009999.0, holder="bo@laptop:7"))
    assert a.digest != b.digest
    doc = diff_bundles(a, b)
    assert doc["differences"] == 0
    assert doc["identical"] is False
    text = render_diff(doc)
    assert "no differences" in text
    assert f"a: {a.digest}" in text
    assert f"b: {b.digest}" in text


def test_the_same_bundle_is_identical() -> None:
    a = side(records())
    doc = diff_bundles(a, a)
    assert (doc["differences"], doc["identical"]) == (0, True)
    assert "the same bundle" in render_diff(doc)


def test_every_section_reports_what_changed() -> None:
    a = side(records())
    b = side(
        records(
            who="bo",
            weight=0.5,
            model="gpt-x-2026-03-01",
            fingerprint="fp_2",
            cost=0.02,
            tokens=100,
            score=0.5,
            verdict="fail",
            status="failed",
            extra_input={"region": "eu"},
        ),
        spec=SPEC + b"# tuned\n",
        env={"engine": "0.1.0", "python": "3.11.7", "litellm": "1.107.0"},
        lock=b"models: {drafter: gpt-x-2026-03-01}\n",
    )
    doc = diff_bundles(a, b)
    assert doc["run"] == {"status": {"a": "succeeded", "b": "failed"}}
    assert doc["spec"]["a"]["member"] == doc["spec"]["b"]["member"] == "spec/demo.yaml"
    assert doc["spec"]["a"]["digest"] != doc["spec"]["b"]["digest"]
    assert doc["spec"]["b"]["sha256"] == "sha256:" + hashlib.sha256(SPEC + b"# tuned\n").hexdigest()
    assert "+# tuned" in doc["spec"]["diff"]
    assert doc["lock"]["a"] is None
    assert doc["lock"]["b"]["member"] == "blocks.lock"
    assert doc["inputs"] == {
        "added": {"region": "eu"},
        "removed": {},
        "changed": {"who": {"a": "ana", "b": "bo"}},
    }
    assert doc["models"]["draft"]["a"]["calls"] == [
        {"model_asked": "openai/gpt-x", "model_answered": "gpt-x-2026-01-01", "fingerprint": "fp_1"}
    ]
    assert doc["models"]["draft"]["b"]["calls"][0]["fingerprint"] == "fp_2"
    assert doc["outputs"]["changes"] == [{"path": "verdict", "a": "pass"}]
    draft = doc["steps"]["changed"]["draft"]
    assert "status" not in draft
    assert draft["outputs"]["changes"] == [{"path": "weights[1].weight", "a": 0.2, "b": 0.5}]
    quality = doc["gates"]["changed"]["quality"]
    assert quality["verdict"] == {"a": "pass", "b": "fail"}
    assert quality["metrics"]["changes"] == [{"path": "score", "a": 0.95, "b": 0.5}]
    assert doc["cost"] == {
        "usd": {"a": 0.0125, "b": 0.02, "delta": 0.0075},
        "tokens": {"a": 72, "b": 100, "delta": 28},
    }
    assert doc["environment"] == {"litellm": {"a": "1.106.2", "b": "1.107.0"}}
    assert doc["members"] == {"added": [], "removed": []}  # the lock has its own section
    assert doc["differences"] == 10
    json.dumps(doc)  # JSON-ready

    text = render_diff(doc)
    for heading in ("run", "spec", "lock", "inputs", "models", "outputs (of the flow)",
                    "steps", "gates", "cost", "environment"):  # fmt: skip
        assert f"\n\n{heading}\n" in text, heading
    for line in (
        '  status: "succeeded" → "failed"',
        "    +# tuned",
        '  + region: "eu"',
        '  ~ who: "ana" → "bo"',
        "  draft: gpt-x-2026-01-01 (asked openai/gpt-x, fingerprint fp_1)",
        "         → gpt-x-2026-03-01 (asked openai/gpt-x, fingerprint fp_2)",
        '  - verdict: "pass" → (absent)',
        "    ~ weights[1].weight: 0.2 → 0.5",
        "  quality: pass → fail",
        "    ~ score: 0.95 → 0.5",
        "  usd: $0.012500 → $0.020000 (+0.007500)",
        "  tokens: 72 → 100 (+28)",
        "  litellm: 1.106.2 → 1.107.0",
        "  only in b: blocks.lock sha256:",
    ):
        assert line in text, line


def test_a_cached_llm_step_says_which_run_it_came_from() -> None:
    recs = records()
    cached = [
        *recs[:1],
        {"seq": 2, "t": recs[1]["t"], "event": "step.cached", "step": "draft",
         "instance": "draft", "outputs": recs[2]["outputs"], "result": recs[2]["result"],
         "from_run": recs[0]["run"], "detail": {}},
        *recs[3:],
    ]  # fmt: skip
    a, b = side(recs), side(cached)
    doc = diff_bundles(a, b)
    assert doc["models"]["draft"]["b"] == {"cached_from": recs[0]["run"]}
    assert doc["steps"]["changed"]["draft"] == {"status": {"a": "succeeded", "b": "cached"}}
    text = render_diff(doc)
    assert f"→ cached from run {recs[0]['run']}" in text
    assert "  draft: succeeded → cached" in text


def test_steps_and_gates_only_one_run_has() -> None:
    recs = records()
    more = [*recs[:-1],
            {"seq": 7, "t": recs[-1]["t"], "event": "step.skipped", "step": "ship",
             "reason": "when was false"},
            recs[-1]]  # fmt: skip
    fewer = [r for r in recs if r.get("gate") != "quality"]
    doc = diff_bundles(side(fewer), side(more))
    assert doc["steps"]["added"] == {"ship": "skipped"}
    assert doc["gates"]["added"] == {"quality": "pass"}
    text = render_diff(doc)
    assert '  + ship: "skipped"' in text
    assert '  + quality: "pass"' in text


def test_values_compare_by_type_and_lists_of_another_length_are_one_change() -> None:
    assert value_changes({"x": 1}, {"x": 1.0}) == [{"path": "x", "a": 1, "b": 1.0}]
    assert value_changes({"x": True}, {"x": 1}) == [{"path": "x", "a": True, "b": 1}]
    assert value_changes({"l": [1, 2]}, {"l": [1, 2, 3]}) == [
        {"path": "l", "a": [1, 2], "b": [1, 2, 3]}
    ]
    assert value_changes({"o": {"k": None}}, {"o": {}}) == [{"path": "o.k", "a": None}]
    assert value_changes({"same": [{"a": 1}]}, {"same": [{"a": 1}]}) == []


def test_a_large_spec_change_gives_digests_not_text() -> None:
    big = SPEC + b"".join(b"# line %d\n" % i for i in range(400))
    doc = diff_bundles(side(records()), side(records(), spec=big))
    assert doc["spec"]["diff"] is None
    assert "lines of diff: not shown" in doc["spec"]["note"]
    assert "lines of diff: not shown" in render_diff(doc)


def test_many_changed_values_are_capped_and_counted() -> None:
    recs_a, recs_b = records(), records()
    recs_a[2]["outputs"] = {f"k{i:03d}": i for i in range(250)}
    recs_b[2]["outputs"] = {f"k{i:03d}": -i for i in range(250)}
    doc = diff_bundles(side(recs_a), side(recs_b))
    block = doc["steps"]["changed"]["draft"]["outputs"]
    assert (len(block["changes"]), block["omitted"]) == (200, 49)  # k000 is 0 == -0
    assert "… 229 more (--json shows 200 at most)" in render_diff(doc)


def test_a_member_that_is_not_json_is_an_error_naming_it() -> None:
    a = side(records())
    bad = BundleSide(a.digest, a.manifest, {**a.members, "run.json": b"{not json"})
    with pytest.raises(BundleError, match=r"run\.json is not JSON"):
        diff_bundles(a, bad)


def test_members_outside_every_section_are_listed() -> None:
    a = side(records())
    members = {**a.members, "notes/extra.txt": b"more"}
    manifest = Manifest.from_members(members, run=a.manifest.run)
    b = BundleSide(manifest.root_digest(), manifest, members)
    doc = diff_bundles(a, b)
    assert doc["members"] == {"added": ["notes/extra.txt"], "removed": []}
    assert doc["differences"] == 1
    assert render_diff(doc).endswith("\nmembers\n  + notes/extra.txt\n")
    assert diff_bundles(b, a)["members"] == {"added": [], "removed": ["notes/extra.txt"]}
