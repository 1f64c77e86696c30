"""The Reference and GradNorm membership-inference attacks: scores against hand computations on the
tiny model, the engine routing that supplies gradient norms, the cache round trip, and the AUC
orientation against OpenUnlearning's convention (``mia/utils.py``: forget labelled 0, holdout 1,
roc_auc_score on the raw score, so its AUC is about 1 when the forget texts were memorised)."""
import copy

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from harness.data.batching import Example, prompt_ids
from harness.engines.base import LogprobRequest, RoutedEngine, TokenScores
from harness.engines.cache import _decode, _encode, request_key
from harness.engines.hf import HFEngine
from harness.registry import METRICS
from harness.scoring.privacy import gradnorm_score, loss_score, muse_auc, reference_score
from harness.training.finetune import Finetune
from harness.training.loop import TrainConfig, train

MEMBERS = [f"the zorb number {i} lives in velmora and eats {w}" for i, w in enumerate(["kale", "figs", "rice", "corn"])]
OTHERS = [f"a quix called {w} once sailed past port {i}" for i, w in enumerate(["dax", "pim", "rol", "tev"])]


def hand_gradnorm(model, tok, text: str) -> float:
    """Mean over parameter tensors of ||∇ mean NLL||_2, with torch.autograd.grad on a fresh copy."""
    m = copy.deepcopy(model).float()
    ids = torch.tensor([prompt_ids(tok, "") + tok(text, add_special_tokens=False)["input_ids"]])
    params = [p for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    logits = m(input_ids=ids).logits[0, :-1]
    nll = -torch.log_softmax(logits.double(), -1).gather(1, ids[0, 1:, None]).squeeze(1)
    grads = torch.autograd.grad(nll.mean(), params, allow_unused=True)
    return float(np.mean([g.double().norm().item() for g in grads if g is not None]))


def test_the_six_attacks_are_listed():
    names = set(METRICS.names())
    assert {"loss_score", "zlib_score", "min_k_score", "min_k_plus_plus_score", "reference_score", "gradnorm_score"} <= names


def test_reference_score_is_the_loss_difference():
    own, ref = [-1.0, -3.0, -2.0], [-0.5, -0.5, -2.0]
    assert reference_score(own, ref) == pytest.approx(2.0 - 1.0)
    assert reference_score(own, own) == 0.0
    assert loss_score(own) - loss_score(ref) == reference_score(own, ref)


def test_hf_engine_gradnorm_matches_a_hand_computation_and_leaves_the_model_alone(tiny):
    model, tok = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    engine = HFEngine(model, tok)
    scores = engine.logprobs([LogprobRequest("", MEMBERS[0], grad_norm=True), LogprobRequest("", OTHERS[0])])
    assert scores[1].grad_norm is None
    assert scores[0].grad_norm == pytest.approx(hand_gradnorm(model, tok, MEMBERS[0]), rel=1e-4)
    assert gradnorm_score(scores[0].grad_norm) == scores[0].grad_norm
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert [p.requires_grad for p in model.parameters()] == flags and all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="finite gradient norm"):
        gradnorm_score(None)


def test_gradnorm_requests_go_to_the_full_engine_and_survive_the_cache(tiny):
    model, tok = tiny

    class NoGradients(HFEngine):   # stands in for vLLM: no full distribution, no gradients
        name = "partial"
        full_distribution = False

        def logprobs(self, requests, progress=None):
            assert not any(r.grad_norm or r.needs_distribution for r in requests)
            return super().logprobs(requests, progress)

    routed = RoutedEngine(NoGradients(model, tok), HFEngine(model, tok))
    out = routed.logprobs([LogprobRequest("", OTHERS[1]), LogprobRequest("", MEMBERS[1], grad_norm=True)])
    assert out[0].grad_norm is None and out[1].grad_norm is not None
    assert routed.served["logprobs"] == {"partial": 1, "hf": 1}
    back = _decode(_encode(out[1]))
    assert back.grad_norm == pytest.approx(out[1].grad_norm) and back.logprobs == pytest.approx(out[1].logprobs)
    plain = TokenScores([-1.0], [True], None, None)
    assert _decode(_encode(plain)).grad_norm is None
    # a request without grad_norm keeps the cache key it had before the field existed
    assert "grad_norm" not in request_key(LogprobRequest("", "x")) and "grad_norm" in request_key(LogprobRequest("", "x", grad_norm=True))


def test_orientation_after_fine_tuning_on_the_members(tiny):
    """Fine-tuned on MEMBERS: their loss, loss-minus-reference and gradient norm fall below the
    non-members'. OpenUnlearning's AUC (forget 0, holdout 1, raw score) is then high; ours (MUSE
    convention) is its complement, low."""
    base, tok = tiny
    model = copy.deepcopy(base)
    train(model, tok, Finetune(), [Example("", t) for t in MEMBERS], None,
          TrainConfig(lr=3e-3, epochs=25, global_batch=4, micro_batch=4, weight_decay=0.0), seed=0)
    model.eval()
    requests = [LogprobRequest("", t, grad_norm=True) for t in MEMBERS + OTHERS]
    own = HFEngine(model, tok).logprobs(requests)
    ref = HFEngine(base, tok).logprobs([LogprobRequest("", t) for t in MEMBERS + OTHERS])
    n = len(MEMBERS)
    for name, values in {
        "reference": [reference_score(o.logprobs, r.logprobs) for o, r in zip(own, ref)],
        "gradnorm": [gradnorm_score(o.grad_norm) for o in own],
    }.items():
        forget, holdout = values[:n], values[n:]
        openunlearning_auc = roc_auc_score([0] * n + [1] * n, forget + holdout)
        assert openunlearning_auc >= 0.9, (name, forget, holdout)
        assert muse_auc(forget, holdout) == pytest.approx(1 - openunlearning_auc)
