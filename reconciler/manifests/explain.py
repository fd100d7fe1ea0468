"""Where a manifest error is and how to say it: positions, plain sentences, and fixes.

Pure: works on ruamel node graphs (every node carries its start mark) and pydantic error
details; no I/O. The loader decides *what* is wrong; this module turns it into
``path:line:col: message`` with a hint.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.manifests.errors import ManifestError
from reconciler.manifests.models import API_VERSION, NAME_PATTERN
from reconciler.manifests.yaml_safety import MAX_DEPTH


def mark(node: Node) -> tuple[int, int]:
    """1-based (line, column) where ``node`` starts."""
    return node.start_mark.line + 1, node.start_mark.column + 1


def byte_position(data: bytes, offset: int) -> tuple[int, int]:
    """1-based (line, column in characters) of byte ``offset`` of UTF-8(ish) ``data``."""
    start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[start:offset].decode("utf-8", errors="replace"))
    return data.count(b"\n", 0, offset) + 1, column + 1


def char_position(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of character ``offset`` of ``text``."""
    start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - start + 1


def walk(node: Node, loc: Sequence[str | int], key: bool = False) -> Node:
    """The node at ``loc`` (a pydantic error location); the key node of its last step if ``key``.

    Stops at the deepest node that exists, so a position is always found.
    """
    last = len(loc) - 1
    for i, seg in enumerate(loc):
        if isinstance(node, MappingNode):
            for k, v in node.value:
                if isinstance(k, ScalarNode) and k.value == str(seg):
                    if key and i == last:
                        return k
                    node = v
                    break
            else:
                return node
        elif isinstance(node, SequenceNode) and isinstance(seg, int) and seg < len(node.value):
            node = node.value[seg]
        else:
            return node
    return node


def syntax_error(path: str, exc: MarkedYAMLError, text: str = "") -> ManifestError:
    """A YAML error from ruamel (scanner, parser, composer or constructor) for ``path``.

    ``text`` is the file's content, used to name what is at the position (a tab, an alias).
    """
    problem = (exc.problem or exc.context or "invalid YAML").strip()
    mark = exc.problem_mark or exc.context_mark
    if "could not find expected ':'" in problem and exc.context_mark is not None:
        mark = exc.context_mark  # the scanner notices a line late: point at the bare text
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    message, hint = _known_syntax_problem(problem, _text_at(text, line, col)) or (
        _plain_syntax_problem(exc, problem, line, col)
    )
    return ManifestError(path, line, col, message, hint)


def _known_syntax_problem(problem: str, rest: str) -> tuple[str, str] | None:
    """A sentence and a fix for the YAML mistakes manifest authors make, given ``rest``, the text
    from the error's position to the end of its line; None for any other problem."""
    if rest.startswith("\t"):
        return (
            "a tab character where YAML expects spaces",
            "indent with spaces: YAML does not allow tabs for indentation",
        )
    if "undefined alias" in problem:
        alias = re.match(r"\*([^\s,\[\]{}]+)", rest)
        name = f" '*{alias.group(1)}'" if alias else ""
        return (
            f"invalid YAML: found undefined alias{name}",
            "define the anchor (&name) before using the alias (*name), or remove the alias",
        )
    dup = re.match(r'found duplicate key "(.*)" with value', problem, re.DOTALL)
    if dup:
        return (
            f"duplicate key '{dup.group(1)}' in this mapping",
            "a key may appear only once per mapping: remove one of them or merge their values",
        )
    if "maximum depth" in problem:
        return (
            f"the YAML nests more than {MAX_DEPTH} levels deep, too deep for a manifest",
            "flatten the structure; manifests nest only a few levels",
        )
    if "duplicate merge key" in problem:
        return ("duplicate merge key '<<'", "use one '<<' with a list of aliases")
    if "could not determine a constructor for the tag" in problem:
        return _tag_problem(problem)
    return None


