"""The environment every git command of the reconciler runs with. Pure: builds a dict.

Shared by the control side (reading the control repo) and the lane side (worktrees, pushes),
which may not import each other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# Set by git for hooks (a post-receive hook running the reconciler, say): they would point every
# git command at the repository the hook runs in instead of the one named on the command line.
LOCATION_VARS = frozenset(
    {
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_NAMESPACE",
        "GIT_PREFIX",
        "GIT_QUARANTINE_PATH",
    }
)


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without git's location variables; git never prompts (a hidden
    prompt hangs a pass) and speaks English (messages are parsed)."""
    env = {k: v for k, v in os.environ.items() if k not in LOCATION_VARS}
    env.update({"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
    if extra:
        env.update(extra)
    return env
