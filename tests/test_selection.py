"""Per-epoch evaluation and the checkpoint-selection rules: pure rules, the loop's hook, a run end to end."""
from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from harness.run import selection
from harness.data.batching import Example
from harness.cli import main
from harness.errors import HarnessError
from harness.leaderboard.columns import Column
from harness.leaderboard.markdown import render_leaderboard
from harness.training.losses import answer_ce
from harness.methods.base import UnlearningMethod
from harness.run.runner import PerEpoch, Runner, RunRequest
from harness.training.loop import TrainConfig, train

COLUMNS = [
    Column("verbmem_f", "VerbMem f", "down", "verbatim", digits=1),
    Column("rouge_f", "ROUGE f", "down", "knowledge", digits=3),
    Column("forget_quality", "Forget quality", "up", "knowledge", digits=3),
    Column("privleak", "PrivLeak", "ref", "privacy", target=0.0),
    Column("rouge_r", "ROUGE r", "up", "utility", digits=3),
    Column("model_utility", "Utility", "up", "utility", digits=3),
]
RETAIN = {"verbmem_f": 20.0, "rouge_f": 0.30, "forget_quality": 1.0, "model_utility": 0.9}
FACTS = [Example(f"Q{i}:", f" fact number {i} is {w}") for i, w in enumerate(["zorb", "quix", "mavel", "tonk"])]


def epochs(*rows):
    """(verbmem_f, rouge_f, model_utility) per epoch -> the per-epoch list a run records."""
    return [{"epoch": i + 1, "aggregates": {"verbmem_f": v, "rouge_f": r, "model_utility": u, "rouge_r": 0.5}}
            for i, (v, r, u) in enumerate(rows)]


# --------------------------------------------------------------------------- the rules


def test_last_is_the_final_epoch():
    chosen = selection.select("last", epochs((50, 0.9, 0.9), (10, 0.1, 0.2)), COLUMNS, None)
    assert (chosen.rule, chosen.epoch) == ("last", 2)


def test_best_utility_among_epochs_at_or_below_the_retain_model():
    run = epochs((50.0, 0.9, 0.95),   # best utility, but forgets too little
                 (20.0, 0.25, 0.80),  # qualifies (verbmem equal to the retain model's counts)
                 (15.0, 0.20, 0.85),  # qualifies, best utility among qualifiers
                 (5.0, 0.10, 0.40))   # qualifies, utility collapsed
    chosen = selection.select("utility_below_retain", run, COLUMNS, RETAIN)
    assert chosen.epoch == 3 and not chosen.fallback
    assert "Utility (0.850)" in chosen.reason and "3 of 4 epochs" in chosen.reason
    assert chosen.as_record() == {"rule": "utility_below_retain", "epoch": 3, "reason": chosen.reason}


def test_ties_go_to_the_earliest_epoch():
    run = epochs((10, 0.1, 0.5), (10, 0.1, 0.5))
    assert selection.select("utility_below_retain", run, COLUMNS, RETAIN).epoch == 1


def test_no_epoch_qualifies_takes_the_last_and_says_so():
    run = epochs((50.0, 0.9, 0.9), (10.0, 0.35, 0.8), (25.0, 0.1, 0.7))
    chosen = selection.select("utility_below_retain", run, COLUMNS, RETAIN)
    assert chosen.epoch == 3 and chosen.fallback
    assert "none of the 3 epochs" in chosen.reason and "last epoch was taken" in chosen.reason
    assert "VerbMem f, ROUGE f" in chosen.reason


def test_missing_retain_reference_is_an_error_naming_rule_and_fix():
    with pytest.raises(HarnessError, match=r"eval.select=utility_below_retain.*--retain PATH.*eval.select=last"):
        selection.select("utility_below_retain", epochs((1, 0.1, 0.5)), COLUMNS, None)


def test_unknown_rule_lists_the_known_rules():
    with pytest.raises(HarnessError, match=r"unknown checkpoint-selection rule eval.select=best_of_all.*"
                                           r"Known rules: last \(.*\); utility_below_retain \("):
        selection.validate("best_of_all", True, COLUMNS)


