"""CSV/JSON exports (same rows and values as the Markdown), plots (PNG+SVG, deterministic), CLI flags."""
from __future__ import annotations

import copy
import csv
import io
import json
import math
import random
import sys

import pytest

from harness.errors import HarnessError
from harness.leaderboard.columns import Column
from harness.leaderboard.export import leaderboard_frame, render_csv, render_json, write_exports
from harness.leaderboard.markdown import format_value, render_leaderboard
from harness.run.results import record_path, write_record

COLUMNS = {
    "synthetic": [
        Column("verbmem_f", "VerbMem f", "down", "verbatim", digits=1),
        Column("rouge_f", "ROUGE f", "down", "knowledge", digits=3),
        Column("privleak", "PrivLeak", "ref", "privacy", target=0.0, digits=1),
        Column("model_utility", "Utility", "up", "utility", digits=3),
    ],
    "tofu": [
        Column("forget_quality", "Forget quality", "up", "knowledge", digits=4),
        Column("model_utility", "Model utility", "up", "utility", digits=3),
    ],
}


def rec(benchmark, method, seed, aggregates, *, kind="method", row=None, cid="0000aaaa", status="ok",
        model="smollm2-135m", losses=(1.0, 0.4, -0.2), step=None, stand_in=None):
    return {
        "schema": 1,
        "benchmark": benchmark, "model": model, "method": method, "row": row or method.upper(), "kind": kind,
        "seed": seed, "config_id": cid, "status": status, "aggregates": aggregates,
        "path": f"{benchmark}/{model}/{method}/{cid}-seed{seed}.json",
        "settings": "lr=1e-05, epochs=1" if kind == "method" else "evaluation only",
        "config": {"benchmark": benchmark, "benchmark_config": {}, "method": method, "method_config": {}},
        "data": {"source": "fixture", "stand_in": stand_in},
        "training": {"losses": list(losses) if kind == "method" else [], "logs": [], "diverged_at_step": step,
                     "last_finite_loss": -0.2},
        "commit": "abc1234",
    }


def records():
    syn = "synthetic"
    return [
        rec(syn, "target", 0, {"verbmem_f": 88.0, "rouge_f": 0.98, "privleak": -72.3, "model_utility": 0.905},
            kind="reference", row="Target", cid="7a7a7a7a"),
        rec(syn, "retain", 0, {"verbmem_f": 21.3, "rouge_f": 0.327, "privleak": 0.0, "model_utility": 0.956},
            kind="reference", row="Retain", cid="8b8b8b8b"),
        rec(syn, "ga", 0, {"verbmem_f": 50.5, "rouge_f": 0.52, "privleak": -75.1, "model_utility": 0.788}, row="GA"),
        rec(syn, "ga", 1, {"verbmem_f": 48.25, "rouge_f": 0.5, "privleak": -70.0, "model_utility": 0.8}, row="GA"),
        rec(syn, "npo", 0, {"verbmem_f": 40.0, "rouge_f": 0.55, "privleak": -60.0}, row="NPO",
            losses=(13.8, 10.5, 6.8), stand_in="retain split stands in"),
        rec(syn, "npo", 1, {"verbmem_f": 42.0, "rouge_f": 0.57, "privleak": -61.0, "model_utility": 0.79}, row="NPO",
            losses=(13.9, 10.0, 7.0)),
        rec(syn, "graddiff", 0, {"verbmem_f": 0.0, "rouge_f": 0.0, "privleak": 50.0, "model_utility": 0.1},
            row="GradDiff", status="diverged", step=2, losses=(0.2, -500.0, float("nan"))),
        rec("tofu", "target", 0, {"forget_quality": 1.27e-3, "model_utility": 0.61}, kind="reference",
            row="Target", cid="7c7c7c7c"),
        rec("tofu", "retain", 0, {"forget_quality": 1.0, "model_utility": 0.63}, kind="reference", row="Retain",
            cid="8d8d8d8d"),
        rec("tofu", "ga", 0, {"forget_quality": 1.2e-20, "model_utility": 0.4}, row="GA", cid="9e9e9e9e"),
    ]


