"""`blocks lock` and `blocks run --locked`, end to end through the CLI.

Each test builds a small project (a python step with `deps`, an llm step on the offline
`local/deterministic` route with a prompt and an output schema, a shell step running a
script, a contract gate), locks it, changes one thing, and checks that `run --locked`
refuses naming that thing, writing nothing, and that `lock --check` agrees. The lock text
must be stable, sorted, free of absolute paths, and merge cleanly in git when two branches
pinned different files. One test runs against the fake provider on loopback to show a real
provider's dated version being resolved from a bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.providers import LOCAL_MODEL_VERSION
from engine.stores import LocalBundleStore
from engine.testing.fake_llm import FakeLLMServer

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = str(Path(sys.executable).with_name("blocks"))
TIMEOUT = 180.0

FLOW = """\
version: 1
kind: flow
name: locked
models:
  drafter:
    model: local/deterministic
    params: {temperature: 0}
steps:
  hello:
    kind: python
    call: lockmods:hello
    deps: [data]
  draft:
    kind: llm
    needs: [hello]
    model: drafter
    prompt: prompts/draft.md
    output_schema: schemas/answer.schema.json
    outputs:
      verdict: {type: string}
  check:
    kind: shell
    needs: [hello]
    run: [sh, scripts/check.sh]
gates:
  answer:
    kind: contract
    after: hello
    artifact: out/answer.json
    schema: schemas/answer.schema.json
    require: valid
"""

MODULE = """\
import json
from pathlib import Path


def hello():
    Path("out").mkdir(exist_ok=True)
    Path("out/answer.json").write_text(json.dumps({"verdict": "ok"}))
    return {"greeting": "hello"}
"""

SCHEMA = {
    "type": "object",
    "required": ["verdict"],
    "properties": {"verdict": {"type": "string", "examples": ["ok"]}},
}


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BLOCKS_") and not k.endswith("_API_KEY")
    }
    env.update(
        PYTHONDONTWRITEBYTECODE="1", LITELLM_LOCAL_MODEL_COST_MAP="True", NO_PROXY="127.0.0.1"
    )
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(name, None)
    env.update(extra)
    return env


class Project:
    def __init__(self, root: Path) -> None:
        self.root = root

    def blocks(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BLOCKS, *args],
            cwd=self.root,
            env=_env(**env),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def write(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def read(self, rel: str) -> str:
        return (self.root / rel).read_text()

    @property
    def lock(self) -> Path:
        return self.root / "flow.yaml.lock"

    def runs(self) -> list[str]:
        runs = self.root / ".blocks" / "runs"
        return sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []


def explain(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"


def _make(root: Path) -> Project:
    project = Project(root)
    root.mkdir(parents=True, exist_ok=True)
    project.write("pyproject.toml", '[project]\nname = "lock-fixture"\nversion = "0"\n')
    project.write("flow.yaml", FLOW)
    project.write("lockmods.py", MODULE)
    project.write("data/a.txt", "alpha\n")
    project.write("data/nested/b.txt", "beta\n")
    project.write("prompts/draft.md", "Give a verdict on the greeting.\n")
    project.write("schemas/answer.schema.json", json.dumps(SCHEMA, indent=2) + "\n")
    project.write("scripts/check.sh", "echo checked\n")
    return project


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return _make(tmp_path / "project")


@pytest.fixture(scope="module")
def locked_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project locked once; each test that needs one gets its own copy."""
    project = _make(tmp_path_factory.mktemp("locked") / "project")
    done = project.blocks("lock", "flow.yaml")
    assert done.returncode == 0, explain(done)
    assert done.stdout.startswith("wrote flow.yaml.lock (6 files, 1 route, 4 tools)")
    return project.root


@pytest.fixture
def locked(locked_template: Path, tmp_path: Path) -> Project:
    root = tmp_path / "project"
    shutil.copytree(locked_template, root)
    return Project(root)


# ---- writing the lock -------------------------------------------------------------------