def test_utility_below_retain_needs_per_epoch_and_a_retain_model():
    with pytest.raises(HarnessError, match=r"add --set eval.per_epoch=true"):
        selection.validate("utility_below_retain", False, COLUMNS)
    with pytest.raises(HarnessError, match=r"this run has none: pass --retain PATH"):
        selection.validate("utility_below_retain", True, COLUMNS, has_retain=False)
    assert selection.validate("utility_below_retain", True, COLUMNS, has_retain=True).needs_per_epoch
    assert not selection.validate("last", False, COLUMNS).needs_per_epoch


def test_utility_column_of_each_benchmark():
    from harness.registry import BENCHMARKS

    expected = {"synthetic": "model_utility", "tofu": "model_utility", "muse-news": "knowmem_r",
                "harry-potter": "perplexity", "books-pd": "perplexity"}
    for name, key in expected.items():
        assert selection.utility_column(BENCHMARKS.get(name).columns).key == key
    # a lower-is-better utility (perplexity) counts as better when lower
    ppl = [Column("bleu", "BLEU", "down", "verbatim"), Column("perplexity", "PPL", "down", "utility")]
    run = [{"epoch": 1, "aggregates": {"bleu": 1.0, "perplexity": 30.0}},
           {"epoch": 2, "aggregates": {"bleu": 1.0, "perplexity": 20.0}}]
    assert selection.select("utility_below_retain", run, ppl, {"bleu": 2.0}).epoch == 2


# --------------------------------------------------------------------------- the loop's hook


class NoisyGA(UnlearningMethod):
    """Gradient ascent scaled by a draw from the global RNG, as dropout would draw."""

    name = "noisy_ga"
    description = "test method whose loss depends on the global torch RNG; NaN at step `explode_at`"

    def __init__(self, explode_at: int = -1):
        super().__init__()
        self.explode_at = explode_at

    def loss(self, model, batch, ctx):
        loss = -answer_ce(model, batch.forget) * (1 + 0.5 * torch.rand(()))
        return (loss * float("nan") if ctx.step == self.explode_at else loss), {}


class RandomNoise:
    """A callback that draws from every global RNG, as an evaluation might."""

    def __init__(self):
        self.calls = []

    def __call__(self, index, model):
        self.calls.append((index, model.training))
        torch.rand(3)
        torch.nn.functional.dropout(torch.ones(4), 0.5, training=True)


def test_on_epoch_end_runs_per_epoch_in_eval_mode_without_changing_training(tiny):
    model, tok = tiny
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    cfg = TrainConfig(lr=1e-3, epochs=3, global_batch=2)
    hook = RandomNoise()
    plain = train(a, tok, NoisyGA(), FACTS, None, cfg, seed=0)
    hooked = train(b, tok, NoisyGA(), FACTS, None, cfg, seed=0, on_epoch_end=hook)
    assert hook.calls == [(0, False), (1, False), (2, False)]
    assert hooked.losses == plain.losses
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))


def test_on_epoch_end_is_not_called_after_divergence(tiny):
    model, tok = tiny
    hook = RandomNoise()
    result = train(model, tok, NoisyGA(explode_at=3), FACTS, None, TrainConfig(lr=1e-3, epochs=3, global_batch=2),
                   seed=0, on_epoch_end=hook)
    assert result.status == "diverged" and hook.calls == [(0, False)]


def test_per_epoch_keeps_only_the_preferred_weights_and_puts_them_back(tiny):
    model, _ = tiny
    scores = iter([{"verbmem_f": 10.0, "rouge_f": 0.1, "model_utility": 0.8},   # qualifies: kept
                   {"verbmem_f": 90.0, "rouge_f": 0.9, "model_utility": 0.9},   # does not qualify
                   {"verbmem_f": 10.0, "rouge_f": 0.1, "model_utility": 0.5}])  # final epoch: never copied
    runner = SimpleNamespace(
        rule=selection.RULES["utility_below_retain"], bench_cls=SimpleNamespace(columns=COLUMNS), log=lambda *a: None,
        _evaluate=lambda loaded, reference: {"aggregates": next(scores), "timings": {"eval_s": 1.0}},
        _select=lambda run: selection.select("utility_below_retain", run, COLUMNS, RETAIN),
    )
    hook = PerEpoch(runner, SimpleNamespace(model=model), None, "ga", final_epoch=3)
    first = copy.deepcopy(model.state_dict())
    for epoch in range(3):
        if epoch:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
        hook(epoch, model)
    assert hook.kept is not None and hook.kept[0] == 1 and hook.eval_s == 3.0
    assert set(hook.outputs) == {1, 3}  # the kept epoch's evaluation and the latest
    chosen = runner._select(hook.epochs)
    assert chosen.epoch == 1
    assert hook.take(chosen)["aggregates"]["model_utility"] == 0.8
    assert all(torch.equal(v, first[k]) for k, v in model.state_dict().items())
    assert [e["loss"] for e in hook.summary([5.0, 4.0, 3.0, 2.0, 1.0, 0.5], 2, 6)] == [4.0, 2.0, 0.5]


