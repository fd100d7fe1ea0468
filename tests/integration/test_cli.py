"""The command-line contract: exit codes, JSON shapes, saved plans, the lock, bad input."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from reconciler.report import DescribeReport
from reconciler.state import StateLock
from tests.integration.world import World
from tests.support.git import git
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def small_world(world: World) -> World:
    world.lane("web")
    world.task("a", "web", "succeed")
    world.task("b", "web", "succeed", dependsOn=["a"])
    world.commit()
    return world


def test_plan_json_shape_and_detailed_exitcode(world: World) -> None:
    small_world(world)
    proc = world.cli("plan", "--json", "--detailed-exitcode")
    assert proc.returncode == 2
    data = json.loads(proc.stdout)
    revision = (world.control / ".git" / "refs" / "heads" / "main").read_text().strip()
    assert data["revision"] == revision
    assert data["serial"] == 0
    assert data["actions"] == [
        {
            "action": "start",
            "task": "a",
            "lane": "web",
            "reason": "new task (attempt 1)",
            "attempt": 1,
            "iteration": 1,
            "generation": data["actions"][0]["generation"],
        }
    ]
    assert data["blocked"] == [
        {"task": "b", "reason": "waiting for a to be done", "reasonCode": "DependencyPending"}
    ]
    human = world.cli("plan")
    assert human.returncode == 0
    assert "  + start  a  [web]  new task (attempt 1)" in human.stdout
    assert "Plan: 1 to start." in human.stdout
    assert "\033[" not in human.stdout  # no colour when not on a terminal


def test_saved_plan_applies_once_and_is_refused_when_stale(world: World, tmp_path: Path) -> None:
    small_world(world)
    saved = tmp_path / "plan.json"
    assert world.cli("plan", "--out", str(saved)).returncode == 0
    applied = world.cli("apply", str(saved))
    assert applied.returncode == 0, applied.stderr
    assert "Apply complete! 1 applied, 0 failed." in applied.stdout
    again = world.cli("apply", str(saved))
    assert again.returncode == 1
    assert "the saved plan is stale" in again.stderr
    assert "Traceback" not in again.stderr
    bogus = tmp_path / "bogus.json"
    bogus.write_text("{}")
    assert "not a plan saved by" in world.cli("apply", str(bogus)).stderr


def test_apply_asks_for_yes_when_not_on_a_terminal(world: World) -> None:
    small_world(world)
    proc = world.cli("apply")
    assert proc.returncode == 1
    assert "apply needs --yes when not run from a terminal" in proc.stderr
    assert world.live_agents() == {}


def test_a_held_lock_exits_75_with_the_holder(world: World) -> None:
    small_world(world)
    world.state.mkdir()
    with StateLock(world.state):
        started = time.time()
        proc = world.cli("apply", "--yes", "--lock-timeout", "1s")
        waited = time.time() - started
    assert proc.returncode == 75
    assert "holds the state lock" in proc.stderr
    assert waited >= 1.0
    assert world.live_agents() == {}


def test_status_json_shape_and_describe_and_logs(world: World) -> None:
    small_world(world)
    world.converge()
    status = json.loads(world.cli("status", "--json").stdout)
    assert set(status) >= {"revision", "tasks", "requeue"}
    assert status["requeue"] is None  # converged: nothing is due by time
    a = next(t for t in status["tasks"] if t["name"] == "a")
    assert {
        k: a[k] for k in ("name", "phase", "lane", "repo", "branch", "attempt", "iteration")
    } == {
        "name": "a",
        "phase": "pr-open",
        "lane": "web",
        "repo": "web-repo",
        "branch": "agent/a",
        "attempt": 1,
        "iteration": 1,
    }
    assert a["pr"]["number"] == 1 and a["pr"]["state"] == "open"
    assert a["pr"]["url"].endswith("#pull/1")
    assert a["reasonCode"] == "AwaitingReview"
    assert [(c["type"], c["status"]) for c in a["conditions"]] == [
        ("Done", "False"),
        ("Progressing", "False"),
        ("Blocked", "False"),
        ("Degraded", "False"),
        ("PullRequest", "True"),
    ]
    # the lanes' spend today is the plan's, the figure their daily budgets are held to
    spent_today = sum(t["costUsd"] for t in status["tasks"] if t["lane"] == "web")
    assert status["lanes"]["web"] == {
        "todayUsd": spent_today,
        "todayTokens": sum(t["tokens"] for t in status["tasks"] if t["lane"] == "web"),
        "budgetUsd": None,
        "budgetTokens": None,
    }
    described = json.loads(world.cli("describe", "a", "--json").stdout)
    assert [e["kind"] for e in described["events"]][:3] == ["start", "workspace", "spawned"]
    assert described["runs"][0]["outcome"] == "succeeded"
    assert described["status"] == a  # the task's entry of status --json
    # the documented shape (schemas/describe.json): it reads back into its model unchanged
    assert DescribeReport.model_validate(described).to_json() == described
    text = world.cli("describe", "a").stdout
    assert text.startswith(
        "Task a\n  phase:      pr-open\n  lane/repo:  web/web-repo, branch agent/a\n"
    )
    assert "\nRUN  STARTED" in text and "\nEvents:\n" in text
    logs = world.cli("logs", "a")
    assert logs.returncode == 0 and logs.stdout == "DONE\n"
    assert world.cli("logs", "a", "--run", "1.1", "-f").stdout == "DONE\n"
    missing = world.cli("describe", "nope")
    assert missing.returncode == 1 and "no task named nope" in missing.stderr


def test_broken_manifests_plan_nothing_and_prune_nothing(world: World) -> None:
    small_world(world)
    world.converge()
    before = world.prs("web-repo")
    (world.control / "manifests" / "tasks" / "a.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: Task\nmetadata: {name: a}\nspec:\n  lane: web\n  maxIteration: 2\n"
    )
    validate = world.cli("validate")
    assert validate.returncode == 1
    assert "manifests/tasks/a.yaml:6:3: unknown field 'maxIteration'" in validate.stderr
    assert "Traceback" not in validate.stderr
    from tests.support.git import git

    git(world.control, "commit", "-qam", "break a")
    applied = world.cli("apply", "--yes")
    assert applied.returncode == 1
    assert "nothing was planned or applied" in applied.stderr
    for command in (["plan"], ["status"]):  # read commands: the last good revision, exit 3
        proc = world.cli(*command)
        assert proc.returncode == 3, command
        assert "manifests/tasks/a.yaml:6:3: unknown field 'maxIteration'" in proc.stderr
    assert world.prs("web-repo") == before
    assert any(p.endswith("/a") for p in world.worktrees("web-repo"))


def test_doctor_and_blocked_tasks_name_the_missing_checkout(world: World) -> None:
    small_world(world)
    shutil.rmtree(world.home / "src" / "web-repo")
    doctor = world.cli("doctor")
    assert doctor.returncode == 1
    assert "FAIL" in doctor.stdout
    plan = world.plan_json()
    assert plan["actions"] == []
    assert "requeue" not in plan  # blocked on a missing checkout: no time will change that
    reasons = {b["task"]: b["reason"] for b in plan["blocked"]}
    assert "web-repo" in reasons["a"]


def test_validate_counts_and_schema_matches_the_committed_files(
    world: World, tmp_path: Path
) -> None:
    small_world(world)
    proc = world.cli("validate")
    assert proc.returncode == 0
    assert proc.stdout.startswith("2 tasks, 1 lane, ")
    assert proc.stderr == ""
    # a dependsOn naming no task is valid, and said at validate rather than blocking silently
    world.task("c", "web", "succeed", dependsOn=["aa"])
    world.commit()
    proc = world.cli("validate")
    assert proc.returncode == 0 and proc.stdout.startswith("3 tasks, 1 lane, ")
    assert "warning: manifests/" in proc.stderr
    assert "task 'c' depends on 'aa', which is not a task" in proc.stderr
    assert "did you mean 'a'?" in proc.stderr
    out = tmp_path / "schemas"
    assert world.cli("schema", "--out", str(out)).returncode == 0
    for path in (ROOT / "schemas").glob("*.json"):
        assert (out / path.name).read_text() == path.read_text()


def test_run_loops_until_sigterm_and_holds_the_lock(world: World) -> None:
    import signal
    import subprocess
    import sys

    small_world(world)
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run", "--interval", "200ms"],
        env=world.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: world.status().get("a", {}).get("phase") == "pr-open",
            "a pr-open, by `run`",
            timeout=30,
            every=0.2,
        )
        cron = world.cli("apply", "--yes")
        assert cron.returncode == 75
        assert "reconciler run" in cron.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, errors = proc.communicate(timeout=20)
    assert proc.returncode == 0, errors
    assert "Traceback" not in errors
    assert "to start" in out


def test_usage_errors_exit_1_with_a_sentence(world: World) -> None:
    proc = world.cli("plan", "--no-such-flag")
    assert proc.returncode == 1
    assert "unrecognized arguments: --no-such-flag" in proc.stderr
    assert world.cli("apply", "--lock-timeout", "soon").returncode == 1


def test_read_commands_show_the_last_good_revision_when_head_is_broken(world: World) -> None:
    small_world(world)
    # before any pass there is no good revision to fall back on: the errors, exit 1
    (world.control / "manifests" / "broken.yaml").write_text("kind: Task\nmetadata: {name: [x\n")
    git(world.control, "add", "-A")
    git(world.control, "commit", "-qm", "broken")
    first = world.cli("status", "--json")
    assert first.returncode == 1 and first.stdout == "" and "broken.yaml" in first.stderr
    (world.control / "manifests" / "broken.yaml").unlink()
    good = world.commit("fixed")
    assert world.cli("apply", "--yes").returncode == 0
    (world.control / "manifests" / "broken.yaml").write_text("kind: Task\nmetadata: {name: [x\n")
    git(world.control, "add", "-A")
    git(world.control, "commit", "-qm", "broken again")
    status = world.cli("status", "--json")
    assert status.returncode == 3, status.stderr
    data = json.loads(status.stdout)
    assert data["revision"] == good
    assert {t["name"] for t in data["tasks"]} == {"a", "b"}
    assert data["controlProblem"].startswith("1 manifest error in 1 file at ")
    assert f"showing the last good revision {good[:12]}" in data["controlProblem"]
    (error,) = data["manifestErrors"]
    assert error["path"] == "manifests/broken.yaml" and error["line"] == 3
    text = world.cli("status")
    assert text.returncode == 3 and "manifests/broken.yaml:3:" in text.stderr
    assert "a " in text.stdout and "control:" not in text.stderr  # said once, not twice
    plan = world.cli("plan", "--json", "--detailed-exitcode")
    assert plan.returncode == 3 and json.loads(plan.stdout)["revision"] == good
    described = world.cli("describe", "a", "--json")
    assert described.returncode == 3 and json.loads(described.stdout)["name"] == "a"
    # writing commands still refuse broken manifests: nothing is applied
    applied = world.cli("apply", "--yes")
    assert applied.returncode == 1 and "nothing was planned or applied" in applied.stderr


def test_shell_completion_offers_commands_options_and_the_task_names(
    world: World, tmp_path: Path
) -> None:
    small_world(world)
    for shell in ("bash", "zsh", "fish"):
        script = world.cli("completion", shell)
        assert script.returncode == 0 and "_ARGCOMPLETE" in script.stdout, shell

    def offered(line: str) -> set[str]:
        out = tmp_path / "completions"
        proc = world.cli(
            _ARGCOMPLETE="1",
            _ARGCOMPLETE_SHELL="bash",
            ARGCOMPLETE_USE_TEMPFILES="1",
            _ARGCOMPLETE_STDOUT_FILENAME=str(out),
            COMP_LINE=line,
            COMP_POINT=str(len(line)),
        )
        assert proc.returncode == 0, proc.stderr
        return {word.strip() for word in out.read_text().split("\v")}  # a sole match: "b "

    assert {"status", "describe", "completion"} <= offered("reconciler ")
    assert offered("reconciler describe ") == {"a", "b"}
    assert offered("reconciler logs b") == {"b"}
    assert {"--output", "--watch"} <= offered("reconciler status --")


def test_output_formats_as_kubectl_users_expect_them(world: World) -> None:
    from ruamel.yaml import YAML

    small_world(world)
    yaml = YAML(typ="safe", pure=True)
    for command in (["status"], ["plan"], ["describe", "a"]):
        as_json = world.cli(*command, "-o", "json")
        as_yaml = world.cli(*command, "-o", "yaml")
        assert as_json.returncode == as_yaml.returncode == 0, command
        data = json.loads(as_json.stdout)
        data.pop("now", None)
        loaded = yaml.load(as_yaml.stdout)
        assert loaded.keys() == data.keys(), command
        assert world.cli(*command, "--json").stdout == as_json.stdout  # --json is -o json
    wide = world.cli("status", "-o", "wide")
    header = wide.stdout.splitlines()[0].split()
    assert header == [
        "TASK", "PHASE", "LANE", "RUN", "PR", "COST", "AGE",
        "REPO", "BRANCH", "TOKENS", "CODE", "NEXT", "REASON",
    ]  # fmt: skip
    assert "DependencyPending" in wide.stdout
    bad = world.cli("status", "-o", "xml")
    assert bad.returncode == 1 and "invalid choice: 'xml'" in bad.stderr


def test_status_watch_redraws_until_interrupted(world: World) -> None:
    import signal
    import subprocess
    import sys

    small_world(world)
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "status", "--watch", "100ms"],
        env=world.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    frames = 0
    for line in proc.stdout:
        frames += ": reconciler status" in line
        assert line.startswith("Every 100ms: ") or ": reconciler status" not in line
        if frames == 2:
            break
    proc.send_signal(signal.SIGINT)
    rest, errors = proc.communicate(timeout=30)
    assert proc.returncode == 0, errors
    assert frames == 2 and "\x1b" not in rest  # not a terminal: frames one after another


def test_apply_on_a_terminal_shows_each_action_as_it_is_carried_out(world: World) -> None:
    import os
    import subprocess
    import sys

    small_world(world)
    main, follower = os.openpty()
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler", "apply", "--yes"],
        env={**world.env(), "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=follower,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    os.close(follower)
    said = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the terminal's other end is closed: all of it was read
            break
        if not chunk:
            break
        said += chunk
    os.close(main)
    assert proc.returncode == 0
    assert "[1] start a: run 1.1 started" in said.decode()
    # not on a terminal: only the summary, as before
    quiet = world.cli("apply", "--yes")
    assert quiet.returncode == 0 and quiet.stderr == ""
