"""The bench's options, as every section receives them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    sizes: list[int]  # task counts of the plan figures
    reps: int  # repetitions where cheap
    short_tasks: int  # tasks of the slot figure
    agent_seconds: float  # the short agent's sleep
    limit: float  # seconds after which the slot figure is given up
    github_tasks: int  # tasks of the GitHub forge figures
    transport_tasks: int  # tasks per transport pass
    pool_files: int  # files in the pool figure's repository
    meter_mib: int  # MiB of agent output per metered run
    huge_tasks: int = 100_000  # tasks of the opt-in plan-at-scale figures
    huge_files: int = 100  # the files they are spread over
    huge_reps: int = 1  # repetitions of its parse, cold and warm passes
    soak_seconds: float = 3600.0  # how long the opt-in soak of `run` lasts
    soak_tasks: int = 1000  # the tasks it keeps churning
