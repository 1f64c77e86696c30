"""Leaderboard rendering from fixture records: order, cells, aggregation, bold, notes, determinism."""
from __future__ import annotations

import copy
import random
import statistics

import pytest

from harness.leaderboard.columns import Column
from harness.leaderboard.markdown import format_value, render_leaderboard, write_leaderboard

COLUMNS = {
    "synthetic": [
        Column("verbmem_f", "VerbMem f", "down", "verbatim"),
        Column("knowmem_r", "KnowMem r", "up", "knowledge"),
        Column("privleak", "PrivLeak", "ref", "privacy", target=0.0),
        Column("fluency", "Fluency", "up", "utility", digits=2),
    ]
}


def rec(method, row, seed, aggregates, *, kind="method", cfg="3f2a9c1b", model="smollm2-135m",
        status="ok", stand_in=None, step=None, loss=None, commit="abc1234", benchmark="synthetic"):
    return {
        "benchmark": benchmark,
        "model": model,
        "method": method,
        "row": row,
        "kind": kind,
        "seed": seed,
        "config_id": cfg,
        "status": status,
        "aggregates": aggregates,
        "path": f"{benchmark}/{model}/{method}/{cfg}-seed{seed}.json",
        "settings": f"lr=1e-05, epochs=5, global_batch=8 ({method})",
        "data": {"source": "generated (seed 0)", "stand_in": stand_in},
        "training": {"diverged_at_step": step, "last_finite_loss": loss},
        "commit": commit,
    }


def fixture_records():
    return [
        rec("ga", "GA", 1, {"verbmem_f": 44.0, "knowmem_r": 30.5, "privleak": 8.0, "fluency": 0.5}),
        rec("npo", "NPO", 0, {"verbmem_f": 30.0, "knowmem_r": 35.0, "privleak": -3.0},
            stand_in="the retain split stands in for the holdout set"),
        rec("retain", "Retain", 0, {"verbmem_f": 20.0, "knowmem_r": 58.0, "privleak": 0.0, "fluency": 0.9},
            kind="reference"),
        rec("gd", "GradDiff", 0, {"verbmem_f": 0.1, "knowmem_r": 99.0, "privleak": 0.0, "fluency": 0.99},
            status="diverged", step=12, loss=-35.2),
        rec("ga", "GA", 0, {"verbmem_f": 40.0, "knowmem_r": 34.5, "privleak": 12.0, "fluency": 0.7}),
        rec("simnpo", "SimNPO", 0, {"verbmem_f": 30.0, "knowmem_r": 20.0, "privleak": 3.0, "fluency": 0.8}),
        rec("target", "Target", 0, {"verbmem_f": 80.0, "knowmem_r": 60.0, "privleak": -90.0, "fluency": 0.95},
            kind="reference"),
        rec("aa_ref", "Zeroed", 0, {"verbmem_f": 0.0}, kind="reference"),
    ]


