"""The manifest kinds (``Lane``, ``Agent``, ``Task``, ``Config``) as strict pydantic models.

Pure: no I/O. Field names are the camelCase names operators write; unknown fields are errors.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shlex
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from reconciler.durations import parse_duration
from reconciler.manifests.errors import ManifestError

API_VERSION = "reconciler/v1"
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(lambda v: v, return_type=float),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "seconds, or a string such as 30s, 5m, 1h30m",
        }
    ),
]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class Spec(BaseModel):
    """Base for every manifest object: camelCase names, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        str_strip_whitespace=False,
    )


class Metadata(Spec):
    name: Name = Field(description="DNS label, unique per kind")
    labels: dict[str, str] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------- Lane


def _repeated(names: Iterable[str]) -> str | None:
    """The first name that comes a second time, if any."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


class Forge(Spec):
    kind: Literal["local", "github"] = Field(
        description="local: pull requests kept inside the remote repository itself; "
        "github: pull requests on GitHub or GitHub Enterprise Server"
    )
    repo: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$",
        description="github: OWNER/NAME of the repository",
    )
    api_url: str | None = Field(
        None,
        pattern=r"^https?://\S+$",
        description="github: the REST API root, for GitHub Enterprise Server "
        "(e.g. https://ghe.example.com/api/v3); default https://api.github.com",
    )

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Forge:
        if self.kind == "github" and not self.repo:
            raise ValueError("a github forge needs repo: OWNER/NAME")
        if self.kind == "local" and (self.repo or self.api_url):
            raise ValueError("a local forge takes no repo or apiUrl; remove them")
        return self


class Credentials(Spec):
    github: str | None = Field(
        None,
        description="file holding the lane's GitHub token (mode 0600, read inside the lane); "
        "omitted: GH_TOKEN or GITHUB_TOKEN in the lane's environment",
    )


Argv = Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(min_length=1)]


class Hooks(Spec):
    after_create: Argv | None = Field(
        None,
        description="run in a new worktree (e.g. install dependencies); failing fails the start",
    )
    before_run: Argv | None = Field(
        None, description="run before each agent run; failing fails that run"
    )
    after_run: Argv | None = Field(
        None, description="run after each agent run, before the checks; failures are recorded"
    )
    before_remove: Argv | None = Field(
        None, description="run before a worktree is removed; failures are recorded"
    )
    timeout: Duration = Field(600.0, gt=0, description="limit for each hook")


SparsePath = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@+-][A-Za-z0-9_./@+-]*$")]


class Repo(Spec):
    name: Name
    checkout: str = Field(description="the lane's primary clone; worktrees hang off it")
    remote: str = Field("origin", description="remote that branches are pushed to")
    forge: Forge | None = Field(None, description="where pull requests live; omitted: branch only")
    pool: int = Field(
        0,
        ge=0,
        le=64,
        description="idle worktrees kept ready per base branch: a start switches a branch "
        "instead of checking out the repository",
    )
    sparse: list[SparsePath] = Field(
        default_factory=list,
        description="check out only these directories (sparse checkout, cone mode)",
    )
    hooks: Hooks = Field(default_factory=Hooks, description="commands run in the worktree")


# Groups: user, host (brackets kept for IPv6), port. Plain groups: the schema is ECMA-262 too.
SSH_HOST_PATTERN = (
    r"^ssh://([A-Za-z_][A-Za-z0-9._-]{0,31})@"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)"
    r"(?::([0-9]{1,5}))?$"
)
_SSH_HOST = re.compile(SSH_HOST_PATTERN)
_HOST_FORMAT = "'local' or ssh://USER@HOST[:PORT]"


@dataclass(frozen=True)
class SshTarget:
    """Where an SSH lane's node answers: ``ssh://USER@HOST[:PORT]``, parsed."""

    user: str
    host: str  # without brackets, also for IPv6 addresses
    port: int = 22

    @property
    def known_hosts_name(self) -> str:
        """The host as OpenSSH writes it in a known hosts file (``[host]:port`` off port 22)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" + (f":{self.port}" if self.port != 22 else "")


def parse_ssh_host(value: str) -> SshTarget:
    """``ssh://USER@HOST[:PORT]`` → ``SshTarget``; ``ValueError`` (a sentence) otherwise."""
    m = _SSH_HOST.match(value)
    if m is None:
        if not value.startswith("ssh://"):
            why = "is not a host"
        elif "@" not in value:
            why = "names no user"
        else:
            why = "is not a valid ssh:// host"
        raise ValueError(f"{value!r} {why}; expected {_HOST_FORMAT}")
    user, host, port_text = m.groups()
    port = int(port_text or 22)
    if not 1 <= port <= 65535:
        raise ValueError(f"{value!r} has port {port}; a port is 1-65535")
    return SshTarget(user=user, host=host.strip("[]"), port=port)


