"""Text-overlap scores on generated text (reference.md section 2: TOFU ROUGE, MUSE VerbMem/KnowMem)."""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from harness.scoring.catalogue import metric


@lru_cache(maxsize=2)
def _scorer(use_stemmer: bool):
    """One cached ROUGE-L scorer per stemmer setting (imported lazily: rouge_score pulls in nltk)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


@metric(
    "rouge_l_recall",
    "knowledge",
    "ROUGE-L recall of a generation against the reference answer (TOFU ROUGE; rouge_score, stemmer on).",
)
def rouge_l_recall(prediction: str, reference: str, use_stemmer: bool = True) -> float:
    """ROUGE-L recall: LCS(prediction, reference) / len(reference) in tokens.

    TOFU reports this for the greedy answer vs the gold answer with the Porter stemmer on
    (reference.md section 2, TOFU "ROUGE").
    """
    return float(_scorer(bool(use_stemmer)).score(reference, prediction)["rougeL"].recall)


@metric(
    "rouge_l_f1",
    "verbatim",
    "ROUGE-L F-measure of a generation against the reference (MUSE VerbMem and KnowMem; stemmer off).",
)
def rouge_l_f1(prediction: str, reference: str, use_stemmer: bool = False) -> float:
    """ROUGE-L F1: harmonic mean of LCS precision and recall.

    MUSE uses it with ``use_stemmer=False`` for VerbMem (continuation vs ``gt``) and KnowMem
    (answer vs gold answer) (reference.md section 2, MUSE).
    """
    return float(_scorer(bool(use_stemmer)).score(reference, prediction)["rougeL"].fmeasure)


def truncate_at_stop(text: str, stops: Sequence[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any stop string (the stop itself is dropped).

    MUSE KnowMem cuts answers at ``"\\n\\n"``, ``"\\nQuestion"`` or ``"Question:"``
    (reference.md section 2, MUSE). Empty stop strings are ignored.
    """
    cut = len(text)
    for stop in stops:
        if stop:
            at = text.find(stop)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]
