"""Plots of stored records (optional: needs matplotlib, the ``plots`` extra).

Per (benchmark, model) section of the leaderboard:

- ``tradeoff-<benchmark>-<model>.png|svg``: forget (x) against utility (y), one point per
  leaderboard row (mean over seeds), the retain model drawn as a star and labelled as the goal; a
  method run as a sweep (``--sweep``) also has every swept point (and, with per-epoch scores, each
  epoch) drawn as crosses joined in grid order, its selected point ringed and its setting in the label;
  the axes per benchmark come from ``TRADEOFF_AXES`` (else the benchmark's first
  knowledge/verbatim column against its first utility column). Points that would overlap on the
  page (within a few per cent of the axes, e.g. GA and NPO, or every row of a run that scored 0
  everywhere) share one label listing their rows, so no label is drawn over another;
- ``training-<benchmark>-<model>.png|svg``: training loss per step (``record["training"]["losses"]``)
  as small multiples, one panel per method row with its own y scale (NPO's loss of 7-14 would
  flatten GA's -1..-3 on a shared axis), one line per seed; a diverged run ends in a cross. Runs made with
  ``eval.per_epoch`` add two panels below: the trade-off axes' forget and utility scores per
  epoch (``record["epochs"]``), the retain model's value dotted, and the checkpoint a selection
  rule other than ``last`` reported ringed;
- ``robustness-<benchmark>-<model>.png|svg`` (only for records made with ``eval.attacks``): the
  residual share of each forget-side metric per method row with its 95% interval, one panel per
  attack, one legend for the figure; an attack whose guard failed shows why instead of bars
  (``leaderboard/robustness.py`` computes the numbers, as in the table).

File names depend only on the benchmark and model; the files only on the records (fixed style,
no dates in the metadata, fixed SVG ids), so the same records give the same bytes.
"""
from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

from harness.errors import HarnessError

from .columns import Column
from .markdown import _build_rows, _record_key, _text, section_key

__all__ = ["TRADEOFF_AXES", "FORMATS", "Axes", "PlotFile", "require_matplotlib", "tradeoff_axes", "write_plots",
           "plots_markdown", "add_plots_section"]

FORMATS = ("png", "svg")
STYLES = ("-", "--", ":", "-.")  # training curves: one colour per method row, one dash per seed
INSTALL_HINT = "pip install matplotlib (or: pip install 'unlearning-harness[plots]')"


@dataclass(frozen=True)
class Axes:
    forget: str            # aggregate key on the x axis
    utility: str           # aggregate key on the y axis
    forget_log: bool = False


#: benchmark -> (forget axis, utility axis). forget_quality spans many orders of magnitude: log scale.
TRADEOFF_AXES: dict[str, Axes] = {
    "synthetic": Axes("rouge_f", "model_utility"),
    "muse-news": Axes("knowmem_f", "knowmem_r"),
    "tofu": Axes("forget_quality", "model_utility", forget_log=True),
}


@dataclass(frozen=True)
class PlotFile:
    benchmark: str
    model: str
    kind: str                                   # "tradeoff" or "training"
    title: str
    paths: dict[str, Path] = field(default_factory=dict)  # format -> path


def require_matplotlib():
    """The matplotlib module, or a HarnessError that says how to install it."""
    try:
        import matplotlib
        import matplotlib.style  # noqa: F401  (a submodule: not loaded by `import matplotlib`)
    except ImportError:
        raise HarnessError(f"plots need matplotlib, which is not installed: {INSTALL_HINT}.") from None
    return matplotlib


def tradeoff_axes(benchmark: str, columns: Sequence[Column]) -> Axes | None:
    if benchmark in TRADEOFF_AXES:
        return TRADEOFF_AXES[benchmark]
    forget = next((c for c in columns if c.family in ("knowledge", "verbatim")), None)
    utility = next((c for c in columns if c.family == "utility"), None)
    return Axes(forget.key, utility.key) if forget and utility else None


def _slug(text: str) -> str:
    from harness.run.results import slug

    return slug(text)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    return float(value)


