"""The relearning protocols' data splits, the prompt format they train in, the guard, the residual share,
and OpenUnlearning's R and Q, each against a small constructed benchmark or numbers worked out by hand."""
from __future__ import annotations

import pytest
import torch

from harness.attacks import suite
from harness.attacks.scores import (
    guard,
    harmonic,
    quantisation_robustness,
    relearn_robustness,
    residual_share,
    share_interval,
)
from harness.attacks.suite import AttackConfig, Attacks, split_facts, split_units
from harness.benchmarks.base import Benchmark
from harness.benchmarks.synthetic import Synthetic, SyntheticConfig
from harness.data.batching import Example
from harness.data.chat import has_chat_template
from harness.engines.hf import HFEngine
from harness.engines.plan import EvalPlan, run_plan
from harness.leaderboard.columns import Column
from harness.runtime.models import LoadedModel, build_tiny_random
from harness.scoring.uncertainty import ItemMean
from harness.training.finetune import Finetune
from harness.training.loop import TrainConfig, TrainResult, train

from conftest import data_root

FINETUNE = TrainConfig(lr=1e-4, epochs=1, global_batch=4, micro_batch=4)


class People(Benchmark):
    """Three people with four questions each and a biography; a prompt format the tokenizer decides."""

    name = "people"
    FACTS = {f"p{p}-q{q}": f"p{p}" for p in range(3) for q in range(4)}

    def __init__(self):
        super().__init__()
        self.facts = sorted(self.FACTS)
        self.bios = [f"p{p}" for p in range(3)]
        self.style = "plain"      # what the benchmark assumes until it has seen the model's tokenizer

    def use_tokenizer(self, tokenizer):
        self.style = "chat" if has_chat_template(tokenizer) else "plain"

    def forget_train(self):
        return ([Example(f"[{self.style}] {f}?", f" answer {f}", f) for f in self.facts]
                + [Example("", f"biography of {p}", p) for p in self.bios])

    def forget_units(self):
        return sorted({self.FACTS[f] for f in self.facts} | set(self.bios))

    def _keep_forget(self, units):
        self.facts = [f for f in self.facts if self.FACTS[f] in units]
        self.bios = [p for p in self.bios if p in units]

    def forget_facts(self):
        return {f: self.FACTS[f] for f in self.facts}

    def _keep_facts(self, facts):
        self.facts = [f for f in self.facts if f in facts]
        self.bios = []

    def eval_plan(self):
        return EvalPlan()


def _capture_training(monkeypatch) -> list:
    seen = []

    def fake_train(model, tokenizer, method, examples, retain, cfg, seed, progress=None):
        seen.append(list(examples))
        return TrainResult(steps=cfg.max_steps or 1)

    monkeypatch.setattr(suite, "train", fake_train)
    return seen


def _no_eval(loaded, view, reference, self_reference=False):
    return {"aggregates": {}, "per_sample": {}, "missing": {}, "reference_values": {}, "timings": {"eval_s": 0.0},
            "eval_counts": {}}


def _chat_model():
    model, tok = build_tiny_random()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return LoadedModel(model, tok, "tiny", "test")


# --- the prompt format (TOFU: `auto` resolves only once the tokenizer is known) -------------------
def test_relearning_trains_in_the_prompt_format_the_tokenizer_resolves(monkeypatch):
    bench = People()
    attacks = Attacks(("relearn-heldout", "relearn-same-entity", "relearn-openunlearning"), AttackConfig(), bench,
                      FINETUNE, 0, [], unlearning_budget=1e-3)   # built before any tokenizer, as the runner does
    seen = _capture_training(monkeypatch)
    attacks.method_stage(_chat_model(), _no_eval, {"aggregates": {}}, None)
    assert len(seen) == 3
    for examples in seen:
        prompts = [e.prompt for e in examples if e.prompt]
        assert prompts and all(p.startswith("[chat]") for p in prompts), prompts


def test_tofu_relearning_trains_in_the_chat_format_its_models_were_scored_in(monkeypatch):
    folder = data_root() / "tofu"
    if not (folder / "forget01.json").is_file():
        pytest.skip("TOFU data not available")
    from harness.benchmarks.tofu import Tofu, TofuConfig

    bench = Tofu(TofuConfig(split="forget01"), folder)
    attacks = Attacks(("relearn-heldout",), AttackConfig(), bench, FINETUNE, 0, Tofu.columns, unlearning_budget=1e-3)
    seen = _capture_training(monkeypatch)
    loaded = _chat_model()
    attacks.method_stage(loaded, _no_eval, {"aggregates": {}}, None)
    view = attacks.plans["relearn-heldout"].train_view
    assert view.resolved_settings() == {"prompt_format": "chat"}
    chat = view.forget_train()
    assert [e.prompt for e in seen[0]] == [e.prompt for e in chat]
    phi = Tofu(TofuConfig(split="forget01", prompt_format="phi"), folder).forget_subset(view.forget_units()).forget_train()
    assert [e.prompt for e in seen[0]] != [e.prompt for e in phi]   # what the old code trained on


