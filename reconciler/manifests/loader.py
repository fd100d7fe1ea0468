"""Load the control repo's manifests into :class:`Desired`, or report every problem and where.

Pure: no subprocess, no git, no file system. Bytes arrive through the ``read`` callback (a file of
the control repo at one revision), so the same code serves a commit, a working tree and tests.

Speed: documents are parsed with libyaml (ruamel's C parser) and validated with pydantic; nothing
else touches a healthy file. Positions for errors come from the node graph the C parser builds
anyway (every node carries its start mark), so a failing file is not parsed a second time.
Files are cached by blob id: an unchanged file is neither read nor parsed again, while the
cross-file checks (duplicates, references, cycles, prompt files) run on every load.

Hostile input is bounded before it can hurt, by :mod:`reconciler.manifests.yaml_safety`.
"""

from __future__ import annotations

import gc
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import ValidationError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import Node, ScalarNode
from ruamel.yaml.reader import ReaderError

from reconciler.manifests.errors import ManifestError, ManifestErrors
from reconciler.manifests.explain import (
    byte_position,
    char_position,
    describe,
    did_you_mean,
    mark,
    show,
    syntax_error,
    validation_error,
    walk,
)
from reconciler.manifests.graph import cycle_rings
from reconciler.manifests.models import (
    API_VERSION,
    DOCUMENT_KINDS,
    AgentSpec,
    ConfigSpec,
    Desired,
    LaneSpec,
    Source,
    Task,
    _Document,
    make_task,
)
from reconciler.manifests.policy import POLICY_KINDS, PolicySpec, Violation
from reconciler.manifests.yaml_safety import (
    MAX_ALIAS_REFERENCES,
    MAX_EXPANDED_NODES,
    MAX_FILE_SIZE,
    alias_bomb,
    compose_nodes,
    documents,
    new_loader,
    release,
)

__all__ = [
    "MAX_ALIAS_REFERENCES",
    "MAX_EXPANDED_NODES",
    "MAX_FILE_SIZE",
    "ManifestError",
    "ManifestErrors",
    "Reader",
    "SourceFile",
    "gc_paused",
    "load",
    "parse_policy",
]

Kinds = Mapping[str, type[_Document]]

Reader = Callable[[str], bytes | None]
LaneCheck = Callable[[str, LaneSpec], list[Violation]]


@dataclass(frozen=True)
class SourceFile:
    """A manifest file of the control repo: posix path from the repo root, git blob id, size."""

    path: str
    blob: str
    size: int


class _Doc(NamedTuple):
    """One valid document, as cached by blob id (so it holds no path)."""

    kind: str
    name: str
    ordinal: int  # position in its file, counting empty documents
    line: int
    column: int
    value: Any  # LaneSpec | AgentSpec | ConfigSpec | Task (prompt unresolved for promptFile)


# ------------------------------------------------------------------------------------- public


def load(
    files: Sequence[SourceFile],
    read: Reader,
    revision: str,
    cache: MutableMapping[str, Any] | None = None,
    lane_check: LaneCheck | None = None,
) -> Desired:
    """Everything the manifests ask for at ``revision``; :class:`ManifestErrors` lists all problems.

    ``read(path)`` returns the bytes of any control-repo file (None: no such file). ``cache`` maps
    a blob id to the parsed documents of that file; it is consulted and filled in place.
    If ``read`` has a ``prefetch(paths)`` method, it is told up front which manifest files will
    be read, in order (the cache misses), so that it can batch its requests.
    ``lane_check(name, spec)`` adds problems of each lane that the documents alone cannot show
    (what the admin policy allows), reported at the field they concern.
    """
    errors: list[ManifestError] = []
    docs: list[tuple[str, _Doc]] = []
    invalid: set[tuple[str, str]] = set()
    ordered = sorted(files, key=lambda f: f.path)
    prefetch = getattr(read, "prefetch", None)
    if prefetch is not None:
        prefetch(
            [
                f.path
                for f in ordered
                if f.size <= MAX_FILE_SIZE
                and (cache is None or type(cache.get(f.blob)) is not tuple)
            ]
        )
    with gc_paused():
        for f in ordered:
            entry = cache.get(f.blob) if cache is not None else None
            if type(entry) is tuple:
                docs.extend((f.path, d) for d in entry)
                continue
            if f.size > MAX_FILE_SIZE:
                errors.append(_too_big(f.path, f.size))
                continue
            data = read(f.path)
            if data is None:
                errors.append(
                    ManifestError(
                        f.path,
                        1,
                        1,
                        "the file is listed but cannot be read",
                        "check that the file exists and is a regular file",
                    )
                )
                continue
            if len(data) > MAX_FILE_SIZE:
                errors.append(_too_big(f.path, len(data)))
                continue
            parsed = _parse_file(f.path, data)
            docs.extend((f.path, d) for d in parsed.docs)
            errors.extend(parsed.errors)
            invalid.update(parsed.invalid)
            if cache is not None and not parsed.errors:
                cache[f.blob] = tuple(parsed.docs)
        desired = _Assembler(read, revision, errors, invalid, lane_check).run(docs)
    if errors:
        raise ManifestErrors(errors)
    return desired


