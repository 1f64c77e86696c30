"""Paper tables: a published table declared as data, regenerated beside our stored records.

A declaration is a JSON file in ``leaderboard/papers/`` (its file name, without ``.json``, is the
paper's name for ``harness tables --paper NAME``); adding a paper needs no code. Format::

    {
      "schema": 1,
      "title": "...", "citation": "...", "source": "...",          # text shown at the top
      "published_label": "paper",                                   # who published the values (below)
      "notes": ["..."],                                             # optional, shown under it
      "benchmark": "muse-news",                                     # default for every table
      "model_note": "Published: Llama-2-7B ...",                    # default for every table
      "where": {"benchmark_config": {"forget_source": "raw"}},      # default record filter
      "columns": [                                                  # default columns
        {"key": "knowmem_r", "label": "KnowMem r", "direction": "up", "digits": 1},
        {"key": "privleak", "label": "PrivLeak", "direction": "ref", "target": 0, "digits": 1},
        {"key": "forget_quality", "label": "Forget quality", "direction": "up",
         "format": "sig", "digits": 3, "compare": "log10", "scale": 1}
      ],
      "rows": [
        {"name": "Retrain", "match": {"kind": "reference", "method": "retain"},
         "published": {"knowmem_r": 55.0, "privleak": 0.0, ...}},
        {"name": "GA_KLR", "match": {"method": "graddiff", "method_config": {"retain_loss": "kl"}},
         "published": {"knowmem_r": null, ...},                     # null: unknown, never invented
         "published_notes": {"knowmem_r": "..."}, "note": "..."},   # optional footnotes
        {"name": "WHP", "match": null, "published": {...}}          # no harness method: 'not run'
      ]
    }

A paper with several tables (one per TOFU split, or one per benchmark) lists them under
``"tables": [{"title": ..., "where": ..., "rows": [...]}, ...]``; every table inherits
``benchmark``, ``model_note``, ``where`` and ``columns`` from the top level unless it sets its own.

``published_label`` heads the published values' columns: ``paper`` (the default) only when the
values are the ones the paper printed; otherwise the real source (``authors' archive`` for
values re-scored from the authors' archived outputs, ``OpenUnlearning`` for a reproduction).

Columns: ``key`` names the aggregate in a record's ``aggregates``; ``direction`` is ``up``,
``down`` or ``ref`` (closer to ``target`` is better); ``format`` is ``fixed`` (``digits``
decimals, the default) or ``sig`` (``digits`` significant digits, for values spanning many orders
of magnitude); ``scale`` multiplies our value before it is shown (e.g. 100 when the paper prints
percentages of a fraction we store); ``compare`` is ``diff`` (ours - paper, the default) or
``log10`` (log10(ours) - log10(paper)); ``delta_digits`` sets the difference's decimals. A
published value must be exact at the column's precision (1.94 needs ``digits`` 2), so a
declaration can never round a published number silently.

Matching (``where`` and a row's ``match``): ``kind`` (``method``/``reference``), ``method``,
``model`` compare with the record's fields; ``method_config`` and ``benchmark_config`` must be
subsets of ``record["config"]["method_config"]`` / ``["benchmark_config"]`` (e.g.
``{"split": "forget01"}``). Only finished records (``ok``, ``diverged``) count. Records of one
model make one section per table; seeds of one configuration collapse into mean ± sample std.
When several configurations match a row, the one with the most seeds is shown (ties: lowest
method, then config id) and a note names the others.
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from numbers import Real
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

from tabulate import tabulate

from harness.errors import HarnessError, unknown_name_error

from .columns import DIRECTIONS, format_value, header_text
from .markdown import _number, _record_key, _unique

__all__ = [
    "PAPERS_DIR", "Paper", "PaperTable", "PaperRow", "PaperColumn", "Match",
    "known_papers", "load_paper", "parse_paper", "render_paper_table", "write_paper_table",
    "UNKNOWN", "NOT_RUN", "MISSING", "NO_DIFF",
]

PAPERS_DIR = Path(__file__).resolve().parent / "papers"
SCHEMA = 1

UNKNOWN = "unknown"   # the published value is not available: never filled in
NOT_RUN = "not run"   # no stored record matches the row
MISSING = "n/a"       # matching records exist but none holds this aggregate (or it is not finite)
NO_DIFF = "—"         # no difference can be computed
FINISHED = ("ok", "diverged")
FORMATS = ("fixed", "sig")
COMPARES = ("diff", "log10")
MATCH_KEYS = ("kind", "method", "model", "method_config", "benchmark_config")
_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


# --------------------------------------------------------------------------- declarations


def _fail(where: str, message: str) -> HarnessError:
    return HarnessError(f"paper table {where}: {message}")


def _finite_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(float(value))


def _as_text(value: Any, where: str, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise _fail(where, f"must be a {'non-empty ' if required else ''}string, got {value!r}")
    return value


def _as_notes(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, f"must be a string or a list of strings, got {value!r}")
    return tuple(value)


def format_sig(value: float, digits: int) -> str:
    """``digits`` significant digits, trailing zeros dropped, exponent as 'e-5' (never 'e-05')."""
    if not math.isfinite(value):
        return format_value(value, 0)
    if value == 0:
        return "0"
    text = f"{value:.{digits}g}"
    m = re.fullmatch(r"(-?[0-9.]+)e([+-])([0-9]+)", text)
    if m:
        text = f"{m.group(1)}e{'-' if m.group(2) == '-' else ''}{int(m.group(3))}"
    return text


@dataclass(frozen=True)
class PaperColumn:
    key: str
    label: str
    direction: str
    digits: int = 1
    target: float | None = None
    format: str = "fixed"
    scale: float = 1.0
    compare: str = "diff"
    delta_digits: int | None = None

    @classmethod
    def parse(cls, data: Any, where: str) -> "PaperColumn":
        if not isinstance(data, Mapping):
            raise _fail(where, f"a column must be an object, got {data!r}")
        allowed = {"key", "label", "direction", "digits", "target", "format", "scale", "compare", "delta_digits"}
        extra = sorted(set(data) - allowed)
        if extra:
            raise _fail(where, f"unknown field(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}")
        key = _as_text(data.get("key"), f"{where}.key", required=True)
        label = _as_text(data.get("label", key), f"{where}.label", required=True)
        direction = data.get("direction")
        if direction not in DIRECTIONS:
            raise _fail(f"{where}.direction", f"must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        target = data.get("target")
        if direction == "ref" and not _finite_number(target):
            raise _fail(f"{where}.target", f"direction 'ref' needs a finite target number, got {target!r}")
        if direction != "ref" and target is not None:
            raise _fail(f"{where}.target", "only a 'ref' column takes a target")
        fmt = data.get("format", "fixed")
        if fmt not in FORMATS:
            raise _fail(f"{where}.format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
        digits = data.get("digits", 3 if fmt == "sig" else 1)
        lowest = 1 if fmt == "sig" else 0
        if isinstance(digits, bool) or not isinstance(digits, int) or not lowest <= digits <= 15:
            raise _fail(f"{where}.digits", f"must be an integer from {lowest} to 15, got {digits!r}")
        scale = data.get("scale", 1.0)
        if not _finite_number(scale) or scale == 0:
            raise _fail(f"{where}.scale", f"must be a finite non-zero number, got {scale!r}")
        compare = data.get("compare", "diff")
        if compare not in COMPARES:
            raise _fail(f"{where}.compare", f"must be one of {', '.join(COMPARES)}, got {compare!r}")
        delta_digits = data.get("delta_digits")
        if delta_digits is not None and (
            isinstance(delta_digits, bool) or not isinstance(delta_digits, int) or not 0 <= delta_digits <= 15
        ):
            raise _fail(f"{where}.delta_digits", f"must be an integer from 0 to 15, got {delta_digits!r}")
        return cls(key=key, label=label, direction=direction, digits=digits,
                   target=None if target is None else float(target), format=fmt, scale=float(scale),
                   compare=compare, delta_digits=delta_digits)

    def header(self) -> str:
        return header_text(self.label, self.direction, self.target)

    def headers(self, published: str = "paper") -> list[str]:
        delta = "Δlog10" if self.compare == "log10" else "Δ"
        return [f"{self.header()} ours", f"{self.label} {published}", f"{self.label} {delta}"]

    def fmt(self, value: float) -> str:
        return format_sig(value, self.digits) if self.format == "sig" else format_value(value, self.digits)

    def fmt_delta(self, delta: float) -> str:
        if self.compare == "log10":
            digits = 2 if self.delta_digits is None else self.delta_digits
            text = format_value(delta, digits)
        elif self.format == "sig" and self.delta_digits is None:
            text = format_sig(delta, self.digits)
        else:
            text = format_value(delta, self.digits if self.delta_digits is None else self.delta_digits)
        if math.isfinite(delta) and not text.startswith("-") and Decimal(text) != 0:
            text = "+" + text
        return text


@dataclass(frozen=True)
class Match:
    """Which records a row (or a whole table, as ``where``) accepts."""

    kind: str | None = None
    method: str | None = None
    model: str | None = None
    method_config: Mapping[str, Any] = field(default_factory=dict)
    benchmark_config: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: Any, where: str) -> "Match":
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise _fail(where, f"must be an object or null, got {data!r}")
        extra = sorted(set(data) - set(MATCH_KEYS))
        if extra:
            raise _fail(where, f"unknown field(s) {', '.join(extra)}; allowed: {', '.join(MATCH_KEYS)}")
        out: dict[str, Any] = {}
        for key in ("kind", "method", "model"):
            if key in data:
                out[key] = _as_text(data[key], f"{where}.{key}", required=True)
        if out.get("kind") not in (None, "method", "reference"):
            raise _fail(f"{where}.kind", f"must be 'method' or 'reference', got {out['kind']!r}")
        for key in ("method_config", "benchmark_config"):
            if key in data:
                if not isinstance(data[key], Mapping):
                    raise _fail(f"{where}.{key}", f"must be an object, got {data[key]!r}")
                out[key] = dict(data[key])
        return cls(**out)

    def merged(self, other: "Match") -> "Match":
        """This match narrowed by ``other`` (other's scalar fields win)."""
        return Match(
            kind=other.kind or self.kind, method=other.method or self.method, model=other.model or self.model,
            method_config={**self.method_config, **other.method_config},
            benchmark_config={**self.benchmark_config, **other.benchmark_config},
        )

    def accepts(self, record: Mapping[str, Any]) -> bool:
        if self.kind is not None and _kind(record) != self.kind:
            return False
        if self.method is not None and record.get("method") != self.method:
            return False
        if self.model is not None and record.get("model") != self.model:
            return False
        config = record.get("config") if isinstance(record.get("config"), Mapping) else {}
        return _subset(self.method_config, config.get("method_config")) and _subset(
            self.benchmark_config, config.get("benchmark_config")
        )

    def settings(self) -> list[str]:
        """The config constraints as 'key=value' texts (benchmark ones prefixed 'benchmark.')."""
        return [f"{k}={_plain(v)}" for k, v in sorted(self.method_config.items())] + [
            f"benchmark.{k}={_plain(v)}" for k, v in sorted(self.benchmark_config.items())
        ]

    def describe(self) -> str:
        parts = self.settings()
        name = self.method or "any method"
        if self.kind == "reference":
            name += " (reference)"
        if self.model:
            name += f" on {self.model}"
        return name + (f" ({', '.join(parts)})" if parts else "")


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _equal(want: Any, have: Any) -> bool:
    if isinstance(want, Mapping):
        return _subset(want, have)
    if isinstance(want, bool) or isinstance(have, bool):
        return isinstance(want, bool) and isinstance(have, bool) and want == have
    if isinstance(want, Real) and isinstance(have, Real):
        return float(want) == float(have)
    return want == have


def _subset(want: Mapping[str, Any], have: Any) -> bool:
    if not want:
        return True
    if not isinstance(have, Mapping):
        return False
    return all(k in have and _equal(v, have[k]) for k, v in want.items())


def _kind(record: Mapping[str, Any]) -> str:
    kind = record.get("kind")
    if kind in ("method", "reference"):
        return kind
    return "reference" if record.get("method") in ("target", "retain") else "method"


@dataclass(frozen=True)
class PaperRow:
    name: str
    match: Match | None  # None: no harness method reproduces it
    published: Mapping[str, float | None]
    note: str = ""
    published_notes: Mapping[str, str] = field(default_factory=dict)
    imported: Mapping[str, str] | None = None   # the published model (and checkpoint) whose outputs regenerate it


@dataclass(frozen=True)
class PaperTable:
    title: str
    benchmark: str
    model_note: str
    where: Match
    columns: tuple[PaperColumn, ...]
    rows: tuple[PaperRow, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Paper:
    name: str
    title: str
    citation: str
    source: str
    notes: tuple[str, ...]
    tables: tuple[PaperTable, ...]
    published_label: str = "paper"   # "paper" only for values the paper printed


def _exact(column: PaperColumn, value: float) -> bool:
    """Whether the column's precision shows ``value`` without rounding it."""
    try:
        return Decimal(column.fmt(value)) == Decimal(repr(float(value)))
    except InvalidOperation:
        return False


def _parse_row(data: Any, columns: Sequence[PaperColumn], where: str) -> PaperRow:
    if not isinstance(data, Mapping):
        raise _fail(where, f"a row must be an object, got {data!r}")
    allowed = {"name", "match", "published", "note", "published_notes", "imported"}
    extra = sorted(set(data) - allowed)
    if extra:
        raise _fail(where, f"unknown field(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}")
    name = _as_text(data.get("name"), f"{where}.name", required=True)
    if "match" not in data:
        raise _fail(f"{where} ('{name}')", "needs a 'match' (an object, or null when no harness method reproduces it)")
    match = None if data["match"] is None else Match.parse(data["match"], f"{where}.match")
    published = data.get("published")
    if not isinstance(published, Mapping):
        raise _fail(f"{where}.published", f"must be an object mapping every column key to a number or null, got {published!r}")
    keys = [c.key for c in columns]
    missing = [k for k in keys if k not in published]
    if missing:
        raise _fail(f"{where}.published ('{name}')",
                    f"missing {', '.join(missing)}: give every column a number, or null for an unknown value")
    extra = sorted(set(published) - set(keys))
    if extra:
        raise _fail(f"{where}.published ('{name}')", f"unknown column(s) {', '.join(extra)}; columns: {', '.join(keys)}")
    for c in columns:
        v = published[c.key]
        if v is None:
            continue
        if not _finite_number(v):
            raise _fail(f"{where}.published.{c.key} ('{name}')", f"must be a finite number or null, got {v!r}")
        if not _exact(c, v):
            raise _fail(f"{where}.published.{c.key} ('{name}')",
                        f"{v!r} would be rounded to {c.fmt(v)}: raise the column's digits")
    notes = data.get("published_notes") or {}
    if not isinstance(notes, Mapping) or not all(isinstance(v, str) for v in notes.values()):
        raise _fail(f"{where}.published_notes", f"must map column keys to strings, got {notes!r}")
    if set(notes) - set(keys):
        raise _fail(f"{where}.published_notes", f"unknown column(s) {', '.join(sorted(set(notes) - set(keys)))}")
    imported = data.get("imported")
    if imported is not None and (not isinstance(imported, Mapping) or not isinstance(imported.get("model"), str)
                                 or set(imported) - {"model", "checkpoint"}
                                 or not isinstance(imported.get("checkpoint", ""), str)):
        raise _fail(f"{where}.imported ('{name}')",
                    f"must be {{\"model\": NAME, \"checkpoint\": NAME (optional)}}, got {imported!r}")
    return PaperRow(name=name, match=match, published={k: published[k] for k in keys},
                    note=_as_text(data.get("note"), f"{where}.note"), published_notes=dict(notes),
                    imported=None if imported is None else dict(imported))


def _parse_columns(data: Any, where: str) -> tuple[PaperColumn, ...]:
    if not isinstance(data, list) or not data:
        raise _fail(where, f"must be a non-empty list of columns, got {data!r}")
    columns = tuple(PaperColumn.parse(c, f"{where}[{i}]") for i, c in enumerate(data))
    keys = [c.key for c in columns]
    if len(set(keys)) != len(keys):
        raise _fail(where, f"column keys repeat: {', '.join(keys)}")
    return columns


def parse_paper(data: Any, name: str, origin: str = "") -> Paper:
    """Validate a declaration (already parsed from JSON); errors name the file and the field."""
    where = origin or name
    if not isinstance(data, Mapping):
        raise _fail(where, "the file must hold a JSON object")
    if data.get("schema", SCHEMA) != SCHEMA:
        raise _fail(where, f"schema must be {SCHEMA}, got {data.get('schema')!r}")
    allowed = {"schema", "title", "citation", "source", "notes", "benchmark", "model_note", "where", "columns",
               "rows", "tables", "published_label"}
    extra = sorted(set(data) - allowed)
    if extra:
        raise _fail(where, f"unknown field(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}")
    if ("rows" in data) == ("tables" in data):
        raise _fail(where, "give either 'rows' (one table) or 'tables' (several)")
    raw_tables = data["tables"] if "tables" in data else [{"rows": data["rows"]}]
    if not isinstance(raw_tables, list) or not raw_tables:
        raise _fail(f"{where}: tables", "must be a non-empty list")
    default_where = Match.parse(data.get("where"), f"{where}: where")
    tables = []
    for i, t in enumerate(raw_tables):
        tw = f"{where}: tables[{i}]" if "tables" in data else where
        if not isinstance(t, Mapping):
            raise _fail(tw, f"a table must be an object, got {t!r}")
        extra = sorted(set(t) - {"title", "benchmark", "model_note", "where", "columns", "rows", "notes"})
        if extra:
            raise _fail(tw, f"unknown field(s) {', '.join(extra)}")
        benchmark = _as_text(t.get("benchmark", data.get("benchmark")), f"{tw}.benchmark", required=True)
        columns = _parse_columns(t.get("columns", data.get("columns")), f"{tw}.columns")
        rows_data = t.get("rows")
        if not isinstance(rows_data, list) or not rows_data:
            raise _fail(f"{tw}.rows", "must be a non-empty list of rows")
        rows = tuple(_parse_row(r, columns, f"{tw}.rows[{j}]") for j, r in enumerate(rows_data))
        names = [r.name for r in rows]
        if len(set(names)) != len(names):
            raise _fail(f"{tw}.rows", f"row names repeat: {', '.join(names)}")
        tables.append(PaperTable(
            title=_as_text(t.get("title", benchmark), f"{tw}.title", required=True),
            benchmark=benchmark,
            model_note=_as_text(t.get("model_note", data.get("model_note")), f"{tw}.model_note"),
            where=default_where.merged(Match.parse(t.get("where"), f"{tw}.where")),
            columns=columns, rows=rows, notes=_as_notes(t.get("notes"), f"{tw}.notes"),
        ))
    return Paper(
        name=name,
        title=_as_text(data.get("title"), f"{where}: title", required=True),
        citation=_as_text(data.get("citation"), f"{where}: citation"),
        source=_as_text(data.get("source"), f"{where}: source"),
        notes=_as_notes(data.get("notes"), f"{where}: notes"),
        tables=tuple(tables),
        published_label=_as_text(data.get("published_label", "paper"), f"{where}: published_label", required=True),
    )


def _read_declaration(path: Path, name: str) -> Paper:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HarnessError(f"cannot read paper table {path}: {exc}") from None
    return parse_paper(data, name, origin=str(path))


def known_papers(folder: Path = PAPERS_DIR) -> dict[str, str]:
    """Name -> title of every declaration in ``folder``, sorted by name."""
    out = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            out[path.stem] = _read_declaration(path, path.stem).title
        except HarnessError as exc:
            out[path.stem] = f"(invalid: {exc})"
    return out


def load_paper(name: str, folder: Path = PAPERS_DIR) -> Paper:
    """A declaration by name (a file in ``folder``), or by the path of a ``.json`` file."""
    candidate = Path(name)
    if name.endswith(".json") and candidate.is_file():
        return _read_declaration(candidate, candidate.stem)
    path = Path(folder) / f"{name}.json"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or not path.is_file():
        raise unknown_name_error("paper", name, sorted(p.stem for p in Path(folder).glob("*.json")))
    return _read_declaration(path, name)


# --------------------------------------------------------------------------- values


def _superscript(n: int) -> str:
    return str(n).translate(_SUPERSCRIPT)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")




def _text(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass
class _Ours:
    text: str
    value: float | None  # the (scaled) mean when finite


def _ours(records: Sequence[Mapping[str, Any]], column: PaperColumn) -> _Ours:
    values = []
    for record in records:
        aggregates = record.get("aggregates")
        v = _number(aggregates.get(column.key)) if isinstance(aggregates, Mapping) else None
        if v is not None:
            values.append(v * column.scale)
    if not values:
        return _Ours(MISSING, None)
    if all(math.isfinite(v) for v in values):
        mean = statistics.mean(values)
        text = column.fmt(mean)
        if len(values) > 1:
            text += " ± " + column.fmt(statistics.stdev(values))
        out = _Ours(text, mean)
    else:
        if any(math.isnan(v) for v in values) or (math.inf in values and -math.inf in values):
            mean = math.nan
        else:
            mean = math.inf if math.inf in values else -math.inf
        out = _Ours(format_value(mean, 0), None)
    if len(values) < len(records):
        out.text += f" ({len(values)}/{len(records)} seeds)"
    return out


def _delta(column: PaperColumn, ours: float | None, published: float | None) -> str:
    if ours is None or published is None:
        return NO_DIFF
    if column.compare == "log10":
        if ours <= 0 or published <= 0:
            return MISSING
        return column.fmt_delta(math.log10(ours) - math.log10(published))
    # From the values as shown, so that the three cells always add up.
    return column.fmt_delta(float(Decimal(column.fmt(ours)) - Decimal(column.fmt(published))))


def _status_notes(records: Sequence[Mapping[str, Any]]) -> list[str]:
    notes = []
    several = len(records) > 1
    for record in records:
        status = record.get("status") or "ok"
        if status == "ok":
            continue
        who = f"seed {record.get('seed')} " if several else ""
        if status == "diverged":
            step = (record.get("training") or {}).get("diverged_at_step")
            text = f"{who}diverged at step {step}" if step is not None else f"{who}diverged (step not recorded)"
            notes.append(text + "; scores are of the weights at that point.")
        else:
            notes.append(f"{who}status '{status}'; scores may be incomplete.")
    for record in records:
        stand_in = (record.get("data") or {}).get("stand_in")
        if stand_in:
            notes.append(f"stand-in data: {' '.join(str(stand_in).split())}")
    return notes


def _choose(records: Sequence[Mapping[str, Any]]) -> tuple[list[dict], list[list[dict]]]:
    """The configuration (seeds) shown for a row, and the other configurations that also matched."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((_text(record.get("method")), _text(record.get("config_id"))), []).append(dict(record))
    if not groups:
        return [], []
    order = sorted(groups, key=lambda k: (-len(groups[k]), k))
    chosen, *others = (sorted(groups[k], key=_record_key) for k in order)
    return chosen, others


def _flat(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for k in sorted(value, key=str):
            out.update(_flat(value[k], f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(value, sort_keys=True, default=str)}


def _ambiguity_note(name: str, chosen: Sequence[Mapping[str, Any]], others: Sequence[Sequence[Mapping[str, Any]]]) -> str:
    """Names the other matching configurations and the settings in which the shown one differs."""
    configs = [_flat(group[0].get("config") or {}) for group in (chosen, *others)]
    keys = sorted({k for c in configs for k in c if k != "data_fingerprint"})
    differing = [k for k in keys if len({c.get(k) for c in configs}) > 1]
    shown = ", ".join(f"{k}={_plain(json.loads(configs[0][k]))}" for k in differing[:4] if k in configs[0])
    ids = ", ".join(_text(group[0].get("config_id")) for group in others)
    why = ("the one with the most seeds" if len(chosen) > max(len(g) for g in others)
           else "the first by config id of those with the most seeds")
    return (
        f"{len(others)} other configuration(s) also match '{name}' (config {ids}); shown: config "
        f"{_text(chosen[0].get('config_id'))}{f' ({shown})' if shown else ''}, {why}. "
        "Narrow the row's match to choose."
    )


# --------------------------------------------------------------------------- rendering


def _label(text: str) -> str:
    return _cell(text).replace("[", "\\[").replace("]", "\\]")


def _link_target(path: str) -> str:
    return quote(path.replace("\\", "/"), safe="/-._~+=,@:")


def _legend(paper: Paper) -> str:
    used = {c.direction for t in paper.tables for c in t.columns}
    arrows = ", ".join(f"{a} {m}" for d, (a, m) in DIRECTIONS.items() if d in used)
    log = any(c.compare == "log10" for t in paper.tables for c in t.columns)
    pub = paper.published_label
    what = "the value the paper printed" if pub == "paper" else "the published value (source above)"
    return (
        "Legend: *ours* = the stored records that match the row (mean ± sample std over seeds; the match is "
        f"under *Harness run*); *{pub}* = {what}; Δ = ours − {pub}, from the values as shown"
        + (f"; Δlog10 = log10(ours) − log10({pub})" if log else "")
        + f"; `{UNKNOWN}` = the published value is not available here (never filled in); `{NOT_RUN}` = no "
        f"stored record matches the row; `{MISSING}` = a matching record lacks the value; {NO_DIFF} = no "
        f"difference can be computed. {arrows}."
    )


def _imported_for(row: PaperRow, imported: Sequence[Mapping[str, Any]]) -> tuple[list[dict], list[str]]:
    """The imported record that regenerates ``row`` (its declared model and checkpoint), and notes."""
    if row.imported is None:
        return [], []
    same = [dict(r) for r in imported if (r.get("imported") or {}).get("model") == row.imported["model"]]
    want = row.imported.get("checkpoint")
    chosen = [r for r in same if want is None or (r.get("imported") or {}).get("checkpoint") == want]
    notes = []
    if not chosen and same:
        have = ", ".join(sorted({str((r.get("imported") or {}).get("checkpoint")) for r in same}))
        notes.append(f"imported outputs of '{row.imported['model']}' are of checkpoint(s) {have}; the paper's choice is "
                     f"{want}: import it with --checkpoint {row.imported['model']}={want}.")
    if len(chosen) > 1:
        notes.append(f"{len(chosen)} imports match '{row.name}'; shown: {chosen[0].get('path')}.")
    return chosen[:1], notes


def _imported_legend(imported: Sequence[Mapping[str, Any]]) -> str:
    sources = sorted({f"{(r.get('imported') or {}).get('repository')} @ {(r.get('imported') or {}).get('commit')} "
                      f"({(r.get('imported') or {}).get('format')} format)" for r in imported})
    return ("*imported* = regenerated: the published per-sample outputs re-scored by this harness's metrics "
            "(`harness import`), never their publishers' aggregates; source: " + ("; ".join(sources) or "none imported yet") + ".")


def _section(table: PaperTable, model: str | None, records: Sequence[Mapping[str, Any]], link_base: str | None,
             published: str = "paper", imported: Sequence[Mapping[str, Any]] = ()) -> str:
    heading = f"## {table.title} — {model}" if model else f"## {table.title} — no matching records"
    intro = [f"Benchmark `{table.benchmark}`."]
    if table.model_note:
        intro.append(table.model_note)
    if model:
        sources = sorted({str(s) for r in records if (s := (r.get("data") or {}).get("source"))})
        intro.append(f"Ours: model `{model}`; data: {'; '.join(sources) if sources else 'not recorded'}.")
    else:
        intro.append(f"No finished record of benchmark `{table.benchmark}` matches this table yet.")
    filters = table.where.settings() + ([f"model={table.where.model}"] if table.where.model else [])
    if filters:
        intro.append(f"Records considered: {', '.join(filters)}.")
    intro.extend(table.notes)
    source_label = published   # (the loop below reuses the name for each published value)
    regenerate = any(row.imported is not None for row in table.rows)
    if regenerate:
        intro.append(_imported_legend(imported))

    numbers: dict[str, int] = {}

    def mark(notes: Iterable[str]) -> str:
        out = []
        for note in notes:
            numbers.setdefault(note, len(numbers) + 1)
            if numbers[note] not in out:
                out.append(numbers[note])
        return ",".join(_superscript(n) for n in out)

    def column_headers(c: PaperColumn) -> list[str]:
        ours, pub, delta = c.headers(published)
        return [ours, pub, delta, f"{c.label} imported"] if regenerate else [ours, pub, delta]

    headers = ["Row", "Harness run", *(h for c in table.columns for h in column_headers(c)), "Seed(s)"]
    align = ["left", "left", *("right" for c in table.columns for _ in column_headers(c)), "right"]
    body = []
    for row in table.rows:
        if row.match is None:
            chosen, others, run = [], [], "not in the harness"
        else:
            matching = [r for r in records if row.match.accepts(r)]
            chosen, others = _choose(matching)
            run = row.match.describe()
        notes = [row.note] if row.note else []
        if others:
            notes.append(_ambiguity_note(row.name, chosen, others))
        notes += _status_notes(chosen)
        regenerated, import_notes = _imported_for(row, imported)
        notes += import_notes
        if chosen and link_base is not None and chosen[0].get("path"):
            label = f"[{_label(row.name)}]({_link_target(link_base + str(chosen[0]['path']))})"
        else:
            label = _label(row.name)
        cells = [label + mark(_unique(notes)), _cell(run)]
        for c in table.columns:
            published = row.published[c.key]
            ours = _ours(chosen, c) if chosen else _Ours(NOT_RUN, None)
            paper = UNKNOWN if published is None else c.fmt(published)
            if c.key in row.published_notes:
                paper += mark([row.published_notes[c.key]])
            cells += [_cell(ours.text), _cell(paper), _delta(c, ours.value, published)]
            if regenerate:
                again = _ours(regenerated, c) if regenerated else _Ours("not declared" if row.imported is None else "not imported", None)
                if again.value is not None and published is not None and c.fmt(again.value) != c.fmt(published):
                    again.text += mark([f"{row.name} {c.label}: the published outputs re-scored give {c.fmt(again.value)}, "
                                        f"the {source_label} value is {c.fmt(published)}."])
                cells.append(_cell(again.text))
        seeds = ", ".join(_cell(_text(r.get("seed"))) or "?" for r in chosen)
        cells.append(seeds or NO_DIFF)
        body.append(cells)

    parts = [heading, " ".join(intro),
             tabulate(body, headers=headers, tablefmt="github", disable_numparse=True, colalign=align)]
    if numbers:
        parts.append("\n".join(f"- {_superscript(n)} {_cell(note)}" for note, n in numbers.items()))
    return "\n\n".join(parts)


def render_paper_table(paper: Paper, records: Sequence[Mapping[str, Any]], link_base: str | None = None) -> str:
    """The paper's tables as Markdown, published values beside ours; the same records give the same bytes.

    ``records`` are stored run records (any order; unfinished ones are ignored). ``link_base``,
    when given, is prefixed to a record's ``path`` to link a row's name to its record.
    """
    finished = sorted((dict(r) for r in records if (r.get("status") or "ok") in FINISHED), key=_record_key)
    parts = [f"# Paper table: {paper.title}"]
    cite = " ".join(p for p in (paper.citation + "." if paper.citation else "",
                                f"Source: {paper.source}" if paper.source else "") if p)
    if cite:
        parts.append(cite)
    parts.append(_legend(paper))
    if paper.notes:
        parts.append("\n".join(f"- {_cell(n)}" for n in paper.notes))
    for table in paper.tables:
        mine = [r for r in finished if r.get("benchmark") == table.benchmark and table.where.accepts(r)
                and r.get("kind") != "imported"]
        imported = [r for r in finished if r.get("benchmark") == table.benchmark and r.get("kind") == "imported"]
        models = sorted({_text(r.get("model")) or "?" for r in mine})
        if not models:
            parts.append(_section(table, None, [], link_base, paper.published_label, imported))
        for model in models:
            parts.append(_section(table, model, [r for r in mine if (_text(r.get("model")) or "?") == model],
                                  link_base, paper.published_label, imported))
    return "\n\n".join(parts) + "\n"


def write_paper_table(paper: Paper, results_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                      warn=print) -> Path:
    """Render from the records under ``results_dir``; write atomically to ``out``
    (default ``<results_dir>/tables/<name>.md``); return the path written."""
    from harness.run.results import atomic_write_text, load_records, made_with_random_weights

    results_dir = Path(results_dir)
    target = Path(out) if out is not None else results_dir / "tables" / f"{paper.name}.md"
    records = [r for r in load_records(results_dir, warn) if not made_with_random_weights(r)]
    link_base = os.path.relpath(results_dir.resolve(), target.resolve().parent).replace(os.sep, "/")
    link_base = "" if link_base == "." else link_base + "/"
    atomic_write_text(target, render_paper_table(paper, records, link_base=link_base))
    return target
