"""The scale-aware divergence guard, and loop settings a method declares (methods/base.py).

The guard judges a loss against the run's own first loss, not against a fixed number: a strong
RMU, whose loss starts in the thousands, trains; a loss that really grows without bound stops.
A method's declared loop settings reach its TrainConfig, lose to the benchmark's per-method
defaults and to --set, and the record and the settings column say where each came from.
"""
import json
import math

import pytest
import torch

from harness.cli import main
from harness.data.batching import Example
from harness.errors import HarnessError
from harness.methods.base import UnlearningMethod
from harness.methods.rmu import RMU, RMUConfig
from harness.run import config as cfgmod
from harness.run.runner import Runner, RunRequest
from harness.training.divergence import FLOOR, DivergenceGuard
from harness.training.finetune import Finetune
from harness.training.loop import TrainConfig, train
from harness.training.losses import answer_ce

FACTS = [Example(f"Q{i}:", f" fact number {i} is {w}") for i, w in enumerate(["zorb", "quix", "mavel", "tonk"])]
OTHER = [Example(f"R{i}:", f" other {w}") for i, w in enumerate(["alpha", "beta", "gamma", "delta"])]


def first_problem(losses, growth=1000.0):
    """The index of the first loss the guard refuses, or None."""
    guard = DivergenceGuard(growth)
    for i, value in enumerate(losses):
        if guard.problem(value) is not None:
            return i
    return None


# ------------------------------------------------------------------------------- the guard, by hand


def test_guard_accepts_rmu_like_losses_that_the_old_absolute_bound_refused():
    # RMU with update=all on SmolLM2 (issue 23): 60.9, 4987, 5531 -- beyond the old bound of 1000
    # from the second step, but 91x its own start, far below 1000x.
    assert first_problem([60.9, 4987.0, 5531.0, 3000.0]) is None
    # a loss that starts at 5000 (a large steering coefficient) may stay there
    assert first_problem([5000.0, 4800.0, 5200.0]) is None


def test_guard_bound_is_growth_times_the_first_loss_with_a_floor_of_one():
    assert FLOOR == 1.0
    # first loss 100: the bound is 1000 * 100 = 1e5, on either sign
    assert first_problem([100.0, 99_999.0, -99_999.0]) is None
    assert first_problem([100.0, 50.0, 100_001.0]) == 2
    assert first_problem([100.0, -100_001.0]) == 1
    # first loss 0.05 (a memorised answer's CE): the scale is the floor, 1, so the bound is 1000,
    # the old absolute bound; GA's negative CE growing to -1001 stops
    assert first_problem([0.05, -999.0]) is None
    assert first_problem([-0.05, -3.0, -1001.0]) == 2
    guard = DivergenceGuard(10.0)
    assert guard.problem(4.0) is None and guard.bound() == 40.0
    assert "grew beyond 10 x max(|first loss|, 1) = 40" in guard.problem(41.0)


def test_guard_always_stops_nan_and_inf_and_growth_zero_keeps_only_that():
    assert first_problem([1.0, float("nan")]) == 1
    assert first_problem([float("inf")]) == 0
    assert first_problem([-1.0, float("-inf")]) == 1
    assert first_problem([1.0, 1e30, -1e30], growth=0) is None
    assert first_problem([1.0, 1e30, float("nan")], growth=0) == 2
    assert DivergenceGuard(0).problem(float("nan")) == "the loss was nan"


# ------------------------------------------------------------------------------- the guard in the loop


def test_strong_rmu_on_the_tiny_model_is_not_stopped_at_step_zero(tiny):
    """c = 1000 puts the first loss far above the old absolute bound (1000): it now trains."""
    model, tok = tiny
    method = RMU(RMUConfig(layer=0, steering_coeff=1000.0, alpha=1200.0, update="all"))
    cfg = TrainConfig(lr=1e-3, epochs=3, global_batch=2, schedule="constant", max_grad_norm=0.0, weight_decay=0.0)
    result = train(model, tok, method, FACTS, OTHER, cfg, seed=0)
    assert result.losses[0] > 1000.0                 # the old guard stopped here, before any step
    assert result.status == "ok" and result.steps == 6 and result.diverged_at_step is None
    assert result.losses[-1] < result.losses[0]      # and it did what it asks: the distance to c·u fell


class GrowsHundredfoldPerStep(UnlearningMethod):
    name = "grows"
    description = "test method whose loss is multiplied by 100 at every step: diverging without bound"

    def loss(self, model, batch, ctx):
        return answer_ce(model, batch.forget) * 100.0 ** ctx.step, {}


def test_a_truly_diverging_loss_still_stops(tiny):
    model, tok = tiny
    cfg = TrainConfig(lr=1e-7, epochs=5, global_batch=2)   # lr so small that the CE itself barely moves
    result = train(model, tok, GrowsHundredfoldPerStep(), FACTS, None, cfg, seed=0)
    # step 1 is 100x the start (accepted), step 2 is 10,000x (refused)
    assert result.status == "diverged" and result.diverged_at_step == 2 and result.steps == 2
    assert "grew beyond 1000 x max(|first loss|, 1)" in result.diverged_because
    assert result.summary()["diverged_because"] == result.diverged_because
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_divergence_growth_setting_is_read_by_the_loop(tiny):
    model, tok = tiny
    cfg = TrainConfig(lr=1e-7, epochs=5, global_batch=2, divergence_growth=50.0)
    assert train(model, tok, GrowsHundredfoldPerStep(), FACTS, None, cfg, seed=0).diverged_at_step == 1
    ok = train(model, tok, Finetune(), FACTS, None, TrainConfig(lr=1e-3, epochs=2, global_batch=2), seed=0)
    assert ok.status == "ok" and "diverged_because" not in ok.summary()


