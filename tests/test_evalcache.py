"""The evaluation cache: exact round trips, hits only for identical weights, and a run that reuses it."""
import json

import pytest
import torch

from harness.cli import main
from harness.engines.hf import HFEngine
from harness.engines.base import GenerationRequest, LogprobRequest, TokenScores
from harness.engines.cache import CachedEngine, EvalCache, _decode, _encode, model_key

REQUESTS = [LogprobRequest("Question: who?\nAnswer:", " Zorb"), LogprobRequest("", "a text of its own")]
PROMPTS = [GenerationRequest("Question: who?\nAnswer:", 6, ("\n",)), GenerationRequest("Hi", 4)]


class Counting:
    """An engine that counts the requests it had to answer."""

    def __init__(self, engine):
        self.engine, self.asked = engine, []

    def generate(self, requests, progress=None):
        self.asked += requests
        return self.engine.generate(requests)

    def logprobs(self, requests, progress=None):
        self.asked += requests
        return self.engine.logprobs(requests)


def test_stored_values_come_back_bit_for_bit():
    scores = TokenScores([-0.1234567, -3.5], [True, False], [-1.25, -0.000123], [0.5, 2.0])
    float32 = TokenScores(*(torch.tensor(x, dtype=torch.float32).tolist() if i != 1 else x
                            for i, x in enumerate([scores.logprobs, scores.greedy_match, scores.mu, scores.sigma])))
    assert _decode(_encode(float32)) == float32
    assert _decode(_encode("naïve café\n")) == "naïve café\n"
    assert _decode(_encode("")) == ""
    empty = TokenScores([], [], [], [])
    assert _decode(_encode(empty)) == empty


def test_second_evaluation_of_the_same_weights_is_served_from_the_cache(tiny, tmp_path):
    model, tok = tiny
    cache = EvalCache(tmp_path / "evals.sqlite")
    key = model_key(model, tok, HFEngine(model, tok).settings())
    first = Counting(HFEngine(model, tok))
    fresh_lp = CachedEngine(first, cache, key).logprobs(REQUESTS)
    fresh_gen = CachedEngine(first, cache, key).generate(PROMPTS)
    assert len(first.asked) == 4

    again = Counting(HFEngine(model, tok))
    cached = CachedEngine(again, cache, key)
    assert cached.logprobs(REQUESTS) == fresh_lp       # exact equality, not approximate
    assert cached.generate(PROMPTS) == fresh_gen
    assert again.asked == []
    assert cached.counts == {"cache_hits": 4, "cache_misses": 4}  # the shared cache object counts both rounds

    # One new request among stored ones: only it is computed.
    extra = LogprobRequest("Q:", " new")
    out = cached.logprobs([REQUESTS[0], extra])
    assert again.asked == [extra] and out[0] == fresh_lp[0]


def test_changed_weights_or_settings_miss(tiny, tmp_path):
    model, tok = tiny
    settings = HFEngine(model, tok).settings()
    before = model_key(model, tok, settings)
    assert model_key(model, tok, {**settings, "max_length": 7}) != before
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[3, 5] += 1e-3   # one value, deep inside the model
    assert model_key(model, tok, settings) != before


def test_another_cpu_thread_count_misses(tiny):
    """1 and 2 threads round log-probs differently: a CPU cell re-run with another count is scored anew."""
    model, tok = tiny
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = HFEngine(model, tok).settings()
        torch.set_num_threads(2)
        two = HFEngine(model, tok).settings()
    finally:
        torch.set_num_threads(previous)
    assert one["cpu_threads"] == 1 and two["cpu_threads"] == 2
    assert {k: v for k, v in one.items() if k != "cpu_threads"} == {k: v for k, v in two.items() if k != "cpu_threads"}
    assert model_key(model, tok, one) != model_key(model, tok, two)


