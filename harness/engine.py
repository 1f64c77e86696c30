"""The Hugging Face evaluation engine: batched greedy generation and teacher-forced log-probs.

Requests are sorted by length so batches carry little padding; generation pads on the left;
log-prob batches compute the full next-token distribution only at the scored positions, where
they also yield the greedy-match flags (exact memorisation, extraction strength) and the mean
and standard deviation of log p under the model's own distribution (Min-K%++).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import StoppingCriteria

from harness.batching import IGNORE, encode
from harness.errors import HarnessError
from harness.scoring.text import truncate_at_stop


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_new_tokens: int
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogprobRequest:
    """Score ``continuation`` given ``prompt`` (an empty prompt scores the whole text)."""

    prompt: str
    continuation: str


@dataclass
class TokenScores:
    logprobs: list[float]        # log p of each continuation token
    greedy_match: list[bool]     # argmax prediction == the token
    mu: list[float]              # E[log p] under the model's next-token distribution
    sigma: list[float]           # its standard deviation


class StopOnStrings(StoppingCriteria):
    """Stop a row once its *generated* text contains a stop string.

    transformers' own ``stop_strings`` also match across the prompt boundary (a prompt ending
    in "Answer:" plus a generated ":" matches "::"), which would cut generations short.
    """

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt_width: int):
        self.tokenizer, self.stops, self.prompt_width = tokenizer, stops, prompt_width

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


class HFEngine:
    """Evaluates one model; ``batch_size`` is the number of sequences per forward pass."""

    def __init__(self, model, tokenizer, batch_size: int = 16, max_length: int = 2048):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        self.device = next(model.parameters()).device
        self.oom_retries = 0   # how often a batch was halved after running out of memory

    def _score_group(self, encoded: list[tuple[list[int], list[int]]]) -> list[TokenScores]:
        width = max(len(seq) for seq, _ in encoded)
        ids = torch.full((len(encoded), width), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full_like(ids, IGNORE)
        mask = torch.zeros_like(ids)
        for row, (seq, lab) in enumerate(encoded):
            ids[row, : len(seq)], labels[row, : len(lab)], mask[row, : len(seq)] = torch.tensor(seq), torch.tensor(lab), 1
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
        target = labels[:, 1:].to(self.device)
        scored = target != IGNORE
        rows = F.log_softmax(logits[:, :-1][scored].float(), dim=-1)  # only the scored positions
        tokens = target[scored]
        logp = rows.gather(1, tokens.unsqueeze(1)).squeeze(1)
        match = rows.argmax(-1) == tokens
        probs = rows.exp()
        mu = (probs * rows).sum(-1)
        sigma = ((probs * rows.square()).sum(-1) - mu.square()).clamp(min=0).sqrt()
        out, offset = [], 0
        for n in scored.sum(1).tolist():
            sl = slice(offset, offset + n)
            out.append(TokenScores(logp[sl].tolist(), match[sl].tolist(), mu[sl].tolist(), sigma[sl].tolist()))
            offset += n
        return out

    @torch.inference_mode()
    def generate(self, requests: list[GenerationRequest], progress=None) -> list[str]:
        tok = self.tokenizer
        encoded = [tok(r.prompt, add_special_tokens=True)["input_ids"] or [tok.bos_token_id] for r in requests]
        # Batch only requests with the same settings; inside a group, similar lengths together.
        order = sorted(range(len(requests)), key=lambda i: (requests[i].max_new_tokens, requests[i].stop, len(encoded[i])))

        def next_group(start: int) -> list[int]:
            head = requests[order[start]]
            group = [order[start]]
            while len(group) < self.batch_size and start + len(group) < len(order):
                candidate = requests[order[start + len(group)]]
                if (candidate.max_new_tokens, candidate.stop) != (head.max_new_tokens, head.stop):
                    break
                group.append(order[start + len(group)])
            return group

        work = lambda group: self._generate_group([encoded[i] for i in group], requests[group[0]])  # noqa: E731
        return self._in_batches(order, next_group, work, progress, "generate")

    def _generate_group(self, prompts: list[list[int]], head: GenerationRequest) -> list[str]:
        tok = self.tokenizer
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):  # left padding: every prompt ends at the same column
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        generated = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=head.max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            stopping_criteria=[StopOnStrings(tok, head.stop, width)] if head.stop else None,
        )
        texts = tok.batch_decode(generated[:, width:], skip_special_tokens=True)
        return [truncate_at_stop(t, head.stop) if head.stop else t for t in texts]

    def _in_batches(self, order: list[int], next_group, work, progress, desc: str) -> list:
        """Run ``work`` on consecutive groups of ``order``; results come back in request order.

        A group that runs out of memory is retried after the batch size is halved.
        """
        results: list = [None] * len(order)
        bar = progress(total=len(order), desc=desc, unit="req") if progress else None
        start = 0
        while start < len(order):
            group = next_group(start)
            answers = self._shrinking_on_oom(lambda: work(group), len(group))
            if answers is None:
                continue  # out of memory: retry the same requests in a smaller batch
            for i, answer in zip(group, answers):
                results[i] = answer
            if bar:
                bar.update(len(group))
            start += len(group)
        if bar:
            bar.close()
        return results

    def _shrinking_on_oom(self, work, size: int):
        """Run ``work``; on out-of-memory halve the batch size and return None (the caller retries)."""
        try:
            return work()
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not _is_oom(exc):
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if size <= 1:
                raise HarnessError(
                    "out of memory during evaluation even with batch size 1: lower eval.max_length, "
                    "use a smaller model, or a device with more memory."
                ) from None
            self.batch_size = max(1, self.batch_size // 2)
            self.oom_retries += 1
            return None

    @torch.inference_mode()
    def logprobs(self, requests: list[LogprobRequest], progress=None) -> list[TokenScores]:
        encoded = [encode(self.tokenizer, r.prompt, r.continuation, self.max_length, add_eos=False) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: len(encoded[i][0]))
        next_group = lambda start: order[start : start + self.batch_size]  # noqa: E731
        work = lambda group: self._score_group([encoded[i] for i in group])  # noqa: E731
        return self._in_batches(order, next_group, work, progress, "log-probs")
