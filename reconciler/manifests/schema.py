"""JSON Schemas of the manifest kinds, generated from the models (for editors and reviewers).

Pure: returns text, writes nothing; the CLI's ``schema`` command writes the files to
``schemas/``, where they are committed (a test fails when they drift from the models).
"""

from __future__ import annotations

import json
from typing import Any

from reconciler.manifests.models import API_VERSION, DOCUMENT_KINDS
from reconciler.manifests.policy import POLICY_KINDS

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_documents() -> dict[str, str]:
    """``{"lane.json": text, "agent.json": …, "task.json": …, "config.json": …}``, and
    ``policy.json`` for the admin's policy file.

    Text is stable (sorted keys, two-space indent, trailing newline), so regenerating the files
    without a model change produces no diff.
    """
    out: dict[str, str] = {}
    for kind, model in {**DOCUMENT_KINDS, **POLICY_KINDS}.items():
        schema: dict[str, Any] = model.model_json_schema(by_alias=True, mode="validation")
        out[f"{kind.lower()}.json"] = schema_text(
            schema,
            name=kind.lower(),
            title=f"{API_VERSION} {kind}",
            description=f"A {kind} document (apiVersion {API_VERSION})."
            if kind in POLICY_KINDS
            else f"A {kind} manifest document (apiVersion {API_VERSION}).",
        )
    return out


def schema_text(schema: dict[str, Any], *, name: str, title: str, description: str) -> str:
    """A JSON Schema as a committed file holds it: with its dialect, its id (by ``name``), title
    and description; stable text."""
    schema.update(
        {
            "$schema": JSON_SCHEMA_DIALECT,
            "$id": f"urn:reconciler:schema:{API_VERSION.replace('/', ':')}:{name}",
            "title": title,
            "description": description,
        }
    )
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