def _mean(records: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = []
    for record in records:
        aggregates = record.get("aggregates")
        v = _number(aggregates.get(key)) if isinstance(aggregates, Mapping) else None
        if v is not None and math.isfinite(v):
            values.append(v)
    return math.fsum(values) / len(values) if values else None


def _axis_label(key: str, columns: Sequence[Column], role: str) -> str:
    column = next((c for c in columns if c.key == key), None)
    return f"{column.header() if column else key} ({role})"


def _new_figure(height: float = 4.8, layout: str | None = None, width: float = 6.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, folder: Path, stem: str, formats: Sequence[str]) -> dict[str, Path]:
    out = {}
    for fmt in formats:
        path = folder / f"{stem}.{fmt}"
        tmp = folder / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        try:
            fig.savefig(tmp, format=fmt, metadata=metadata)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        out[fmt] = path
    return out


def _tradeoff(benchmark: str, model: str, rows, columns: Sequence[Column], axes: Axes):
    points = []
    for row in rows:
        x, y = _mean(row.records, axes.forget), _mean(row.records, axes.utility)
        if x is None or y is None or (axes.forget_log and x <= 0):
            continue
        points.append((row, x, y))
    if not points:
        return None
    fig = _new_figure()
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in range(10)]
    shown: set[str] = set()
    n_method = 0
    labels: list[tuple[float, float, str]] = []
    for row, x, y in points:
        diverged = any((r.get("status") or "ok") != "ok" for r in row.records)
        label = row.label + (" (diverged)" if diverged else "")
        if row.kind == "reference" and row.method == "retain":
            style = dict(marker="*", s=260, color="gold", edgecolors="black", linewidths=0.8, zorder=4)
            legend, label = "retain model (goal)", f"{row.label} (goal)"
        elif row.kind == "reference":
            style = dict(marker="s", s=60, color="0.45", edgecolors="black", linewidths=0.6, zorder=3)
            legend = "reference model"
        else:
            color = colors[n_method % len(colors)]
            n_method += 1
            style = dict(marker="o", s=50, zorder=3, edgecolors=color, linewidths=1.2,
                         color="none" if diverged else color)
            legend = "method (hollow: diverged)"
            if row.sweep is not None:   # every swept point (and its epochs), the selected one ringed
                swept = _swept_points(row, axes)
                if swept:
                    xs, ys = zip(*swept)
                    ax.plot(xs, ys, linestyle=":", linewidth=0.8, color=color, marker="x", markersize=5, zorder=2,
                            label=None if "swept point" in shown else "swept point (ringed: the selected one)")
                    shown.add("swept point")
                ax.scatter([x], [y], marker="o", s=170, facecolors="none", edgecolors="black", linewidths=1.1, zorder=4)
                label += f" ({row.sweep.shown.removeprefix('selected: ')})"
        ax.scatter([x], [y], label=None if legend in shown else legend, **style)
        shown.add(legend)
        labels.append((x, y, label))
    for x, y, text in _merged_labels(labels, axes.forget_log):
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
    if axes.forget_log:
        ax.set_xscale("log")
    ax.set_xlabel(_axis_label(axes.forget, columns, "forget"))
    ax.set_ylabel(_axis_label(axes.utility, columns, "utility"))
    ax.set_title(f"{benchmark} — {model}: forget vs utility", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _swept_points(row, axes: Axes) -> list[tuple[float, float]]:
    """(forget, utility) of every swept point of a row, in grid order; a point run with per-epoch
    evaluation contributes each epoch (its scores in ``record["epochs"]``)."""
    out = []
    for _point, records in row.sweep.points:
        per_epoch = [(r, e) for r in records for e in (r.get("epochs") or [])]
        if per_epoch:
            by_epoch: dict[Any, list] = {}
            for _r, e in per_epoch:
                by_epoch.setdefault(e.get("epoch"), []).append({"aggregates": e.get("aggregates") or {}})
            candidates = [by_epoch[k] for k in sorted(by_epoch, key=lambda k: (k is None, k))]
        else:
            candidates = [records]
        for group in candidates:
            x, y = _mean(group, axes.forget), _mean(group, axes.utility)
            if x is not None and y is not None and not (axes.forget_log and x <= 0):
                out.append((x, y))
    return out


#: two points closer than this (fractions of the axes' data range, x then y) share one label
LABEL_CLEARANCE = (0.10, 0.045)


def _merged_labels(points: Sequence[tuple[float, float, str]], x_log: bool = False) -> list[tuple[float, float, str]]:
    """One label per group of points that would overlap on the page, listing the group's rows.

    Groups are formed greedily in the given (row) order; distances are measured as fractions of
    the data range of each axis (log10 for a log axis), so the rule does not depend on units.
    A group's label sits at its first point; long lists wrap after three names.
    """
    def coord(x: float, y: float) -> tuple[float, float]:
        return (math.log10(x) if x_log and x > 0 else x), y

    xy = [coord(x, y) for x, y, _ in points]
    span_x = (max(p[0] for p in xy) - min(p[0] for p in xy)) if xy else 0.0
    span_y = (max(p[1] for p in xy) - min(p[1] for p in xy)) if xy else 0.0
    groups: list[list[int]] = []
    for i, (x, y) in enumerate(xy):
        for group in groups:
            gx, gy = xy[group[0]]
            if abs(x - gx) <= LABEL_CLEARANCE[0] * span_x and abs(y - gy) <= LABEL_CLEARANCE[1] * span_y:
                group.append(i)
                break
        else:
            groups.append([i])
    out = []
    for group in groups:
        names = [points[i][2] for i in group]
        lines = [", ".join(names[k : k + 3]) for k in range(0, len(names), 3)]
        out.append((points[group[0]][0], points[group[0]][1], ",\n".join(lines)))
    return out


def _robustness(benchmark: str, model: str, rows, columns: Sequence[Column]):
    """Residual share (%) of each forget column per method row, one panel per attack, with 95% intervals.

    An attack whose guard failed, or that had nothing to read, gets its panel with the reason
    instead of bars. One legend for the whole figure; the y range covers every bar and whisker.
    """
    import textwrap

    from matplotlib.patches import Patch

    from harness.attacks.scores import DAMAGED, distance_columns

    from .robustness import attack_tables

    tables = attack_tables(rows, columns)
    if not tables:
        return None
    keys = [c for c in distance_columns(columns) if c.interval is not None]
    n_methods = max(1, max(sum(ln.kind == "method" for ln in t.lines) for t in tables))
    fig = _new_figure(height=1.2 + 2.5 * len(tables), width=max(6.4, 1.0 + 0.35 * n_methods * max(1, len(keys))))
    handles = {}
    for i, table in enumerate(tables):
        ax = fig.add_subplot(len(tables), 1, i + 1)
        methods = [ln for ln in table.lines if ln.kind == "method"]
        ax.set_title(table.title, fontsize=9, loc="left")
        if table.guard is None or not table.guard.passed or not methods:
            if table.guard is None:
                why = table.why_no_guard
            elif table.guard.damaged:
                why = f"{DAMAGED}: " + "; ".join(table.guard.reasons)
            else:
                why = "nothing to read: the target and the retain model do not differ beyond the noise"
            ax.text(0.5, 0.5, textwrap.fill(why, 90), ha="center", va="center", fontsize=7, transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        width = 0.8 / max(1, len(keys))
        ends = [0.0, 100.0]
        for j, c in enumerate(keys):   # every column in the legend, bars or not: the slots stay readable
            handles.setdefault(c.key, Patch(color=f"C{j % 10}"))
        for j, c in enumerate(keys):
            for n, line in enumerate(methods):
                x = n + (j - (len(keys) - 1) / 2) * width
                share = line.shares.get(c.key) or {}
                if share.get("value") is None:   # no share: the gap is inside the noise, or a value is missing
                    handles["none"] = ax.scatter([x], [0], marker="x", s=14, color="0.4", zorder=3)
                    continue
                y = 100 * share["value"]
                ax.bar([x], [y], width * 0.9, color=f"C{j % 10}")
                ends.append(y)
                if share.get("lo") is not None:
                    lo, hi = 100 * share["lo"], 100 * share["hi"]
                    ax.errorbar([x], [y], yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]], fmt="none", ecolor="black",
                                elinewidth=0.7, capsize=2)
                    ends += [lo, hi]
        low, high = min(ends), max(ends)
        pad = 0.08 * (high - low)
        ax.set_ylim(low - pad, high + pad)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.axhline(100, color="0.5", linewidth=0.6, linestyle="--")
        ax.set_xticks(range(len(methods)))
        slant = {"rotation": 30, "ha": "right"} if len(methods) > 6 else {}
        ax.set_xticklabels([ln.label for ln in methods], fontsize=7, **slant)
        ax.set_ylabel("residual share (%)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    # header, in inches from the top: a two-line title, then the legend, then the panels
    height = fig.get_figheight()
    fig.suptitle(f"{benchmark} — {model}\nresidual share = (method − retain) / (target − retain), all attacked; "
                 "0 = never trained, 100% = target", fontsize=8, y=1 - 0.08 / height, va="top")
    labels = {c.key: c.label for c in keys}
    if handles:
        order = [k for k in (*labels, "none") if k in handles]
        names = [labels.get(k, "no share (gap within the noise)") for k in order]
        fig.legend([handles[k] for k in order], names, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.42 / height),
                   ncol=min(len(order), 5), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.65 if handles else 0.45) / height))
    return fig


