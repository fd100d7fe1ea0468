// The reconciler dashboard: renders the API's documents and follows /api/v1/stream.
//
// Rules this file keeps: every value from the API is written with textContent or as an
// attribute through el() -- never parsed as HTML -- so what an agent printed shows as text;
// no request leaves this origin; the token (needed on a non-loopback listener) lives in this
// tab's sessionStorage and travels only in the Authorization header.
"use strict";

const TOKEN_KEY = "reconciler-token";
const PAGE = 100;
const PHASES = ["pending", "blocked", "queued", "running", "backoff", "pr-open", "done",
  "failed", "paused", "closing", "unknown"];

const app = {
  token: sessionStorage.getItem(TOKEN_KEY),
  summary: null,
  view: null,        // the view on screen: {name, refresh(), onEvent(ev)}
  refreshing: false,
  again: false,
  lastEvent: null,
};

// ------------------------------------------------------------------------------ DOM helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Replace a node's children; null, undefined and false are left out (replaceChildren would
// write them as text).
function put(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return append(node, children);
}

function link(href, ...children) {
  return el("a", { href, "data-link": true }, ...children);
}

function phase(name) {
  return el("span", { class: `phase phase-${name}` }, name);
}

function money(usd) {
  return usd ? `$${usd.toFixed(usd < 1 ? 3 : 2)}` : "–";
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Date.now() / 1000 - seconds);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

function clock(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "–";
}

