"""``random:<name>``: a model of a real architecture with random weights, for speed and memory figures.

A GPU lent for minutes, with no network and 64 MiB of carried files, cannot load a real
checkpoint; but step time, peak memory and decoding bandwidth depend on the architecture
(shapes, vocabulary, attention heads), not on the weight values. These models are built in code
from a Llama-style config of the named size, with the byte-level tokenizer (no download; it uses
259 of the vocabulary's ids, which costs the same per token as any other id). Their scores mean
nothing: every record made with one says so (``model_source`` starts with ``RANDOM_SOURCE``) and
leaderboards leave such records out unless asked (``harness leaderboard --include-random``).
"""
from __future__ import annotations

import torch

from harness.errors import HarnessError

PREFIX = "random:"
#: how a record's ``model_source`` starts for these models (read by the leaderboard filter)
RANDOM_SOURCE = "random weights"

#: Llama-style configs of known models (shapes only). ``tiny`` is the tests' two-layer model.
ARCHITECTURES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=259, tie_word_embeddings=True, max_position_embeddings=1024),
    # SmolLM2-135M: 30 layers of 576, GQA 9/3 heads, 49152-token vocabulary, tied head.
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192,
                 rope_theta=100000.0),
    # Llama-3.2-1B: 16 layers of 2048, GQA 32/8 heads, 128256-token vocabulary, tied head.
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=8192,
               rope_theta=500000.0),
    # Llama-2-7B: 32 layers of 4096, 32 heads (no GQA), 32000-token vocabulary, untied head.
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False, max_position_embeddings=4096),
}


def is_random_spec(spec: str) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def architecture(spec: str) -> str:
    """The architecture name of a ``random:<name>`` spec; a clear error for an unknown one."""
    name = spec[len(PREFIX):]
    if name not in ARCHITECTURES:
        raise HarnessError(
            f"unknown random-weight architecture '{spec}'. Use one of: "
            f"{', '.join(PREFIX + n for n in ARCHITECTURES)} (random weights: for speed and memory figures only)."
        )
    return name


def random_config(spec: str, tokenizer):
    from transformers import LlamaConfig

    shape = dict(ARCHITECTURES[architecture(spec)])
    shape["vocab_size"] = max(shape["vocab_size"], len(tokenizer))
    return LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)


def parameter_count(spec: str) -> int:
    """Parameters of the architecture, counted from its config without building it."""
    c = ARCHITECTURES[architecture(spec)]
    h, layers, vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    head_dim = h // c["num_attention_heads"]
    attention = h * h * 2 + 2 * h * c["num_key_value_heads"] * head_dim   # q, o; k, v
    mlp = 3 * h * c["intermediate_size"]
    per_layer = attention + mlp + 2 * h                                   # two RMSNorm weights
    tables = vocab * h * (1 if c["tie_word_embeddings"] else 2)
    return layers * per_layer + tables + h                                # final norm


def source_text(spec: str, seed: int) -> str:
    """The record's ``model_source``: says plainly that the weights are random."""
    name = architecture(spec)
    return f"{RANDOM_SOURCE} ({name} Llama-style architecture, seed {seed}): speed and memory only, scores meaningless"


def build_random(spec: str, tok, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A model with random weights for tokenizer ``tok`` (the byte-level one), built directly on
    ``device`` in ``dtype`` (a 7B model never passes through host memory in fp32)."""
    from transformers import LlamaForCausalLM

    config = random_config(spec, tok)
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        try:
            torch.set_default_dtype(dtype)
            with torch.device(device):
                model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval()