# --- the splits ----------------------------------------------------------------------------------
def test_heldout_trains_on_whole_units_and_scores_the_others():
    bench = People()
    plan = Attacks(("relearn-heldout",), AttackConfig(), bench, FINETUNE, 1, [], unlearning_budget=1e-3).plans[
        "relearn-heldout"]
    trained, scored = set(plan.train_view.forget_units()), set(plan.scored_view.forget_units())
    assert not trained & scored and trained | scored == {"p0", "p1", "p2"} and len(trained) == 1
    assert {People.FACTS[f] for f in plan.scored_view.facts} == scored   # every fact of a scored person is scored


def test_same_entity_trains_on_some_facts_of_every_unit_and_scores_its_others():
    bench = People()
    plan = Attacks(("relearn-same-entity",), AttackConfig(), bench, FINETUNE, 2, [], unlearning_budget=1e-3).plans[
        "relearn-same-entity"]
    trained, scored = set(plan.train_view.facts), set(plan.scored_view.facts)
    assert not trained & scored and trained | scored == set(People.FACTS)
    for person in ("p0", "p1", "p2"):   # every person on both sides, two facts each
        assert sum(People.FACTS[f] == person for f in trained) == 2 == sum(People.FACTS[f] == person for f in scored)
    assert plan.train_view.bios == [] == plan.scored_view.bios   # a biography states every fact: on neither side
    assert split_facts(bench.forget_facts(), 2) == split_facts(dict(reversed(bench.forget_facts().items())), 2)


def test_same_entity_leaves_out_units_with_one_fact_and_refuses_when_none_is_left():
    split = split_facts({"a1": "a", "a2": "a", "a3": "a", "b1": "b"}, 0)
    assert sorted(split.relearn + split.scored) == ["a1", "a2", "a3"] and len(split.scored) == 2
    with pytest.raises(Exception, match="at least 2 facts"):
        split_facts({"a1": "a", "b1": "b"}, 0)


def test_synthetic_same_entity_halves_are_questions_of_the_same_people():
    bench = Synthetic(SyntheticConfig(num_forget=4, num_retain=4, num_holdout=2, qa_per_person=4))
    split = split_facts(bench.forget_facts(), 0)
    relearn, scored = bench.forget_fact_subset(split.relearn), bench.forget_fact_subset(split.scored)
    assert {q.person for q in relearn.forget_qa} == {q.person for q in scored.forget_qa} == set(bench.forget_units())
    assert not {q.id for q in relearn.forget_qa} & {q.id for q in scored.forget_qa}
    assert len(relearn.forget_qa) == len(scored.forget_qa) == 8 and not relearn.forget_bio and not scored.forget_bio
    taught = " ".join(e.prompt + e.answer for e in relearn.forget_train())
    for q in scored.forget_qa:     # the held-out questions are not among the trained ones
        assert q.question not in taught
    assert len(scored.eval_plan().generations["qa_forget"]) == 8
    assert scored.eval_plan().generations["qa_retain"] == bench.eval_plan().generations["qa_retain"]


def test_tofu_same_entity_splits_each_authors_twenty_questions_in_two():
    folder = data_root() / "tofu"
    if not (folder / "forget05.json").is_file():
        pytest.skip("TOFU data not available")
    from harness.benchmarks.tofu import Tofu, TofuConfig

    bench = Tofu(TofuConfig(split="forget05"), folder)
    split = split_facts(bench.forget_facts(), 0)
    relearn, scored = bench.forget_fact_subset(split.relearn), bench.forget_fact_subset(split.scored)
    trained = {e.prompt for e in relearn.forget_train()}
    asked = {r.prompt for r in scored.eval_plan().generations["gen_forget"]}
    assert len(trained) == len(asked) == 100 and not trained & asked
    assert set(relearn.forget_units()) == set(scored.forget_units()) == set(bench.forget_units())


def test_split_units_still_refuses_one_unit():
    with pytest.raises(Exception, match="at least 2"):
        split_units(["only"], 0)


# --- R, Q, the residual share and the guard, by hand ---------------------------------------------
def test_openunlearning_r_and_q_by_hand():
    # the unlearned model regains 0.4 under relearning, the retain model 0.1: R = 0.1 / 0.4
    assert relearn_robustness(0.2, 0.6, 0.3, 0.4) == pytest.approx(0.25)
    assert relearn_robustness(0.2, 0.3, 0.3, 0.6) == 1.0          # the retain model moved more: capped at 1
    assert relearn_robustness(0.2, 0.2, 0.3, 0.6) is None         # the unlearned model did not move
    # quantisation raised the unlearned model's value from 0.2 to 0.5: Q = 0.4; lowering it is no harm: 1
    assert quantisation_robustness(0.2, 0.5) == pytest.approx(0.4)
    assert quantisation_robustness(0.5, 0.2) == 1.0 and quantisation_robustness(0.5, 0.0) is None
    assert harmonic(0.25, 0.4) == pytest.approx(2 * 0.25 * 0.4 / 0.65) and harmonic(None, 0.4) is None


