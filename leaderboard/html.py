"""The leaderboard as one static, self-contained web page (styles, script and plots inline; no network).

Built from the same rows as LEADERBOARD.md (``markdown._build_rows``): one table per (benchmark, model,
data cut) section, the same values, notes and best-row marks. On top of the Markdown: a click on a column
header sorts that table, two filters (method, benchmark) hide rows and sections, each row links to its
record and shows its settings, commit and config on hover and in an expandable cell. Cells read as in
the Markdown (mean ±half-width of the bootstrap interval, ≈, ≤, the KS D, the no-op flags: all
computed by the rows it shares), with the interval's bounds written out beside each.
"""
from __future__ import annotations

import base64
import html
import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

from .columns import DIRECTIONS, Column, lm_eval_columns
from .markdown import (_best_rows, _build_rows, _data_cut, _number, _record_key, _settings_text, _text, _unique,
                       section_key, section_title)
from .robustness import render_robustness

__all__ = ["render_html", "write_html"]

STYLE = """
:root { --fg:#1d2430; --muted:#5b6472; --line:#d9dee5; --head:#f3f5f8; --best:#e3f2e6; --link:#1a5fb4; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0 auto;
       max-width: 1500px; padding: 16px 24px 48px; }
h1 { font-size: 22px; margin: 4px 0 12px; } h2 { font-size: 17px; margin: 28px 0 6px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.controls { position: sticky; top: 0; background: #fff; padding: 8px 0; border-bottom: 1px solid var(--line);
            display: flex; gap: 16px; align-items: center; flex-wrap: wrap; z-index: 2; }
.controls label { color: var(--muted); } select { font: inherit; padding: 2px 6px; }
.intro { color: var(--muted); max-width: 1200px; margin: 4px 0 8px; }
.wrap { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 9px; border-bottom: 1px solid var(--line); text-align: right; vertical-align: top; white-space: nowrap; }
th { background: var(--head); position: relative; }
th.sortable { cursor: pointer; user-select: none; } th.sortable:hover { background: #e6eaf0; }
th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 10px; }
th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 10px; }
td.text, th.text { text-align: left; } td.settings { text-align: left; white-space: normal; min-width: 220px; max-width: 420px; color: var(--muted); }
td.best { background: var(--best); font-weight: 600; }
tr.reference td:first-child::before { content: "ref "; color: var(--muted); font-size: 11px; }
tr.imported td:first-child::before { content: "imported "; color: #8a4b00; font-size: 11px; }
.ci { display: block; color: var(--muted); font-size: 11px; } .sig { color: #b00020; }
a { color: var(--link); text-decoration: none; } a:hover { text-decoration: underline; }
details summary { cursor: pointer; } details div { font-size: 12px; white-space: normal; }
ol.notes { color: var(--muted); font-size: 13px; } figure { margin: 12px 0; } figure svg, figure img { max-width: 100%; height: auto; }
.empty { color: var(--muted); font-style: italic; }
"""

