"""Load the control repo's manifests into :class:`Desired`, or report every problem and where.

Pure: no subprocess, no git, no file system. Bytes arrive through the ``read`` callback (a file of
the control repo at one revision), so the same code serves a commit, a working tree and tests.

Speed: documents are parsed with libyaml (ruamel's C parser) and validated with pydantic; nothing
else touches a healthy file. Positions for errors come from the node graph the C parser builds
anyway (every node carries its start mark), so a failing file is not parsed a second time.
Files are cached by blob id: an unchanged file is neither read nor parsed again, while the
cross-file checks (duplicates, references, cycles, prompt files) run on every load.

Hostile input is bounded before it can hurt by :mod:`reconciler.manifests.yaml_safety`; the
checks that span files are :mod:`reconciler.manifests.assembly`'s.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import Node, ScalarNode
from ruamel.yaml.reader import ReaderError

from reconciler.manifests.assembly import (
    Assembler,
    Doc,
    LaneCheck,
    Reader,
    references,
    safe_relpath,
)
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
from reconciler.manifests.models import (
    API_VERSION,
    DOCUMENT_KINDS,
    Desired,
    Task,
    _Document,
    make_task,
)
from reconciler.manifests.policy import POLICY_KINDS, PolicySpec
from reconciler.manifests.yaml_safety import (
    MAX_ALIAS_REFERENCES,
    MAX_EXPANDED_NODES,
    MAX_FILE_SIZE,
    alias_bomb,
    documents,
    new_loader,
    release,
)

__all__ = [
    "MAX_ALIAS_REFERENCES",
    "MAX_EXPANDED_NODES",
    "MAX_FILE_SIZE",
    "LaneCheck",
    "ManifestError",
    "ManifestErrors",
    "Reader",
    "SourceFile",
    "gc_paused",
    "load",
    "parse_policy",
    "safe_relpath",
]

Kinds = Mapping[str, type[_Document]]


@dataclass(frozen=True)
class SourceFile:
    """A manifest file of the control repo: posix path from the repo root, git blob id, size."""

    path: str
    blob: str
    size: int


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
    docs: list[tuple[str, Doc]] = []
    invalid: set[tuple[str, str]] = set()
    invalid_tasks: list[tuple[str, Doc]] = []
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
            parsed = _read_file(f, read)
            docs.extend((f.path, d) for d in parsed.docs)
            errors.extend(parsed.errors)
            invalid.update(parsed.invalid)
            invalid_tasks.extend((f.path, d) for d in parsed.invalid_tasks)
            if cache is not None and not parsed.errors:
                cache[f.blob] = tuple(parsed.docs)
        desired = Assembler(read, revision, errors, invalid, lane_check).run(docs, invalid_tasks)
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
    """One file's valid documents, its errors, and the (kind, name) of its invalid documents (a
    reference to one of those is not reported again as unknown)."""

    docs: list[Doc] = field(default_factory=list)
    errors: list[ManifestError] = field(default_factory=list)
    invalid: set[tuple[str, str]] = field(default_factory=set)
    # invalid Tasks, their value the names they refer to that are well formed (``References``):
    # checked against the other documents in the same load, so every problem shows at once
    invalid_tasks: list[Doc] = field(default_factory=list)


def _read_file(f: SourceFile, read: Reader) -> _Parsed:
    if f.size > MAX_FILE_SIZE:
        return _Parsed(errors=[_too_big(f.path, f.size)])
    data = read(f.path)
    if data is None:
        return _Parsed(
            errors=[
                ManifestError(
                    f.path,
                    1,
                    1,
                    "the file is listed but cannot be read",
                    "check that the file exists and is a regular file",
                )
            ]
        )
    return _parse_file(f.path, data)


def _parse_file(path: str, data: bytes, kinds: Kinds = DOCUMENT_KINDS) -> _Parsed:
    """Each document of one file, checked on its own; a file that is not YAML is one error."""
    out = _Parsed()
    if len(data) > MAX_FILE_SIZE:  # the listing said otherwise, or a policy file
        out.errors.append(_too_big(path, len(data)))
        return out
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
    except Exception as exc:  # a parser bug must not become a traceback
        out.errors.append(_unparsable(path, exc, data, text, is_c))
    finally:
        if loader is not None:
            release(loader)
    return out


def _unparsable(path: str, exc: Exception, data: bytes, text: str, is_c: bool) -> ManifestError:
    """Why the parser gave up on a file; ``is_c``: libyaml's reader counts bytes, not characters."""
    if isinstance(exc, ReaderError):
        if is_c:
            line, col = byte_position(data, exc.position)
        else:
            line, col = char_position(text, exc.position)
        char = exc.character if isinstance(exc.character, int) else 0
        return ManifestError(
            path,
            line,
            col,
            f"the file contains the control character U+{char:04X}, which YAML does not allow",
            'remove it, or write it as an escape inside a double-quoted string ("\\x01")',
        )
    if isinstance(exc, MarkedYAMLError):
        return syntax_error(path, exc, text)
    if isinstance(exc, YAMLError):  # pragma: no cover - every ruamel parse error carries a mark
        return ManifestError(path, 1, 1, f"invalid YAML: {exc}", "fix the YAML syntax")
    if isinstance(exc, RecursionError):
        return _too_deep(path, 1, 1)
    return ManifestError(
        path,
        1,
        1,
        f"the YAML parser failed on this file ({type(exc).__name__}: {exc})",
        "simplify the YAML around unusual constructs (directives, tags, anchors)",
    )


