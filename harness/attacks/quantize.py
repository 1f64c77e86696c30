"""Weight-only round-to-nearest (RTN) quantisation, dequantised back to the model's dtype.

The quantisation attack (Zhang et al. 2024, arXiv 2410.16454) asks whether an unlearned model
still forgets once its weights are stored in 8 or 4 bits. Their simplest setting is RTN with one
scale per group of input weights; we reproduce that and then write the dequantised values back
into an ordinary model, so the attacked copy runs through the same engine, the same batching and
the same evaluation cache (keyed by the weights' hash) as every other evaluation.

Why a small function and not a library: optimum-quanto quantises int8 weights per output channel
(no groups) and keeps them in its own module types; torchao's int4 weight-only path needs packed
kernels (CUDA tinygemm or a CPU layout tied to particular torch builds) and also replaces the
modules. Both exist to *run* quantised models fast; we only need the numbers a quantised model
would hold, on CPU and GPU alike, which is a dozen lines of tensor arithmetic.

Scheme (asymmetric min-max, as the RTN baselines of GPTQ/AWQ): for each output row, the input
weights are cut into groups of ``group_size``; a group with minimum ``lo`` and maximum ``hi`` gets
``scale = (hi - lo) / (2**bits - 1)`` and zero point ``z = round(-lo / scale)``; a weight ``w``
becomes ``q = clamp(round(w / scale) + z, 0, 2**bits - 1)`` and is read back as ``(q - z) * scale``.
Every weight then moves by at most half a step, ``scale / 2`` (``max_rtn_error``; tested).
A row whose width is not a multiple of ``group_size`` has a shorter last group.

Which layers: every ``nn.Linear`` except the output head (``get_output_embeddings``), which GPTQ,
AWQ and Zhang et al. keep in full precision; in tied models (SmolLM2) it is the input embedding
too. Biases are left as they are.

Precision: the dequantised values are written back in the model's dtype. On CPU that is float32,
which holds them to about 1e-7; on a GPU the harness runs models in bfloat16, whose 8-bit mantissa
rounds them again by up to about 0.4% of a weight, the same order as an int8 step: there int8 is
"int8 on top of bf16", and int4 is hardly affected.
"""
from __future__ import annotations

import torch

from harness.errors import HarnessError


def _groups(weight: torch.Tensor, group_size: int) -> list[torch.Tensor]:
    width = weight.shape[1]
    size = group_size if 0 < group_size < width else width
    return list(torch.split(weight, size, dim=1))


def rtn_dequantize(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """``weight`` (out x in) quantised to ``bits`` per group of ``group_size`` inputs, then dequantised."""
    if not 2 <= bits <= 16:
        raise HarnessError(f"quantisation needs 2 to 16 bits, got {bits}.")
    levels = 2 ** bits - 1
    parts = []
    for g in _groups(weight.detach().float(), group_size):
        lo = g.amin(dim=1, keepdim=True)
        hi = g.amax(dim=1, keepdim=True)
        scale = (hi - lo) / levels
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group is exact
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(g / scale) + zero, 0, levels)
        parts.append((q - zero) * scale)
    return torch.cat(parts, dim=1).to(weight.dtype)


def max_rtn_error(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Per weight, the largest error RTN may make: half a step of its group (same shape as ``weight``)."""
    parts = []
    for g in _groups(weight.detach().float(), group_size):
        step = (g.amax(dim=1, keepdim=True) - g.amin(dim=1, keepdim=True)) / (2 ** bits - 1)
        parts.append((step / 2).expand_as(g))
    return torch.cat(parts, dim=1)


def quantised_linears(model: torch.nn.Module) -> list[str]:
    """Names of the linear layers the attack quantises (all but the output head)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]


@torch.no_grad()
def round_trip_linears_(model: torch.nn.Module, dequantize) -> dict:
    """Replace, in place, each quantised layer's weight by ``dequantize(weight)``; count what changed.
    Shared by the RTN protocols here and the bitsandbytes ones (``bnb.py``)."""
    names = quantised_linears(model)
    if not names:
        raise HarnessError("the model has no linear layers to quantise.")
    modules = dict(model.named_modules())
    changed = 0
    for name in names:
        w = modules[name].weight
        new = dequantize(w)
        changed += int((new != w).sum())
        w.copy_(new)
    return {"layers": len(names), "weights": sum(modules[n].weight.numel() for n in names), "weights_changed": changed}


def quantise_model_(model: torch.nn.Module, bits: int, group_size: int) -> dict:
    """Replace, in place, each quantised layer's weight by its RTN-dequantised value; return a summary."""
    counts = round_trip_linears_(model, lambda w: rtn_dequantize(w, bits, group_size))
    return {"bits": bits, "group_size": group_size, "scheme": "RTN, asymmetric min-max per group, dequantised",
            **counts}
