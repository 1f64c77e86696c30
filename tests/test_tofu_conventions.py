"""TOFU's scoring conventions, pinned on a tiny model against hand computation.

What TOFU's data code and OpenUnlearning score: the answer tokens plus one EOS token, counted
in the log-prob and in the token count; generations are not cut by stop strings, special tokens
are skipped and whitespace stripped. The reference values here come from one plain forward pass
of the model over hand-assembled token ids, not from the engine or the scoring functions.
"""
from __future__ import annotations

import math

import pytest
import torch

from harness.data.batching import encode
from harness.benchmarks.base import degenerate_generations
from harness.benchmarks.tofu import Tofu, TofuConfig
from harness.data.chat import ChatPrompt
from harness.engines.hf import HFEngine
from harness.engines.base import GenerationRequest, LogprobRequest
from harness.engines.plan import run_plan
from test_tofu import FORGET, REAL_AUTHORS, fake_tofu  # noqa: F401  (fixture)


def hand_mean_prob(model, tok, prompt: str, answer: str, eos: bool = True) -> float:
    """exp(mean log p) over the answer tokens (+ EOS), from one forward pass of the whole text."""
    head = tok(prompt, add_special_tokens=True)["input_ids"]
    tail = tok(answer, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos else [])
    ids = torch.tensor([head + tail])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    total = sum(logp[len(head) + j - 1, t].item() for j, t in enumerate(tail))
    return math.exp(total / len(tail))


class FixedGenerations:
    """The real engine for log-probs; fixed texts for generations (what a model could say)."""

    def __init__(self, engine, text):
        self.engine, self.text = engine, text

    def generate(self, requests, progress=None):
        return [self.text(r) for r in requests]

    def logprobs(self, requests, progress=None):
        return self.engine.logprobs(requests, progress)


def test_prob_and_truth_ratio_count_the_eos_token(tiny, fake_tofu):  # noqa: F811
    model, tok = tiny
    assert tok.eos_token_id is not None
    bench = Tofu(TofuConfig(prompt_format="phi"), fake_tofu)
    outputs = run_plan(FixedGenerations(HFEngine(model, tok), lambda r: "x"), bench.eval_plan())
    scores = bench.score(outputs, None)
    for item, row in zip(FORGET, scores.per_sample["forget"]):
        prompt = f"Question: {item['question']}\nAnswer:"
        p = hand_mean_prob(model, tok, prompt, " " + item["answer"])
        assert row["probability"] == pytest.approx(p, rel=1e-5)
        # Without the EOS the value differs by far more than that tolerance (0.3% on this model).
        assert abs(hand_mean_prob(model, tok, prompt, " " + item["answer"], eos=False) / p - 1) > 1e-3
        pert = [hand_mean_prob(model, tok, prompt, " " + a) for a in item["perturbed_answer"]]
        ratio = math.prod(pert) ** (1 / len(pert)) / hand_mean_prob(model, tok, prompt, " " + item["paraphrased_answer"])
        assert row["truth_ratio"] == pytest.approx(ratio, rel=1e-5)
    # real authors: p(a) / (p(a) + sum p(pert)), and the truth ratio over the answer itself.
    for item, row in zip(REAL_AUTHORS, scores.per_sample["real_authors"]):
        prompt = f"Question: {item['question']}\nAnswer:"
        pa = hand_mean_prob(model, tok, prompt, " " + item["answer"])
        pert = [hand_mean_prob(model, tok, prompt, " " + a) for a in item["perturbed_answer"]]
        assert row["probability"] == pytest.approx(pa / (pa + sum(pert)), rel=1e-5)
        assert row["truth_ratio"] == pytest.approx(math.prod(pert) ** (1 / 3) / pa, rel=1e-5)


def test_a_generation_starting_with_a_newline_is_scored_as_tofu_scores_it(tiny, fake_tofu):  # noqa: F811
    model, tok = tiny
    said = {f"Question: {item['question']}\nAnswer:": "\n" + item["answer"] + "\n\nQuestion: more?" for item in FORGET}
    engine = FixedGenerations(HFEngine(model, tok), lambda r: said.get(r.prompt, "\n"))
    bench = Tofu(TofuConfig(prompt_format="phi"), fake_tofu)
    assert all(r.stop == () for r in bench.eval_plan().generations["gen_forget"])   # no stop strings
    scores = bench.score(run_plan(engine, bench.eval_plan()), None)
    rows = scores.per_sample["forget"]
    # Stripped, not cut: the whole answer is recalled (ROUGE-L recall 1), the rest is kept.
    assert [r["generation"] for r in rows] == [item["answer"] + "\n\nQuestion: more?" for item in FORGET]
    assert [r["rouge_l_recall"] for r in rows] == [1.0, 1.0]
    assert scores.deviations == []
    # The other splits answered only "\n": empty after stripping, so the record warns.
    assert any("'retain' generations are empty" in w for w in scores.warnings)
    assert not any("'forget'" in w for w in scores.warnings)


def test_newline_stop_is_an_opt_in_that_is_declared(fake_tofu):  # noqa: F811
    bench = Tofu(TofuConfig(prompt_format="phi", stop_at_newline=True), fake_tofu)
    assert bench.eval_plan().generations["gen_forget"][0].stop == ("\n", "Question:")
    assert TofuConfig().stop_at_newline is False