def _tag_problem(problem: str) -> tuple[str, str]:
    tag = problem.rsplit(" ", 1)[-1].strip("'").replace("tag:yaml.org,2002:", "!!")
    if tag.endswith((":value", ":merge")):
        plain = "=" if tag.endswith(":value") else "<<"
        return (
            f"a plain {plain} has a special meaning in YAML and cannot be a value",
            f'quote it: "{plain}"',
        )
    return (
        f"unsupported YAML tag {tag}",
        "remove the tag: manifests hold plain strings, numbers, booleans, lists and mappings",
    )


def _plain_syntax_problem(
    exc: MarkedYAMLError, problem: str, line: int, col: int
) -> tuple[str, str]:
    """ruamel's own words, with where the construct it was reading began if that is elsewhere."""
    message = f"invalid YAML: {problem}"
    cmark = exc.context_mark
    if (
        exc.context
        and exc.problem
        and cmark is not None
        and (cmark.line, cmark.column) != (line - 1, col - 1)
    ):
        message += f" ({exc.context.strip()} at line {cmark.line + 1}, column {cmark.column + 1})"
    return message, syntax_hint(problem)


def _text_at(text: str, line: int, col: int) -> str:
    """The rest of the line at a 1-based position ('' if there is no such position)."""
    lines = text.split("\n", line)
    return lines[line - 1][col - 1 :] if len(lines) >= line else ""


def syntax_hint(problem: str) -> str:
    p = problem.lower()
    if "tab" in p:
        return "indent with spaces: YAML does not allow tabs for indentation"
    if "mapping values are not allowed" in p:
        return "quote values that contain ': ', or fix the indentation of this key"
    if "expected <block end>" in p or "expected key" in p:
        return "check the indentation: keys of one mapping must start in the same column"
    if "cannot start any token" in p:
        return "quote the value: characters such as @ and ` cannot start plain text in YAML"
    if "could not find expected ':'" in p:
        return "add ': ' after the key, or quote the text if it is a value"
    if "flow" in p or "expected ',' or" in p or "end of stream" in p:
        return "close the bracket or quote that was opened, or quote text containing [ ] { } ,"
    if "quoted" in p:
        return "close the quote, or escape the quote character inside the string"
    return "fix the YAML syntax at this position (indentation, quotes, brackets)"


# ---------------------------------------------------------------------------------- validation


_NAME_RULE = (
    "use lowercase letters, digits and '-', at most 63 characters, "
    "starting and ending with a letter or digit"
)
_MISSING_HINTS: dict[tuple[str | int, ...], str] = {
    ("apiVersion",): f"add 'apiVersion: {API_VERSION}'",
    ("metadata",): "add 'metadata: {name: <name>}'",
    ("metadata", "name"): "add 'name: <name>' under metadata (" + _NAME_RULE + ")",
    ("spec",): "add 'spec:' with the fields of this kind",
}


def validation_error(
    path: str, kind: str, cls: type[BaseModel], root: Node, err: ErrorDetails
) -> ManifestError:
    loc = tuple(err["loc"])
    etype = err["type"]
    value = err.get("input")
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    schema = f"schemas/{kind.lower()}.json"

    if etype == "extra_forbidden":
        field = str(loc[-1])
        parent = loc[:-1]
        allowed = _allowed_fields(cls, parent)
        line, col = mark(walk(root, loc, key=True))
        where = f" in {_dotted(parent)}" if parent else ""
        return ManifestError(
            path,
            line,
            col,
            f"unknown field '{field}'{where}",
            did_you_mean(field, allowed) + "allowed fields: " + ", ".join(allowed),
        )
    if etype == "missing":
        field = str(loc[-1])
        parent = loc[:-1]
        line, col = mark(walk(root, parent))
        where = f" in {_dotted(parent)}" if parent else ""
        hint = _MISSING_HINTS.get(loc) or f"add '{field}:' to {_dotted(parent) or 'the document'}"
        return ManifestError(path, line, col, f"missing required field '{field}'{where}", hint)

    if loc and loc[-1] == "[key]":
        line, col = mark(walk(root, loc[:-1], key=True))
        loc = loc[:-1]
    else:
        line, col = mark(walk(root, loc))
    field = _dotted(loc)
    message, hint = _explain(
        etype, field=field, value=value, ctx=ctx, msg=err["msg"], schema=schema
    )
    return ManifestError(path, line, col, message, hint)


