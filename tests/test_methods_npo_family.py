"""NPO (+RT, +KL), SimNPO and IdkDPO: losses against hand computations, gradient identities,
reference log-probs computed once, and unlearning on a tiny fine-tuned model."""
import copy
import math
import random

import pytest
import torch
import torch.nn.functional as F

import harness.training.loop as training
from harness.data.batching import Example, make_batch
from harness.errors import HarnessError
from harness.training.losses import answer_ce, sequence_logprob
from harness.methods import idkdpo as idkdpo_module
from harness.methods import npo as npo_module
from harness.methods.base import (
    NEEDS_REFERENCE_LOGPROBS,
    NEEDS_REFERENCE_MODEL,
    NEEDS_RETAIN,
    MethodBatch,
    MethodContext,
)
from harness.methods.idkdpo import REFERENCE_BATCH, IdkDPO, IdkDPOConfig
from harness.methods.npo import NPO, NPOConfig
from harness.methods.refusals import REFUSALS, sample_refusals
from harness.methods.simnpo import SimNPO, SimNPOConfig
from harness.runtime.models import build_tiny_random
from harness.training.finetune import Finetune
from test_methods import hand_kl
from harness.registry import METHODS
from harness.training.loop import TrainConfig, train

FORGET = [Example("Q: who? A:", " Zorb the tall"), Example("Q: where? A:", " in Velmora"), Example("Q: x? A:", " 42")]
RETAIN = [Example("Q: what? A:", " a clock"), Example("Q: when? A:", " in 1962")]
FACTS = [Example(f"Q{i}:", f" fact number {i} is {w}") for i, w in enumerate(["zorb", "quix", "mavel", "tonk"])]
OTHER = [Example(f"R{i}:", f" other {w}") for i, w in enumerate(["alpha", "beta", "gamma", "delta"])]


def one_by_one_logprob(model, tok, examples):
    """log π(y|x) of each example, each in its own unpadded batch."""
    with torch.no_grad():
        return [sequence_logprob(model, make_batch(tok, [ex])).item() for ex in examples]


def answer_tokens(tok, ex):
    return len(tok(ex.answer, add_special_tokens=False)["input_ids"]) + 1  # + EOS