def test_residual_share_by_hand_and_its_interval_when_every_item_agrees():
    assert residual_share(30.0, 10.0, 50.0) == pytest.approx(0.5) and residual_share(1.0, 2.0, 2.0) is None
    stat = ItemMean("v", "x")
    retain = {"v": {"x": [0.0, 0.1, 0.2, 0.1, 0.0]}}
    target = {"v": {"x": [0.8, 0.9, 1.0, 0.7, 0.8]}}
    method = {"v": {"x": [r + 0.25 * (t - r) for r, t in zip(retain["v"]["x"], target["v"]["x"])]}}
    lo, hi = share_interval(stat, [method], [retain], [target])
    assert lo == pytest.approx(0.25) and hi == pytest.approx(0.25)   # a quarter of the gap on every item
    assert share_interval(stat, [method], [{"v": {"x": [0.0, 0.1]}}], [target]) is None   # other items


COLUMNS = [Column("verbmem_f", "VerbMem f", "down", "verbatim", digits=1),
           Column("forget_quality", "Forget quality", "up", "knowledge", digits=3),
           Column("model_utility", "Utility", "up", "utility", digits=3)]


def test_guard_by_hand():
    target, retain = {"verbmem_f": 80.0, "model_utility": 0.5}, {"verbmem_f": 20.0, "model_utility": 0.5}
    kept = guard(target, {"verbmem_f": 70.0}, retain, {"verbmem_f": 22.0, "model_utility": 0.47}, COLUMNS,
                 "model_utility")
    assert kept.passed and kept.kept["verbmem_f"] == pytest.approx(48 / 60)   # 80% of the gap: just enough
    lost = guard(target, {"verbmem_f": 60.0}, retain, {"verbmem_f": 20.0, "model_utility": 0.5}, COLUMNS, "model_utility")
    assert not lost.passed and lost.damaged and "keeps 66.7%" in lost.reasons[0]
    broken = guard(target, {"verbmem_f": 80.0}, retain, {"verbmem_f": 20.0, "model_utility": 0.44}, COLUMNS,
                   "model_utility")
    assert broken.damaged and "utility fell" in broken.reasons[0]
    noise = guard(target, {"verbmem_f": 0.0}, retain, {"verbmem_f": 20.0, "model_utility": 0.5}, COLUMNS,
                  "model_utility", noise={"verbmem_f": 70.0})
    assert not noise.damaged and not noise.measurable   # a gap inside the intervals' width is not judged


def _evaluate(loaded, view, reference, self_reference=False):
    outputs = run_plan(HFEngine(loaded.model, loaded.tokenizer, 16, 256), view.eval_plan())
    scores = view.score(outputs, reference)
    if self_reference:
        scores = view.score(outputs, scores.reference_values)
    return {"aggregates": scores.aggregates, "per_sample": scores.per_sample, "missing": scores.missing,
            "reference_values": scores.reference_values, "timings": {"eval_s": 0.0}, "eval_counts": {}}


def test_the_guard_trips_on_a_relearning_attack_made_destructive_on_purpose():
    bench = Synthetic(SyntheticConfig(num_forget=2, num_retain=2, num_holdout=2, qa_per_person=2, utility_items=4))
    finetune = TrainConfig(lr=1e-2, epochs=40, global_batch=8, micro_batch=8, weight_decay=0.0)
    models = {}
    for role, data in (("target", bench.forget_train() + bench.retain_train()), ("retain", bench.retain_train())):
        torch.manual_seed(0)
        model, tok = build_tiny_random()
        train(model.float(), tok, Finetune(), data, None, finetune, seed=0)
        models[role] = LoadedModel(model, tok, role, "test")
    before = {role: _evaluate(m, bench, None, role == "retain") for role, m in models.items()}
    assert before["target"]["aggregates"]["prob_f"] > before["retain"]["aggregates"]["prob_f"] + 0.02   # a gap to keep

    def attacked(cfg):
        attacks = Attacks(("relearn-openunlearning",), cfg, bench, finetune, 0, Synthetic.columns)
        attacks.reference_stage("retain", models["retain"], _evaluate, before["retain"])
        return {role: attacks.reference_stage(role, m, _evaluate, before[role], before["retain"]["reference_values"])
                ["relearn-openunlearning"]["aggregates"] for role, m in models.items()}

    def verdict(after):
        return guard(before["target"]["aggregates"], after["target"], before["retain"]["aggregates"], after["retain"],
                     Synthetic.columns, "model_utility")

    wrecked = verdict(attacked(AttackConfig(openunlearning_lr=0.5, openunlearning_epochs=3)))
    assert wrecked.damaged, wrecked
    gentle = verdict(attacked(AttackConfig()))   # the protocol's own 2e-5 for one epoch leaves both as they were
    assert gentle.passed, gentle
