"""FLAT and SGA against hand computations on the tiny model, plus a loop-level sanity check."""
import copy
import math
import random

import pytest
import torch
import torch.nn.functional as F

from harness.data.batching import Example, make_batch
from harness.errors import HarnessError
from harness.training.losses import answer_ce, sequence_logprob
from harness.methods.base import MethodBatch, MethodContext
from harness.methods.flat import DIVERGENCES, Flat, FlatConfig
from harness.methods.sga import SgaConfig, SmoothedGradientAscent, one_step_r, sga_weights
from harness.training.finetune import Finetune
from harness.training.loop import TrainConfig, train

FORGET = [
    Example("Q: who? A:", " Zorb the tall", id="f0", perturbed=(" Quix the short", " Mavel the odd", " Tonk", " Pell the wise")),
    Example("Q: where? A:", " in Velmora", id="f1", perturbed=(" in Ardent", " in Bex", " on Kell", " by Lorn")),
]
RETAIN = [
    Example("Q: what? A:", " a clock"),
    Example("Q: when? A:", " in 1962"),
    Example("Q: how? A:", " by boat"),
    Example("Q: why? A:", " for fun"),
    Example("Q: which? A:", " the red one"),
]
POOL = ("I don't know.", "No idea.", "I cannot say.")
DIVERGENCE_NAMES = ["kl", "pearson", "jensen_shannon", "total_variation", "jeffrey"]


def hand_token_probs(model, tok, ex):
    """Token probabilities of the answer (plus EOS), computed one position at a time."""
    p = tok(ex.prompt)["input_ids"]
    a = tok(ex.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=torch.tensor([p + a])).logits[0].float(), -1)
    return [math.exp(logp[len(p) + j - 1, t].item()) for j, t in enumerate(a)]


def hand_mean_prob(model, tok, ex, pad_length=None):
    probs = hand_token_probs(model, tok, ex)
    return sum(probs) / (pad_length if pad_length else len(probs))


def softplus(v):
    return math.log1p(math.exp(-v))  # log(1 + e^-v)


# The table of reference.md section 3, written independently of the module's torch functions.
HAND = {
    "kl": (lambda v: v, lambda v: math.exp(v - 1)),
    "pearson": (lambda v: v, lambda v: v * v / 4 + v),
    "jensen_shannon": (lambda v: math.log(2) - softplus(v), lambda v: -math.log(2) + v + softplus(v)),
    "total_variation": (lambda v: 0.5 * math.tanh(v), lambda v: 0.5 * math.tanh(v)),
    "jeffrey": (lambda v: v, lambda v: v + v * v / 4 + v**3 / 16),
}


def flat_ctx(tok, epochs=1, forget=FORGET, seed=0):
    return MethodContext(
        forget_examples=forget, encode=lambda ex: make_batch(tok, ex), rng=random.Random(seed),
        epochs=epochs, extras={"refusals": POOL},
    )


def flat_setup(model, tok, divergence, **kw):
    method = Flat(FlatConfig(divergence=divergence, **kw))
    ctx = flat_ctx(tok)
    with torch.no_grad():
        method.before_training(model, ctx)
    templates = [Example(ex.prompt, " " + ctx.extras["flat_templates"][0][i]) for i, ex in enumerate(FORGET)]
    return method, ctx, MethodBatch(make_batch(tok, FORGET), torch.arange(len(FORGET))), templates


# ---------------------------------------------------------------------------------------- FLAT
@pytest.mark.parametrize("divergence", DIVERGENCE_NAMES)
def test_flat_loss_matches_hand_computation(tiny, divergence):
    model, tok = tiny
    method, ctx, batch, templates = flat_setup(model, tok, divergence)
    p_e = [hand_mean_prob(model, tok, t) for t in templates]
    p_f = [hand_mean_prob(model, tok, f) for f in FORGET]
    g, fg = HAND[divergence]
    expected = sum(-g(e) + fg(f) for e, f in zip(p_e, p_f)) / len(FORGET)
    loss, logs = method.loss(model, batch, ctx)
    assert abs(loss.item() - expected) < 1e-5, (loss.item(), expected)
    assert abs(logs["p_template"] - sum(p_e) / 2) < 1e-5 and abs(logs["p_forget"] - sum(p_f) / 2) < 1e-5

    # The analytic signs on [0, 1]: dL/dP̄_e < 0 and dL/dP̄_f > 0.
    v = torch.linspace(0, 1, 11, dtype=torch.float64, requires_grad=True)
    g_star, f_star = DIVERGENCES[divergence]
    d_template, = torch.autograd.grad(-g_star(v).sum(), v)
    d_forget, = torch.autograd.grad(f_star(v).sum(), v)
    assert (d_template < 0).all() and (d_forget > 0).all()


