"""Progress you can see: which cells of a run are queued, running (and where), done or failed.

Everything is read from the shared results folder, so any machine that sees it can ask, while
a run goes on: records say done or failed, claims (harness/run/claims.py) say running and on which
host and process, and the plan that ``--executor ray|slurm`` writes (``<results>/.plans/``)
names the cells not started yet. ``harness status --results-dir DIR`` prints it.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

from harness.run.claims import claim_path, is_stale, owner_label, read_claim
from harness.run.results import FINISHED, atomic_write_text, is_record_name, read_record
from harness.errors import HarnessError

STATES = ("queued", "running", "done", "failed")


def write_plan(results_dir: Path, paths: dict[str, Path], executor: str) -> Path:
    """Record which cells a distributed run will compute (relative record paths)."""
    root = Path(results_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    plan = root / ".plans" / f"{stamp}-{os.getpid()}.json"
    cells = {name: Path(path).relative_to(root).as_posix() for name, path in paths.items()}
    atomic_write_text(plan, json.dumps({"executor": executor, "started": time.time(), "cells": cells}, indent=1) + "\n")
    return plan


def cell_state(record: Path) -> tuple[str, str]:
    """(state, detail) of one cell from its claim and its record."""
    claim = read_claim(claim_path(record))
    if claim is not None and not is_stale(claim):
        since = time.strftime("%H:%M:%S", time.localtime(claim.get("started", 0)))
        return "running", f"{owner_label(claim)} since {since}"
    try:
        rec = read_record(record)
    except HarnessError:
        rec = None
    if rec is not None and rec.get("status") in FINISHED:
        return "done", rec["status"] if rec["status"] != "ok" else ""
    if rec is not None:
        return "failed", str(rec.get("error", ""))[:120]
    return "queued", "stale claim, will be taken over" if claim is not None else ""


def cell_states(paths: dict[str, Path]) -> dict[str, tuple[str, str]]:
    return {name: cell_state(Path(path)) for name, path in paths.items()}


def summary_line(states: dict[str, tuple[str, str]]) -> str:
    counts = Counter(state for state, _ in states.values())
    running = [f"{name} on {detail.split(' since ')[0]}" for name, (state, detail) in states.items() if state == "running"]
    line = "progress: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATES)
    return line + (f" ({'; '.join(running)})" if running else "")


def report(results_dir: Path) -> str:
    """The status of every planned cell of the latest plan, and of every other cell with a claim or record."""
    root = Path(results_dir)
    if not root.is_dir():
        raise HarnessError(f"results directory '{results_dir}' does not exist; pass the --results-dir of the run.")
    lines: list[str] = []
    planned: set[Path] = set()
    plans = sorted((root / ".plans").glob("*.json"))
    if plans:
        plan = json.loads(plans[-1].read_text(encoding="utf-8"))
        paths = {name: root / rel for name, rel in plan["cells"].items()}
        planned = set(paths.values())
        states = cell_states(paths)
        lines.append(f"latest plan {plans[-1].name} ({plan['executor']}): {summary_line(states)[len('progress: '):]}")
        lines += [f"  {state:<8} {name:<12} {detail}".rstrip() for name, (state, detail) in states.items()]
    others = sorted({p for p in root.glob("*/*/*/*.json")} | {Path(str(c)[: -len(".claim")]) for c in root.glob("*/*/*/*.json.claim")})
    others = [p for p in others if p not in planned and is_record_name(p)]
    if others:
        lines.append("other cells in this folder:" if plans else "cells in this folder:")
        for path in others:
            state, detail = cell_state(path)
            lines.append(f"  {state:<8} {path.relative_to(root).as_posix():<60} {detail}".rstrip())
    return "\n".join(lines) or f"no cells in {root} yet."