def test_retired_max_abs_loss_is_refused_with_the_migration():
    with pytest.raises(HarnessError, match=r"'train.max_abs_loss' was retired: .*--set train.divergence_growth=N"):
        cfgmod.normalise_overrides({"max_abs_loss": "5"}, {"train": TrainConfig})
    with pytest.raises(HarnessError, match=r"'finetune.max_abs_loss' was retired: .*finetune.divergence_growth"):
        cfgmod.normalise_overrides({"finetune.max_abs_loss": "5"}, {"finetune": TrainConfig})
    # a benchmark's (or plugin's) defaults that still name it are refused too, not silently ignored
    with pytest.raises(HarnessError, match="'train.max_abs_loss' was retired"):
        cfgmod.build(TrainConfig, "train", [{"train.max_abs_loss": 1000.0}])


def test_retired_setting_fails_the_cli_before_any_work(tmp_path, capsys):
    code = main(["run", "--methods", "ga", "--benchmark", "synthetic", "--model", "tiny-random", "--limit", "2",
                 "--results-dir", str(tmp_path), "--set", "train.max_abs_loss=1000"])
    assert code != 0 and not list(tmp_path.iterdir())
    assert "train.divergence_growth" in capsys.readouterr().err


def test_divergence_growth_range_is_checked_up_front(tmp_path):
    with pytest.raises(HarnessError, match=r"train.divergence_growth=0.5: must be 0 \(off\) or > 1"):
        Runner(RunRequest(benchmark="synthetic", model="tiny-random", methods="ga", limit=2, results_dir=tmp_path,
                          overrides={"train.divergence_growth": "0.5"}), log=lambda *a: None)


# ------------------------------------------------------------------------------- declared loop settings


def runner(tmp_path, methods, **overrides):
    return Runner(RunRequest(benchmark="synthetic", model="tiny-random", methods=methods, limit=2,
                             results_dir=tmp_path, overrides=overrides), log=lambda *a: None)


def test_rmu_declares_the_wmdp_loop_and_the_runner_applies_it(tmp_path):
    assert RMU.loop_settings == {"lr": 5e-5, "schedule": "constant", "max_grad_norm": 0.0, "weight_decay": 0.0}
    assert "wmdp" in RMU.loop_settings_source
    r = runner(tmp_path, "rmu,ga")
    rmu, _ = r.method_configs("rmu")
    assert (rmu.schedule, rmu.max_grad_norm, rmu.weight_decay) == ("constant", 0.0, 0.0)
    sources = r.train_sources("rmu")
    assert sources["schedule"] == sources["max_grad_norm"] == sources["weight_decay"] == "method rmu"
    assert sources["global_batch"] == "benchmark" and sources["divergence_growth"] == "default"
    # a method that declares nothing keeps the loop's defaults
    ga, _ = r.method_configs("ga")
    assert (ga.schedule, ga.max_grad_norm, ga.weight_decay) == ("linear", 1.0, 0.01)
    assert r.train_sources("ga")["schedule"] == "default"


def test_declared_loop_settings_rank_above_benchmark_wide_and_below_per_method_defaults_and_set(tmp_path, monkeypatch):
    from harness.registry import BENCHMARKS

    bench = BENCHMARKS.get("synthetic")
    monkeypatch.setattr(bench, "method_defaults", {"*": {"train.lr": 1e-4, "train.weight_decay": 0.3},
                                                   "rmu": {"train.max_grad_norm": 2.0}})
    r = runner(tmp_path, "rmu", **{"train.schedule": "linear"})
    cfg, _ = r.method_configs("rmu")
    assert cfg.lr == 5e-5 and cfg.weight_decay == 0.0               # the method's beat the benchmark's "*"
    assert cfg.max_grad_norm == 2.0                                 # the benchmark's own rmu entry beats the method
    assert cfg.schedule == "linear"                                 # --set beats everything
    sources = r.train_sources("rmu")
    assert (sources["lr"], sources["max_grad_norm"], sources["schedule"]) == ("method rmu", "benchmark for rmu", "--set")


def test_a_plugin_declaring_an_unknown_loop_setting_is_refused_up_front(tmp_path, monkeypatch):
    monkeypatch.setattr(RMU, "loop_settings", {"learning_rate": 1e-3})
    with pytest.raises(HarnessError, match="method 'rmu' declares loop setting\\(s\\) learning_rate.*may name: lr"):
        runner(tmp_path, "rmu")


def test_record_and_settings_column_show_the_declared_loop(tmp_path):
    code = main(["run", "--methods", "rmu", "--benchmark", "synthetic", "--model", "tiny-random", "--limit", "2",
                 "--results-dir", str(tmp_path), "--no-save-models", "--set", "finetune.epochs=1",
                 "--set", "train.epochs=1", "--set", "train.max_grad_norm=0.5"])
    assert code == 0
    record = json.loads(next(tmp_path.glob("synthetic/tiny-random/rmu/*.json")).read_text())
    assert record["config"]["train"]["schedule"] == "constant" and record["config"]["train"]["weight_decay"] == 0.0
    assert record["train_sources"]["schedule"] == "method rmu" and record["train_sources"]["max_grad_norm"] == "--set"
    assert "; method rmu: schedule=constant, weight_decay=0; --set: max_grad_norm=0.5" in record["settings"]
    assert record["training"]["phases"]["rmu"]["steering_coeff"] > 0
    board = (tmp_path / "LEADERBOARD.md").read_text()
    assert "method rmu: schedule=constant, weight_decay=0" in board
    assert math.isfinite(record["training"]["losses"][-1])