function span(start, end) {
  if (!start) return "–";
  const s = Math.round((end || Date.now() / 1000) - start);
  return s < 120 ? `${s}s` : `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
}

function table(headers, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map(([text, cls]) => el("th", { class: cls, scope: "col" }, text)))),
    el("tbody", {}, rows));
}

// ------------------------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path) {
  const headers = { Accept: "application/json" };
  if (app.token) headers.Authorization = `Bearer ${app.token}`;
  const response = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (response.status === 401) {
    showLogin();
    throw new ApiError(401, "a token is needed");
  }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : response.statusText;
    throw new ApiError(response.status, message);
  }
  return body;
}

function showLogin() {
  const form = document.getElementById("login");
  form.hidden = false;
  document.getElementById("token").focus();
}

document.getElementById("login").addEventListener("submit", (e) => {
  e.preventDefault();
  app.token = document.getElementById("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, app.token);
  document.getElementById("token").value = "";
  e.target.hidden = true;
  connect();
  route();
});

// ------------------------------------------------------------------------ header and banner

function drawSummary(summary) {
  app.summary = summary;
  const rev = document.getElementById("revision");
  rev.textContent = summary.revision ? summary.revision.slice(0, 12) : "";
  rev.title = `the control revision shown: ${summary.revision}`;
  const banner = document.getElementById("banner");
  put(banner);
  if (summary.controlProblem) {
    banner.append(el("strong", {}, "The control repo has a problem: "), summary.controlProblem);
    if (summary.manifestErrors.length) {
      banner.append(el("ul", {}, summary.manifestErrors.map((e) =>
        el("li", {}, el("code", {}, `${e.path}:${e.line}:${e.column}`), ` ${e.message}`,
          e.hint ? el("span", { class: "muted" }, ` (${e.hint})`) : null))));
    }
    banner.append(el("div", { class: "muted" }, "What is shown is the last good revision, the one being reconciled."));
  }
  banner.hidden = !summary.controlProblem;
}

// ------------------------------------------------------------------------------ task list

function taskQuery() {
  const q = new URLSearchParams(location.search);
  const out = new URLSearchParams();
  for (const key of ["lane", "phase", "label"]) if (q.get(key)) out.set(key, q.get(key));
  return out;
}

function setQuery(key, value) {
  const q = taskQuery();
  if (value) q.set(key, value); else q.delete(key);
  const text = q.toString();
  history.replaceState(null, "", text ? `/?${text}` : "/");
  app.pages = [""];
  route();
}

function tasksView() {
  const root = el("section", { "aria-labelledby": "tasks-h" });
  const q = taskQuery();
  app.pages = app.pages || [""];
  let after = app.pages[app.pages.length - 1];

  const chips = el("div", { class: "chips", role: "group", "aria-label": "phases" });
  const laneSelect = el("select", { id: "f-lane", onchange: (e) => setQuery("lane", e.target.value) },
    el("option", { value: "" }, "every lane"));
  const phaseSelect = el("select", { id: "f-phase", onchange: (e) => setQuery("phase", e.target.value) },
    el("option", { value: "" }, "every phase"), PHASES.map((p) => el("option", { value: p, selected: q.get("phase") === p }, p)));
  const label = el("input", { id: "f-label", type: "search", placeholder: "team=web", value: q.get("label") || "",
    onchange: (e) => setQuery("label", e.target.value.trim()) });
  const filters = el("div", { class: "filters" },
    el("label", { for: "f-lane" }, "Lane", laneSelect),
    el("label", { for: "f-phase" }, "Phase", phaseSelect),
    el("label", { for: "f-label" }, "Label", label));
  const body = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  const pager = el("div", { class: "pager" });
  root.append(el("h1", { id: "tasks-h" }, "Tasks"), chips, filters, body, pager);

  function drawChips(summary) {
    put(chips, ...PHASES.filter((p) => summary.phases[p]).map((p) =>
      el("button", { class: "chip", type: "button", "aria-pressed": q.get("phase") === p ? "true" : "false",
        onclick: () => setQuery("phase", q.get("phase") === p ? "" : p) },
        `${p} ${summary.phases[p]}`)));
    put(laneSelect, el("option", { value: "" }, "every lane"),
      summary.lanes.map((l) => el("option", { value: l, selected: q.get("lane") === l }, l)));
  }

  async function refresh() {
    const params = taskQuery();
    params.set("limit", String(PAGE));
    if (after) params.set("after", after);
    const [summary, page] = await Promise.all([api("/api/v1/summary"), api(`/api/v1/tasks?${params}`)]);
    drawSummary(summary);
    drawChips(summary);
    const focused = document.activeElement && document.activeElement.dataset.task;
    const rows = page.tasks.map((t) => el("tr", { tabindex: 0, "data-task": t.name, "data-phase": t.phase },
      el("td", {}, link(`/tasks/${encodeURIComponent(t.name)}`, t.name)),
      el("td", {}, phase(t.phase)),
      el("td", {}, t.lane),
      el("td", { class: "num" }, t.attempt ? `${t.attempt}.${t.iteration}` : "–"),
      el("td", { class: "num hide-narrow" }, t.attempt),
      el("td", { class: "num hide-narrow" }, t.iteration),
      el("td", {}, t.pr ? el("a", { href: t.pr.url, rel: "noreferrer", target: "_blank" }, `#${t.pr.number}`) : "–"),
      el("td", { class: "num hide-narrow" }, money(t.costUsd)),
      el("td", { class: "num hide-narrow", title: clock(t.firstSeen) }, ago(t.firstSeen)),
      el("td", { class: "reason" }, t.reason)));
    put(body, page.tasks.length
      ? table([["Task"], ["Phase"], ["Lane"], ["Run", "num"], ["Attempts", "num hide-narrow"],
        ["Iteration", "num hide-narrow"], ["PR"], ["Cost", "num hide-narrow"], ["Age", "num hide-narrow"],
        ["Reason"]], rows)
      : el("p", { class: "muted" }, page.total ? "No task on this page." : "No task matches."));
    const first = app.pages.length === 1;
    put(pager,
      el("button", { type: "button", disabled: first, onclick: () => { app.pages.pop(); route(); } }, "← Previous"),
      el("span", { class: "muted" }, `${page.total} task${page.total === 1 ? "" : "s"}`),
      el("button", { type: "button", disabled: !page.next, onclick: () => { app.pages.push(page.next); route(); } }, "Next →"));
    if (focused) {
      const again = body.querySelector(`tr[data-task="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }
  return { name: "tasks", root, refresh };
}

// ------------------------------------------------------------------------------ one task

function taskView(name) {
  const root = el("section", { "aria-labelledby": "task-h" });
  const head = el("div", {}, el("h1", { id: "task-h" }, name));
  const conditions = el("div");
  const runsBox = el("div");
  const runPane = el("div");
  const diffBox = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  const prBox = el("div", { id: "pr" }, el("p", { class: "muted" }, "No pull request yet."));
  const timeline = el("ol", { class: "timeline" });
  root.append(head,
    el("h2", {}, "Conditions"), conditions,
    el("h2", {}, "Runs"), runsBox, runPane,
    el("h2", {}, "Changes against the base"), diffBox,
    el("h2", {}, "Pull request and feedback"), prBox,
    el("h2", {}, "Timeline"), timeline);

  const run = { key: null, file: "output", offset: 0, ended: true, pre: null, newest: null };
  let diffAt = 0;
  let prAt = 0;
  let working = false;  // an agent runs: its changes are read again every few seconds
  let lastId = 0;

  function drawHead(doc) {
    const s = doc.status;
    const pr = s && s.pr;
    put(head,
      el("h1", { id: "task-h" }, name, s ? phase(s.phase) : phase("removed")),
      s && s.reason ? el("p", { class: "reason", id: "reason" }, s.reason) : null,
      el("div", { class: "grid" },
        s ? [
          el("div", {}, el("b", {}, "Lane"), s.lane),
          el("div", {}, el("b", {}, "Repository"), s.repo),
          el("div", {}, el("b", {}, "Branch"), el("code", {}, s.branch)),
          el("div", {}, el("b", {}, "Run"), s.attempt ? `${s.attempt}.${s.iteration}` : "none yet"),
          el("div", {}, el("b", {}, "Cost"), `${money(s.costUsd)} · ${s.tokens} tokens`),
          el("div", {}, el("b", {}, "Age"), ago(s.firstSeen)),
          el("div", {}, el("b", {}, "Pull request"), pr
            ? [el("a", { href: pr.url, rel: "noreferrer", target: "_blank" }, `#${pr.number}`), ` ${pr.state}`,
              pr.mergeable === false ? el("span", { class: "bad" }, " · conflicts") : null,
              pr.conflicts.length ? ` (${pr.conflicts.join(", ")})` : null,
              pr.behind ? el("span", { class: "warn" }, " · behind its base") : null]
            : "none"),
        ] : [],
        el("div", {}, el("b", {}, "Defined in"), doc.source ? el("code", {}, doc.source) : "not in the manifests")));
    put(conditions, s ? table([["Type"], ["Status"], ["Reason"], ["Message"]],
      s.conditions.map((c) => el("tr", {},
        el("td", {}, c.type),
        el("td", { class: c.status === "True" ? (c.type === "Degraded" || c.type === "Blocked" ? "bad" : "ok") : "muted" }, c.status),
        el("td", {}, el("code", {}, c.reason)),
        el("td", {}, c.message)))) : el("p", { class: "muted" }, "Not in the manifests any more."));
  }

  function drawRuns(runs) {
    if (!runs.length) {
      put(runsBox, el("p", { class: "muted" }, "No run yet."));
      return;
    }
    run.newest = `${runs[runs.length - 1].attempt}.${runs[runs.length - 1].iteration}`;
    if (!run.key) run.key = run.newest;
    put(runsBox, table(
      [["Run"], ["Started"], ["Took", "num"], ["Exit", "num"], ["Outcome"], ["Checks failed"], ["Cost", "num"],
        ["Turns", "num hide-narrow"], ["Tools", "num hide-narrow"]],
      runs.slice().reverse().map((r) => {
        const key = `${r.attempt}.${r.iteration}`;
        const outcome = r.outcome || r.mark || (r.endedAt ? "ended" : "running");
        return el("tr", { tabindex: 0, class: key === run.key ? "sel" : "", "data-run": key,
          onclick: () => pick(key), onkeydown: (e) => { if (e.key === "Enter") pick(key); } },
        el("td", {}, el("button", { type: "button", class: "chip", "aria-pressed": key === run.key ? "true" : "false" }, key)),
        el("td", {}, clock(r.startedAt)),
        el("td", { class: "num" }, span(r.startedAt, r.endedAt)),
        el("td", { class: "num" }, r.exitCode === null ? (r.signal ? `signal ${r.signal}` : "–") : r.exitCode),
        el("td", {}, phase(outcome)),
        el("td", {}, r.failures.length ? el("ul", {}, r.failures.map((f) => el("li", {}, f))) : "–"),
        el("td", { class: "num" }, money(r.costUsd)),
        el("td", { class: "num hide-narrow" }, r.turns ?? "–"),
        el("td", { class: "num hide-narrow" }, r.toolCalls ?? "–"));
      })));
  }

  function pick(key, file) {
    run.key = key;
    run.file = file || "output";
    run.offset = 0;
    run.ended = false;
    for (const row of runsBox.querySelectorAll("tr[data-run]")) {
      row.classList.toggle("sel", row.dataset.run === key);
    }
    const tabs = el("div", { class: "tabs", role: "tablist", "aria-label": `run ${key}` },
      [["output", "Agent output"], ["prompt", "Prompt"], ["checks", "Checks"]].map(([f, text]) =>
        el("button", { type: "button", role: "tab", "aria-selected": f === run.file ? "true" : "false",
          onclick: () => pick(key, f) }, text)));
    run.pre = el("pre", { class: "log", id: "log", tabindex: 0, "aria-label": `run ${key} ${run.file}` });
    put(runPane, el("h2", {}, `Run ${key}`, key === run.newest ? el("span", { class: "muted" }, " (newest)") : null), tabs, run.pre);
    tail();
  }

  async function tail() {
    if (!run.pre || run.ended) return;
    const pre = run.pre;
    const params = new URLSearchParams({ run: run.key, file: run.file, offset: String(run.offset) });
    let piece;
    try {
      piece = await api(`/api/v1/tasks/${encodeURIComponent(name)}/log?${params}`);
    } catch (e) {
      pre.textContent = `The ${run.file} could not be read: ${e.message}`;
      run.ended = true;
      return;
    }
    if (pre !== run.pre) return;  // another run or file was picked meanwhile
    const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
    if (piece.data) pre.append(document.createTextNode(piece.data));
    if (!pre.textContent && piece.ended) pre.textContent = `(no ${run.file})`;
    if (atBottom) pre.scrollTop = pre.scrollHeight;
    run.offset = piece.offset;
    run.ended = piece.ended || run.file === "prompt";
    if (piece.data && !run.ended) tail();  // more than one piece is waiting
  }

  async function drawDiff() {
    diffAt = Date.now();
    let change;
    try {
      change = await api(`/api/v1/tasks/${encodeURIComponent(name)}/diff`);
    } catch (e) {
      put(diffBox, el("p", { class: "error" }, `The changes could not be read: ${e.message}`));
      return;
    }
    const what = { worktree: "in the agent's worktree (committed and not yet committed)",
      branch: "on the branch as committed", none: "" }[change.source];
    const lines = change.diff ? change.diff.split("\n") : [];
    const pre = el("pre", { class: "diff", id: "diff", tabindex: 0 }, lines.map((line) => {
      let cls = "";
      if (line.startsWith("diff --git")) cls = "d-file";
      else if (line.startsWith("@@")) cls = "d-hunk";
      else if (line.startsWith("+") && !line.startsWith("+++")) cls = "d-add";
      else if (line.startsWith("-") && !line.startsWith("---")) cls = "d-del";
      return el("span", { class: cls }, line || " ");
    }));
    put(diffBox,
      change.source === "none"
        ? el("p", { class: "muted" }, "Nothing to compare yet: no branch or worktree.")
        : el("p", { class: "muted" }, `Against ${change.base ? change.base.slice(0, 12) : "?"}, ${what}.`,
          change.truncated ? el("strong", {}, " Cut at 1 MiB.") : null),
      lines.length ? pre : (change.source === "none" ? null : el("p", { class: "muted" }, "No changes to tracked files.")),
      change.untracked.length ? el("p", { class: "muted" }, "New files not added yet (shown above as new): ", change.untracked.join(", ")) : null);
  }

  async function drawPull() {
    prAt = Date.now();
    let shown;
    try {
      shown = await api(`/api/v1/tasks/${encodeURIComponent(name)}/pr`);
    } catch (e) {
      put(prBox, el("p", { class: "error" }, `The pull request could not be read: ${e.message}`));
      return;
    }
    const pr = shown.pr;
    put(prBox,
      el("p", {}, el("a", { href: pr.url, rel: "noreferrer", target: "_blank" }, `#${pr.number} ${pr.title}`),
        ` · ${pr.state} · ${pr.head} into ${pr.base}`,
        pr.mergeable === false ? el("span", { class: "bad" }, " · conflicts") : null),
      shown.body ? el("pre", { class: "log" }, shown.body) : null,
      shown.comments.length
        ? el("ol", { class: "timeline" }, shown.comments.map((c) => el("li", {},
          el("span", { class: "muted" }, `${clock(c.at)} ${c.author || "?"}`), el("pre", { class: "log" }, c.body))))
        : el("p", { class: "muted" }, "No comments or reviews."));
  }

  function drawEvent(ev) {
    if (ev.id <= lastId) return;
    lastId = ev.id;
    timeline.append(el("li", { class: `k-${ev.kind}` },
      el("span", { class: "muted", title: clock(ev.at) }, new Date(ev.at * 1000).toLocaleTimeString()), " ",
      el("code", {}, ev.kind), " ", ev.message));
  }

  async function refresh() {
    const [summary, doc] = await Promise.all([api("/api/v1/summary"), api(`/api/v1/tasks/${encodeURIComponent(name)}`)]);
    drawSummary(summary);
    drawHead(doc);
    drawRuns(doc.runs);
    working = Boolean(doc.status && doc.status.phase === "running");
    if (!run.pre && run.key) pick(run.key);
    else if (run.key === run.newest) { run.ended = false; tail(); }
    if (!lastId) doc.events.forEach(drawEvent);
    if (Date.now() - diffAt > 3000) drawDiff();
    if (doc.status && doc.status.pr && Date.now() - prAt > 5000) drawPull();
  }

  function onEvent(ev) {
    if (ev.task === name) drawEvent(ev);
  }

  // while the agent works, its output is followed every second and its changes every few
  const timer = setInterval(() => {
    if (!run.ended) tail();
    if (working && Date.now() - diffAt > 4000) drawDiff();
  }, 1000);
  return { name: "task", root, refresh, onEvent, stop: () => clearInterval(timer) };
}

