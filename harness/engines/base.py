"""What every evaluation engine offers, and the tokenisation all of them share.

The runner, ``harness bench`` and the evaluation cache talk to an ``Engine``: greedy
``generate`` and teacher-forced ``logprobs`` over the request types defined here,
and ``settings()``, what its outputs depend on besides weights and request (the cache key).
Backends differ in how they compute, never in which tokens they see: ``TokenizedEngine`` owns
how a prompt and a scored text become token ids and how generated ids become text, so the HF
and the vLLM engine score the same ids and decode the same ids into the same string.

Not every backend returns the full next-token distribution: vLLM gives the log-prob and the
rank of each token, not the mean and standard deviation of log p that Min-K%++ needs, nor a
gradient (GradNorm). A ``LogprobRequest`` with ``needs_distribution`` or ``grad_norm`` asks for
them; ``RoutedEngine`` sends those requests to an engine that has them (HF) and counts which
engine answered what, for the record.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from harness.data.batching import encode, prompt_ids
from harness.data.chat import ChatPrompt
from harness.data.cleanup import clean_up_tokenization_spaces
from harness.scoring.text import truncate_at_stop


@dataclass(frozen=True)
class GenerationRequest:
    """Greedy generation; a ``ChatPrompt`` is rendered by the tokenizer's chat template.

    ``clean_up_spaces`` applies transformers 4.x's ``clean_up_tokenization`` to the decoded text
    (MUSE's ``clean_up_tokenization_spaces=True``; ``harness.data.cleanup``, since transformers
    5.x ignores the flag for BPE tokenizers); special tokens are always skipped.
    """

    prompt: str | ChatPrompt
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    clean_up_spaces: bool = False


@dataclass(frozen=True)
class LogprobRequest:
    """Score ``continuation`` given ``prompt`` (an empty prompt scores the whole text).

    ``add_eos`` appends the tokenizer's EOS to the continuation and scores it (TOFU's
    convention). ``full_context`` scores the text up to the model's context length instead of
    ``eval.max_length`` (MUSE never truncates its PrivLeak texts); a longer text is cut there
    with a warning.

    ``needs_distribution``: the metric reads ``mu``/``sigma`` (Min-K%++), so the request goes to
    an engine that computes the full next-token distribution (``harness/engines/base.py``).
    """

    prompt: str | ChatPrompt
    continuation: str
    add_eos: bool = False
    full_context: bool = False
    needs_distribution: bool = False
    grad_norm: bool = False      # also the norm of the loss gradient (GradNorm MIA): HF engine only


@dataclass
class TokenScores:
    logprobs: list[float]        # log p of each continuation token
    greedy_match: list[bool]     # argmax prediction == the token
    mu: list[float] | None       # E[log p] under the model's next-token distribution (None: not computed)
    sigma: list[float] | None    # its standard deviation
    grad_norm: float | None = None   # mean over parameter tensors of ||d mean NLL / d W||_2 (grad_norm requests)



class Engine(ABC):
    name: ClassVar[str] = ""
    full_distribution: ClassVar[bool] = False   # logprobs() fills TokenScores.mu and .sigma

    @abstractmethod
    def generate(self, requests: list[GenerationRequest], progress=None) -> list[str]:
        """Greedy continuations, cut at each request's stop strings and budget."""

    @abstractmethod
    def logprobs(self, requests: list[LogprobRequest], progress=None) -> list[TokenScores]:
        """Per-token log p and greedy-match flags of each continuation given its prompt."""

    @abstractmethod
    def settings(self) -> dict:
        """What the outputs depend on besides weights, tokenizer and request (the cache key)."""