Host = Annotated[
    str,
    WithJsonSchema(
        {
            "anyOf": [{"const": "local"}, {"type": "string", "pattern": SSH_HOST_PATTERN}],
            "description": "local, or ssh://USER@HOST[:PORT] for a lane on another machine",
        }
    ),
]
# A path on the control side: absolute, or ~ for the reconciler's home.
ControlPath = Annotated[str, StringConstraints(pattern=r"^(~|~/.*|/.*)$")]


class SshSpec(Spec):
    identity_file: ControlPath = Field(
        "~/.config/reconciler/ssh/id_ed25519",
        description="private key the reconciler logs in with (on the reconciler's machine); "
        "`reconciler keys authorize LANE` creates it when missing",
    )
    known_hosts: ControlPath = Field(
        "~/.config/reconciler/ssh/known_hosts",
        description="the only host keys trusted for this lane (on the reconciler's machine); "
        "`reconciler keys scan LANE` adds the host's",
    )
    from_: str | None = Field(
        None,
        alias="from",
        pattern=r"^[A-Za-z0-9.:/*?!_-]+(,[A-Za-z0-9.:/*?!_-]+)*$",
        description="addresses or host patterns the key may log in from (authorized_keys "
        'from="…"), e.g. 10.0.0.5 or 10.0.0.0/24',
    )
    command: str = Field(
        "reconciler",
        pattern=r"^~?[A-Za-z0-9_./+-]+$",
        description="the reconciler on the host (a name on its PATH or a path); the forced "
        "command is `<command> node`",
    )
    connect_timeout: Duration = Field(10.0, gt=0, description="limit for the connection")
    timeout: Duration = Field(60.0, gt=0, description="limit for one batch, connection included")


class Budget(Spec):
    max_cost_usd: float | None = Field(None, gt=0, description="dollars, as the agent reports")
    max_tokens: int | None = Field(None, gt=0, description="input plus output tokens")


class LaneSpec(Spec):
    user: str | None = Field(None, description="Linux user; omitted: the reconciler's own user")
    host: Host = Field(
        "local",
        description="where the lane runs: local, or ssh://USER@HOST[:PORT] for a lane on "
        "another machine, reached over OpenSSH",
    )
    ssh: SshSpec | None = Field(
        None, description="how to reach an ssh:// host; omitted: the defaults"
    )
    max_concurrency: int = Field(1, ge=1, le=10_000, description="slots for this lane")
    workspace_root: str = Field("~/worktrees", description="worktrees and run directories")
    budget: Budget = Field(
        default_factory=Budget,
        description="what the lane's runs may spend per UTC day; no new runs once spent",
    )
    min_free_disk: ByteSize = Field(
        ByteSize(1 << 30),
        description="pre-flight blocks the lane when less is free at the workspace root "
        "(e.g. 5GiB, 500MB, or bytes)",
    )
    repos: list[Repo] = Field(min_length=1)
    env: dict[EnvName, str] = Field(default_factory=dict, description="added to the agent env")
    credentials: Credentials = Field(
        default_factory=Credentials, description="where the lane keeps its forge tokens"
    )

    @field_validator("repos")
    @classmethod
    def _unique_repos(cls, repos: list[Repo]) -> list[Repo]:
        twice = _repeated(repo.name for repo in repos)
        if twice is not None:
            raise ValueError(f"repository name {twice!r} is listed twice in this lane")
        return repos

    @field_validator("host")
    @classmethod
    def _host(cls, host: str) -> str:
        if host != "local":
            parse_ssh_host(host)
        return host

    @model_validator(mode="after")
    def _ssh_fields(self) -> LaneSpec:
        target = self.ssh_target
        if target is None:
            if self.ssh is not None:
                raise ValueError(
                    "the ssh block is only for a lane with host: ssh://USER@HOST[:PORT]"
                )
        elif self.user is not None and self.user != target.user:
            raise ValueError(
                f"spec.user {self.user!r} differs from the user {target.user!r} of host "
                f"{self.host}; an ssh lane runs as the user it logs in as"
            )
        return self

    @property
    def ssh_target(self) -> SshTarget | None:
        """``None`` for a local lane."""
        return None if self.host == "local" else parse_ssh_host(self.host)

    @property
    def ssh_options(self) -> SshSpec:
        return self.ssh or SshSpec()

    def repo(self, name: str) -> Repo | None:
        return next((r for r in self.repos if r.name == name), None)


