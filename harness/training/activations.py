"""Reading a layer's activations during a forward pass: the activation-capture hook of the method contract.

Methods that work on hidden states (RMU) need the output of one decoder layer, with its
autograd graph for the model being trained and without it for a frozen copy. ``decoder_layers``
finds the stack of decoder blocks of a causal LM by its common attribute paths, and
``capture_output`` is a context manager that records what one module returns while the caller
runs an ordinary forward pass, so the loss can use the logits and the hidden state of the same
pass. Nothing here knows about any method; the loop never has to.

    with capture_output(decoder_layer(model, 7)) as hidden:
        logits = model(**batch.model_inputs()).logits
    h = hidden.value            # [batch, seq, hidden], the residual stream after layer 7
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from harness.errors import HarnessError

# Attribute paths of the decoder block list in common causal-LM classes (first match wins):
# Llama/Mistral/Qwen/SmolLM2/Phi-3 ("model.layers"), GPT-2/GPT-J/Falcon ("transformer.h"),
# GPT-NeoX/Pythia ("gpt_neox.layers"), OPT ("model.decoder.layers").
LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")


def _resolve(root: torch.nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """(dotted name, ModuleList) of the model's decoder blocks (through a DDP-style ``.module`` wrapper)."""
    inner = getattr(model, "module", None)
    if isinstance(inner, torch.nn.Module) and not isinstance(model, torch.nn.ModuleList):
        model = inner
    for path in LAYER_PATHS:
        layers = _resolve(model, path)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
            return path, layers
    raise HarnessError(
        f"cannot find the decoder layers of {type(model).__name__}: looked for {', '.join(LAYER_PATHS)}. "
        "Methods that read hidden states (e.g. rmu) need one of these layouts."
    )


def layer_index(model: torch.nn.Module, layer: int, what: str = "layer") -> int:
    """A validated non-negative layer index; negative values count from the last layer."""
    _, layers = decoder_layers(model)
    index = layer + len(layers) if layer < 0 else layer
    if not 0 <= index < len(layers):
        raise HarnessError(
            f"{what}={layer} does not exist: the model has {len(layers)} decoder layers (0..{len(layers) - 1}). "
            f"Pass a layer in that range (negative values count from the end)."
        )
    return index


def decoder_layer(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The decoder block at ``layer`` (negative counts from the end)."""
    _, layers = decoder_layers(model)
    return layers[layer_index(model, layer)]


@dataclass
class Captured:
    value: torch.Tensor | None = None


class _StopForward(Exception):
    """Raised by a ``stop=True`` hook to end the forward pass once the output is captured."""


@contextmanager
def capture_output(module: torch.nn.Module, stop: bool = False) -> Iterator[Captured]:
    """Record ``module``'s output (its first element if it returns a tuple) during the block.

    The tensor keeps its autograd graph when the forward pass runs with gradients. With
    ``stop=True`` the forward pass ends right after ``module`` (the layers above it and the LM
    head are not computed, so the model call returns nothing and the rest of the block is
    skipped): for losses that only need this activation. The hook is removed on exit, even
    after an exception, so a model is never left with a stale hook. When the module runs more
    than once inside the block, the last output is kept.
    """
    captured = Captured()

    def hook(_module, _inputs, output):
        captured.value = output[0] if isinstance(output, (tuple, list)) else output
        if stop:
            raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    except _StopForward:
        pass
    finally:
        handle.remove()
