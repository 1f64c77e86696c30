"""Quantisation through bitsandbytes, as Zhang et al. 2024 (arXiv 2410.16454) run it, dequantised back.

Their released code (github.com/zzwjames/FailureLLMUnlearning, ``utils.py`` ``load_model``) loads the
unlearned model with transformers' ``BitsAndBytesConfig(load_in_4bit=True)`` or
``BitsAndBytesConfig(load_in_8bit=True)`` and nothing else set: 4-bit is bitsandbytes' default
``fp4`` code in blocks of 64 weights with one absmax scale each (no double quantisation), 8-bit is
LLM.int8(): one absmax scale per output row, 127 levels each side. OpenUnlearning's meta-evaluation
(arXiv 2506.12618) uses 4-bit ``nf4``. transformers keeps the output head in full precision.

As for round-to-nearest (``quantize.py``), the attacked copy keeps ordinary modules: each quantised
layer's weight is replaced by what bitsandbytes itself dequantises it to (``quantize_4bit`` then
``dequantize_4bit``; ``int8_vectorwise_quant`` then ``int8_vectorwise_dequant``), so the copy runs
through the same engine and evaluation cache as every other model. For 4-bit that is exactly the
weight a ``Linear4bit`` layer multiplies by (it dequantises before its matmul). For 8-bit only the
weights are reproduced: LLM.int8() also quantises the activations row-wise to int8 at inference
(keeping outlier features above its threshold of 6 in 16 bits), which this does not emulate.

bitsandbytes is an optional extra (``pip install 'unlearning-harness[bnb]'`` or ``pip install
bitsandbytes``); 0.50.2 installs from PyPI on a CPU-only machine and these four functions run there
with torch 2.13 (checked: docs/attacks.md). Without it the ``bnb-*`` attacks are refused before any
model loads.
"""
from __future__ import annotations

import importlib.util

import torch

from harness.errors import HarnessError
from harness.attacks.quantize import round_trip_linears_

#: attack name -> (bits, bitsandbytes quantisation type)
BNB = {"bnb-int8": (8, "int8"), "bnb-fp4": (4, "fp4"), "bnb-nf4": (4, "nf4")}
BLOCKSIZE_4BIT = 64   # transformers' BitsAndBytesConfig default, through Params4bit
INSTALL = "pip install bitsandbytes (or the harness's extra: pip install 'unlearning-harness[bnb]')"


def available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def check_available(names) -> None:
    """Refuse a bnb attack up front when bitsandbytes is not installed."""
    wanted = [n for n in names if n in BNB]
    if wanted and not available():
        raise HarnessError(f"eval.attacks: {', '.join(wanted)} quantise through bitsandbytes, which is not installed: "
                           f"{INSTALL}; or use the round-to-nearest attacks int8 / int4, which need nothing extra.")


def bnb_dequantize(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """``weight`` (out x in) as bitsandbytes stores it under ``kind`` (int8, fp4, nf4), read back in its dtype."""
    import bitsandbytes.functional as F

    if kind == "int8":   # Int8Params quantises the half-precision weight, one absmax per output row
        q, scale, _ = F.int8_vectorwise_quant(weight.detach().to(torch.float16))
        return F.int8_vectorwise_dequant(q, scale).to(weight.dtype)
    q, state = F.quantize_4bit(weight.detach(), blocksize=BLOCKSIZE_4BIT, quant_type=kind, compress_statistics=False)
    return F.dequantize_4bit(q, state).to(weight.dtype)


def bnb_quantise_model_(model: torch.nn.Module, name: str) -> dict:
    """Replace, in place, each quantised layer's weight (all linear layers but the head) by its bitsandbytes
    round trip; return a summary for the record."""
    check_available([name])
    import bitsandbytes

    bits, kind = BNB[name]
    counts = round_trip_linears_(model, lambda w: bnb_dequantize(w, kind))
    scheme = ("LLM.int8() weights: absmax per output row, dequantised (activations not quantised)" if kind == "int8"
              else f"bitsandbytes {kind}, blocks of {BLOCKSIZE_4BIT}, no double quantisation, dequantised")
    return {"bits": bits, "quant_type": kind, "scheme": scheme, "library": f"bitsandbytes {bitsandbytes.__version__}",
            **counts}
