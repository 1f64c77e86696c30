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


def hand_kl(model, reference, tok, examples):
    """KL(pi_ref || pi_theta) = sum_v p_ref(v) (log p_ref(v) - log p_theta(v)) at each answer
    position (EOS included), log-softmax written out by hand, averaged over answer tokens."""
    def log_softmax(row):
        row = row.double()
        return row - row.max() - torch.log(torch.exp(row - row.max()).sum())

    total, count = 0.0, 0
    for ex in examples:
        p = tok(ex.prompt)["input_ids"]
        a = tok(ex.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p + a])
        with torch.no_grad():
            theta, ref = model(input_ids=ids).logits[0], reference(input_ids=ids).logits[0]
        for j in range(len(a)):
            lq, lp = log_softmax(theta[len(p) + j - 1]), log_softmax(ref[len(p) + j - 1])
            total += (lp.exp() * (lp - lq)).sum().item()
            count += 1
    return total / count


def test_answer_kl_matches_hand_computation_in_direction_and_scale(tiny):
    """KL(ref || theta) per answer token: the reverse direction or a sum instead of a mean fails."""
    model, tok = tiny
    reference = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():
        model.lm_head.weight.add_(0.5 * torch.randn_like(model.lm_head.weight))
    batch = make_batch(tok, RETAIN)
    expected = hand_kl(model, reference, tok, RETAIN)
    reverse = hand_kl(reference, model, tok, RETAIN)
    assert abs(expected - reverse) > 1e-3 * expected   # the two directions differ on this model
    assert abs(answer_kl(model, reference, batch).item() - expected) < 1e-5 * max(1.0, expected)
