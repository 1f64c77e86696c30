"""LoRA for any method: low-rank adapters (peft) on the linear layers a method trains, merged back after.

``--set train.lora.r=8`` (with ``alpha``, ``dropout``, ``targets``) makes ``Loop.run`` put a LoRA
adapter on every linear layer whose weight the method's ``trainable_parameters`` selects (and, with
``targets``, whose name ends in one of them), train only the adapters, and at the end merge each
``W + (alpha/r)·B·A`` into its layer and remove the adapter modules. The model that leaves the loop is an
ordinary model again: the same module tree and state-dict names as before, so saving, fingerprints, the
HF and the vLLM engine see plain weights. Per-epoch evaluation is handed a merged copy.

How methods fit: the adapters follow ``trainable_parameters`` (RMU's chosen ``mlp.down_proj`` layers get
adapters, nothing else). Task Vector and WHP fine-tune a copy through the same loop: that copy is
LoRA-trained and merged too, then their weight arithmetic runs on ordinary weights. A method whose
trainable parameters hold no linear-layer weight (only embeddings or norms) is refused. Under FSDP
(``accelerate launch --use_fsdp``) LoRA is refused: data-parallel processes work.
"""
from __future__ import annotations

import copy
import importlib.util
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from harness.errors import HarnessError


@dataclass
class LoraSettings:
    r: int = 0                 # adapter rank; 0 = no LoRA (full fine-tuning of the method's parameters)
    alpha: float = 16.0        # scaling: the update is (alpha / r) · B·A
    dropout: float = 0.0       # dropout on the adapter's input
    targets: str = ""          # comma list of module-name endings (e.g. q_proj,v_proj); empty = every linear layer the method trains

    def __post_init__(self):
        if self.r < 0:
            raise HarnessError(f"train.lora.r must be 0 (off) or a positive rank, got {self.r}.")
        if self.alpha <= 0:
            raise HarnessError(f"train.lora.alpha must be positive, got {self.alpha}.")
        if not 0.0 <= self.dropout < 1.0:
            raise HarnessError(f"train.lora.dropout must be in [0, 1), got {self.dropout}.")
        if self.r > 0 and importlib.util.find_spec("peft") is None:
            raise HarnessError("train.lora needs the peft package: pip install peft (or leave train.lora.r at 0).")

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def target_list(self) -> list[str]:
        return [t.strip() for t in self.targets.split(",") if t.strip()]


def adapter_targets(model: torch.nn.Module, trainable, settings: LoraSettings, method_name: str) -> list[str]:
    """Full names of the linear layers that get adapters: trained by the method, matching ``targets``."""
    chosen = {id(p) for p in trainable}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    endings = settings.target_list()
    names = [
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head and id(module.weight) in chosen
        and (not endings or any(name == e or name.endswith("." + e) for e in endings))
    ]
    if not names:
        wanted = f" matching train.lora.targets={settings.targets!r}" if endings else ""
        raise HarnessError(
            f"LoRA found no linear layer{wanted} among the parameters method '{method_name}' trains, so there is "
            "nothing to adapt. Leave train.lora.r at 0 for this method, or change train.lora.targets."
        )
    return names


def lora_layers(model: torch.nn.Module):
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def inject(model: torch.nn.Module, names: list[str], settings: LoraSettings, seed: int) -> list[torch.nn.Parameter]:
    """Put adapters on ``names``; returns the adapter parameters (B starts at 0: the model is unchanged)."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(seed)   # A's initialisation: the same on every process and every run
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=names, bias="none")
    inject_adapter_in_model(config, model)
    return [p for _, m in lora_layers(model) for n, p in m.named_parameters() if n.startswith("lora_")]


def merge_and_remove(model: torch.nn.Module) -> None:
    """Fold each adapter into its layer's weight and put the plain layer back in its place."""
    for name, module in lora_layers(model):
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain copy of a model that carries adapters, for evaluating mid-run."""
    twin = copy.deepcopy(model)
    merge_and_remove(twin)
    return twin


@contextmanager
def adapted(model: torch.nn.Module, trainable, settings: LoraSettings | None, method_name: str, seed: int):
    """Yield the parameters to train: the method's own, or with LoRA the adapters on its linear layers.

    With LoRA the adapters are merged and removed on the way out, whatever happened in the block.
    """
    trainable = list(trainable)
    if settings is None or not settings.enabled:
        yield trainable
        return
    names = adapter_targets(model, trainable, settings, method_name)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    adapters = inject(model, names, settings, seed)
    try:
        yield adapters
    finally:
        merge_and_remove(model)
        for p, flag in flags:
            p.requires_grad_(flag)


def describe(settings: LoraSettings | None) -> dict | None:
    """What the record says about LoRA: None when it was off."""
    if settings is None or not settings.enabled:
        return None
    return {"r": settings.r, "alpha": settings.alpha, "dropout": settings.dropout,
            "targets": settings.targets or "every linear layer the method trains"}