def _too_deep(path: str, line: int, col: int) -> ManifestError:
    return ManifestError(
        path,
        line,
        col,
        "the YAML is nested too deeply to be a manifest",
        "flatten the structure; manifests nest only a few levels",
    )


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
    """One document into ``out``: its cached value if it is valid, else what is wrong with it."""
    if isinstance(node, ScalarNode) and (node.tag or "").endswith(":null") and node.value == "":
        return  # an empty document: `---` alone
    line, col = mark(node)
    bomb = alias_bomb(node) if may_alias else ""
    if bomb:
        hint = "write the values out instead of nesting aliases (*name) of aliases"
        out.errors.append(ManifestError(path, line, col, bomb, hint))
        return
    try:
        data = loader.construct_document(node)
    except MarkedYAMLError as exc:
        out.errors.append(syntax_error(path, exc, text))
        return
    except RecursionError:
        out.errors.append(_too_deep(path, line, col))
        return
    wrong = _not_a_document(path, node, data, kinds)
    if wrong is not None:
        out.errors.append(wrong)
        return
    kind: str = data["kind"]
    cls = kinds[kind]
    try:
        doc: Any = cls.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            out.errors.append(validation_error(path, kind, cls, node, err))
        meta = data.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if isinstance(name, str):
            out.invalid.add((kind, name))
            if kind == "Task":
                refused = {tuple(err["loc"]) for err in exc.errors(include_url=False)}
                refs = references(data.get("spec"), refused)
                out.invalid_tasks.append(Doc(kind, name, index, line, col, refs))
        return
    out.docs.append(Doc(kind, doc.metadata.name, index, line, col, _cached_value(kind, doc)))


def _not_a_document(path: str, node: Node, data: Any, kinds: Kinds) -> ManifestError | None:
    """What keeps ``data`` from being a document of one of ``kinds``, before its fields count."""
    names = ", ".join(sorted(kinds))
    line, col = mark(node)
    if not isinstance(data, dict):
        return ManifestError(
            path,
            line,
            col,
            "a manifest document must be a mapping with apiVersion, kind, metadata and spec;"
            f" found {describe(data)}",
            f"start the document with 'apiVersion: {API_VERSION}' and 'kind: "
            f"{'Task' if 'Task' in kinds else next(iter(kinds))}' "
            f"(or another kind: {names})",
        )
    kind = data.get("kind")
    if isinstance(kind, str) and kind in kinds:
        return None
    if "kind" not in data:
        return ManifestError(
            path, line, col, "missing required field 'kind'", f"add 'kind:' with one of: {names}"
        )
    kline, kcol = mark(walk(node, ("kind",)))
    return ManifestError(
        path,
        kline,
        kcol,
        f"unknown kind {show(kind)}",
        _misplaced(str(kind), kinds)
        or did_you_mean(str(kind), list(kinds)) + f"the kinds are: {names}",
    )


def _cached_value(kind: str, doc: Any) -> Any:
    """What a valid document leaves for the assembler: a Task, or the spec of any other kind."""
    if kind != "Task":
        return doc.spec
    name, spec, labels = doc.metadata.name, doc.spec, dict(doc.metadata.labels)
    if spec.prompt_file is None:
        return make_task(name, spec, None, labels)
    return Task(name, spec, "", "", labels)  # resolved on every load: the file changes on its own


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
