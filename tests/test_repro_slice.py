"""The reproduction slice: a few cells of the default job, re-run from scratch, equal number for number
to the committed records in results/repro.

`make repro` made those records with the Makefile's REPRO_ARGS in an empty cache; this test runs the
same arguments in an empty cache and compares every record field that the code computes (aggregates,
per-sample scores and generations, attack blocks, training losses, counts, settings), exactly. So a
change that moves a number without regenerating the slice fails here; a change that moves no number
(a refactor that only re-keys cells) passes. Only what the machine or the moment sets is left out:
timings, the commit, the code hashes and the ids and paths derived from them, the Python patch level.

It takes minutes on one CPU thread (prepare fine-tunes two models, then training, evaluation and the
attacks), so it runs where asked: `make repro-check` (CI) sets HARNESS_REPRO=1.
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "results" / "repro"

slow = pytest.mark.skipif(os.environ.get("HARNESS_REPRO") != "1",
                          reason="minutes of CPU: run with `make repro-check` (HARNESS_REPRO=1), as CI does")

# Set by the machine, the moment or the code's hashes, not by the numbers the code computes.
VOLATILE_TOP = {"timings", "commit", "code", "config_id", "model_path", "model_source", "path"}
VOLATILE_ANYWHERE = {"seconds", "timings"}


def repro_args() -> list[str]:
    """REPRO_ARGS from the Makefile: the one place that says what the slice runs."""
    found = re.search(r"^REPRO_ARGS := (.+)$", (REPO / "Makefile").read_text(), re.M)
    assert found, "Makefile has no REPRO_ARGS line"
    return shlex.split(found.group(1))


def records(root: Path) -> dict[tuple, dict]:
    out = {}
    for path in sorted(root.glob("*/*/*/*.json")):
        record = json.loads(path.read_text())
        out[(record["benchmark"], record["model"], record["method"], record["seed"])] = record
    return out


def comparable(value, top: bool = False):
    if isinstance(value, dict):
        drop = VOLATILE_ANYWHERE | (VOLATILE_TOP if top else set())
        return {k: comparable(v) for k, v in value.items() if k not in drop and not k.endswith("_s")}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def differences(committed, now, where: str = "") -> list[str]:
    """Paths where the two differ; floats compared exactly (NaN equal to NaN)."""
    if isinstance(committed, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(committed) | set(now), key=str):
            if key not in now or key not in committed:
                out.append(f"{where}.{key}: {'missing now' if key not in now else 'new now'}")
            else:
                out += differences(committed[key], now[key], f"{where}.{key}")
        return out
    if isinstance(committed, list) and isinstance(now, list):
        if len(committed) != len(now):
            return [f"{where}: {len(committed)} entries committed, {len(now)} now"]
        return [d for i, (a, b) in enumerate(zip(committed, now)) for d in differences(a, b, f"{where}[{i}]")]
    both_nan = isinstance(committed, float) and isinstance(now, float) and math.isnan(committed) and math.isnan(now)
    return [] if committed == now or both_nan else [f"{where}: committed {committed!r}, now {now!r}"]


def test_comparison_sees_a_moved_number_and_ignores_timings():
    record = {"aggregates": {"rouge_f": 0.5}, "timings": {"eval_s": 1.0}, "training": {"seconds": 3.0, "losses": [1.0]},
              "versions": {"python": "3.11.7", "torch": "2.13.0"}}
    moved = json.loads(json.dumps(record))
    moved["timings"]["eval_s"], moved["training"]["seconds"] = 9.0, 9.0
    assert differences(comparable(record, top=True), comparable(moved, top=True)) == []
    moved["training"]["losses"][0] = 1.0000000000000002
    assert differences(comparable(record, top=True), comparable(moved, top=True)) == [
        ".training.losses[0]: committed 1.0, now 1.0000000000000002"]


@slow
def test_the_slice_rerun_from_scratch_equals_the_committed_records(tmp_path):
    assert COMMITTED.is_dir(), f"no committed slice in {COMMITTED}: make it with `make repro`"
    env = dict(os.environ, HARNESS_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "harness.cli", *repro_args(), "--results-dir", str(tmp_path / "results"),
                           "--no-save-models"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    now, committed = records(tmp_path / "results"), records(COMMITTED)
    assert sorted(now) == sorted(committed), "the slice made other cells than the committed ones"
    found = []
    for key, record in committed.items():
        versions_then = {k: v for k, v in record["versions"].items() if k != "python"}
        versions_now = {k: v for k, v in now[key]["versions"].items() if k != "python"}
        if versions_then != versions_now:  # say the likely cause first
            found.append(f"{key}: library versions differ from the committed slice: {versions_then} -> {versions_now}")
        found += [f"{'/'.join(map(str, key))}{d}"
                  for d in differences(comparable(record, top=True), comparable(now[key], top=True))]
    assert not found, (f"{len(found)} field(s) differ from results/repro; if the change is meant to move numbers, "
                       f"regenerate the slice with `make repro` and commit it:\n" + "\n".join(found[:40]))