def test_the_lock_pins_every_file_route_and_tool(locked: Project) -> None:
    doc = tomllib.loads(locked.read("flow.yaml.lock"))
    assert doc["lock"]["format"] == "blocks.lock/1"
    assert doc["lock"]["spec"] == "flow.yaml"
    assert doc["lock"]["flow"] == "locked"
    assert doc["lock"]["sha256"].startswith("sha256:")
    assert sorted(doc["files"]) == [
        "data/a.txt",
        "data/nested/b.txt",
        "lockmods.py",
        "prompts/draft.md",
        "schemas/answer.schema.json",
        "scripts/check.sh",
    ]
    assert doc["files"]["schemas/answer.schema.json"]["used_by"] == [
        "gates.answer.schema",
        "steps.draft.output_schema",
    ]
    assert doc["files"]["lockmods.py"]["used_by"] == ["steps.hello.call"]
    assert doc["files"]["data/nested/b.txt"]["used_by"] == ["steps.hello.deps"]
    assert doc["files"]["scripts/check.sh"]["used_by"] == ["steps.check.run"]
    route = doc["routes"]["drafter"]
    assert route["model"] == "local/deterministic"
    assert route["fallbacks"] == []
    pinned = route["versions"]["local/deterministic"]["version"]
    assert pinned == f"local/deterministic-{LOCAL_MODEL_VERSION}"
    assert set(doc["tools"]) == {"engine", "python", "litellm", "jsonschema"}
    assert all(t["version"] for t in doc["tools"].values())


def test_the_lock_text_is_stable_sorted_and_machine_independent(locked: Project) -> None:
    first = locked.lock.read_bytes()
    again = locked.blocks("lock", "flow.yaml")
    assert again.returncode == 0, explain(again)
    assert again.stdout.startswith("unchanged flow.yaml.lock")
    assert locked.lock.read_bytes() == first
    locked.lock.unlink()
    assert locked.blocks("lock", "flow.yaml").returncode == 0
    assert locked.lock.read_bytes() == first
    # the same project elsewhere (another checkout, another machine) gives the same bytes
    elsewhere = locked.root.parent / "elsewhere" / "copy"
    shutil.copytree(locked.root, elsewhere)
    (elsewhere / "flow.yaml.lock").unlink()
    sub = Project(elsewhere)
    assert sub.blocks("lock", "flow.yaml").returncode == 0
    assert sub.lock.read_bytes() == first

    text = first.decode()
    assert text.endswith("\n")
    assert not text.endswith("\n\n")
    assert text.startswith("# The lock file (TOML) of flow.yaml, written by `blocks lock`")
    assert str(locked.root) not in text
    assert str(locked.root.parent) not in text
    headers = [line for line in text.splitlines() if line.startswith("[")]
    files = [h for h in headers if h.startswith("[files.")]
    assert files == sorted(files)
    tools = [h for h in headers if h.startswith("[tools.")]
    assert tools == sorted(tools)
    # one entry per group: every table is preceded by a blank line
    lines = text.splitlines()
    assert all(lines[i - 1] == "" for i, line in enumerate(lines) if line.startswith("["))