// ------------------------------------------------------------------------------------ lanes

function chart(byHour, budget) {
  const width = 300, height = 110, left = 34, bottom = 16;
  const top = Math.max(budget || 0, byHour.length ? byHour[byHour.length - 1] : 0, 0.01);
  const x = (h) => left + (h / 24) * (width - left - 4);
  const y = (usd) => height - bottom - (usd / top) * (height - bottom - 8);
  const points = [[x(0), y(0)], ...byHour.map((usd, h) => [x(h + 1), y(usd)])];
  const parts = [
    svg("line", { class: "axis", x1: left, y1: height - bottom, x2: width - 4, y2: height - bottom }),
    svg("line", { class: "axis", x1: left, y1: 4, x2: left, y2: height - bottom }),
    svg("text", { x: 0, y: 12 }, `$${top.toFixed(2)}`),
    svg("text", { x: left, y: height - 2 }, "00:00"),
    svg("text", { x: x(12) - 12, y: height - 2 }, "12:00"),
    svg("text", { x: width - 34, y: height - 2 }, "24:00 UTC"),
    svg("polyline", { class: "spend", points: points.map((p) => p.join(",")).join(" ") }),
  ];
  if (budget) parts.push(svg("line", { class: "budget", x1: left, y1: y(budget), x2: width - 4, y2: y(budget) }));
  return svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `spend today by hour${budget ? `, against a budget of $${budget}` : ""}` }, ...parts);
}