def sgd_step(model, grads, lr):
    stepped = copy.deepcopy(model)
    with torch.no_grad():
        for p, g in zip(stepped.parameters(), grads):
            p -= lr * g
    return stepped


@pytest.mark.parametrize("divergence", DIVERGENCE_NAMES)
def test_flat_one_sgd_step_raises_template_and_lowers_forget(tiny, divergence):
    """One plain SGD step (lr 0.5) on a copy of the tiny model.

    Each term on its own always moves its own answer the right way (the analytic signs above).
    The combined step raises P̄_e for every divergence and lowers P̄_f for all but KL. KL is a
    legitimate exception on an untrained model: its forget weight f*'(g*(v)) = e^(v-1) is about
    e^-1 when P̄_f is small, while the template weight is 1, and the two answers share gradient
    directions (both end in EOS, and raising any answer on a random model raises the other), so
    the first-order change of P̄_f, -lr·(∇L_e + ∇L_f)·∇P̄_f, is positive. For KL the test asserts
    that this first-order prediction is what happens instead.
    """
    model, tok = tiny
    method, ctx, batch, templates = flat_setup(model, tok, divergence)
    g_star, f_star = DIVERGENCES[divergence]
    params = list(model.parameters())
    p_e_t = method.mean_probability(model, make_batch(tok, templates))
    p_f_t = method.mean_probability(model, batch.forget)
    grad_e = torch.autograd.grad((-g_star(p_e_t)).mean(), params)                 # template term
    grad_f = torch.autograd.grad(f_star(p_f_t).mean(), params, retain_graph=True)  # forget term
    total = [a + b for a, b in zip(grad_e, grad_f)]
    full, _ = method.loss(model, batch, ctx)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(total, torch.autograd.grad(full, params)))

    p_e = sum(hand_mean_prob(model, tok, t) for t in templates)
    p_f = sum(hand_mean_prob(model, tok, f) for f in FORGET)
    prob_e = lambda m: sum(hand_mean_prob(m, tok, t) for t in templates)  # noqa: E731
    prob_f = lambda m: sum(hand_mean_prob(m, tok, f) for f in FORGET)  # noqa: E731
    lr = 0.5
    assert prob_e(sgd_step(model, grad_e, lr)) > p_e      # template term alone raises P̄_e
    assert prob_f(sgd_step(model, grad_f, lr)) < p_f      # forget term alone lowers P̄_f
    stepped = sgd_step(model, total, lr)
    with torch.no_grad():
        assert method.loss(stepped, batch, ctx)[0].item() < full.item()
    assert prob_e(stepped) > p_e
    if divergence != "kl":
        assert prob_f(stepped) < p_f
    else:
        grad_pf = torch.autograd.grad(p_f_t.sum(), params)
        first_order = -lr * sum((t * g).sum() for t, g in zip(total, grad_pf)).item()
        cross = sum((a * g).sum() for a, g in zip(grad_e, grad_pf)).item()
        own = sum((b * g).sum() for b, g in zip(grad_f, grad_pf)).item()
        assert cross < 0 < own < -cross                   # the template term's spill-over dominates
        assert first_order > 0 and prob_f(stepped) - p_f == pytest.approx(first_order, rel=0.2)


