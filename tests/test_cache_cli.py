"""`blocks cache gc`: entries by last use, the kept outs no entry names, crash debris; through
the real CLI, on the cache a real run made."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from conftest import Project
from test_outs_cli import FLOW

DAY = 86400.0


def _gc(project: Project, *args: str) -> dict[str, Any]:
    done = project.blocks("cache", "gc", *args, "--json")
    assert done.returncode == 0, project.explain(done)
    return json.loads(done.stdout)


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("??/*.json"))


def _blobs(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "blobs").rglob("*") if p.is_file())


def _age(path: Path, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def test_gc_removes_what_no_entry_needs_and_entries_by_last_use(blocks_project: Project) -> None:
    project = blocks_project
    (project.root / "outs.yaml").write_text(FLOW)
    project.run_json("outs.yaml")
    cache = project.root / ".blocks" / "cache"
    (entry,) = _entries(cache)  # `build`; `check` is `cache: false`
    kept = _blobs(cache)
    assert len(kept) == 3  # the three files under the step's outs

    # debris: a copy no entry names, and a temporary file a crash left an hour ago
    orphan = cache / "blobs" / "ab" / ("ab" + "0" * 62)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"left over")
    temp = cache / "blobs" / "ab" / ".tmp-crashed"
    temp.write_bytes(b"half")
    _age(temp, 1)
    fresh_temp = entry.parent / ".tmp-writing"  # a write in progress: not debris
    fresh_temp.write_bytes(b"now")

    preview = _gc(project, "--dry-run")
    assert (preview["entries"], preview["blobs"], preview["temps"]) == (0, 1, 1)
    assert preview["freed_bytes"] == len(b"left over") + len(b"half")
    assert orphan.exists()
    assert temp.exists()

    swept = _gc(project)
    assert (swept["entries"], swept["blobs"], swept["temps"]) == (0, 1, 1)
    assert swept["kept_entries"] == 1
    assert not orphan.exists()
    assert not temp.exists()
    assert fresh_temp.exists()
    assert _blobs(cache) == kept

    # last used 40 days ago: `--older-than 30d` takes the entry, then the outs it alone named
    _age(entry, 40)
    assert _gc(project, "--older-than", "50d")["entries"] == 0
    old = _gc(project, "--older-than", "30d")
    assert (old["entries"], old["blobs"], old["kept_entries"]) == (1, 3, 0)
    assert _entries(cache) == []
    assert _blobs(cache) == []
    project.run_json("outs.yaml")  # no entry: the step runs again
    assert project.side_effects()["built"] == 2


def test_a_cache_hit_counts_as_a_use(blocks_project: Project) -> None:
    project = blocks_project
    (project.root / "outs.yaml").write_text(FLOW)
    project.run_json("outs.yaml")
    cache = project.root / ".blocks" / "cache"
    (entry,) = _entries(cache)
    _age(entry, 40)
    hit = project.run_json("outs.yaml")
    assert hit["steps"]["build"]["status"] == "cached"
    assert _gc(project, "--older-than", "30d")["entries"] == 0
    assert _entries(cache) == [entry]


def test_a_bad_duration_is_a_usage_error(blocks_project: Project) -> None:
    done = blocks_project.blocks("cache", "gc", "--older-than", "soon")
    assert done.returncode == 2, blocks_project.explain(done)
    assert "--older-than" in done.stderr
    assert "Traceback" not in done.stderr