def test_rerun_reuses_outputs_and_no_eval_cache_does_not(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    quick = ["--benchmark", "synthetic", "--model", "tiny-random", "--limit", "2", "--methods", "ga",
             "--set", "finetune.epochs=1", "--set", "train.epochs=1", "--no-save-models"]
    assert main(["run", "--results-dir", str(tmp_path / "a"), *quick]) == 0
    assert main(["run", "--results-dir", str(tmp_path / "b"), *quick]) == 0
    assert main(["run", "--results-dir", str(tmp_path / "c"), "--no-eval-cache", *quick]) == 0

    def record(folder, method):
        return json.loads(next((tmp_path / folder).glob(f"synthetic/tiny-random/{method}/*.json")).read_text())

    for method in ("target", "retain", "ga"):
        a, b, c = record("a", method), record("b", method), record("c", method)
        assert a["eval_counts"]["cache_hits"] == 0 and a["eval_counts"]["cache_misses"] > 0
        # Training is deterministic on CPU, so even the unlearned model has the same weights.
        assert b["eval_counts"]["cache_misses"] == 0 and b["eval_counts"]["cache_hits"] == a["eval_counts"]["cache_misses"]
        assert "cache_hits" not in c["eval_counts"]
        assert a["aggregates"] == b["aggregates"] == pytest.approx(c["aggregates"], abs=1e-9)
        assert a["per_sample"] == b["per_sample"]


def test_a_changed_scoring_convention_misses_the_cache(tiny, tmp_path):
    """Outputs stored under an older convention (e.g. answers scored without EOS) are never served."""
    import harness.engines.cache as evalcache

    model, tok = tiny
    cache = EvalCache(tmp_path / "evals.sqlite")
    settings = HFEngine(model, tok).settings()
    old_key = model_key(model, tok, settings, convention=evalcache.SCORING_CONVENTION - 1)
    CachedEngine(Counting(HFEngine(model, tok)), cache, old_key).logprobs(REQUESTS)

    new_key = model_key(model, tok, settings)
    assert new_key != old_key
    fresh = Counting(HFEngine(model, tok))
    CachedEngine(fresh, cache, new_key).logprobs(REQUESTS)
    assert fresh.asked == list(REQUESTS)   # every request computed again, none served from the old entries
    # The same convention hits.
    again = Counting(HFEngine(model, tok))
    CachedEngine(again, cache, new_key).logprobs(REQUESTS)
    assert again.asked == []


class Echo:
    """An engine whose answer names the whole request, so a stale answer is visible."""

    def __init__(self):
        self.asked = []

    def generate(self, requests, progress=None):
        self.asked += requests
        return [repr(r) for r in requests]

    def logprobs(self, requests, progress=None):
        self.asked += requests
        return [TokenScores([-float(len(repr(r)))], [r.add_eos], [float(r.full_context)], [1.0]) for r in requests]


GEN_VARIANTS = [GenerationRequest("Q:", 8, ("\n",), clean_up_spaces=True), GenerationRequest("Q:", 9, ("\n",)),
                GenerationRequest("Q:", 8, ("\n\n",)), GenerationRequest("Q:", 8, ()), GenerationRequest("Q!", 8, ("\n",))]
LOGPROB_VARIANTS = [LogprobRequest("Q:", " a", add_eos=True), LogprobRequest("Q:", " a", full_context=True),
                    LogprobRequest("Q:", " a", needs_distribution=True), LogprobRequest("Q:", " b"),
                    LogprobRequest("Q!", " a")]


@pytest.mark.parametrize("variant", GEN_VARIANTS + LOGPROB_VARIANTS, ids=repr)
def test_a_request_differing_in_one_setting_is_not_served_the_stored_answer(tmp_path, variant):
    """Each variant differs from the stored request in one field only (EOS, full context, stop,
    budget, clean-up, distribution, text): it must be computed, and get its own answer."""
    base = GenerationRequest("Q:", 8, ("\n",)) if isinstance(variant, GenerationRequest) else LogprobRequest("Q:", " a")
    cache = EvalCache(tmp_path / "evals.sqlite")
    run = (lambda e, r: e.generate(r)) if isinstance(variant, GenerationRequest) else (lambda e, r: e.logprobs(r))
    stored = run(CachedEngine(Echo(), cache, "m"), [base])
    engine = Echo()
    assert run(CachedEngine(engine, cache, "m"), [variant]) == run(Echo(), [variant])   # asked alone
    assert engine.asked == [variant]
    again = Echo()
    assert run(CachedEngine(again, cache, "m"), [base, variant]) == stored + run(Echo(), [variant])
    assert again.asked == []   # both stored now, each under its own key


def test_request_keys_are_the_kind_then_every_field_as_sorted_json():
    """Written out by hand: a stored answer is found again only under this exact text, so the format
    is pinned (a request made before ``grad_norm`` existed keeps its key), and every field is in it."""
    from harness.data.chat import ChatPrompt
    from harness.engines.cache import request_key

    assert request_key(GenerationRequest("Q:", 8, ("\n",))) == \
        'gen{"clean_up_spaces": false, "max_new_tokens": 8, "prompt": "Q:", "stop": ["\\n"]}'
    assert request_key(LogprobRequest("Q:", " a")) == \
        'logprob{"add_eos": false, "continuation": " a", "full_context": false, "needs_distribution": false, "prompt": "Q:"}'
    assert request_key(LogprobRequest("Q:", " a", add_eos=True, full_context=True, needs_distribution=True,
                                      grad_norm=True)) == \
        ('logprob{"add_eos": true, "continuation": " a", "full_context": true, "grad_norm": true, '
         '"needs_distribution": true, "prompt": "Q:"}')
    assert request_key(LogprobRequest(ChatPrompt("Q:", system="Be brief."), " a")) == \
        ('logprob{"add_eos": false, "continuation": " a", "full_context": false, "needs_distribution": false, '
         '"prompt": {"date_string": "", "system": "Be brief.", "user": "Q:"}}')
    assert request_key(GenerationRequest(ChatPrompt("Q:"), 8)) != request_key(GenerationRequest("Q:", 8))
