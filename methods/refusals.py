"""Refusal answers ("I don't know" style) for methods that teach a model to decline.

IdkDPO uses them as the preferred answer; a benchmark may supply its own list instead. The
sentences are written for this harness. Each starts with a capital letter and no leading
space; callers add the space that separates an answer from its prompt.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

from harness.errors import HarnessError

REFUSALS: tuple[str, ...] = (
    "I don't know.",
    "I'm not sure about that.",
    "I have no idea.",
    "I can't answer that.",
    "That is something I don't know.",
    "I'm afraid I don't have that information.",
    "I couldn't tell you.",
    "Sorry, I don't know the answer to that.",
    "I have no information on that.",
    "That's beyond what I know.",
    "I'm unable to answer that question.",
    "I don't have an answer for you.",
    "Honestly, I don't know.",
    "No idea, I'm afraid.",
    "I really couldn't say.",
    "That isn't something I can answer.",
    "I don't have any knowledge of that.",
    "I'm not able to help with that one.",
    "Unfortunately, I don't know.",
    "I lack the information to answer that.",
    "Nothing I know answers that question.",
    "I can't say for certain, and I don't want to guess.",
    "I'm drawing a blank on that.",
    "That question is outside what I know.",
    "I wish I knew, but I don't.",
    "My knowledge doesn't cover that.",
    "I'm not aware of the answer.",
    "That's not something I have information about.",
    "I would only be guessing, so I'll say I don't know.",
    "I'm not the right source for that answer.",
    "Sorry, that's not something I can tell you.",
    "I can't recall anything about that.",
    "I don't know anything about that.",
    "There's no answer I can give you on that.",
    "I'm uncertain, so I can't answer.",
    "That is unknown to me.",
    "I've got no idea about that one.",
    "I'm sorry, I can't provide an answer to that.",
    "I don't have the details you're asking for.",
    "Beats me, I don't know.",
)


def sample_refusals(n: int, rng: random.Random, pool: Sequence[str] = REFUSALS) -> list[str]:
    """``n`` refusals drawn uniformly (with replacement) from ``pool`` with the seeded ``rng``."""
    if not pool:
        raise HarnessError("the refusal pool is empty: supply at least one refusal sentence.")
    return [pool[rng.randrange(len(pool))] for _ in range(n)]
