"""The record an importer makes, and its writing into a results folder.

An imported record has the fields a leaderboard reads (benchmark, model, method, row, aggregates,
per_sample, settings) plus ``kind: "imported"`` and ``imported`` (format, repository, commit, the paths
read inside the published folder, the model and checkpoint, and which values were re-scored by us and
which were taken as given). Its ``data.source`` says "imported from ...", which every table prints.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from harness.errors import HarnessError
from harness.run.results import (SCHEMA, config_id, ensure_inside, git_commit, read_record, record_path, versions,
                                 write_record)

KIND = "imported"


def fail(where: str | Path, problem: str, fix: str) -> HarnessError:
    return HarnessError(f"cannot import {where}: {problem}. {fix}")


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise fail(path.parent, f"{what} is missing ({path.name} not found)", "Point at the folder as its publisher wrote it.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise fail(path, f"{what} is not valid JSON ({exc})", "Re-download the file.") from None


def short_source(repository: str, commit: str) -> str:
    repo = repository.removeprefix("https://").removeprefix("github.com/")
    return f"{repo}@{commit[:7]}" if commit else repo


def imported_record(*, fmt: str, benchmark: str, model: str, method: str, row: str, source: Mapping[str, Any],
                    aggregates: Mapping[str, float], per_sample: Mapping[str, list], sizes: Mapping[str, int],
                    benchmark_config: Mapping[str, Any] | None = None, checkpoint: str | None = None,
                    rescored: Iterable[str] = (), as_given: Iterable[str] = (), notes: Iterable[str] = ()) -> dict:
    """One record for one published model/checkpoint (source: repository, commit, path, paths)."""
    imported = {"format": fmt, "repository": source["repository"], "commit": source["commit"],
                "path": source["path"], "paths": list(source.get("paths", [])), "model": source["model"],
                "checkpoint": checkpoint, "rescored": sorted(rescored), "taken_as_given": sorted(as_given)}
    config = {"benchmark": benchmark, "model": model, "method": method, "method_config": {},
              "benchmark_config": dict(benchmark_config or {}), "imported": {k: imported[k] for k in
                                                                             ("format", "repository", "commit", "path", "model", "checkpoint")}}
    who = short_source(source["repository"], source["commit"])
    what = source["model"] + (f" {checkpoint}" if checkpoint else "")
    warnings = list(notes)
    return {
        "schema": SCHEMA, "status": "ok", "kind": KIND, "benchmark": benchmark, "model": model, "method": method,
        "row": row, "seed": 0, "config": config, "config_id": config_id(config), "imported": imported,
        "aggregates": dict(aggregates), "per_sample": {k: list(v) for k, v in per_sample.items()},
        "data": {"source": f"imported from {who} ({fmt} format)", "sizes": dict(sizes)},
        "settings": f"imported: {what} from {who}, {source['path']}", "commit": git_commit(), "versions": versions(),
        "warnings": warnings, "scoring_deviations": [],
    }


def check_unique(records: Iterable[Mapping[str, Any]]) -> None:
    seen: dict[tuple, str] = {}
    for r in records:
        key = (r["benchmark"], r["model"], r["method"])
        if key in seen:
            raise HarnessError(
                f"cannot import: model '{r['imported']['model']}' is named twice ({seen[key]} and "
                f"{r['imported']['checkpoint'] or 'no checkpoint'}). Name each published model once (one checkpoint each).")
        seen[key] = r["imported"]["checkpoint"] or "no checkpoint"


def write_imported(records: list[dict], results_dir: Path) -> list[Path]:
    """Write each record into the results store; refuse to overwrite a record that is not the same import."""
    check_unique(records)
    written = []
    for record in records:
        path = ensure_inside(Path(results_dir), record_path(Path(results_dir), record["benchmark"], record["model"],
                                                            record["method"], record["config_id"], record["seed"]))
        old = read_record(path)
        if old is not None and old.get("kind") != KIND:
            raise HarnessError(f"cannot import into {path}: a harness run's record is there. Use another --model name.")
        write_record(path, record)
        written.append(path)
    return written
