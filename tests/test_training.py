"""The loop: a tiny model really learns and really unlearns; accumulation, schedule, guard."""
import copy
import math

import pytest
import torch

from harness.data.batching import Example, make_batch
from harness.errors import HarnessError
from harness.training.losses import answer_ce
from harness.methods.base import UnlearningMethod
from harness.methods.ga import GradientAscent
from harness.methods.graddiff import GradDiff
from harness.training.finetune import Finetune
from harness.training.loop import TrainConfig, schedule_factor, train

FACTS = [Example(f"Q{i}:", f" fact number {i} is {w}") for i, w in enumerate(["zorb", "quix", "mavel", "tonk"])]
OTHER = [Example(f"R{i}:", f" other {w}") for i, w in enumerate(["alpha", "beta", "gamma", "delta"])]


def ce(model, tok, examples):
    with torch.no_grad():
        return answer_ce(model, make_batch(tok, examples)).item()


def test_tiny_model_learns_then_unlearns(tiny):
    model, tok = tiny
    before = ce(model, tok, FACTS)
    cfg = TrainConfig(lr=3e-3, epochs=30, global_batch=4, micro_batch=4, weight_decay=0.0)
    result = train(model, tok, Finetune(), FACTS, None, cfg, seed=0)
    learned = ce(model, tok, FACTS)
    assert result.status == "ok" and result.steps == 30
    assert learned < 0.5 * before, (before, learned)
    assert result.losses[-1] < result.losses[0]

    ga = train(model, tok, GradientAscent(), FACTS, None, TrainConfig(lr=3e-3, epochs=5, global_batch=4), seed=0)
    assert ga.status == "ok"
    assert ce(model, tok, FACTS) > learned + 1.0


def test_graddiff_keeps_retain_better_than_ga(tiny):
    model, tok = tiny
    train(model, tok, Finetune(), FACTS + OTHER, None, TrainConfig(lr=3e-3, epochs=30, global_batch=8, weight_decay=0), seed=0)
    cfg = TrainConfig(lr=1e-3, epochs=6, global_batch=4, weight_decay=0)
    ga_model, gd_model = copy.deepcopy(model), copy.deepcopy(model)
    train(ga_model, tok, GradientAscent(), FACTS, None, cfg, seed=0)
    train(gd_model, tok, GradDiff(), FACTS, OTHER, cfg, seed=0)
    assert ce(gd_model, tok, OTHER) < ce(ga_model, tok, OTHER)
    assert ce(gd_model, tok, FACTS) > ce(model, tok, FACTS)


def test_accumulation_gives_the_same_step_as_one_big_batch(tiny):
    model, tok = tiny
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    # Equal-length answers so the per-micro-batch token means equal the global mean.
    same_len = [Example(f"Q{i}:", f" word{i}") for i in range(4)]
    train(a, tok, Finetune(), same_len, None, TrainConfig(lr=1e-3, max_steps=1, global_batch=4, micro_batch=4), seed=0)
    train(b, tok, Finetune(), same_len, None, TrainConfig(lr=1e-3, max_steps=1, global_batch=4, micro_batch=1), seed=0)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa, pb, atol=1e-5), name


def test_same_seed_same_weights(tiny):
    model, tok = tiny
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    cfg = TrainConfig(lr=1e-3, epochs=2, global_batch=2)
    train(a, tok, GradDiff(), FACTS, OTHER, cfg, seed=3)
    train(b, tok, GradDiff(), FACTS, OTHER, cfg, seed=3)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))


class ExplodesAtStepTwo(UnlearningMethod):
    name = "explodes"
    description = "test method whose loss becomes NaN at step 2"

    def loss(self, model, batch, ctx):
        loss = answer_ce(model, batch.forget)
        return (loss * float("nan") if ctx.step == 2 else loss), {}


