"""The work ``scripts/gpu-check`` does, as inputs and as counted arithmetic and bytes.

Inputs are fixed strings (the byte-level tokenizer makes one ASCII character one token, so a
text of n characters is n tokens). The counts turn each part into the least time it can take on
a device of a given bf16 matrix rate and memory bandwidth: training and log-prob scoring are
bound by arithmetic (about 2 FLOPs per matmul weight per token forward, 4 more backward), decoding
by the bytes every step reads (``harness/engines/roofline.py``). The measured time over that bound is
how far the harness is from the hardware's limit.
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass

from harness.data.batching import Example
from harness.engines.roofline import decode_bytes

#: H100 SXM data-sheet figures, used only to size the check before a GPU is lent
H100_BF16_FLOPS = 989e12     # dense bf16 tensor-core rate
H100_HBM_BYTES_S = 3.35e12   # HBM3 bandwidth


def text(seed: int, length: int) -> str:
    """``length`` characters of lowercase words, the same for a given seed."""
    rng = random.Random(seed)
    out = []
    while sum(map(len, out)) < length:
        out.append("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9))) + " ")
    return "".join(out)[:length]


def forget_examples(n: int, length: int) -> list[Example]:
    """``n`` question-answer items of ``length`` tokens in all (8-token question, the rest answer)."""
    return [Example(f"Q{i:04d}: ", " " + text(i, max(1, length - 8)), f"f{i}") for i in range(n)]


@dataclass(frozen=True)
class Shape:
    """What the counts need of an architecture."""

    params: int          # all parameters (a tied table counted once)
    matmul_params: int   # weights multiplied per token (the input table is a lookup; a tied head multiplies it)
    layers: int
    hidden: int
    kv_bytes_per_token: int

    @classmethod
    def of(cls, model) -> "Shape":
        from harness.engines.roofline import kv_bytes_per_token, streamed_weight_bytes

        size = next(model.parameters()).element_size()
        return cls(sum(p.numel() for p in model.parameters()), streamed_weight_bytes(model, 1),
                   model.config.num_hidden_layers, model.config.hidden_size, kv_bytes_per_token(model.config, size))


def forward_flops(shape: Shape, tokens: int, seq: int) -> float:
    """One forward pass over ``tokens`` tokens in sequences of ``seq``: weight matmuls plus the
    attention scores and weighted sum (QK^T and AV, 2 x 2 x seq x hidden per token per layer, full square)."""
    return 2 * shape.matmul_params * tokens + 4 * shape.layers * shape.hidden * seq * tokens


def training_step_bound(shape: Shape, tokens: int, seq: int, reference_forwards: int, element_bytes: int,
                        flops_rate: float, bandwidth: float) -> float:
    """Least seconds of one optimiser step: forward + backward (3x a forward) of the policy, the
    reference model's forward passes, and AdamW reading and writing weights, gradients and two moments."""
    arithmetic = (3 + reference_forwards) * forward_flops(shape, tokens, seq)
    optimiser_bytes = shape.params * element_bytes * 4 * 2   # 4 tensors per weight, read and written
    return arithmetic / flops_rate + optimiser_bytes / bandwidth


def logprob_bound(shape: Shape, tokens: int, seq: int, flops_rate: float) -> float:
    return forward_flops(shape, tokens, seq) / flops_rate


def generation_bound(shape: Shape, batches: int, prompt: int, new_tokens: int, element_bytes: int,
                     bandwidth: float) -> float:
    """Batched greedy decoding is bound by bytes at these batch sizes: each step of a batch reads the
    weights once and each row's cache (rows' caches summed: one batch of ``rows`` reads ``rows`` caches)."""
    return batches * decode_bytes(new_tokens, prompt, shape.matmul_params * element_bytes, 0) / bandwidth


def generation_cache_bytes(shape: Shape, requests: int, prompt: int, new_tokens: int) -> int:
    """Bytes of KV cache all requests' decoding steps read (added to the weights' bytes)."""
    return requests * (decode_bytes(new_tokens, prompt, 0, shape.kv_bytes_per_token))
