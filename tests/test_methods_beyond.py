"""RMU, UNDIAL, WGA, SatImp, CE-U, Task Vector and WHP: losses against hand computations,
limiting cases, the activation-capture and trainable-parameter hooks, and unlearning on a
tiny fine-tuned model."""
import copy
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from harness.training.activations import capture_output, decoder_layer
from harness.data.batching import Example, make_batch
from harness.errors import HarnessError
from harness.training.losses import answer_ce
from harness.methods.base import NEEDS_REFERENCE_MODEL, NEEDS_RETAIN, MethodBatch, MethodContext
from harness.methods.ceu import CEU, CEUConfig, ceu_loss, drop_leading
from harness.methods.ga import GradientAscent
from harness.methods.rmu import RMU, RMUConfig, hidden_at, steered_layer
from harness.methods.satimp import SatImp, SatImpConfig
from harness.methods.task_vector import TaskVector, TaskVectorConfig
from harness.methods.undial import Undial, UndialConfig
from harness.methods.wga import WGA, WGAConfig
from harness.methods.whp import WHP, WHPConfig, generic_logits
from harness.runtime.models import build_tiny_random
from harness.training.finetune import Finetune
from harness.registry import METHODS
from harness.training.loop import TrainConfig, train

FACTS = [Example(f"Q{i}:", f" fact number {i} is {w}") for i, w in enumerate(["zorb", "quix", "mavel", "tonk"])]
OTHER = [Example(f"R{i}:", f" other {w}") for i, w in enumerate(["alpha", "beta", "gamma", "delta"])]
NEW = ["rmu", "undial", "wga", "satimp", "ceu", "task_vector", "whp"]


@pytest.fixture(scope="module")
def finetuned():
    """A tiny model that has learned FACTS (CE well below the random model's)."""
    model, tok = build_tiny_random()
    model = model.float()
    train(model, tok, Finetune(), FACTS, None, TrainConfig(lr=3e-3, epochs=30, global_batch=4, weight_decay=0.0), seed=0)
    return model.eval(), tok


def ce(model, tok, examples):
    with torch.no_grad():
        return answer_ce(model, make_batch(tok, examples)).item()


def batch_of(tok, forget, retain=None):
    return MethodBatch(forget=make_batch(tok, forget), forget_index=torch.arange(len(forget)),
                       retain=make_batch(tok, retain) if retain else None)


def per_token(model, tok, ex):
    """(logits [n, V], labels [n]) at the answer positions of one unpadded example, by hand."""
    prompt = tok(ex.prompt, add_special_tokens=False)["input_ids"]
    answer = tok(ex.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt + answer])
    logits = model(input_ids=ids).logits[0]
    start = len(prompt) - 1
    return logits[start : start + len(answer)], torch.tensor(answer)


def hand_weighted_ascent(model, tok, examples, weight):
    """-(1/N) Σ_t w(p_t)·CE_t over all answer tokens, one example at a time, with plain loops."""
    total, n = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            logits, labels = per_token(model, tok, ex)
            for row, y in zip(logits, labels):
                logp = torch.log_softmax(row.double(), -1)[y].item()
                total += weight(torch.tensor(logp).exp().item()) * logp
                n += 1
    return total / n


# ------------------------------------------------------------------------------- registry


def test_new_methods_register_with_labels_papers_and_list(capsys):
    from harness.cli import main

    labels = {"rmu": "RMU", "undial": "UNDIAL", "wga": "WGA", "satimp": "SatImp", "ceu": "CE-U",
              "task_vector": "Task Vector", "whp": "WHP"}
    for name, label in labels.items():
        cls = METHODS.get(name)
        assert cls.label == label and cls.paper
        assert "L = " in sys.modules[cls.__module__].__doc__ or "θ_unlearned = " in sys.modules[cls.__module__].__doc__
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    for name in NEW:
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert "[" in line, line   # the paper in brackets