# --------------------------------------------------------------------------------------- Agent


class Pricing(Spec):
    input: float = Field(ge=0, description="USD per million uncached input tokens")
    output: float = Field(ge=0, description="USD per million output tokens")
    cache_read: float | None = Field(
        None, ge=0, description="USD per million cache-read tokens; omitted: a tenth of input"
    )
    cache_write: float | None = Field(
        None, ge=0, description="USD per million cache-write tokens; omitted: 1.25x input"
    )


# Who commits an Agent's changes when its manifest does not say, by kind. Codex (0.171) runs
# the agent's commands with every .git read-only under its default workspace-write sandbox,
# a worktree's git directory included, so its `git commit` always fails: the reconciler
# commits for it, and the sandbox stays as it is.
DEFAULT_COMMITS: dict[object, Literal["agent", "reconciler"]] = {"codex": "reconciler"}


def _no_default(schema: dict[str, Any]) -> None:
    """A field whose default depends on another field: its schema names none."""
    schema.pop("default", None)


class AgentSpec(Spec):
    kind: Literal["claude", "codex", "aider", "gemini", "command"] = Field(description="adapter")
    command: list[str] | None = Field(
        None,
        min_length=1,
        description="argv; for kind command the whole command line ({prompt_file} is replaced "
        "by the prompt's path, otherwise the prompt arrives on stdin); for claude the binary",
    )
    args: list[str] = Field(default_factory=list, description="extra arguments")
    timeout: Duration = Field(3600.0, gt=0, description="whole-run limit")
    stall_timeout: Duration = Field(300.0, gt=0, description="no new output for this long")
    env: dict[EnvName, str] = Field(default_factory=dict)
    commits: Literal["agent", "reconciler"] = Field(
        "agent",  # never used: _default_commits fills it in per kind
        description="who commits the agent's changes: the agent itself, or the reconciler "
        "(git add -A; git commit) after each run in which the agent exited 0; omitted: "
        "reconciler for kind codex (its sandbox keeps .git read-only), agent otherwise",
        json_schema_extra=_no_default,
    )
    pricing: Pricing | None = Field(
        None,
        description="prices for estimating spend the agent does not report (codex, gemini, a "
        "run stopped mid-stream); omitted: the built-in prices of the model it names",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_commits(cls, data: Any) -> Any:
        if isinstance(data, dict) and "commits" not in data:
            return {**data, "commits": DEFAULT_COMMITS.get(data.get("kind"), "agent")}
        return data

    @model_validator(mode="after")
    def _command_needed(self) -> AgentSpec:
        if self.kind == "command" and not self.command:
            raise ValueError("an Agent of kind command needs spec.command (an argv list)")
        return self


# ---------------------------------------------------------------------------------------- Task


def _split_check(value: object) -> object:
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split check {value!r} into arguments: {exc}") from exc
    return value


Check = Annotated[
    list[str],
    BeforeValidator(_split_check),
    Field(min_length=1),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
            ],
            "description": "argv list, or a string split like a shell would (no shell runs it)",
        }
    ),
]


class Success(Spec):
    require_commits: bool = Field(True, description="the branch must be ahead of base")
    markers: list[str] = Field(
        default_factory=list, description="all must appear in the agent's final output"
    )
    checks: list[Check] = Field(
        default_factory=list, description="commands run in the worktree; all must exit 0"
    )
    check_timeout: Duration = Field(600.0, gt=0, description="limit per check")


_ITERATE_ON: tuple[Literal["checks", "reviews"], ...] = ("checks", "reviews")


