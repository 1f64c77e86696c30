"""How close decoding comes to the memory-bandwidth bound (`harness bench --engine vllm`).

Decoding one sequence is bound by memory, not arithmetic: each step reads every weight that takes
part (all of them except the input embedding table, of which it reads one row; a head tied to that
table reads it whole) and the KV cache of the tokens before it, to produce one token. At the
device's bandwidth those bytes take ``bytes / bandwidth`` seconds: the bound. The fraction of it a
decoder reaches is bound / measured time; 1.0 is the roofline. The bandwidth is measured here (a
device-to-device copy), not taken from a data sheet.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch


def streamed_weight_bytes(model, element_bytes: int) -> int:
    """Bytes of weights one decoding step reads, at ``element_bytes`` per weight."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embedding.data_ptr()
    count = sum(p.numel() for p in model.parameters())   # a tied table is one parameter, counted once
    if not tied:
        count -= embedding.numel()   # an untied input table: one row per step, not the table
    return count * element_bytes


def kv_bytes_per_token(config, element_bytes: int) -> int:
    """Bytes of keys and values one cached token holds over all layers."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * element_bytes


def decode_bytes(steps: int, context: int, weight_bytes: int, kv_per_token: int) -> int:
    """Bytes ``steps`` decoding steps after a ``context``-token prompt must read: step i (from 0)
    reads the weights and the cache of ``context + i`` tokens."""
    cached_tokens = steps * context + steps * (steps - 1) // 2
    return steps * weight_bytes + cached_tokens * kv_per_token


def bound_seconds(steps: int, context: int, weight_bytes: int, kv_per_token: int, bandwidth: float) -> float:
    """The least time those steps can take at ``bandwidth`` bytes/s."""
    return decode_bytes(steps, context, weight_bytes, kv_per_token) / bandwidth


def copy_bandwidth(device: torch.device, mib: int = 256, repeats: int = 5) -> float:
    """Bytes per second a device-to-device copy moves (each byte read once and written once),
    best of ``repeats`` after one warm-up copy."""
    source = torch.ones(mib * 2**20 // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    best = math.inf
    for attempt in range(repeats + 1):
        _sync(device)
        started = time.perf_counter()
        target.copy_(source)
        _sync(device)
        if attempt:
            best = min(best, time.perf_counter() - started)
    return 2 * source.numel() * source.element_size() / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class DecodeFigure:
    """One decoder's decoding steps after a prompt, against the bound at ``bandwidth`` bytes/s."""

    steps: int
    seconds: float
    streamed_bytes: int
    bandwidth: float

    @property
    def bound_s(self) -> float:
        return self.streamed_bytes / self.bandwidth

    @property
    def fraction(self) -> float:
        return self.bound_s / self.seconds

    def line(self, name: str) -> str:
        return (f"{name}: {1000 * self.seconds / self.steps:.2f} ms per step, "
                f"{self.streamed_bytes / self.seconds / 1e9:.2f} GB/s streamed, {100 * self.fraction:.1f}% of the bound")


def measure_decoding(generate, context: int, steps: int, weight_bytes: int, kv_per_token: int,
                     bandwidth: float, repeats: int = 3) -> DecodeFigure:
    """``generate(n)`` decodes exactly ``n`` tokens after the same ``context``-token prompt.

    Decoding time is that of ``steps + 1`` tokens less that of 1 (the prompt's forward pass and the
    call's own overhead), so it covers ``steps`` steps, the first at context + 1 tokens; each time is
    the best of ``repeats``, after a warm-up call.
    """
    generate(2)
    one = min(_timed(generate, 1) for _ in range(repeats))
    many = min(_timed(generate, steps + 1) for _ in range(repeats))
    return DecodeFigure(steps, max(many - one, 1e-9), decode_bytes(steps, context + 1, weight_bytes, kv_per_token), bandwidth)


def _timed(generate, n: int) -> float:
    started = time.perf_counter()
    generate(n)
    return time.perf_counter() - started
