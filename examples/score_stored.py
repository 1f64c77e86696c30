"""Score stored generations and log-probs without a model: `python examples/score_stored.py`."""
from math import log

from harness.scoring import (
    extraction_strength,
    forget_quality,
    min_k_score,
    model_utility,
    muse_auc,
    privleak,
    rouge_l_recall,
    truth_ratio,
    truth_ratio_forget_score,
)

# TOFU ROUGE: recall of a stored greedy answer against the gold answer.
print("rouge_l_recall", round(rouge_l_recall("She was born in Lyon in 1962", "Born in Lyon, France"), 4))

# TOFU truth ratio from stored answer-token log-probs (natural log, one list per answer).
paraphrased = [log(0.5), log(0.5)]
perturbed = [[log(0.1), log(0.4)], [log(0.2)]]
r = truth_ratio(paraphrased, perturbed)
print("truth_ratio", round(r, 4))
print("truth_ratio_forget", round(truth_ratio_forget_score([r, 2.0, 1.0]), 4))

# Extraction strength from per-position "argmax == label" flags (teacher forcing).
print("extraction_strength", round(extraction_strength([False, True, False, True, True]), 4))

# MUSE PrivLeak: Min-K% (k = 0.4) of stored token log-probs, forget (members) vs holdout texts.
forget = [[-0.1, -0.2, -0.3, -0.2, -0.1], [-0.5, -0.1, -0.4, -0.2, -0.3], [-2.0, -0.1, -0.1, -0.3, -0.2]]
holdout = [[-1.0, -2.0, -0.5, -3.0, -1.5], [-0.6, -0.9, -1.2, -0.4, -0.8], [-0.2, -0.3, -0.9, -1.1, -0.1]]
auc = muse_auc([min_k_score(t) for t in forget], [min_k_score(t) for t in holdout])
print("muse_auc", round(auc, 4))
print("privleak", round(privleak(auc, 0.5), 4))

# TOFU forget quality: KS test of per-item forget truth ratios, unlearned vs retain model.
print("forget_quality", round(forget_quality([0.1, 0.2, 0.3, 0.4], [0.6, 0.7, 0.8, 0.9]), 4))

# TOFU model utility: harmonic mean of the nine retain / real-author / world-fact numbers.
print("model_utility", round(model_utility([0.5, 0.25, 0.5, 1.0, 0.5, 0.5, 0.25, 1.0, 0.5]), 4))
