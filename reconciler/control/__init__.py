"""Reading the control repo: where the manifests come from, at which revision.

May run git (argv lists, never a shell) and touch the file system; it never writes to the
operator's repository, only to its own mirror and cache under the state directory. Parsing and
checking manifests is :mod:`reconciler.manifests` (pure); this package only feeds it bytes.
"""

from reconciler.control.desired import load_desired
from reconciler.control.repo import (
    WORKTREE_REVISION,
    ControlError,
    ControlRepo,
    git_blob_id,
)

__all__ = ["WORKTREE_REVISION", "ControlError", "ControlRepo", "git_blob_id", "load_desired"]
