"""The leaderboard's intervals, paired tests against the best row and no-op flags, on records built by hand,
and a plugin method whose loss is zero run end to end."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest

from harness.leaderboard.columns import Column
from harness.leaderboard.export import render_csv
from harness.leaderboard.markdown import render_leaderboard
from harness.scoring.uncertainty import ItemMean, bootstrap_interval, paired_test

COLUMNS = {"toy": [Column("m", "Mem", "down", "knowledge", digits=3, interval=ItemMean("qa", "x")),
                   Column("u", "Util", "up", "utility", digits=3)]}   # no per-item statistic declared
BASE = np.array([0.1, 0.9, 0.4, 0.35, 0.8, 0.05, 0.6, 0.7, 0.2, 0.55, 0.3, 0.95])


def record(method, values, kind="method", no_op=None, per_sample=True):
    out = {"benchmark": "toy", "model": "m", "method": method, "row": method.upper(), "kind": kind,
           "config_id": method, "seed": 0, "status": "ok",
           "aggregates": {"m": float(np.mean(values)), "u": 0.5}}
    if per_sample:
        out["per_sample"] = {"qa": [{"x": float(v)} for v in values]}
    if no_op is not None:
        out["no_op"] = no_op
    return out


def cell(board: str, row: str, column: int = 1) -> str:
    line = next(l for l in board.splitlines() if l.startswith(f"| {row}"))
    return line.split("|")[column + 1].strip()


@pytest.fixture(scope="module")
def board():
    shift = np.array([0.05, -0.05, 0.04, -0.04, 0.05, -0.05, 0.03, -0.03, 0.05, -0.05, 0.04, -0.04])
    records = [
        record("target", BASE + 0.5, kind="reference"),
        record("best", BASE),                                  # lowest Mem
        record("noisy", BASE + shift + 0.001),                 # differs from best by noise only
        record("worse", BASE + 0.05),                          # consistently higher on every item
        record("stuck", BASE + 0.5, no_op={"unchanged_weights": True}),
        record("near", BASE + 0.5 + shift / 10, no_op={"unchanged_weights": False}),
        record("old", BASE + 0.2, per_sample=False),
    ]
    return records, render_leaderboard(records, COLUMNS)


def test_cells_show_the_interval_half_width_computed_by_hand(board):
    records, text = board
    iv = bootstrap_interval(ItemMean("qa", "x"), [{"qa": {"x": BASE}}])
    assert cell(text, "BEST") == f"**{np.mean(BASE):.3f} ±{(iv.hi - iv.lo) / 2:.3f}**"
    assert "±" not in cell(text, "OLD") and "no intervals: the record holds no per-item scores" in text
    assert "±" not in cell(text, "BEST", 2)   # Util declares no per-item statistic ...
    assert "- Util: no interval (no per-item statistic is declared for this column)." in text   # ... and says so
    assert "Intervals: percentile bootstrap, 2000 resamples, seed 0" in text


def test_rows_not_distinguishable_from_the_best_are_marked(board):
    records, text = board
    assert cell(text, "NOISY").endswith(" ≈") and not cell(text, "WORSE").endswith("≈")
    assert "≈" not in cell(text, "BEST") and "≈" not in cell(text, "TARGET")   # the best and reference rows untested
    # the same verdicts from the paired test itself
    noisy, worse, best = ({"qa": {"x": np.array([s["x"] for s in r["per_sample"]["qa"]])}} for r in records[2:4] + records[1:2])
    assert not paired_test(ItemMean("qa", "x"), [noisy], [best]).distinguishable
    assert paired_test(ItemMean("qa", "x"), [worse], [best]).distinguishable


def test_no_op_rows_are_flagged(board):
    _, text = board
    assert "| STUCK (unchanged)" in text and "bit-identical to the target's" in text
    assert "| NEAR (not distinguishable from the target)" in text
    assert "every forget-side column with an interval (Mem) lies inside the target's 95% interval" in text
    assert "WORSE (" not in text and "BEST (" not in text


def test_exports_carry_the_bounds_and_the_verdicts(board):
    records, _ = board
    frame = pd.read_csv(io.StringIO(render_csv(records, COLUMNS)))
    by = frame.set_index("method")
    iv = bootstrap_interval(ItemMean("qa", "x"), [{"qa": {"x": BASE}}])
    assert by.loc["best", "m_lo"] == pytest.approx(iv.lo) and by.loc["best", "m_hi"] == pytest.approx(iv.hi)
    assert str(by.loc["noisy", "m_tied_best"]) == "True" and str(by.loc["worse", "m_tied_best"]) == "False"
    assert by.loc["worse", "m_vs_best_p"] < 0.05 and pd.isna(by.loc["old", "m_lo"]) and pd.isna(by.loc["best", "u_lo"])
    assert by.loc["stuck", "no_op"] == "unchanged" and by.loc["near", "no_op"] == "not distinguishable from the target"


ZERO = '''
from harness.training.losses import answer_ce
from harness.methods.base import UnlearningMethod
from harness.registry import register_method


@register_method()
class ZeroLoss(UnlearningMethod):
    name = "zero_loss"
    description = "A loss of zero: a zero gradient, so no update but AdamW's weight decay"

    def loss(self, model, batch, ctx):
        return 0 * answer_ce(model, batch.forget), {}
'''


def test_a_zero_loss_plugin_is_flagged_unchanged_and_weight_decay_alone_is_not_hidden(tmp_path):
    from harness.cli import main
    from harness.registry import METHODS, load_builtins

    plugin, results = tmp_path / "zero.py", tmp_path / "results"
    plugin.write_text(ZERO)
    quick = ["run", "--plugin", str(plugin), "--methods", "zero_loss", "--results-dir", str(results),
             "--benchmark", "synthetic", "--model", "tiny-random", "--limit", "3", "--set", "finetune.epochs=1",
             "--set", "train.epochs=1", "--no-save-models"]
    load_builtins()
    saved = dict(METHODS._items), dict(METHODS._sources)
    try:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            assert main([*quick, "--set", "train.weight_decay=0"]) == 0
            assert main(quick) == 0   # default weight decay 0.01: the weights do move, a little
    finally:
        METHODS._items.clear(), METHODS._items.update(saved[0])
        METHODS._sources.clear(), METHODS._sources.update(saved[1])
    records = [json.loads(p.read_text()) for p in results.glob("synthetic/tiny-random/zero_loss/*.json")]
    by_decay = {r["config"]["train"]["weight_decay"]: r for r in records}
    assert by_decay[0.0]["no_op"] == {"unchanged_weights": True}
    assert any("bit-identical" in w for w in by_decay[0.0]["warnings"])
    assert "zero_loss: the reported weights are bit-identical to the target's" in out.getvalue()
    assert by_decay[0.01]["no_op"] == {"unchanged_weights": False}   # weight decay alone changed them
    assert set(by_decay[0.0]["intervals"]) >= {"verbmem_f", "rouge_f", "prob_f", "model_utility"}
    board = (results / "LEADERBOARD.md").read_text()
    rows = [l for l in board.splitlines() if "synthetic/tiny-random/zero_loss/" in l]
    assert len(rows) == 2
    unchanged = [l for l in rows if "(unchanged)" in l]
    assert len(unchanged) == 1 and by_decay[0.0]["config_id"] in unchanged[0]
    # the decayed one changed bytes, not behaviour: its forget columns sit inside the target's intervals
    other = next(l for l in rows if l not in unchanged)
    assert "(not distinguishable from the target)" in other


def test_generations_all_empty_or_all_one_text_are_flagged():
    from harness.benchmarks.base import degenerate_generations

    (empty,) = degenerate_generations("qa", ["", " \n"])
    assert empty.startswith("all 2 'qa' generations are empty: the model ended its answer at once")
    same = degenerate_generations("qa", ["I don't know.", "I don't  know.", " I don't know."])
    assert len(same) == 1 and same[0].startswith("all 3 'qa' generations are the same text (\"I don't know.\")")
    assert degenerate_generations("qa", ["Paris", "Lyon", "Paris"]) == [] and degenerate_generations("qa", ["x"]) == []
    text = render_leaderboard([{**record("best", BASE), "warnings": same}], COLUMNS)
    assert "generations are the same text" in text   # shown on the row


def test_a_row_whose_utility_collapsed_is_named_and_never_bold():
    """Utility per item: retain 0.9 on average; 'broken' forgets best but answers nothing (upper bound far
    below half of 0.9); 'halved' sits at about half with items spread widely, so its interval reaches above
    the floor and it is not flagged."""
    columns = {"toy": [Column("m", "Mem", "down", "knowledge", digits=3, interval=ItemMean("qa", "x")),
                       Column("u", "Util", "up", "utility", digits=3, interval=ItemMean("ret", "y"))]}

    def row(method, mem, util, kind="method"):
        out = record(method, mem, kind=kind)
        out["aggregates"]["u"] = float(np.mean(util))
        out["per_sample"]["ret"] = [{"y": float(v)} for v in util]
        return out

    util = np.array([0.95, 0.85, 0.9, 0.92, 0.88, 0.9, 0.86, 0.94, 0.9, 0.9, 0.87, 0.93])
    halved = np.array([0.0, 1.0] * 6) * 0.9
    records = [row("retain", BASE, util, kind="reference"), row("target", BASE + 0.5, util, kind="reference"),
               row("broken", BASE * 0.1, util * 0.02), row("halved", BASE + 0.1, halved), row("fine", BASE + 0.05, util)]
    text = render_leaderboard(records, columns)
    iv = bootstrap_interval(ItemMean("ret", "y"), [{"ret": {"y": util * 0.02}}])
    assert iv.hi < 0.5 * float(np.mean(util))                 # the rule's premise, by hand
    assert "| BROKEN (utility collapsed)" in text and "lies below 0.5 x the retain model's 0.900" in text
    assert not cell(text, "BROKEN").startswith("**")          # lowest Mem, yet not the bold row
    assert cell(text, "FINE").startswith("**")                # the best row that still works
    assert "HALVED (" not in text and "FINE (" not in text
    assert bootstrap_interval(ItemMean("ret", "y"), [{"ret": {"y": halved}}]).hi >= 0.45
