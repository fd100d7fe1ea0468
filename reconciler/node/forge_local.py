"""The local forge driver: pull requests kept inside the remote repository, like a tiny GitHub.

The records are one JSON document, ``pulls.json``, in a commit on ``refs/reconciler/pulls`` of
the checkout's remote (a local path or ``file://`` URL). Every change is a compare-and-swap of
that ref (``update-ref REF NEW OLD``), retried on conflict, so concurrent writers never lose an
update and the records survive the loss of any control-plane state. Like GitHub, the store
itself refuses a second open PR from one branch and leaves a PR that is no longer open as it is;
the pull-request rules are ``reconciler.node.pulls``'. The local forge merges (the reconciler's
``pr merge``), says whether an open PR merges into its base now (a trial merge in the remote
repository that leaves nothing there) and shows a PR's diff; it has no CI or reviews. Must not
touch the lane's checkout or worktrees, and must not rewrite a base branch except by an explicit
merge.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable
from functools import cached_property
from typing import Literal, TypeVar
from urllib.parse import unquote, urlparse

from reconciler import gitfiles
from reconciler.node import git as gitops
from reconciler.node import gitcache
from reconciler.node.errors import NodeError
from reconciler.node.forges import Capabilities, PullExists
from reconciler.protocol import PrComment, PullRequest

PULLS_REF = "refs/reconciler/pulls"
PULLS_FILE = "pulls.json"
CAS_ATTEMPTS = 20
ZERO = "0" * 40
IDENTITY = gitops.IDENTITY  # commit-tree needs an identity; the lane user's may have none

T = TypeVar("T")
Doc = dict[str, object]
Record = dict[str, object]

# The pull requests' document last read, by remote: PULLS_REF's commit and its text. Every
# pass lists them, and a commit's document is what it is for good.
_DOCS: dict[str, tuple[str, str]] = {}
# A checkout's remote's path by (checkout, remote), beside the identity of the config it was
# read from.
_PATHS: dict[tuple[str, str], tuple[tuple[int, int, int, int, int], str]] = {}


class ForgeError(NodeError):
    """A local-forge request failed; the message names the PR or repository and the fix."""


def remote_path(checkout: str, remote: str) -> str:
    """The filesystem path of the checkout's remote; ForgeError unless it is local. Kept while
    the checkout's config is the file it was when git named the remote, and older than the
    racy window then (every pass lists a local forge's PRs)."""
    config = os.path.join(gitops.common_dir(checkout), "config")
    try:
        st = os.stat(config)
    except OSError:
        return _remote_path(checkout, remote)
    identity = gitfiles.identity(st)
    known = _PATHS.get((checkout, remote))
    if known is not None and known[0] == identity:
        return known[1]
    read_at = time.time_ns()
    path = _remote_path(checkout, remote)
    if gitfiles.settled(st, read_at):
        _PATHS[(checkout, remote)] = (identity, path)
    return path


def _remote_path(checkout: str, remote: str) -> str:
    url = gitops.remote_url(checkout, remote)
    if url.startswith("file://"):
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise ForgeError(
                f"remote {remote} of {checkout} is {url}, on another host; the local forge "
                "needs a local path or file:// URL (use forge kind github for hosted repos)"
            )
        path = unquote(parsed.path)
    elif "://" in url or re.match(r"^[^/]+:", url):
        raise ForgeError(
            f"remote {remote} of {checkout} is {url}, not a local repository; the local forge "
            "needs a local path or file:// URL (use forge kind github for hosted repos)"
        )
    else:
        path = url
    path = os.path.normpath(os.path.join(checkout, os.path.expanduser(path)))
    if not gitops.is_repo(path):
        raise ForgeError(
            f"remote {remote} of {checkout} points to {path}, which is not a git repository; "
            "create it (git init --bare) or fix the remote URL"
        )
    return os.path.realpath(path)


class LocalForge:
    """The pull requests of one remote repository."""

    def __init__(self, checkout: str, remote: str) -> None:
        self.checkout = checkout
        self.remote = remote
        self.capabilities = Capabilities(merge=self, mergeable=self, diff=self)

    def __repr__(self) -> str:
        return f"LocalForge({self.checkout!r}, {self.remote!r})"

    @cached_property
    def path(self) -> str:
        """The remote repository, resolved at first use (opening the driver reads nothing)."""
        return remote_path(self.checkout, self.remote)

    @property
    def where(self) -> str:
        return self.path

    # ------------------------------------------------------------------ document storage

    def _git(self, args: list[str], *, check: bool = True, stdin: str | None = None) -> str:
        return gitops.run(args, self.path, check=check, stdin=stdin, env=IDENTITY).stdout.strip()

    def _load(self) -> tuple[str | None, Doc]:
        old = gitops.ref_commit(self.path, PULLS_REF)
        if old is None:
            return None, {"next": 1, "pulls": []}
        known = _DOCS.get(self.path)
        raw = known[1] if known is not None and known[0] == old else None
        if raw is None:
            raw = self._git(["cat-file", "blob", f"{old}:{PULLS_FILE}"])
            _DOCS[self.path] = (old, raw)  # a commit's document never changes
        try:
            doc = json.loads(raw)
        except ValueError:
            raise ForgeError(
                f"{PULLS_FILE} on {PULLS_REF} of {self.path} is not JSON; restore it from the "
                f"ref's history (git -C {self.path} log {PULLS_REF})"
            ) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("pulls"), list):
            raise ForgeError(f"{PULLS_FILE} on {PULLS_REF} of {self.path} is malformed")
        return old, doc

    def _store(self, old: str | None, doc: Doc, message: str) -> bool:
        """Write ``doc`` as the child of ``old``; False when someone else moved the ref first."""
        text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        blob = self._git(["hash-object", "-w", "--stdin"], stdin=text)
        tree = self._git(["mktree"], stdin=f"100644 blob {blob}\t{PULLS_FILE}\n")
        parents = ["-p", old] if old else []
        commit = self._git(["commit-tree", tree, *parents, "-m", message])
        proc = gitops.run(
            ["update-ref", "-m", message, PULLS_REF, commit, old or ZERO], self.path, check=False
        )
        return proc.returncode == 0

    def _transact(self, change: Callable[[Doc], tuple[T, str | None]]) -> T:
        """Apply ``change`` to the current document with compare-and-swap, retrying on races.

        ``change`` returns (result, commit message); a None message means nothing to write.
        """
        for _ in range(CAS_ATTEMPTS):
            old, doc = self._load()
            result, message = change(doc)
            if message is None or self._store(old, doc, message):
                return result
            time.sleep(random.uniform(0.001, 0.02))  # let the other writer finish
        raise ForgeError(
            f"{PULLS_REF} of {self.path} kept changing under {CAS_ATTEMPTS} attempts to update it; "
            "retry later",
            temporary=True,
        )

    # ------------------------------------------------------------------------ helpers

    def url(self, number: int) -> str:
        return f"file://{self.path}#pull/{number}"

    def _pr(self, rec: Record, head_now: str | None = None) -> PullRequest:
        head_sha = head_now or rec.get("head_sha")
        return PullRequest(
            number=int(str(rec["number"])),
            url=self.url(int(str(rec["number"]))),
            state=_state(rec.get("state")),
            head=str(rec["head"]),
            base=str(rec["base"]),
            title=str(rec.get("title", "")),
            body=str(rec.get("body", "")),
            head_sha=head_sha if isinstance(head_sha, str) else None,
            updated_at=_float(rec.get("updated_at")),
        )

    def _fresh(self, rec: Record) -> PullRequest:
        """The PR of ``rec``, an open one with its branch's commit now."""
        open_head = self._branch(str(rec["head"])) if rec.get("state") == "open" else None
        return self._pr(rec, open_head)

    @staticmethod
    def _records(doc: Doc) -> list[Record]:
        pulls = doc["pulls"]
        assert isinstance(pulls, list)
        return [p for p in pulls if isinstance(p, dict)]

    def _find(self, doc: Doc, number: int) -> Record:
        for rec in self._records(doc):
            if rec.get("number") == number:
                return rec
        raise ForgeError(f"pull request #{number} does not exist in {self.path}; list them first")

    def _branch(self, name: str) -> str | None:
        return gitops.ref_commit(self.path, f"refs/heads/{name}")

    # ------------------------------------------------------------------------ operations

    def list_pulls(self, head: str | None = None) -> list[PullRequest]:
        """PRs oldest first; an open PR's head sha is its branch's commit now, as on GitHub
        (a push without an update must not leave the PR reporting an older commit)."""
        _, doc = self._load()
        records = [
            r
            for r in sorted(self._records(doc), key=lambda r: int(str(r.get("number", 0))))
            if head is None or r.get("head") == head
        ]
        if not any(r.get("state") == "open" for r in records):
            return [self._pr(r) for r in records]
        branches = gitcache.refs(self.path, ["refs/heads/"])
        return [
            self._pr(
                r, branches.get(f"refs/heads/{r['head']}") if r.get("state") == "open" else None
            )
            for r in records
        ]

    def get_pull(self, number: int) -> PullRequest:
        _, doc = self._load()
        return self._fresh(self._find(doc, number))

    def create_pull(
        self,
        *,
        head: str,
        base: str,
        title: str,
        body: str,
        draft: bool,
        labels: list[str],
        reviewers: list[str],
    ) -> PullRequest:
        head_sha = self._branch(head)
        if head_sha is None:
            raise ForgeError(
                f"branch {head} does not exist in {self.path}; push it before opening a PR"
            )
        if self._branch(base) is None:
            raise ForgeError(
                f"base branch {base} does not exist in {self.path}; push it or fix the base"
            )

        def change(doc: Doc) -> tuple[Record, str | None]:
            if any(r.get("head") == head and r.get("state") == "open" for r in self._records(doc)):
                raise PullExists(f"an open pull request from {head} already exists in {self.path}")
            number = int(str(doc.get("next", 1)))
            now = time.time()
            new: Record = {
                "number": number,
                "title": title,
                "body": body,
                "head": head,
                "base": base,
                "state": "open",
                "draft": draft,
                "labels": labels,
                "reviewers": reviewers,
                "head_sha": head_sha,
                "created_at": now,
                "updated_at": now,
                "comments": [],
            }
            pulls = doc["pulls"]
            assert isinstance(pulls, list)
            pulls.append(new)
            doc["next"] = number + 1
            return new, f"open #{number} from {head} into {base}"

        return self._pr(self._transact(change))

    def edit_pull(
        self, number: int, *, title: str | None = None, body: str | None = None
    ) -> PullRequest:
        def change(doc: Doc) -> tuple[Record, str | None]:
            rec = self._find(doc, number)
            if title is not None:
                rec["title"] = title
            if body is not None:
                rec["body"] = body
            self._touch(rec)
            return rec, f"edit #{number}"

        return self._fresh(self._transact(change))

    def comment(self, number: int, text: str) -> None:
        def change(doc: Doc) -> tuple[None, str | None]:
            rec = self._find(doc, number)
            comments = rec.setdefault("comments", [])
            assert isinstance(comments, list)
            comments.append({"at": time.time(), "body": text})
            self._touch(rec)
            return None, f"comment on #{number}"

        self._transact(change)

    def close_pull(self, number: int) -> PullRequest:
        def change(doc: Doc) -> tuple[Record, str | None]:
            rec = self._find(doc, number)
            if rec.get("state") != "open":
                return rec, None  # merged (or closed) meanwhile: a merged PR stays merged
            rec["state"] = "closed"
            rec["updated_at"] = time.time()
            return rec, f"close #{number}"

        return self._pr(self._transact(change))

    def flush(self) -> None:
        pass  # nothing cached between passes

    def merge_pull(self, number: int) -> PullRequest:
        """Merge head into base in the remote repository: fast-forward, else a merge commit."""
        _, doc = self._load()
        rec = self._find(doc, number)
        head, base = str(rec["head"]), str(rec["base"])
        merged_head = self._merge_branches(number, head, base, str(rec.get("title", "")))

        def change(doc: Doc) -> tuple[Record, str | None]:
            rec = self._find(doc, number)
            if rec.get("state") == "merged":
                return rec, None
            rec["state"] = "merged"
            rec["head_sha"] = merged_head
            rec["updated_at"] = time.time()
            return rec, f"merge #{number}"

        return self._pr(self._transact(change))

    def _touch(self, rec: Record) -> None:
        """A change to an open PR records its branch's commit then, as GitHub shows it."""
        sha = self._branch(str(rec["head"]))
        if sha is not None and rec.get("state") == "open":
            rec["head_sha"] = sha
        rec["updated_at"] = time.time()

    def _merge_branches(self, number: int, head: str, base: str, title: str) -> str:
        """Move ``base`` to include ``head``; returns the merged head commit."""
        for _ in range(CAS_ATTEMPTS):
            head_sha = self._branch(head)
            base_sha = self._branch(base)
            if head_sha is None or base_sha is None:
                missing = head if head_sha is None else base
                raise ForgeError(
                    f"cannot merge #{number}: branch {missing} no longer exists in {self.path}"
                )
            if gitops.is_ancestor(self.path, head_sha, base_sha):
                return head_sha  # already contained (e.g. a merge interrupted before recording)
            if gitops.is_ancestor(self.path, base_sha, head_sha):
                new = head_sha
            else:
                new = self._merge_commit(
                    number, head=head, base=base, head_sha=head_sha, base_sha=base_sha, title=title
                )
            proc = gitops.run(
                ["update-ref", f"refs/heads/{base}", new, base_sha], self.path, check=False
            )
            if proc.returncode == 0:
                return head_sha
        raise ForgeError(
            f"branch {base} of {self.path} kept moving while merging #{number}; retry later",
            temporary=True,
        )

    def _merge_commit(
        self, number: int, *, head: str, base: str, head_sha: str, base_sha: str, title: str
    ) -> str:
        try:
            merged = gitops.merge_trees(self.path, base_sha, head_sha, keep=True)
        except gitops.GitError as exc:
            raise ForgeError(f"#{number} needs a merge commit, which failed: {exc}") from None
        if not merged.clean:
            files = ", ".join(merged.conflicts[:10])
            raise ForgeError(
                f"pull request #{number} ({head} into {base}) conflicts in {files}; "
                f"rebase {head} on {base}, push, and merge again"
            )
        message = f"Merge pull request #{number} from {head}\n\n{title}".rstrip()
        return self._git(
            ["commit-tree", merged.tree, "-p", base_sha, "-p", head_sha, "-m", message]
        )

    # ------------------------------------------------------------------ what a PR is now

    def mergeable(self, pr: PullRequest) -> PullRequest:
        """The open ``pr`` with whether its head merges into its base as the base is now: behind
        when the base has commits the head has not, and then a trial merge for the conflicts.
        Unknown (None) when a branch is gone or git cannot do a trial merge."""
        base_sha = self._branch(pr.base)
        if pr.head_sha is None or base_sha is None:
            return pr
        if gitops.is_ancestor(self.path, base_sha, pr.head_sha):
            return pr.model_copy(update={"mergeable": True, "behind": False, "conflicts": []})
        try:
            trial = gitops.merge_trees(self.path, pr.head_sha, base_sha)
        except gitops.GitError:
            return pr.model_copy(update={"behind": True})
        return pr.model_copy(
            update={"mergeable": trial.clean, "behind": True, "conflicts": trial.conflicts}
        )

    def diff(self, pr: PullRequest) -> str:
        """The changes of the PR against its base now, ``git diff base...head`` (empty once it
        is merged: the base has them)."""
        head = pr.head_sha or self._branch(pr.head)
        base = self._branch(pr.base)
        if head is None or base is None:
            missing = pr.head if head is None else pr.base
            raise ForgeError(f"#{pr.number}: branch {missing} no longer exists in {self.path}")
        return gitops.diff(self.path, base, head)

    def comments(self, number: int) -> list[PrComment]:
        _, doc = self._load()
        rec = self._find(doc, number)
        found = rec.get("comments")
        return [
            PrComment(at=_float(c.get("at")), author="reconciler", body=str(c.get("body", "")))
            for c in (found if isinstance(found, list) else [])
            if isinstance(c, dict)
        ]


def _state(value: object) -> Literal["open", "closed", "merged"]:
    if value == "merged":
        return "merged"
    if value == "closed":
        return "closed"
    return "open"


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