function lanesView() {
  const root = el("section", {}, el("h1", {}, "Lanes"));
  const cards = el("div", { class: "cards" });
  root.append(cards);
  async function refresh() {
    const [summary, doc] = await Promise.all([api("/api/v1/summary"), api("/api/v1/lanes")]);
    drawSummary(summary);
    put(cards, ...doc.lanes.map((lane) => el("article", { class: "card", "data-lane": lane.name },
      el("h2", {}, lane.name, " ", lane.reachable ? el("span", { class: "ok" }, "reachable") : el("span", { class: "bad" }, "unreachable")),
      lane.error ? el("p", { class: "error" }, lane.error) : null,
      el("p", {}, `Slots: ${lane.slotsUsed} of ${lane.slots} in use`),
      el("div", { class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": lane.slots, "aria-valuenow": lane.slotsUsed },
        el("span")),
      el("p", {}, `Spent today: ${money(lane.todayUsd)}`, lane.budgetUsd ? ` of $${lane.budgetUsd.toFixed(2)}` : " (no budget)",
        ` · ${lane.todayTokens} tokens`, lane.budgetTokens ? ` of ${lane.budgetTokens}` : ""),
      chart(lane.spendByHour, lane.budgetUsd),
      el("h3", {}, "Pre-flight"),
      lane.preflight.length ? el("ul", {}, lane.preflight.map((c) => el("li", {},
        el("span", { class: c.ok ? "ok" : (c.advisory ? "warn" : "bad") }, c.ok ? "✓ " : "✗ "),
        c.name, c.subject ? ` (${c.subject})` : "", c.detail ? el("span", { class: "muted" }, ` ${c.detail}`) : null,
        !c.ok && c.fix ? el("div", { class: "muted" }, `fix: ${c.fix}`) : null)))
        : el("p", { class: "muted" }, "Not checked in this observation."))));
    // widths through the DOM, not a style attribute: the CSP allows no inline style
    doc.lanes.forEach((lane, i) => {
      const fill = cards.children[i].querySelector(".bar > span");
      fill.style.width = `${lane.slots ? Math.round((100 * lane.slotsUsed) / lane.slots) : 0}%`;
    });
  }
  return { name: "lanes", root, refresh };
}

// ------------------------------------------------------------------------------------- plan

function planView() {
  const root = el("section", {}, el("h1", {}, "Next plan"),
    el("p", { class: "muted" }, "What the next pass would do now, and when it is due."));
  const body = el("div");
  root.append(body);
  async function refresh() {
    const [summary, plan] = await Promise.all([api("/api/v1/summary"), api("/api/v1/plan")]);
    drawSummary(summary);
    const due = plan.requeue
      ? el("p", {}, `Next due by time in ${Math.round(plan.requeue.after)}s: `, el("code", {}, plan.requeue.reason), ` ${plan.requeue.message}`)
      : el("p", { class: "muted" }, "Nothing is due by time; a push, a refresh or the interval starts the next pass.");
    put(body, due,
      el("p", {}, summary.reconciling ? "This process reconciles: the pass runs on its own."
        : summary.driven ? "A `reconciler run` holds this state: its passes carry this out."
          : "No `reconciler run` holds this state: the next `reconciler apply` carries this out."),
      el("h2", {}, `Actions (${plan.actions.length})`),
      plan.actions.length ? table([["Action"], ["Task"], ["Lane"], ["Why"]], plan.actions.map((a) => el("tr", {},
        el("td", {}, el("code", {}, a.action)),
        el("td", {}, a.task ? link(`/tasks/${encodeURIComponent(a.task)}`, a.task) : "–"),
        el("td", {}, a.lane || "–"),
        el("td", { class: "reason" }, a.reason)))) : el("p", { class: "muted" }, "Nothing to do: everything converged or waits."),
      el("h2", {}, `Waiting (${plan.blocked.length})`),
      plan.blocked.length ? table([["Task"], ["Code"], ["Why"]], plan.blocked.slice(0, 500).map((b) => el("tr", {},
        el("td", {}, link(`/tasks/${encodeURIComponent(b.task)}`, b.task)),
        el("td", {}, el("code", {}, b.reasonCode)),
        el("td", { class: "reason" }, b.reason)))) : el("p", { class: "muted" }, "Nothing waits."),
      plan.pools && plan.pools.length ? [el("h2", {}, "Warm pools"), table([["Lane"], ["Repo"], ["Base"], ["Ready", "num"], ["Wanted", "num"]],
        plan.pools.map((p) => el("tr", {}, el("td", {}, p.lane), el("td", {}, p.repo), el("td", {}, p.base),
          el("td", { class: "num" }, p.ready), el("td", { class: "num" }, p.wanted))))] : null);
  }
  return { name: "plan", root, refresh };
}

// ----------------------------------------------------------------------------------- events

function eventsView() {
  const list = el("ol", { class: "timeline", id: "events" });
  const root = el("section", {}, el("h1", {}, "Events"), list);
  let lastId = 0;
  function draw(ev) {
    if (ev.id <= lastId) return;
    lastId = ev.id;
    list.prepend(el("li", { class: `k-${ev.kind}` },
      el("span", { class: "muted", title: clock(ev.at) }, clock(ev.at)), " ",
      ev.task ? link(`/tasks/${encodeURIComponent(ev.task)}`, ev.task) : el("em", {}, "lane"), " ",
      el("code", {}, ev.kind), " ", ev.message));
  }
  async function refresh() {
    const [summary, page] = await Promise.all([api("/api/v1/summary"), api("/api/v1/events?limit=200")]);
    drawSummary(summary);
    page.events.forEach(draw);
  }
  return { name: "events", root, refresh, onEvent: draw };
}

// ----------------------------------------------------------------------------------- router

function route() {
  if (app.view && app.view.stop) app.view.stop();
  const path = location.pathname;
  let view;
  if (path.startsWith("/tasks/")) view = taskView(decodeURIComponent(path.slice(7)));
  else if (path === "/lanes") view = lanesView();
  else if (path === "/plan") view = planView();
  else if (path === "/events") view = eventsView();
  else view = tasksView();
  app.view = view;
  for (const a of document.querySelectorAll("nav a")) {
    const current = a.dataset.view === (view.name === "task" ? "tasks" : view.name);
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  document.getElementById("main").replaceChildren(view.root);
  document.title = view.name === "task" ? `${path.slice(7)} · reconciler` : `${view.name} · reconciler`;
  refresh();
}

async function refresh() {
  if (app.refreshing) { app.again = true; return; }
  app.refreshing = true;
  const view = app.view;
  try {
    await view.refresh();
    view.root.removeAttribute("data-error");
    // milliseconds from navigation to the first view drawn with its data (the bench reads it)
    if (!document.body.dataset.painted) document.body.dataset.painted = String(Math.round(performance.now()));
  } catch (e) {
    if (e.status !== 401 && view === app.view) {
      view.root.setAttribute("data-error", e.message);
      const note = view.root.querySelector(".load-error") || view.root.appendChild(el("p", { class: "error load-error", role: "alert" }));
      note.textContent = `Could not load: ${e.message}`;
    }
  } finally {
    app.refreshing = false;
    if (app.again) { app.again = false; refresh(); }
  }
  document.body.dataset.loaded = String(Date.now());
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-link]");
  if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  if (a.getAttribute("href") !== location.pathname + location.search) {
    if (!a.getAttribute("href").startsWith("/?")) app.pages = [""];
    history.pushState(null, "", a.getAttribute("href"));
  }
  route();
  document.getElementById("main").focus({ preventScroll: true });
});
window.addEventListener("popstate", () => { app.pages = [""]; route(); });