class TokenizedEngine(Engine):
    """An engine whose text handling is shared: subclasses set ``model``, ``tokenizer`` and
    ``max_length``. The request-level conventions (chat prompts, TOFU's scored EOS, MUSE's
    full-context scoring and clean-up decoding; docs/scoring-conventions.md) live here, so every
    backend honours them."""

    model: Any
    tokenizer: Any
    max_length: int

    def prompt_ids(self, prompt: str | ChatPrompt) -> list[int]:
        """A generation prompt as ids (``harness.data.batching.prompt_ids``: chat template, BOS alone for an empty prompt)."""
        return prompt_ids(self.tokenizer, prompt)

    def scored_ids(self, request: LogprobRequest) -> tuple[list[int], list[int]]:
        """Ids and labels of prompt + continuation (``harness.data.batching.encode``); position 0 is never scored."""
        return encode(self.tokenizer, request.prompt, request.continuation, self._limit(request), request.add_eos)

    def decode(self, ids: list[int], request: GenerationRequest) -> str:
        """Generated ids to text: up to the first EOS, special tokens skipped, spaces cleaned up where
        the request asks (MUSE), cut at the first stop string."""
        eos = self.tokenizer.eos_token_id
        if eos in ids:
            ids = ids[: ids.index(eos)]
        text = self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if request.clean_up_spaces:
            text = clean_up_tokenization_spaces(text)
        return truncate_at_stop(text, request.stop) if request.stop else text

    def model_context(self) -> int | None:
        """The model's context length (``max_position_embeddings``), where its config says it."""
        return getattr(getattr(self.model, "config", None), "max_position_embeddings", None)

    def _limit(self, request: LogprobRequest) -> int:
        """Tokens a scored text may hold: the model's context for ``full_context`` requests, else ``max_length``."""
        return (self.model_context() or self.max_length) if request.full_context else self.max_length


def needs_full(request: LogprobRequest) -> bool:
    """Whether only a full-distribution engine (HF) can answer: Min-K%++ moments or a gradient norm."""
    return request.needs_distribution or request.grad_norm


class RoutedEngine(Engine):
    """Everything from ``main``, except log-prob requests that need the full distribution when
    ``main`` cannot give it: those go to ``full`` (all log-prob requests with ``logprobs_to_full``,
    where ``full`` scores faster). ``served`` counts which engine answered each stage's requests
    (cache hits included: a cached answer was produced by the same engine)."""

    def __init__(self, main, full=None, logprobs_to_full: bool = False):
        if not main.full_distribution and full is None:
            raise ValueError(f"engine '{main.name}' gives no full distribution: pass an engine that does")
        if logprobs_to_full and full is None:
            raise ValueError("logprobs_to_full needs a second engine")
        self.main, self.full, self.logprobs_to_full = main, full, logprobs_to_full
        self.served: dict[str, dict[str, int]] = {"generation": {}, "logprobs": {}}

    @property
    def name(self) -> str:
        return self.main.name

    @property
    def full_distribution(self) -> bool:
        return True

    def _count(self, stage: str, engine, n: int) -> None:
        if n:
            self.served[stage][engine.name] = self.served[stage].get(engine.name, 0) + n

    def generate(self, requests, progress=None):
        self._count("generation", self.main, len(requests))
        return self.main.generate(requests, progress)

    def logprobs(self, requests, progress=None):
        if self.main.full_distribution and not self.logprobs_to_full:
            self._count("logprobs", self.main, len(requests))
            return self.main.logprobs(requests, progress)
        to_full = [i for i, r in enumerate(requests) if needs_full(r) or self.logprobs_to_full]
        to_main = [i for i, r in enumerate(requests) if not (needs_full(r) or self.logprobs_to_full)]
        out: list = [None] * len(requests)
        for engine, picked in ((self.main, to_main), (self.full, to_full)):
            if picked:
                self._count("logprobs", engine, len(picked))
                for i, scores in zip(picked, engine.logprobs([requests[i] for i in picked], progress)):
                    out[i] = scores
        return out

    def settings(self) -> dict:
        both = {"main": self.main.settings()}
        if self.full is not None and (self.logprobs_to_full or not self.main.full_distribution):
            both["full_distribution"] = self.full.settings()
        return both

    def record(self) -> dict:
        """For the run record: which engine produced how many outputs of each stage, and their settings."""
        engines = {self.main.name: self.main.settings()}
        if self.full is not None and any(self.full.name in s for s in self.served.values()):
            engines[self.full.name] = self.full.settings()
        return {"served": {k: v for k, v in self.served.items() if v}, "settings": engines}

    def describe(self) -> dict:
        """Both engines' runtime choices (HF: batch size, memory budget; vLLM: its CPU threads) for the record."""
        out: dict = {}
        for engine in (self.full, self.main):
            if engine is not None and hasattr(engine, "describe"):
                out.update(engine.describe())
        return out

    @property
    def counts(self) -> dict:
        """Cache hits and misses (both engines share one cache)."""
        return dict(getattr(self.main, "counts", {}))