def md_rows(text: str) -> dict[tuple[str, str, str], dict[str, str]]:
    """{(benchmark, model, row label): {header: cell}} of every section of a leaderboard."""
    out = {}
    for block in text.split("\n## ")[1:]:
        benchmark, model = block.splitlines()[0].split(" — ")
        lines = [l for l in block.splitlines() if l.startswith("|")]
        split = lambda l: [c.strip() for c in l.strip("|").split(" | ")]  # noqa: E731
        headers = split(lines[0])
        for line in lines[2:]:
            cells = split(line)
            label = cells[0]
            if label.startswith("["):
                label = label[1:label.index("]")]
            out[(benchmark, model, label.rstrip("⁰¹²³⁴⁵⁶⁷⁸⁹,"))] = dict(zip(headers, cells))
    return out


def expected_cell(mean, std, digits) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    text = format_value(mean, digits)
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += " sd " + format_value(std, digits)
    return text


def test_exports_hold_the_markdown_rows_and_values():
    recs = records()
    board = md_rows(render_leaderboard(recs, COLUMNS))
    csv_rows = list(csv.DictReader(io.StringIO(render_csv(recs, COLUMNS))))
    json_rows = json.loads(render_json(recs, COLUMNS))["rows"]
    assert [(r["benchmark"], r["model"], r["row"]) for r in csv_rows] == list(board)  # same rows, same order
    assert [(r["benchmark"], r["model"], r["row"]) for r in json_rows] == list(board)
    checked = 0
    for crow, jrow in zip(csv_rows, json_rows):
        md = board[(crow["benchmark"], crow["model"], crow["row"])]
        assert md["Seed(s)"] == crow["seeds"] == jrow["seeds"]
        for column in COLUMNS[crow["benchmark"]]:
            cell = md[column.header()].strip("*")
            mean = float(crow[column.key]) if crow[column.key] else None
            std = float(crow[f"{column.key}_std"]) if crow[f"{column.key}_std"] else None
            assert jrow[column.key] == mean and jrow[f"{column.key}_std"] == std
            assert cell.split(" (")[0] == expected_cell(mean, std, column.digits), (crow["row"], column.key)
            checked += 1
    assert checked == 5 * 4 + 3 * 2
    ga = next(r for r in json_rows if r["benchmark"] == "synthetic" and r["row"] == "GA")
    assert ga["verbmem_f"] == pytest.approx(49.375) and ga["n_seeds"] == 2 and ga["forget_quality"] is None
    npo = next(r for r in json_rows if r["row"] == "NPO")
    assert npo["model_utility"] == 0.79 and npo["model_utility_std"] is None  # 1 of 2 seeds
    assert "stand-in data" in npo["notes"]
    gd = next(r for r in json_rows if r["row"] == "GradDiff")
    assert gd["status"] == "diverged" and "diverged at step 2" in gd["notes"]
    tofu_ga = next(r for r in json_rows if r["benchmark"] == "tofu" and r["row"] == "GA")
    assert tofu_ga["forget_quality"] == 1.2e-20 and tofu_ga["verbmem_f"] is None


def test_json_carries_the_column_definitions():
    doc = json.loads(render_json(records(), COLUMNS))
    assert doc["schema"] == 1 and list(doc["columns"]) == ["synthetic", "tofu"]
    privleak = next(c for c in doc["columns"]["synthetic"] if c["key"] == "privleak")
    assert privleak == {"key": "privleak", "label": "PrivLeak", "header": "PrivLeak → 0", "direction": "ref",
                        "target": 0.0, "family": "privacy", "digits": 1, "interval": False}


def test_exports_are_deterministic(tmp_path):
    recs = records()
    shuffled = copy.deepcopy(recs)
    random.Random(7).shuffle(shuffled)
    assert render_csv(shuffled, COLUMNS) == render_csv(recs, COLUMNS)
    assert render_json(shuffled, COLUMNS) == render_json(recs, COLUMNS)
    paths = write_exports(recs, COLUMNS, tmp_path)
    assert [p.name for p in paths] == ["LEADERBOARD.csv", "LEADERBOARD.json"]
    first = [p.read_bytes() for p in paths]
    write_exports(shuffled, COLUMNS, tmp_path)
    assert [p.read_bytes() for p in paths] == first
    assert not list(tmp_path.glob(".*.tmp"))
    assert len(leaderboard_frame(recs, COLUMNS)) == 8


def test_no_records_exports_header_only():
    assert render_csv([], COLUMNS).startswith("benchmark,model,data_cut,row,")
    assert json.loads(render_json([], COLUMNS))["rows"] == []


# --------------------------------------------------------------------------- plots


