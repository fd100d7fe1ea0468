"""Every manifest field and every CLI flag is documented: the reference pages name each one, so a
field or flag added without its documentation fails here, not a user."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from reconciler.cli.parser import build_parser
from reconciler.manifests.models import AgentSpec, ConfigSpec, LaneSpec, Spec, TaskSpec
from reconciler.manifests.policy import PolicySpec

DOCS = Path(__file__).parents[2] / "docs"


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """``root`` and every model reachable through its fields."""
    found: list[type[BaseModel]] = []
    pending = [root]
    while pending:
        model = pending.pop()
        if model in found:
            continue
        found.append(model)
        for field in model.model_fields.values():
            for arg in _types(field.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    pending.append(arg)
    return found


def _types(annotation: object) -> list[object]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    return [t for a in args for t in _types(a)]


def _field_names(root: type[BaseModel]) -> list[str]:
    names = []
    for model in _models(root):
        for name, field in model.model_fields.items():
            names.append(field.alias or name)
    return sorted(set(names))


@pytest.mark.parametrize(
    ("root", "page"),
    [
        (LaneSpec, "manifests.md"),
        (AgentSpec, "manifests.md"),
        (TaskSpec, "manifests.md"),
        (ConfigSpec, "manifests.md"),
        (PolicySpec, "security.md"),
    ],
)
def test_every_manifest_field_is_documented(root: type[Spec], page: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    assert len(_field_names(root)) >= 5  # the walk found the fields
    # named as `name`, `spec.x.name`, or as a key in an example (`name: …`)
    missing = [
        n
        for n in _field_names(root)
        if not re.search(rf"[`.]{n}[`.]|^\s*{n}:|[{{,] ?{n}[,?}}]", text, re.M)
    ]
    assert not missing, f"{root.__name__} fields not named in docs/{page}: {missing}"


def _flags(parser: argparse.ArgumentParser, path: str = "") -> dict[str, set[str]]:
    """Each (sub)command's option strings, by command path (``"pr merge"``)."""
    found: dict[str, set[str]] = {path: set()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_flags(sub, f"{path} {name}".strip()))
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            found[path] |= {s for s in action.option_strings if s.startswith("--")}
    return found


def test_every_cli_command_and_flag_is_documented() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    commands = _flags(build_parser())
    assert len(commands) > 20 and sum(map(len, commands.values())) > 50  # the walk found them
    missing = []
    for command, flags in commands.items():
        if command and not re.search(rf"reconciler {re.escape(command)}\b|`{command}`", text):
            missing.append(command)
        missing += [
            f"{command} {flag}".strip()
            for flag in sorted(flags)
            if f"`{flag}" not in text and f"{flag}" not in text
        ]
    assert not missing, f"not in docs/cli.md: {missing}"
