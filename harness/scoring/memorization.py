"""Teacher-forced memorisation scores (reference.md section 2, MUSE/OpenUnlearning extraction strength).

Input: per answer position, whether the argmax prediction equals the label token.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harness.scoring.catalogue import metric


def without_eos_prediction(greedy_match: Sequence[bool]) -> list[bool]:
    """The positions EM and ES read on an answer scored with EOS appended (``LogprobRequest.add_eos``).

    OpenUnlearning scores Prob and the truth ratio with the EOS token but reads EM and ES from
    the labelled positions less the last one (``tokenwise_vocab_logprobs``: "ignore eos
    prediction"), so the EOS prediction counts in neither; TOFU answers and synthetic's QA follow it.
    """
    return list(greedy_match)[:-1]


def _as_bool(greedy_match: Sequence[bool]) -> np.ndarray:
    arr = np.asarray(greedy_match, dtype=bool).ravel()
    if arr.size == 0:
        raise ValueError("need at least one answer position")
    return arr


@metric(
    "exact_memorization",
    "verbatim",
    "Exact memorisation: fraction of answer positions where the teacher-forced argmax equals the label.",
)
def exact_memorization(greedy_match: Sequence[bool]) -> float:
    """Fraction of positions whose argmax prediction equals the label (reference.md section 2)."""
    return float(_as_bool(greedy_match).mean())


@metric(
    "extraction_strength",
    "verbatim",
    "Extraction strength 1 - k/L, k the smallest position from which all argmax predictions match.",
)
def extraction_strength(greedy_match: Sequence[bool]) -> float:
    """ES = 1 - k/L with k the smallest index such that every position >= k matches (reference.md section 2).

    k = L when the last position does not match (ES = 0); all positions matching gives k = 0 (ES = 1).
    ES = 0 when no suffix matches follows the published definition (Carlini et al.'s extraction
    strength as OpenUnlearning states it); OpenUnlearning's own loop stops at k = L - 1 and so
    reports 1/L in that case. We keep the definition: an answer whose last token is not
    predicted has no extractable suffix.
    """
    arr = _as_bool(greedy_match)
    length = arr.size
    trailing = 0
    while trailing < length and arr[length - 1 - trailing]:
        trailing += 1
    return 1.0 - (length - trailing) / length
