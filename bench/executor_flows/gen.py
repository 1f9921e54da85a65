"""Write the executor benchmark's flows (`bench/bench_executor.py`), deterministically.

    python bench/executor_flows/gen.py OUT_DIR

Every flow is `python` steps calling `bench_noop` in this folder (through
`pythonpath: [bench/executor_flows]`, relative to the repository root, which is the
project root of flows written anywhere under it), with `cache: false` on nothing: the
benchmark turns the cache off with `--no-cache` / `use_cache=False`, as a user would.

Workloads (the same as `../shared/bench/peers`):

* `chain`      W1: 500 async no-op steps, each needing the previous one;
* `fanout`     W2: 1 root, 1,000 independent async no-op steps, 1 join (1,002 steps);
* `foreach`    W2 as a `for_each`: root, one step fanned out over 1,000 items, join
               (3 steps, 1,002 step instances);
* `io`         W3: 200 steps that each await 50 ms, `limits.concurrency: 50` (ideal 0.2 s);
* `chain_sync` / `fanout_sync`: W1 / W2 with a plain (sync) function: each call pays a
               worker-thread hop (`anyio.to_thread.run_sync`);
* `big`        10,000 steps for peak memory: 100 chains of 100 async no-op steps, with
               a root and a join (10,002 steps);
* `wide`       W2 at 10x: 1 root, 10,000 independent no-op steps, 1 join (10,002 steps):
               how the per-step cost grows with the width of a flow.

No-op workloads get `limits.concurrency: 10000` (the schema's maximum), as the peers run
them unbounded; the default of 8 would also work for a chain.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence

__all__ = ["FLOWS", "N_CHAIN", "N_FAN", "N_IO", "write_flows"]

N_CHAIN = 500
N_FAN = 1000
N_IO = 200
IO_SLEEP = 0.05
IO_LIMIT = 50
BIG_CHAINS, BIG_LENGTH = 100, 100
N_WIDE = 10_000
PYTHONPATH = "bench/executor_flows"
MODULE = "bench_noop"


def _header(name: str, description: str, concurrency: int) -> Iterator[str]:
    yield "version: 1"
    yield "kind: flow"
    yield f"name: {name}"
    yield f"description: {description}"
    yield "limits:"
    yield f"  concurrency: {concurrency}"
    yield "steps:"


def _step(
    sid: str, func: str, needs: Sequence[str] = (), extra: Sequence[str] = ()
) -> Iterator[str]:
    yield f"  {sid}:"
    yield "    kind: python"
    yield f"    call: {MODULE}:{func}"
    yield f"    pythonpath: [{PYTHONPATH}]"
    if needs:
        yield f"    needs: [{', '.join(needs)}]"
    yield from extra


def chain(func: str = "anoop") -> Iterator[str]:
    yield from _header(f"bench-chain-{func}", f"{N_CHAIN} no-op steps in a chain", 10_000)
    for i in range(N_CHAIN):
        yield from _step(f"s{i}", func, [f"s{i - 1}"] if i else [])


def fanout(func: str = "anoop") -> Iterator[str]:
    yield from _header(f"bench-fanout-{func}", f"1 -> {N_FAN} -> 1 no-op steps", 10_000)
    yield from _step("root", func)
    for i in range(N_FAN):
        yield from _step(f"s{i}", func, ["root"])
    yield "  join:"
    yield "    kind: python"
    yield f"    call: {MODULE}:{func}"
    yield f"    pythonpath: [{PYTHONPATH}]"
    yield "    needs:"
    for i in range(N_FAN):
        yield f"      - s{i}"


def foreach(func: str = "anoop") -> Iterator[str]:
    yield from _header(f"bench-foreach-{func}", f"1 -> for_each of {N_FAN} -> 1", 10_000)
    yield from _step("root", func)
    items = ", ".join(str(i) for i in range(N_FAN))
    yield from _step("fan", func, ["root"], ["    for_each:", f"      items: [{items}]"])
    yield from _step("join", func, ["fan"])


def io() -> Iterator[str]:
    yield from _header("bench-io", f"{N_IO} steps that each await {IO_SLEEP}s", IO_LIMIT)
    for i in range(N_IO):
        yield from _step(f"s{i}", "aio", extra=["    with:", f"      seconds: {IO_SLEEP}"])


def big() -> Iterator[str]:
    n = BIG_CHAINS * BIG_LENGTH
    yield from _header(
        "bench-big", f"{n} no-op steps in {BIG_CHAINS} chains of {BIG_LENGTH}", 10_000
    )
    yield from _step("root", "anoop")
    for c in range(BIG_CHAINS):
        for i in range(BIG_LENGTH):
            yield from _step(f"c{c}_{i}", "anoop", [f"c{c}_{i - 1}" if i else "root"])
    yield "  join:"
    yield "    kind: python"
    yield f"    call: {MODULE}:anoop"
    yield f"    pythonpath: [{PYTHONPATH}]"
    yield "    needs:"
    for c in range(BIG_CHAINS):
        yield f"      - c{c}_{BIG_LENGTH - 1}"


def wide() -> Iterator[str]:
    yield from _header("bench-wide", f"1 -> {N_WIDE} -> 1 no-op steps", 10_000)
    yield from _step("root", "anoop")
    for i in range(N_WIDE):
        yield from _step(f"s{i}", "anoop", ["root"])
    yield "  join:"
    yield "    kind: python"
    yield f"    call: {MODULE}:anoop"
    yield f"    pythonpath: [{PYTHONPATH}]"
    yield "    needs:"
    for i in range(N_WIDE):
        yield f"      - s{i}"


FLOWS = {
    "chain": (lambda: chain("anoop"), N_CHAIN),
    "fanout": (lambda: fanout("anoop"), N_FAN + 2),
    "foreach": (lambda: foreach("anoop"), N_FAN + 2),
    "io": (io, N_IO),
    "chain_sync": (lambda: chain("snoop"), N_CHAIN),
    "fanout_sync": (lambda: fanout("snoop"), N_FAN + 2),
    "big": (big, BIG_CHAINS * BIG_LENGTH + 2),
    "wide": (wide, N_WIDE + 2),
}
"""name -> (line generator, tasks it runs: steps, or step instances for `foreach`)."""


def write_flows(out_dir: str, names: list[str] | None = None) -> dict[str, str]:
    """Write `OUT_DIR/<name>.yaml` for each flow; returns name -> path."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for name in names or list(FLOWS):
        path = os.path.join(out_dir, f"{name}.yaml")
        text = "\n".join(FLOWS[name][0]()) + "\n"
        try:
            with open(path, encoding="utf-8") as f:
                same = f.read() == text
        except FileNotFoundError:
            same = False
        if not same:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        paths[name] = path
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    args = parser.parse_args()
    for name, path in write_flows(args.out_dir).items():
        print(f"{name}: {path}")