def test_flat_normalisations(tiny):
    model, tok = tiny
    per_answer, ctx, batch, _ = flat_setup(model, tok, "kl")
    padded = Flat(FlatConfig(divergence="kl", normalisation="padded_length"))
    with torch.no_grad():
        got_mean = per_answer.mean_probability(model, batch.forget)
        got_padded = padded.mean_probability(model, batch.forget)
    for i, ex in enumerate(FORGET):
        probs = hand_token_probs(model, tok, ex)
        assert abs(got_mean[i].item() - sum(probs) / len(probs)) < 1e-6
        # The official code averages over the 499 shifted positions of a 500-token row.
        assert abs(got_padded[i].item() - sum(probs) / 499) < 1e-7
    assert Flat(FlatConfig(normalisation="padded_length", pad_length=7)).config.pad_length == 7


def test_flat_templates_resampled_per_epoch_and_seeded(tiny):
    model, tok = tiny
    forget = [Example(f"Q{i}:", f" answer {i}") for i in range(6)]
    method = Flat()
    a, b, c = flat_ctx(tok, 3, forget, seed=1), flat_ctx(tok, 3, forget, seed=1), flat_ctx(tok, 3, forget, seed=2)
    for ctx in (a, b, c):
        ctx.extras.pop("refusals")  # the built-in pool
        method.before_training(model, ctx)
    ta, tb, tc = (ctx.extras["flat_templates"] for ctx in (a, b, c))
    assert ta == tb and ta != tc
    assert len(ta) == 3 and all(len(epoch) == 6 for epoch in ta)
    assert ta[0] != ta[1] or ta[1] != ta[2]

    # The loss really encodes the current epoch's templates.
    seen = []
    a.encode = lambda ex: (seen.append(ex), make_batch(tok, ex))[1]
    batch = MethodBatch(make_batch(tok, forget), torch.arange(6))
    for epoch in range(3):
        a.epoch = epoch
        with torch.no_grad():
            method.loss(model, batch, a)
    assert [[e.answer for e in s] for s in seen] == [[" " + t for t in epoch] for epoch in ta]
    assert [e.prompt for e in seen[0]] == [e.prompt for e in forget]


def test_flat_rejects_unsound_divergences():
    for name in ("reverse_kl", "squared_hellinger", "neyman"):
        with pytest.raises(HarnessError, match="raises the forget probability"):
            FlatConfig(divergence=name)
    with pytest.raises(HarnessError, match="total_variation"):
        FlatConfig(divergence="chi")
    with pytest.raises(HarnessError, match="per_answer, padded_length"):
        FlatConfig(normalisation="tokens")
    assert Flat().needs_of() == frozenset()


# ----------------------------------------------------------------------------------------- SGA
def sga_ctx(tok, seed=0, forget=FORGET, retain=RETAIN):
    return MethodContext(
        forget_examples=forget, retain_examples=retain, encode=lambda ex: make_batch(tok, ex), rng=random.Random(seed)
    )


def forget_batch(tok):
    return MethodBatch(make_batch(tok, FORGET), torch.arange(len(FORGET)), make_batch(tok, RETAIN[:2]))


def grads_of(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def test_sga_with_r_zero_is_exactly_ga(tiny):
    model, tok = tiny
    method = SmoothedGradientAscent(SgaConfig(r="0", K=4))
    loss, logs = method.loss(model, forget_batch(tok), sga_ctx(tok))
    sga_grads = grads_of(model, loss)
    ga_grads = grads_of(model, -answer_ce(model, make_batch(tok, FORGET)))
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(sga_grads, ga_grads))
    assert logs["r"] == 0.0 and logs["K"] == 4.0
    assert sga_weights(0.0, 7) == (1.0, 0.0)