def test_missing_matplotlib_names_the_install(monkeypatch):
    from harness.leaderboard import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(HarnessError, match=r"pip install matplotlib.*\[plots\]"):
        plots.write_plots(records(), COLUMNS, "unused")


def test_plots_png_and_svg_deterministic(tmp_path):
    pytest.importorskip("matplotlib")
    from harness.leaderboard.plots import plots_markdown, write_plots

    recs = records()
    first = write_plots(recs, COLUMNS, tmp_path / "a")
    shuffled = copy.deepcopy(recs)
    random.Random(1).shuffle(shuffled)
    second = write_plots(shuffled, COLUMNS, tmp_path / "b")
    names = sorted(p.name for f in first for p in f.paths.values())
    assert names == sorted(f"{kind}-{bench}-smollm2-135m.{ext}" for kind, bench in
                           [("tradeoff", "synthetic"), ("training", "synthetic"), ("tradeoff", "tofu"),
                            ("training", "tofu")] for ext in ("png", "svg"))
    for a, b in zip(first, second):
        for fmt in ("png", "svg"):
            assert a.paths[fmt].read_bytes() == b.paths[fmt].read_bytes(), a.paths[fmt].name
    png = (tmp_path / "a" / "tradeoff-synthetic-smollm2-135m.png").read_bytes()
    svg = (tmp_path / "a" / "tradeoff-synthetic-smollm2-135m.svg").read_text()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert "<svg" in svg and "Retain (goal)" in svg and "retain model (goal)" in svg  # text kept as comments
    section = plots_markdown(first, tmp_path)
    assert section.startswith("## Plots") and "![synthetic — smollm2-135m: forget vs utility](a/tradeoff-synthetic-" in section
    assert not list((tmp_path / "a").glob(".*.tmp"))


def test_nothing_to_plot_writes_nothing(tmp_path):
    pytest.importorskip("matplotlib")
    from harness.leaderboard.plots import write_plots

    bare = [rec("synthetic", "target", 0, {"verbmem_f": 1.0}, kind="reference", row="Target")]
    assert write_plots(bare, COLUMNS, tmp_path / "p") == []
    assert not (tmp_path / "p").exists()


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def store(tmp_path):
    results = tmp_path / "results"
    for r in records():
        if r["benchmark"] != "synthetic":
            continue
        r = dict(r)
        r.pop("path")
        write_record(record_path(results, r["benchmark"], r["model"], r["method"], r["config_id"], r["seed"]), r)
    return results


def test_leaderboard_flags(store, capsys):
    from harness.cli import main

    assert main(["leaderboard", "--results-dir", str(store)]) == 0
    board = store / "LEADERBOARD.md"
    default = board.read_bytes()
    assert not (store / "LEADERBOARD.csv").exists() and not (store / "plots").exists()

    assert main(["leaderboard", "--results-dir", str(store), "--csv", "--json"]) == 0
    out = capsys.readouterr().out
    assert f"export: {store / 'LEADERBOARD.csv'}" in out and f"export: {store / 'LEADERBOARD.json'}" in out
    assert board.read_bytes() == default  # the Markdown is unchanged by exports
    rows = list(csv.DictReader(io.StringIO((store / "LEADERBOARD.csv").read_text())))
    assert [r["row"] for r in rows] == [k[2] for k in md_rows(default.decode())]
    assert json.loads((store / "LEADERBOARD.json").read_text())["rows"][0]["row"] == "Target"

    pytest.importorskip("matplotlib")
    assert main(["leaderboard", "--results-dir", str(store), "--plots"]) == 0
    text = board.read_text()
    assert text.startswith(default.decode().rstrip("\n") + "\n\n## Plots\n")
    targets = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert targets == ["plots/tradeoff-synthetic-smollm2-135m.svg", "plots/training-synthetic-smollm2-135m.svg"]
    assert all((store / t).is_file() and (store / t).with_suffix(".png").is_file() for t in targets)
    again = text
    assert main(["leaderboard", "--results-dir", str(store), "--plots"]) == 0
    assert board.read_text() == again  # regenerated, not appended twice
    assert main(["leaderboard", "--results-dir", str(store)]) == 0
    assert board.read_bytes() == default  # without --plots: byte-identical to before


def test_leaderboard_plots_without_matplotlib(store, capsys, monkeypatch):
    from harness.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["leaderboard", "--results-dir", str(store), "--plots"]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err
    assert not (store / "LEADERBOARD.md").exists()  # refused before anything was written