def test_per_epoch_keeps_the_epoch_utility_preserving_will_choose(tiny):
    """utility_preserving does not need per-epoch evaluation, but with it it may pick an earlier epoch:
    here epoch 2 (most forgetting while utility stays >= 0.9 x the target's 0.9 = 0.81); epoch 3 forgets
    more but lost its utility. Its weights must be the ones put back (a full-size RMU run failed here)."""
    model, _ = tiny
    scores = iter([{"verbmem_f": 70.0, "rouge_f": 0.9, "model_utility": 0.88},
                   {"verbmem_f": 50.0, "rouge_f": 0.8, "model_utility": 0.82},   # chosen
                   {"verbmem_f": 5.0, "rouge_f": 0.1, "model_utility": 0.02}])
    context = selection.Context(COLUMNS, RETAIN, {"model_utility": 0.9}, None, None, 0.9)
    runner = SimpleNamespace(
        rule=selection.RULES["utility_preserving"], bench_cls=SimpleNamespace(columns=COLUMNS), log=lambda *a: None,
        _evaluate=lambda loaded, reference: {"aggregates": next(scores), "timings": {"eval_s": 1.0}},
        _select=lambda run: selection.select("utility_preserving", run, COLUMNS, RETAIN, context=context),
    )
    hook = PerEpoch(runner, SimpleNamespace(model=model), None, "rmu", final_epoch=3)
    for epoch in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        if epoch == 1:
            second = copy.deepcopy(model.state_dict())
        hook(epoch, model)
    chosen = runner._select(hook.epochs)
    assert chosen.epoch == 2 and not chosen.fallback
    assert hook.take(chosen)["aggregates"]["model_utility"] == 0.82
    assert all(torch.equal(v, second[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- the runner


def test_reference_cells_do_not_depend_on_selection_settings():
    def configs(**overrides):
        # not "all": task_vector refuses per-epoch evaluation up front (it has no epochs)
        runner = Runner(RunRequest(benchmark="synthetic", model="tiny-random", methods="ga,graddiff", overrides=overrides),
                        log=lambda *a: None)
        return runner._base_config(reference=True), runner._base_config()

    plain_ref, plain_method = configs()
    ref, method = configs(**{"eval.per_epoch": "true", "eval.select": "utility_below_retain"})
    assert ref == plain_ref and "select" not in ref["eval"]
    assert method != plain_method and method["eval"]["select"] == "utility_below_retain"


def test_runner_rejects_bad_selection_before_any_work():
    with pytest.raises(HarnessError, match="add --set eval.per_epoch=true"):
        Runner(RunRequest(benchmark="synthetic", overrides={"eval.select": "utility_below_retain"}))
    with pytest.raises(HarnessError, match="Known rules: last"):
        Runner(RunRequest(benchmark="synthetic", overrides={"eval.select": "best"}))
    no_retain = RunRequest(benchmark="synthetic", target="no/such/model", methods="ga",
                           overrides={"eval.per_epoch": "true", "eval.select": "utility_below_retain"})
    with pytest.raises(HarnessError, match="this run has none: pass --retain PATH"):
        Runner(no_retain, log=lambda *a: None).run()


QUICK = ["--benchmark", "synthetic", "--model", "tiny-random", "--limit", "3",
         "--set", "finetune.epochs=2", "--no-save-models"]


def test_run_with_per_epoch_evaluation_and_selection(tmp_path):
    results = tmp_path / "results"
    args = ["run", "--methods", "ga", "--results-dir", str(results), *QUICK, "--set", "train.epochs=2",
            "--set", "train.global_batch=4", "--set", "eval.per_epoch=true", "--set", "eval.select=utility_below_retain"]
    assert main(args) == 0
    record = json.loads(next(results.glob("synthetic/tiny-random/ga/*.json")).read_text())
    assert record["status"] == "ok" and [e["epoch"] for e in record["epochs"]] == [1, 2]
    chosen = record["selection"]
    assert chosen["rule"] == "utility_below_retain" and chosen["epoch"] in (1, 2) and chosen["reason"]
    assert record["aggregates"] == record["epochs"][chosen["epoch"] - 1]["aggregates"]
    losses = record["training"]["losses"]
    assert len(losses) == 2 * 2   # 6 forget texts in global batches of 4: two steps per epoch
    assert [e["loss"] for e in record["epochs"]] == [losses[len(losses) // 2 - 1], losses[-1]]
    assert record["timings"]["per_epoch_eval_s"] > 0 and "eval.select=utility_below_retain" in record["settings"]
    assert record["config"]["eval"]["per_epoch"] is True
    target = json.loads(next(results.glob("synthetic/tiny-random/target/*.json")).read_text())
    assert "select" not in target["config"]["eval"] and "selection" not in target
    board = (results / "LEADERBOARD.md").read_text()
    assert f"checkpoint of epoch {chosen['epoch']}, chosen by eval.select=utility_below_retain" in board


# --------------------------------------------------------------------------- rendering


def board_record(selection_record=None, **extra):
    record = {
        "benchmark": "synthetic", "model": "m", "method": "ga", "row": "GA", "kind": "method", "seed": 0,
        "config_id": "c1", "status": "ok", "aggregates": {"verbmem_f": 1.0, "model_utility": 0.5},
        "settings": "lr=1e-05", "data": {"source": "fixture"}, "training": {"losses": [1.0, 0.5, 0.2]}, **extra,
    }
    if selection_record is not None:
        record["selection"] = selection_record
    return record


def test_leaderboard_notes_a_selected_checkpoint_and_nothing_for_last():
    columns = {"synthetic": COLUMNS}
    plain = render_leaderboard([board_record()], columns)
    assert render_leaderboard([board_record({"rule": "last", "epoch": 3, "reason": "the final epoch"})], columns) == plain
    text = render_leaderboard([board_record({"rule": "utility_below_retain", "epoch": 2, "reason": "best Utility"})],
                              columns)
    assert "- ¹ checkpoint of epoch 2, chosen by eval.select=utility_below_retain: best Utility." in text


def test_training_plot_draws_scores_per_epoch(tmp_path):
    pytest.importorskip("matplotlib")
    from harness.leaderboard.plots import write_plots

    retain = board_record(kind="reference", method="retain", row="Retain", config_id="r",
                          aggregates={"rouge_f": 0.3, "model_utility": 0.9})
    run = [{"epoch": e, "aggregates": {"rouge_f": f, "model_utility": u}, "loss": -e}
           for e, f, u in [(1, 0.6, 0.8), (2, 0.2, 0.7), (3, 0.1, 0.3)]]
    chosen = {"rule": "utility_below_retain", "epoch": 2, "reason": "best Utility"}
    records = [retain, board_record(chosen, epochs=run)]
    files = write_plots(records, {"synthetic": COLUMNS}, tmp_path / "a")
    training = next(f for f in files if f.kind == "training")
    assert training.title == "training loss per step and scores per epoch"
    svg = training.paths["svg"].read_text()
    assert "epoch (ring: reported checkpoint)" in svg and "retain model" in svg and "training loss" in svg
    again = write_plots(list(reversed(records)), {"synthetic": COLUMNS}, tmp_path / "b")
    assert [p.read_bytes() for f in again for p in f.paths.values()] == \
           [p.read_bytes() for f in files for p in f.paths.values()]
    without = write_plots([retain, board_record()], {"synthetic": COLUMNS}, tmp_path / "c")
    assert next(f for f in without if f.kind == "training").title == "training loss per step"
