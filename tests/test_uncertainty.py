"""Bootstrap intervals, paired tests and KS context (harness/scoring/uncertainty.py), checked against
hand computations and independent implementations (scipy.stats.bootstrap, sklearn, loops)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from harness.scoring.aggregate import model_utility
from harness.scoring.privacy import muse_auc, privleak
from harness.scoring.probability import truth_ratio_retain_score
from harness.scoring.uncertainty import (
    HarmonicMean,
    ItemMean,
    RelativeToReference,
    SplitAuc,
    bootstrap_interval,
    ks_p_min,
    ks_summary,
    paired_test,
    point,
    resample_indices,
    truth_ratio_retain_items,
)


def groups_of(values, split="s", field="x"):
    return {split: {field: np.asarray(values, dtype=float)}}


MEAN = ItemMean("s", "x")


def test_interval_of_a_mean_matches_scipy_bootstrap_and_a_hand_loop():
    x = np.array([0.1, 0.9, 0.4, 0.35, 0.8, 0.05, 0.6, 0.7, 0.2, 0.55, 0.3, 0.95])
    ours = bootstrap_interval(MEAN, [groups_of(x)], resamples=20000, seed=3)
    # the same draws, averaged item by item in a Python loop, and the percentile taken by hand
    idx = resample_indices({"s": x.size}, 20000, 3)["s"]
    means = sorted(sum(x[j] for j in row) / x.size for row in idx)
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert ours.lo == pytest.approx(lo, abs=1e-12) and ours.hi == pytest.approx(hi, abs=1e-12)
    # an independent implementation (its own draws): agrees within Monte Carlo error
    ref = stats.bootstrap((x,), np.mean, n_resamples=20000, method="percentile", random_state=1).confidence_interval
    assert ours.lo == pytest.approx(ref.low, abs=0.01) and ours.hi == pytest.approx(ref.high, abs=0.01)
    assert ours.n == {"s": 12} and ours.resamples == 20000 and ours.seed == 3
    assert ours.as_record()["lo"] == ours.lo


def test_interval_of_two_items_is_exact():
    # resampled means of [0, 1]: 0 (1/4), 0.5 (1/2), 1 (1/4): the 95% percentile interval is [0, 1]
    iv = bootstrap_interval(MEAN, [groups_of([0.0, 1.0])], resamples=4000, seed=0)
    assert (iv.lo, iv.hi) == (0.0, 1.0)


def test_fewer_than_1000_resamples_are_refused():
    with pytest.raises(ValueError, match="at least 1000"):
        bootstrap_interval(MEAN, [groups_of([1.0, 2.0])], resamples=500)


def test_auc_statistic_is_muse_auc_and_resamples_members_and_non_members_separately():
    from sklearn.metrics import roc_auc_score

    forget, holdout = [3.0, 2.5, 4.0, 2.5, 5.0], [2.0, 2.5, 6.0, 1.0]
    per_sample = {"mia": [{"set": "forget", "k": v} for v in forget] + [{"set": "holdout", "k": v} for v in holdout]}
    auc = SplitAuc("mia", "set", "holdout", "forget", "k")
    groups = auc.groups(per_sample, {})
    assert point(auc, groups) == pytest.approx(muse_auc(forget, holdout))
    idx = resample_indices({g: len(next(iter(f.values()))) for g, f in groups.items()}, 1000, 5)
    assert idx["mia:forget"].shape == (1000, 5) and idx["mia:holdout"].shape == (1000, 4)   # stratified
    # one resample, by hand with sklearn: holdout labelled 1, decision = -score
    f, h = np.asarray(forget)[idx["mia:forget"][7]], np.asarray(holdout)[idx["mia:holdout"][7]]
    by_hand = roc_auc_score([1] * 4 + [0] * 5, -np.concatenate([h, f]))
    batch = {g: {k: v[idx[g]] for k, v in fields.items()} for g, fields in groups.items()}
    assert auc(batch)[7] == pytest.approx(by_hand)


def test_privleak_and_utility_statistics_reproduce_the_aggregates():
    forget, holdout = [3.0, 2.5, 4.0, 2.6], [2.0, 2.4, 6.0, 1.0]
    per_sample = {"mia": [{"set": "forget", "k": v} for v in forget] + [{"set": "holdout", "k": v} for v in holdout],
                  "qa": [{"r": 0.5, "p": 0.9, "tr": 0.3}, {"r": 1.0, "p": 0.7, "tr": 1.4}, {"r": 0.25, "p": 0.8, "tr": 0.6}]}
    auc = muse_auc(forget, holdout)
    aggregates = {"auc": auc, "privleak": privleak(auc, 0.47)}
    leak = RelativeToReference(SplitAuc("mia", "set", "holdout", "forget", "k"), "auc", "privleak")
    assert leak.reference(aggregates) == pytest.approx(0.47)
    assert point(leak, leak.groups(per_sample, aggregates)) == pytest.approx(aggregates["privleak"])
    qa = per_sample["qa"]
    utility = HarmonicMean((ItemMean("qa", "r"), ItemMean("qa", "p"), ItemMean("qa", "tr", transform=truth_ratio_retain_items)))
    expected = model_utility([np.mean([q["r"] for q in qa]), np.mean([q["p"] for q in qa]),
                              truth_ratio_retain_score([q["tr"] for q in qa])])
    groups = utility.groups(per_sample, {})
    assert set(groups) == {"qa"} and set(groups["qa"]) == {"r", "p", "tr"}   # one split: resampled jointly
    assert point(utility, groups) == pytest.approx(expected)
    iv = bootstrap_interval(utility, [groups], resamples=1000)
    assert 0 <= iv.lo <= expected <= iv.hi


def paired_by_hand(a, b, resamples, seed):
    """Percentile interval of mean(a) - mean(b) over items resampled with the same indices for both rows."""
    idx = resample_indices({"s": len(a)}, resamples, seed)["s"]
    d = [float(np.mean([a[j] for j in row]) - np.mean([b[j] for j in row])) for row in idx]
    lo, hi = np.percentile(d, [2.5, 97.5])
    tail = min(sum(v <= 0 for v in d), sum(v >= 0 for v in d))
    return lo, hi, min(1.0, 2 * (tail + 1) / (resamples + 1))


def test_paired_test_tells_a_consistent_small_gain_from_noise():
    # items vary a lot (0.1 .. 0.95), so the two rows' own intervals overlap widely ...
    base = np.array([0.1, 0.9, 0.4, 0.35, 0.8, 0.05, 0.6, 0.7, 0.2, 0.55, 0.3, 0.95])
    better = base + np.array([0.05, 0.04, 0.06, 0.05, 0.03, 0.05, 0.04, 0.06, 0.05, 0.05, 0.04, 0.06])
    noise = base + np.array([0.05, -0.05, 0.04, -0.04, 0.05, -0.05, 0.03, -0.03, 0.05, -0.05, 0.04, -0.04])
    one = bootstrap_interval(MEAN, [groups_of(better)], resamples=2000)
    other = bootstrap_interval(MEAN, [groups_of(base)], resamples=2000)
    assert one.lo < other.hi   # unpaired, they overlap
    # ... but paired on the same items, the consistent gain is significant and the noise is not
    differ = paired_test(MEAN, [groups_of(better)], [groups_of(base)], resamples=2000, seed=0)
    lo, hi, p = paired_by_hand(better, base, 2000, 0)
    assert (differ.lo, differ.hi, differ.p_value) == (pytest.approx(lo), pytest.approx(hi), pytest.approx(p))
    assert differ.difference == pytest.approx(np.mean(better - base))
    assert differ.distinguishable and differ.lo > 0 and differ.p_value < 0.01
    same = paired_test(MEAN, [groups_of(noise)], [groups_of(base)], resamples=2000, seed=0)
    lo, hi, p = paired_by_hand(noise, base, 2000, 0)
    assert (same.lo, same.hi, same.p_value) == (pytest.approx(lo), pytest.approx(hi), pytest.approx(p))
    assert not same.distinguishable and same.lo < 0 < same.hi and same.p_value > 0.05


def test_rows_on_different_items_are_not_paired():
    with pytest.raises(ValueError, match="same items"):
        paired_test(MEAN, [groups_of([1.0, 2.0, 3.0])], [groups_of([1.0, 2.0])])


def test_several_seeds_widen_the_interval_by_the_seed_spread():
    x = np.array([0.2, 0.4, 0.6, 0.8, 0.5, 0.3])
    single = bootstrap_interval(MEAN, [groups_of(x)], resamples=2000, seed=0)
    twice = bootstrap_interval(MEAN, [groups_of(x), groups_of(x)], resamples=2000, seed=0)
    assert (twice.lo, twice.hi) == (single.lo, single.hi) and twice.seeds == 2   # identical seeds add nothing
    spread = bootstrap_interval(MEAN, [groups_of(x - 0.2), groups_of(x + 0.2)], resamples=2000, seed=0)
    assert spread.hi - spread.lo > single.hi - single.lo + 0.2   # seeds 0.4 apart: the seed draw shows


def test_ks_p_min_and_statistic_by_hand():
    assert ks_p_min(16, 16) == pytest.approx(2 / math.comb(32, 16), rel=1e-9)
    assert ks_p_min(3, 5) == pytest.approx(2 / math.comb(8, 3), rel=1e-9)
    u, r = [0.1, 0.4, 0.35, 0.8], [0.2, 0.9, 0.95, 0.85, 0.7]
    points = sorted(u + r)
    d = max(abs(sum(v <= t for v in u) / len(u) - sum(v <= t for v in r) / len(r)) for t in points)
    summary = ks_summary(u, r)
    assert summary["statistic"] == pytest.approx(d) and (summary["n"], summary["m"]) == (4, 5)
    assert summary["p_value"] == pytest.approx(stats.ks_2samp(u, r).pvalue)
    separated = ks_summary([0.1, 0.2, 0.3], [0.5, 0.6, 0.7, 0.8, 0.9])
    assert separated["p_value"] == pytest.approx(separated["p_min"])
