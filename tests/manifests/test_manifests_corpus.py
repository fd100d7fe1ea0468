"""Every malformed manifest in corpus/ reports exactly the errors its ``# expect:`` lines name.

Each corpus file is loaded as ``manifests/<name>`` next to a valid lane ``web`` (repo
``webapp``), an agent ``claude`` and a prompt file ``prompts/ok.md``. An expectation is
``# expect: LINE:COL: message substring``; positions are exact, and no other error may appear.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reconciler.manifests.errors import ManifestErrors
from tests.manifests.manifest_support import BASE, Repo

CORPUS = sorted((Path(__file__).parent / "corpus").glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+):(\d+): (.+)$")


def expectations(data: bytes) -> list[tuple[int, int, str]]:
    found = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        m = EXPECT.match(line)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), m.group(3)))
    return found


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("case", CORPUS, ids=lambda p: p.stem)
def test_corpus_case(case: Path) -> None:
    data = case.read_bytes()
    expected = expectations(data)
    assert expected, f"{case.name} has no '# expect: LINE:COL: message' line"
    path = f"manifests/{case.name}"
    with pytest.raises(ManifestErrors) as info:
        Repo({**BASE, path: data}).load()
    errors = info.value.errors
    report = "\n".join(str(e) for e in errors)
    assert [e.path for e in errors] == [path] * len(errors), report
    assert len(errors) == len(expected), report
    for (line, column, message), error in zip(expected, errors, strict=True):
        assert (error.line, error.column) == (line, column), report
        assert message in error.message, report
        assert error.hint, f"no hint for: {error}"
        assert "Traceback" not in str(error)
