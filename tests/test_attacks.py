"""Attacks (eval.attacks): disjoint forget halves, RTN quantisation bounds, relearning, records and table."""
import copy
import json
import math
from pathlib import Path

import pytest
import torch

from harness.attacks.suite import AttackConfig, Attacks, cumulative_lr, parse_attacks, split_units
from harness.benchmarks.synthetic import Synthetic, SyntheticConfig
from harness.cli import main
from harness.engines.hf import HFEngine
from harness.engines.base import LogprobRequest
from harness.errors import HarnessError
from harness.engines.plan import run_plan
from harness.methods.ga import GradientAscent
from harness.runtime.models import LoadedModel, build_tiny_random
from harness.training.finetune import Finetune
from harness.attacks.quantize import max_rtn_error, quantise_model_, quantised_linears, rtn_dequantize
from harness.training.loop import TrainConfig, train

from conftest import data_root


# --- the split -------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 7, 40])
def test_halves_never_overlap_and_cover_every_unit(n):
    units = [f"u{i}" for i in range(n)]
    for seed in range(5):
        split = split_units(units, seed)
        assert not set(split.relearn) & set(split.scored)
        assert sorted(split.relearn + split.scored) == sorted(units)
        assert len(split.relearn) == n // 2 and split == split_units(list(reversed(units)), seed)
    assert len({split_units(units, s).relearn for s in range(10)}) > 1 or n == 2


def test_one_unit_cannot_be_split():
    with pytest.raises(HarnessError, match="at least 2"):
        split_units(["only"], 0)


def test_synthetic_halves_share_no_person_between_training_and_scoring():
    bench = Synthetic(SyntheticConfig(num_forget=4, num_retain=4, num_holdout=2, qa_per_person=3))
    split = split_units(bench.forget_units(), seed=3)
    relearn, scored = bench.forget_subset(split.relearn), bench.forget_subset(split.scored)
    taught = " ".join(e.prompt + e.answer for e in relearn.forget_train())
    plan = scored.eval_plan()
    scored_people = {q.person for q in scored.forget_qa} | {b.person for b in scored.forget_bio}
    assert scored_people == set(split.scored) and len(plan.generations["qa_forget"]) == 2 * 3
    for person in split.scored:   # no name of a scored person appears in what the attack trains on
        assert person not in taught
    assert plan.generations["qa_retain"] == bench.eval_plan().generations["qa_retain"]  # utility kept whole
    assert plan.logprobs["mia_holdout"] == bench.eval_plan().logprobs["mia_holdout"]
    assert len(bench.forget_qa) == 12  # the original adapter is untouched


def test_tofu_halves_are_whole_authors():
    folder = data_root() / "tofu"
    if not (folder / "forget05.json").is_file():
        pytest.skip("TOFU data not available")
    from harness.benchmarks.tofu import Tofu, TofuConfig

    bench = Tofu(TofuConfig(split="forget05"), folder)
    assert len(bench.forget_units()) == 10   # 200 questions, 20 per author
    split = split_units(bench.forget_units(), 0)
    relearn, scored = bench.forget_subset(split.relearn), bench.forget_subset(split.scored)
    trained = {e.prompt for e in relearn.forget_train()}
    asked = {r.prompt for r in scored.eval_plan().generations["gen_forget"]}
    assert len(trained) == 100 and len(asked) == 100 and not trained & asked
    assert scored.eval_sets["retain"] == bench.eval_sets["retain"]


def test_muse_scored_items_are_not_in_the_relearn_articles():
    folder = data_root() / "muse-news"
    if not (folder / "raw" / "forget.json").is_file():
        pytest.skip("MUSE-News data not available")
    from harness.benchmarks.muse_news import MuseNews, MuseNewsConfig

    bench = MuseNews(MuseNewsConfig(retain_source="none"), folder)
    split = split_units(bench.forget_units(), 0)
    relearn, scored = bench.forget_subset(split.relearn), bench.forget_subset(split.scored)
    taught = " ".join(" ".join(e.answer.split()) for e in relearn.forget_train())
    assert 0 < len(scored.verbmem) < len(bench.verbmem) and 0 < len(scored.forget_qa) < len(bench.forget_qa)
    for r in scored.verbmem:
        assert " ".join(r["gt"].split())[:120] not in taught
    for text in scored.privleak_forget:
        assert " ".join(text.split())[200:320] not in taught
    assert scored.retain_qa == bench.retain_qa and scored.privleak_holdout == bench.privleak_holdout


