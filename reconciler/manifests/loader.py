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
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import Node, ScalarNode
from ruamel.yaml.reader import ReaderError

from reconciler.manifests.assembly import Assembler, Doc, LaneCheck, Reader, safe_relpath
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
        desired = Assembler(read, revision, errors, invalid, lane_check).run(docs)
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
    docs: list[Doc]
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
    out.docs.append(Doc(kind, name, index, line, col, value))


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
