"""Render the Markdown leaderboard from stored run records.

One section per (benchmark, model, data cut): rows of runs that cut the benchmark down
differently (``--limit``, ``benchmark.*`` overrides) are never compared in one table. A section has a heading, a line naming the data source(s) and the
column legend, a GitHub-flavoured table, and numbered notes under it (diverged runs, the
checkpoint a selection rule other than ``last`` reported, stand-in data, the one-line reason
of a failed cell, shown as a row marked "(failed)"). Reference rows
(target, retain, ...) come first, then method rows by label.
Seeds of one (method, config_id) collapse into one row showing mean ± sample std.
The best method row per column is bold. The output depends only on the records' content,
never on their order or on the clock.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from decimal import Decimal
from numbers import Real
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

from tabulate import tabulate

from harness.run.results import atomic_write_text

from .columns import DIRECTIONS, Column, format_value
from .robustness import render_robustness
from .versions import render_version_note

__all__ = ["render_leaderboard", "write_leaderboard", "format_value", "section_key"]

MISSING = "n/a"
REFERENCE_ORDER = {"target": 0, "retain": 1}
_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


# --------------------------------------------------------------------------- formatting


def _superscript(n: int) -> str:
    return str(n).translate(_SUPERSCRIPT)


def _cell(text: str) -> str:
    """Make free text safe inside a table cell: no line breaks, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _link_text(text: str) -> str:
    return _cell(text).replace("[", "\\[").replace("]", "\\]")


def _link_target(path: str) -> str:
    return quote(str(path).replace("\\", "/"), safe="/-._~+=,@:")


