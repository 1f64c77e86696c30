"""The HF engine: batched results equal one-at-a-time results; log-probs equal direct sums."""
import pytest
import torch
import torch.nn.functional as F

from harness.engines.hf import HFEngine

from harness.engines.base import GenerationRequest, LogprobRequest
from harness.errors import HarnessError
from harness.engines.plan import EvalPlan, run_plan

PROMPTS = ["Question: a?\nAnswer:", "Hi", "A much longer prompt that needs left padding in a batch:"]


def test_batched_generation_equals_single_generation(tiny):
    model, tok = tiny
    requests = [GenerationRequest(p, 12) for p in PROMPTS]
    batched = HFEngine(model, tok, batch_size=8).generate(requests)
    single = [HFEngine(model, tok, batch_size=1).generate([r])[0] for r in requests]
    assert batched == single
    assert all(isinstance(t, str) and t for t in batched)


def test_generation_is_cut_at_stop_strings(tiny):
    model, tok = tiny
    free = HFEngine(model, tok).generate([GenerationRequest(PROMPTS[0], 20)])[0]
    stop = free[3:5] if len(free) >= 5 else free[-1:]
    cut = HFEngine(model, tok).generate([GenerationRequest(PROMPTS[0], 20, (stop,))])[0]
    assert cut == free[: free.index(stop)]


def test_logprobs_match_direct_computation(tiny):
    model, tok = tiny
    req = LogprobRequest("Question: who?\nAnswer:", " Zorb")
    other = LogprobRequest("", "an unconditioned text of some length")
    scores = HFEngine(model, tok, batch_size=2).logprobs([req, other])
    p = tok(req.prompt)["input_ids"]
    a = tok(req.continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=torch.tensor([p + a])).logits[0].float(), -1)
    expected = [logp[len(p) + j - 1, t].item() for j, t in enumerate(a)]
    assert len(scores[0].logprobs) == len(a)
    assert max(abs(x - y) for x, y in zip(scores[0].logprobs, expected)) < 1e-4
    rows = logp[len(p) - 1 : len(p) + len(a) - 1]
    assert scores[0].greedy_match == [rows[j].argmax().item() == t for j, t in enumerate(a)]
    mu = (rows.exp() * rows).sum(-1)
    assert max(abs(x - y) for x, y in zip(scores[0].mu, mu.tolist())) < 1e-4
    # sigma is the standard deviation of log p (not its variance): sqrt(E[(log p - mu)^2])
    sigma = (rows.exp() * (rows - mu.unsqueeze(-1)).square()).sum(-1).sqrt()
    assert (sigma - sigma.square()).abs().min().item() > 0.1   # a variance would not pass for it
    assert max(abs(x - y) for x, y in zip(scores[0].sigma, sigma.tolist())) < 1e-3
    # An empty prompt is conditioned on BOS, so every text token is scored.
    assert len(scores[1].logprobs) == len(tok(other.continuation, add_special_tokens=False)["input_ids"])


def test_eos_and_full_context_are_request_settings(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok, max_length=12)
    plain, with_eos = engine.logprobs([LogprobRequest("Q:", " Zorb"), LogprobRequest("Q:", " Zorb", add_eos=True)])
    p = tok("Q:")["input_ids"]
    a = tok(" Zorb", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=torch.tensor([p + a])).logits[0].float(), -1)
    assert len(with_eos.logprobs) == len(plain.logprobs) + 1
    assert with_eos.logprobs[-1] == pytest.approx(logp[len(p) + len(a) - 2, tok.eos_token_id].item(), abs=1e-4)
    text = "a text longer than twelve tokens"
    cut, whole = engine.logprobs([LogprobRequest("", text), LogprobRequest("", text, full_context=True)])
    assert len(cut.logprobs) == 12 - 1 and len(whole.logprobs) == len(tok(text, add_special_tokens=False)["input_ids"])
    assert whole.logprobs[:11] == pytest.approx(cut.logprobs, abs=1e-5)