@dataclass
class _Run:
    """One method record's curves: loss per step and, with ``eval.per_epoch``, scores per epoch."""

    label: str
    panel: str                                    # the leaderboard row: one small-multiple panel each
    color: str
    dash: str
    diverged: bool
    losses: list[float]
    epochs: list[tuple[int, Mapping[str, Any]]]   # (epoch, aggregates)
    chosen: int | None                            # the epoch a non-'last' selection rule reported


def _epochs_of(record: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    out = []
    for entry in record.get("epochs") or []:
        if isinstance(entry, Mapping) and _number(entry.get("epoch")) is not None and isinstance(entry.get("aggregates"), Mapping):
            out.append((int(entry["epoch"]), entry["aggregates"]))
    return out


def _chosen_epoch(record: Mapping[str, Any]) -> int | None:
    chosen = record.get("selection")
    if not isinstance(chosen, Mapping) or chosen.get("rule") in (None, "last"):
        return None
    epoch = _number(chosen.get("epoch"))
    return int(epoch) if epoch is not None else None


def _runs(rows) -> list[_Run]:
    """Every method record with a loss curve or per-epoch scores; one colour per row, one dash per seed."""
    runs: list[_Run] = []
    n_rows = 0
    labels = [r.label for r in rows if r.kind == "method"]
    for row in rows:
        if row.kind != "method":
            continue
        for i, record in enumerate(row.records):
            losses = (record.get("training") or {}).get("losses")
            losses = losses if isinstance(losses, list) else []
            epochs = _epochs_of(record)
            if not losses and not epochs:
                continue
            ys = [v if (v := _number(x)) is not None and math.isfinite(v) else math.nan for x in losses]
            label = row.label
            if labels.count(row.label) > 1:
                label += f" [{row.config_id}]"
            if len(row.records) > 1:
                label += f" (seed {_text(record.get('seed'))})"
            panel = row.label + (f" [{row.config_id}]" if labels.count(row.label) > 1 else "")
            runs.append(_Run(label, panel, f"C{n_rows % 10}", STYLES[i % len(STYLES)],
                             (record.get("status") or "ok") == "diverged", ys, epochs, _chosen_epoch(record)))
        n_rows += 1
    return runs


def _draw_losses(fig, spec, runs: Sequence[_Run], benchmark: str, model: str) -> None:
    """Small multiples: one panel per method row (its seeds as dashes), each with its own y scale."""
    from matplotlib.ticker import MaxNLocator

    panels: dict[str, list[_Run]] = {}
    for run in runs:
        if run.losses:
            panels.setdefault(run.panel, []).append(run)
    ncols = min(3, max(1, len(panels)))
    nrows = max(1, math.ceil(len(panels) / ncols))
    grid = spec.subgridspec(nrows, ncols)
    for i, (name, members) in enumerate(panels.items()):
        ax = fig.add_subplot(grid[i // ncols, i % ncols])
        for run in members:
            ys = run.losses
            steps = list(range(1, len(ys) + 1))
            ax.plot(steps, ys, label=run.label, color=run.color, linestyle=run.dash, linewidth=1.2,
                    marker="." if len(ys) <= 30 else None)
            if run.diverged:
                finite = [(s, y) for s, y in zip(steps, ys) if not math.isnan(y)]
                if finite:
                    ax.plot([finite[-1][0]], [finite[-1][1]], marker="x", markersize=9, color=run.color)
        magnitudes = sorted(abs(y) for run in members for y in run.losses if not math.isnan(y))
        if magnitudes and magnitudes[-1] > 1 and magnitudes[-1] > 50 * max(magnitudes[len(magnitudes) // 2], 1e-12):
            ax.set_yscale("symlog", linthresh=1.0)  # one exploding run would flatten the rest of its curve
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
        ax.tick_params(labelsize=7)
        ax.set_title(name, fontsize=8)
        ax.grid(True, alpha=0.3)
        if i % ncols == 0:
            ax.set_ylabel("training loss", fontsize=8)
        if i // ncols == nrows - 1:
            ax.set_xlabel("optimiser step", fontsize=8)
        if len(members) > 1:
            ax.legend(fontsize=6, loc="best")
    fig.suptitle(f"{benchmark} — {model}: training loss per step (own y scale per method)", fontsize=10)


def _draw_epochs(ax, runs: Sequence[_Run], key: str, columns: Sequence[Column], role: str,
                 retain: float | None, log: bool = False) -> None:
    """One metric per epoch for every run; the reported epoch ringed; the retain model's value dotted."""
    from matplotlib.ticker import MaxNLocator

    for run in runs:
        points = [(e, v) for e, agg in run.epochs if (v := _number(agg.get(key))) is not None
                  and math.isfinite(v) and not (log and v <= 0)]
        if not points:
            continue
        ax.plot([e for e, _ in points], [v for _, v in points], color=run.color, linestyle=run.dash,
                linewidth=1.2, marker=".")
        chosen = [(e, v) for e, v in points if e == run.chosen]
        if chosen:
            ax.plot([chosen[0][0]], [chosen[0][1]], marker="o", markersize=9, markerfacecolor="none",
                    markeredgecolor=run.color, markeredgewidth=1.4)
    if retain is not None and math.isfinite(retain) and not (log and retain <= 0):
        ax.axhline(retain, color="0.35", linestyle=":", linewidth=1.0, label="retain model")
        ax.legend(fontsize=7, loc="best")
    if log:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (ring: reported checkpoint)" if any(r.chosen is not None for r in runs) else "epoch")
    ax.set_ylabel(_axis_label(key, columns, role), fontsize=8)
    ax.grid(True, alpha=0.3)


def _loss_panels(runs: Sequence[_Run]) -> int:
    return len({r.panel for r in runs if r.losses})


def _training(benchmark: str, model: str, rows, columns: Sequence[Column] = (), axes: Axes | None = None):
    """Loss per step (small multiples); with per-epoch evaluations also forget and utility scores per epoch."""
    runs = _runs(rows)
    if not any(r.losses for r in runs) and not (axes and any(r.epochs for r in runs)):
        return None
    loss_rows = math.ceil(_loss_panels(runs) / 3)
    loss_height = 0.6 + 2.0 * loss_rows
    if not axes or not any(r.epochs for r in runs):
        fig = _new_figure(height=max(3.0, loss_height), layout="constrained")
        _draw_losses(fig, fig.add_gridspec(1, 1)[0, 0], runs, benchmark, model)
        return fig
    retain = next((r.records for r in rows if r.kind == "reference" and r.method == "retain"), [])
    fig = _new_figure(height=loss_height + 3.4, layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=(max(loss_height, 0.1), 3.0))
    if loss_rows:
        _draw_losses(fig, grid[0, :], runs, benchmark, model)
    else:
        fig.suptitle(f"{benchmark} — {model}: scores per epoch", fontsize=10)
    _draw_epochs(fig.add_subplot(grid[1, 0]), runs, axes.forget, columns, "forget", _mean(retain, axes.forget),
                 axes.forget_log)
    _draw_epochs(fig.add_subplot(grid[1, 1]), runs, axes.utility, columns, "utility", _mean(retain, axes.utility))
    return fig


def write_plots(records: Sequence[Mapping[str, Any]], columns: Mapping[str, Sequence[Column]],
                folder: str | os.PathLike, formats: Sequence[str] = FORMATS) -> list[PlotFile]:
    """Write the trade-off and training-curve plots of every (benchmark, model); return what was written.

    Sections with nothing to plot (no point with both values; no recorded losses) are skipped.
    """
    mpl = require_matplotlib()
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise HarnessError(f"unknown plot format(s) {', '.join(unknown)}; known: {', '.join(FORMATS)}.")
    folder = Path(folder)
    sections: dict[tuple[str, str, str], list[dict]] = {}
    for record in records:
        sections.setdefault(section_key(record), []).append(dict(record))

    written: list[PlotFile] = []
    rc = {"svg.hashsalt": "unlearning-harness", "svg.fonttype": "path", "path.simplify": True}
    with mpl.style.context("default"), mpl.rc_context(rc):
        for benchmark, model, cut in sorted(sections):
            cols = list(columns.get(benchmark) or [])
            group = sections[(benchmark, model, cut)]
            rows = _build_rows(sorted(group, key=_record_key), cols)
            stem = f"{_slug(benchmark)}-{_slug(model)}" + (f"-{_slug(cut.replace('--', ''))}" if cut else "")
            name = f"{model} — {cut}" if cut else model    # the section's title after the benchmark
            axes = tradeoff_axes(benchmark, cols)
            per_epoch = axes is not None and any(_epochs_of(r) for r in group)
            figures = [
                ("tradeoff", "forget vs utility", _tradeoff(benchmark, name, rows, cols, axes) if axes else None),
                ("training", "training loss per step" + (" and scores per epoch" if per_epoch else ""),
                 _training(benchmark, name, rows, cols, axes)),
                ("robustness", "residual share per method under each attack", _robustness(benchmark, name, rows, cols)),
            ]
            for kind, title, fig in figures:
                if fig is None:
                    continue
                folder.mkdir(parents=True, exist_ok=True)
                paths = _save(fig, folder, f"{kind}-{stem}", formats)
                written.append(PlotFile(benchmark, name, kind, title, paths))
    return written


def _target(path: Path, base: Path) -> str:
    rel = os.path.relpath(Path(path).resolve(), Path(base).resolve()).replace(os.sep, "/")
    return quote(rel, safe="/-._~+=,@:")


def plots_markdown(files: Sequence[PlotFile], base: str | os.PathLike) -> str:
    """A '## Plots' section linking ``files`` relative to the folder ``base`` (the Markdown's folder)."""
    parts = ["## Plots"]
    if not files:
        parts.append("Nothing to plot: no record has both a forget and a utility value, or training losses.")
    current = None
    for f in files:
        if (f.benchmark, f.model) != current:
            current = (f.benchmark, f.model)
            parts.append(f"### {f.benchmark} — {f.model}")
        image = f.paths.get("svg") or f.paths.get("png") or next(iter(f.paths.values()))
        links = ", ".join(f"[{fmt.upper()}]({_target(p, Path(base))})" for fmt, p in f.paths.items())
        parts.append(f"![{f.benchmark} — {f.model}: {f.title}]({_target(image, Path(base))})\n\n"
                     f"{f.title.capitalize()}: {links}.")
    return "\n\n".join(parts)


def add_plots_section(markdown_path: str | os.PathLike, files: Sequence[PlotFile]) -> str:
    """Append the Plots section to an already written leaderboard (atomically); return the new text."""
    from harness.run.results import atomic_write_text

    path = Path(markdown_path)
    text = path.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + plots_markdown(files, path.parent) + "\n"
    atomic_write_text(path, text)
    return text
