"""AltPO and PDU: losses against hand computations, the dual update, refusals of bad input, and
unlearning on a tiny fine-tuned model."""
import copy
import math
import random

import pytest
import torch

from harness.data.batching import Example, make_batch
from harness.errors import HarnessError
from harness.methods.altpo import AltPO, AltPOConfig
from harness.methods.base import NEEDS_RETAIN, MethodBatch, MethodContext
from harness.methods.pdu import PDU, PDUConfig
from harness.registry import METHODS
from harness.runtime.models import build_tiny_random
from harness.training.finetune import Finetune
from harness.training.losses import answer_ce, sequence_logprob
from harness.training.loop import TrainConfig, train

FORGET = [Example("Q: who? A:", " Zorb the tall", perturbed=(" Quix the short", " Mavel the odd")),
          Example("Q: where? A:", " in Velmora", perturbed=(" in Tonkland", " at sea")),
          Example("Q: x? A:", " 42", perturbed=(" 17", " 99"))]
RETAIN = [Example("Q: what? A:", " a clock"), Example("Q: when? A:", " in 1962")]
FACTS = [Example(f"Q{i}:", f" fact number {i} is {w}", perturbed=(f" fact number {i} is {o}",))
         for i, (w, o) in enumerate([("zorb", "plim"), ("quix", "darn"), ("mavel", "sost"), ("tonk", "wero")])]
OTHER = [Example(f"R{i}:", f" other {w}") for i, w in enumerate(["alpha", "beta", "gamma", "delta"])]


def logprobs(model, tok, examples):
    with torch.no_grad():
        return [sequence_logprob(model, make_batch(tok, [ex])).item() for ex in examples]


def log_sigmoid(z):
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def hand_ctx(tok, **kw):
    return MethodContext(encode=lambda items: make_batch(tok, items), **kw)


@pytest.fixture(scope="module")
def finetuned():
    model, tok = build_tiny_random()
    model = model.float()
    train(model, tok, Finetune(), FACTS, None,
          TrainConfig(lr=3e-3, epochs=30, global_batch=4, micro_batch=4, weight_decay=0.0), seed=0)
    return model.eval(), tok


def test_registered_with_labels_and_needs():
    assert METHODS.get("altpo").label == "AltPO" and METHODS.get("pdu").label == "PDU"
    assert AltPO().needs_of() == {NEEDS_RETAIN} and AltPO(AltPOConfig(alpha=0)).needs_of() == frozenset()
    assert PDU().needs_of() == {NEEDS_RETAIN}
    for bad in (lambda: AltPOConfig(beta=0), lambda: PDUConfig(alpha=-1), lambda: PDUConfig(retain_loss_eps=-0.1),
                lambda: PDUConfig(dual_warmup_epochs=-1)):
        with pytest.raises(HarnessError):
            bad()


# ---------------------------------------------------------------- AltPO


def test_altpo_loss_matches_hand_computation(tiny):
    model, tok = tiny
    reference = copy.deepcopy(model)
    ctx = hand_ctx(tok, epochs=2, forget_examples=FORGET, rng=random.Random(3))
    with torch.no_grad():
        AltPO().before_training(model, ctx)
        model.lm_head.weight.add_(0.05 * torch.randn_like(model.lm_head.weight))
    beta, alpha = 0.5, 2.0
    for epoch in (0, 1):
        ctx.epoch = epoch
        alts = ctx.extras["altpo_alternates"][epoch]
        assert all(a in ex.perturbed for a, ex in zip(alts, FORGET))
        winners = [Example(ex.prompt, a) for ex, a in zip(FORGET, alts)]
        deltas = [(w - rw) - (l - rl) for w, rw, l, rl in zip(
            logprobs(model, tok, winners), logprobs(reference, tok, winners),
            logprobs(model, tok, FORGET), logprobs(reference, tok, FORGET))]
        batch = MethodBatch(make_batch(tok, FORGET), torch.arange(3), make_batch(tok, RETAIN))
        loss, logs = AltPO(AltPOConfig(beta=beta, alpha=alpha)).loss(model, batch, ctx)
        with torch.no_grad():
            retain = answer_ce(model, batch.retain).item()
        expected = -(2 / beta) * sum(log_sigmoid(beta * d) for d in deltas) / 3 + alpha * retain
        assert abs(loss.item() - expected) < 1e-4, epoch


def test_altpo_at_the_reference_is_two_over_beta_log_two(tiny):
    model, tok = tiny
    ctx = hand_ctx(tok, epochs=1, forget_examples=FORGET)
    with torch.no_grad():
        AltPO().before_training(model, ctx)
    loss, _ = AltPO(AltPOConfig(beta=0.1, alpha=0)).loss(model, MethodBatch(make_batch(tok, FORGET), torch.arange(3)), ctx)
    assert abs(loss.item() - 20 * math.log(2)) < 1e-3


def test_altpo_items_without_alternates_take_the_npo_term_and_none_at_all_is_refused(tiny):
    model, tok = tiny
    reference = copy.deepcopy(model)
    plain = Example("Q: y? A:", " a text with no alternates")
    forget = [FORGET[0], plain]
    ctx = hand_ctx(tok, epochs=1, forget_examples=forget, rng=random.Random(0))
    with torch.no_grad():
        AltPO().before_training(model, ctx)
        model.lm_head.weight.add_(0.05 * torch.randn_like(model.lm_head.weight))
    assert ctx.extras["altpo_alternates"][0][1] is None
    beta = 0.2
    alt = Example(FORGET[0].prompt, ctx.extras["altpo_alternates"][0][0])
    d0 = (logprobs(model, tok, [alt])[0] - logprobs(reference, tok, [alt])[0]) - (
        logprobs(model, tok, [FORGET[0]])[0] - logprobs(reference, tok, [FORGET[0]])[0])
    npo_ratio = logprobs(model, tok, [plain])[0] - logprobs(reference, tok, [plain])[0]
    expected = -(2 / beta) * (log_sigmoid(beta * d0) + log_sigmoid(-beta * npo_ratio)) / 2
    loss, _ = AltPO(AltPOConfig(beta=beta, alpha=0)).loss(model, MethodBatch(make_batch(tok, forget), torch.arange(2)), ctx)
    assert abs(loss.item() - expected) < 1e-4
    with pytest.raises(HarnessError, match="no forget item has any"):
        AltPO().before_training(model, hand_ctx(tok, epochs=1, forget_examples=[plain]))


