"""Method losses against hand computations on a tiny model."""
import copy

import torch
import torch.nn.functional as F

from harness.data.batching import Example, make_batch
from harness.training.losses import answer_ce, answer_kl, sequence_logprob
from harness.methods.base import MethodBatch, MethodContext
from harness.methods.ga import GradientAscent
from harness.methods.graddiff import GradDiff, GradDiffConfig

FORGET = [Example("Q: who? A:", " Zorb the tall"), Example("Q: where? A:", " in Velmora")]
RETAIN = [Example("Q: what? A:", " a clock"), Example("Q: when? A:", " in 1962")]


def hand_ce(model, tok, examples):
    """Mean NLL over all answer tokens, computed token by token."""
    nll, count = 0.0, 0
    for ex in examples:
        p = tok(ex.prompt)["input_ids"]
        a = tok(ex.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p + a])
        logp = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        for j, token in enumerate(a):
            nll -= logp[len(p) + j - 1, token].item()
            count += 1
    return nll / count


def test_answer_ce_matches_hand_computation(tiny):
    model, tok = tiny
    batch = make_batch(tok, FORGET)
    assert abs(answer_ce(model, batch).item() - hand_ce(model, tok, FORGET)) < 1e-4


def test_sequence_logprob_is_sum_over_answer_tokens(tiny):
    model, tok = tiny
    batch = make_batch(tok, FORGET[:1])
    n_answer = len(tok(FORGET[0].answer, add_special_tokens=False)["input_ids"]) + 1
    assert abs(-sequence_logprob(model, batch).item() / n_answer - hand_ce(model, tok, FORGET[:1])) < 1e-4


def test_ga_loss_is_negative_forget_ce(tiny):
    model, tok = tiny
    batch = MethodBatch(make_batch(tok, FORGET), torch.arange(2))
    loss, logs = GradientAscent().loss(model, batch, MethodContext())
    assert abs(loss.item() + hand_ce(model, tok, FORGET)) < 1e-4
    assert abs(logs["forget_ce"] - hand_ce(model, tok, FORGET)) < 1e-4


def test_graddiff_nll_combines_weighted_terms(tiny):
    model, tok = tiny
    batch = MethodBatch(make_batch(tok, FORGET), torch.arange(2), make_batch(tok, RETAIN))
    loss, _ = GradDiff(GradDiffConfig(gamma=0.5, alpha=2.0)).loss(model, batch, MethodContext())
    expected = -0.5 * hand_ce(model, tok, FORGET) + 2.0 * hand_ce(model, tok, RETAIN)
    assert abs(loss.item() - expected) < 1e-4


def test_kl_retain_is_zero_for_identical_model_and_positive_after_change(tiny):
    model, tok = tiny
    reference = copy.deepcopy(model)
    batch = make_batch(tok, RETAIN)
    assert abs(answer_kl(model, reference, batch).item()) < 1e-6
    with torch.no_grad():
        model.lm_head.weight.add_(0.05 * torch.randn_like(model.lm_head.weight))
    assert answer_kl(model, reference, batch).item() > 1e-4


def test_graddiff_kl_variant_asks_for_a_reference_model():
    assert "reference_model" in GradDiff(GradDiffConfig(retain_loss="kl")).needs_of()
    assert "reference_model" not in GradDiff(GradDiffConfig()).needs_of()