# --- quantisation ----------------------------------------------------------------------------
def test_rtn_matches_a_hand_computation():
    # one group [0, 0.1, 0.25, 1.0] at 2 bits: step 1/3, zero point 0, codes [0, 0, 1, 3]
    w = torch.tensor([[0.0, 0.1, 0.25, 1.0]])
    assert torch.allclose(rtn_dequantize(w, 2, 4), torch.tensor([[0.0, 0.0, 1 / 3, 1.0]]))
    # two groups of three at 2 bits: [-0.5, 0.2, 1.0] (step 0.5, zero point 1, codes [0, 1, 3] -> -0.5, 0, 1)
    # and [2, 2, 2] (constant: exact)
    w = torch.tensor([[-0.5, 0.2, 1.0, 2.0, 2.0, 2.0]])
    assert torch.allclose(rtn_dequantize(w, 2, 3), torch.tensor([[-0.5, 0.0, 1.0, 2.0, 2.0, 2.0]]))


@pytest.mark.parametrize("bits,group", [(8, 128), (4, 128), (4, 32), (3, 50)])
def test_rtn_error_stays_within_half_a_step(bits, group):
    torch.manual_seed(bits * 1000 + group)
    w = torch.randn(16, 300) * torch.logspace(-3, 0, 16).unsqueeze(1)   # rows of very different ranges
    w[3, 7] = 25.0                                                       # an outlier widens its group only
    deq = rtn_dequantize(w, bits, group)
    bound = max_rtn_error(w, bits, group)
    assert torch.all((deq - w).abs() <= bound * (1 + 1e-5) + 1e-7)
    assert (deq - w).abs().max() > 0
    for g in torch.split(deq, group, dim=1):   # each group holds at most 2**bits distinct values
        assert all(len(torch.unique(row)) <= 2 ** bits for row in g)


def test_quantisation_keeps_the_output_head_and_int8_keeps_tiny_logprobs():
    """int8 of the tiny model moves per-token log-probs by less than 0.02 nats, and far less than int4.

    Why 0.02: a weight moves by at most half a step, step = group range / 255; for the tiny model's
    weights (|w| < 0.09, std 0.02) that is < 3.5e-4, under 2% of the weight std, so every linear
    output moves by about 1% or less and a log-prob (around -5.6 nats here) by hundredths of a nat
    at most (measured: 0.003). int4's step is 17 times larger, so its change must be several times
    int8's (measured: 0.032, 10x); a quantiser that did nothing, or the wrong thing, fails one of these.
    """
    model, tok = build_tiny_random()
    model = model.float().eval()
    requests = [LogprobRequest("Question: who is Alice?\nAnswer:", " a painter from the north"),
                LogprobRequest("", "The quick brown fox jumps over the lazy dog.")]

    def logprobs(m):
        return [s.logprobs for s in HFEngine(m, tok, 8, 256).logprobs(requests)]

    base, moved = logprobs(model), {}
    for bits in (8, 4):
        q = copy.deepcopy(model)
        summary = quantise_model_(q, bits, 128)
        assert summary["layers"] == len(quantised_linears(model)) == 14
        assert torch.equal(q.get_output_embeddings().weight, model.get_output_embeddings().weight)
        moved[bits] = max(abs(a - b) for x, y in zip(base, logprobs(q)) for a, b in zip(x, y))
    assert 0 < moved[8] < 0.02
    assert moved[4] > 4 * moved[8]