// ------------------------------------------------------------------------------- the stream

async function connect() {
  const live = document.getElementById("live");
  const headers = { Accept: "text/event-stream" };
  if (app.token) headers.Authorization = `Bearer ${app.token}`;
  if (app.lastEvent) headers["Last-Event-ID"] = String(app.lastEvent);
  if (app.stream) app.stream.abort();
  const controller = new AbortController();
  app.stream = controller;
  try {
    const response = await fetch("/api/v1/stream", { headers, cache: "no-store", credentials: "omit", signal: controller.signal });
    if (response.status === 401) { showLogin(); return; }
    if (!response.ok || !response.body) throw new Error(response.statusText);
    live.textContent = "live";
    live.className = "live on";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        dispatch(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (e) {
    if (controller.signal.aborted) return;
  }
  if (app.stream !== controller) return;
  live.textContent = "reconnecting";
  live.className = "live off";
  setTimeout(connect, 2000);
}

function dispatch(block) {
  let kind = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) kind = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
    else if (line.startsWith("id:")) app.lastEvent = Number(line.slice(3).trim());
  }
  if (!data.length) return;
  const payload = JSON.parse(data.join("\n"));
  if (kind === "event" && app.view && app.view.onEvent) app.view.onEvent(payload);
  if (kind === "changed") refresh();
}