def test_degenerate_warning_needs_more_than_half_empty():
    assert degenerate_generations("x", ["a", "", " \n"]) and not degenerate_generations("x", ["a", "", "b", "\n"])
    assert degenerate_generations("x", []) == []


def test_auto_picks_chat_only_with_a_chat_template(tiny, fake_tofu):  # noqa: F811
    _, tok = tiny
    bench = Tofu(None, fake_tofu)
    bench.use_tokenizer(tok)
    assert not getattr(tok, "chat_template", None) and bench.resolved_settings() == {"prompt_format": "phi"}
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}" \
                        "{% if add_generation_prompt %}<assistant>{% endif %}"
    bench.use_tokenizer(tok)
    assert bench.resolved_settings() == {"prompt_format": "chat"}
    request = bench.eval_plan().logprobs["answer_forget"][0]
    assert request.prompt == ChatPrompt("Who is Ann Bo?") and request.continuation == "Ann Bo is a poet."
    # The template's rendering, then the answer's tokens and EOS are scored (this template adds no end-of-turn).
    ids, labels = encode(tok, request.prompt, request.continuation, 512, add_eos=True)
    prompt_text = "<user>Who is Ann Bo?<assistant>"
    n = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
    assert ids == tok(prompt_text + "Ann Bo is a poet.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert labels[:n] == [-100] * n and labels[n:] == ids[n:]
    # Generation requests carry the same prompt; a stop never applies by default.
    assert bench.eval_plan().generations["gen_forget"][0] == GenerationRequest(ChatPrompt("Who is Ann Bo?"), 200)
    assert isinstance(LogprobRequest(ChatPrompt("q"), "a", add_eos=True), LogprobRequest)


def test_prepared_models_are_keyed_and_trained_in_the_resolved_format(tiny, fake_tofu):  # noqa: F811
    from harness.run.prepare import prepared_key
    from harness.training.loop import TrainConfig

    _, tok = tiny
    bench = Tofu(None, fake_tofu)
    bench.use_tokenizer(tok)
    plain = prepared_key("m", bench, TrainConfig(), 0)
    assert bench.forget_train()[0].prompt == "Question: Who is Ann Bo?\nAnswer:"
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    bench.use_tokenizer(tok)
    assert prepared_key("m", bench, TrainConfig(), 0) != plain   # a model fine-tuned in phi format is not reused
    example = bench.forget_train()[0]
    assert example.prompt == ChatPrompt("Who is Ann Bo?") and example.answer == "Ann Bo is a poet."


def memorised_on_answers(model, tok, steps: int):
    """The tiny model after a few steps of plain next-token training on the forget answers, EOS
    left out, so that it predicts many answer tokens and rarely the EOS after them."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    texts = [tok(f"Question: {q['question']}\nAnswer: {q['answer']}", add_special_tokens=True)["input_ids"] for q in FORGET]
    model.train()
    for _ in range(steps):
        for ids in texts:
            ids = torch.tensor([ids])
            opt.zero_grad()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
    return model.eval()


def hand_matches(model, tok, prompt: str, answer: str) -> list[bool]:
    """Per scored position (answer tokens, then EOS): argmax of the logits == the token."""
    head = tok(prompt, add_special_tokens=True)["input_ids"]
    tail = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([head + tail])).logits[0]
    return [logits[len(head) + j - 1].argmax().item() == t for j, t in enumerate(tail)]


def hand_es(matches: list[bool]) -> float:
    """1 - k/L, k the first position from which every prediction matches (L when the last misses)."""
    length = len(matches)
    k = next((i for i in range(length) if all(matches[i:])), length)
    return 1 - k / length


def test_em_and_es_leave_out_the_eos_prediction_that_prob_counts(tiny, fake_tofu):  # noqa: F811
    model, tok = tiny
    model = memorised_on_answers(model, tok, steps=60)
    bench = Tofu(TofuConfig(prompt_format="phi"), fake_tofu)
    scores = bench.score(run_plan(FixedGenerations(HFEngine(model, tok), lambda r: "x"), bench.eval_plan()), None)
    differs = False
    for item, row in zip(FORGET, scores.per_sample["forget"]):
        prompt, answer = f"Question: {item['question']}\nAnswer:", " " + item["answer"]
        matches = hand_matches(model, tok, prompt, answer)
        answer_only = matches[:-1]   # the EOS prediction left out (OpenUnlearning's [:-1])
        assert row["exact_memorization"] == pytest.approx(sum(answer_only) / len(answer_only), abs=1e-12)
        assert row["extraction_strength"] == pytest.approx(hand_es(answer_only), abs=1e-12)
        # Prob still counts the EOS position.
        assert row["probability"] == pytest.approx(hand_mean_prob(model, tok, prompt, answer), rel=1e-5)
        differs |= (sum(matches) / len(matches), hand_es(matches)) != (sum(answer_only) / len(answer_only),
                                                                       hand_es(answer_only))
    # The setup can tell the two apart: counting the EOS prediction would give other values.
    assert differs
    assert 0 < scores.aggregates["em_f"] < 1 or scores.aggregates["es_f"] > 0
