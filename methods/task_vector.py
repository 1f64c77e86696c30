"""Task Vector: negate the task vector of further fine-tuning on the forget data (Ilharco et al. 2023).

Fine-tune a copy of the target further on the forget set (plain cross-entropy, the run's
``train.*`` settings: this is the only training Task Vector does), take the task vector
τ = θ_reinforced - θ_target, and move the target the other way:

    θ_unlearned = θ_target - α · τ = θ_target - α · (θ_reinforced - θ_target).

α = 0 returns the target exactly; α = 1 reflects the reinforced model through the target.
Every parameter moves (embeddings and head included); buffers are left as they are (the
fine-tune does not change them).

Sources and what is confirmed. Negation of a task vector is Ilharco et al. 2023 ("Editing
Models with Task Arithmetic"), where α is chosen on held-out data. MUSE runs it as a baseline
(swj0419/muse_bench baselines/unlearn.py with ``--algo tv``): fine-tune the target on the forget
text for 10 epochs at lr 1e-5, then apply the negated vector with α = 5 (scripts/unlearn_news.sh);
the ``muse-news`` benchmark's defaults follow that. Our default α = 1 is plain negation.

Its loop (``loop_settings``): 10 epochs, MUSE's; the learning rate and the other settings stay the
benchmark's (MUSE's own 1e-5 is on the ``muse-news`` benchmark's defaults).

The steps, losses and train time in the record are those of the reinforcing fine-tune; the
record's ``training.phases.task_vector`` gives α and the size of τ. Per-epoch evaluation does
not apply (the unlearned model exists only at the end): the runner refuses it up front
(``has_epochs = False``) and ``unlearn`` refuses it when called directly.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from harness.errors import HarnessError
from harness.registry import register_method
from harness.methods.base import UnlearningMethod


@dataclass
class TaskVectorConfig:
    alpha: float = 1.0    # scale of the negated task vector (MUSE uses 5)


@torch.no_grad()
def negate_task_vector(target: torch.nn.Module, reinforced: torch.nn.Module, alpha: float) -> float:
    """θ_target ← θ_target - α·(θ_reinforced - θ_target), in place; returns ||τ||₂."""
    tuned = dict(reinforced.named_parameters())
    norm2 = 0.0
    for name, p in target.named_parameters():
        tau = tuned[name].detach().to(p.dtype) - p
        norm2 += float(tau.double().pow(2).sum())
        p.sub_(alpha * tau)
    return norm2 ** 0.5


@register_method()
class TaskVector(UnlearningMethod):
    name = "task_vector"
    label = "Task Vector"
    description = "Fine-tune a copy on the forget set, then theta - alpha * (theta_finetuned - theta)"
    paper = "Ilharco et al. 2023, Editing Models with Task Arithmetic (MUSE's Task Vector baseline)"
    Config = TaskVectorConfig
    has_epochs = False
    # MUSE's Task Vector fine-tune runs 10 epochs over the forget text; with the benchmark's shared
    # 2 epochs on `synthetic` (6 decayed steps) the vector was 1.98 long and mostly noise (docs/methods.md).
    loop_settings = {"epochs": 10}
    loop_settings_source = "swj0419/muse_bench baselines/scripts/unlearn_news.sh (--algo tv: 10 epochs)"

    def loss(self, model, batch, ctx):
        raise HarnessError("task_vector has no unlearning loss: its unlearn() fine-tunes a copy and edits weights.")

    def unlearn(self, model, loop):
        if loop.on_epoch_end is not None:
            raise HarnessError(
                "task_vector has no unlearning epochs (its model exists only after the weight edit), so "
                "eval.per_epoch does not apply: leave it out of this run or turn per-epoch evaluation off."
            )
        reinforced = copy.deepcopy(model)
        result = loop.fine_tune(reinforced)
        if result.status != "ok":
            raise HarnessError(
                f"task_vector: the reinforcing fine-tune diverged at step {result.diverged_at_step}; "
                "lower train.lr for this method."
            )
        started = time.perf_counter()
        norm = negate_task_vector(model, reinforced, self.config.alpha)
        result.seconds += time.perf_counter() - started
        result.phases["task_vector"] = {
            "alpha": self.config.alpha, "vector_norm": round(norm, 6),
            "note": "steps and losses are the reinforcing fine-tune's (CE on the forget set)",
        }
        return result
