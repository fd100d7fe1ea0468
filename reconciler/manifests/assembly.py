"""Documents to :class:`Desired`: the checks that span files.

Pure: it is handed the valid documents of every file and a ``read`` callback (for prompt files,
and to find the position of an error). Duplicate names, a second Config, references to unknown
lanes, repos and agents, prompt files and dependency cycles are found here; what is wrong
inside one document is the loader's to say.
"""

from __future__ import annotations

import posixpath
import re
import sys
from collections.abc import Callable, Collection, Hashable, Sequence
from typing import Any, NamedTuple

from pydantic import BaseModel
from ruamel.yaml.nodes import Node

from reconciler.manifests.errors import ManifestError
from reconciler.manifests.explain import byte_position, did_you_mean, mark, walk
from reconciler.manifests.graph import cycle_rings
from reconciler.manifests.models import (
    AgentSpec,
    ConfigSpec,
    Desired,
    LaneSpec,
    Source,
    Task,
    make_task,
)
from reconciler.manifests.policy import Violation
from reconciler.manifests.yaml_safety import MAX_FILE_SIZE, compose_nodes

Reader = Callable[[str], bytes | None]
LaneCheck = Callable[[str, LaneSpec], list[Violation]]


class Doc(NamedTuple):
    """One valid document, as cached by blob id (so it holds no path)."""

    kind: str
    name: str
    ordinal: int  # position in its file, counting empty documents
    line: int
    column: int
    value: Any  # LaneSpec | AgentSpec | ConfigSpec | Task (prompt unresolved for promptFile)


class References(NamedTuple):
    """The names a Task refers to; None where its manifest does not give a well-formed one."""

    lane: str | None
    repo: str | None
    agent: str | None
    depends_on: tuple[str, ...] = ()


def references(spec: object, wrong: Collection[tuple[str | int, ...]] = ()) -> References:
    """The names in a Task's ``spec`` mapping that are strings and not themselves in error
    (``wrong``: the locations the schema refused), so that an invalid Task's references are
    checked in the same load as its other errors."""
    data = spec if isinstance(spec, dict) else {}

    def name(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) and ("spec", key) not in wrong else None

    deps = data.get("dependsOn")
    depends = tuple(
        d
        for i, d in enumerate(deps if isinstance(deps, list) else ())
        if isinstance(d, str) and ("spec", "dependsOn", i) not in wrong
    )
    return References(name("lane"), name("repo"), name("agent"), depends)


# The names a task refers to: a few distinct values across any number of tasks.
_NAMES = frozenset({"lane", "repo", "agent", "base"})


def _frozen(value: Any) -> Hashable:
    """A hashable stand-in for a manifest value that is equal exactly when the value is (and
    of the same types: ``1``, ``1.0`` and ``True`` differ here), fields set included."""
    if isinstance(value, BaseModel):
        parts = tuple((k, _frozen(v)) for k, v in value.__dict__.items())
        return (type(value), parts, frozenset(value.model_fields_set))
    if isinstance(value, list):
        return (list, tuple(_frozen(v) for v in value))
    if isinstance(value, dict):
        return (dict, tuple((k, _frozen(v)) for k, v in value.items()))
    return (type(value), value)


class _Shared:
    """One instance of each equal part of the tasks' specs: their success, pr and budget
    settings, their lists, the names they refer to, their labels and which fields they set.
    100,000 tasks that say the same hold it once, in memory and in the cache of the desired
    state (a pickle stores, and loads, a shared object once).

    Sharing is safe because nothing changes a manifest value once it is validated (the models
    are frozen); a spec is given its shared parts while it is fresh from validation, before it
    is in a ``Desired``.
    """

    def __init__(self) -> None:
        self._seen: dict[Hashable, Any] = {}

    def one(self, key: Hashable, value: Any) -> Any:
        return self._seen.setdefault(key, value)

    def spec(self, spec: BaseModel) -> None:
        fields = spec.__dict__  # a frozen model's values: given equal ones, none changes
        for name, value in fields.items():
            if isinstance(value, BaseModel | list | dict):
                fields[name] = self.one(_frozen(value), value)
            elif name in _NAMES and isinstance(value, str):
                fields[name] = sys.intern(value)
        chosen = spec.model_fields_set
        object.__setattr__(
            spec, "__pydantic_fields_set__", self.one(("fields set", frozenset(chosen)), chosen)
        )

    def labels(self, labels: dict[str, str]) -> dict[str, str]:
        shared: dict[str, str] = self.one(("labels", tuple(labels.items())), labels)
        return shared


