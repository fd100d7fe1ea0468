"""Reading the admin policy in a long-running process: re-parsed when it changes, and judged for
trust on every load — a chmod changes no content, yet must take effect at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.lanes.policy import PolicyError, load_policy

POLICY = "apiVersion: reconciler/v1\nkind: Policy\nspec:\n  users: ['agent-*']\n"


def test_a_policy_made_writable_by_others_is_refused_at_the_next_load(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    path = etc / "policy.yaml"
    path.write_text(POLICY)
    path.chmod(0o644)
    assert load_policy(str(path)).spec.users == ["agent-*"]
    path.chmod(0o666)  # no content change: the parse could be cached, the trust cannot
    with pytest.raises(PolicyError, match="can be written by others"):
        load_policy(str(path))
    path.chmod(0o644)
    etc.chmod(0o777)  # a directory above it
    with pytest.raises(PolicyError, match="cannot be trusted"):
        load_policy(str(path))
    etc.chmod(0o755)
    path.write_text(POLICY.replace("agent-*", "lane-*"))  # an edit is read at the next load
    assert load_policy(str(path)).spec.users == ["lane-*"]
