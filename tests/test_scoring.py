"""Hand-computed checks of the pure scoring functions (reference.md section 2)."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

import harness.scoring as sc
from harness.errors import HarnessError

L = math.log


# --- text -------------------------------------------------------------------------------------

def test_rouge_l_recall_prefix():
    # LCS = "the cat sat" (3 tokens), reference has 6 tokens.
    assert sc.rouge_l_recall("the cat sat", "the cat sat on the mat") == pytest.approx(3 / 6)


def test_rouge_l_f1_by_hand():
    # P = 3/3, R = 3/6 -> F = 2PR/(P+R) = 2/3
    assert sc.rouge_l_f1("the cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)
    # LCS "the cat sat on mat" = 5 of 6 on both sides -> P = R = F = 5/6
    assert sc.rouge_l_f1("the cat sat on a mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    assert sc.rouge_l_f1("completely different", "the cat sat") == 0.0


def test_rouge_stemmer_on_vs_off():
    assert sc.rouge_l_recall("running", "run", use_stemmer=True) == pytest.approx(1.0)
    assert sc.rouge_l_recall("running", "run", use_stemmer=False) == 0.0
    assert sc.rouge_l_f1("running", "run") == 0.0  # MUSE default: stemmer off
    assert sc.rouge_l_f1("running", "run", use_stemmer=True) == pytest.approx(1.0)


def test_truncate_at_stop():
    stops = ["\n\n", "\nQuestion", "Question:"]
    assert sc.truncate_at_stop("Paris\n\nQuestion: next", stops) == "Paris"
    assert sc.truncate_at_stop("Paris\nQuestion 2", stops) == "Paris"
    assert sc.truncate_at_stop("Paris. Question: x\n\ny", stops) == "Paris. "
    assert sc.truncate_at_stop("no stop here", stops) == "no stop here"
    assert sc.truncate_at_stop("abc", []) == "abc"


# --- probability ------------------------------------------------------------------------------

def test_mean_token_probability():
    assert sc.mean_token_probability([L(0.5), L(0.25)]) == pytest.approx(math.sqrt(0.125))
    assert sc.mean_token_probability(np.array([L(0.3)])) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        sc.mean_token_probability([])


def test_normalised_answer_probability():
    # p(a) = 0.5; perturbed 0.1 and 0.15 -> 0.5 / (0.5 + 0.25) = 2/3
    got = sc.normalised_answer_probability([L(0.5), L(0.5)], [[L(0.1)], [L(0.15)]])
    assert got == pytest.approx(2 / 3)


def test_truth_ratio_by_hand():
    # p(para) = 0.5; perturbed p = 0.2 (two tokens 0.1, 0.4 -> sqrt(0.04)) and 0.05
    # geometric mean sqrt(0.2 * 0.05) = 0.1 -> R = 0.1 / 0.5 = 0.2
    assert sc.truth_ratio([L(0.5)], [[L(0.1), L(0.4)], [L(0.05)]]) == pytest.approx(0.2)
    # stable for very long answers where the product of token probabilities underflows
    long_para, long_pert = [L(0.5)] * 5000, [[L(0.25)] * 5000]
    assert sc.truth_ratio(long_para, long_pert) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        sc.truth_ratio([L(0.5)], [])


def test_truth_ratio_scores():
    # min(R, 1/R): 0.5, 0.5, 1 -> 2/3
    assert sc.truth_ratio_forget_score([0.5, 2.0, 1.0]) == pytest.approx(2 / 3)
    assert sc.truth_ratio_forget_score([0.0, math.inf]) == 0.0
    # max(0, 1 - R): 0.5, 0, 0.75 -> 5/12
    assert sc.truth_ratio_retain_score([0.5, 2.0, 0.25]) == pytest.approx(5 / 12)
    with pytest.raises(HarnessError, match="truth ratio"):
        sc.truth_ratio_retain_score([])


# --- privacy ----------------------------------------------------------------------------------

def test_loss_and_zlib():
    lps = [L(0.5), L(0.25)]
    assert sc.loss_score(lps) == pytest.approx(1.5 * math.log(2))
    text = "hello hello hello"
    n = len(zlib.compress(text.encode("utf-8")))
    assert sc.zlib_score(lps, text) == pytest.approx(1.5 * math.log(2) / n)


def test_min_k():
    lps = [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert sc.min_k_score(lps, k=0.4) == pytest.approx(4.5)  # int(5*0.4) = 2 lowest: -5, -4
    assert sc.min_k_score([-1.0, -2.0, -3.0], k=0.4) == pytest.approx(3.0)  # int(1.2) = 1
    assert sc.min_k_score([-7.0], k=0.1) == pytest.approx(7.0)  # at least one token
    assert sc.min_k_score(lps, k=1.0) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        sc.min_k_score(lps, k=0.0)


def test_min_k_plus_plus():
    lps = [-1.0, -2.0, -3.0, -4.0, -5.0]
    mu = [-2.0] * 5
    sigma = [1.0, 2.0, 1.0, 0.5, 4.0]
    # z = [1, 0, -1, -4, -0.75]; two lowest -4, -1 -> score 2.5
    assert sc.min_k_plus_plus_score(lps, mu, sigma, k=0.4) == pytest.approx(2.5)
    # sigma = 0 is floored at 1e-8: finite, and a token at its mean gives z = 0
    assert sc.min_k_plus_plus_score([-1.0], [-1.0], [0.0]) == 0.0
    assert sc.min_k_plus_plus_score([-2.0], [-1.0], [0.0]) == pytest.approx(1e8)
    with pytest.raises(ValueError):
        sc.min_k_plus_plus_score(lps, mu[:4], sigma)


def test_auc_conventions():
    members, nonmembers = [0.1, 0.2, 0.3], [1.0, 2.0, 3.0]  # members have lower loss
    assert sc.mia_auc(members, nonmembers) == 1.0
    assert sc.muse_auc(members, nonmembers) == 0.0  # MUSE: memorised forget set -> about 0
    assert sc.mia_auc([1, 2, 3], [1, 2, 3]) == pytest.approx(0.5)
    assert sc.muse_auc([1, 2, 3], [1, 2, 3]) == pytest.approx(0.5)
    # by hand: decisions -1,-3 vs -2,-4; member wins 3 of 4 pairs
    assert sc.mia_auc([1.0, 3.0], [2.0, 4.0]) == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 40), rng.normal(0.5, 1, 30)
    assert sc.muse_auc(a, b) == pytest.approx(1 - sc.mia_auc(a, b))
    with pytest.raises(HarnessError):
        sc.mia_auc([], [1.0])


def test_privleak():
    assert sc.privleak(0.0, sc.MUSE_NEWS_RETRAIN_AUC) == pytest.approx(-100.0)
    assert sc.privleak(0.5, 0.5) == 0.0
    assert sc.privleak(0.6, 0.5) == pytest.approx(20.0)
    assert sc.MUSE_NEWS_RETRAIN_AUC == 0.4772 and sc.MUSE_BOOKS_RETRAIN_AUC == 0.5393
    for bad in (None, 0, 0.0):
        with pytest.raises(HarnessError, match="PrivLeak needs the retrain"):
            sc.privleak(0.3, bad)


# --- memorisation -----------------------------------------------------------------------------

def test_extraction_strength():
    T, F = True, False
    assert sc.extraction_strength([T, T, T]) == 1.0
    assert sc.extraction_strength([F, T, T]) == pytest.approx(2 / 3)
    assert sc.extraction_strength([T, T, F]) == 0.0
    assert sc.extraction_strength([T, F, T]) == pytest.approx(1 / 3)
    assert sc.extraction_strength([F, F]) == 0.0
    with pytest.raises(ValueError):
        sc.extraction_strength([])


def test_exact_memorization():
    assert sc.exact_memorization([True, False, True, True]) == pytest.approx(0.75)
    assert sc.exact_memorization(np.array([0, 0, 1])) == pytest.approx(1 / 3)


# --- aggregate --------------------------------------------------------------------------------

def test_model_utility():
    assert sc.model_utility([0.5, 0.25]) == pytest.approx(1 / 3)  # 2 / (2 + 4)
    assert sc.model_utility([0.5, 0.0, 0.9]) == 0.0
    with pytest.raises(HarnessError):
        sc.model_utility([])


def test_forget_quality():
    same = [0.1, 0.4, 0.7, 0.9, 1.3]
    assert sc.forget_quality(same, list(same)) == pytest.approx(1.0)
    low, high = np.linspace(0.01, 0.2, 20), np.linspace(0.8, 1.0, 20)
    assert sc.forget_quality(low, high) < 1e-6
    for missing in (None, []):
        with pytest.raises(HarnessError, match="forget quality needs the retain model"):
            sc.forget_quality(same, missing)


def test_mean_or_error():
    assert sc.mean_or_error([1.0, 2.0, 6.0], "x") == pytest.approx(3.0)
    with pytest.raises(HarnessError, match="my_metric"):
        sc.mean_or_error([], "my_metric")


# --- registry ---------------------------------------------------------------------------------

def test_registered_metrics_have_family_and_description():
    from harness.scoring.catalogue import METRIC_FAMILIES, declared_metrics

    # Read the declarations, not METRICS.names(): that would also import harness.methods/benchmarks
    # (torch, and other people's work in progress). The registry registers exactly these.
    registered = {info.name: info for info in declared_metrics()}
    names = sorted(registered)
    expected = {
        "rouge_l_recall", "rouge_l_f1", "mean_token_probability", "normalised_answer_probability",
        "truth_ratio", "truth_ratio_forget_score", "truth_ratio_retain_score", "loss_score", "zlib_score",
        "min_k_score", "min_k_plus_plus_score", "mia_auc", "muse_auc", "privleak", "exact_memorization",
        "extraction_strength", "model_utility", "forget_quality",
    }
    assert expected <= set(names)
    for name in expected:
        info = registered[name]
        assert info.family in METRIC_FAMILIES
        assert info.description.strip()
        assert callable(info.fn) and info.fn is getattr(sc, name)


# --- hand values not covered above -------------------------------------------------------------

def test_forget_quality_exact_ks_p_value_by_hand():
    # Fully separated samples of sizes n and m: D = 1, and under the null only the 2 orderings
    # "all of one sample first" out of C(n+m, n) reach it, so the exact two-sided p = 2 / C(n+m, n).
    assert sc.forget_quality([0.1, 0.2, 0.3], [0.7, 0.8, 0.9]) == pytest.approx(2 / math.comb(6, 3))  # 0.1
    assert sc.forget_quality([0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(2 / math.comb(8, 4))
    # Arrays and lists, any order, give the same p-value.
    assert sc.forget_quality(np.array([0.3, 0.1, 0.2]), [0.9, 0.7, 0.8]) == pytest.approx(0.1)


def test_muse_auc_and_mia_auc_with_ties_by_hand():
    # MUSE AUC = share of (forget, holdout) pairs in which the forget score is the higher one
    # (looks less like a member), ties counting 1/2. forget {1, 2, 4} vs holdout {2, 3}:
    # 1: 0 + 0; 2: tie 1/2 + 0; 4: 1 + 1 -> 2.5 of 6 pairs.
    assert sc.muse_auc([1.0, 2.0, 4.0], [2.0, 3.0]) == pytest.approx(2.5 / 6)
    assert sc.mia_auc([1.0, 2.0, 4.0], [2.0, 3.0]) == pytest.approx(3.5 / 6)
    # PrivLeak of that AUC against the published MUSE-News retrain AUC.
    assert sc.privleak(2.5 / 6, sc.MUSE_NEWS_RETRAIN_AUC) == pytest.approx((2.5 / 6 - 0.4772) / 0.4772 * 100)


def test_min_k_score_on_unsorted_log_probs_by_hand():
    # 7 tokens, k = 0.4 -> int(2.8) = 2 lowest: -6 and -3.5 -> 4.75; k = 0.5 -> 3 lowest -> (6 + 3.5 + 2) / 3.
    lps = [-0.5, -6.0, -1.0, -2.0, -3.5, -0.1, -1.5]
    assert sc.min_k_score(lps) == pytest.approx(4.75)
    assert sc.min_k_score(lps, k=0.5) == pytest.approx(11.5 / 3)


def test_model_utility_nine_numbers_by_hand():
    values = [0.5, 0.25, 0.5, 1.0, 0.5, 0.5, 0.25, 1.0, 0.5]
    assert sc.model_utility(values) == pytest.approx(9 / (2 + 4 + 2 + 1 + 2 + 2 + 4 + 1 + 2))  # 0.45


def test_scoring_exports_are_consistent():
    import inspect

    from harness.scoring import aggregate, memorization, privacy, probability, text

    exported = set(sc.__all__)
    assert len(exported) == len(sc.__all__)
    for name in exported:
        assert hasattr(sc, name), name
    public = {
        name: obj
        for module in (aggregate, memorization, privacy, probability, text)
        for name, obj in vars(module).items()
        if inspect.isfunction(obj) and obj.__module__ == module.__name__ and not name.startswith("_")
    }
    assert set(public) <= exported  # every public function of a scoring module is exported
    for name, fn in public.items():
        assert getattr(sc, name) is fn
        assert fn.__doc__ and fn.__doc__.strip(), f"{name} has no docstring"


def test_tofu_rouge_uses_the_porter_stemmer_by_default():
    # "running"/"runs" stem to "run": recall 1 with the stemmer (TOFU's setting), 0 without it
    assert sc.rouge_l_recall("running", "runs") == 1.0
    assert sc.rouge_l_recall("running", "runs", use_stemmer=False) == 0.0
