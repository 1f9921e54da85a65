"""Step dependency graphs: cycles for validation, and networkx DAGs for planning and running.

Owns: the dependency graph of a flow's steps and every question about its shape. The only
importer of networkx, which it imports on first use: `blocks validate` needs only cycle
detection, done here in linear time without paying networkx's ~0.25 s import.
Must not: know step kinds, or read specs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import networkx

__all__ = ["StepGraph", "find_cycles"]


@dataclass(frozen=True, slots=True)
class StepGraph:
    """Immutable step graph: `needs[step]` lists the steps that must finish first."""

    needs: Mapping[str, Sequence[str]]

    def cycles(self) -> list[tuple[str, ...]]:
        return find_cycles(self.needs)

    def ancestors(self, step: str) -> frozenset[str]:
        """Every step `step` waits for, directly or not (unknown ids are ignored)."""
        seen: set[str] = set()
        stack = list(self.needs.get(step, ()))
        while stack:
            current = stack.pop()
            if current in seen or current not in self.needs:
                continue
            seen.add(current)
            stack.extend(self.needs[current])
        return frozenset(seen)

    def to_networkx(self) -> networkx.DiGraph[str]:
        """The graph as a networkx DiGraph, edges pointing from a step to its dependents."""
        import networkx  # noqa: PLC0415  (lazy: see the module docstring)

        graph: networkx.DiGraph[str] = networkx.DiGraph()
        graph.add_nodes_from(self.needs)
        graph.add_edges_from(
            (dep, step) for step, deps in self.needs.items() for dep in deps if dep in self.needs
        )
        return graph

    def order(self) -> list[str]:
        """A topological order, ties broken by the order steps were declared in."""
        import networkx  # noqa: PLC0415

        position = {step: i for i, step in enumerate(self.needs)}
        return list(networkx.lexicographical_topological_sort(self.to_networkx(), key=position.get))


def find_cycles(needs: Mapping[str, Iterable[str]]) -> list[tuple[str, ...]]:
    """Every cycle among the steps, each as the ordered path that closes it.

    One cycle per strongly connected component (Tarjan, iterative), so a tangle is reported
    once, not once per permutation. A self-dependency is a cycle of one.
    """
    graph: dict[str, list[str]] = {
        step: [d for d in deps if d in needs] for step, deps in needs.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child_i = work.pop()
            if child_i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            children = graph[node]
            if child_i < len(children):
                work.append((node, child_i + 1))
                child = children[child_i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            for child in children:
                if child in on_stack:
                    low[node] = min(low[node], low[child])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    components.append(component)
    return [_cycle_path(graph, set(c)) for c in components]


def _cycle_path(graph: Mapping[str, list[str]], members: set[str]) -> tuple[str, ...]:
    """Walk dependencies inside one component until a step repeats: that loop is the cycle."""
    start = min(members, key=list(graph).index)
    path: list[str] = [start]
    seen = {start: 0}
    current = start
    while True:
        nxt = next(d for d in graph[current] if d in members)
        if nxt in seen:
            return tuple(path[seen[nxt] :])
        seen[nxt] = len(path)
        path.append(nxt)
        current = nxt
