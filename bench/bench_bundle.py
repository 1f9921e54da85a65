"""Benchmark bundle write and verify throughput against plain `hashlib.sha256`, same bytes.

    .venv/bin/python bench/bench_bundle.py [--rounds 5] [--mib 200] [--profile] [--write-docs]

Goal (issue 5): `LocalBundleStore.put_bundle` and `LocalBundleStore.verify` on 200 MiB of step
outputs within 1.5x of the time plain `hashlib.sha256` takes over the same bytes, measured in
the same run.

Each round runs two child processes (so each has its own peak RSS):

* **write**: builds the members in memory (`outputs/step-NNN.bin`, 1 MiB of seeded random
  bytes each, plus two 5 MiB files, `--mib` MiB in all, and a small `run.json`), then times,
  in this order: `hashlib.sha256` over every member (the reference); two disk floors with no
  hashing and no store (each member written to a temp file, fsynced, renamed, in one folder;
  and the same in the store's layout of one folder per two hex digits, each folder fsynced
  once); `put_bundle(members, run_id=...)` into a fresh store, and the same with the
  previous blob writer (one blob at a time, its folder fsynced after each; the two in
  alternating order from round to round); then the reference again. Stores and floor files
  go to `bench/out/bundle/` (git-ignored), on the repository's disk, like a project's
  `.blocks/bundles`; all are removed after the round.
* **verify**: a fresh process opens the store and times `store.verify(run id)` (every blob
  re-read and re-hashed, plus the survey of the store for added or renamed files), the same
  with the previous reader (`BufferedReader.read`, a new bytes object per MiB), and the same
  bytes read back and hashed with plain `hashlib` (what `sha256sum` does). The page cache
  is warm (the files were just written): dropping it needs the whole machine.

Ratios are per round (the store's time over the reference's time in that same process), then
the median over rounds. Timings are wall-clock `time.perf_counter`; CPU times (user + system)
are reported beside them. Peak RSS is `ru_maxrss` of each child: the write child holds the
members in memory (`put_bundle` takes bytes), so its peak includes them.
`--write-docs` puts the report into docs/benchmarks.md between `<!-- bench:bundle:start -->`
and `<!-- bench:bundle:end -->` (appended at the end if missing), keeping the hand-written
notes between `<!-- bench:bundle:notes:start -->` and `<!-- bench:bundle:notes:end -->`.
`--profile` adds a cProfile of one `put_bundle` and one `verify`. Timing is never asserted:
this is not a test.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import hashlib
import io
import json
import os
import platform
import pstats
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

OUT = HERE / "out" / "bundle"
DOCS = ROOT / "docs" / "benchmarks.md"
MARK_START, MARK_END = "<!-- bench:bundle:start -->", "<!-- bench:bundle:end -->"
NOTES_START, NOTES_END = "<!-- bench:bundle:notes:start -->", "<!-- bench:bundle:notes:end -->"
MIB = 1 << 20
LARGE = 2  # members of 5 MiB; the rest are 1 MiB
GOAL = 1.5


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_members(mib: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    members: dict[str, bytes] = {}
    small = mib - 5 * LARGE
    for i in range(small):
        members[f"outputs/step-{i:03d}.bin"] = rng.randbytes(MIB)
    for i in range(LARGE):
        members[f"outputs/large-{i}.bin"] = rng.randbytes(5 * MIB)
    members["run.json"] = json.dumps({"run": "bench", "members": len(members)}).encode()
    return members


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, float, Any]:
    c0, t0 = cpu(), time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - t0, cpu() - c0, value


def hash_all(members: dict[str, bytes]) -> list[bytes]:
    return [hashlib.sha256(data).digest() for data in members.values()]


def disk_floor(members: dict[str, bytes], folder: Path) -> None:
    """Each member to a temp file, fsynced, renamed, folder fsynced: durable, no hashing."""
    folder.mkdir(parents=True)
    for i, data in enumerate(members.values()):
        tmp = folder / f".tmp-{i}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[:MIB]) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, folder / f"m{i}")
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def layout_floor(members: dict[str, bytes], folder: Path) -> None:
    """The disk floor in the store's layout, no hashing: each member under a folder named by
    two hex digits (a new folder per prefix, as blobs/sha256/ab/), written to a temp file,
    fsynced, linked to its name; each folder fsynced once at the end, then their parent."""
    folder.mkdir(parents=True)
    made: set[Path] = set()
    for i, data in enumerate(members.values()):
        name = hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest()  # a spread name
        sub = folder / name[:2]
        if sub not in made:
            sub.mkdir()
            made.add(sub)
        tmp = sub / f".tmp-{i}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[:MIB]) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, sub / name)
        os.unlink(tmp)
    for path in [*sorted(made), folder]:
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def read_and_hash(paths: list[Path]) -> int:
    """sha256sum over files: read in 1 MiB pieces, plain hashlib."""
    total = 0
    buf = bytearray(MIB)
    view = memoryview(buf)
    for path in paths:
        h = hashlib.sha256()
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                h.update(view[:n])
                total += n
        h.digest()
    return total


def profile_text(fn: Any, *args: Any, **kwargs: Any) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fn(*args, **kwargs)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    return "\n".join(lines[:40])


def previous_store_class() -> Any:
    """The store as it was before the write and verify paths were reworked (for comparison
    in the same run): one blob at a time, each fsynced, linked and its folder fsynced before
    the next; verify reading each file with `BufferedReader.read` (a new bytes per MiB)."""
    import functools  # noqa: PLC0415

    from engine.bundle import LeafHasher, Manifest, Member  # noqa: PLC0415
    from engine.errors import TamperError  # noqa: PLC0415
    from engine.stores.local import LocalBundleStore  # noqa: PLC0415

    def hash_file(path: Path) -> str:
        h = LeafHasher()
        with path.open("rb") as fh:
            while chunk := fh.read(MIB):
                h.update(chunk)
        return h.digest()

    class Previous(LocalBundleStore):
        def _put_blobs(self, manifest: Manifest, members: Any) -> None:
            done: set[str] = set()
            for m in manifest.members:
                if m.digest not in done:
                    done.add(m.digest)
                    check = functools.partial(self._check_blob, member=m)
                    self._write_once(self.blob_path(m.digest), members[m.path], check)

        def _check_blob(self, path: Path, *, member: Member) -> None:
            if path.stat().st_size != member.size or hash_file(path) != member.digest:
                raise TamperError(f"member {member.path}: does not match its digest")

    return Previous


def child_write(store_dir: Path, floor_dir: Path, mib: int, seed: int, profile: bool) -> None:
    from engine.stores.local import LocalBundleStore  # noqa: PLC0415

    members = make_members(mib, seed)
    size = sum(len(v) for v in members.values())
    held = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    h1, h1c, _ = timed(hash_all, members)
    fl, flc, _ = timed(disk_floor, members, floor_dir)
    ll, llc, _ = timed(layout_floor, members, floor_dir.with_name("floor-layout"))
    store = LocalBundleStore(store_dir)
    run_id = f"bench-{seed}"
    if profile:
        text = profile_text(store.put_bundle, members, run_id=run_id)
        root = store.resolve(run_id)
        print(json.dumps({"profile": text, "root": root, "run": run_id, "bytes": size}))
        return
    previous = previous_store_class()(store_dir.with_name("store-previous"))
    if seed % 2:  # alternate which goes first, so neither always meets a busier disk
        pw, pwc, root = timed(store.put_bundle, members, run_id=run_id)
        ow, owc, _ = timed(previous.put_bundle, members, run_id=run_id)
    else:
        ow, owc, _ = timed(previous.put_bundle, members, run_id=run_id)
        pw, pwc, root = timed(store.put_bundle, members, run_id=run_id)
    h2, h2c, _ = timed(hash_all, members)
    print(
        json.dumps(
            {
                "bytes": size,
                "members": len(members),
                "hash": [h1, h2],
                "hash_cpu": [h1c, h2c],
                "floor": fl,
                "floor_cpu": flc,
                "layout_floor": ll,
                "layout_floor_cpu": llc,
                "put": pw,
                "put_cpu": pwc,
                "put_previous": ow,
                "put_previous_cpu": owc,
                "root": root,
                "run": run_id,
                "rss_held_kib": held,
                "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }
        )
    )


def child_verify(store_dir: Path, run_id: str, profile: bool) -> None:
    from engine.stores.local import LocalBundleStore  # noqa: PLC0415

    store = LocalBundleStore(store_dir)
    if profile:
        print(json.dumps({"profile": profile_text(store.verify, run_id)}))
        return
    blobs = sorted(p for p in (store_dir / "blobs").rglob("*") if p.is_file())
    previous = previous_store_class()(store_dir)
    r1, r1c, size = timed(read_and_hash, blobs)
    v, vc, report = timed(store.verify, run_id)
    o, oc, _ = timed(previous.verify, run_id)
    r2, r2c, _ = timed(read_and_hash, blobs)
    if not report.ok:
        sys.exit(f"verify says the bundle is not intact: {report.problems()}")
    print(
        json.dumps(
            {
                "bytes": size,
                "checked": report.checked,
                "verify": v,
                "verify_cpu": vc,
                "verify_previous": o,
                "verify_previous_cpu": oc,
                "readhash": [r1, r2],
                "readhash_cpu": [r1c, r2c],
                "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }
        )
    )


def run_child(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"child {args[0]} failed ({done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def one_round(n: int, mib: int, profile: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    base = OUT / f"round-{n}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    try:
        w = run_child(
            "write", str(base / "store"), str(base / "floor"), str(mib), str(n), str(int(profile))
        )
        v = run_child("verify", str(base / "store"), w["run"], str(int(profile)))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return w, v


# ---- report ------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values)


def mbs(nbytes: int, seconds: float) -> str:
    return f"{nbytes / MIB / seconds:,.0f}"


def machine(load_before: tuple[float, ...], load_after: tuple[float, ...]) -> dict[str, str]:
    model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        sha_ni = " sha_ni" in fh.read()
    disk = "unknown"
    try:
        out = (
            subprocess.run(["df", "-T", str(ROOT)], capture_output=True, text=True, check=True)
            .stdout.splitlines()[-1]
            .split()
        )
        disk = f"{out[0]} ({out[1]})"
    except (OSError, subprocess.CalledProcessError, IndexError):
        pass
    return {
        "cpu": f"{os.cpu_count()} × {model} (`nproc` {os.cpu_count()}"
        + (", SHA extensions" if sha_ni else "")
        + ")",
        "python": f"{platform.python_implementation()} {platform.python_version()}, "
        f"OpenSSL {__import__('ssl').OPENSSL_VERSION.split()[1]}",
        "os": f"{platform.system()} {platform.release()}",
        "disk": disk,
        "load": " / ".join(f"{x:.2f}" for x in load_before)
        + " before, "
        + " / ".join(f"{x:.2f}" for x in load_after)
        + " after",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def report(
    writes: list[dict[str, Any]],
    verifies: list[dict[str, Any]],
    info: dict[str, str],
    command: str,
    profiles: list[str],
) -> str:
    size = writes[0]["bytes"]
    members = writes[0]["members"]
    hash_t = [med(w["hash"]) for w in writes]  # the reference of each round, wall
    hash_c = [med(w["hash_cpu"]) for w in writes]  # and CPU

    def col(rows: list[dict[str, Any]], key: str) -> list[float]:
        return [med(r[key]) if isinstance(r[key], list) else r[key] for r in rows]

    def ratios(values: list[float], ref: list[float]) -> list[float]:
        return [v / r for v, r in zip(values, ref, strict=True)]

    ops = [  # name, what, rows, wall key, cpu key
        ("hashlib.sha256", "over the members in memory (the reference; twice per round, "
         "median)", writes, "hash", "hash_cpu"),
        ("**put_bundle**", "hash every member, write each blob (temp file, fsync, link), "
         "manifest, run index", writes, "put", "put_cpu"),
        ("put_bundle, previous writer", "the same, one blob at a time: fsync, link, folder "
         "fsync, then the next", writes, "put_previous", "put_previous_cpu"),
        ("disk floor", "each member written to a temp file, fsynced, renamed; folder "
         "fsynced; no hashing", writes, "floor", "floor_cpu"),
        ("disk floor, store layout", "the same in 2-hex-digit folders (as blobs/sha256/ab/): "
         "mkdir, fsync, link; each folder fsynced once", writes, "layout_floor",
         "layout_floor_cpu"),
        ("**verify**", "re-read and re-hash every blob, check the manifest, survey the store",
         verifies, "verify", "verify_cpu"),
        ("verify, previous reader", "the same, reading each blob with `BufferedReader.read` "
         "(a new bytes object per MiB)", verifies, "verify_previous", "verify_previous_cpu"),
        ("read + hashlib", "the same blob files read back (1 MiB `readinto`) and hashed: "
         "`sha256sum`", verifies, "readhash", "readhash_cpu"),
    ]  # fmt: skip
    table = [
        "| Operation | What | Wall s, median (min) | MiB/s (median wall) | CPU s (median) "
        "| × hashlib, wall | × hashlib, CPU |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    got: dict[str, tuple[float, float]] = {}
    for name, what, rows, wall_key, cpu_key in ops:
        wall, cpus = col(rows, wall_key), col(rows, cpu_key)
        rw, rc = med(ratios(wall, hash_t)), med(ratios(cpus, hash_c))
        got[wall_key] = (rw, rc)
        table.append(
            f"| {name} | {what} | {med(wall):.3f} ({min(wall):.3f}) | {mbs(size, med(wall))} "
            f"| {med(cpus):.3f} | {rw:.2f} | {rc:.2f} |"
        )
    put_w = got["put"][0]
    ver_c, ver_w = got["verify"][1], got["verify"][0]
    put_layout = med([w["put"] / w["layout_floor"] for w in writes])
    put_floor = med([w["put"] / w["floor"] for w in writes])
    ver_rh = med([v["verify_cpu"] / med(v["readhash_cpu"]) for v in verifies])
    rounds = len(writes)

    def listed(values: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in values)

    out = [
        f"Command: `{command}`",
        "",
        f"Data: {members} members, {size / MIB:,.0f} MiB ({size:,} bytes): "
        f"{members - LARGE - 1} × 1 MiB and {LARGE} × 5 MiB of seeded random bytes "
        "(`outputs/*.bin`) and a small `run.json`. Stores and floor files in "
        "`bench/out/bundle/` (git-ignored), on the repository's disk "
        f"({info['disk']}); fresh ones every round. {rounds} rounds; each round is one "
        "write process and one verify process.",
        f"Recorded {info['date']} on {info['cpu']}, {info['python']} ({info['os']}); "
        f"load average (1, 5, 15 min) {info['load']}.",
        "",
        *table,
        "",
        "Ratios are per round (each operation over hashlib in the same process), then the "
        "median over rounds.",
        "",
        f"Peak RSS: write process {med([w['rss_kib'] for w in writes]) / 1024:,.0f} MiB "
        f"(of which {med([w['rss_held_kib'] for w in writes]) / 1024:,.0f} MiB is the "
        "interpreter, the engine's imports and the members held in memory before anything is "
        f"timed); verify process {med([v['rss_kib'] for v in verifies]) / 1024:,.0f} MiB "
        "(blobs are hashed in 1 MiB pieces, never loaded whole).",
        "",
        "Per round: put_bundle / hashlib (wall) "
        + listed(ratios(col(writes, "put"), hash_t))
        + "; put_bundle / disk floor in the store layout "
        + listed([w["put"] / w["layout_floor"] for w in writes])
        + "; verify / hashlib (CPU) "
        + listed(ratios(col(verifies, "verify_cpu"), hash_c))
        + "; verify / hashlib (wall) "
        + listed(ratios(col(verifies, "verify"), hash_t))
        + ".",
        "",
        "Goal: within 1.5× of hashlib. Writing is judged on wall time: its cost is waiting "
        "for the disk, which CPU time does not count. Verifying is judged on CPU time: it "
        "reads from the page cache and hashes on one thread, like the reference, so CPU time "
        "is what it costs, while wall time on this shared machine also counts waiting for a "
        "core (both are shown).",
        "",
        f"- **write** (`put_bundle`): {put_w:.2f}× hashlib: "
        + ("**met**" if put_w <= GOAL else "**missed**")
        + f". Durable writes alone, no hashing, cost {got['floor'][0]:.2f}× hashlib in one "
        f"folder and {got['layout_floor'][0]:.2f}× in the store's folder layout; put_bundle "
        f"is {put_floor:.2f}× the first and {put_layout:.2f}× the second. The previous "
        f"writer: {got['put_previous'][0]:.2f}× hashlib.",
        f"- **verify**: {ver_c:.2f}× hashlib on CPU time: "
        + ("**met**" if ver_c <= GOAL else "**missed**")
        + f" ({ver_w:.2f}× on wall time); {ver_rh:.2f}× reading and hashing the same files "
        f"with plain hashlib (CPU). The previous reader: {got['verify_previous'][1]:.2f}× "
        "hashlib on CPU time.",
    ]
    if profiles:
        out += ["", "Profiles (`--profile`, one more round; top functions by own time):", ""]
        for p in profiles:
            out += ["```text", p, "```", ""]
    return "\n".join(out).rstrip() + "\n"


def write_docs(section: str) -> None:
    text = DOCS.read_text(encoding="utf-8")  # re-read: another section may have just changed
    i, j = text.find(MARK_START), text.find(MARK_END)
    old = text[i:j] if 0 <= i < j else ""
    n, m = old.find(NOTES_START), old.find(NOTES_END)
    notes = old[n : m + len(NOTES_END)] if 0 <= n < m else f"{NOTES_START}\n{NOTES_END}"
    body = "## Bundles: write and verify throughput\n\n" + section.rstrip("\n") + "\n\n" + notes
    if i < 0 and j < 0:
        text = text.rstrip("\n") + f"\n\n{MARK_START}\n{body}\n{MARK_END}\n"
    elif i < 0 or j < i:
        sys.exit(f"{DOCS}: bundle markers out of order; not writing")
    else:
        text = text[: i + len(MARK_START)] + "\n" + body + "\n" + text[j:]
    DOCS.write_text(text, encoding="utf-8", newline="\n")
    log(f"wrote {DOCS.relative_to(ROOT)} (between the bundle markers)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        if kind == "write":
            child_write(Path(rest[0]), Path(rest[1]), int(rest[2]), int(rest[3]), rest[4] == "1")
        else:
            child_verify(Path(rest[0]), rest[1], rest[2] == "1")
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--mib", type=int, default=200, help="MiB of members (default 200)")
    parser.add_argument("--profile", action="store_true", help="add a cProfile of one round")
    parser.add_argument("--write-docs", action="store_true", help="record in docs/benchmarks.md")
    args = parser.parse_args()
    if args.mib < 5 * LARGE + 1:
        parser.error(f"--mib must be at least {5 * LARGE + 1}")
    command = ".venv/bin/python bench/bench_bundle.py" + "".join(f" {a}" for a in sys.argv[1:])
    load_before = os.getloadavg()
    writes, verifies = [], []
    for n in range(1, args.rounds + 1):
        w, v = one_round(n, args.mib)
        writes.append(w)
        verifies.append(v)
        log(
            f"round {n}: hash {med(w['hash']):.3f}s  put {w['put']:.3f}s  "
            f"previous {w['put_previous']:.3f}s  layout floor {w['layout_floor']:.3f}s  "
            f"floor {w['floor']:.3f}s  verify {v['verify']:.3f}s  "
            f"read+hash {med(v['readhash']):.3f}s  load {os.getloadavg()[0]:.2f}"
        )
    profiles: list[str] = []
    if args.profile:
        w, v = one_round(0, args.mib, profile=True)
        profiles = [f"put_bundle:\n{w['profile']}", f"verify:\n{v['profile']}"]
    info = machine(load_before, os.getloadavg())
    section = report(writes, verifies, info, command, profiles)
    print(section)
    if args.write_docs:
        write_docs(section)


if __name__ == "__main__":
    main()
