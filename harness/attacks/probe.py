"""The relearning curve (``attack.relearn_curve``): score the attacked copy after every optimiser step.

The shared loop (``harness/training/loop.py``) has a per-epoch callback but no per-step one, and its
code is part of every method cell's identity, so the curve is taken from outside it: ``StepProbe`` is
the plain fine-tuning objective, and the first time its loss is asked for in step ``k`` (k >= 1) the
model holds exactly the weights after ``k`` optimiser steps; it scores them there, before computing
the loss. The last step's weights are scored by the attack itself after training.

Scoring must not change the run: it goes through the loop's own per-epoch helper (eval mode, the
global random states put back, train mode restored) without gradients, so a run
with the curve trains the same weights as one without (tested: same losses, same final scores).
Under a LoRA attacker the probe scores a merged copy (adapters folded in).
"""
from __future__ import annotations

from typing import Callable

import torch

from harness.training.finetune import Finetune
from harness.training.lora import lora_layers, merged_copy
from harness.training.loop import _end_of_epoch


class StepProbe(Finetune):
    """Plain fine-tuning that calls ``score(step, model)`` with the weights after each completed step."""

    def __init__(self, score: Callable[[int, torch.nn.Module], None]):
        super().__init__()
        self.score = score
        self.last_step = 0
        self.seconds = 0.0

    def loss(self, model, batch, ctx):
        if ctx.step > self.last_step:
            self.last_step = ctx.step
            self._score_quietly(ctx.step, model)
        return super().loss(model, batch, ctx)

    def _score_quietly(self, step: int, model: torch.nn.Module) -> None:
        """Score through the loop's own between-epochs helper: eval mode, random states put back."""
        def score(_, current):
            with torch.no_grad():
                self.score(step, merged_copy(current) if lora_layers(current) else current)
        self.seconds += _end_of_epoch(score, step, model)