class PullRequestSpec(Spec):
    title: str | None = Field(None, description="default: the task name")
    body: str | None = None
    draft: bool = False
    labels: list[str] = Field(default_factory=list)
    reviewers: list[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]+(/[A-Za-z0-9_.-]+)?$")]
    ] = Field(
        default_factory=list,
        description="GitHub users (octocat) or teams (acme/reviewers) asked to review a new PR",
    )
    iterate_on: list[Literal["checks", "reviews"]] = Field(
        default_factory=lambda: list(_ITERATE_ON),
        description="run the agent again on the PR's branch when its checks fail or a review "
        "requests changes (while iterations remain); [] to never",
    )


class TaskSpec(Spec):
    lane: Name
    repo: Name
    base: str = Field("main", min_length=1)
    agent: Name
    prompt: str | None = None
    prompt_file: str | None = Field(None, description="relative to the control repo")
    success: Success = Field(default_factory=Success)
    max_iterations: int = Field(3, ge=1, le=100)
    max_attempts: int = Field(3, ge=1, le=100)
    priority: int = 0
    depends_on: list[Name] = Field(default_factory=list)
    paused: bool = False
    pr: PullRequestSpec = Field(default_factory=PullRequestSpec)
    budget: Budget = Field(
        default_factory=Budget,
        description="what the task may spend over all its runs; no further runs once spent",
    )

    @model_validator(mode="after")
    def _one_prompt(self) -> TaskSpec:
        if (self.prompt is None) == (self.prompt_file is None):
            raise ValueError("a Task needs exactly one of spec.prompt and spec.promptFile")
        return self


# -------------------------------------------------------------------------------------- Config


class Backoff(Spec):
    base: Duration = Field(30.0, gt=0, description="delay after the first failed attempt")
    max: Duration = Field(600.0, gt=0, description="cap")


# What a notification sink can be told of. Each is decided from what a pass computes anyway (a
# task's phase and reason code, the control repo's problem), never from log text.
Transition = Literal["failed", "pr-open", "done", "budget-exhausted", "stalled", "control-broken"]
TRANSITIONS: tuple[Transition, ...] = typing.get_args(Transition)


class Notification(Spec):
    """One notification sink: where the documents go, and which transitions it gets."""

    name: Name = Field(description="names the sink in events and logs (never its URL)")
    type: Literal["webhook", "slack", "command"] = Field(
        description="webhook: POST the JSON document; slack: POST {text} to a Slack-compatible "
        "incoming webhook; command: run an argv with the JSON document on stdin"
    )
    url: str | None = Field(
        None,
        pattern=r"^https?://[^\s@]+$",
        description="webhook: where to POST (no credentials in it: use urlFile for a URL that "
        "is a secret)",
    )
    url_file: ControlPath | None = Field(
        None,
        description="webhook, slack: a file on the reconciler's host holding the URL, owned by "
        "the reconciler's user, mode 0600; read at each delivery and never shown",
    )
    command: Argv | None = Field(
        None,
        description="command: argv run as the reconciler's own user, no shell, the JSON "
        "document on stdin; exit 0 is delivered",
    )
    on: list[Transition] = Field(min_length=1, description="the transitions this sink gets")
    lanes: list[Name] = Field(
        default_factory=list, description="only tasks of these lanes; empty: every lane"
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="only tasks carrying all these labels"
    )
    timeout: Duration = Field(10.0, gt=0, le=300, description="limit for one delivery attempt")
    attempts: int = Field(5, ge=1, le=20, description="tries before a delivery counts as failed")
    retry_delay: Duration = Field(
        2.0, gt=0, le=600, description="wait after the first failed try; doubles, up to 1m"
    )

    @field_validator("on")
    @classmethod
    def _once_each(cls, on: list[Transition]) -> list[Transition]:
        if len(set(on)) != len(on):
            raise ValueError("a transition appears twice in on")
        return on

    @model_validator(mode="after")
    def _fields_of_type(self) -> Notification:
        where = self.url is not None, self.url_file is not None
        if self.type == "command":
            if not self.command:
                raise ValueError("a command sink needs command: an argv list, e.g. [notify-send]")
            if any(where):
                raise ValueError("a command sink takes no url or urlFile; remove them")
        elif self.command is not None:
            raise ValueError(f"a {self.type} sink takes no command; remove it (or type: command)")
        elif self.type == "slack" and self.url is not None:
            raise ValueError(
                "a Slack webhook URL is a secret and the control repo is no place for it: "
                "write it to a file only the reconciler's user can read (chmod 600) and name "
                "that file with urlFile"
            )
        elif where.count(True) != 1:
            raise ValueError(f"a {self.type} sink needs exactly one of url and urlFile")
        return self