SCRIPT = """
(function () {
  function key(cell) {
    var v = cell.getAttribute('data-value');
    if (v !== null && v !== '') { var n = parseFloat(v); if (!isNaN(n)) return [0, n, ''];}
    if (v === '') return [2, 0, ''];
    return [1, 0, cell.textContent.trim().toLowerCase()];
  }
  function compare(a, b) {
    if (a[0] !== b[0]) return a[0] - b[0];
    if (a[1] !== b[1]) return a[1] < b[1] ? -1 : 1;
    return a[2] < b[2] ? -1 : (a[2] > b[2] ? 1 : 0);
  }
  document.querySelectorAll('table.board').forEach(function (table) {
    table.querySelectorAll('th.sortable').forEach(function (th, _) {
      th.addEventListener('click', function () {
        var index = Array.prototype.indexOf.call(th.parentNode.children, th);
        var ascending = th.getAttribute('aria-sort') !== 'ascending';
        table.querySelectorAll('th.sortable').forEach(function (o) { o.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r1, r2) {
          var a = key(r1.cells[index]), b = key(r2.cells[index]);
          if (a[0] !== b[0]) return a[0] - b[0];          // missing values stay last either way
          var c = compare(a, b);
          return ascending ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  var method = document.getElementById('filter-method'), bench = document.getElementById('filter-benchmark');
  function apply() {
    document.querySelectorAll('section.board').forEach(function (section) {
      var benchOk = !bench.value || section.getAttribute('data-benchmark') === bench.value;
      var shown = 0;
      section.querySelectorAll('tbody tr').forEach(function (row) {
        var ok = benchOk && (!method.value || row.getAttribute('data-method') === method.value);
        row.hidden = !ok; if (ok) shown += 1;
      });
      section.hidden = shown === 0;
    });
    var count = document.querySelectorAll('section.board tbody tr:not([hidden])').length;
    document.getElementById('shown').textContent = count + ' row(s) shown';
  }
  method.addEventListener('change', apply); bench.addEventListener('change', apply); apply();
})();
"""


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _mean(records: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [v for r in records if (v := _number((r.get("aggregates") or {}).get(key))) is not None]
    if not values or not all(math.isfinite(v) for v in values):
        return None
    return float(statistics.mean(values))


def _href(path: str, link_base: str) -> str:
    return quote(link_base + path.replace("\\", "/"), safe="/-._~+=,@:")


def _details(row) -> tuple[str, str]:
    """(hover text, expandable cell) with each seed's settings, commit, config id and source."""
    lines = []
    for r in row.records:
        parts = [f"seed {_text(r.get('seed'))}", _settings_text(r.get("settings")) or "no settings recorded",
                 f"commit {_text(r.get('commit')) or 'not recorded'}", f"config {_text(r.get('config_id'))}"]
        source = (r.get("data") or {}).get("source")
        if source:
            parts.append(f"data: {' '.join(str(source).split())}")
        lines.append("; ".join(parts))
    hover = "\n".join(lines)
    first = _settings_text(row.records[0].get("settings")) or "settings"
    body = "".join(f"<div>{_e(line)}</div>" for line in lines)
    return hover, f"<details><summary>{_e(first[:60] + ('…' if len(first) > 60 else ''))}</summary>{body}</details>"


def _markdown_table(text: str) -> str:
    """The robustness block (Markdown: paragraphs and one pipe table) as HTML."""
    out, table = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if table:
            head, *rest = table
            rest = [r for r in rest if not all(set(c) <= set("-: ") for c in r)]
            out.append('<div class="wrap"><table><thead><tr>' + "".join(f"<th>{_e(c)}</th>" for c in head)
                       + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rest)
                       + "</tbody></table></div>")
            table = []
        if line.strip():
            out.append(f'<p class="intro">{_e(line.strip().lstrip("#").strip())}</p>')
    return "\n".join(out)


def _section(benchmark: str, model: str, records: Sequence[Mapping[str, Any]], columns: Sequence[Column] | None,
             link_base: str) -> str:
    columns = list(columns or [])
    columns += lm_eval_columns(records, columns)   # as the Markdown page: eval.lm_eval_tasks' utility columns
    rows = _build_rows(records, columns)
    best = {c.key: _best_rows(rows, c) for c in columns}
    sources = sorted({str(s) for r in records if (s := (r.get("data") or {}).get("source"))})
    intro = f"Data: {'; '.join(sources) if sources else 'not recorded'}."
    cut = _data_cut(records)
    if cut:
        intro += f" Reduced: {cut}."
    numbers: dict[str, int] = {}
    heads = ['<th class="text sortable" data-key="row">Model / method</th>']
    heads += [f'<th class="sortable" data-key="{_e(c.key)}" title="{_e(DIRECTIONS[c.direction][1])}">{_e(c.header())}</th>'
              for c in columns]
    heads += ['<th class="sortable" data-key="seeds">Seed(s)</th>', '<th class="text">Settings, commit</th>']
    body = []
    for i, row in enumerate(rows):
        hover, details = _details(row)
        marks = []
        for note in row.notes:
            numbers.setdefault(note, len(numbers) + 1)
            marks.append(numbers[note])
        label = _e(row.label)
        path = row.records[0].get("path")
        if path:
            label = f'<a href="{_e(_href(str(path), link_base))}" title="{_e(hover)}">{label}</a>'
        else:
            label = f'<span title="{_e(hover)}">{label}</span>'
        if row.sweep is not None:   # the chosen setting and epoch of a swept method, as in the Markdown
            label += f' <span class="flag">({_e(row.sweep.shown)})</span>'
        if row.no_op:   # 'unchanged' / 'not distinguishable from the target', as in the Markdown
            label += f' <span class="flag">({_e("; ".join(row.no_op))})</span>'
        if marks:
            label += "<sup>" + ",".join(str(n) for n in _unique(str(m) for m in marks)) + "</sup>"
        cells = [f'<td class="text" data-value-text="{_e(row.label)}">{label}</td>']
        for c in columns:
            value = _mean(row.records, c.key)
            shown = row.values[c.key]   # the Markdown's cell: mean ±half-width, ≈, ≤, KS D
            text = _e(shown.shown(c))
            interval = shown.uncertainty.interval
            if interval is not None:
                text += f'<span class="ci">[{_e(c.format(interval.lo))}, {_e(c.format(interval.hi))}]</span>'
            sort_value = "" if value is None else repr(value)
            cls = ' class="best"' if i in best[c.key] else ""
            cells.append(f'<td{cls} data-value="{_e(sort_value)}">{text}</td>')
        seeds = ", ".join(_text(r.get("seed")) or "?" for r in row.records)
        cells.append(f'<td data-value="{len(row.records)}">{_e(seeds)}</td>')
        cells.append(f'<td class="settings">{details}</td>')
        body.append(f'<tr class="{_e(row.kind)}" data-method="{_e(row.method)}" data-kind="{_e(row.kind)}">' + "".join(cells) + "</tr>")
    title = section_title(benchmark, model, _data_cut(records, short=True))
    parts = [f'<section class="board" data-benchmark="{_e(benchmark)}" data-model="{_e(model)}">', f"<h2>{_e(title)}</h2>",
             f'<p class="intro">{_e(intro)}</p>',
             f'<div class="wrap"><table class="board"><thead><tr>{"".join(heads)}</tr></thead><tbody>{"".join(body)}</tbody></table></div>']
    if numbers:
        parts.append('<ol class="notes">' + "".join(f'<li value="{n}">{_e(note)}</li>' for note, n in numbers.items()) + "</ol>")
    robustness = render_robustness(rows, columns)
    if robustness:
        parts.append(_markdown_table(robustness))
    parts.append("</section>")
    return "\n".join(parts)


