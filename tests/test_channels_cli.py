"""Channels through the CLI: promote, roll back, roll back the rollback, freeze, the ledger's
hash chain, and two concurrent promotions (one winner, one clear conflict)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI_TIMEOUT, Project, wait_for

RELEASE = Path(__file__).resolve().parent / "fixtures" / "release"


def setup_release(project: Project) -> None:
    for source in RELEASE.iterdir():
        if source.suffix in (".yaml", ".py"):
            shutil.copy2(source, project.root / source.name)


def release_run(project: Project, score: float = 0.95, expect: int = 0) -> dict[str, Any]:
    outcome = project.run_json("release.yaml", "-i", f"score={score}", expect=expect)
    assert outcome["bundle"], outcome
    return outcome


def channels(project: Project) -> dict[str, Any]:
    done = project.blocks("channels", "--json")
    assert done.returncode == 0, project.explain(done)
    return json.loads(done.stdout)


def history(project: Project, channel: str) -> list[dict[str, Any]]:
    done = project.blocks("channels", channel, "--json")
    assert done.returncode == 0, project.explain(done)
    return list(json.loads(done.stdout)[channel]["history"])


@pytest.fixture
def release(blocks_project: Project, release_template: Template) -> Project:
    setup_release(blocks_project)
    blocks_project.template = release_template  # type: ignore[attr-defined]
    return blocks_project


Template = tuple[Path, dict[str, Any], dict[str, Any]]


def two_runs(project: Project) -> tuple[dict[str, Any], dict[str, Any]]:
    """Give `project` the template's two bundled runs of the release flow (state and
    workspace copied: nothing is shared between tests)."""
    root, a, b = project.template  # type: ignore[attr-defined]
    for name in (".blocks", "out"):
        shutil.copytree(root / name, project.root / name)
    return a, b


def test_promote_rollback_and_roll_back_the_rollback(release: Project) -> None:
    a, b = two_runs(release)
    for run in (a, b):
        done = release.blocks("promote", run["run_id"], "--channel", "prod", "-r", "release")
        assert done.returncode == 0, release.explain(done)
    assert channels(release)["prod"]["bundle"] == b["bundle"]
    assert "promoted sha256:" in done.stdout
    assert "ledger entry 1" in done.stdout

    done = release.blocks("rollback", "--channel", "prod", "--reason", "bad release")
    assert done.returncode == 0, release.explain(done)
    assert channels(release)["prod"]["bundle"] == a["bundle"]
    assert f"rolled prod back to {a['bundle'][:19]}" in done.stdout

    # last-good never bounces back to the bundle just rolled away from
    done = release.blocks("rollback", "--channel", "prod")
    assert done.returncode == 1
    assert "rolled back from in entry 2" in done.stderr

    # the rollback is an entry like any other: rolling it back returns to b
    done = release.blocks("rollback", "-c", "prod", "--to", "previous", "-r", "false alarm")
    assert done.returncode == 0, release.explain(done)
    assert channels(release)["prod"]["bundle"] == b["bundle"]

    entries = history(release, "prod")
    assert [e["action"] for e in entries] == ["promote", "promote", "rollback", "rollback"]
    assert [e["previous"] for e in entries] == [None, a["bundle"], b["bundle"], a["bundle"]]
    assert entries[2]["reason"] == "bad release"
    # each entry names the digest of the one before it
    assert entries[0]["prev"] is None
    for before, after in itertools.pairwise(entries):
        assert after["prev"] == before["digest"]


def test_promote_refuses_a_bundle_whose_blocker_failed(release: Project) -> None:
    bad = release_run(release, score=0.5, expect=1)
    done = release.blocks("promote", bad["run_id"], "--channel", "prod")
    assert done.returncode == 1, release.explain(done)
    assert "refusing to promote to prod" in done.stderr
    assert "failed" in done.stderr
    assert "Traceback" not in done.stderr
    assert channels(release) == {}


def test_freeze_blocks_a_promotion_until_unfrozen(release: Project) -> None:
    a, b = two_runs(release)
    assert release.blocks("promote", a["run_id"], "-c", "prod").returncode == 0
    done = release.blocks("freeze", "--channel", "prod", "--reason", "incident 42")
    assert done.returncode == 0, release.explain(done)
    assert channels(release)["prod"]["frozen"] is True

    done = release.blocks("promote", b["run_id"], "-c", "prod")
    assert done.returncode == 1
    assert "channel prod is frozen" in done.stderr
    assert "incident 42" in done.stderr
    assert "blocks unfreeze --channel prod" in done.stderr
    assert channels(release)["prod"]["bundle"] == a["bundle"]

    # freezing does not stop a rollback: that is what an incident does next
    assert release.blocks("unfreeze", "-c", "prod", "-r", "fixed").returncode == 0
    assert release.blocks("promote", b["run_id"], "-c", "prod").returncode == 0
    assert channels(release)["prod"]["bundle"] == b["bundle"]


def test_freezing_all_channels_freezes_each_until_all_is_lifted(release: Project) -> None:
    a, b = two_runs(release)
    for channel in ("staging", "prod"):
        assert release.blocks("promote", a["run_id"], "-c", channel).returncode == 0
    assert release.blocks("freeze", "-c", "all", "-r", "security").returncode == 0
    state = channels(release)
    assert state["prod"]["frozen"]
    assert state["staging"]["frozen"]
    done = release.blocks("unfreeze", "-c", "prod", "-r", "only prod")
    assert done.returncode == 1
    assert "frozen by a freeze of all channels" in done.stderr
    assert release.blocks("promote", b["run_id"], "-c", "staging").returncode == 1
    assert release.blocks("unfreeze", "-c", "all", "-r", "cleared").returncode == 0
    assert release.blocks("promote", b["run_id"], "-c", "staging").returncode == 0


def test_rollback_to_before_a_time_and_to_a_named_bundle(release: Project) -> None:
    a, b = two_runs(release)
    c = release_run(release)
    for run in (a, b, c):
        assert release.blocks("promote", run["run_id"], "-c", "prod").returncode == 0
    entries = history(release, "prod")
    # the time b was promoted: the channel served a before it
    done = release.blocks("rollback", "-c", "prod", "--to", f"before:{entries[1]['at']}")
    assert done.returncode == 0, release.explain(done)
    assert channels(release)["prod"]["bundle"] == a["bundle"]
    done = release.blocks("rollback", "-c", "prod", "--to", c["run_id"])
    assert done.returncode == 0, release.explain(done)
    assert channels(release)["prod"]["bundle"] == c["bundle"]
    # what prod served at a past moment, for the auditor
    done = release.blocks("channels", "--at", entries[1]["at"], "--json")
    assert json.loads(done.stdout)["prod"]["bundle"] == b["bundle"]


def test_rollback_with_nothing_good_to_return_to_is_refused(release: Project) -> None:
    a = release_run(release)
    assert release.blocks("promote", a["run_id"], "-c", "prod").returncode == 0
    done = release.blocks("rollback", "-c", "prod")
    assert done.returncode == 1
    assert "no good bundle to roll prod back to" in done.stderr
    done = release.blocks("rollback", "-c", "prod", "--to", "before:yesterday")
    assert done.returncode == 2  # a bad command-line value: a usage error
    assert "expected ISO 8601" in done.stderr
    done = release.blocks("channels", "--at", "2026-11-01T00:00:00")
    assert done.returncode == 2
    assert "say which time zone" in done.stderr
    done = release.blocks("promote", "no-such-run", "-c", "prod")
    assert done.returncode == 2
    assert "no bundle 'no-such-run'" in done.stderr


def test_a_tampered_ledger_is_reported_and_never_written_on(release: Project) -> None:
    a, b = two_runs(release)
    assert release.blocks("promote", a["run_id"], "-c", "prod").returncode == 0
    assert release.blocks("promote", b["run_id"], "-c", "prod").returncode == 0
    ledger = release.root / ".blocks" / "bundles" / "ledger"
    first = ledger / "00000000.json"
    text = first.read_text().replace('"by":"', '"by":"mallory-')
    first.chmod(0o644)
    first.write_text(text)
    done = release.blocks("channels")
    assert done.returncode == 1
    assert "chain is broken between entries 0 and 1" in done.stderr
    assert "Traceback" not in done.stderr
    done = release.blocks("rollback", "-c", "prod")
    assert done.returncode == 1
    assert sorted(p.name for p in ledger.iterdir()) == ["00000000.json", "00000001.json"]


def test_two_concurrent_promotions_give_one_winner_and_one_conflict(release: Project) -> None:
    a, b = two_runs(release)
    gate = release.root / "go"
    env = {"BLOCKS_FAULTS": f"wait@ledger.append:{gate}"}
    procs = [
        release.popen("promote", run["run_id"], "-c", "prod", "-r", run["run_id"], env=env)
        for run in (a, b)
    ]
    # both have read the ledger and decided to write entry 0: let them race for it
    wait_for(lambda: len(list(release.root.glob("go.*"))) == 2, what="both at the barrier")
    gate.touch()
    results = [(*p.communicate(timeout=CLI_TIMEOUT), p.returncode) for p in procs]
    codes = sorted(code for _, _, code in results)
    assert codes == [0, 4], results
    loser = next(err for _, err, code in results if code == 4)
    assert "conflict: channel prod changed while this promote was being decided" in loser
    assert "ledger entry 0" in loser
    assert "Nothing was written" in loser
    entries = history(release, "prod")
    assert len(entries) == 1
    winner = next(out for out, _, code in results if code == 0)
    assert entries[0]["run"] in winner


def test_concurrent_changes_to_different_channels_both_land(release: Project) -> None:
    a = release_run(release)
    gate = release.root / "go"
    env = {"BLOCKS_FAULTS": f"wait@ledger.append:{gate}"}
    procs = [
        release.popen("promote", a["run_id"], "-c", channel, env=env)
        for channel in ("prod", "staging")
    ]
    wait_for(lambda: len(list(release.root.glob("go.*"))) == 2, what="both at the barrier")
    gate.touch()
    for p in procs:
        _, err = p.communicate(timeout=CLI_TIMEOUT)
        assert p.returncode == 0, err
    state = channels(release)
    assert state["prod"]["bundle"] == state["staging"]["bundle"] == a["bundle"]


def gate(project: Project, run_id: str, gate_id: str) -> dict[str, Any]:
    done = project.blocks("bundle", "show", run_id, "--json")
    assert done.returncode == 0, project.explain(done)
    return dict(json.loads(done.stdout)["gates"][gate_id])


def test_a_baseline_gate_compares_with_the_bundle_prod_serves(release: Project) -> None:
    first = release_run(release, score=0.95)
    verdict = gate(release, first["run_id"], "no_regression")
    assert verdict["verdict"] == "inconclusive"  # prod serves nothing yet: never a pass
    assert "no baseline" in verdict["explanation"]
    assert release.blocks("promote", first["run_id"], "-c", "prod").returncode == 0

    worse = release_run(release, score=0.92)  # passes its blocker, regresses against prod
    verdict = gate(release, worse["run_id"], "no_regression")
    assert verdict["verdict"] == "fail"
    assert verdict["severity"] == "warn"
    assert verdict["evidence"]["baseline"] == {"score": 0.95}
    assert verdict["evidence"]["baseline_bundle"] == first["bundle"]
    assert worse["status"] == "succeeded"  # a warning is recorded, not blocking

    close = release_run(release, score=0.94)
    assert gate(release, close["run_id"], "no_regression")["verdict"] == "pass"