@pytest.mark.parametrize("r,K", [(-0.4, 4), (-1.0, 2), (-2.0, 5), (0.5, 3)])
def test_sga_weights_and_loss_match_the_formula(tiny, r, K):
    model, tok = tiny
    w_f, w_n = sga_weights(r, K)
    assert w_f == pytest.approx(1 - r + r / K) and w_n == pytest.approx(r / K)
    if r < 0:
        assert w_f == pytest.approx(1 + abs(r) * (K - 1) / K) and -w_n == pytest.approx(abs(r) / K)

    with torch.no_grad():
        # perturbed source: the k-th normal batch is every item's k-th perturbed answer
        method = SmoothedGradientAscent(SgaConfig(r=str(r), K=K, normal_source="perturbed"))
        loss, logs = method.loss(model, forget_batch(tok), sga_ctx(tok))
        ce_f = answer_ce(model, make_batch(tok, FORGET))
        ce_k = [answer_ce(model, make_batch(tok, [Example(ex.prompt, ex.perturbed[k]) for ex in FORGET])) for k in range(K - 1)]
        expected = -(1 - r + r / K) * ce_f - (r / K) * sum(ce_k)
        assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
        assert logs["r"] == r and logs["K"] == K

        # random source: the same formula over retain items drawn with the seeded rng
        method = SmoothedGradientAscent(SgaConfig(r=str(r), K=K, normal_source="random"))
        loss, _ = method.loss(model, forget_batch(tok), sga_ctx(tok, seed=5))
        groups = method.normal_examples(forget_batch(tok), sga_ctx(tok, seed=5))
        assert len(groups) == K - 1 and all(len(g) == len(FORGET) for g in groups)
        assert all(len({id(g[i]) for g in groups}) == K - 1 for i in range(len(FORGET)))  # distinct per item
        expected = -(1 - r + r / K) * ce_f - (r / K) * sum(answer_ce(model, make_batch(tok, g)) for g in groups)
        assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_sga_auto_r_equals_the_closed_form_from_hand_gradients(tiny):
    model, tok = tiny
    K = 3
    method = SmoothedGradientAscent(SgaConfig(r="auto", K=K, normal_source="perturbed"))
    loss, logs = method.loss(model, forget_batch(tok), sga_ctx(tok))

    params = list(model.parameters())
    g_f = torch.autograd.grad(answer_ce(model, make_batch(tok, FORGET)), params)
    g_n = [torch.zeros_like(p) for p in params]
    for k in range(K - 1):
        ce_k = answer_ce(model, make_batch(tok, [Example(ex.prompt, ex.perturbed[k]) for ex in FORGET]))
        g_n = [a + b / (K - 1) for a, b in zip(g_n, torch.autograd.grad(ce_k, params))]
    flat_f = torch.cat([g.flatten() for g in g_f]).double()
    diff = flat_f - torch.cat([g.flatten() for g in g_n]).double()
    r_star = (K / (K - 1)) * (flat_f @ diff).item() / (diff @ diff).item()
    assert logs["r"] == pytest.approx(r_star, rel=1e-4)
    assert logs["K"] == K

    # The loss then uses that r, and the gradient equals -g_f + r*((K-1)/K)(g_f - ḡ_n).
    got = grads_of(model, loss)
    want = [-a + r_star * (K - 1) / K * (a - b) for a, b in zip(g_f, g_n)]
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(got, want))


def test_one_step_r_minimises_the_update_norm_on_a_toy():
    g_f, g_n, K = [torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 1.0])], 2
    r = one_step_r(g_f, g_n, K)
    assert r == pytest.approx(1.0)  # (2/1) * <(1,0),(1,-1)> / ||(1,-1)||^2

    def update_norm(r):
        return (-g_f[0] + r * (K - 1) / K * (g_f[0] - g_n[0])).norm().item()

    assert update_norm(r) < min(update_norm(r - 0.1), update_norm(r + 0.1))
    assert one_step_r(g_f, g_f, K) == 0.0  # identical gradients: no information, fall back to GA


def test_sga_tfidf_picks_the_most_similar_retain_items(tiny):
    model, tok = tiny
    forget = [
        Example("Tell me about the dragon:", " the dragon breathes fire over the castle"),
        Example("What do bananas taste like?", " bananas taste sweet and yellow"),
    ]
    retain = [
        Example("Markets:", " the stock market fell today"),
        Example("Fruit:", " yellow bananas taste sweet"),
        Example("Legend:", " a dragon breathes fire on the castle walls"),
        Example("Weather:", " rain tomorrow in the north"),
        Example("Myth:", " fire and a dragon near a castle"),
        Example("Snack:", " sweet bananas"),
    ]
    method = SmoothedGradientAscent(SgaConfig(r="-0.5", K=3, normal_source="tfidf"))
    ctx = sga_ctx(tok, forget=forget, retain=retain)
    method.before_training(model, ctx)
    assert [sorted(n) for n in ctx.extras["sga_neighbours"]] == [[2, 4], [1, 5]]
    groups = method.normal_examples(MethodBatch(make_batch(tok, forget), torch.tensor([1, 0])), ctx)
    assert {groups[0][0].answer, groups[1][0].answer} == {" yellow bananas taste sweet", " sweet bananas"}
    assert "retain" in method.needs_of()