def _figure(plot) -> str:
    svg = plot.paths.get("svg")
    if svg is not None and Path(svg).is_file():
        text = Path(svg).read_text(encoding="utf-8")
        inner = text[text.find("<svg"):]   # drop the XML prolog and doctype: inline SVG needs neither
    else:
        png = plot.paths.get("png")
        data = base64.b64encode(Path(png).read_bytes()).decode() if png is not None and Path(png).is_file() else ""
        inner = f'<img alt="{_e(plot.title)}" src="data:image/png;base64,{data}">'
    return f'<figure>{inner}<figcaption>{_e(plot.benchmark)} — {_e(plot.model)}: {_e(plot.title)}</figcaption></figure>'


def render_html(records: Sequence[Mapping[str, Any]], columns: Mapping[str, Sequence[Column]], title: str = "Leaderboard",
                plots: Sequence[Any] = (), link_base: str = "") -> str:
    """The page; ``link_base`` is prefixed to record paths (the page's folder relative to the results)."""
    sections: dict[tuple[str, str, str], list[dict]] = {}
    for record in records:
        sections.setdefault(section_key(record), []).append(dict(record))
    methods = sorted({_text(r.get("method")) for r in records if _text(r.get("method"))})
    benchmarks = sorted({b for b, _, _ in sections})
    options = lambda values: "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)  # noqa: E731
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{_e(title)}</title>",
        f"<style>{STYLE}</style></head><body>", f"<h1>{_e(title)}</h1>",
        '<div class="controls"><label for="filter-method">Method</label>'
        f'<select id="filter-method"><option value="">all</option>{options(methods)}</select>'
        '<label for="filter-benchmark">Benchmark</label>'
        f'<select id="filter-benchmark"><option value="">all</option>{options(benchmarks)}</select>'
        '<span id="shown" class="intro"></span>'
        '<span class="intro">Click a column header to sort; hover a row name for its settings and commit.</span></div>',
    ]
    if not sections:
        parts.append('<p class="empty">No runs recorded yet.</p>')
    for benchmark, model, cut in sorted(sections):
        group = sorted(sections[(benchmark, model, cut)], key=_record_key)
        parts.append(_section(benchmark, model, group, columns.get(benchmark), link_base))
    if plots:
        parts.append('<section class="plots"><h2>Plots</h2>' + "".join(_figure(p) for p in plots) + "</section>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"


def write_html(records: Sequence[Mapping[str, Any]], columns: Mapping[str, Sequence[Column]], path: str | Path,
               title: str = "Leaderboard", plots: Sequence[Any] = (), link_base: str = "") -> Path:
    from harness.run.results import atomic_write_text

    atomic_write_text(Path(path), render_html(records, columns, title, plots, link_base))
    return Path(path)