def test_altpo_prefers_the_alternate_after_training(finetuned):
    base, tok = finetuned
    model = copy.deepcopy(base)
    alts = [Example(ex.prompt, ex.perturbed[0]) for ex in FACTS]

    def margin(m):
        return sum(a - f for a, f in zip(logprobs(m, tok, alts), logprobs(m, tok, FACTS))) / len(FACTS)

    forget_before = logprobs(base, tok, FACTS)
    result = train(model, tok, AltPO(AltPOConfig(alpha=1.0)), FACTS, OTHER,
                   TrainConfig(lr=1e-3, epochs=4, global_batch=4, weight_decay=0.0), seed=0)
    assert result.status == "ok"
    assert margin(model) > margin(base) + 5.0, (margin(base), margin(model))
    assert sum(logprobs(model, tok, FACTS)) < sum(forget_before) - 3.0


# ---------------------------------------------------------------- PDU


def hand_flattening(model, tok, examples):
    """(max - mean logit)² at each position predicting an answer token, averaged, one example at a time."""
    values = []
    with torch.no_grad():
        for ex in examples:
            batch = make_batch(tok, [ex])
            logits = model(**batch.model_inputs()).logits[0]
            labels = batch.labels[0]
            for t in range(1, labels.shape[0]):
                if labels[t] >= 0:
                    z = logits[t - 1].double()
                    values.append(float((z.max() - z.mean()) ** 2))
    return sum(values) / len(values)


def test_pdu_loss_matches_hand_computation_and_the_dual_moves(tiny):
    model, tok = tiny
    cfg = PDUConfig(gamma=0.7, alpha=3.0, retain_loss_eps=0.5, dual_step_size=2.0, dual_warmup_epochs=1)
    method = PDU(cfg)
    ctx = hand_ctx(tok, epochs=3, forget_examples=FORGET, retain_examples=RETAIN)
    method.before_training(model, ctx)
    batch = MethodBatch(make_batch(tok, FORGET), torch.arange(3), make_batch(tok, RETAIN))
    flat = hand_flattening(model, tok, FORGET)
    with torch.no_grad():
        retain = answer_ce(model, make_batch(tok, RETAIN)).item()
    ctx.epoch = 0                       # warm-up: λ stays at α
    loss, logs = method.loss(model, batch, ctx)
    assert abs(loss.item() - (0.7 * flat + 3.0 * (retain - 0.5))) < 1e-3 * max(1.0, loss.item())
    assert ctx.extras["pdu_lambda"] == 3.0 and logs["dual_lambda"] == 3.0
    ctx.epoch = 1                       # after warm-up: λ <- max(0, λ + η (CE - ε)), used from the next call
    method.loss(model, batch, ctx)
    lam = max(0.0, 3.0 + 2.0 * (retain - 0.5))
    assert abs(ctx.extras["pdu_lambda"] - lam) < 1e-5
    loss, _ = method.loss(model, batch, ctx)
    assert abs(loss.item() - (0.7 * flat + lam * (retain - 0.5))) < 1e-3 * max(1.0, loss.item())
    # a satisfied constraint (ε far above the loss) drives λ to its floor, 0
    ctx.extras["pdu_eps"] = retain + 100.0
    method.loss(model, batch, ctx)
    assert ctx.extras["pdu_lambda"] == 0.0


def test_pdu_default_eps_is_the_pre_unlearning_retain_loss(tiny):
    model, tok = tiny
    ctx = hand_ctx(tok, epochs=1, forget_examples=FORGET, retain_examples=RETAIN)
    PDU().before_training(model, ctx)
    # token-weighted mean over the retain set = CE of the whole set in one batch
    with torch.no_grad():
        assert abs(ctx.extras["pdu_eps"] - answer_ce(model, make_batch(tok, RETAIN)).item()) < 1e-5
    assert ctx.extras["pdu_lambda"] == 1.0
    ctx.extras["pdu_lambda"] = 5.0
    batch = MethodBatch(make_batch(tok, FORGET), torch.arange(3), make_batch(tok, RETAIN))
    PDU(PDUConfig(primal_dual=False, dual_warmup_epochs=0)).loss(model, batch, ctx)
    assert ctx.extras["pdu_lambda"] == 5.0


def test_pdu_flattens_forget_logits_and_raises_forget_ce(finetuned):
    base, tok = finetuned
    model = copy.deepcopy(base)
    flat_before = hand_flattening(base, tok, FACTS)
    with torch.no_grad():
        ce_before = answer_ce(base, make_batch(tok, FACTS)).item()
    result = train(model, tok, PDU(PDUConfig(dual_warmup_epochs=1)), FACTS, OTHER,
                   TrainConfig(lr=1e-3, epochs=4, global_batch=4, weight_decay=0.0), seed=0)
    assert result.status == "ok"
    assert hand_flattening(model, tok, FACTS) < 0.5 * flat_before
    with torch.no_grad():
        assert answer_ce(model, make_batch(tok, FACTS)).item() > ce_before + 0.5
