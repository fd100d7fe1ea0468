"""The committed JSON Schemas under schemas/ match the models."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.manifests.models import DOCUMENT_KINDS
from reconciler.manifests.policy import POLICY_KINDS
from reconciler.manifests.schema import schema_documents

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_committed_schemas_match_the_models() -> None:
    documents = schema_documents()
    kinds = {**DOCUMENT_KINDS, **POLICY_KINDS}  # the manifests, and the admin's policy file
    assert sorted(documents) == sorted(f"{k.lower()}.json" for k in kinds)
    for name, text in documents.items():
        path = SCHEMAS / name
        committed = path.read_text() if path.exists() else None
        assert committed == text, (
            f"schemas/{name} is out of date with the models: run `make schemas`"
        )


def test_schema_documents_are_stable_and_described() -> None:
    first, second = schema_documents(), schema_documents()
    assert first == second
    for name, text in first.items():
        assert text.endswith("}\n")
        schema = json.loads(text)
        kind = name.removesuffix(".json")
        assert schema["$id"].endswith(f":{kind}")
        assert schema["title"].lower() == f"reconciler/v1 {kind}"
        assert schema["additionalProperties"] is False
        # a policy file is the admin's: one document, its metadata optional
        required = {"apiVersion", "kind"} | ({"metadata"} if kind != "policy" else set())
        assert set(schema["required"]) >= required
    task = json.loads(first["task.json"])
    spec = task["$defs"]["TaskSpec"]["properties"]
    assert {"maxIterations", "promptFile", "dependsOn"} <= set(spec)