def _explain(
    etype: str, *, field: str, value: Any, ctx: dict[str, Any], msg: str, schema: str
) -> tuple[str, str]:
    """A plain sentence and a fix for one pydantic error at ``field``."""
    got = describe(value)
    prefix = f"{field}: " if field else ""
    if field == "apiVersion":
        return (
            f"apiVersion must be '{API_VERSION}', got {got}",
            f"set 'apiVersion: {API_VERSION}'",
        )
    if etype == "string_pattern_mismatch":
        return _pattern_mismatch(str(ctx.get("pattern", "")), field, value, schema)
    if etype in ("string_type", "string_sub_type"):
        return (
            f"{prefix}expected a string, got {got}",
            'quote the value if it is meant as text (for example "2024-01-01" or "yes")'
            if not isinstance(value, dict | list)
            else "write a single string here",
        )
    if etype in _EXPECTED:
        what, hint = _EXPECTED[etype]
        return (f"{prefix}expected {what}, got {got}", hint)
    if etype == "literal_error":
        expected = str(ctx.get("expected", ""))
        return (
            f"{prefix}{got} is not allowed here; expected {expected}",
            f"use {expected}",
        )
    if etype in _BOUNDS:
        key, words = _BOUNDS[etype]
        limit = ctx.get(key)
        return (f"{prefix}must be {words} {limit}, got {got}", f"use a value {words} {limit}")
    if etype in ("too_short", "string_too_short", "too_long", "string_too_long"):
        return _length_problem(etype, prefix, ctx)
    if etype == "value_error":
        text = str(ctx.get("error", "")) or msg.removeprefix("Value error, ")
        return (f"{prefix}{text}", _value_hint(text, schema))
    return (f"{prefix}{msg}", f"see {schema} for what this field accepts")


_EXPECTED: dict[str, tuple[str, str]] = {
    "int_type": ("a whole number", "write a number such as 3"),
    "int_parsing": ("a whole number", "write a number such as 3"),
    "int_from_float": ("a whole number", "write a number such as 3"),
    "float_type": ("a number", "write a number such as 1.5"),
    "float_parsing": ("a number", "write a number such as 1.5"),
    "bool_type": ("true or false", "write true or false"),
    "bool_parsing": ("true or false", "write true or false"),
    "list_type": ("a list", "write a list: [a, b] or one '- item' per line"),
    "dict_type": ("a mapping", "write 'key: value' pairs, indented under this key"),
    "model_type": ("a mapping", "write 'key: value' pairs, indented under this key"),
    "model_attributes_type": ("a mapping", "write 'key: value' pairs, indented under this key"),
}
"""What a pydantic type error expected, and how to write it."""

_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "greater_than": ("gt", "greater than"),
    "less_than_equal": ("le", "at most"),
    "less_than": ("lt", "less than"),
}


def _pattern_mismatch(pattern: str, field: str, value: Any, schema: str) -> tuple[str, str]:
    got = describe(value)
    prefix = f"{field}: " if field else ""
    if pattern == NAME_PATTERN:
        return (
            f"{prefix}{got} is not a valid name: {_NAME_RULE}",
            f"for example '{_suggest_name(value)}'",
        )
    if pattern.startswith("^[A-Za-z_]"):
        return (
            f"{prefix}{got} is not a valid environment variable name",
            "use letters, digits and '_', not starting with a digit",
        )
    if field.endswith("ssh.from"):
        return (
            f"{prefix}{got} is not a list of addresses or host patterns",
            "separate addresses, CIDR ranges or patterns with commas, no spaces "
            "(e.g. 10.0.0.5,192.168.1.0/24)",
        )
    if field.endswith("ssh.command"):
        return (
            f"{prefix}{got} is not a program name or path",
            "name the reconciler on the host without arguments (e.g. "
            "/usr/local/bin/reconciler); ' node' is added to it",
        )
    if field.startswith("spec.notifications") and field.endswith(".url"):
        return (  # the value is not quoted: it may hold a password
            f"{prefix}not an http(s) URL without user information",
            "write http(s)://HOST/PATH; a URL with a secret in it goes into a file named by "
            "urlFile (docs/notifications.md)",
        )
    if field.endswith(("ssh.identityFile", "ssh.knownHosts", ".urlFile")):
        return (
            f"{prefix}{got} is not an absolute path",
            "write an absolute path, or one starting with ~ (the reconciler's home)",
        )
    if field.endswith("branchPrefix"):
        return (
            f"{prefix}{got} is not a valid branch prefix",
            "use letters, digits, '.', '_' or '-', ending with '/', for example 'agent/'",
        )
    return (f"{prefix}{got} does not match the pattern {pattern}", f"see {schema}")


