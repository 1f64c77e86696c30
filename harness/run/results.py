"""The results store: one JSON record per cell, written atomically, read back with checks.

A cell is (benchmark, model, method, config, seed). Its record lives at
``<results>/<benchmark>/<model>/<method>/<config_id>-seed<seed>.json``; it is written to a
temporary file in the same folder, flushed and renamed, so a killed run never leaves a
half-written record. A record that cannot be parsed is reported by path and re-run.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

SCHEMA = 1
FINISHED = ("ok", "diverged")
SHOWN = (*FINISHED, "failed")   # the statuses a leaderboard lists (a failed cell as a failed row)


def made_with_random_weights(record: dict[str, Any]) -> bool:
    """A record of a ``random:<architecture>`` model (speed figures only): its scores mean nothing."""
    from harness.runtime.random_models import PREFIX, RANDOM_SOURCE

    return str(record.get("model") or "").startswith(PREFIX) or str(record.get("model_source") or "").startswith(RANDOM_SOURCE)


def leaderboard_records(records: list[dict[str, Any]], include_random: bool = False) -> list[dict[str, Any]]:
    """The records a leaderboard lists: shown statuses, and none made with random weights unless asked."""
    return [r for r in records if r.get("status") in SHOWN and (include_random or not made_with_random_weights(r))]


def slug(text: str) -> str:
    """A file-system-safe name for a model spec or hub id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip("/").replace("/", "__")) or "model"


def config_id(resolved: dict[str, Any]) -> str:
    blob = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def record_path(results_dir: Path, benchmark: str, model: str, method: str, cid: str, seed: int) -> Path:
    return Path(results_dir) / benchmark / slug(model) / method / f"{cid}-seed{seed}.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    The temporary file is created with mode 0o666 so the umask decides the final permissions,
    as a plain open() would (mkstemp's 0o600 would make shared results unreadable to others).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_record(path: Path, record: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


RECORD_NAME = re.compile(r"[0-9a-f]{8}-seed\d+\.json")

#: what a record's fields must be (records are edited by hand, copied, merged: checked when read)
FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "benchmark": str, "model": str, "method": str, "status": str, "seed": int, "config_id": str,
    "aggregates": dict, "config": dict, "per_sample": dict, "training": (dict, type(None)),
}
STATUSES = ("ok", "diverged", "failed")
# ranges of the built-in score families, by key prefix: fractions, percentages, PrivLeak (-100 and up)
SCORE_RANGES: tuple[tuple[str, float, float], ...] = (
    ("rouge_", 0, 1), ("prob_", 0, 1), ("es_", 0, 1), ("em_", 0, 1), ("auc_", 0, 1), ("forget_quality", 0, 1),
    ("model_utility", 0, 1), ("privleak_reference_auc", 0, 1), ("knowmem_", 0, 100), ("verbmem_", 0, 100),
    ("truth_ratio_", 0, math.inf), ("privleak", -100, math.inf),
)


def is_record_name(path: Path) -> bool:
    """Records are named ``<config id>-seed<N>.json``; a user's own notes.json beside them is not one."""
    return RECORD_NAME.fullmatch(Path(path).name) is not None


def record_problem(record: Any) -> str | None:
    """Why ``record`` is not a valid record (schema, field types, finite scores in range), or None."""
    if not isinstance(record, dict) or record.get("schema") != SCHEMA or "status" not in record:
        return "missing schema/status fields"
    for key, kind in FIELD_TYPES.items():
        if key in record and (not isinstance(record[key], kind) or isinstance(record[key], bool)):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            return f"'{key}' is {type(record[key]).__name__} {record[key]!r}, expected {names}"
    if record["status"] not in STATUSES:
        return f"status '{record['status']}' is none of {', '.join(STATUSES)}"
    for key, value in (record.get("aggregates") or {}).items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"score '{key}' is {type(value).__name__} {value!r}, expected a number"
        if not math.isfinite(value):
            return f"score '{key}' is {value}, expected a finite number"
        low, high = next(((lo, hi) for prefix, lo, hi in SCORE_RANGES if key.startswith(prefix)), (-math.inf, math.inf))
        if not low <= value <= high:
            return f"score '{key}' = {value:g} lies outside its range [{low:g}, {high:g}]"
    return None


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``; None if absent; HarnessError if corrupt (path in the message)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HarnessError(f"corrupt result record {path}: {exc}. It will be re-run.") from None
    problem = record_problem(record)
    if problem:
        raise HarnessError(f"invalid result record {path}: {problem}. It is not used (a run re-runs its cell).")
    return record


def read_record_quietly(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None when it is absent or unreadable (its reader reports it elsewhere)."""
    try:
        return read_record(path)
    except HarnessError:
        return None


def finished_record(path: Path, warn=print) -> dict[str, Any] | None:
    """A finished record to reuse, or None when the cell must (re-)run."""
    try:
        record = read_record(path)
    except HarnessError as exc:
        warn(f"warning: {exc}")
        return None
    return record if record and record["status"] in FINISHED else None


def load_records(results_dir: Path, warn=print) -> list[dict[str, Any]]:
    """Every readable record under ``results_dir`` with its relative ``path``; corrupt ones reported."""
    records = []
    root = Path(results_dir)
    for path in sorted(root.glob("*/*/*/*.json")):
        if not is_record_name(path):
            continue
        try:
            record = read_record(path)
        except HarnessError as exc:
            warn(f"warning: {exc}")
            continue
        if record is not None:
            record["path"] = path.relative_to(root).as_posix()
            records.append(record)
    return records


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("unlearning-harness", "torch", "transformers", "rouge-score", "scikit-learn", "scipy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def ensure_inside(root: Path, path: Path) -> Path:
    """Refuse paths that escape the results root (e.g. a model name with ../ in it)."""
    root, resolved = Path(root).resolve(), Path(path).resolve()
    if resolved != root and root not in resolved.parents:
        raise HarnessError(f"refusing to write {path}: it lies outside the results directory {root}.")
    return path