class Assembler:
    """Builds :class:`Desired` from valid documents and adds the cross-file errors."""

    def __init__(
        self,
        read: Reader,
        revision: str,
        errors: list[ManifestError],
        invalid: set[tuple[str, str]],
        lane_check: LaneCheck | None = None,
    ) -> None:
        self.read = read
        self.revision = revision
        self.errors = errors
        self.invalid = invalid
        self.lane_check = lane_check
        self.warnings: list[ManifestError] = []
        self._nodes: dict[str, list[Node | None]] = {}
        self._shared = _Shared()

    def run(
        self, docs: list[tuple[str, Doc]], invalid_tasks: Sequence[tuple[str, Doc]] = ()
    ) -> Desired:
        config = ConfigSpec()
        config_at: tuple[str, Doc] | None = None
        lanes: dict[str, LaneSpec] = {}
        agents: dict[str, AgentSpec] = {}
        task_docs: dict[str, tuple[str, Doc]] = {}
        first: dict[tuple[str, str], tuple[str, Doc]] = {}
        for path, doc in docs:
            if doc.kind == "Config":
                if config_at is not None:
                    self.error(
                        path,
                        doc,
                        (),
                        "more than one Config document: the first is at "
                        f"{config_at[0]}:{config_at[1].line}",
                        "keep a single Config document and merge the settings into it",
                    )
                    continue
                config_at = (path, doc)
                config = doc.value
                continue
            key = (doc.kind, doc.name)
            seen = first.get(key)
            if seen is not None:
                line, col = self.position(seen[0], seen[1], ("metadata", "name"))
                self.error(
                    path,
                    doc,
                    ("metadata", "name"),
                    f"duplicate {doc.kind} name '{doc.name}': already defined at "
                    f"{seen[0]}:{line}:{col}",
                    f"{doc.kind} names must be unique: rename or remove one of them",
                )
                continue
            first[key] = (path, doc)
            if doc.kind == "Lane":
                lanes[doc.name] = doc.value
                for v in self.lane_check(doc.name, doc.value) if self.lane_check else ():
                    self.error(path, doc, v.loc, v.message, v.hint)
            elif doc.kind == "Agent":
                agents[doc.name] = doc.value
            else:
                task_docs[doc.name] = (path, doc)

        tasks: dict[str, Task] = {}
        for name, (path, doc) in task_docs.items():
            task = self.task(path, doc, lanes, agents)
            if task is not None:
                tasks[name] = task
        for path, doc in invalid_tasks:
            self.refers(path, doc, doc.value, lanes, agents)
        named = set(task_docs) | {doc.name for _, doc in invalid_tasks}
        for path, doc in [*task_docs.values(), *invalid_tasks]:
            self.dependencies(path, doc, named)
        self.cycles(task_docs)
        return Desired(
            revision=self.revision,
            config=config,
            lanes=lanes,
            agents=agents,
            tasks=tasks,
            warnings=tuple(sorted(set(self.warnings), key=lambda w: (w.path, w.line, w.column))),
        )

    def dependencies(self, path: str, doc: Doc, named: set[str]) -> None:
        """A ``dependsOn`` naming no task is not an error (the task may come in a later commit)
        but it blocks the task until it does: a warning, with what it may have meant."""
        deps = (
            doc.value.depends_on if isinstance(doc.value, References) else doc.value.spec.depends_on
        )
        for index, dep in enumerate(deps):
            if dep in named:
                continue
            line, col = self.position(path, doc, ("spec", "dependsOn", index))
            self.warnings.append(
                ManifestError(
                    path,
                    line,
                    col,
                    f"task '{doc.name}' depends on '{dep}', which is not a task: it waits until "
                    "a task of that name exists and is done",
                    did_you_mean(dep, sorted(named - {doc.name})) + "fix the name, or add the task",
                )
            )

    def task(
        self, path: str, doc: Doc, lanes: dict[str, LaneSpec], agents: dict[str, AgentSpec]
    ) -> Task | None:
        cached: Task = doc.value
        spec = cached.spec
        name = doc.name
        refs = References(spec.lane, spec.repo, spec.agent, tuple(spec.depends_on))
        self.refers(path, doc, refs, lanes, agents)
        source = Source(path, doc.line, doc.column)
        self._shared.spec(spec)
        labels = self._shared.labels(cached.labels)
        if spec.prompt_file is None:
            return Task(name, spec, cached.prompt, cached.generation, labels, source)
        prompt = self.prompt_file(path, doc, spec.prompt_file)
        if prompt is None:
            return None
        return make_task(name, spec, prompt, labels, source)

    def refers(
        self,
        path: str,
        doc: Doc,
        refs: References,
        lanes: dict[str, LaneSpec],
        agents: dict[str, AgentSpec],
    ) -> None:
        """The lane, its repo and the agent a task names exist (an invalid one is not reported
        again: its own errors say what is wrong with it)."""
        name = doc.name
        lane = lanes.get(refs.lane) if refs.lane is not None else None
        if refs.lane is not None and lane is None:
            if ("Lane", refs.lane) not in self.invalid:
                self.error(
                    path,
                    doc,
                    ("spec", "lane"),
                    f"task '{name}' refers to unknown lane '{refs.lane}'",
                    _choose("a Lane", refs.lane, sorted(lanes)),
                )
        elif lane is not None and refs.repo is not None and lane.repo(refs.repo) is None:
            repos = [r.name for r in lane.repos]
            self.error(
                path,
                doc,
                ("spec", "repo"),
                f"task '{name}' refers to repo '{refs.repo}', which lane '{refs.lane}' does "
                "not have",
                did_you_mean(refs.repo, repos)
                + f"the repos of lane '{refs.lane}' are: {', '.join(repos)}; "
                "or add the repo to the lane's spec.repos",
            )
        agent = refs.agent
        if agent is not None and agent not in agents and ("Agent", agent) not in self.invalid:
            self.error(
                path,
                doc,
                ("spec", "agent"),
                f"task '{name}' refers to unknown agent '{agent}'",
                _choose("an Agent", agent, sorted(agents)),
            )

    def prompt_file(self, path: str, doc: Doc, ref: str) -> str | None:
        loc = ("spec", "promptFile")
        target = safe_relpath(ref)
        if target is None:
            self.error(
                path,
                doc,
                loc,
                f"promptFile '{ref}' is outside the control repository",
                "use a path relative to the control repo's root, e.g. prompts/fix-login.md",
            )
            return None
        data = self.read(target)
        if data is None:
            at = "the working tree" if self.revision == "worktree" else f"{self.revision[:12]}"
            self.error(
                path,
                doc,
                loc,
                f"promptFile '{ref}' does not exist in the control repository (at {at})",
                "add the file (and commit it), or fix the path; it is relative to the repo root",
            )
            return None
        if len(data) > MAX_FILE_SIZE:
            self.error(
                path,
                doc,
                loc,
                f"promptFile '{ref}' is larger than the limit of 1 MiB",
                "shorten the prompt",
            )
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line, col = byte_position(data, exc.start)
            self.error(
                path,
                doc,
                loc,
                f"promptFile '{ref}' is not UTF-8 text (bad byte at line {line}, column {col})",
                "save the prompt file as UTF-8",
            )
            return None

    def cycles(self, task_docs: dict[str, tuple[str, Doc]]) -> None:
        waits = {name: doc.value.spec.depends_on for name, (_, doc) in task_docs.items()}
        for ring in cycle_rings(waits):
            path, doc = task_docs[ring[0]]
            self.error(
                path,
                doc,
                ("spec", "dependsOn", waits[ring[0]].index(ring[1])),
                "dependency cycle: " + " → ".join(ring),
                "remove one of these dependsOn entries: a task cannot wait for itself",
            )

    def error(
        self, path: str, doc: Doc, loc: tuple[str | int, ...], message: str, hint: str
    ) -> None:
        line, col = self.position(path, doc, loc)
        self.errors.append(ManifestError(path, line, col, message, hint))

    def position(self, path: str, doc: Doc, loc: tuple[str | int, ...]) -> tuple[int, int]:
        """Where ``loc`` is in ``doc``: the file is read and composed again (errors only)."""
        if not loc:
            return doc.line, doc.column
        nodes = self._nodes.get(path)
        if nodes is None:
            data = self.read(path)
            nodes = compose_nodes(data) if data is not None else []
            self._nodes[path] = nodes
        node = nodes[doc.ordinal] if doc.ordinal < len(nodes) else None
        if node is None or mark(node) != (doc.line, doc.column):
            return doc.line, doc.column
        return mark(walk(node, loc))


def _choose(what: str, name: str, known: list[str]) -> str:
    if not known:
        return f"define {what} named '{name}' under manifests/"
    return (
        did_you_mean(name, known)
        + f"define {what} named '{name}', or use one of: {', '.join(known)}"
    )


def safe_relpath(path: str) -> str | None:
    """``path`` normalised relative to the control repo's root, or None if it could escape it."""
    if not path or "\0" in path or "\n" in path or path.startswith(("/", "\\", "~")):
        return None
    if re.match(r"^[A-Za-z]:", path):
        return None
    norm = posixpath.normpath(path)
    if norm in (".", "..") or norm.startswith("../") or norm.startswith("/"):
        return None
    return norm