def test_needs_follow_the_config():
    assert WGA().needs_of() == {NEEDS_RETAIN} and WGA(WGAConfig(alpha=0)).needs_of() == frozenset()
    assert SatImp(SatImpConfig(alpha=0)).needs_of() == frozenset()
    assert Undial().needs_of() == {NEEDS_REFERENCE_MODEL}
    assert Undial(UndialConfig(alpha=1)).needs_of() == {NEEDS_REFERENCE_MODEL, NEEDS_RETAIN}
    assert RMU().needs_of() == {NEEDS_RETAIN, NEEDS_REFERENCE_MODEL}
    assert CEU().needs_of() == frozenset() and TaskVector().needs_of() == frozenset()
    with pytest.raises(HarnessError, match="whp.targets"):
        WHPConfig(targets="medium")
    with pytest.raises(HarnessError, match="rmu.update"):
        RMUConfig(update="(")


# ------------------------------------------------------------------------------- activations


def test_capture_output_equals_the_hidden_state_and_stop_skips_the_rest(tiny):
    model, tok = tiny
    batch = make_batch(tok, FACTS[:2])
    with torch.no_grad():
        states = model(**batch.model_inputs(), output_hidden_states=True).hidden_states
        hooks_before = len(decoder_layer(model, 0)._forward_hooks)   # transformers may add its own
        with capture_output(decoder_layer(model, 0)) as h:
            model(**batch.model_inputs())
        assert torch.allclose(h.value, states[1], atol=1e-6)
        head_calls = []
        handle = model.lm_head.register_forward_hook(lambda *a: head_calls.append(1))
        with capture_output(decoder_layer(model, 0), stop=True) as h2:
            model(**batch.model_inputs())
            head_calls.append("after")   # never reached: the pass stopped after layer 0
        handle.remove()
    assert head_calls == [] and torch.equal(h2.value, h.value)
    assert len(decoder_layer(model, 0)._forward_hooks) == hooks_before    # our hooks removed
    with pytest.raises(HarnessError, match="2 decoder layers"):
        decoder_layer(model, 5)


# ------------------------------------------------------------------------------- WGA, SatImp


def test_wga_loss_matches_hand_computation_and_beta_zero_is_ga(tiny):
    model, tok = tiny
    batch = batch_of(tok, FACTS)
    loss, _ = WGA(WGAConfig(beta=2.0, alpha=0)).loss(model, batch, MethodContext())
    assert loss.item() == pytest.approx(hand_weighted_ascent(model, tok, FACTS, lambda p: p**2), rel=1e-4)

    ga_loss, _ = GradientAscent().loss(model, batch, MethodContext())
    ga_loss.backward()
    ga_grad = torch.cat([p.grad.flatten() for p in model.parameters()]).clone()
    model.zero_grad()
    wga_loss, _ = WGA(WGAConfig(beta=0.0, alpha=0)).loss(model, batch, MethodContext())
    wga_loss.backward()
    wga_grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    assert wga_loss.item() == pytest.approx(ga_loss.item(), rel=1e-6)
    assert torch.allclose(wga_grad, ga_grad, atol=1e-7)


def test_wga_adds_the_weighted_retain_term(tiny):
    model, tok = tiny
    batch = batch_of(tok, FACTS[:2], OTHER[:2])
    alone, _ = WGA(WGAConfig(alpha=0)).loss(model, batch, MethodContext())
    both, logs = WGA(WGAConfig(alpha=0.5, gamma=2.0)).loss(model, batch, MethodContext())
    assert both.item() == pytest.approx(2.0 * alone.item() + 0.5 * ce(model, tok, OTHER[:2]), rel=1e-5)


