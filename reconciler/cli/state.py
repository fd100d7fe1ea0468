"""``reconciler state check|backup`` and the state directory's rows of ``doctor``.

Renders what ``reconciler.state`` finds (``check``, ``check_dir``, ``Store.backup``); decides
nothing. Neither command loads the manifests or takes the state lock: both must work when the
control repo is broken, and while a ``run`` is writing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.cli.render import Painter, err, use_color
from reconciler.diskspace import human_bytes
from reconciler.engine import Engine
from reconciler.state import SCHEMA_VERSION, Health, Store, check, check_dir

EXIT_OK, EXIT_ERROR = 0, 1
DOCTOR_LANE = "(control)"  # not a lane name (those are DNS labels): the control plane's own row


def add_parser(
    command: Callable[[str, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = command("state", "the state database: check it, back it up")
    sub = p.add_subparsers(dest="state_command", metavar="ACTION", required=True)
    c = sub.add_parser(
        "check",
        help="check the state database (integrity, schema version); exit 1 when damaged",
        parents=[common],
    )
    c.add_argument("--json", action="store_true", help="print the findings as JSON")
    b = sub.add_parser(
        "backup",
        help="write a consistent copy of the state database to FILE (mode 0600), also while "
        "a run is writing",
        parents=[common],
    )
    b.add_argument("file", type=Path, metavar="FILE")


def cmd_state(engine: Engine, args: argparse.Namespace) -> int:
    state_dir = engine.ctx.state_dir
    if args.state_command == "backup":
        return _backup(state_dir, args.file)
    health = check(state_dir)
    if args.json:
        print(json.dumps(_health_json(health), indent=2))
    else:
        sys.stdout.write(_render(health, Painter(use_color(sys.stdout))))
    if not health.ok:
        err(
            f"the state database {health.path} is {health.verdict}; {health.fix}"
            if health.fix
            else "; ".join(health.problems)
        )
        return EXIT_ERROR
    return EXIT_OK


def _backup(state_dir: Path, target: Path) -> int:
    with Store.open_readonly(state_dir) as store:
        serial = store.serial()
        size = store.backup(target)
    print(f"Backed up {store.path} (serial {serial}, {human_bytes(size)}) to {target} (mode 0600).")
    print(
        "To restore it, stop the reconciler and copy it to "
        f"{store.path} (removing {store.path.name}-wal and -shm beside it); what happened since "
        "is found again in the lanes and forges."
    )
    return EXIT_OK


def _render(health: Health, paint: Painter) -> str:
    rows = [("database", str(health.path))]
    if health.verdict == "missing":
        rows.append(("result", "no database yet: `reconciler apply` creates one"))
    else:
        if health.schema_version is not None:
            rows.append(
                ("schema", f"version {health.schema_version} (this reconciler: {SCHEMA_VERSION})")
            )
        if health.state_id is not None:
            rows.append(("id", health.state_id))
        if health.serial is not None:
            rows.append(("serial", str(health.serial)))
        if health.counts:
            rows.append(("records", ", ".join(f"{n} {t}" for t, n in health.counts.items())))
        if health.size:
            rows.append(("size", human_bytes(health.size)))
        for problem in health.problems:
            rows.append(("problem", problem))
    for note in health.notes:
        rows.append(("note", note))
    verdict = {
        "healthy": paint("healthy", "green"),
        "missing": paint("healthy", "green"),
        "damaged": paint("DAMAGED", "red", "bold"),
        "unusable": paint("UNUSABLE", "red", "bold"),
    }[health.verdict]
    rows.append(("verdict", verdict))
    width = max(len(k) for k, _ in rows)
    return "".join(f"{k.ljust(width)}  {v}\n" for k, v in rows)


def _health_json(health: Health) -> dict[str, Any]:
    return {
        "path": str(health.path),
        "verdict": health.verdict,
        "ok": health.ok,
        "problems": list(health.problems),
        "fix": health.fix or None,
        "notes": list(health.notes),
        "schemaVersion": health.schema_version,
        "expectedSchemaVersion": SCHEMA_VERSION,
        "serial": health.serial,
        "stateId": health.state_id,
        "counts": health.counts,
        "sizeBytes": health.size,
    }


def doctor_rows(state_dir: Path, paint: Painter) -> tuple[list[list[str]], int]:
    """The ``doctor`` rows of the state directory and its database, and how many failed."""
    rows: list[list[str]] = []
    found = check_dir(state_dir)
    rows.append(_row(found.name, str(state_dir), found.ok, found.detail, found.fix, paint=paint))
    health = check(state_dir, thorough=False)
    if health.verdict == "missing":
        detail = "No database yet; the first apply creates it."
    elif health.ok:
        detail = (
            f"Intact (quick check), schema version {health.schema_version}, serial "
            f"{health.serial}, {human_bytes(health.size)}"
            + (f", state id {health.state_id}." if health.state_id else ".")
        )
    else:
        detail = "; ".join(health.problems)
    fix = health.fix if not health.ok else ""
    rows.append(_row("state-db", str(health.path), health.ok, detail, fix, paint=paint))
    return rows, sum(1 for ok in (found.ok, health.ok) if not ok)


def _row(name: str, subject: str, ok: bool, detail: str, fix: str, *, paint: Painter) -> list[str]:
    result = paint("ok", "green") if ok else paint("FAIL", "red")
    return [DOCTOR_LANE, name, subject, result, detail, fix]
