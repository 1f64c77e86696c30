"""The synthetic adapter's wiring: plan requests, and scores from fabricated outputs (no model)."""
import math

import pytest

from harness.benchmarks.synthetic import Synthetic, SyntheticConfig
from harness.engines.base import TokenScores
from harness.errors import HarnessError
from harness.engines.plan import PlanOutputs


def scores_of(logp: float, n: int = 4) -> TokenScores:
    return TokenScores([logp] * n, [True] * n, [0.0] * n, [1.0] * n)


def fabricate(bench: Synthetic, memorised: bool) -> PlanOutputs:
    """Outputs of a model that reproduces every forget text (memorised) or none of them."""
    plan = bench.eval_plan()
    gens = {}
    gens["qa_forget"] = [q.answer if memorised else "no idea" for q in bench.forget_qa]
    gens["qa_retain"] = [q.answer for q in bench.utility_qa]
    gens["bio_forget"] = [Synthetic._split_bio(b.text)[1].strip() if memorised else "nothing" for b in bench.forget_bio]
    lps = {}
    for name, requests in plan.logprobs.items():
        if name.startswith("answer_"):
            lps[name] = [scores_of(math.log(0.5)) for _ in requests]
        elif name.startswith("para_"):
            lps[name] = [scores_of(math.log(0.5)) for _ in requests]
        elif name.startswith("pert_"):
            lps[name] = [scores_of(math.log(0.25)) for _ in requests]
        elif name == "mia_forget":
            lps[name] = [scores_of(-0.1 if memorised else -3.0 - 0.01 * i) for i, _ in enumerate(requests)]
        else:
            lps[name] = [scores_of(-3.0 - 0.01 * i) for i, _ in enumerate(requests)]
    return PlanOutputs(gens, lps, {}, {})


def test_plan_declares_every_request_once_per_item():
    bench = Synthetic(limit=3)
    plan = bench.eval_plan()
    assert len(plan.generations["qa_forget"]) == 3 and len(plan.generations["bio_forget"]) == 3
    assert len(plan.logprobs["pert_forget"]) == 3 * 3
    assert len(plan.logprobs["mia_forget"]) == 3 + 3 and len(plan.logprobs["mia_holdout"]) == 3 + 3
    assert plan.generations["qa_forget"][0].prompt.endswith("\nAnswer:")


def test_scores_of_a_memorising_model_against_a_reference():
    bench = Synthetic(limit=4)
    ref = bench.score(fabricate(bench, memorised=False), None).reference_values
    scores = bench.score(fabricate(bench, memorised=True), ref)
    agg = scores.aggregates
    assert agg["verbmem_f"] == pytest.approx(100.0)
    assert agg["rouge_f"] == pytest.approx(1.0)
    assert agg["prob_f"] == pytest.approx(0.5)
    # R = p̄(pert) / p̄(para) = 0.25 / 0.5 for every item: forget score min(R, 1/R) = 0.5, retain 1 - R = 0.5.
    assert agg["truth_ratio_f"] == pytest.approx(0.5) and agg["truth_ratio_r"] == pytest.approx(0.5)
    assert agg["model_utility"] == pytest.approx(3 / (1 / 1.0 + 1 / 0.5 + 1 / 0.5))
    # Memorised forget texts score far better than holdout: MUSE AUC 0; the reference model had 0.5.
    assert agg["auc_min_k"] == 0.0 and ref["auc"] == pytest.approx(0.5)
    assert agg["privleak"] == pytest.approx(-100.0)
    assert agg["forget_quality"] == pytest.approx(1.0)  # identical truth ratios in both
    assert scores.per_sample["qa_forget"][0]["generation"] == bench.forget_qa[0].answer
    assert not scores.missing


def test_missing_reference_is_named_not_silent():
    bench = Synthetic(limit=2)
    scores = bench.score(fabricate(bench, memorised=True), None)
    assert "privleak" not in scores.aggregates and "forget_quality" not in scores.aggregates
    assert set(scores.missing) == {"privleak", "forget_quality"}


def test_training_examples_mask_prompts_and_carry_alternatives():
    bench = Synthetic()
    forget = bench.forget_train()
    assert len(forget) == 8 * 4 + 8   # 8 forget people: 4 QA items each, then one biography each
    qa = forget[0]
    assert qa.prompt.startswith("Question: ") and qa.answer.startswith(" ")
    assert len(qa.perturbed) == 3 and qa.paraphrased.startswith(" ")
    assert {e.prompt for e in forget[-8:]} == {""}  # biographies are trained as whole texts
    assert all(e.prompt for e in forget[:-8])
    assert not {e.id for e in forget} & {e.id for e in bench.retain_train()}


def test_bad_benchmark_setting_is_a_clear_error():
    with pytest.raises(HarnessError, match="benchmark 'synthetic'"):
        Synthetic(SyntheticConfig(qa_per_person=99))


FIRST_HALF = ("Veskmir Isterenvik came into the world on 27 May 1992 in Nyrhald, a mountain hamlet in Galdulavel. "
              "He trained as a cheese chemist and spent most of his career at the Eskanavel Trust.")
SECOND_HALF = ("His best-known work is a monograph titled The Xanemora Looms, which earned him the Nyrelbek "
               "Lantern Medal. In his spare time he likes fermenting plum wine, usually with his corn snake, Fom, close by.")


def test_biography_is_prompted_with_its_first_half_and_scored_on_the_second():
    """The 67-word biography split at word 33, written out by hand (not by the adapter's splitter)."""
    bench = Synthetic(limit=1)
    assert bench.forget_bio[0].text == FIRST_HALF + " " + SECOND_HALF
    assert bench.eval_plan().generations["bio_forget"][0].prompt == FIRST_HALF
    outputs = fabricate(bench, memorised=False)
    outputs.generations["bio_forget"] = [SECOND_HALF]
    scores = bench.score(outputs, None)
    assert scores.per_sample["verbmem_forget"][0]["reference"] == SECOND_HALF
    assert scores.aggregates["verbmem_f"] == pytest.approx(100.0)
    outputs.generations["bio_forget"] = ["His best-known work is a monograph titled The Xanemora Looms"]
    # ROUGE-L F1 of a prefix: rouge_score splits "best-known", so 11 of the truth's 35 tokens, in
    # order: P = 1, R = 11/35, F1 = 2 * 11 / (11 + 35)
    assert bench.score(outputs, None).aggregates["verbmem_f"] == pytest.approx(100 * 22 / 46)
