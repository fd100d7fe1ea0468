"""The tasks' dependency graph: which waits (``dependsOn``) go round in a cycle.

Pure and about names only: it is given what each task waits for and knows nothing of
documents, files or positions (the assembler reports a cycle where it is written).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

_LONGEST_REPORTED_EVERYWHERE = 10
"""A cycle of more tasks than this is reported at its first task only, not at each of them."""


def cycle_rings(depends_on: Mapping[str, Sequence[str]]) -> Iterator[list[str]]:
    """Each dependency cycle as rings ``a → b → … → a``, one per task it is to be reported at.

    ``depends_on`` maps every task to the names it waits for; names that are not tasks are
    ignored (they are reported as unknown elsewhere). A cycle is found as the shortest one
    through the first task (by name) of each strongly connected group of tasks.
    """
    graph = {
        name: edges
        for name, waits in depends_on.items()
        if (edges := [d for d in waits if d in depends_on])
    }
    if not graph:
        return  # no task waits for another: no cycle (most control repos)
    for name in {d for edges in graph.values() for d in edges} - graph.keys():
        graph[name] = []  # a task waited for that waits for nothing
    for component in _strongly_connected(graph):
        cycle = _cycle_through(min(component), graph, set(component))
        reported = cycle[:-1] if len(cycle) <= _LONGEST_REPORTED_EVERYWHERE + 1 else cycle[:1]
        for i, name in enumerate(reported):
            yield cycle[i:-1] + cycle[:i] + [name]


def _strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; only components that contain a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        while work:
            v, edges = work[-1]
            descended = False
            for w in edges:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                    descended = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                component: list[str] = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1 or v in graph[v]:
                    found.append(component)
    return found


def _cycle_through(start: str, graph: dict[str, list[str]], members: set[str]) -> list[str]:
    """A shortest cycle ``start → … → start`` inside one strongly connected component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for v in frontier:
            for w in graph[v]:
                if w not in members:
                    continue
                if w == start:
                    back = [v]
                    while back[-1] != start:
                        back.append(previous[back[-1]])
                    return [*reversed(back), start]
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    return [start, start]  # pragma: no cover - a component always has a cycle