def _length_problem(etype: str, prefix: str, ctx: dict[str, Any]) -> tuple[str, str]:
    if etype in ("too_long", "string_too_long"):
        n = ctx.get("max_length")
        unit = "characters" if etype == "string_too_long" else "items"
        return (f"{prefix}must have at most {n} {unit}", "shorten it")
    n = ctx.get("min_length", 1)
    if etype == "string_too_short" and n == 1:
        return (f"{prefix}must not be empty", "write a value, or remove the field")
    unit = "character" if etype == "string_too_short" else "item"
    return (
        f"{prefix}needs at least {n} {unit}{'s' if n != 1 else ''}",
        "add the missing entries, or remove the field",
    )


def _value_hint(text: str, schema: str) -> str:
    if "duration" in text:
        return "write a duration such as 30s, 5m, 1h30m or 2d, or a number of seconds"
    if "exactly one of spec.prompt and spec.promptFile" in text:
        return "keep either prompt (the text inline) or promptFile (a path in the control repo)"
    if "needs spec.command" in text:
        return 'add \'command: ["program", "{prompt_file}"]\' to the spec'
    if "listed twice" in text:
        return "give each repo of a lane its own name"
    if "cannot split check" in text:
        return "close the quote, or write the check as a list of arguments"
    if "the ssh block is only for" in text:
        return "remove spec.ssh, or set host: ssh://USER@HOST[:PORT]"
    if "ssh://USER@HOST" in text:
        return "write host: local, or host: ssh://USER@HOST[:PORT] (e.g. ssh://agent@build-2:2222)"
    if "an ssh lane runs as the user it logs in as" in text:
        return "remove spec.user: the user in host: ssh://USER@… is the lane's user"
    for words, hint in _NOTIFICATION_HINTS:
        if words in text:
            return hint
    return f"see {schema} for what this field accepts"


_NOTIFICATION_HINTS = (
    ("is a secret and the control repo", "replace url: with urlFile: PATH (docs/notifications.md)"),
    ("exactly one of url and urlFile", "keep url (a URL that is no secret) or urlFile (a file)"),
    ("a command sink needs", 'add command: ["/usr/local/bin/page-oncall"] to the sink'),
    ("sink takes no", "remove the fields this type of sink does not use, or change its type"),
    ("appears twice in on", "list each transition once"),
    ("notification sink name", "give each sink its own name"),
)


def _allowed_fields(cls: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    model = _model_at(cls, loc)
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_at(cls: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    current: Any = cls
    for seg in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = next(
                (f for n, f in current.model_fields.items() if (f.alias or n) == seg), None
            )
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) is list and isinstance(seg, int):
            current = get_args(current)[0]
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for seg in loc:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif seg != "[key]":
            out += f".{seg}" if out else str(seg)
    return out


def describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return show(value)
    if isinstance(value, int | float):
        return str(value)
    return f"a {type(value).__name__} ({str(value)[:40]})"


def show(value: object) -> str:
    text = repr(value) if isinstance(value, str) else describe(value)
    return text if len(text) <= 60 else text[:57] + "...'"


def _suggest_name(value: Any) -> str:
    text = re.sub(r"[^a-z0-9-]+", "-", str(value).lower()).strip("-")[:63].strip("-")
    return text or "my-task"


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    folded = {c.lower(): c for c in choices}
    if word.lower() in folded:
        return f"did you mean '{folded[word.lower()]}'? "
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""