def test_satimp_matches_hand_computation_and_reduces_to_wga_and_ga(tiny):
    model, tok = tiny
    batch = batch_of(tok, FACTS)
    ctx = MethodContext()
    loss, _ = SatImp(SatImpConfig(beta1=3.0, beta2=2.0, alpha=0)).loss(model, batch, ctx)
    hand = hand_weighted_ascent(model, tok, FACTS, lambda p: p**3 * (1 - p) ** 2)
    assert loss.item() == pytest.approx(hand, rel=1e-4)
    as_wga, _ = SatImp(SatImpConfig(beta1=3.0, beta2=0.0, alpha=0)).loss(model, batch, ctx)
    assert as_wga.item() == pytest.approx(WGA(WGAConfig(beta=3.0, alpha=0)).loss(model, batch, ctx)[0].item(), rel=1e-6)
    as_ga, _ = SatImp(SatImpConfig(beta1=0.0, beta2=0.0, alpha=0)).loss(model, batch, ctx)
    assert as_ga.item() == pytest.approx(-ce(model, tok, FACTS), rel=1e-6)


# ------------------------------------------------------------------------------- CE-U


def test_ceu_loss_and_its_logit_gradient_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 6, 2, 2])
    loss = ceu_loss(logits, labels)
    p = torch.softmax(logits.detach(), -1)
    hand, grad = 0.0, torch.zeros(5, 7, dtype=torch.float64)
    for i in range(5):
        others = [v for v in range(7) if v != labels[i]]
        q = torch.zeros(7, dtype=torch.float64)
        q[others] = p[i, others] / p[i, others].sum()     # renormalised without the true token
        hand += -(q[others] * torch.log(p[i, others])).sum().item()
        grad[i] = (p[i] - q) / 5                          # d(mean CE)/dz = (p - q)/N
    assert loss.item() == pytest.approx(hand / 5, rel=1e-6)
    loss.backward()
    assert torch.allclose(logits.grad, grad, atol=1e-6)
    assert (logits.grad[torch.arange(5), labels] > 0).all()   # descent lowers the true logit


def test_ceu_drops_the_first_answer_tokens_of_each_example(tiny):
    mask = torch.tensor([[False, True, True, True], [False, False, True, False]])
    assert drop_leading(mask, 1).tolist() == [[False, False, True, True], [False, False, False, False]]
    model, tok = tiny
    loss, _ = CEU().loss(model, batch_of(tok, FACTS[:2]), MethodContext())
    rows, labels = [], []
    with torch.no_grad():
        for ex in FACTS[:2]:
            logits, ys = per_token(model, tok, ex)
            rows.append(logits[1:])
            labels.append(ys[1:])
    assert loss.item() == pytest.approx(ceu_loss(torch.cat(rows), torch.cat(labels)).item(), rel=1e-5)


# ------------------------------------------------------------------------------- UNDIAL


def test_undial_loss_matches_hand_computation(tiny):
    model, tok = tiny
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    beta = 3.0
    loss, _ = Undial(UndialConfig(beta=beta)).loss(model, batch_of(tok, FACTS[:2]), MethodContext(reference_model=reference))
    total, n = 0.0, 0
    with torch.no_grad():
        for ex in FACTS[:2]:
            logits, labels = per_token(model, tok, ex)
            ref_logits, _ = per_token(reference, tok, ex)
            for z, z_ref, y in zip(logits.double(), ref_logits.double(), labels):
                adjusted = z_ref.clone()
                adjusted[y] -= beta
                q = torch.softmax(adjusted, -1)
                total += -(q * torch.log_softmax(z, -1)).sum().item()
                n += 1
    assert loss.item() == pytest.approx(total / n, rel=1e-5)


def test_undial_with_zero_strength_is_stationary_at_the_teacher(tiny):
    model, tok = tiny
    loss, _ = Undial(UndialConfig(beta=0.0)).loss(model, batch_of(tok, FACTS), MethodContext(reference_model=copy.deepcopy(model)))
    loss.backward()
    assert max(p.grad.abs().max().item() for p in model.parameters()) < 1e-6
    model.zero_grad()


# ------------------------------------------------------------------------------- RMU


