"""The relearning attacks' opt-in settings (learning-rate grid, per-step curve, LoRA attacker) and the
bitsandbytes protocols, on tiny random models that really train; and that the defaults record exactly
what they recorded before these settings existed."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from harness.attacks import bnb, grid, suite
from harness.attacks.suite import AttackConfig, Attacks
from harness.benchmarks.synthetic import Synthetic, SyntheticConfig
from harness.errors import HarnessError
from harness.runtime.models import LoadedModel, build_tiny_random
from harness.training.lora import LoraSettings, lora_layers
from harness.training.loop import TrainConfig

from test_attack_protocols import FINETUNE, People, _evaluate

BUDGET = 1e-3


def _bench():
    return Synthetic(SyntheticConfig(num_forget=2, num_retain=2, num_holdout=2, qa_per_person=2, utility_items=4))


def _model(seed=0):
    torch.manual_seed(seed)
    model, tok = build_tiny_random()
    return LoadedModel(model.float(), tok, "tiny", "test")


def _method_block(cfg, bench=None, lora=None, loaded=None, evaluate=_evaluate, refs=None):
    bench = bench or _bench()
    attacks = Attacks(("relearn-heldout",), cfg, bench, FINETUNE, 0, Synthetic.columns, unlearning_budget=BUDGET,
                      lora=lora)
    for role, block in (refs or {}).items():
        attacks.remember(role, {"status": "ok", "attacks": {"relearn-heldout": block}})
    loaded = loaded or _model()
    out = {"aggregates": {}}
    return attacks, attacks.method_stage(loaded, evaluate, out, None)["relearn-heldout"]


def _without_timings(block):
    return {k: v for k, v in block.items() if k != "timings"}


# --- validation before any model loads ------------------------------------------------------------
@pytest.mark.parametrize("spec, message", [("0.5,x", "'x' is not a number"), ("0.5,-1", "positive"),
                                           ("1", "at least 2"), ("0.5,0.5", "given twice")])
def test_a_bad_grid_is_refused_by_the_settings(spec, message):
    with pytest.raises(HarnessError, match=message):
        AttackConfig(relearn_lr_grid=spec)


def test_grid_multiples_above_the_budget_need_over_budget():
    with pytest.raises(HarnessError, match="over_budget=true"):
        Attacks(("relearn-heldout",), AttackConfig(relearn_lr_grid="0.5,2"), People(), FINETUNE, 0, Synthetic.columns,
                unlearning_budget=BUDGET)
    attacks = Attacks(("relearn-heldout",), AttackConfig(relearn_lr_grid="0.5,2", over_budget=True), People(), FINETUNE,
                      0, Synthetic.columns, unlearning_budget=BUDGET)
    base = attacks.plans["relearn-heldout"].cfg.lr
    assert [(m, c.lr) for m, c in attacks.plans["relearn-heldout"].points] == [(0.5, 0.5 * base), (2.0, 2 * base)]


def test_options_that_would_do_nothing_are_refused():
    with pytest.raises(HarnessError, match="names neither"):
        Attacks(("int8",), AttackConfig(relearn_lr_grid="0.5,1"), People(), FINETUNE, 0, Synthetic.columns,
                unlearning_budget=BUDGET)
    with pytest.raises(HarnessError, match="relearn_curve applies"):
        Attacks(("int8",), AttackConfig(relearn_curve=True), People(), FINETUNE, 0, [], unlearning_budget=BUDGET)
    with pytest.raises(HarnessError, match="lora.r applies"):
        Attacks(("int4",), AttackConfig(), People(), FINETUNE, 0, [], unlearning_budget=BUDGET, lora=LoraSettings(r=2))
    with pytest.raises(HarnessError, match="not a forget column"):
        Attacks(("relearn-heldout",), AttackConfig(relearn_lr_grid="0.5,1", relearn_lr_column="model_utility"),
                People(), FINETUNE, 0, Synthetic.columns, unlearning_budget=BUDGET)


def test_bnb_attacks_are_refused_up_front_without_bitsandbytes(monkeypatch):
    monkeypatch.setattr(bnb, "available", lambda: False)
    with pytest.raises(HarnessError, match="pip install bitsandbytes"):
        Attacks(("bnb-nf4",), AttackConfig(), People(), FINETUNE, 0, [])
    assert suite.parse_attacks("bnb-int8,bnb-fp4,bnb-nf4") == ("bnb-int8", "bnb-fp4", "bnb-nf4")


# --- defaults: exactly today's block ------------------------------------------------------------
def test_the_default_settings_record_what_explicit_old_values_record():
    default_attacks, default = _method_block(AttackConfig())
    lr = default_attacks.plans["relearn-heldout"].cfg.lr
    explicit_attacks, explicit = _method_block(AttackConfig(relearn_steps=4, relearn_lr=lr, relearn_warmup_ratio=0.5,
                                                            over_budget=False))
    assert _without_timings(default) == _without_timings(explicit)
    # the keys the block and the settings had before the opt-in settings existed, and no others
    assert set(default) == {"settings", "seed", "split", "items", "unattacked", "aggregates", "per_sample", "missing",
                            "training", "timings", "eval_counts"}
    assert set(default["settings"]) == {"source", "steps", "lr", "warmup_ratio", "schedule", "global_batch",
                                        "examples", "loss"}
    assert set(default["timings"]) == {"train_s", "eval_s", "total_s"}
    assert set(default_attacks.settings()["relearn-heldout"]) == {"source", "train", "split", "cumulative_lr",
                                                                  "unlearning_cumulative_lr"}
    assert default["training"]["steps"] == 4 and default["settings"]["lr"] == pytest.approx(lr)


# --- the grid -------------------------------------------------------------------------------------
def test_choose_keeps_the_most_recovery_among_points_that_pass_and_never_one_that_breaks_the_guard():
    ok = {"passed": True, "reasons": []}
    broken = {"passed": False, "reasons": ["VerbMem f: the attacked target keeps 10.0% of the target-retain gap"]}
    points = [{"multiple": 0.25, "aggregates": {"prob_f": 0.30}, "guard": ok},
              {"multiple": 0.5, "aggregates": {"prob_f": 0.45}, "guard": ok},
              {"multiple": 1.0, "aggregates": {"prob_f": 0.90}, "guard": broken}]
    kept, why = grid.choose(points, "prob_f")
    assert kept == 0.5 and "most recovery on prob_f" in why
    assert grid.choose([{**p, "guard": broken} for p in points], "prob_f")[0] is None
    tie = [{"multiple": 0.5, "aggregates": {"prob_f": 0.4}, "guard": ok},
           {"multiple": 0.25, "aggregates": {"prob_f": 0.4}, "guard": ok}]
    assert grid.choose(tie, "prob_f")[0] == 0.25   # a tie keeps the smaller attack
    assert grid.nearest_budget([0.25, 0.5, 2.0]) == 0.5 and grid.nearest_budget([0.5, 2.0]) == 0.5


def _reference_block(unattacked: dict, per_point: dict[float, dict]) -> dict:
    return {"unattacked": unattacked, "lr_grid": {"points": [
        {"multiple": m, "aggregates": aggs, "per_sample": {}} for m, aggs in per_point.items()]}}


def test_a_grid_run_records_every_point_and_keeps_one_whose_references_pass_the_guard():
    cfg = AttackConfig(relearn_lr_grid="0.25,0.5,1", relearn_lr_column="prob_f")
    before_t, before_r = {"prob_f": 0.9, "model_utility": 0.5}, {"prob_f": 0.1, "model_utility": 0.5}
    # constructed references: at x1 the attacked target keeps only half of its gap (the guard breaks there)
    target = _reference_block(before_t, {0.25: {"prob_f": 0.9}, 0.5: {"prob_f": 0.88}, 1.0: {"prob_f": 0.5}})
    retain = _reference_block(before_r, {m: {"prob_f": 0.1, "model_utility": 0.5} for m in (0.25, 0.5, 1.0)})
    attacks, block = _method_block(cfg, refs={"target": target, "retain": retain})
    points = block["lr_grid"]["points"]
    assert [p["multiple"] for p in points] == [0.25, 0.5, 1.0]
    base = attacks.plans["relearn-heldout"].cfg.lr
    assert [p["lr"] for p in points] == pytest.approx([0.25 * base, 0.5 * base, base])
    for p in points:   # every point is a real attacked copy, trained and scored
        assert p["training"]["steps"] == 4 and "prob_f" in p["aggregates"] and p["settings"]["lr"] == p["lr"]
    assert [p["guard"]["passed"] for p in points] == [True, True, False]
    admissible = {p["multiple"]: p["aggregates"]["prob_f"] for p in points if p["guard"]["passed"]}
    kept = block["lr_grid"]["kept"]
    assert kept == max(admissible, key=lambda m: (admissible[m], -m)) and kept != 1.0
    chosen = next(p for p in points if p["multiple"] == kept)
    assert block["aggregates"] == chosen["aggregates"] and block["settings"]["lr"] == chosen["lr"]
    assert block["lr_grid"]["shown"] == kept and "most recovery on prob_f" in block["lr_grid"]["why"]
    assert attacks.settings()["relearn-heldout"]["lr_grid"]["multiples"] == [0.25, 0.5, 1.0]


def test_a_grid_without_the_references_keeps_nothing_and_says_why():
    _, block = _method_block(AttackConfig(relearn_lr_grid="0.5,1"))
    assert block["lr_grid"]["kept"] is None and "not available" in block["lr_grid"]["why"]
    assert block["lr_grid"]["shown"] == 1.0   # the point nearest the budget is what the row shows


# --- the curve ------------------------------------------------------------------------------------
def test_the_curve_has_one_entry_per_step_and_does_not_change_the_attack():
    _, plain = _method_block(AttackConfig())
    attacks, curved = _method_block(AttackConfig(relearn_curve=True))
    curve = curved["curve"]
    assert [c["step"] for c in curve] == [1, 2, 3, 4]
    assert curve[-1]["aggregates"] == plain["aggregates"] == curved["aggregates"]
    assert curved["training"]["losses"] == plain["training"]["losses"]   # scoring between steps left training alone
    assert curve[0]["aggregates"] != curve[-1]["aggregates"]               # the steps were really scored apart
    assert curved["timings"]["curve_eval_s"] > 0
    assert "curve" in attacks.settings()["relearn-heldout"]


# --- the LoRA attacker ----------------------------------------------------------------------------
def test_the_lora_attacker_changes_only_low_rank_updates_of_linear_layers_then_merges():
    loaded = _model()
    original = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    seen = []

    def evaluate(model, view, reference, self_reference=False):
        seen.append(model.model)
        return _evaluate(model, view, reference, self_reference)

    attacks, block = _method_block(AttackConfig(), lora=LoraSettings(r=2, alpha=4.0), loaded=loaded, evaluate=evaluate)
    attacked = seen[-1]
    assert attacked is not loaded.model and not lora_layers(attacked)      # merged: plain modules again
    state = attacked.state_dict()
    assert set(state) == set(original)                                     # the same names as before
    head = attacked.get_output_embeddings()
    linear = {f"{n}.weight" for n, m in attacked.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    changed = 0
    for key, before in original.items():
        delta = (state[key] - before).float()
        if key in linear:
            changed += int(delta.abs().max() > 0)
            assert torch.linalg.matrix_rank(delta, atol=1e-6) <= 2, key   # a rank-2 adapter, folded in
        else:
            assert torch.equal(state[key], before), key                    # embeddings, norms: untouched
    assert changed == len(linear)
    assert all(torch.equal(v, original[k]) for k, v in loaded.model.state_dict().items())   # the model itself
    assert block["settings"]["lora"]["r"] == 2 and attacks.settings()["relearn-heldout"]["lora"]["alpha"] == 4.0


# --- bitsandbytes ---------------------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
@pytest.mark.parametrize("name", list(bnb.BNB))
def test_bnb_quantisation_writes_back_what_bitsandbytes_dequantises(name):
    import bitsandbytes.functional as F

    loaded = _model()
    layer = dict(loaded.model.named_modules())["model.layers.0.mlp.down_proj"]
    weight = layer.weight.detach().clone()
    summary = bnb.bnb_quantise_model_(loaded.model, name)
    bits, kind = bnb.BNB[name]
    if kind == "int8":
        q, scale, _ = F.int8_vectorwise_quant(weight.half())
        step = scale.float()[:, None] / 127
        assert torch.all((layer.weight - weight).abs() <= step / 2 + 1e-3)
        assert torch.equal(layer.weight, F.int8_vectorwise_dequant(q, scale).float())
    else:
        values = torch.unique(layer.weight[0, :64] / weight[0, :64].abs().max())
        assert len(values) <= 16                                          # 4 bits: at most 16 levels per block
    assert summary["bits"] == bits and summary["weights_changed"] > 0


# --- the leaderboard reads references at each method's grid point and shows the curve -------------
def test_the_robustness_table_reads_the_references_at_the_point_the_method_kept():
    from test_robustness import COLUMNS, RETAIN_BEFORE, TARGET_BEFORE, U, block, cells, row

    from leaderboard.robustness import attack_tables, render_robustness

    def gridded(before, per_point, shown, kept=None):
        points = []
        for m, items in per_point.items():
            b = block(before, items, U)
            b["curve"] = [{"step": 1, "aggregates": {"verbmem": items[0]}}, {"step": 2, "aggregates": b["aggregates"]}]
            points.append({"multiple": m, **{k: b[k] for k in ("aggregates", "per_sample", "curve")}})
        top = block(before, per_point[shown], U)
        return {**top, "curve": points[list(per_point).index(shown)]["curve"],
                "lr_grid": {"column": "verbmem", "kept": kept, "shown": shown, "why": "constructed", "points": points}}

    # at x0.5 the references keep their gap; the references' own rows show x1 (nearest the budget)
    target = row("reference", "target", "Target", [{"seed": 0, "attacks": {"relearn-heldout": gridded(
        TARGET_BEFORE, {0.5: [80, 82, 78, 81, 79, 80], 1.0: [20, 22, 18, 21, 19, 20]}, 1.0)}}])
    retain = row("reference", "retain", "Retain", [{"seed": 0, "attacks": {"relearn-heldout": gridded(
        RETAIN_BEFORE, {0.5: [10, 12, 8, 11, 9, 10], 1.0: [10, 12, 8, 11, 9, 10]}, 1.0)}}])
    ga = row("method", "ga", "GA", [{"seed": 0, "attacks": {"relearn-heldout": gridded(
        {"verbmem": 5.0}, {0.5: [25, 30, 26, 29, 27, 28], 1.0: [40, 40, 40, 40, 40, 40]}, 0.5, kept=0.5)}}])
    (table,) = attack_tables([target, retain, ga], COLUMNS)
    t = next(ln for ln in table.lines if ln.kind == "target")
    assert t.after["verbmem"] == pytest.approx(80.0)          # the target at x0.5, not its own x1
    assert table.guard.passed and "GA kept x0.5" in table.note and table.title == "relearn-heldout @ lr x0.5"
    ga_line = next(ln for ln in table.lines if ln.kind == "method")
    assert ga_line.shares["verbmem"]["value"] == pytest.approx(0.25)
    text = render_robustness([target, retain, ga], COLUMNS)
    assert "Relearning curve of *relearn-heldout @ lr x0.5*" in text
    curve_rows = [r for r in cells(text) if r[0] in ("Target (reference)", "GA") and len(r) == 4]
    assert curve_rows == [["Target (reference)", "85.0", "80.0", "80.0"], ["GA", "5.0", "25.0", "27.5"]]
