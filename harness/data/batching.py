"""Turning (prompt, answer) examples into padded token batches with prompt tokens masked out.

Prompt and answer are tokenised separately and concatenated, so the boundary between what
is conditioned on and what is scored is exact whatever the tokenizer merges.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.data.chat import ChatPrompt, chat_encode, chat_prompt_ids

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One training or scoring item: the loss and the scores cover the answer tokens only."""

    prompt: str | ChatPrompt          # a ChatPrompt is rendered by the tokenizer's chat template
    answer: str
    id: str = ""
    perturbed: tuple[str, ...] = ()   # wrong answers to the same prompt, where the benchmark has them
    paraphrased: str = ""             # the same answer reworded, where the benchmark has it


@dataclass
class TokenBatch:
    input_ids: torch.Tensor       # [B, T], right-padded
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor          # [B, T], IGNORE outside the answer

    def to(self, device) -> "TokenBatch":
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def prompt_ids(tokenizer, prompt: str | ChatPrompt) -> list[int]:
    """The tokens a prompt conditions on (BOS alone for an empty plain prompt, where the tokenizer has one)."""
    if isinstance(prompt, ChatPrompt):
        return chat_prompt_ids(tokenizer, prompt)
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
    if not ids and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id]  # give the first answer token something to condition on
    return ids


def encode(tokenizer, prompt: str | ChatPrompt, answer: str, max_length: int, add_eos: bool) -> tuple[list[int], list[int]]:
    """Token ids and labels of prompt + answer; truncated from the right to max_length.

    ``add_eos`` appends the tokenizer's EOS to the answer and scores it, as TOFU's data code
    and training do; a chat prompt scores everything after its generation prompt (see chat.py).
    """
    if isinstance(prompt, ChatPrompt):
        ids, n = chat_encode(tokenizer, prompt, answer, add_eos)
        labels = [IGNORE] * n + ids[n:]
        return ids[:max_length], labels[:max_length]
    head = prompt_ids(tokenizer, prompt)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    ids = (head + answer_ids)[:max_length]
    labels = ([IGNORE] * len(head) + answer_ids)[:max_length]
    return ids, labels


def collate(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> TokenBatch:
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return TokenBatch(input_ids, mask, labels)


def make_batch(tokenizer, examples: list[Example], max_length: int = 512, add_eos: bool = True) -> TokenBatch:
    return collate([encode(tokenizer, e.prompt, e.answer, max_length, add_eos) for e in examples], tokenizer.pad_token_id)