# --- names ------------------------------------------------------------------------------------
def test_unknown_attack_is_refused_up_front(tmp_path, capsys):
    assert parse_attacks("relearn, int4,relearn-heldout") == ("relearn-heldout", "int4")   # the 0.1 name is an alias
    code = main(["run", "--benchmark", "synthetic", "--model", "tiny-random", "--methods", "ga",
                 "--results-dir", str(tmp_path), "--set", "eval.attacks=relearn,int3"])
    assert code != 0 and "unknown attack 'int3'" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.json"))


# --- relearning ------------------------------------------------------------------------------
def _forget_ce(model, tok, bench) -> float:
    """Mean token cross-entropy of the (scored) forget answers, from the engine's log-probs."""
    outputs = run_plan(HFEngine(model, tok, 16, 256), bench.eval_plan())
    tokens = [lp for s in outputs.logprobs["answer_forget"] for lp in s.logprobs]
    return -sum(tokens) / len(tokens)


def test_relearning_after_ga_brings_the_held_out_forget_ce_back_towards_the_target():
    bench = Synthetic(SyntheticConfig(num_forget=4, num_retain=4, num_holdout=2, qa_per_person=3))
    model, tok = build_tiny_random()
    model = model.float()
    finetune = TrainConfig(lr=3e-3, epochs=25, global_batch=8, micro_batch=8, weight_decay=0.0)
    train(model, tok, Finetune(), bench.forget_train() + bench.retain_train(), None, finetune, seed=0)
    unlearning = TrainConfig(lr=3e-3, epochs=3, global_batch=8, micro_batch=8)
    budget = cumulative_lr(unlearning, len(bench.forget_train()))
    assert budget == pytest.approx(3e-3 * (6 + 5 + 4 + 3 + 2 + 1) / 6)   # 6 steps, linear decay from 3e-3
    attacks = Attacks(("relearn",), AttackConfig(relearn_steps=5), bench, finetune, 0, Synthetic.columns,
                      unlearning_budget=budget)
    plan = attacks.plans["relearn-heldout"]
    # 5 steps, 2 warming up (0.5, 1), then decaying (1, 2/3, 1/3): 3.5 lr-steps spend the whole budget
    assert plan.cfg.lr == pytest.approx(budget / 3.5) and plan.cfg.warmup_ratio == 0.5
    scored = plan.scored_view
    target_ce = _forget_ce(model, tok, scored)
    train(model, tok, GradientAscent(), bench.forget_train(), None, unlearning, seed=0)
    unlearned_ce = _forget_ce(model, tok, scored)
    assert unlearned_ce > target_ce + 1.0   # GA removed a lot on the held-out half

    def evaluate(loaded, bench_view, reference, self_reference=False):
        assert bench_view is scored    # the relearning attack scores only the held-out half
        return {"aggregates": {"ce_f": _forget_ce(loaded.model, loaded.tokenizer, bench_view)}, "missing": {},
                "per_sample": {}, "timings": {"eval_s": 0.0}, "eval_counts": {}, "reference_values": {}}

    before = copy.deepcopy(model.state_dict())
    block = attacks.method_stage(LoadedModel(model, tok, "tiny", "test"), evaluate, {"aggregates": {}},
                                 None)["relearn-heldout"]
    relearned_ce = block["aggregates"]["ce_f"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # a copy was attacked
    assert block["training"]["steps"] == 5 and block["unattacked"]["ce_f"] == pytest.approx(unlearned_ce)
    share = (unlearned_ce - relearned_ce) / (unlearned_ce - target_ce)
    assert share > 0.3, (target_ce, unlearned_ce, relearned_ce)
    assert not set(block["split"]["relearn_units"]) & set(block["split"]["scored_units"])


def test_a_relearning_rate_beyond_the_unlearning_budget_is_refused_up_front():
    bench = Synthetic(SyntheticConfig(num_forget=4, num_retain=4, num_holdout=2, qa_per_person=3))
    finetune = TrainConfig(lr=1e-4, epochs=1, global_batch=8, micro_batch=8)
    with pytest.raises(HarnessError, match="more than the unlearning's"):
        Attacks(("relearn-heldout",), AttackConfig(relearn_steps=4, relearn_lr=1e-3), bench, finetune, 0,
                Synthetic.columns, unlearning_budget=3.5e-4)
    allowed = Attacks(("relearn-heldout",), AttackConfig(relearn_steps=4, relearn_lr=1e-3, over_budget=True), bench,
                      finetune, 0, Synthetic.columns, unlearning_budget=3.5e-4)
    assert allowed.plans["relearn-heldout"].cfg.lr == 1e-3
    ou = Attacks(("relearn-openunlearning",), AttackConfig(), bench, finetune, 0, Synthetic.columns,
                 unlearning_budget=3.5e-4).plans["relearn-openunlearning"]
    # arXiv 2506.12618 Sec. 4.1: one epoch over the whole forget set at lr 2e-5
    assert (ou.cfg.lr, ou.cfg.epochs, ou.cfg.max_steps) == (2e-5, 1, 0) and ou.train_view is bench is ou.scored_view


# --- end to end ------------------------------------------------------------------------------
def test_run_with_attacks_records_them_and_renders_the_robustness_table(tmp_path):
    results = tmp_path / "results"
    args = ["run", "--benchmark", "synthetic", "--model", "tiny-random", "--limit", "3", "--methods", "ga",
            "--set", "finetune.epochs=2", "--set", "train.epochs=1", "--no-save-models",
            "--set", "eval.attacks=relearn,int8,int4", "--set", "attack.relearn_steps=2",
            "--results-dir", str(results)]
    assert main(args) == 0
    records = {p.parent.name: json.loads(p.read_text()) for p in results.glob("synthetic/tiny-random/*/*.json")}
    ga, retain, target = records["ga"], records["retain"], records["target"]
    names = {"relearn-heldout", "int8", "int4"}
    assert set(ga["attacks"]) == set(retain["attacks"]) == set(target["attacks"]) == names   # references attacked too
    assert ga["config"]["attack"]["names"] == ["relearn-heldout", "int8", "int4"]
    relearn = ga["attacks"]["relearn-heldout"]
    assert relearn["seed"] == 0 and relearn["training"]["steps"] == 2 and relearn["settings"]["steps"] == 2
    assert not set(relearn["split"]["relearn_units"]) & set(relearn["split"]["scored_units"])
    budget = ga["config"]["attack"]["relearn-heldout"]
    assert budget["cumulative_lr"] == pytest.approx(budget["unlearning_cumulative_lr"])   # no larger than unlearning
    # the target really is quantised: its int4 copy changed weights and per-item scores
    int4 = target["attacks"]["int4"]
    assert int4["settings"]["bits"] == 4 and int4["settings"]["weights_changed"] > 0
    assert int4["unattacked"] == target["aggregates"]
    probs = lambda per: [r["probability"] for r in per["qa_forget"]]   # noqa: E731
    assert probs(int4["per_sample"]) != probs(target["per_sample"])
    assert ga["attacks"]["int8"]["unattacked"] == ga["aggregates"]
    board = (results / "LEADERBOARD.md").read_text()
    assert "**Robustness**" in board and "| Retain (reference) | relearn-heldout (held-out units)" in board
    assert "| GA                 | int4 (all items)" in board and "| Target (reference) | int4 (all items)" in board
    # a second run skips every finished cell, and the table survives a re-render from the records
    assert main(args) == 0 and main(["leaderboard", "--results-dir", str(results)]) == 0
    assert (results / "LEADERBOARD.md").read_text() == board
    pytest.importorskip("matplotlib")
    assert main(["leaderboard", "--results-dir", str(results), "--plots"]) == 0
    # the file name carries the section's data cut (--limit) since rows of different cuts never mix
    assert len(list((results / "plots").glob("robustness-synthetic-tiny-random*.svg"))) <= 1