def test_sga_perturbed_source_uses_the_items_wrong_answers(tiny):
    model, tok = tiny
    method = SmoothedGradientAscent(SgaConfig(K=3, normal_source="perturbed"))
    assert method.needs_of() == frozenset()
    groups = method.normal_examples(MethodBatch(make_batch(tok, FORGET), torch.tensor([1, 0])), sga_ctx(tok))
    assert [[e.answer for e in g] for g in groups] == [[" in Ardent", " Quix the short"], [" in Bex", " Mavel the odd"]]
    assert [e.prompt for e in groups[0]] == ["Q: where? A:", "Q: who? A:"]

    bare = [Example("Q: who? A:", " Zorb", id="item-7")]
    ctx = sga_ctx(tok, forget=bare)
    with pytest.raises(HarnessError, match=r"item-7.*has none.*normal_source=random"):
        method.before_training(model, ctx)
    with pytest.raises(HarnessError, match="Lower sga.K to 5"):
        SmoothedGradientAscent(SgaConfig(K=6, normal_source="perturbed")).before_training(model, sga_ctx(tok))


def test_sga_config_parsing():
    assert SgaConfig(r="auto").auto and SgaConfig(r=" AUTO ").r == "auto"
    assert SgaConfig(r="-0.6").r_value == -0.6 and SgaConfig(r=-2).r_value == -2.0
    for bad in ("fast", "nan"):
        with pytest.raises(HarnessError, match="sga.r must be"):
            SgaConfig(r=bad)
    with pytest.raises(HarnessError, match="random, tfidf, perturbed"):
        SgaConfig(normal_source="embedding")
    with pytest.raises(HarnessError, match="sga.K must be at least 2"):
        SgaConfig(K=1)


# ---------------------------------------------------------------------------------- the loop
FACTS = [Example(f"Q{i}:", f" fact number {i} is {w}") for i, w in enumerate(["zorb", "quix", "mavel", "tonk"])]
OTHER = [Example(f"R{i}:", f" other {w}") for i, w in enumerate(["alpha", "beta", "gamma", "delta"])]


@pytest.fixture(scope="module")
def finetuned():
    from harness.runtime.models import build_tiny_random

    model, tok = build_tiny_random()
    model = model.float()
    cfg = TrainConfig(lr=3e-3, epochs=30, global_batch=4, micro_batch=4, weight_decay=0.0)
    train(model, tok, Finetune(), FACTS + OTHER, None, cfg, seed=0)
    return model, tok


def forget_probability(model, tok):
    """Mean length-normalised answer probability exp(log pi(y|x) / |y|) over FACTS."""
    with torch.no_grad():
        batch = make_batch(tok, FACTS)
        lengths = (batch.labels[:, 1:] != -100).sum(-1)
        return (sequence_logprob(model, batch) / lengths).exp().mean().item()


@pytest.mark.parametrize(
    "method",
    [Flat(), SmoothedGradientAscent(SgaConfig(r="-0.6", K=3, normal_source="random"))],
    ids=["flat", "sga"],
)
def test_training_lowers_the_forget_probability(finetuned, method):
    base, tok = finetuned
    model = copy.deepcopy(base)
    before = forget_probability(model, tok)
    cfg = TrainConfig(lr=3e-3, epochs=4, global_batch=4, micro_batch=4, weight_decay=0.0)
    result = train(model, tok, method, FACTS, OTHER, cfg, seed=0)
    after = forget_probability(model, tok)
    assert result.status == "ok" and result.steps == 4
    assert after < 0.5 * before, (before, after)
    if method.name == "flat":
        assert result.logs[-1]["p_template"] > result.logs[0]["p_template"]
    if method.name == "sga":
        assert all(log["r"] == pytest.approx(-0.6) and log["K"] == 3 for log in result.logs)
