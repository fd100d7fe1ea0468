"""Helpers for the manifest tests: an in-memory control repo and a counting reader."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from reconciler.control import git_blob_id
from reconciler.manifests.errors import ManifestError, ManifestErrors
from reconciler.manifests.loader import SourceFile, load
from reconciler.manifests.models import Desired

BASE: dict[str, bytes] = {
    "manifests/_base.yaml": b"""\
apiVersion: reconciler/v1
kind: Lane
metadata: {name: web}
spec:
  repos:
    - {name: webapp, checkout: ~/src/webapp}
---
apiVersion: reconciler/v1
kind: Agent
metadata: {name: claude}
spec: {kind: claude}
""",
    "prompts/ok.md": b"Fix it.\n",
}


def as_bytes(files: Mapping[str, str | bytes]) -> dict[str, bytes]:
    return {k: v.encode() if isinstance(v, str) else v for k, v in files.items()}


class Repo:
    """Files of a control repo in memory; ``read`` counts what it is asked for."""

    def __init__(self, files: Mapping[str, str | bytes]) -> None:
        self.files = as_bytes(files)
        self.reads: Counter[str] = Counter()

    def source_files(self) -> list[SourceFile]:
        return [
            SourceFile(path, git_blob_id(data), len(data))
            for path, data in sorted(self.files.items())
            if path.startswith("manifests/") and path.endswith((".yaml", ".yml"))
        ]

    def read(self, path: str) -> bytes | None:
        self.reads[path] += 1
        return self.files.get(path)

    def load(self, cache: dict[str, Any] | None = None, revision: str = "0" * 40) -> Desired:
        return load(self.source_files(), self.read, revision, cache)


def load_files(files: Mapping[str, str | bytes], base: bool = True) -> Desired:
    return Repo({**BASE, **files} if base else files).load()


def errors_of(files: Mapping[str, str | bytes], base: bool = True) -> list[ManifestError]:
    """Every error loading ``files`` gives (it must give some)."""
    try:
        load_files(files, base=base)
    except ManifestErrors as exc:
        return exc.errors
    raise AssertionError("the manifests loaded without an error")
