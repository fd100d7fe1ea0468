"""YAML that cannot hurt: the bounds on hostile input and the parsers that enforce them.

Pure: bytes in, ruamel node graphs out; nothing here builds a manifest or says an error in
words (the loader and :mod:`reconciler.manifests.explain` do). Files over 1 MiB are not parsed,
alias expansion is counted on the node graph before anything is constructed, and documents that
could nest deeply enough to exhaust the C parser's stack go through the pure-Python parser, whose
recursion limit turns into an ordinary error.

Speed: documents are parsed with libyaml (ruamel's C parser), with ruamel's YAML 1.2 typing
rules looked up once per first character instead of per scalar.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ruamel.yaml.constructor import SafeConstructor
from ruamel.yaml.docinfo import DocInfo
from ruamel.yaml.error import YAMLError
from ruamel.yaml.loader import SafeLoader
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.resolver import VersionedResolver, implicit_resolvers
from ruamel.yaml.tag import Tag

try:  # the C extension (ruamel.yaml.clib); the pure parser is the fallback
    from _ruamel_yaml import CParser  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - clib is a declared dependency
    CParser = None

MAX_FILE_SIZE = 1 << 20
"""Manifest and prompt files larger than this (1 MiB) are rejected unread."""
MAX_ALIAS_REFERENCES = 10_000
"""More alias uses than this in one document is treated as an alias bomb."""
MAX_EXPANDED_NODES = 100_000
"""A document whose aliases expand to more nodes than this is treated as an alias bomb."""
MAX_DEPTH = 100
"""Nesting limit of the pure-Python parser (manifests nest a handful of levels)."""
_MAX_FLAT_NESTING = 2_000
"""Above this many ``[ { - ?`` characters a document may nest too deeply for the C parser's
stack (nesting by indentation alone is bounded by the file size limit)."""
# A line that starts with ``---`` or ``...`` followed by a blank ends a document in any context
# (YAML 1.2 c-forbidden: libyaml ends a block scalar there, and refuses it inside a quoted
# scalar or a flow collection), so nothing can nest across one: the C composer builds each
# document alone, and the count above is per document.
_DOCUMENT_MARKER = re.compile(rb"^(?:---|\.\.\.)(?=[ \t\r\n]|$)", re.MULTILINE)


def _yaml12_rules() -> tuple[dict[str, list[tuple[Tag, Any]]], list[tuple[Tag, Any]]]:
    """ruamel's YAML 1.2 implicit-typing rules by first character (plus the catch-all ones)."""
    by_char: dict[str | None, list[tuple[Tag, Any]]] = {}
    for versions, tag, regexp, first in implicit_resolvers:
        if (1, 2) in versions:
            chars: list[Any] = first or [None]
            for ch in chars:
                by_char.setdefault(ch, []).append((Tag(suffix=tag), regexp))
    catch_all = by_char.pop(None, [])
    return {str(ch): rules + catch_all for ch, rules in by_char.items()}, catch_all


_RULES, _RULES_ANY = _yaml12_rules()


class _Yaml12Resolver(VersionedResolver):
    """ruamel's YAML 1.2 resolver with its rule table built once instead of per scalar.

    Only used for files without a ``%YAML`` directive (those take the standard path).
    """

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode:
            if implicit[0]:
                for tag, regexp in _RULES.get(value[:1], _RULES_ANY):
                    if regexp.match(value):
                        return tag
            return self.DEFAULT_SCALAR_TAG
        if kind is SequenceNode:
            return self.DEFAULT_SEQUENCE_TAG
        return self.DEFAULT_MAPPING_TAG


if CParser is not None:

    class _CLoader(CParser, SafeConstructor, _Yaml12Resolver):  # type: ignore[misc]
        """libyaml scanner/parser/composer with ruamel's safe constructor, built once."""

        def __init__(self, stream: bytes) -> None:
            CParser.__init__(self, stream)
            self._parser = self._composer = self
            SafeConstructor.__init__(self, loader=self)
            self.allow_duplicate_keys = False
            _Yaml12Resolver.__init__(self, version=None, loadumper=self)


def _nesting_bound(data: bytes) -> int:
    """The most ``[ { - ?`` characters of any one document of ``data``: how deep it could nest
    beyond its indentation (a file of a thousand small documents is as shallow as one)."""
    if data.count(b"[") + data.count(b"{") + data.count(b"-") + data.count(b"?") <= (
        _MAX_FLAT_NESTING
    ):
        return 0  # the whole file is within the bound: no need to look at its documents
    return max(
        part.count(b"[") + part.count(b"{") + part.count(b"-") + part.count(b"?")
        for part in _DOCUMENT_MARKER.split(data)
    )


def new_loader(data: bytes) -> tuple[Any, bool]:
    """A loader for ``data`` and whether it is the C one (positions of reader errors differ)."""
    if CParser is not None and b"%YAML" not in data and _nesting_bound(data) <= _MAX_FLAT_NESTING:
        return _CLoader(data), True
    loader: Any = SafeLoader(data.decode("utf-8"))
    loader.allow_duplicate_keys = False
    loader.max_depth = MAX_DEPTH
    # attributes ruamel's YAML() front end normally provides, read on %YAML/%TAG directives
    loader.doc_infos = [DocInfo()]
    loader.tags = None
    loader.comment_handling = None
    return loader, False


def release(loader: Any) -> None:
    """Drop the loader's self-references now, not at the next (paused) garbage collection."""
    try:
        loader.dispose()
    finally:
        loader.__dict__.clear()


def documents(loader: Any) -> Iterator[Node]:
    """The node graph of each document in turn; parse errors are raised as they are met."""
    while loader.check_node():
        yield loader.get_node()


def compose_nodes(data: bytes) -> list[Node | None]:
    """The documents' node graphs (None where a document cannot be composed), for positions."""
    nodes: list[Node | None] = []
    loader: Any = None
    try:
        data.decode("utf-8")
        loader, _ = new_loader(data)
        for node in documents(loader):
            nodes.append(node)
    except (YAMLError, RecursionError, UnicodeDecodeError):
        pass
    finally:
        if loader is not None:
            release(loader)
    return nodes


def alias_bomb(root: Node) -> str:
    """Why ``root`` expands too much through aliases ('' if it does not); never expands it."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()
    references = 0
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            total = 1 + sum(sizes[id(child)] for child in _children(node))
            if total > MAX_EXPANDED_NODES:
                return (
                    f"the document's aliases expand to more than {MAX_EXPANDED_NODES} nodes "
                    "(a YAML alias bomb); it was not loaded"
                )
            sizes[key] = total
            visiting.discard(key)
            continue
        if key in sizes:
            references += 1
            if references > MAX_ALIAS_REFERENCES:
                return (
                    f"the document uses more than {MAX_ALIAS_REFERENCES} alias references "
                    "(a YAML alias bomb); it was not loaded"
                )
            continue
        if key in visiting:
            return "the document contains an alias that refers to itself (a recursive structure)"
        if isinstance(node, ScalarNode):
            sizes[key] = 1
            continue
        visiting.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))
    return ""


def _children(node: Node) -> Iterator[Node]:
    if isinstance(node, MappingNode):
        for k, v in node.value:
            yield k
            yield v
    elif isinstance(node, SequenceNode):
        yield from node.value
