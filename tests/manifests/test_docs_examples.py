"""Every complete manifest shown in the docs is valid: readers copy them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from reconciler.manifests.models import DOCUMENT_KINDS
from reconciler.manifests.policy import POLICY_KINDS

KINDS = {**DOCUMENT_KINDS, **POLICY_KINDS}  # manifests, and the admin's policy (security.md)

DOCS = Path(__file__).resolve().parents[2] / "docs"
README = DOCS.parent / "README.md"


def examples() -> list[tuple[str, int, dict[str, object]]]:
    """(file, block number, document) for each ``apiVersion: reconciler/v1`` document."""
    found = []
    for path in [*sorted(DOCS.glob("*.md")), README]:
        blocks = re.findall(r"```ya?ml\n(.*?)```", path.read_text(), re.S)
        for number, block in enumerate(blocks, 1):
            if "apiVersion: reconciler/v1" not in block:
                continue  # a fragment (a field or two), not a manifest
            for doc in YAML(typ="safe").load_all(block):
                if not isinstance(doc, dict) or doc.get("apiVersion") != "reconciler/v1":
                    continue
                if doc.get("spec") == "...":
                    continue  # the outline of a document, its spec elided
                found.append((path.name, number, doc))
    return found


EXAMPLES = examples()


def test_the_docs_show_manifests_of_every_kind() -> None:
    assert {str(doc["kind"]) for _, _, doc in EXAMPLES} == set(KINDS)


@pytest.mark.parametrize(
    "doc",
    [pytest.param(doc, id=f"{name}#{number}-{doc.get('kind')}") for name, number, doc in EXAMPLES],
)
def test_a_documented_manifest_is_valid(doc: dict[str, object]) -> None:
    KINDS[str(doc["kind"])].model_validate(doc)


def documented_unknown_fields() -> list[tuple[str, str, str, str]]:
    """(doc, field, section, hint) for each documented ``unknown field 'x' in spec`` error."""
    found = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text()
        pattern = r"unknown field '(\w+)' in (\w+)\n\s*hint: ([^\n]*)"
        for field, section, hint in re.findall(pattern, text):
            found.append((path.name, field, section, hint))
    return found


@pytest.mark.parametrize(("doc", "field", "section", "hint"), documented_unknown_fields())
def test_the_hints_the_docs_show_are_the_ones_the_loader_gives(
    doc: str, field: str, section: str, hint: str
) -> None:
    from tests.manifests.manifest_support import errors_of

    given = []
    for kind in ("Lane", "Agent", "Task", "Config"):
        body = {"Lane": "{repos: [{name: r, checkout: ~/r}]", "Agent": "{kind: claude"}.get(
            kind, "{lane: l, repo: r, agent: a, prompt: x" if kind == "Task" else "{"
        )
        text = (
            f"apiVersion: reconciler/v1\nkind: {kind}\nmetadata: {{name: x}}\n"
            f"{section}: {body}, {field}: 1}}\n"
        )
        given += [e.hint for e in errors_of({"manifests/x.yaml": text}, base=False)]
    assert hint in given, f"{doc} shows a hint the loader no longer gives; it gives: {given}"
