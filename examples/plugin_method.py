"""A third-party unlearning method in one file: `harness run --plugin examples/plugin_method.py --methods ga_clipped`."""
from dataclasses import dataclass

import torch

from harness.training.losses import answer_ce
from harness.methods.base import UnlearningMethod
from harness.registry import register_method


@dataclass
class ClippedGAConfig:
    ceiling: float = 15.0  # stop pushing an item once its forget CE exceeds this


@register_method()
class ClippedGA(UnlearningMethod):
    name = "ga_clipped"
    description = "Gradient ascent that stops pushing once the forget CE passes a ceiling"
    Config = ClippedGAConfig

    def loss(self, model, batch, ctx):
        forget_ce = answer_ce(model, batch.forget)
        return -torch.clamp(forget_ce, max=self.config.ceiling), {"forget_ce": forget_ce.item()}