def _too_big(path: str, size: int) -> ManifestError:
    return ManifestError(
        path,
        1,
        1,
        f"the file is {size} bytes, over the limit of {MAX_FILE_SIZE} bytes (1 MiB); not parsed",
        "split it into several files, or move long prompts into smaller promptFile files",
    )


@contextmanager
def gc_paused() -> Iterator[None]:
    """Bulk allocation of many small acyclic objects: the cyclic collector only costs time here."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# ------------------------------------------------------------------------------------ parsing


@dataclass
class _Parsed:
    docs: list[_Doc]
    errors: list[ManifestError]
    invalid: set[tuple[str, str]]


def _parse_file(path: str, data: bytes, kinds: Kinds = DOCUMENT_KINDS) -> _Parsed:
    out = _Parsed([], [], set())
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = byte_position(data, exc.start)
        out.errors.append(
            ManifestError(
                path,
                line,
                col,
                f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x} cannot be decoded)",
                "save the file as UTF-8",
            )
        )
        return out
    may_alias = b"*" in data
    loader: Any = None
    is_c = False
    try:
        loader, is_c = new_loader(data)
        for index, node in enumerate(documents(loader)):
            _parse_document(
                path,
                index=index,
                node=node,
                loader=loader,
                text=text,
                may_alias=may_alias,
                out=out,
                kinds=kinds,
            )
    except ReaderError as exc:
        if is_c:
            line, col = byte_position(data, exc.position)
        else:
            line, col = char_position(text, exc.position)
        char = exc.character if isinstance(exc.character, int) else 0
        out.errors.append(
            ManifestError(
                path,
                line,
                col,
                f"the file contains the control character U+{char:04X}, which YAML does not allow",
                'remove it, or write it as an escape inside a double-quoted string ("\\x01")',
            )
        )
    except MarkedYAMLError as exc:
        out.errors.append(syntax_error(path, exc, text))
    except YAMLError as exc:  # pragma: no cover - every ruamel parse error carries a mark
        out.errors.append(ManifestError(path, 1, 1, f"invalid YAML: {exc}", "fix the YAML syntax"))
    except RecursionError:
        out.errors.append(
            ManifestError(
                path,
                1,
                1,
                "the YAML is nested too deeply to be a manifest",
                "flatten the structure; manifests nest only a few levels",
            )
        )
    except Exception as exc:  # a parser bug must not become a traceback
        out.errors.append(
            ManifestError(
                path,
                1,
                1,
                f"the YAML parser failed on this file ({type(exc).__name__}: {exc})",
                "simplify the YAML around unusual constructs (directives, tags, anchors)",
            )
        )
    finally:
        if loader is not None:
            release(loader)
    return out


def _parse_document(
    path: str,
    *,
    index: int,
    node: Node,
    loader: Any,
    text: str,
    may_alias: bool,
    out: _Parsed,
    kinds: Kinds,
) -> None:
    names = ", ".join(sorted(kinds))
    if isinstance(node, ScalarNode) and (node.tag or "").endswith(":null") and node.value == "":
        return  # an empty document: `---` alone
    line, col = mark(node)
    if may_alias:
        bomb = alias_bomb(node)
        if bomb:
            out.errors.append(
                ManifestError(
                    path,
                    line,
                    col,
                    bomb,
                    "write the values out instead of nesting aliases (*name) of aliases",
                )
            )
            return
    try:
        data = loader.construct_document(node)
    except MarkedYAMLError as exc:
        out.errors.append(syntax_error(path, exc, text))
        return
    except RecursionError:
        out.errors.append(
            ManifestError(
                path,
                line,
                col,
                "the YAML is nested too deeply to be a manifest",
                "flatten the structure; manifests nest only a few levels",
            )
        )
        return
    if not isinstance(data, dict):
        out.errors.append(
            ManifestError(
                path,
                line,
                col,
                "a manifest document must be a mapping with apiVersion, kind, metadata and spec;"
                f" found {describe(data)}",
                f"start the document with 'apiVersion: {API_VERSION}' and 'kind: "
                f"{'Task' if 'Task' in kinds else next(iter(kinds))}' "
                f"(or another kind: {names})",
            )
        )
        return
    kind = data.get("kind")
    cls = kinds.get(kind) if isinstance(kind, str) else None
    if cls is None or not isinstance(kind, str):
        if "kind" not in data:
            out.errors.append(
                ManifestError(
                    path,
                    line,
                    col,
                    "missing required field 'kind'",
                    f"add 'kind:' with one of: {names}",
                )
            )
        else:
            kline, kcol = mark(walk(node, ("kind",)))
            out.errors.append(
                ManifestError(
                    path,
                    kline,
                    kcol,
                    f"unknown kind {show(kind)}",
                    _misplaced(str(kind), kinds)
                    or did_you_mean(str(kind), list(kinds)) + f"the kinds are: {names}",
                )
            )
        return
    try:
        doc: Any = cls.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            out.errors.append(validation_error(path, kind, cls, node, err))
        meta = data.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if isinstance(name, str):
            out.invalid.add((kind, name))
        return
    name = doc.metadata.name
    value: Any
    if kind == "Task":
        spec = doc.spec
        labels = dict(doc.metadata.labels)
        if spec.prompt_file is None:
            value = make_task(name, spec, None, labels)
        else:  # resolved on every load: the prompt file may change on its own
            value = Task(name, spec, "", "", labels)
    else:
        value = doc.spec
    out.docs.append(_Doc(kind, name, index, line, col, value))


def _misplaced(kind: str, kinds: Kinds) -> str:
    """The hint for a kind that exists, but in the other file: a Policy in the control repo."""
    if kind == "Policy" and kind not in kinds:
        return (
            "a Policy is the admin's, not the manifest authors': it lives on the reconciler's "
            "host (/etc/reconciler/policy.yaml or --policy), never in the control repo; "
            "remove this document"
        )
    return ""


def parse_policy(path: str, data: bytes) -> PolicySpec:
    """The one ``kind: Policy`` document of a policy file; :class:`ManifestErrors` otherwise."""
    if len(data) > MAX_FILE_SIZE:
        raise ManifestErrors([_too_big(path, len(data))])
    parsed = _parse_file(path, data, POLICY_KINDS)
    if parsed.errors:
        raise ManifestErrors(parsed.errors)
    if len(parsed.docs) != 1:
        where = parsed.docs[1] if len(parsed.docs) > 1 else None
        raise ManifestErrors(
            [
                ManifestError(
                    path,
                    where.line if where else 1,
                    where.column if where else 1,
                    f"a policy file holds exactly one Policy document; found {len(parsed.docs)}",
                    "merge the documents into one (apiVersion: reconciler/v1, kind: Policy, spec)",
                )
            ]
        )
    spec: PolicySpec = parsed.docs[0].value
    return spec


# ---------------------------------------------------------------------------- cross-file checks


class _Assembler:
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
        self._nodes: dict[str, list[Node | None]] = {}

    def run(self, docs: list[tuple[str, _Doc]]) -> Desired:
        config = ConfigSpec()
        config_at: tuple[str, _Doc] | None = None
        lanes: dict[str, LaneSpec] = {}
        agents: dict[str, AgentSpec] = {}
        task_docs: dict[str, tuple[str, _Doc]] = {}
        first: dict[tuple[str, str], tuple[str, _Doc]] = {}
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
                self.error(
                    path,
                    doc,
                    ("metadata", "name"),
                    f"duplicate {doc.kind} name '{doc.name}': already defined at "
                    f"{seen[0]}:{seen[1].line}",
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
        self.cycles(task_docs)
        return Desired(
            revision=self.revision, config=config, lanes=lanes, agents=agents, tasks=tasks
        )

    def task(
        self, path: str, doc: _Doc, lanes: dict[str, LaneSpec], agents: dict[str, AgentSpec]
    ) -> Task | None:
        cached: Task = doc.value
        spec = cached.spec
        name = doc.name
        lane = lanes.get(spec.lane)
        if lane is None:
            if ("Lane", spec.lane) not in self.invalid:
                self.error(
                    path,
                    doc,
                    ("spec", "lane"),
                    f"task '{name}' refers to unknown lane '{spec.lane}'",
                    _choose("a Lane", spec.lane, sorted(lanes)),
                )
        elif lane.repo(spec.repo) is None:
            repos = [r.name for r in lane.repos]
            self.error(
                path,
                doc,
                ("spec", "repo"),
                f"task '{name}' refers to repo '{spec.repo}', which lane '{spec.lane}' does "
                "not have",
                did_you_mean(spec.repo, repos)
                + f"the repos of lane '{spec.lane}' are: {', '.join(repos)}; "
                "or add the repo to the lane's spec.repos",
            )
        if spec.agent not in agents and ("Agent", spec.agent) not in self.invalid:
            self.error(
                path,
                doc,
                ("spec", "agent"),
                f"task '{name}' refers to unknown agent '{spec.agent}'",
                _choose("an Agent", spec.agent, sorted(agents)),
            )
        source = Source(path, doc.line, doc.column)
        if spec.prompt_file is None:
            return Task(name, spec, cached.prompt, cached.generation, cached.labels, source)
        prompt = self.prompt_file(path, doc, spec.prompt_file)
        if prompt is None:
            return None
        return make_task(name, spec, prompt, cached.labels, source)

    def prompt_file(self, path: str, doc: _Doc, ref: str) -> str | None:
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

    def cycles(self, task_docs: dict[str, tuple[str, _Doc]]) -> None:
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
        self, path: str, doc: _Doc, loc: tuple[str | int, ...], message: str, hint: str
    ) -> None:
        line, col = self.position(path, doc, loc)
        self.errors.append(ManifestError(path, line, col, message, hint))

    def position(self, path: str, doc: _Doc, loc: tuple[str | int, ...]) -> tuple[int, int]:
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
