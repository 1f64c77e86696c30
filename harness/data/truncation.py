"""Counting the texts that ``max_length`` cuts, per split, so no truncation goes unnoticed.

The engine scores a text of more than ``eval.max_length`` tokens on its first tokens only, and
the training loop trains on the first ``train.max_length`` tokens of an example. That is the
right behaviour for an occasional outlier, but a user must know it happened: records carry
``truncated`` (items cut, per split, zeros included) and the runner prints a warning.
Lengths are counted exactly as ``harness.data.batching.encode`` builds the sequences.
"""
from __future__ import annotations

from harness.data.batching import encode

UNCUT = 10**9


def _length(tokenizer, prompt: str, text: str, add_eos: bool) -> int:
    return len(encode(tokenizer, prompt, text, UNCUT, add_eos)[0])


def eval_counts(tokenizer, plan, max_length: int) -> dict[str, int]:
    """{log-prob request list of the plan: requests longer than ``max_length`` tokens}."""
    lengths: dict = {}
    counts = {}
    for name, requests in plan.logprobs.items():
        n = 0
        for r in requests:
            if r not in lengths:
                lengths[r] = _length(tokenizer, r.prompt, r.continuation, add_eos=r.add_eos)
            n += lengths[r] > max_length and not r.full_context   # full-context texts are not cut at max_length
        counts[name] = n
    return counts


def train_counts(tokenizer, splits: dict, max_length: int) -> dict[str, int]:
    """{training split: examples longer than ``max_length`` tokens (with the EOS the loop appends)}."""
    return {name: sum(_length(tokenizer, e.prompt, e.answer, add_eos=True) > max_length for e in examples or [])
            for name, examples in splits.items()}


def warning(counts: dict[str, int], setting: str, max_length: int, what: str) -> str:
    """One warning line for the non-zero counts ('' when nothing was cut)."""
    cut = {k: v for k, v in counts.items() if v}
    if not cut:
        return ""
    parts = ", ".join(f"{n} of {name}" for name, n in sorted(cut.items()))
    return (f"warning: {what}: {sum(cut.values())} item(s) longer than {setting}={max_length} tokens were cut "
            f"to it ({parts}); raise it with --set {setting}=N to score/train on whole texts.")
