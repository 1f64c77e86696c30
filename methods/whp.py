"""WHP: train towards generic predictions (Eldan and Russinovich 2023, "Who's Harry Potter?").

1. Reinforce: fine-tune a copy of the target further on the forget set (plain cross-entropy).
2. Generic predictions: at every answer token t of a forget batch, with v_b the logits of the
   frozen target (the baseline) and v_r those of the reinforced model,

       v_generic = v_b - α · ReLU(v_r - v_b),

   which lowers exactly the tokens that the reinforcement made more likely.
3. Train the target towards them:

       L = (1/N) · Σ_t CE(target_t, π_θ(· | x, y_<t)),

   with target_t the one-hot of argmax v_generic (``targets = "hard"``, the paper's "generic
   labels") or softmax(v_generic) (``targets = "soft"``). When the reinforced model equals the
   target, v_generic = v_b and WHP reduces to distilling the target into itself: the tests
   check this, and the loss against a hand computation.

Sources and what is confirmed. The formula for v_generic and the three steps are the paper's
(reference.md section 6). Not implemented: the paper's second source of generic predictions,
"anchored terms" (idiosyncratic names replaced by generic ones using a dictionary built with
GPT-4), which needs a dictionary no benchmark here provides. Reading the generic labels as the
argmax of v_generic is our reconstruction; ``soft`` is offered beside it. MUSE's WHP baseline
differs: its code (swj0419/muse_bench baselines/whos_harry_potter.py) does not train at all but
evaluates the combined logits v_b - α·ReLU(v_r - v_b) as the unlearned model, two models at
inference time, with α = 1. This harness evaluates one saved model per row, so it runs the
paper's distilled form; the muse_news paper table says so beside the WHP row.

Reinforcement settings: ``reinforce_epochs`` and ``reinforce_lr`` (0 = the run's ``train.*``
values); the other settings (batch, schedule) are the run's. ``reinforce_epochs`` = 10 is MUSE's
reinforced model (its Task Vector fine-tune, swj0419/muse_bench baselines/scripts/unlearn_news.sh,
which its WHP baseline reuses): with the run's 2 epochs on ``synthetic`` the reinforced model barely
differed from the target and the generic labels equalled the true tokens for 91-98% of tokens
(docs/methods.md gives the figures before and after). Its steps, losses and time are in
the record under ``training.phases.reinforce`` and its time is included in the train time.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.errors import HarnessError
from harness.training.losses import shifted
from harness.registry import register_method
from harness.methods.base import NEEDS_REFERENCE_MODEL, UnlearningMethod

TARGETS = ("hard", "soft")


@dataclass
class WHPConfig:
    alpha: float = 1.0          # how far the reinforced boost is subtracted from the baseline logits
    targets: str = "hard"       # "hard": argmax of v_generic as labels; "soft": softmax(v_generic)
    reinforce_epochs: int = 10  # epochs of the reinforcing fine-tune (0 = train.epochs); 10 = MUSE's reinforced model
    reinforce_lr: float = 0.0   # its learning rate (0 = train.lr)

    def __post_init__(self):
        if self.targets not in TARGETS:
            raise HarnessError(f"whp.targets must be 'hard' or 'soft', got '{self.targets}'.")
        if self.alpha < 0 or self.reinforce_epochs < 0 or self.reinforce_lr < 0:
            raise HarnessError("whp.alpha, whp.reinforce_epochs and whp.reinforce_lr must be >= 0.")


def generic_logits(baseline: torch.Tensor, reinforced: torch.Tensor, alpha: float) -> torch.Tensor:
    """v_b - α · ReLU(v_r - v_b)."""
    return baseline - alpha * F.relu(reinforced - baseline)


@register_method()
class WHP(UnlearningMethod):
    name = "whp"
    label = "WHP"
    description = "Who's Harry Potter: train on generic predictions v_b - alpha*ReLU(v_reinforced - v_b)"
    paper = "Eldan and Russinovich 2023, Who's Harry Potter? Approximate Unlearning in LLMs"
    Config = WHPConfig
    needs = frozenset({NEEDS_REFERENCE_MODEL})

    def unlearn(self, model, loop):
        c = self.config
        reinforce_cfg = dataclasses.replace(
            loop.cfg, epochs=c.reinforce_epochs or loop.cfg.epochs, lr=c.reinforce_lr or loop.cfg.lr,
            max_steps=0 if c.reinforce_epochs else loop.cfg.max_steps,
        )
        reinforced = copy.deepcopy(model)
        boost = loop.fine_tune(reinforced, reinforce_cfg)
        if boost.status != "ok":
            raise HarnessError(
                f"whp: the reinforcing fine-tune diverged at step {boost.diverged_at_step}; lower whp.reinforce_lr."
            )
        reinforced.eval().requires_grad_(False)
        result = loop.run(self, model, extras={"whp_reinforced": reinforced})
        result.seconds += boost.seconds
        result.phases["reinforce"] = {k: v for k, v in boost.summary().items() if k != "logs"}
        return result

    def loss(self, model, batch, ctx):
        reinforced = ctx.extras.get("whp_reinforced")
        if reinforced is None:
            raise HarnessError("whp needs its reinforced model in ctx.extras['whp_reinforced'] (set by WHP.unlearn).")
        inputs = batch.forget.model_inputs()
        logits, labels, mask = shifted(batch.forget, model(**inputs).logits)
        with torch.no_grad():
            v_b, _, _ = shifted(batch.forget, ctx.reference_model(**inputs).logits)
            v_r, _, _ = shifted(batch.forget, reinforced(**inputs).logits)
            v_g = generic_logits(v_b[mask].float(), v_r[mask].float(), self.config.alpha)
            target = v_g.argmax(-1) if self.config.targets == "hard" else v_g.softmax(-1)
        loss = F.cross_entropy(logits[mask].float(), target)
        logs = {"whp": loss.item()}
        if self.config.targets == "hard":   # how often the generic label is still the true token
            logs["generic_equals_true"] = (target == labels[mask]).float().mean().item()
        return loss, logs