def table_rows(text: str, heading: str | None = None) -> list[list[str]]:
    """The body rows of the first table (after ``heading`` if given), split into stripped cells."""
    lines = text.splitlines()
    if heading is not None:
        lines = lines[lines.index(heading):]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def header_cells(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith("|"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def by_label(rows):
    return {r[0].split("](")[0].lstrip("["): r for r in rows}


@pytest.fixture()
def text():
    return render_leaderboard(fixture_records(), COLUMNS)


# --------------------------------------------------------------------------- columns


def test_column_header_and_validation():
    assert Column("verbmem_f", "VerbMem f", "down", "verbatim").header() == "VerbMem f ↓"
    assert Column("knowmem_r", "KnowMem r", "up", "knowledge").header() == "KnowMem r ↑"
    assert Column("privleak", "PrivLeak", "ref", "privacy", target=0.0).header() == "PrivLeak → 0"
    assert Column("x", "X", "ref", "auxiliary", target=0.5).header() == "X → 0.5"
    with pytest.raises(ValueError, match="'up', 'down', 'ref'"):
        Column("x", "X", "higher", "utility")
    with pytest.raises(ValueError, match="target"):
        Column("x", "X", "ref", "privacy")
    with pytest.raises(ValueError, match="family"):
        Column("x", "X", "up", "speed")


# --------------------------------------------------------------------------- layout


def test_section_heading_source_legend_and_headers(text):
    assert text.startswith("# Leaderboard\n\n## synthetic — smollm2-135m\n\n")
    intro = text.splitlines()[4]
    assert intro.startswith("Data: generated (seed 0).")
    for phrase in ("↑ higher is better", "↓ lower is better", "→ closer to the given value is better"):
        assert phrase in intro
    assert header_cells(text) == [
        "Model / method", "VerbMem f ↓", "KnowMem r ↑", "PrivLeak → 0", "Fluency ↑", "Seed(s)", "Settings", "Commit",
    ]
    assert "|----" in text  # GitHub table delimiter row
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_reference_rows_first_then_methods_by_label(text):
    labels = [r[0].split("](")[0].lstrip("[") for r in table_rows(text)]
    assert labels == ["Target", "Retain", "Zeroed", "GA", "GradDiff", "NPO", "SimNPO"]


def test_label_links_to_record_of_first_seed(text):
    rows = by_label(table_rows(text))
    assert rows["GA"][0] == "[GA](synthetic/smollm2-135m/ga/3f2a9c1b-seed0.json)"
    assert rows["Target"][0] == "[Target](synthetic/smollm2-135m/target/3f2a9c1b-seed0.json)"


def test_cells_formatting_and_settings_commit(text):
    rows = by_label(table_rows(text))
    target = rows["Target"]
    assert target[1:5] == ["80.0", "60.0", "-90.0", "0.95"]
    assert target[5] == "0"
    assert target[6] == "lr=1e-05, epochs=5, global_batch=8 (target)"
    assert target[7] == "abc1234"
    assert rows["SimNPO"][4] == "**0.80**"  # digits=2 keeps the trailing zero


def test_missing_metric_is_na(text):
    rows = by_label(table_rows(text))
    assert rows["NPO"][4] == "n/a"
    assert rows["Zeroed"][2:5] == ["n/a", "n/a", "n/a"]


def test_mean_and_sample_std_over_two_seeds(text):
    ga = by_label(table_rows(text))["GA"]
    # verbmem_f: 40, 44 -> mean 42, sample std sqrt(((40-42)^2 + (44-42)^2) / 1) = sqrt(8) = 2.83
    assert ga[1] == "42.0 sd 2.8"
    # knowmem_r: 34.5, 30.5 -> mean 32.5, std 2.83
    assert ga[2] == "32.5 sd 2.8"
    # privleak: 12, 8 -> 10 sd 2.8
    assert ga[3] == "10.0 sd 2.8"
    # fluency (2 digits): 0.7, 0.5 -> 0.60 sd 0.14
    assert ga[4] == "0.60 sd 0.14"
    assert ga[5] == "0, 1"
    assert f"{statistics.stdev([40.0, 44.0]):.1f}" == "2.8"


def test_one_seed_missing_a_metric_says_so():
    records = [
        rec("ga", "GA", 0, {"verbmem_f": 40.0}),
        rec("ga", "GA", 1, {}),
    ]
    ga = by_label(table_rows(render_leaderboard(records, COLUMNS)))["GA"]
    assert ga[1] == "**40.0 (1/2 seeds)**"
    assert ga[2] == "n/a"


def test_bold_best_per_direction_among_method_rows_only(text):
    rows = by_label(table_rows(text))
    # down: NPO and SimNPO tie at 30.0 (GradDiff's 0.1 is diverged, Zeroed's 0.0 is a reference)
    assert rows["NPO"][1] == "**30.0**"
    assert rows["SimNPO"][1] == "**30.0**"
    assert rows["GA"][1] == "42.0 sd 2.8"
    assert rows["Zeroed"][1] == "0.0"
    assert rows["GradDiff"][1] == "0.1"
    # up: NPO's 35.0 beats GA's 32.5 mean; reference 60.0 and diverged 99.0 are not candidates
    assert rows["NPO"][2] == "**35.0**"
    assert rows["Target"][2] == "60.0"
    assert rows["GradDiff"][2] == "99.0"
    # ref (target 0): |-3| ties |3|; GA at 10 is further; Retain's exact 0.0 is a reference row
    assert rows["NPO"][3] == "**-3.0**"
    assert rows["SimNPO"][3] == "**3.0**"
    assert rows["Retain"][3] == "0.0"
    assert rows["GradDiff"][3] == "0.0"


def test_ref_ties_are_decided_on_displayed_values():
    cols = {"synthetic": [Column("privleak", "PrivLeak", "ref", "privacy", target=0.1)]}
    records = [
        rec("a", "A", 0, {"privleak": 0.3}),
        rec("b", "B", 0, {"privleak": -0.1}),
        rec("c", "C", 0, {"privleak": 0.31}),
    ]
    rows = by_label(table_rows(render_leaderboard(records, cols)))
    assert rows["A"][1] == "**0.3**"
    assert rows["B"][1] == "**-0.1**"
    assert rows["C"][1] == "**0.3**"  # shows as 0.3, so it ties too


def test_diverged_and_stand_in_footnotes(text):
    rows = by_label(table_rows(text))
    assert rows["GradDiff"][0].endswith(")¹")
    assert rows["NPO"][0].endswith(")²")
    assert rows["GA"][0].endswith(".json)")
    assert "- ¹ diverged at step 12 (last finite loss -35.2); scores are of the weights at that point." in text
    assert "- ² stand-in data: the retain split stands in for the holdout set" in text


def test_footnotes_numbered_per_section_and_seed_named():
    records = [
        rec("ga", "GA", 0, {"verbmem_f": 1.0}, model="m1", status="diverged", step=3, loss=2.5),
        rec("ga", "GA", 1, {"verbmem_f": 2.0}, model="m1"),
        rec("ga", "GA", 0, {"verbmem_f": 1.0}, model="m2", stand_in="stand-in text"),
    ]
    text = render_leaderboard(records, COLUMNS)
    assert text.index("## synthetic — m1") < text.index("## synthetic — m2")
    assert "- ¹ seed 0 diverged at step 3 (last finite loss 2.5); scores are of the weights at that point." in text
    assert "- ¹ stand-in data: stand-in text" in text
    # a diverged row is never bold, even when it is the only method row
    assert by_label(table_rows(text, "## synthetic — m1"))["GA"][1] == "1.5 sd 0.7"
    assert by_label(table_rows(text, "## synthetic — m2"))["GA"][1] == "**1.0**"


def test_deterministic_under_shuffled_input(text):
    records = fixture_records()
    for seed in range(5):
        shuffled = copy.deepcopy(records)
        random.Random(seed).shuffle(shuffled)
        for r in shuffled:  # key order inside a record must not matter either
            items = list(r.items())
            random.Random(seed).shuffle(items)
            r.clear()
            r.update(items)
        assert render_leaderboard(shuffled, COLUMNS) == text


def test_sections_sorted_by_benchmark_then_model_and_unknown_benchmark():
    records = [
        rec("ga", "GA", 0, {"x": 1.0}, benchmark="zeta", model="a"),
        rec("ga", "GA", 0, {"verbmem_f": 1.0}, model="b"),
        rec("ga", "GA", 0, {"verbmem_f": 1.0}, model="a"),
    ]
    text = render_leaderboard(records, COLUMNS, title="Results")
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == ["# Results", "## synthetic — a", "## synthetic — b", "## zeta — a"]
    assert "No columns are defined for benchmark 'zeta'" in text


def test_no_commit_column_when_no_commit_and_empty_input():
    records = [rec("ga", "GA", 0, {"verbmem_f": 1.0}, commit=None)]
    assert "Commit" not in header_cells(render_leaderboard(records, COLUMNS))
    assert render_leaderboard([], COLUMNS) == "# Leaderboard\n\nNo runs recorded yet.\n"


def test_odd_values_never_crash():
    records = [
        rec("ga", "GA", 0, {"verbmem_f": None, "knowmem_r": "12", "privleak": True, "fluency": float("nan")}),
        rec("npo", "N|PO", 0, {"verbmem_f": -0.04}, stand_in=None),
    ]
    records[1]["settings"] = "a|b"
    text = render_leaderboard(records, COLUMNS)
    rows = table_rows(text)
    ga = next(r for r in rows if r[0].startswith("[GA]"))
    assert ga[1:5] == ["n/a", "n/a", "n/a", "nan"]
    assert "N\\|PO" in text and "a\\|b" in text
    assert "**0.0**" in text  # -0.04 shows as 0.0, never -0.0


def test_format_value():
    assert format_value(41.25, 1) in ("41.2", "41.3")
    assert format_value(-0.0, 1) == "0.0"
    assert format_value(3.0, 0) == "3"
    assert format_value(float("inf"), 1) == "inf"


def test_write_leaderboard_writes_same_text(tmp_path, text):
    path = tmp_path / "results" / "LEADERBOARD.md"
    returned = write_leaderboard(fixture_records(), COLUMNS, path)
    assert returned == text
    assert path.read_bytes() == text.encode("utf-8")
    # rewriting replaces the file and leaves no temp file behind
    write_leaderboard(fixture_records()[:2], COLUMNS, path)
    assert path.read_text(encoding="utf-8") == render_leaderboard(fixture_records()[:2], COLUMNS)
    assert sorted(p.name for p in path.parent.iterdir()) == ["LEADERBOARD.md"]


def test_tiny_forget_quality_is_written_in_scientific_notation():
    from harness.leaderboard.columns import Column

    fq = Column("forget_quality", "Forget quality", "up", "knowledge", digits=3, sci_below=0.01)
    assert fq.format(1.834e-21) == "1.8e-21"
    assert fq.format(0.0031) == "3.1e-03"
    assert fq.format(0.4567) == "0.457"
    assert fq.format(0.0) == "0.000"
    assert Column("x", "X", "up", "utility", digits=3).format(1e-21) == "0.000"   # off unless asked for


def test_sweep_rows_of_one_method_follow_their_settings_in_numeric_order():
    records = []
    for r, cfg in (("0", "c1"), ("-2", "a9"), ("-0.2", "ff"), ("auto", "00")):
        record = rec("sga", "SGA", 0, {"verbmem_f": 1.0}, cfg=cfg)
        record["config"] = {"method_config": {"K": 4, "r": r}, "train": {"lr": 1e-4}}
        records.append(record)
    rows = table_rows(render_leaderboard(records, COLUMNS))
    order = [row[0].split("/sga/")[1].split("-seed")[0] for row in rows]
    assert order == ["a9", "ff", "c1", "00"]   # r = -2, -0.2, 0, then the non-numeric 'auto'


def test_rows_scored_with_a_non_default_setting_are_footnoted():
    shortcut = rec("ga", "GA", 0, {"verbmem_f": 1.0})
    shortcut["scoring_deviations"] = ["generations cut at a newline (benchmark.stop_at_newline=true); TOFU uses no stop strings"]
    plain = rec("npo", "NPO", 0, {"verbmem_f": 2.0}, cfg="77aa0011")
    text = render_leaderboard([shortcut, plain], COLUMNS)
    assert "- ¹ non-default scoring: generations cut at a newline (benchmark.stop_at_newline=true)" in text
    rows = {row[0].split("](")[0].strip("["): row for row in table_rows(text)}
    assert rows["GA"][0].endswith("¹") and not rows["NPO"][0].endswith("¹")