def test_the_lock_is_written_from_another_folder_beside_the_flow(project: Project) -> None:
    (project.root / "sub").mkdir()
    done = subprocess.run(
        [BLOCKS, "lock", "../flow.yaml"],
        cwd=project.root / "sub",
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, explain(done)
    assert tomllib.loads(project.read("flow.yaml.lock"))["lock"]["spec"] == "flow.yaml"


# ---- run --locked -----------------------------------------------------------------------


def test_a_locked_run_succeeds_and_its_bundle_holds_the_lock(locked: Project) -> None:
    done = locked.blocks("run", "flow.yaml", "--locked", "--json", "--log-format", "off")
    assert done.returncode == 0, explain(done)
    outcome = json.loads(done.stdout)
    assert outcome["status"] == "succeeded"
    store = LocalBundleStore(locked.root / ".blocks" / "bundles")
    assert store.read_member(outcome["bundle"], "blocks.lock") == locked.lock.read_bytes()
    # the version the lock pinned for the local route is the one that answered
    ledger = json.loads(store.read_member(outcome["bundle"], "llm/ledger.json"))
    doc = tomllib.loads(locked.read("flow.yaml.lock"))
    pinned = doc["routes"]["drafter"]["versions"]["local/deterministic"]["version"]
    assert ledger["models_answered"] == [pinned]

    # a stale lock does not stop a run without --locked, but stays out of its bundle
    locked.write("prompts/draft.md", "Give a verdict, briefly.\n")
    done = locked.blocks("run", "flow.yaml", "--json", "--log-format", "json")
    assert done.returncode == 0, explain(done)
    outcome = json.loads(done.stdout)
    paths = store.get_manifest(outcome["bundle"]).paths
    assert "blocks.lock" not in paths
    stale = [json.loads(line) for line in done.stderr.splitlines() if '"lock.stale"' in line]
    assert stale, done.stderr
    assert stale[0]["level"] == "warning", done.stderr
    assert any("prompts/draft.md: sha256" in item for item in stale[0]["drift"])


def _edit_prompt(p: Project) -> str:
    p.write("prompts/draft.md", "Give a verdict on the greeting, in one word.\n")
    return "prompts/draft.md: sha256 "


def _edit_schema(p: Project) -> str:
    p.write("schemas/answer.schema.json", json.dumps({**SCHEMA, "title": "answer"}) + "\n")
    return "schemas/answer.schema.json: sha256 "


def _edit_code(p: Project) -> str:
    p.write("lockmods.py", MODULE + "\n# a comment changes the digest\n")
    return "lockmods.py: sha256 "


def _edit_deps(p: Project) -> str:
    p.write("data/nested/b.txt", "beta, changed\n")
    return "data/nested/b.txt: sha256 "


def _add_deps_file(p: Project) -> str:
    p.write("data/c.txt", "gamma\n")
    return "data/c.txt: used by the flow now (steps.hello.deps), not in the lock"


def _edit_script(p: Project) -> str:
    p.write("scripts/check.sh", "echo checked twice\n")
    return "scripts/check.sh: sha256 "


def _edit_route(p: Project) -> str:
    p.write("flow.yaml", p.read("flow.yaml").replace("local/deterministic", "local/drafter-v2"))
    return "route drafter: primary local/deterministic in the lock, local/drafter-v2 now"


def _edit_fallbacks(p: Project) -> str:
    text = p.read("flow.yaml").replace(
        "    params: {temperature: 0}\n",
        "    fallbacks: [local/backup]\n    params: {temperature: 0}\n",
    )
    p.write("flow.yaml", text)
    return "route drafter: fallbacks none in the lock, [local/backup] now"


def _edit_tool(p: Project) -> str:
    text = p.read("flow.yaml.lock")
    doc = tomllib.loads(text)
    real = doc["tools"]["litellm"]["version"]
    marker = f'[tools.litellm]\nversion = "{real}"'
    assert marker in text
    p.write("flow.yaml.lock", text.replace(marker, '[tools.litellm]\nversion = "0.0.1"'))
    return f"tool litellm: 0.0.1 in the lock, {real} now"


def _edit_local_version(p: Project) -> str:
    text = p.read("flow.yaml.lock")
    old = f'version = "local/deterministic-{LOCAL_MODEL_VERSION}"'
    assert old in text
    p.write("flow.yaml.lock", text.replace(old, 'version = "local/deterministic-2000-01-01"'))
    return (
        "route drafter: local/deterministic resolves to local/deterministic-2000-01-01 in the "
        f"lock, local/deterministic-{LOCAL_MODEL_VERSION} now"
    )


CHANGES = {
    "prompt": _edit_prompt,
    "schema": _edit_schema,
    "python code": _edit_code,
    "deps file": _edit_deps,
    "new deps file": _add_deps_file,
    "shell script": _edit_script,
    "route model": _edit_route,
    "route fallbacks": _edit_fallbacks,
    "tool version": _edit_tool,
    "local model version": _edit_local_version,
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_locked_run_refuses_naming_what_drifted(locked: Project, change: str) -> None:
    expected = CHANGES[change](locked)
    done = locked.blocks("run", "flow.yaml", "--locked")
    assert done.returncode == 1, explain(done)
    assert "Traceback" not in done.stderr
    assert "refusing to run with --locked: flow.yaml drifted from flow.yaml.lock" in done.stderr
    assert expected in done.stderr, done.stderr
    assert "pin them with: blocks lock flow.yaml" in done.stderr
    assert done.stdout == ""
    assert locked.runs() == []  # no run started, nothing written
    assert not (locked.root / "out").exists()

    check = locked.blocks("lock", "--check", "flow.yaml")
    assert check.returncode == 1, explain(check)
    assert "flow.yaml.lock: stale" in check.stdout
    assert expected in check.stdout
    # drifted entries point at their line in the lock file
    item = next(line.strip() for line in check.stdout.splitlines() if expected in line)
    where = item.split(": ", 1)[0]
    if not expected.endswith("not in the lock"):
        file, line, col = where.split(":")
        assert (file, col) == ("flow.yaml.lock", "1"), item
        assert int(line) > 1, item


def test_spec_edits_are_named_as_the_flow(locked: Project) -> None:
    locked.write("flow.yaml", locked.read("flow.yaml") + "# a comment\n")
    done = locked.blocks("run", "flow.yaml", "--locked")
    assert done.returncode == 1, explain(done)
    assert "flow.yaml (the flow): sha256 " in done.stderr
    assert "in the lock" in done.stderr
    assert " now" in done.stderr


def test_locked_run_without_a_lock_refuses(project: Project) -> None:
    done = project.blocks("run", "flow.yaml", "--locked")
    assert done.returncode == 1, explain(done)
    assert "flow.yaml.lock: no lock file for flow.yaml" in done.stderr
    assert "blocks lock flow.yaml" in done.stderr
    assert "Traceback" not in done.stderr
    assert project.runs() == []


def test_a_broken_lock_is_reported_at_its_line_and_column(locked: Project) -> None:
    text = locked.read("flow.yaml.lock")
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("[routes."))
    lines[index + 1] = "model = local/deterministic"  # not a TOML string
    locked.write("flow.yaml.lock", "\n".join(lines) + "\n")
    for args in (("run", "flow.yaml", "--locked"), ("lock", "--check", "flow.yaml")):
        done = locked.blocks(*args)
        assert done.returncode == 1, explain(done)
        shown = done.stderr + done.stdout
        assert f"flow.yaml.lock:{index + 2}:9: not a lock file (TOML: " in shown, shown
        assert "Traceback" not in shown
    assert locked.runs() == []

    locked.write("flow.yaml.lock", text.replace('format = "blocks.lock/1"', 'format = "x/9"'))
    done = locked.blocks("lock", "--check", "flow.yaml")
    assert done.returncode == 1
    line = text.splitlines().index('format = "blocks.lock/1"') + 1
    assert f"flow.yaml.lock:{line}:1: unsupported lock format 'x/9'" in done.stdout


# ---- lock --check -----------------------------------------------------------------------


def test_lock_check_exit_codes(project: Project) -> None:
    missing = project.blocks("lock", "--check", "flow.yaml")
    assert missing.returncode == 1, explain(missing)
    assert "no lock file" in missing.stdout
    assert not project.lock.exists()  # --check writes nothing

    assert project.blocks("lock", "flow.yaml").returncode == 0
    fresh = project.blocks("lock", "--check", "flow.yaml")
    assert fresh.returncode == 0, explain(fresh)
    assert fresh.stdout == "flow.yaml.lock: up to date\n"

    before = project.lock.read_bytes()
    _edit_prompt(project)
    stale = project.blocks("lock", "--check", "flow.yaml")
    assert stale.returncode == 1
    assert project.lock.read_bytes() == before
    assert project.blocks("lock", "flow.yaml").returncode == 0
    assert project.blocks("lock", "--check", "flow.yaml").returncode == 0

    nowhere = project.blocks("lock", "--check", "nowhere.yaml")
    assert nowhere.returncode == 2
    assert "no such flow file: nowhere.yaml" in nowhere.stderr


def test_the_committed_example_locks_are_current() -> None:
    flows = ["pipelines/basel-attestation.yaml", "pipelines/bc-anneal-promotion.yaml"]
    done = subprocess.run(
        [BLOCKS, "lock", "--check", *flows],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, (
        "a committed lock is stale: review the change, then run "
        f"`blocks lock {' '.join(flows)}`\n{explain(done)}"
    )


# ---- merging in git ---------------------------------------------------------------------


def test_two_branches_that_pinned_different_files_merge_cleanly(
    locked: Project, tmp_path: Path
) -> None:
    base = locked.lock.read_bytes()
    prompt = locked.read("prompts/draft.md")
    _edit_prompt(locked)
    assert locked.blocks("lock", "flow.yaml").returncode == 0
    ours = locked.lock.read_bytes()
    locked.write("prompts/draft.md", prompt)
    _edit_code(locked)
    assert locked.blocks("lock", "flow.yaml").returncode == 0
    theirs = locked.lock.read_bytes()
    _edit_prompt(locked)  # both changes: what the merged lock must say
    assert locked.blocks("lock", "flow.yaml").returncode == 0
    both = locked.lock.read_bytes()
    assert len({base, ours, theirs, both}) == 4

    work = tmp_path / "merge"
    work.mkdir()
    for name, data in (("ours", ours), ("base", base), ("theirs", theirs)):
        (work / name).write_bytes(data)
    merged = subprocess.run(
        ["git", "merge-file", "-p", "ours", "base", "theirs"],
        cwd=work,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert merged.returncode == 0, merged.stdout.decode() + merged.stderr.decode()
    assert merged.stdout == both
    # and the merged lock holds: nothing drifted
    locked.lock.write_bytes(merged.stdout)
    assert locked.blocks("lock", "--check", "flow.yaml").returncode == 0


# ---- a real provider's dated version ----------------------------------------------------

PROVIDER_FLOW = """\
version: 1
kind: flow
name: provider-locked
secrets: [OPENAI_API_KEY]
models:
  drafter:
    model: openai/gpt-4o-mini
    params: {api_base: "API_BASE", temperature: 0}
    timeout: 30s
    retry: {attempts: 1}
steps:
  draft:
    kind: llm
    model: drafter
    prompt: prompts/draft.md
"""


@pytest.fixture
def fake_provider() -> Iterator[FakeLLMServer]:
    script = [
        {"when": {"request": 1}, "content": "first", "answer_model": "gpt-4o-mini-2024-07-18"},
        {"content": "later", "answer_model": "gpt-4o-mini-2025-02-02"},
    ]
    with FakeLLMServer(script=script) as server:
        yield server


def test_a_provider_version_is_resolved_from_the_last_bundle(
    tmp_path: Path, fake_provider: FakeLLMServer
) -> None:
    project = _make(tmp_path / "provider")
    project.write("flow.yaml", PROVIDER_FLOW.replace("API_BASE", fake_provider.base_url))
    key = {"OPENAI_API_KEY": "sk-test-lock-0000"}

    assert project.blocks("lock", "flow.yaml").returncode == 0
    doc = tomllib.loads(project.read("flow.yaml.lock"))
    version = doc["routes"]["drafter"]["versions"]["openai/gpt-4o-mini"]
    assert version["version"] == "unresolved"
    assert "--locked checks the model name only" in version["resolved_from"]

    first = project.blocks("run", "flow.yaml", "--locked", "--log-format", "off", **key)
    assert first.returncode == 0, explain(first)
    # a bundle now says which dated model answered; locking again pins it
    again = project.blocks("lock", "flow.yaml")
    assert again.returncode == 0, explain(again)
    assert again.stdout.startswith("wrote ")
    doc = tomllib.loads(project.read("flow.yaml.lock"))
    version = doc["routes"]["drafter"]["versions"]["openai/gpt-4o-mini"]
    assert version["version"] == "gpt-4o-mini-2024-07-18"
    assert version["resolved_from"] == "the newest bundle of this flow that used the route"

    # the provider moved the alias: the next run answers from another dated model, and
    # from then on the lock is stale, naming the route and both versions
    moved = project.blocks(
        "run", "flow.yaml", "--locked", "--no-cache", "--log-format", "off", **key
    )
    assert moved.returncode == 0, explain(moved)
    check = project.blocks("lock", "--check", "flow.yaml")
    assert check.returncode == 1, explain(check)
    assert (
        "route drafter: openai/gpt-4o-mini resolves to gpt-4o-mini-2024-07-18 in the lock, "
        "gpt-4o-mini-2025-02-02 now" in check.stdout
    )
    refused = project.blocks("run", "flow.yaml", "--locked", **key)
    assert refused.returncode == 1
    assert "gpt-4o-mini-2025-02-02 now" in refused.stderr
    assert fake_provider.request_count == 2

    # a fresh clone has no bundles: the version cannot be resolved there, so only the route's
    # names are compared and the committed lock still holds; relocking keeps the version
    shutil.rmtree(project.root / ".blocks")
    assert project.blocks("lock", "--check", "flow.yaml").returncode == 0
    before = project.lock.read_bytes()
    assert project.blocks("lock", "flow.yaml").stdout.startswith("unchanged ")
    assert project.lock.read_bytes() == before


def test_a_runbook_override_of_a_route_is_not_drift(locked: Project) -> None:
    """A runbook may send a route to its fallback (`.blocks/overrides.json`): the run then
    asks the fallback first, but the flow as written, which the lock pins, is unchanged."""
    _edit_fallbacks(locked)
    assert locked.blocks("lock", "flow.yaml").returncode == 0
    pinned = locked.lock.read_bytes()
    state = locked.root / ".blocks"
    state.mkdir(exist_ok=True)
    overrides = {"flow.yaml": {"routes": {"drafter": "fallback"}, "by": "t", "reason": "test"}}
    (state / "overrides.json").write_text(json.dumps(overrides))
    check = locked.blocks("lock", "--check", "flow.yaml")
    assert check.returncode == 0, explain(check)
    assert locked.blocks("lock", "flow.yaml").stdout.startswith("unchanged ")
    assert locked.lock.read_bytes() == pinned