def test_clean_up_spaces_is_a_decoding_setting(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    raw, clean = engine.generate([GenerationRequest(PROMPTS[0], 12), GenerationRequest(PROMPTS[0], 12, clean_up_spaces=True)])
    assert clean == tok.clean_up_tokenization(raw)


def test_clean_up_decoding_is_muses_on_fixed_ids(tiny):
    """transformers 5.x ignores clean_up_tokenization_spaces for this BPE tokenizer; the shared
    decoding must still give what transformers 4.x gave MUSE (expected text written by hand)."""
    model, tok = tiny
    engine = HFEngine(model, tok)
    ids = tok("a , b . c ? d ! I ' m, I 'm , do n't , it 's , we 've , they 're", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "a , b . c ? d ! I ' m, I 'm , do n't , it 's , we 've , they 're"
    assert engine.decode(ids, GenerationRequest("", 1)) == tok.decode(ids)
    assert engine.decode(ids, GenerationRequest("", 1, clean_up_spaces=True)) == (
        "a, b. c? d! I'm, I'm, don't, it's, we've, they're")
    # the stop cut comes after the clean-up
    assert engine.decode(ids, GenerationRequest("", 1, ("c?",), clean_up_spaces=True)) == "a, b. "


def test_plan_runs_each_unique_request_once(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    calls = []
    original = engine.logprobs
    engine.logprobs = lambda reqs, progress=None: calls.append(len(reqs)) or original(reqs)
    same = LogprobRequest("Q:", " A")
    plan = EvalPlan(logprobs={"prob": [same], "es": [same, LogprobRequest("Q:", " B")]})
    out = run_plan(engine, plan)
    assert calls == [2]
    assert out.logprobs["prob"][0].logprobs == out.logprobs["es"][0].logprobs


class OOMAboveTwo(torch.nn.Module):
    """Wraps a model so any forward on more than two sequences raises an out-of-memory error."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.generation_config = model.generation_config

    def forward(self, input_ids, **kw):
        if input_ids.shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(input_ids=input_ids, **kw)

    def generate(self, input_ids, **kw):
        if input_ids.shape[0] > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner.generate(input_ids=input_ids, **kw)


def test_out_of_memory_halves_the_batch_and_gives_the_same_answers(tiny):
    model, tok = tiny
    requests = [LogprobRequest("Q:", f" answer {i}") for i in range(7)]
    expected = HFEngine(model, tok, batch_size=8).logprobs(requests)
    engine = HFEngine(OOMAboveTwo(model), tok, batch_size=8)
    got = engine.logprobs(requests)
    assert engine.batch_size == 2 and engine.oom_retries == 2
    for g, e in zip(got, expected):
        assert g.logprobs == pytest.approx(e.logprobs, abs=1e-5)
    gens = HFEngine(OOMAboveTwo(model), tok, batch_size=4).generate([GenerationRequest(p, 5) for p in PROMPTS])
    assert gens == HFEngine(model, tok, batch_size=1).generate([GenerationRequest(p, 5) for p in PROMPTS])


def test_out_of_memory_at_batch_size_one_is_a_clear_error(tiny):
    model, tok = tiny

    class AlwaysOOM(OOMAboveTwo):
        def forward(self, input_ids, **kw):
            raise RuntimeError("CUDA out of memory.")

    with pytest.raises(HarnessError, match="out of memory during evaluation even with batch size 1"):
        HFEngine(AlwaysOOM(model), tok, batch_size=4).logprobs([LogprobRequest("Q:", " A")])


def _max_gap(a, b):
    return max((abs(x - y) for s, t in zip(a, b) for x, y in zip(s.logprobs + s.mu, t.logprobs + t.mu)), default=0.0)


@pytest.mark.parametrize("batch_size", [2, 5, 32])
def test_shared_prompt_pass_equals_whole_text_pass(tiny, batch_size):
    """Five answers under each of three prompts, one unshared prompt and one bare text."""
    model, tok = tiny
    requests = [LogprobRequest(p, a) for p in ("Question: who is Zed?\nAnswer:", "Q: x?\nA:", "A much longer prompt, to pad:")
                for a in (" Zorb", " a longer answer here", " no", " the fourth one, longer still", " five")]
    requests += [LogprobRequest("", "a whole text"), LogprobRequest("Solo prompt", " solo")]
    engine = HFEngine(model, tok, batch_size=batch_size)
    calls = []
    original = engine._score_shared_prompts
    engine._score_shared_prompts = lambda prompts, rows: calls.append(len(prompts)) or original(prompts, rows)
    shared = engine.logprobs(requests)
    whole = HFEngine(model, tok, batch_size=batch_size, share_prompts=False).logprobs(requests)
    assert calls and sum(calls) <= 3 * (1 + 5 // batch_size)   # each prompt ran once per batch it appears in
    assert [len(s.logprobs) for s in shared] == [len(s.logprobs) for s in whole]
    assert [s.greedy_match for s in shared] == [s.greedy_match for s in whole]
    assert _max_gap(shared, whole) < 1e-4


def test_head_on_scored_positions_only_equals_full_logits(tiny):
    model, tok = tiny
    requests = [LogprobRequest("Question: a?\nAnswer:", " yes it is"), LogprobRequest("", "an unconditioned text")]
    fast = HFEngine(model, tok, share_prompts=False)
    full = HFEngine(model, tok, share_prompts=False)
    full.head_at_kept_positions = False
    assert fast.head_at_kept_positions
    assert _max_gap(fast.logprobs(requests), full.logprobs(requests)) < 1e-5


def test_auto_batch_size_follows_the_memory_budget_and_is_32_on_cpu(tiny):
    from harness.engines.hf import CPU_BATCH, auto_batch_size, memory_budget

    model, tok = tiny
    assert auto_batch_size(model, torch.device("cpu")) == CPU_BATCH == HFEngine(model, tok, batch_size=0).batch_size
    gpu = torch.device("cuda")
    c = model.config   # hand count: KV cache + 12 hidden-sized and 4 MLP-sized fp32 activations per token
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4 \
        + (12 * c.hidden_size + 4 * c.intermediate_size) * 4
    free = 10 * per_token * 512
    assert auto_batch_size(model, gpu, free_bytes=free) == 6          # 60% of room for 10 sequences
    assert auto_batch_size(model, gpu, free_bytes=free, budget_gb=3 * per_token * 512 / 2**30) == 3   # explicit budget
    assert auto_batch_size(model, gpu, free_bytes=1) == 1             # never below one
    assert auto_batch_size(model, gpu, free_bytes=10**15) == 256      # never above 256
    assert memory_budget(torch.device("cpu")) == int(1.5 * 2**30)
    assert memory_budget(gpu, 0.0, free_bytes=1000) == 600 and memory_budget(gpu, 2.0) == 2 * 2**30


def test_generation_from_a_shared_prefix_cache_equals_plain_generation(tiny):
    """Few-shot prompts (MUSE KnowMem) share a long prefix: it runs once per batch of questions."""
    model, tok = tiny
    shots = "Question: What is the capital of the made-up land?\nAnswer: Zorbia\n\n" * 2   # > 64 byte tokens
    questions = ["Who?", "What is the longest river there, by far?", "When?", "Why not?"]
    requests = [GenerationRequest(f"{shots}Question: {q}\nAnswer:", 8, ("\n",)) for q in questions]
    requests += [GenerationRequest("A short unshared prompt:", 8, ("\n",))]
    engine = HFEngine(model, tok, batch_size=3)
    built = []
    original = engine._prefix_cache
    engine._prefix_cache = lambda prefix, caches: built.append(len(prefix)) or original(prefix, caches)
    shared = engine.generate(requests)
    plain = HFEngine(model, tok, batch_size=3, share_prompts=False).generate(requests)
    single = [HFEngine(model, tok, batch_size=1, share_prompts=False).generate([r])[0] for r in requests]
    assert shared == plain == single
    assert built and min(built) >= len(tok(shots)["input_ids"])   # the whole few-shot block was cached


@pytest.mark.parametrize("head_only", [True, False])
def test_chunked_scoring_gives_the_same_scores_as_one_pass(tiny, head_only):
    """The vocabulary-sized work runs a few positions at a time; outputs agree to float rounding
    (a matrix product over 3 rows may round differently from one over all of them)."""
    model, tok = tiny
    requests = [LogprobRequest("", "a whole text scored at every position, long enough for several chunks"),
                LogprobRequest("Question: who?\nAnswer:", " Zorb the third"), LogprobRequest("Question: who?\nAnswer:", " no")]
    whole = HFEngine(model, tok, batch_size=8)
    whole.chunk = 10**6
    chunked = HFEngine(model, tok, batch_size=8)
    chunked.chunk = 3
    seen = []
    original = chunked._logits
    chunked._logits = lambda features: seen.append(features.shape[0]) or original(features)
    whole.head_at_kept_positions = chunked.head_at_kept_positions = head_only
    a, b = chunked.logprobs(requests), whole.logprobs(requests)
    assert [s.greedy_match for s in a] == [s.greedy_match for s in b]
    for field, tolerance in (("logprobs", 1e-5), ("mu", 1e-5), ("sigma", 1e-4)):   # sigma: E[r^2] - mu^2 cancels
        assert max(abs(x - y) for s, t in zip(a, b) for x, y in zip(getattr(s, field), getattr(t, field))) < tolerance
    assert seen and max(seen) == 3 and sum(seen) > 3 * 10   # many chunks, none larger than asked


def test_whole_texts_without_the_padding_mask_score_the_same(tiny):
    """Right padding in a causal model: no real token sees the pads, so the mask changes nothing."""
    model, tok = tiny
    requests = [LogprobRequest("", "a short text"), LogprobRequest("", "a much longer text, padded far less than the other")]
    masked = HFEngine(model, tok, share_prompts=False)
    masked.causal_only = False
    a, b = HFEngine(model, tok, share_prompts=False).logprobs(requests), masked.logprobs(requests)
    assert [s.greedy_match for s in a] == [s.greedy_match for s in b]
    assert _max_gap(a, b) < 1e-6


def test_a_small_memory_budget_gives_smaller_batches_and_the_same_scores(tiny):
    from harness.engines.hf import token_bytes

    model, tok = tiny
    requests = [LogprobRequest("", "x" * n) for n in (40, 80, 120, 160)] + [LogprobRequest("Q:", f" answer {i}") for i in range(4)]
    roomy = HFEngine(model, tok, batch_size=8)
    # Room (3/4 of the budget) for about 130 tokens of the tiny model: one long text per batch.
    tight = HFEngine(model, tok, batch_size=8, memory_budget_gb=130 * token_bytes(model) / 0.75 / 2**30)
    rows = []
    original = tight._score_group
    tight._score_group = lambda encoded: rows.append([len(ids) for ids, _ in encoded]) or original(encoded)
    a, b = roomy.logprobs(requests), tight.logprobs(requests)
    assert all(len(r) * max(r) <= 130 or len(r) == 1 for r in rows) and len(rows) >= 3
    assert [s.greedy_match for s in a] == [s.greedy_match for s in b]
    assert _max_gap(a, b) < 1e-5


def test_finished_rows_leave_the_batch_and_the_text_equals_model_generate(tiny):
    model, tok = tiny
    free = HFEngine(model, tok, batch_size=1).generate([GenerationRequest(p, 24) for p in PROMPTS])
    # Stops that end each row at a different step (one row never stops), like MUSE KnowMem answers.
    stops = (free[0][2:4], free[2][9:11])
    requests = [GenerationRequest(p, 24, stops) for p in PROMPTS] + [GenerationRequest(p, 7) for p in PROMPTS]
    engine = HFEngine(model, tok, batch_size=8)
    rows = []
    original = engine._last_logits
    engine._last_logits = lambda ids, *rest: rows.append(ids.shape[0]) or original(ids, *rest)
    fast = engine.generate(requests)
    plain = HFEngine(model, tok, batch_size=8)
    plain.drop_finished = False   # transformers' generate with the full-text stop check
    assert fast == plain.generate(requests)
    assert fast[0] == free[0][: free[0].index(stops[0])] and len(fast[2]) < len(free[2])
    assert rows[:7] == [3] * 7                # the 7-token batch first (batches sorted by settings)
    stopping = rows[7:]                       # then the stop-string batch: rows leave as they end
    assert stopping[0] == 3 and stopping[-1] == 1 and stopping == sorted(stopping, reverse=True)


def test_incremental_stop_check_matches_the_whole_text_check(tiny):
    from harness.engines.hf import StopOnStrings

    model, tok = tiny
    engine = HFEngine(model, tok)
    ids = tok("ab\nQuestion: what", add_special_tokens=False)["input_ids"]
    stops = ("\nQuestion", "zz")
    full = StopOnStrings(tok, stops, 0)
    for end in range(1, len(ids) + 1):
        whole = bool(full(torch.tensor([ids[:end]]), None)[0])
        assert engine._ends_in_stop(ids[:end][-(max(map(len, stops)) + 8):], stops) == whole
