"""``/metrics``: Prometheus's text format from the official client.

Everything about tasks, runs, slots and spend is computed per scrape from what ``status`` reads
(the shared status view and one read-only state snapshot): no second bookkeeping that could
drift from the state. What only the loop knows — how long its passes take, the actions they
carried out, when the last good one ended, when the control revision last changed — it records
as each pass ends (``LoopState``); those series exist only under ``run``. GitHub's rate limit is
what the lanes' forges last heard, brought back by observations: a scrape asks GitHub nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reconciler.engine import PassResult
from reconciler.manifests.models import Task
from reconciler.plan import Phase, TaskStatus
from reconciler.protocol import RateLimit
from reconciler.web.views import LoopState, Views

PASS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
VERDICTS = ("succeeded", "failed", "crashed", "stalled", "stopped", "running", "ended")


class StateCollector(Collector):
    """Tasks, runs, slots and spend, from the status view and the state, at scrape time."""

    def __init__(self, views: Views, loop: LoopState | None) -> None:
        self.views = views
        self.loop = loop

    def collect(self) -> Iterator[Metric]:
        view = self.views.status()
        desired, plan = view.desired, view.plan
        tasks = GaugeMetricFamily(
            "reconciler_tasks", "Tasks by phase and lane.", labels=["lane", "phase"]
        )
        counts: dict[tuple[str, str], int] = {}
        for status in plan.tasks:
            key = (status.lane, status.phase.value)
            counts[key] = counts.get(key, 0) + 1
        for lane in sorted({lane for lane, _ in counts} | set(desired.lanes)):
            for phase in Phase:
                tasks.add_metric([lane, phase.value], counts.get((lane, phase.value), 0))
        yield tasks

        used = GaugeMetricFamily("reconciler_slots_used", "Slots in use.", labels=["lane"])
        free = GaugeMetricFamily("reconciler_slots_free", "Slots free.", labels=["lane"])
        today = GaugeMetricFamily(
            "reconciler_lane_spend_today_usd",
            "Spent by the lane's runs started since 00:00 UTC (as its budget counts).",
            labels=["lane"],
        )
        budget = GaugeMetricFamily(
            "reconciler_lane_budget_usd", "The lane's daily budget in dollars.", labels=["lane"]
        )
        for name, spec in sorted(desired.lanes.items()):
            running = counts.get((name, Phase.RUNNING.value), 0)
            used.add_metric([name], running)
            free.add_metric([name], max(0, spec.max_concurrency - running))
            spend = view.data["lanes"][name]
            today.add_metric([name], spend["todayUsd"])
            if spend["budgetUsd"] is not None:
                budget.add_metric([name], spend["budgetUsd"])
        yield from (used, free, today, budget)
        yield from _spend(view.plan.tasks, desired.tasks)
        yield from self._runs()
        yield from self._loop()

    def _runs(self) -> Iterable[Metric]:
        with self.views.engine.reading() as store:
            tally = store.run_tally()
        runs = GaugeMetricFamily(
            "reconciler_runs",
            "Runs the state records, by verdict: the outcome, else the reconciler's mark "
            "(crashed, stalled, stopped), else running or ended (not judged yet).",
            labels=["lane", "outcome"],
        )
        started = CounterMetricFamily(
            "reconciler_runs_started", "Runs started (as the state records them).", labels=["lane"]
        )
        by_lane: dict[str, dict[str, int]] = {}
        for lane, verdict, n in tally:
            by_lane.setdefault(lane, {})[verdict] = n
        for lane, verdicts in sorted(by_lane.items()):
            started.add_metric([lane], sum(verdicts.values()))
            for verdict in VERDICTS:
                runs.add_metric([lane, verdict], verdicts.get(verdict, 0))
        yield from (runs, started)

    def _loop(self) -> Iterable[Metric]:
        loop = self.loop
        if loop is None:
            return
        now = loop.clock()
        with loop.lock:
            ok_at, since = loop.last_ok_at, loop.revision_since
        if ok_at is not None:
            yield GaugeMetricFamily(
                "reconciler_seconds_since_last_successful_pass",
                "Seconds since the last pass that succeeded ended.",
                value=now - ok_at,
            )
        if since is not None:
            yield GaugeMetricFamily(
                "reconciler_seconds_since_revision_change",
                "Seconds since a pass first reconciled the current control revision.",
                value=now - since,
            )


class RateCollector(Collector):
    """GitHub's rate limit per lane and repository, as the forge inside the lane last heard it
    (pre-flight's probe, the headers of any answer) and the observations brought it back: the
    loop's passes under ``run``, this process's own status computations. Asks GitHub nothing."""

    def __init__(self, views: Views) -> None:
        self.views = views
        self.passes: Mapping[tuple[str, str], RateLimit] = {}  # replaced whole by each pass

    def record(self, rates: Mapping[tuple[str, str], RateLimit]) -> None:
        self.passes = {**self.passes, **rates}

    def collect(self) -> Iterator[Metric]:
        latest = dict(self.passes)
        for key, rate in self.views.engine.rates.items():
            if key not in latest or rate.at > latest[key].at:
                latest[key] = rate
        remaining = GaugeMetricFamily(
            "reconciler_github_rate_limit_remaining",
            "Requests the GitHub token of the lane's repository has left (its core rate limit), "
            "as GitHub last said.",
            labels=["lane", "repo"],
        )
        limit = GaugeMetricFamily(
            "reconciler_github_rate_limit_limit",
            "The core rate limit of the GitHub token of the lane's repository, per hour.",
            labels=["lane", "repo"],
        )
        for (lane, repo), rate in sorted(latest.items()):
            remaining.add_metric([lane, repo], rate.remaining)
            limit.add_metric([lane, repo], rate.limit)
        yield from (remaining, limit)


def _spend(statuses: Iterable[TaskStatus], tasks: Mapping[str, Task]) -> Iterable[Metric]:
    """Spend and tokens per lane and agent: the figures ``status`` shows, summed."""
    spend: dict[tuple[str, str], list[float]] = {}
    for status in statuses:
        task = tasks.get(status.name)
        agent = task.spec.agent if task is not None else ""
        sums = spend.setdefault((status.lane, agent), [0.0, 0.0])
        sums[0] += status.cost_usd
        sums[1] += status.tokens
    usd = CounterMetricFamily(
        "reconciler_spend_usd",
        "Dollars the runs of the tasks reported, by lane and agent.",
        labels=["lane", "agent"],
    )
    tokens = CounterMetricFamily(
        "reconciler_tokens",
        "Input plus output tokens, by lane and agent.",
        labels=["lane", "agent"],
    )
    for (lane, agent), (dollars, count) in sorted(spend.items()):
        usd.add_metric([lane, agent], dollars)
        tokens.add_metric([lane, agent], count)
    yield from (usd, tokens)


class Metrics:
    """The registry /metrics renders: the state collector, and under ``run`` the loop's own."""

    def __init__(self, views: Views, loop: LoopState | None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StateCollector(views, loop))
        self.rates = RateCollector(views)
        self.registry.register(self.rates)
        if loop is None:
            return
        self.passes = Histogram(
            "reconciler_pass_duration_seconds",
            "How long the loop's passes took.",
            ["result"],
            buckets=PASS_BUCKETS,
            registry=self.registry,
        )
        self.actions = Counter(
            "reconciler_actions",
            "Actions the loop's passes carried out, by kind and outcome (applied, failed).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        loop.observers.append(self.record)

    def record(self, seconds: float, result: PassResult | None, ok: bool) -> None:
        self.passes.labels("ok" if ok else "failed").observe(seconds)
        if result is not None:
            self.rates.record(result.rates)
        report = result.report if result is not None else None
        if report is None:
            return
        for action in report.applied:
            self.actions.labels(action.kind.value, "applied").inc()
        for action, _message in report.failed:
            self.actions.labels(action.kind.value, "failed").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
