"""CSV and JSON exports of the leaderboard table (the same rows and values as LEADERBOARD.md).

One row per leaderboard row: records of one (kind, method, config_id) in one (benchmark, model,
data cut) section collapse into one row, in the Markdown's order (sections by benchmark, model, cut;
reference rows first, then method rows by label). For every metric column ``KEY`` of any
benchmark there are these fields: ``KEY`` (the mean over the row's seeds, full precision; the
Markdown shows it rounded to the column's digits), ``KEY_std`` (sample std over seeds; empty
with one seed), ``KEY_lo`` / ``KEY_hi`` (its 95% bootstrap interval, see leaderboard/intervals.py;
empty where the column has none), ``KEY_vs_best_p`` (paired bootstrap p-value against the column's
best row) and ``KEY_tied_best`` (true when that test cannot tell the row from the best; empty when not
tested). Forget quality adds ``forget_quality_ks`` (the KS statistic), ``forget_quality_n``,
``forget_quality_m`` and ``forget_quality_p_min``; ``no_op`` names a row that did nothing. A metric that a benchmark lacks, or no seed of the row recorded, is empty (CSV)
or null (JSON); so is a NaN mean; an infinite one is ``inf``/``-inf`` in CSV and null in JSON.

The output depends only on the records' content, never on their order or on the clock.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from numbers import Real
from pathlib import Path
from typing import Any, Mapping, Sequence

from .columns import Column
from .markdown import _build_rows, _record_key, _settings_text, _text, _unique, section_key

__all__ = ["leaderboard_frame", "render_csv", "render_json", "write_exports", "leaderboard_inputs", "FIXED_FIELDS"]

FIXED_FIELDS = ("benchmark", "model", "data_cut", "row", "kind", "method", "config_id", "seeds", "n_seeds", "status",
                "settings", "commit", "path", "notes", "no_op")
UNCERTAINTY_FIELDS = ("lo", "hi", "vs_best_p", "tied_best")
KS_FIELDS = {"forget_quality_ks": "statistic", "forget_quality_n": "n", "forget_quality_m": "m",
             "forget_quality_p_min": "p_min"}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    return float(value)


def _mean_std(records: Sequence[Mapping[str, Any]], key: str) -> tuple[float | None, float | None]:
    values = []
    for record in records:
        aggregates = record.get("aggregates")
        v = _number(aggregates.get(key)) if isinstance(aggregates, Mapping) else None
        if v is not None:
            values.append(v)
    if not values:
        return None, None
    if not all(math.isfinite(v) for v in values):
        if any(math.isnan(v) for v in values) or (math.inf in values and -math.inf in values):
            return math.nan, None
        return (math.inf if math.inf in values else -math.inf), None
    mean = float(statistics.mean(values))  # exact (rational) arithmetic: independent of order
    return mean, (float(statistics.stdev(values)) if len(values) > 1 else None)


def _metric_keys(columns: Mapping[str, Sequence[Column]], benchmarks: Sequence[str]) -> list[str]:
    """Metric keys of the benchmarks present, in section order then column order, each once."""
    return _unique(c.key for b in benchmarks for c in columns.get(b, []))


def _table(records: Sequence[Mapping[str, Any]], columns: Mapping[str, Sequence[Column]]) -> tuple[list[str], list[dict]]:
    sections: dict[tuple[str, str, str], list[dict]] = {}
    for record in records:
        sections.setdefault(section_key(record), []).append(dict(record))
    order = sorted(sections)
    keys = _metric_keys(columns, _unique(b for b, _, _ in order))
    rows: list[dict] = []
    for benchmark, model, cut in order:
        cols = list(columns.get(benchmark) or [])
        own = {c.key for c in cols}
        group = sorted(sections[(benchmark, model, cut)], key=_record_key)
        for row in _build_rows(group, cols):
            out: dict[str, Any] = {
                "benchmark": benchmark,
                "model": model,
                "data_cut": cut or None,
                "row": row.label,
                "kind": row.kind,
                "method": row.method,
                "config_id": row.config_id,
                "seeds": ", ".join(_text(r.get("seed")) or "?" for r in row.records),
                "n_seeds": len(row.records),
                "status": ", ".join(_unique(str(r.get("status") or "ok") for r in row.records)),
                "settings": " / ".join(_unique(_settings_text(r.get("settings")) for r in row.records)),
                "commit": ", ".join(_unique(str(r["commit"]) for r in row.records if r.get("commit"))) or None,
                "path": _text(row.records[0].get("path")) or None,
                "notes": " | ".join(row.notes) or None,
                "no_op": "; ".join(row.no_op) or None,
            }
            for key in keys:
                mean, std = _mean_std(row.records, key) if key in own else (None, None)
                out[key], out[f"{key}_std"] = mean, std
                u = row.values[key].uncertainty if key in own else None
                interval, test = (u.interval, u.vs_best) if u is not None else (None, None)
                out[f"{key}_lo"] = interval.lo if interval else None
                out[f"{key}_hi"] = interval.hi if interval else None
                out[f"{key}_vs_best_p"] = test.p_value if test else None
                out[f"{key}_tied_best"] = u.tied_with_best if u is not None else None
            ks = row.values["forget_quality"].uncertainty.ks if "forget_quality" in own else None
            for name, part in KS_FIELDS.items():
                out[name] = ks[part] if ks else None
            rows.append(out)
    fields = [*FIXED_FIELDS, *(f for k in keys for f in (k, f"{k}_std", *(f"{k}_{u}" for u in UNCERTAINTY_FIELDS))),
              *(KS_FIELDS if "forget_quality" in keys else ())]
    return fields, rows


def leaderboard_frame(records: Sequence[Mapping[str, Any]], columns: Mapping[str, Sequence[Column]]):
    """The leaderboard table as a pandas DataFrame (one row per Markdown row, same order)."""
    import pandas as pd

    fields, rows = _table(records, columns)
    frame = pd.DataFrame.from_records(rows, columns=fields)
    metric = [f for f in fields if f not in FIXED_FIELDS and not f.endswith("_tied_best")
              and f not in ("forget_quality_n", "forget_quality_m")]
    if metric:
        frame[metric] = frame[metric].astype("float64")
    for f in fields:
        if f.endswith("_tied_best") or f in ("forget_quality_n", "forget_quality_m"):
            frame[f] = frame[f].astype("object")   # true/false or counts, empty where not tested
    frame["n_seeds"] = frame["n_seeds"].astype("int64")
    return frame


def render_csv(records: Sequence[Mapping[str, Any]], columns: Mapping[str, Sequence[Column]]) -> str:
    """CSV text (UTF-8, '\\n' line ends, floats at full precision)."""
    return leaderboard_frame(records, columns).to_csv(index=False, lineterminator="\n", na_rep="")


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    return value


def render_json(records: Sequence[Mapping[str, Any]], columns: Mapping[str, Sequence[Column]],
                title: str = "Leaderboard") -> str:
    """JSON text: the column definitions per benchmark and the rows of ``leaderboard_frame``."""
    frame = leaderboard_frame(records, columns)
    benchmarks = _unique(frame["benchmark"].tolist())
    rows = [{k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else _plain(v)) for k, v in r.items()}
            for r in frame.to_dict(orient="records")]
    doc = {
        "schema": 1,
        "title": title,
        "columns": {
            b: [{"key": c.key, "label": c.label, "header": c.header(), "direction": c.direction,
                 "target": c.target, "family": c.family, "digits": c.digits,
                 "interval": c.interval is not None} for c in columns.get(b, [])]
            for b in benchmarks
        },
        "rows": rows,
    }
    return json.dumps(doc, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def write_exports(records: Sequence[Mapping[str, Any]], columns: Mapping[str, Sequence[Column]],
                  folder: str | os.PathLike, csv: bool = True, json_: bool = True,
                  stem: str = "LEADERBOARD") -> list[Path]:
    """Write ``<folder>/LEADERBOARD.csv`` and/or ``.json`` atomically; return the paths written."""
    from harness.run.results import atomic_write_text

    written = []
    if csv:
        path = Path(folder) / f"{stem}.csv"
        atomic_write_text(path, render_csv(records, columns))
        written.append(path)
    if json_:
        path = Path(folder) / f"{stem}.json"
        atomic_write_text(path, render_json(records, columns))
        written.append(path)
    return written


def leaderboard_inputs(results_dir: str | os.PathLike, warn=None,
                       include_random: bool = False) -> tuple[list[dict], dict[str, list[Column]]]:
    """The records a leaderboard shows (finished and failed) and the registered benchmarks' columns, as ``render_results`` uses them.

    ``warn`` (default: silent) receives the messages about unreadable records.
    """
    from harness.registry import BENCHMARKS
    from harness.run.results import leaderboard_records, load_records

    records = leaderboard_records(load_records(Path(results_dir), warn or (lambda _msg: None)), include_random)
    columns = {name: list(cls.columns) for name, cls in BENCHMARKS.items()}
    return records, columns
