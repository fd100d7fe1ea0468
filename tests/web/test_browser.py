"""The dashboard in a real browser (Debian's chromium, headless), against `reconciler run
--listen`: what a person keeping it open all day sees happen, without ever reloading."""

from __future__ import annotations

from pathlib import Path

from tests.integration.world import World
from tests.support.git import commit_all
from tests.web.browser import chromium
from tests.web.support import TOKEN, run_listening, token_file

ROW_PHASE = """
const row = document.querySelector(`tr[data-task="${arguments[0]}"]`);
return row ? row.dataset.phase : null;
"""
TASK_PHASE = "const h = document.querySelector('#task-h .phase'); return h && h.textContent"


def test_a_pushed_task_moves_through_its_phases_live_and_its_output_stays_text(
    tmp_path: Path,
) -> None:
    world = World(tmp_path).setup()
    release = world.root / "release"
    world.lane("web", slots=2)
    world.lanes["web"]["env"] = {"RELEASE_FILE": str(release)}
    world.task("calm", "web", "succeed")
    world.commit()
    world.converge()
    daemon, api = run_listening(
        world, "--interval", "1h", "--listen", "127.0.0.1:0", "--token-file", str(token_file(world))
    )
    base = f"http://{api.host}:{api.port}"
    try:
        with chromium(tmp_path) as browser:
            browser.open(f"{base}/")
            browser.wait(
                "return document.querySelector('#live.on') !== null", "the stream to connect"
            )
            assert browser.wait(ROW_PHASE, "the converged task's row", "calm") == "pr-open"

            # An operator pushes a task; the push hook asks for a pass. The page, never
            # reloaded, shows it appear and start.
            browser.js("window.sameDocument = true")
            world.task("hostile", "web", "hostile-until-released")
            world.commit("a task whose agent prints markup")
            assert api.request("POST", "/api/v1/refresh", TOKEN).status == 200
            browser.wait(
                "const r = document.querySelector('tr[data-task=hostile]'); "
                "return r && r.dataset.phase === 'running'",
                "the pushed task to show up running",
            )
            browser.screenshot("tasks")

            # Its page: the live tail and the diff render what the agent printed and wrote as
            # text; none of it runs.
            browser.js("document.querySelector('tr[data-task=hostile] a').click()")
            tail = browser.wait(
                "const l = document.getElementById('log'); "
                "return l && l.textContent.includes('working') && l.textContent",
                "the live tail of the running agent",
            )
            assert '<script>document.body.dataset.pwned = "script"</script>' in tail
            assert '<img src=x onerror="document.body.dataset.pwned = 1">' in tail
            diff = browser.wait(
                "const d = document.getElementById('diff'); "
                "return d && d.textContent.includes('page.html') && d.textContent",
                "the diff of the agent's worktree",
            )
            assert '+<script>document.body.dataset.pwned = "diff"</script>' in diff
            browser.screenshot("task")

            # The agent finishes: the page follows the task to its PR, still without a reload.
            release.write_text("go\n", encoding="utf-8")
            browser.wait(f"{TASK_PHASE} === 'pr-open'", "the task page to show the PR")
            browser.wait(
                "return document.querySelector('#pr a') !== null", "the PR and its feedback"
            )
            assert browser.js("return window.sameDocument") is True
            page = browser.js(  # what the page itself wrote, not the agent's output or diff
                "const m = document.querySelector('main').cloneNode(true); "
                "m.querySelectorAll('pre').forEach((p) => p.remove()); return m.textContent"
            )
            assert "null" not in page and "undefined" not in page and "NaN" not in page
            assert browser.js("return document.body.dataset.pwned") is None
            assert (
                browser.js("return document.querySelectorAll('main script, main img').length") == 0
            )

            browser.js("document.querySelector('nav a[data-view=lanes]').click()")
            browser.wait("return document.querySelector('.card svg.chart') !== null", "lanes")
            browser.screenshot("lanes")
            browser.js("document.querySelector('nav a[data-view=plan]').click()")
            browser.wait("return document.body.innerText.includes('Actions (')", "the next plan")
            assert "null" not in browser.text("main") and "undefined" not in browser.text("main")
            browser.screenshot("plan")
            browser.js("document.querySelector('nav a[data-view=events]').click()")
            browser.wait(
                "return document.querySelectorAll('#events li').length > 3", "the event log"
            )
            browser.screenshot("events")

            # A broken push: a banner with the error, the last good state still shown.
            browser.js("document.querySelector('nav a[data-view=tasks]').click()")
            browser.wait(ROW_PHASE, "the task list again", "hostile")
            (world.control / "manifests" / "broken.yaml").write_text(
                "apiVersion: reconciler/v1\nkind: Task\nmetadata: {name: broken\n", "utf-8"
            )
            commit_all(world.control, "a broken manifest")
            assert api.request("POST", "/api/v1/refresh", TOKEN).status == 200
            banner = browser.wait(
                "const b = document.getElementById('banner'); return !b.hidden && b.textContent",
                "the broken-control banner",
            )
            assert "broken.yaml" in banner
            assert browser.js(ROW_PHASE, "calm") == "pr-open"  # the last good state stays
            assert browser.js("return window.sameDocument") is True
            browser.screenshot("broken")

            # A phone's width: the same page, fewer columns.
            browser.screenshot("phone", width=390, height=844)
            assert (
                browser.js("return document.querySelector('th.hide-narrow').offsetParent") is None
            )
    finally:
        daemon.stop()
        world.kill_agents()