class ConfigSpec(Spec):
    max_concurrency: int | None = Field(None, ge=1, description="global cap on live runs")
    branch_prefix: str = Field("agent/", pattern=r"^[A-Za-z0-9._-]+/$")
    backoff: Backoff = Field(default_factory=Backoff)
    run_retention: Duration | None = Field(
        30 * 86400.0,
        gt=0,
        description="how long the directories of settled runs (over, of an earlier generation "
        "of their task) are kept; null keeps them",
    )
    notifications: list[Notification] = Field(
        default_factory=list,
        description="sinks told of task transitions and control repo problems (`reconciler "
        "run` delivers them; docs/notifications.md)",
    )

    @field_validator("notifications")
    @classmethod
    def _unique_sinks(cls, sinks: list[Notification]) -> list[Notification]:
        twice = _repeated(sink.name for sink in sinks)
        if twice is not None:
            raise ValueError(f"the notification sink name {twice!r} is used twice")
        return sinks


# ----------------------------------------------------------------------------------- Documents


class _Document(Spec):
    api_version: Literal["reconciler/v1"]
    metadata: Metadata


class LaneDoc(_Document):
    kind: Literal["Lane"]
    spec: LaneSpec


class AgentDoc(_Document):
    kind: Literal["Agent"]
    spec: AgentSpec


class TaskDoc(_Document):
    kind: Literal["Task"]
    spec: TaskSpec


class ConfigDoc(_Document):
    kind: Literal["Config"]
    spec: ConfigSpec = Field(default_factory=ConfigSpec)


DOCUMENT_KINDS: dict[str, type[_Document]] = {
    "Lane": LaneDoc,
    "Agent": AgentDoc,
    "Task": TaskDoc,
    "Config": ConfigDoc,
}


# ------------------------------------------------------------------------------------- Desired


@dataclass(frozen=True)
class Source:
    """Where a document came from, for messages: ``path:line:col``."""

    path: str
    line: int = 1
    column: int = 1

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Task:
    """A desired task with its prompt resolved and its generation (hash of the spec)."""

    name: str
    spec: TaskSpec
    prompt: str
    generation: str
    labels: dict[str, str] = field(default_factory=dict)
    source: Source = Source("<memory>")


@dataclass(frozen=True)
class Desired:
    """Everything the control repo asks for at one revision."""

    revision: str
    config: ConfigSpec = field(default_factory=ConfigSpec)
    lanes: dict[str, LaneSpec] = field(default_factory=dict)
    agents: dict[str, AgentSpec] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    # what is valid but probably not meant (a dependsOn naming no task): validate shows them
    warnings: tuple[ManifestError, ...] = ()

    @functools.cached_property
    def by_lane(self) -> dict[str, dict[str, Task]]:
        """Each lane's tasks by name, indexed once: a pass asks for every lane's, and going
        through all tasks for each lane would cost lanes times tasks."""
        index: dict[str, dict[str, Task]] = {}
        for name, task in self.tasks.items():
            index.setdefault(task.spec.lane, {})[name] = task
        return index


def generation_of(spec: TaskSpec, prompt: str) -> str:
    """A task's generation: a short hash of its spec with the prompt text resolved."""
    data: dict[str, Any] = spec.model_dump(mode="json", by_alias=True)
    data.pop("paused", None)  # pausing and resuming continues the same convergence
    data.pop("promptFile", None)
    data["prompt"] = prompt
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def make_task(
    name: str,
    spec: TaskSpec,
    prompt: str | None = None,
    labels: dict[str, str] | None = None,
    source: Source | None = None,
) -> Task:
    text = prompt if prompt is not None else (spec.prompt or "")
    return Task(
        name=name,
        spec=spec,
        prompt=text,
        generation=generation_of(spec, text),
        labels=labels or {},
        source=source or Source("<memory>"),
    )