def test_divergence_guard_stops_and_reports(tiny):
    model, tok = tiny
    result = train(model, tok, ExplodesAtStepTwo(), FACTS, None, TrainConfig(lr=1e-3, epochs=10, global_batch=2), seed=0)
    assert result.status == "diverged"
    assert result.diverged_at_step == 2 and result.steps == 2
    assert result.last_finite_loss == result.losses[-1] and math.isfinite(result.last_finite_loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# A loss that grows far beyond its own start: tests/test_divergence_and_loop_settings.py.


def test_schedule_warmup_then_linear_decay_or_constant():
    assert schedule_factor(0, 10, 2, "linear") == 0.5
    assert schedule_factor(1, 10, 2, "linear") == 1.0
    assert schedule_factor(2, 10, 2, "linear") == 1.0
    assert schedule_factor(6, 10, 2, "linear") == 0.5
    assert schedule_factor(7, 10, 0, "constant") == 1.0


def test_retain_needing_method_without_retain_data_is_a_clear_error(tiny):
    model, tok = tiny
    with pytest.raises(HarnessError, match="method 'graddiff' needs retain data"):
        train(model, tok, GradDiff(), FACTS, None, TrainConfig(), seed=0)


def test_bad_schedule_name_is_rejected():
    with pytest.raises(HarnessError, match="train.schedule must be 'linear' or 'constant'"):
        TrainConfig(schedule="cosine")


class Spy:
    """Wraps AdamW.step: records the gradient norm and learning rate each optimiser step sees."""

    def __init__(self, monkeypatch):
        self.grad_norms, self.lrs = [], []
        original = torch.optim.AdamW.step

        def step(opt, *args, **kwargs):
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            self.grad_norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
            self.lrs.append(opt.param_groups[0]["lr"])
            return original(opt, *args, **kwargs)

        monkeypatch.setattr(torch.optim.AdamW, "step", step)


def test_gradients_are_clipped_to_max_grad_norm(tiny, monkeypatch):
    model, tok = tiny
    spy = Spy(monkeypatch)
    cfg = TrainConfig(lr=1e-3, epochs=2, global_batch=2, micro_batch=2, max_grad_norm=0.01)
    train(model, tok, GradientAscent(), FACTS, None, cfg, seed=0)
    assert len(spy.grad_norms) == 4 and max(spy.grad_norms) <= 0.01 * (1 + 1e-4)
    unclipped = Spy(monkeypatch)
    train(copy.deepcopy(tiny[0]), tok, GradientAscent(), FACTS, None,
          TrainConfig(lr=1e-3, epochs=2, global_batch=2, micro_batch=2, max_grad_norm=0.0), seed=0)
    assert min(unclipped.grad_norms) > 0.1   # so the bound above really cut them


def test_learning_rate_warms_up_then_decays_step_by_step(tiny, monkeypatch):
    """warmup_ratio 0.5 of 4 steps = 2 warm-up steps: lr/2, lr, then linear decay lr, lr/2."""
    model, tok = tiny
    spy = Spy(monkeypatch)
    cfg = TrainConfig(lr=1e-3, epochs=2, global_batch=2, micro_batch=2, warmup_ratio=0.5)
    train(model, tok, GradientAscent(), FACTS, None, cfg, seed=0)
    assert spy.lrs == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4])
    constant = Spy(monkeypatch)
    train(model, tok, GradientAscent(), FACTS, None, TrainConfig(lr=1e-3, epochs=2, global_batch=2, micro_batch=2,
                                                                 schedule="constant"), seed=0)
    assert constant.lrs == pytest.approx([1e-3] * 4)


class Recording(GradientAscent):
    """GA that records which forget items each micro-batch held."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def loss(self, model, batch, ctx):
        self.seen.append((ctx.epoch, sorted(batch.forget_index.tolist())))
        return super().loss(model, batch, ctx)


LENGTHS = [5, 40, 6, 41, 7, 42, 8, 43]


@pytest.mark.parametrize("group", [True, False])
def test_every_epoch_sees_every_item_once_in_a_seeded_shuffle(group):
    from harness.training.loop import epoch_order

    orders = [epoch_order(LENGTHS, 2, torch.Generator().manual_seed(s), group) for s in range(6)]
    assert all(sorted(o) == list(range(8)) for o in orders)
    assert len({tuple(o) for o in orders}) > 1                  # the seed changes the order
    assert epoch_order(LENGTHS, 2, torch.Generator().manual_seed(3), group) == orders[3]   # and fixes it
    if group:   # each batch of 2 holds neighbours in length order: {5,6} {7,8} {40,41} {42,43}
        pairs = {frozenset(o[i : i + 2]) for o in orders for i in (0, 2, 4, 6)}
        assert pairs == {frozenset({0, 2}), frozenset({4, 6}), frozenset({1, 3}), frozenset({5, 7})}
        assert any(LENGTHS[o[0]] > 10 for o in orders)        # batches come in random order, not sorted
    else:
        assert orders[0] != sorted(orders[0])


def test_the_loop_shows_each_item_once_per_epoch(tiny):
    model, tok = tiny
    method = Recording()
    train(model, tok, method, FACTS, None, TrainConfig(lr=1e-4, epochs=3, global_batch=2, micro_batch=1), seed=0)
    for epoch in range(3):
        items = sorted(i for e, idx in method.seen if e == epoch for i in idx)
        assert items == [0, 1, 2, 3]
