"""Sweeps and the declared operating point: the grid, the rules by hand, the run end to end (local and Ray)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.leaderboard.columns import Column
from harness.leaderboard.markdown import _build_rows, render_leaderboard
from harness.run import selection, sweep
from harness.run.runner import Runner, RunRequest

REPO = Path(__file__).resolve().parent.parent

COLUMNS = [
    Column("rouge_f", "ROUGE f", "down", "knowledge", digits=3),
    Column("forget_quality", "Forget quality", "up", "knowledge", digits=3),
    Column("model_utility", "Utility", "up", "utility", digits=3),
]


def candidates(*rows):
    """(rouge_f, model_utility) per candidate -> the ordered candidates a rule sees."""
    return [{"epoch": i + 1, "aggregates": {"rouge_f": f, "model_utility": u}} for i, (f, u) in enumerate(rows)]


# --------------------------------------------------------------------------- the grid


def test_parse_reads_lists_in_order_and_refuses_malformed_input():
    assert sweep.parse(["train.lr=1e-5,3e-5, 1e-4", "graddiff.alpha=1,2"]) == {
        "train.lr": ["1e-5", "3e-5", "1e-4"], "graddiff.alpha": ["1", "2"]}
    for bad, message in (("train.lr", "expects KEY=V1,V2"), ("train.lr=", "expects KEY=V1,V2"),
                         ("train.lr=1e-5,,1e-4", "expects KEY=V1,V2"), ("train.lr=1,1", "repeats a value")):
        with pytest.raises(HarnessError, match=message):
            sweep.parse([bad])
    with pytest.raises(HarnessError, match="given twice"):
        sweep.parse(["train.lr=1", "train.lr=2"])


def test_grid_is_the_product_in_the_order_given_and_other_methods_keys_do_not_multiply_cells():
    grid = {"train.lr": ["1", "2"], "graddiff.alpha": ["a", "b"]}
    assert sweep.grid(grid) == [{"train.lr": "1", "graddiff.alpha": "a"}, {"train.lr": "1", "graddiff.alpha": "b"},
                                {"train.lr": "2", "graddiff.alpha": "a"}, {"train.lr": "2", "graddiff.alpha": "b"}]
    assert sweep.points_for("graddiff", grid) == sweep.grid(grid)
    assert sweep.points_for("ga", grid) == [{"train.lr": "1"}, {"train.lr": "2"}]   # 2 cells, not 4
    assert sweep.grid({}) == [{}] and sweep.cell_name("ga", {}) == "ga"
    assert sweep.cell_name("ga", {"train.lr": "1e-5", "graddiff.alpha": "2"}) == "ga[lr=1e-5, graddiff.alpha=2]"


def test_runner_makes_one_cell_per_point_with_its_own_record_path():
    runner = Runner(RunRequest(benchmark="synthetic", model="tiny-random", methods="ga,graddiff",
                               sweep={"lr": ["1e-5", "3e-5"], "graddiff.alpha": ["1", "2"]}), log=lambda *a: None)
    cells = runner.cell_names()
    assert cells[:2] == ["retain", "target"] and len(cells) == 2 + 2 + 4
    paths = [runner.cell_path(c) for c in cells[2:]]
    assert len(set(paths)) == 6 and {p.parent.name for p in paths} == {"ga", "graddiff"}
    assert runner.method_configs(*runner.method_cells["ga[lr=3e-5]"])[0].lr == pytest.approx(3e-5)
    train, method = runner.method_configs(*runner.method_cells["graddiff[lr=1e-5, graddiff.alpha=2]"])
    assert train.lr == pytest.approx(1e-5) and method.alpha == 2.0
    # every point of a method shares one sweep id; the reference rows do not depend on the sweep
    plain = Runner(RunRequest(benchmark="synthetic", model="tiny-random", methods="ga"), log=lambda *a: None)
    assert runner.cell_path("target") == plain.cell_path("target")


@pytest.mark.parametrize("request_kwargs, message", [
    ({"sweep": {"eval.select": ["last", "utility_preserving"]}}, "eval.\\* settings change"),
    ({"sweep": {"benchmark.num_forget": ["2", "4"]}}, "benchmark.\\* settings change"),
    ({"sweep": {"train.lr": ["1e-5", "2e-5"]}, "overrides": {"lr": "1e-4"}}, "both give train.lr"),
    ({"sweep": {"train.lr": ["1e-5", "fast"]}}, "--sweep train.lr: the value fast: expected float"),
    ({"sweep": {"train.lrate": ["1e-5"]}}, "unknown --set key"),
    ({"sweep": {"train.lr": ["1e-5"]}, "overrides": {"eval.select": "utility_preserving",
                                                      "eval.select_fraction": "1.5"}}, "select_fraction must lie in"),
    ({"overrides": {"eval.select": "utility_preserving", "eval.select_forget": "rouge_r"}}, "not a forget column"),
])
def test_bad_sweeps_and_rule_settings_are_refused_before_any_work(request_kwargs, message):
    with pytest.raises(HarnessError, match=message):
        Runner(RunRequest(benchmark="synthetic", model="tiny-random", methods="ga", **request_kwargs), log=lambda *a: None)


# --------------------------------------------------------------------------- the rules, by hand


def test_utility_preserving_takes_the_most_forgetting_that_keeps_the_utility_share():
    target = {"model_utility": 0.90}
    context = selection.Context(COLUMNS, None, target, fraction=0.9)   # floor 0.81
    # utilities 0.95, 0.85 keep 0.81; 0.80 and 0.60 do not (they forget more: ROUGE f 0.10 and 0.00)
    chosen = selection.select("utility_preserving", candidates((0.7, 0.95), (0.4, 0.85), (0.1, 0.80), (0.0, 0.60)),
                              COLUMNS, None, context=context)
    assert chosen.epoch == 2 and not chosen.fallback
    assert "2 of 4 candidates" in chosen.reason and "0.9 x the target's (0.900)" in chosen.reason
    # exactly at the floor qualifies; ties on forgetting go to the earliest
    tied = selection.select("utility_preserving", candidates((0.5, 0.95), (0.3, 0.81), (0.3, 0.9)), COLUMNS, None,
                            context=context)
    assert tied.epoch == 2
    # nothing keeps the utility: the best utility, flagged
    none = selection.select("utility_preserving", candidates((0.1, 0.5), (0.0, 0.7), (0.2, 0.6)), COLUMNS, None,
                            context=context)
    assert none.epoch == 2 and none.fallback and "none of the 3 candidates" in none.reason


def test_utility_preserving_on_a_column_where_higher_is_more_forgetting():
    context = selection.Context(COLUMNS, None, {"model_utility": 1.0}, forget_key="forget_quality", fraction=0.5)
    rows = [{"epoch": i + 1, "aggregates": {"forget_quality": q, "model_utility": u}}
            for i, (q, u) in enumerate([(0.01, 0.9), (0.3, 0.6), (0.9, 0.4)])]
    assert selection.select("utility_preserving", rows, COLUMNS, None, context=context).epoch == 2


def test_utility_preserving_without_the_targets_utility_names_the_fix():
    with pytest.raises(HarnessError, match="no target evaluation"):
        selection.select("utility_preserving", candidates((0.1, 0.9)), COLUMNS, None,
                         context=selection.Context(COLUMNS, None, None))


def test_first_below_retain_is_the_muse_authors_first_checkpoint_at_the_retain_level():
    context = selection.Context(COLUMNS, {"rouge_f": 0.30}, None)
    assert selection.select("first_below_retain", candidates((0.8, 1), (0.3, 1), (0.1, 1)), COLUMNS, None,
                            context=context).epoch == 2          # 0.30 <= 0.30: the first such
    last = selection.select("first_below_retain", candidates((0.8, 1), (0.5, 1)), COLUMNS, None, context=context)
    assert last.epoch == 2 and last.fallback


def test_choose_point_maps_the_rule_back_to_the_point_and_skips_failed_points():
    def record(cid, lr, f, u, status="ok", epoch=2):
        return {"config_id": cid, "status": status, "sweep": {"point": {"train.lr": lr}},
                "selection": {"rule": "utility_preserving", "epoch": epoch},
                "aggregates": {"rouge_f": f, "model_utility": u}}

    groups = [({"train.lr": "1e-5"}, [record("a", "1e-5", 0.8, 0.9)]),
              ({"train.lr": "3e-5"}, [record("b", "3e-5", 0.0, 0.0, status="failed")]),
              ({"train.lr": "1e-4"}, [record("c", "1e-4", 0.5, 0.85, epoch=1)]),
              ({"train.lr": "3e-4"}, [record("d", "3e-4", 0.2, 0.5)])]
    context = selection.Context(COLUMNS, None, {"model_utility": 0.9}, fraction=0.9)
    choice = sweep.choose_point(groups, "utility_preserving", context)
    assert (choice.config_id, choice.point, choice.epoch) == ("c", {"train.lr": "1e-4"}, 1)
    assert [c["config_id"] for c in choice.candidates] == ["a", "c", "d"]
    assert "2 of 3 swept points" in choice.reason and "chosen: lr=1e-4, epoch 1" in choice.reason
    # seeds of a point are averaged before the rule ranks them: (0.95 + 0.65) / 2 = 0.8 < 0.81 drops "a"
    two_seeds = [({"train.lr": "1e-5"}, [record("a", "1e-5", 0.1, 0.95), record("a", "1e-5", 0.1, 0.65)]),
                 ({"train.lr": "1e-4"}, [record("c", "1e-4", 0.5, 0.85)])]
    assert sweep.choose_point(two_seeds, "utility_preserving", context).config_id == "c"


# --------------------------------------------------------------------------- the leaderboard and the plot


def _board_records():
    base = {"benchmark": "synthetic", "model": "m", "seed": 0, "data": {"source": "fixture"}, "status": "ok"}
    refs = [{**base, "method": "target", "row": "Target", "kind": "reference", "config_id": "t",
             "aggregates": {"rouge_f": 0.9, "model_utility": 0.9}},
            {**base, "method": "retain", "row": "Retain", "kind": "reference", "config_id": "r",
             "aggregates": {"rouge_f": 0.3, "model_utility": 0.9}}]
    grid = {"train.lr": ["1e-5", "3e-5", "1e-4"]}
    rule = {"name": "utility_preserving", "fraction": 0.9, "forget": None, "utility": None}
    points = [("1e-5", 0.8, 0.89, "c1"), ("3e-5", 0.5, 0.85, "c2"), ("1e-4", 0.1, 0.5, "c3")]
    methods = [{**base, "method": "ga", "row": "GA", "kind": "method", "config_id": cid, "settings": f"lr={lr}",
                "selection": {"rule": "utility_preserving", "epoch": 2},
                "sweep": {"id": "s1", "grid": grid, "point": {"train.lr": lr}, "rule": rule, "size": 3},
                "aggregates": {"rouge_f": f, "model_utility": u}} for lr, f, u, cid in points]
    return refs + methods


def test_the_leaderboard_row_of_a_sweep_is_its_selected_point_with_setting_and_epoch():
    board = render_leaderboard(_board_records(), {"synthetic": COLUMNS})
    rows = [line for line in board.splitlines() if line.startswith("| GA")]
    assert len(rows) == 1 and "(selected: lr=3e-5, epoch 2)" in rows[0] and "0.500" in rows[0]
    assert "among 3 swept points (lr=1e-5; lr=3e-5; lr=1e-4)" in board
    assert "most forgetting on ROUGE f (0.500) among the 2 of 3 swept points" in board


def test_the_html_page_shows_the_selected_point_too(tmp_path):
    from harness.leaderboard.html import write_html

    page = write_html(_board_records(), {"synthetic": COLUMNS}, tmp_path / "LEADERBOARD.html").read_text()
    assert "(selected: lr=3e-5, epoch 2)" in page and page.count('data-method="ga"') == 1


def test_the_tradeoff_plot_draws_every_swept_point_and_rings_the_selected_one():
    pytest.importorskip("matplotlib")
    from harness.leaderboard.plots import Axes, _tradeoff

    rows = _build_rows(_board_records(), COLUMNS)
    ga = next(r for r in rows if r.method == "ga")
    assert [p["train.lr"] for p, _ in ga.sweep.points] == ["1e-5", "3e-5", "1e-4"]
    fig = _tradeoff("synthetic", "m", rows, COLUMNS, Axes("rouge_f", "model_utility"))
    ax = fig.axes[0]
    swept = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(swept) == 1 and list(swept[0].get_xdata()) == [0.8, 0.5, 0.1]
    assert list(swept[0].get_ydata()) == [0.89, 0.85, 0.5]
    labels = [t.get_text() for t in ax.texts]
    assert any("GA (lr=3e-5, epoch 2)" in t for t in labels)


# --------------------------------------------------------------------------- end to end, local and Ray


SWEEP_RUN = ["run", "--methods", "ga", "--benchmark", "synthetic", "--model", "tiny-random", "--limit", "4",
             "--set", "train.max_steps=3", "--set", "train.global_batch=4", "--set", "train.micro_batch=1",
             "--sweep", "train.lr=1e-5,3e-5,1e-4", "--set", "eval.select=utility_preserving",
             # the tiny model's answers are empty (ROUGE 0 everywhere); its answer probability moves with the rate
             "--set", "eval.select_forget=prob_f", "--no-save-models", "--no-eval-cache", "--threads", "1"]


def _env(cache: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HARNESS_CACHE": str(cache)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _run(results: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *SWEEP_RUN, "--results-dir", str(results), *extra],
                          env=_env(cache), capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _check_sweep_outcome(results: Path) -> dict:
    """Three GA records (one per rate), the choice recomputed by hand from them, and the leaderboard showing it."""
    records = [json.loads(p.read_text()) for p in sorted(results.glob("synthetic/tiny-random/ga/*-seed0.json"))]
    assert sorted(r["sweep"]["point"]["train.lr"] for r in records) == ["1e-4", "1e-5", "3e-5"]
    assert len({r["config_id"] for r in records}) == 3 and len({r["sweep"]["id"] for r in records}) == 1
    assert all(r["status"] == "ok" and r["sweep"]["rule"] == {"name": "utility_preserving", "fraction": 0.9,
                                                               "forget": "prob_f", "utility": None} for r in records)
    target = json.loads(next(results.glob("synthetic/tiny-random/target/*.json")).read_text())
    floor = 0.9 * target["aggregates"]["model_utility"]
    order = {"1e-5": 0, "3e-5": 1, "1e-4": 2}
    keep = sorted((r for r in records if r["aggregates"]["model_utility"] >= floor),
                  key=lambda r: order[r["sweep"]["point"]["train.lr"]])
    assert keep, "the tiny target's utility is 0, so every point keeps 0.9 x it"
    expected = min(keep, key=lambda r: r["aggregates"]["prob_f"])   # min() keeps the first of ties
    saved = json.loads(next(results.glob("synthetic/tiny-random/ga/sweep-*.selection.json")).read_text())
    assert saved["chosen"]["config_id"] == expected["config_id"] and saved["rule"] == "utility_preserving"
    assert [c["point"]["train.lr"] for c in saved["candidates"]] == ["1e-5", "3e-5", "1e-4"]
    board = (results / "LEADERBOARD.md").read_text()
    ga_rows = [line for line in board.splitlines() if line.startswith("| [GA]")]
    lr = expected["sweep"]["point"]["train.lr"]
    assert len(ga_rows) == 1 and f"(selected: lr={lr}, epoch 2)" in ga_rows[0] and expected["config_id"] in ga_rows[0]
    return saved


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    proc = _run(root / "r", root / "cache")
    assert "sweep ga: eval.select=utility_preserving chose lr=" in proc.stdout
    return root


def test_a_sweep_runs_locally_and_records_and_shows_the_selected_point(local_sweep):
    _check_sweep_outcome(local_sweep / "r")


def test_a_sweep_on_ray_gives_the_local_records_and_the_same_choice(tmp_path, local_sweep):
    pytest.importorskip("ray")
    proc = _run(tmp_path / "r", local_sweep / "cache", "--executor", "ray", "--workers", "2", "--poll-s", "1")
    assert "ga[lr=1e-5], ga[lr=3e-5], ga[lr=1e-4]" in proc.stdout
    assert "progress: 0 queued, 0 running, 5 done, 0 failed" in proc.stdout
    on_ray, local = _check_sweep_outcome(tmp_path / "r"), _check_sweep_outcome(local_sweep / "r")
    assert on_ray["chosen"] == local["chosen"]
    for path in sorted((local_sweep / "r").glob("synthetic/tiny-random/*/*-seed0.json")):
        twin = json.loads((tmp_path / "r" / path.relative_to(local_sweep / "r")).read_text())
        for key, value in json.loads(path.read_text())["aggregates"].items():
            assert twin["aggregates"][key] == pytest.approx(value, abs=1e-4), (path.name, key)