def test_rmu_default_layer_keeps_the_papers_relative_depth():
    class Fake(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.layers = torch.nn.ModuleList(torch.nn.Linear(1, 1) for _ in range(n))

    assert [steered_layer(Fake(n), None) for n in (32, 30, 24, 2)] == [7, 7, 5, 0]
    assert steered_layer(Fake(30), -1) == 29
    with pytest.raises(HarnessError, match="rmu.layer=30"):
        steered_layer(Fake(30), 30)


def test_rmu_loss_at_the_frozen_model_is_the_distance_to_the_control_vector(tiny):
    model, tok = tiny
    method = RMU(RMUConfig(layer=0, steering_coeff=4.0, alpha=100.0))
    ctx = MethodContext(reference_model=copy.deepcopy(model))
    with torch.no_grad():
        method.before_training(model, ctx)
    control = ctx.extras["rmu_control"]
    assert control.norm().item() == pytest.approx(4.0, rel=1e-6) and (control >= 0).all()
    loss, logs = method.loss(model, batch_of(tok, FACTS[:2], OTHER[:2]), ctx)
    assert logs["retain_mse"] == 0.0
    total, n = 0.0, 0
    with torch.no_grad():
        for ex in FACTS[:2]:
            prompt = tok(ex.prompt, add_special_tokens=False)["input_ids"]
            answer = tok(ex.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            # hidden_states[l + 1] is layer l's output (the last entry alone has the final norm applied)
            states = model(input_ids=torch.tensor([prompt + answer]), output_hidden_states=True).hidden_states[1][0]
            for h in states[len(prompt):]:                # the answer tokens' own positions
                total += ((h - control) ** 2).mean().item()
                n += 1
    assert loss.item() == pytest.approx(total / n, rel=1e-5)


def test_rmu_updates_only_the_chosen_weights_and_restores_requires_grad(finetuned):
    base, tok = finetuned
    model = copy.deepcopy(base)
    method = RMU(RMUConfig(layer=1, update_layers=1))
    names = {n for n, p in model.named_parameters() if any(p is q for q in method.trainable_parameters(model))}
    assert names == {"model.layers.1.mlp.down_proj.weight"}
    train(model, tok, method, FACTS, OTHER, TrainConfig(lr=1e-3, epochs=2, global_batch=4, weight_decay=0.0), seed=0)
    changed = {n for (n, p), q in zip(model.named_parameters(), base.parameters()) if not torch.equal(p, q)}
    assert changed == names
    assert all(p.requires_grad for p in model.parameters())


def test_rmu_derived_steering_coefficient_matches_a_hand_computed_norm(finetuned):
    """c = steering_scale x the mean L2 norm of layer l's output over every forget answer token,
    computed by hand one unpadded example at a time (10 items: the method measures in batches of 8)."""
    model, tok = finetuned
    items = FACTS + OTHER + [Example("S0:", " one more"), Example("S1:", " and a last one")]
    method = RMU(RMUConfig(layer=1, steering_scale=3.0))
    ctx = MethodContext(forget_examples=items, encode=lambda xs: make_batch(tok, xs), extras={"rmu_report": {}})
    with torch.no_grad():
        method.before_training(model, ctx)
    norms, seen = [], []
    # the last decoder layer's output, read with a plain hook (hidden_states[-1] has the final norm applied)
    handle = decoder_layer(model, 1).register_forward_hook(lambda mod, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        for ex in items:
            prompt = tok(ex.prompt, add_special_tokens=False)["input_ids"]
            answer = tok(ex.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            model(input_ids=torch.tensor([prompt + answer]))
            states = seen.pop()[0]
            norms += [math.sqrt(sum(x * x for x in h.tolist())) for h in states[len(prompt):]]
    handle.remove()
    hand = sum(norms) / len(norms)
    report = ctx.extras["rmu_report"]
    assert report["forget_state_norm"] == pytest.approx(hand, rel=1e-5)
    assert report["steering_coeff"] == pytest.approx(3.0 * hand, rel=1e-5)
    assert ctx.extras["rmu_control"].norm().item() == pytest.approx(3.0 * hand, rel=1e-5)
    fixed = MethodContext(forget_examples=items, encode=ctx.encode)
    with torch.no_grad():
        RMU(RMUConfig(layer=1, steering_coeff=6.5)).before_training(model, fixed)
    assert fixed.extras["rmu_control"].norm().item() == pytest.approx(6.5, rel=1e-6)   # set outright: the paper's way
    with pytest.raises(HarnessError, match="rmu.steering_coeff must be > 0"):
        RMUConfig(steering_coeff=0.0)


def test_rmu_moves_the_steered_layers_forget_states_towards_c_u_and_keeps_retain_states(finetuned):
    base, tok = finetuned
    model = copy.deepcopy(base)

    class Spy(RMU):
        def before_training(self, model, ctx):
            super().before_training(model, ctx)
            self.control = ctx.extras["rmu_control"].clone()

    # derived c, both layers' down_proj. α = 10, not 1200: the tiny model's forget and retain answers
    # are so alike ("fact number 0 is zorb" / "other alpha") that α = 1200 holds the forget states too
    # (they move about 6% in 15 epochs; measured), which is what the test must not depend on.
    method = Spy(RMUConfig(layer=1, update_layers=2, alpha=10.0))
    forget, retain = make_batch(tok, FACTS), make_batch(tok, OTHER)

    def distances(m):
        with torch.no_grad():
            h_f, h_r, h_0 = hidden_at(m, forget, 1), hidden_at(m, retain, 1), hidden_at(base, retain, 1)
            mask_f, mask_r = forget.labels != -100, retain.labels != -100
            to_target = ((h_f - method.control) ** 2).mean(-1)[mask_f].mean().item()
            drift = ((h_r - h_0) ** 2).mean(-1)[mask_r].mean().item()
        return to_target, drift

    cfg = TrainConfig(lr=3e-3, epochs=15, global_batch=4, schedule="constant", max_grad_norm=0.0, weight_decay=0.0)
    result = train(model, tok, method, FACTS, OTHER, cfg, seed=0)
    assert result.status == "ok" and result.phases["rmu"]["steering_coeff"] == pytest.approx(method.control.norm().item(), rel=1e-5)
    before, _ = distances(base)
    after, drift = distances(model)
    assert after < 0.5 * before, (before, after)          # the forget states moved most of the way towards c·u
    assert drift < 0.05 * before, (drift, before)          # while the retain states stayed near the frozen model's


# ------------------------------------------------------------------------------- Task Vector


def test_task_vector_scale_zero_returns_the_target_exactly_and_one_reflects(finetuned):
    base, tok = finetuned
    cfg = TrainConfig(lr=1e-3, epochs=2, global_batch=4, weight_decay=0.0)
    unchanged = copy.deepcopy(base)
    result = train(unchanged, tok, TaskVector(TaskVectorConfig(alpha=0.0)), FACTS, None, cfg, seed=0)
    assert result.steps == 2 and result.phases["task_vector"]["vector_norm"] > 0
    assert all(torch.equal(p, q) for p, q in zip(unchanged.parameters(), base.parameters()))

    reinforced = copy.deepcopy(base)
    train(reinforced, tok, Finetune(), FACTS, None, cfg, seed=0)     # the same fine-tune, by hand
    reflected = copy.deepcopy(base)
    train(reflected, tok, TaskVector(TaskVectorConfig(alpha=1.0)), FACTS, None, cfg, seed=0)
    for p, t, r in zip(reflected.parameters(), base.parameters(), reinforced.parameters()):
        assert torch.allclose(p, 2 * t - r, atol=1e-6)


def test_task_vector_refuses_per_epoch_evaluation(tiny):
    model, tok = tiny
    with pytest.raises(HarnessError, match="per_epoch"):
        train(model, tok, TaskVector(), FACTS, None, TrainConfig(epochs=1), seed=0, on_epoch_end=lambda e, m: None)


# ------------------------------------------------------------------------------- WHP


def test_whp_generic_logits_and_loss_by_hand(tiny):
    model, tok = tiny
    v_b, v_r = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 1.0, 0.5])
    assert generic_logits(v_b, v_r, 2.0).tolist() == [1.0 - 2.0 * 2.0, 2.0, 0.5]

    baseline, reinforced = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        for p in reinforced.parameters():
            p.add_(0.1 * torch.randn_like(p))
    for targets in ("hard", "soft"):
        method = WHP(WHPConfig(alpha=1.5, targets=targets))
        ctx = MethodContext(reference_model=baseline, extras={"whp_reinforced": reinforced})
        loss, _ = method.loss(model, batch_of(tok, FACTS[:2]), ctx)
        total, n = 0.0, 0
        with torch.no_grad():
            for ex in FACTS[:2]:
                z, _ = per_token(model, tok, ex)
                zb, _ = per_token(baseline, tok, ex)
                zr, _ = per_token(reinforced, tok, ex)
                for row, b, r in zip(z.double(), zb.double(), zr.double()):
                    g = b - 1.5 * torch.clamp(r - b, min=0)
                    logp = torch.log_softmax(row, -1)
                    total += -logp[g.argmax()].item() if targets == "hard" else -(torch.softmax(g, -1) * logp).sum().item()
                    n += 1
        assert loss.item() == pytest.approx(total / n, rel=1e-5), targets


def test_whp_with_an_unchanged_reinforced_model_distils_the_target_into_itself(tiny):
    model, tok = tiny
    ctx = MethodContext(reference_model=copy.deepcopy(model), extras={"whp_reinforced": copy.deepcopy(model)})
    loss, logs = WHP(WHPConfig(alpha=5.0, targets="soft")).loss(model, batch_of(tok, FACTS), ctx)
    loss.backward()
    assert max(p.grad.abs().max().item() for p in model.parameters()) < 1e-6   # CE(π, π) is stationary at π
    model.zero_grad()


# ------------------------------------------------------------------------------- the loop


@pytest.mark.parametrize(
    "method, lr, epochs",
    [(RMU(RMUConfig(steering_coeff=20.0, alpha=1.0, update="all")), 1e-3, 5), (Undial(), 3e-3, 10),
     (WGA(WGAConfig(alpha=0)), 1e-3, 5), (SatImp(SatImpConfig(alpha=0, beta1=1.0)), 1e-3, 5), (CEU(), 1e-3, 5),
     (TaskVector(), 3e-3, 10), (WHP(WHPConfig(alpha=5.0)), 3e-3, 10)],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_each_new_method_raises_forget_ce_on_a_finetuned_model(finetuned, method, lr, epochs):
    base, tok = finetuned
    model = copy.deepcopy(base)
    before = ce(model, tok, FACTS)
    result = train(model, tok, method, FACTS, OTHER, TrainConfig(lr=lr, epochs=epochs, global_batch=4, weight_decay=0.0), seed=0)
    assert result.status == "ok"
    assert ce(model, tok, FACTS) > before + 0.5, (before, ce(model, tok, FACTS))


def test_runner_refuses_per_epoch_evaluation_of_a_method_without_epochs_up_front(tmp_path):
    from harness.run.runner import Runner, RunRequest

    req = RunRequest(benchmark="synthetic", methods="ga,task_vector", model="tiny-random", results_dir=tmp_path,
                     overrides={"eval.per_epoch": "true"})
    with pytest.raises(HarnessError, match="'task_vector' has no unlearning epochs"):
        Runner(req, log=lambda *a: None)
    assert not list(tmp_path.iterdir())     # refused before any work


def test_muse_news_defaults_follow_muses_task_vector_script():
    from harness.run import config as cfgmod
    from harness.registry import BENCHMARKS

    defaults = BENCHMARKS.get("muse-news").method_defaults
    layers = [defaults["*"], defaults["task_vector"]]
    assert cfgmod.build(TaskVectorConfig, "task_vector", layers).alpha == 5.0
    assert cfgmod.build(TrainConfig, "train", layers).epochs == 10
    assert cfgmod.build(WHPConfig, "whp", [defaults["*"], defaults["whp"]]).reinforce_epochs == 10