def _number(value: Any) -> float | None:
    """A numeric aggregate as float; None for anything that is not a number (bools included)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    return float(value)


def _seed_key(seed: Any) -> tuple:
    if isinstance(seed, bool) or not isinstance(seed, (int, float)):
        return (1, 0, str(seed))
    return (0, seed, "")


def _record_key(record: Mapping[str, Any]) -> tuple:
    """Total, content-based order for records (seed first), so input order never matters."""
    return (
        _seed_key(record.get("seed")),
        str(record.get("path") or ""),
        json.dumps(record, sort_keys=True, default=str),
    )


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _settings_text(settings: Any) -> str:
    if settings is None or settings == "":
        return MISSING
    if isinstance(settings, Mapping):
        return ", ".join(f"{k}={settings[k]}" for k in sorted(settings, key=str)) or MISSING
    return str(settings)


def _unique(values: Iterable[str]) -> list[str]:
    """Distinct values in first-seen order."""
    out: list[str] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


# --------------------------------------------------------------------------- rows


@dataclass
class _Value:
    text: str  # cell text before bolding
    score: Decimal | None  # displayed mean as an exact decimal; None when missing or not finite


@dataclass
class _Row:
    kind: str
    method: str
    config_id: str
    records: list[dict]  # sorted by seed
    label: str = ""
    values: dict[str, _Value] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def excluded_from_best(self) -> bool:
        return self.kind != "method" or any(
            (r.get("status") or "ok") != "ok" for r in self.records
        )

    def sort_key(self) -> tuple:
        base = (self.label.casefold(), self.label, self.method, _settings_order(self.records[0]), self.config_id)
        if self.kind == "reference":
            return (0, REFERENCE_ORDER.get(self.method, len(REFERENCE_ORDER)), *base)
        return (1, 0, *base)


def _settings_order(record: Mapping[str, Any]) -> tuple:
    """Rows of one method (a sweep) in the natural order of their settings: r=-2 < r=-1 < r=0."""
    config = record.get("config") if isinstance(record.get("config"), Mapping) else {}
    out = []
    for section in ("method_config", "train"):
        values = config.get(section) if isinstance(config.get(section), Mapping) else {}
        for key in sorted(values, key=str):
            value = values[key]
            number = _number(value)
            if number is None and isinstance(value, str):
                try:
                    number = float(value)   # e.g. SGA's r, kept as text because it may be "auto"
                except ValueError:
                    pass
            out.append((str(key), (0, number, "") if number is not None else (1, 0.0, str(value))))
    return tuple(out)


def _kind(record: Mapping[str, Any]) -> str:
    kind = record.get("kind")
    if kind in ("method", "reference"):
        return kind
    return "reference" if record.get("method") in REFERENCE_ORDER else "method"


def _aggregate(records: Sequence[Mapping[str, Any]], column: Column) -> _Value:
    values = []
    for record in records:
        aggregates = record.get("aggregates") or {}
        v = _number(aggregates.get(column.key)) if isinstance(aggregates, Mapping) else None
        if v is not None:
            values.append(v)
    if not values:
        return _Value(MISSING, None)

    if all(math.isfinite(v) for v in values):
        mean = statistics.mean(values)  # exact (rational) arithmetic: independent of order
        text = column.format(mean)
        score: Decimal | None = Decimal(text)
        if len(values) > 1:
            text += " ± " + column.format(statistics.stdev(values))
    else:
        if any(math.isnan(v) for v in values) or (math.inf in values and -math.inf in values):
            mean = math.nan
        else:
            mean = math.inf if math.inf in values else -math.inf
        text, score = format_value(mean, column.digits), None

    if len(values) < len(records):
        text += f" ({len(values)}/{len(records)} seeds)"
    return _Value(text, score)


def _note_texts(row: _Row) -> list[str]:
    """Notes for one row: divergence (or another non-ok status) per seed, selected checkpoints,
    stand-in data, non-default scoring settings."""
    notes: list[str] = []
    several = len(row.records) > 1
    for record in row.records:
        status = record.get("status") or "ok"
        if status == "ok":
            continue
        who = f"seed {record.get('seed')} " if several else ""
        if status == "failed":
            error = " ".join(str(record.get("error") or "no reason recorded").split())
            text = f"{who}failed: {error} (the record holds the traceback; re-run to retry)."
        elif status == "diverged":
            training = record.get("training") or {}
            step = training.get("diverged_at_step")
            loss = _number(training.get("last_finite_loss"))
            text = f"{who}diverged at step {step}" if step is not None else f"{who}diverged (step not recorded)"
            if loss is not None:
                text += f" (last finite loss {loss:.4g})"
            text += "; scores are of the weights at that point."
        else:
            text = f"{who}status '{status}'; scores may be incomplete."
        notes.append(text)
    for record in row.records:
        chosen = _selection_text(record)
        if chosen:
            notes.append(f"seed {record.get('seed')} {chosen}" if several else chosen)
    for record in row.records:
        stand_in = (record.get("data") or {}).get("stand_in")
        if stand_in:
            notes.append(f"stand-in data: {' '.join(str(stand_in).split())}")
    for record in row.records:  # scored with a non-default setting that changes scores
        for deviation in record.get("scoring_deviations") or []:
            notes.append(f"non-default scoring: {' '.join(str(deviation).split())}.")
    return _unique(notes)


def _selection_text(record: Mapping[str, Any]) -> str:
    """The checkpoint a selection rule reported instead of the final epoch ('' for the final epoch)."""
    chosen = record.get("selection")
    if not isinstance(chosen, Mapping) or chosen.get("rule") in (None, "last") or chosen.get("epoch") is None:
        return ""
    text = f"checkpoint of epoch {chosen['epoch']}, chosen by eval.select={chosen['rule']}"
    reason = " ".join(str(chosen.get("reason") or "").split())
    return f"{text}: {reason}." if reason else f"{text}."


def _build_rows(records: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> list[_Row]:
    groups: dict[tuple, _Row] = {}
    for record in records:
        kind = _kind(record)
        key = (kind, _text(record.get("method")), _text(record.get("config_id")))
        if key not in groups:
            groups[key] = _Row(kind=key[0], method=key[1], config_id=key[2], records=[])
        groups[key].records.append(dict(record))

    rows = list(groups.values())
    for row in rows:
        row.records.sort(key=_record_key)
        first = row.records[0]
        row.label = _text(first.get("row")) or row.method or "?"
        if all(r.get("status") == "failed" for r in row.records):
            row.label += " (failed)"
        row.values = {c.key: _aggregate(row.records, c) for c in columns}
        row.notes = _note_texts(row)
    rows.sort(key=lambda r: r.sort_key())
    return rows


def _best_rows(rows: Sequence[_Row], column: Column) -> set[int]:
    """Indices of the method rows holding the best displayed value of ``column`` (ties: all)."""
    scored: list[tuple[int, Decimal]] = []
    for i, row in enumerate(rows):
        value = row.values[column.key]
        if row.excluded_from_best or value.score is None:
            continue
        if column.direction == "up":
            s = -value.score
        elif column.direction == "down":
            s = value.score
        else:
            s = abs(value.score - Decimal(repr(float(column.target))))  # type: ignore[arg-type]
        scored.append((i, s))
    if not scored:
        return set()
    best = min(s for _, s in scored)
    return {i for i, s in scored if s == best}


# --------------------------------------------------------------------------- sections


def _legend(columns: Sequence[Column]) -> str:
    used = {c.direction for c in columns}
    parts = [f"{arrow} {meaning}" for d, (arrow, meaning) in DIRECTIONS.items() if d in used]
    if not parts:
        return ""
    return (
        "Legend: " + ", ".join(parts) + "; **bold** = best method row per column (diverged runs excluded); "
        "a ± b = mean ± sample std over seeds."
    )


def _data_cut(records: Sequence[Mapping[str, Any]], short: bool = False) -> str:
    """How the runs cut the benchmark down (``--limit``, ``benchmark.*`` overrides), if they did."""
    limits, overrides = set(), set()
    for r in records:
        config = r.get("config") if isinstance(r.get("config"), Mapping) else {}
        if config.get("limit") is not None:
            limits.add(str(config["limit"]))
        given = r.get("overrides") if isinstance(r.get("overrides"), Mapping) else {}
        overrides.update(f"{k}={v}" for k, v in given.items() if str(k).startswith("benchmark."))
    parts = []
    if limits:
        parts.append(f"--limit {' / '.join(sorted(limits, key=lambda s: (len(s), s)))}"
                     + ("" if short else " (first N items of every split)"))
    if overrides:
        parts.append(", ".join(sorted(overrides)))
    return "; ".join(parts)


def section_key(record: Mapping[str, Any]) -> tuple[str, str, str]:
    """(benchmark, model, data cut): the records that share one leaderboard table."""
    return (_text(record.get("benchmark")) or "?", _text(record.get("model")) or "?", _data_cut([record], short=True))


def section_title(benchmark: str, model: str, cut: str) -> str:
    return f"{benchmark} — {model}" + (f" — {cut}" if cut else "")


def _render_section(benchmark: str, model: str, records: Sequence[Mapping[str, Any]],
                    columns: Sequence[Column] | None) -> str:
    known = columns is not None
    columns = list(columns or [])
    rows = _build_rows(records, columns)

    sources = sorted({str(s) for r in records if (s := (r.get("data") or {}).get("source"))})
    intro = f"Data: {'; '.join(sources) if sources else 'not recorded'}."
    cut = _data_cut(records)
    if cut:
        intro += f" Reduced: {cut}."
    legend = _legend(columns)
    if legend:
        intro += " " + legend
    if not known:
        intro += f" No columns are defined for benchmark '{benchmark}'; only run details are shown."

    # Notes numbered per section in row order; identical texts share one number.
    numbers: dict[str, int] = {}
    marks: list[list[int]] = []
    for row in rows:
        row_marks = []
        for note in row.notes:
            numbers.setdefault(note, len(numbers) + 1)
            row_marks.append(numbers[note])
        marks.append(row_marks)

    best = {c.key: _best_rows(rows, c) for c in columns}
    show_commit = any(r.get("commit") for r in records)

    headers = ["Model / method", *(c.header() for c in columns), "Seed(s)", "Settings"]
    align = ["left", *("right" for _ in columns), "right", "left"]
    if show_commit:
        headers.append("Commit")
        align.append("left")

    table = []
    for i, row in enumerate(rows):
        path = row.records[0].get("path")
        label = f"[{_link_text(row.label)}]({_link_target(path)})" if path else _link_text(row.label)
        if marks[i]:
            label += ",".join(_superscript(n) for n in marks[i])
        cells = [label]
        for c in columns:
            text = _cell(row.values[c.key].text)
            cells.append(f"**{text}**" if i in best[c.key] else text)
        cells.append(", ".join(_cell(_text(r.get("seed"))) or "?" for r in row.records))
        cells.append(" / ".join(_unique(_cell(_settings_text(r.get("settings"))) for r in row.records)))
        if show_commit:
            commits = _unique(_cell(str(r["commit"])) for r in row.records if r.get("commit"))
            cells.append(", ".join(commits) or MISSING)
        table.append(cells)

    body = tabulate(table, headers=headers, tablefmt="github", disable_numparse=True, colalign=align)
    parts = [f"## {section_title(benchmark, model, _data_cut(records, short=True))}", intro, body]
    if numbers:
        parts.append("\n".join(f"- {_superscript(n)} {note}" for note, n in numbers.items()))
    mixed = render_version_note([r for row in rows for r in row.records])  # rows in table order
    if mixed:
        parts.append(mixed)
    robustness = render_robustness(rows, columns)
    if robustness:
        parts.append(robustness)
    return "\n\n".join(parts)


def render_leaderboard(records: list[dict], columns: dict[str, list[Column]], title: str = "Leaderboard") -> str:
    """The whole leaderboard as Markdown; the same records give the same bytes in any order."""
    sections: dict[tuple[str, str, str], list[dict]] = {}
    for record in records:
        sections.setdefault(section_key(record), []).append(record)

    parts = [f"# {title}"]
    if not sections:
        parts.append("No runs recorded yet.")
    for benchmark, model, cut in sorted(sections):
        group = sorted(sections[(benchmark, model, cut)], key=_record_key)
        parts.append(_render_section(benchmark, model, group, columns.get(benchmark)))
    return "\n\n".join(parts) + "\n"


def write_leaderboard(records: list[dict], columns: dict[str, list[Column]], path: str | os.PathLike,
                      title: str = "Leaderboard") -> str:
    """Render and write atomically (temp file in the same folder, then os.replace); return the text."""
    text = render_leaderboard(records, columns, title=title)
    atomic_write_text(Path(path), text)
    return text