def log_sigmoid(z):
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def flat_grad(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()


def hand_ctx(tok, **kw):
    return MethodContext(encode=lambda items: make_batch(tok, items), **kw)


@pytest.fixture(scope="module")
def finetuned():
    """A tiny model that has learned FACTS (CE well below the random model's)."""
    model, tok = build_tiny_random()
    model = model.float()
    cfg = TrainConfig(lr=3e-3, epochs=30, global_batch=4, micro_batch=4, weight_decay=0.0)
    train(model, tok, Finetune(), FACTS, None, cfg, seed=0)
    return model.eval(), tok


def ce(model, tok, examples):
    with torch.no_grad():
        return answer_ce(model, make_batch(tok, examples)).item()


# ---------------------------------------------------------------- registration, config, needs


def test_methods_register_with_labels_and_papers():
    for name, label in [("npo", "NPO"), ("simnpo", "SimNPO"), ("idkdpo", "IdkDPO")]:
        cls = METHODS.get(name)
        assert cls.label == label and cls.paper and cls.description


def test_npo_needs_follow_the_variant():
    assert NPO().needs_of() == {NEEDS_REFERENCE_LOGPROBS}          # no live reference model
    assert NPO(NPOConfig(retain_loss="nll")).needs_of() == {NEEDS_REFERENCE_LOGPROBS, NEEDS_RETAIN}
    assert NPO(NPOConfig(retain_loss="kl")).needs_of() == {
        NEEDS_REFERENCE_LOGPROBS, NEEDS_RETAIN, NEEDS_REFERENCE_MODEL,
    }
    with pytest.raises(HarnessError, match="'none', 'nll', 'kl'"):
        NPOConfig(retain_loss="ce")
    assert NPOConfig().beta == 0.1 and NPOConfig().alpha == 1.0


def test_simnpo_and_idkdpo_need_no_reference():
    assert SimNPO().needs_of() == {NEEDS_RETAIN}
    assert SimNPO(SimNPOConfig(alpha=0)).needs_of() == frozenset()
    assert IdkDPO().needs_of() == {NEEDS_RETAIN}
    assert IdkDPO(IdkDPOConfig(alpha=0)).needs_of() == frozenset()
    c = SimNPOConfig()
    assert (c.beta, c.forget_weight, c.delta, c.alpha) == (4.5, 0.125, 0.0, 1.0)
    assert (IdkDPOConfig().beta, IdkDPOConfig().alpha) == (0.1, 1.0)


# ---------------------------------------------------------------- NPO


def test_npo_loss_matches_hand_computation(tiny):
    model, tok = tiny
    logp = one_by_one_logprob(model, tok, FORGET)
    ref = [lp + d for lp, d in zip(logp, (2.0, -3.0, 0.5))]
    beta = 0.3
    batch = MethodBatch(make_batch(tok, FORGET), torch.arange(3))
    loss, logs = NPO(NPOConfig(beta=beta)).loss(model, batch, MethodContext(reference_logprobs=torch.tensor(ref)))
    expected = -(2 / beta) * sum(log_sigmoid(-beta * (a - r)) for a, r in zip(logp, ref)) / 3
    assert abs(loss.item() - expected) < 1e-4
    assert abs(logs["log_ratio"] - sum(a - r for a, r in zip(logp, ref)) / 3) < 1e-4


def test_npo_uses_the_reference_of_each_batch_item_by_position(tiny):
    model, tok = tiny
    logp = one_by_one_logprob(model, tok, FORGET)
    ref = torch.tensor([-1.0, -50.0, -7.0])
    batch = MethodBatch(make_batch(tok, [FORGET[2], FORGET[0]]), torch.tensor([2, 0]))
    loss, _ = NPO().loss(model, batch, MethodContext(reference_logprobs=ref))
    expected = -(2 / 0.1) * (log_sigmoid(-0.1 * (logp[2] + 7.0)) + log_sigmoid(-0.1 * (logp[0] + 1.0))) / 2
    assert abs(loss.item() - expected) < 1e-4


def test_npo_rt_and_kl_add_the_weighted_retain_term(tiny):
    model, tok = tiny
    reference = copy.deepcopy(model)
    with torch.no_grad():
        model.lm_head.weight.add_(0.05 * torch.randn_like(model.lm_head.weight))
    ref = torch.tensor(one_by_one_logprob(reference, tok, FORGET))
    batch = MethodBatch(make_batch(tok, FORGET), torch.arange(3), make_batch(tok, RETAIN))
    ctx = MethodContext(reference_model=reference, reference_logprobs=ref)
    plain, _ = NPO().loss(model, batch, ctx)
    rt, logs = NPO(NPOConfig(retain_loss="nll", alpha=2.0)).loss(model, batch, ctx)
    assert abs(rt.item() - plain.item() - 2.0 * answer_ce(model, batch.retain).item()) < 1e-4
    kl, logs = NPO(NPOConfig(retain_loss="kl", alpha=0.5)).loss(model, batch, ctx)
    # the KL term from a hand computation (tests/test_methods.py), not from the method's own log
    expected_kl = hand_kl(model, reference, tok, RETAIN)
    assert expected_kl > 1e-5 and logs["retain_kl"] == pytest.approx(expected_kl, rel=1e-4)
    assert abs(kl.item() - plain.item() - 0.5 * expected_kl) < 1e-4


def test_npo_weight_is_two_pi_beta_over_pi_beta_plus_ref_beta(tiny, monkeypatch):
    """d L / d log π_θ(y_i|x_i) = (1/N) · 2 π^β / (π^β + π_ref^β), checked by autograd on a leaf."""
    model, tok = tiny
    logp = torch.tensor([-3.0, -10.0, -0.5, -20.0], requires_grad=True)
    ref = torch.tensor([-5.0, -5.0, -5.0, -5.0])
    monkeypatch.setattr(npo_module, "sequence_logprob", lambda m, b: logp)
    beta = 0.5
    loss, _ = NPO(NPOConfig(beta=beta)).loss(model, MethodBatch(None, torch.arange(4)), MethodContext(reference_logprobs=ref))
    loss.backward()
    pi_b, ref_b = torch.exp(beta * logp.detach().double()), torch.exp(beta * ref.double())
    closed = 2 * pi_b / (pi_b + ref_b)
    assert torch.allclose(4 * logp.grad.double(), closed, atol=1e-6)
    # By hand for the first item: β·(logπ - logπ_ref) = 0.5·2 = 1, weight 2σ(1) = 1.4621172,
    # loss term -(2/0.5)·log σ(-1) = 4·1.3132617 = 5.2530468.
    assert abs(4 * logp.grad[0].item() - 1.4621172) < 1e-6
    monkeypatch.setattr(npo_module, "sequence_logprob", lambda m, b: logp[:1])
    first, _ = NPO(NPOConfig(beta=beta)).loss(model, MethodBatch(None, torch.tensor([0])), MethodContext(reference_logprobs=ref))
    assert abs(first.item() - 5.2530468) < 1e-5


def test_npo_gradient_tends_to_ga_gradient_as_beta_goes_to_zero(tiny):
    model, tok = tiny
    batch = MethodBatch(make_batch(tok, FORGET), torch.arange(3))
    # GA on the summed log-likelihood: minimise mean_i log π_θ(y_i|x_i).
    model.zero_grad()
    sequence_logprob(model, batch.forget).mean().backward()
    ga = flat_grad(model)

    def npo_grad(beta, ref):
        model.zero_grad()
        loss, _ = NPO(NPOConfig(beta=beta)).loss(model, batch, MethodContext(reference_logprobs=ref))
        loss.backward()
        return flat_grad(model)

    current = torch.tensor(one_by_one_logprob(model, tok, FORGET))
    far_ref = current + torch.tensor([6.0, -4.0, 2.0])   # a reference several nats away
    small = npo_grad(1e-4, far_ref)
    assert F.cosine_similarity(small, ga, dim=0).item() > 0.999
    assert ((small - ga).norm() / ga.norm()).item() < 1e-3
    # Reference equal to the current model: weight 2σ(0) = 1 exactly.
    same = npo_grad(1e-4, current)
    assert torch.allclose(same, ga, rtol=1e-4, atol=1e-7)
    # At β = 1 the far reference reweights the examples: clearly not GA's gradient.
    assert ((npo_grad(1.0, far_ref) - ga).norm() / ga.norm()).item() > 0.1


def test_npo_reference_logprobs_are_computed_once_per_run(tiny, monkeypatch):
    model, tok = tiny
    items = FORGET + RETAIN                           # 5 forget items
    reference_calls, step_calls = [], []
    original = training._reference_logprobs
    monkeypatch.setattr(training, "_reference_logprobs", lambda *a: reference_calls.append(1) or original(*a))
    policy = npo_module.sequence_logprob
    monkeypatch.setattr(npo_module, "sequence_logprob", lambda m, b: step_calls.append(torch.is_grad_enabled()) or policy(m, b))
    cfg = TrainConfig(lr=1e-3, epochs=3, global_batch=4, micro_batch=2)
    result = train(model, tok, NPO(), items, None, cfg, seed=0)
    assert result.status == "ok" and result.steps == 3 * 2
    assert len(reference_calls) == 1
    assert result.reference_forward_passes == math.ceil(len(items) / cfg.micro_batch) == 3
    # During steps NPO makes one policy pass per micro-batch (2 + 1 per epoch), all with grad.
    assert step_calls == [True] * (3 * 3)


# ---------------------------------------------------------------- SimNPO


def test_simnpo_loss_matches_hand_computation(tiny):
    model, tok = tiny
    logp = one_by_one_logprob(model, tok, FORGET)
    nll = [-lp / answer_tokens(tok, ex) for lp, ex in zip(logp, FORGET)]
    beta, delta, w, alpha = 2.0, 0.7, 0.25, 1.5
    batch = MethodBatch(make_batch(tok, FORGET), torch.arange(3), make_batch(tok, RETAIN))
    cfg = SimNPOConfig(beta=beta, delta=delta, forget_weight=w, alpha=alpha)
    loss, logs = SimNPO(cfg).loss(model, batch, MethodContext())   # no reference anywhere
    forget_term = -(2 / beta) * sum(log_sigmoid(beta * (n - delta)) for n in nll) / 3
    expected = w * forget_term + alpha * answer_ce(model, batch.retain).item()
    assert abs(loss.item() - expected) < 1e-4
    assert abs(logs["forget_nll_per_token"] - sum(nll) / 3) < 1e-4
    # Without retain data the loss is the forget term alone.
    only, _ = SimNPO(SimNPOConfig(beta=beta, delta=delta, forget_weight=w, alpha=0)).loss(
        model, MethodBatch(batch.forget, batch.forget_index), MethodContext()
    )
    assert abs(only.item() - w * forget_term) < 1e-4


# ---------------------------------------------------------------- refusals and IdkDPO


def test_refusal_pool_is_varied_and_well_formed():
    assert 35 <= len(REFUSALS) <= 45 and len(set(REFUSALS)) == len(REFUSALS)
    assert all(r[0].isupper() and r == r.strip() for r in REFUSALS)
    a, b = sample_refusals(20, random.Random(5)), sample_refusals(20, random.Random(5))
    assert a == b and set(a) <= set(REFUSALS) and len(set(a)) > 1
    assert sample_refusals(3, random.Random(0), pool=("Nope.",)) == ["Nope."] * 3
    with pytest.raises(HarnessError):
        sample_refusals(1, random.Random(0), pool=())


def test_idkdpo_loss_matches_hand_computation(tiny):
    model, tok = tiny
    reference = copy.deepcopy(model)
    ctx = hand_ctx(tok, epochs=2, forget_examples=FORGET, rng=random.Random(1))
    with torch.no_grad():
        IdkDPO().before_training(model, ctx)
    with torch.no_grad():
        model.lm_head.weight.add_(0.05 * torch.randn_like(model.lm_head.weight))
    beta, alpha = 0.5, 2.0
    for epoch in (0, 1):
        ctx.epoch = epoch
        refusals = ctx.extras["idk_refusals"][epoch]
        winners = [Example(ex.prompt, " " + r) for ex, r in zip(FORGET, refusals)]
        delta = [
            (w - rw) - (l - rl)
            for w, rw, l, rl in zip(
                one_by_one_logprob(model, tok, winners), one_by_one_logprob(reference, tok, winners),
                one_by_one_logprob(model, tok, FORGET), one_by_one_logprob(reference, tok, FORGET),
            )
        ]
        batch = MethodBatch(make_batch(tok, FORGET), torch.arange(3), make_batch(tok, RETAIN))
        loss, logs = IdkDPO(IdkDPOConfig(beta=beta, alpha=alpha)).loss(model, batch, ctx)
        expected = -sum(log_sigmoid(beta * d) for d in delta) / 3 + alpha * answer_ce(model, batch.retain).item()
        assert abs(loss.item() - expected) < 1e-4, epoch
        assert logs["chosen_log_ratio"] != 0 and logs["rejected_log_ratio"] != 0


def test_idkdpo_at_the_reference_is_log_two(tiny):
    model, tok = tiny
    ctx = hand_ctx(tok, epochs=1, forget_examples=FORGET)
    with torch.no_grad():
        IdkDPO().before_training(model, ctx)
    loss, _ = IdkDPO(IdkDPOConfig(alpha=0)).loss(model, MethodBatch(make_batch(tok, FORGET), torch.arange(3)), ctx)
    assert abs(loss.item() - math.log(2)) < 1e-4   # standard DPO scale: no 2/β factor


def test_idkdpo_refusals_resample_per_epoch_deterministically(tiny):
    model, tok = tiny
    forget = FACTS + FORGET

    def draws(seed, extras=None):
        ctx = hand_ctx(tok, epochs=3, forget_examples=forget, rng=random.Random(seed), extras=dict(extras or {}))
        with torch.no_grad():
            IdkDPO().before_training(model, ctx)
        return ctx.extras["idk_refusals"]

    first = draws(7)
    assert len(first) == 3 and all(len(row) == len(forget) for row in first)
    assert any(len({first[e][i] for e in range(3)}) > 1 for i in range(len(forget)))
    assert draws(7) == first and draws(8) != first
    own = draws(7, {"refusals": ["No comment.", "Ask someone else."]})
    assert {r for row in own for r in row} <= {"No comment.", "Ask someone else."}
    with pytest.raises(HarnessError, match="refusal pool is empty"):
        draws(7, {"refusals": []})


def test_idkdpo_reference_passes_happen_once_before_training(tiny, monkeypatch):
    model, tok = tiny
    seen = {}

    class Recording(IdkDPO):
        def before_training(self, model, ctx):
            super().before_training(model, ctx)
            seen["ctx"] = ctx

    calls = []
    real = idkdpo_module.sequence_logprob
    monkeypatch.setattr(idkdpo_module, "sequence_logprob", lambda m, b: calls.append(torch.is_grad_enabled()) or real(m, b))
    forget = FACTS + FORGET                               # 7 items
    cfg = TrainConfig(lr=1e-3, epochs=2, global_batch=4, micro_batch=4)
    result = train(model, tok, Recording(IdkDPOConfig(alpha=0)), forget, None, cfg, seed=0)
    assert result.status == "ok" and result.steps == 4
    extras = seen["ctx"].extras
    pairs = {(i, r) for row in extras["idk_refusals"] for i, r in enumerate(row)}
    expected = math.ceil(len(forget) / REFERENCE_BATCH) + math.ceil(len(pairs) / REFERENCE_BATCH)
    assert extras["reference_forward_passes"] == expected
    no_grad_calls = [c for c in calls if not c]
    assert len(no_grad_calls) == expected and calls[:expected] == [False] * expected
    # Steps: two policy passes (refusal, forget answer) per micro-batch, all with grad.
    assert calls[expected:] == [True] * (2 * 4)


def test_idkdpo_raises_the_refusal_over_the_forget_answer(finetuned):
    base, tok = finetuned
    model = copy.deepcopy(base)
    seen = {}

    class Recording(IdkDPO):
        def before_training(self, model, ctx):
            super().before_training(model, ctx)
            seen["ctx"] = ctx

    def margin(m):
        refusals = seen["ctx"].extras["idk_refusals"][-1]
        wins = one_by_one_logprob(m, tok, [Example(ex.prompt, " " + r) for ex, r in zip(FACTS, refusals)])
        loses = one_by_one_logprob(m, tok, FACTS)
        return sum(w - l for w, l in zip(wins, loses)) / len(FACTS)

    cfg = TrainConfig(lr=1e-3, epochs=4, global_batch=4, weight_decay=0.0)
    result = train(model, tok, Recording(IdkDPOConfig(alpha=0)), FACTS, None, cfg, seed=0)
    assert result.status == "ok"
    assert margin(model) > margin(base) + 5.0
    assert result.losses[-1] < result.losses[0]


# ---------------------------------------------------------------- loop-level unlearning


@pytest.mark.parametrize(
    "method",
    [NPO(), NPO(NPOConfig(retain_loss="nll")), NPO(NPOConfig(retain_loss="kl")), SimNPO(SimNPOConfig(alpha=0))],
    ids=["npo", "npo+rt", "npo+kl", "simnpo"],
)
def test_npo_family_raises_forget_ce_on_a_finetuned_model(finetuned, method):
    base, tok = finetuned
    model = copy.deepcopy(base)
    before = ce(model, tok, FACTS)
    cfg = TrainConfig(lr=1e-3, epochs=5, global_batch=4, weight_decay=0.0)
    result = train(model, tok, method, FACTS, OTHER, cfg, seed=0)
    assert result.status == "ok"
    assert ce(model, tok, FACTS) > before + 0.5, (before, ce(model, tok, FACTS))