// ------------------------------------------------------------------------------------- keys

let pendingG = false;
document.addEventListener("keydown", (e) => {
  const typing = e.target.matches && e.target.matches("input, select, textarea");
  if (e.key === "Escape") {
    document.getElementById("help").hidden = true;
    if (typing) { e.target.blur(); return; }
    if (app.view && app.view.name === "task") history.back();
    return;
  }
  if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
  if (pendingG) {
    pendingG = false;
    const to = { t: "/", l: "/lanes", p: "/plan", e: "/events" }[e.key];
    if (to) { app.pages = [""]; history.pushState(null, "", to); route(); }
    return;
  }
  if (e.key === "g") { pendingG = true; return; }
  if (e.key === "?") { const help = document.getElementById("help"); help.hidden = !help.hidden; return; }
  if (e.key === "/") {
    const filter = document.getElementById("f-label");
    if (filter) { e.preventDefault(); filter.focus(); }
    return;
  }
  if (e.key === "j" || e.key === "k") {
    const rows = [...document.querySelectorAll("main tbody tr[tabindex]")];
    if (!rows.length) return;
    const at = rows.indexOf(document.activeElement.closest && document.activeElement.closest("tr"));
    const next = e.key === "j" ? Math.min(rows.length - 1, at + 1) : Math.max(0, at - 1);
    rows[at < 0 ? 0 : next].focus();
    return;
  }
  if (e.key === "Enter" && e.target.matches("tr[data-task]")) {
    e.target.querySelector("a[data-link]").click();
  }
});

connect();
route();
