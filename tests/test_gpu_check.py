"""scripts/gpu-check rehearsed on the CPU (--dry-run, random:tiny): every part gives its figures or
says why not, the import path needs neither rouge_score nor datasets, budgets are enforced."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.bench import gpu_check, workload
from harness.runtime.random_models import parameter_count

REPO = Path(__file__).resolve().parent.parent
# Runs the script as the GPU machine would, with rouge_score and datasets made unimportable
# (that machine lacks them): an import of either on the script's path fails the run.
BLOCKED = ("import runpy, sys; sys.modules['rouge_score'] = None; sys.modules['datasets'] = None; "
           "sys.argv = ['scripts/gpu-check'] + sys.argv[1:]; runpy.run_path('scripts/gpu-check', run_name='__main__')")


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu-check.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", BLOCKED, "--dry-run", "--out", str(out), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert out.is_file(), done.stderr[-3000:]
    return done, json.loads(out.read_text())


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_dry_run_gives_every_figure_without_rouge_or_datasets(tmp_path):
    done, record = _run(tmp_path, "--parts", "training,evaluation,decoding,precision")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert record["dry_run"] and record["model"] == "random:tiny"
    assert record["model_source"].startswith("random weights")
    parts = record["parts"]
    assert list(parts) == list(gpu_check.PARTS)
    assert parts["distributed"] == {"status": "skipped", "reason": "not asked for (--parts)"}
    for name in ("training", "evaluation", "decoding", "precision"):
        assert parts[name]["status"] == "ok", parts[name]
    for method in ("ga", "npo"):
        f = parts["training"]["methods"][method]
        assert all(_positive(f[k]) for k in ("step_s", "tokens_per_s", "peak_memory_mib", "bound_s", "fraction_of_bound"))
        assert f["tokens_per_step"] == 4 * 64 and f["policy_forwards"] == 1   # global batch 4 of 64-token items, one micro-batch
    ev = parts["evaluation"]
    assert ev["generation"]["texts_returned"] == 8 and _positive(ev["generation"]["tokens_per_s"])
    assert 8 <= ev["generation"]["tokens_generated"] <= ev["generation"]["new_tokens_budget"] == 8 * 8
    assert ev["logprobs"]["tokens"] == 16 * 64 and _positive(ev["logprobs"]["fraction_of_bound"])
    dec = parts["decoding"]
    assert all(_positive(dec[k]) for k in ("copy_bandwidth_gb_s", "ms_per_step", "streamed_gb_s", "fraction_of_bound"))
    assert dec["fraction_of_bound"] < 1.5   # measured against the bandwidth measured on the spot
    prec = parts["precision"]
    assert prec["scored_tokens"] > 0 and 0 < prec["largest_token_logprob_gap"] < 0.5
    # rouge_score was blocked: the aggregates say so instead of failing the part
    assert prec["aggregates"].startswith("skipped: rouge_score is not installed")
    for line in ("[training] ga:", "[evaluation] generation:", "[decoding]", "[precision] bf16 vs fp32", "gpu-check:"):
        assert line in done.stdout


def test_dry_run_distributed_part_launches_ddp_and_fsdp(tmp_path):
    done, record = _run(tmp_path, "--parts", "distributed")
    part = record["parts"]["distributed"]
    assert part["status"] == "ok", part
    for mode, sharded in (("ddp", False), ("fsdp", True)):
        assert part[mode]["status"] == "ok", part[mode]
        assert part[mode]["world_size"] == 2 and part[mode]["sharded"] is sharded and part[mode]["steps"] == 2
        assert _positive(part[mode]["step_s"])


def test_a_part_past_the_total_budget_is_skipped_with_a_line(tmp_path, capsys):
    out = tmp_path / "g.json"
    assert gpu_check.main(["--dry-run", "--out", str(out), "--parts", "precision", "--budget", "5"]) == 0
    part = json.loads(out.read_text())["parts"]["precision"]
    assert part["status"] == "skipped" and part["reason"].startswith("over the time budget")
    assert "[precision] skipped: over the time budget" in capsys.readouterr().out


def test_the_alarm_stops_a_part_at_its_budget():
    started = time.perf_counter()
    with pytest.raises(gpu_check.PartTimeout):
        with gpu_check.alarm(0.2):
            time.sleep(5)
    assert time.perf_counter() - started < 2


def test_no_cuda_and_bad_parts_are_refused_with_the_fix(capsys, monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.entry(["--out", os.devnull]) == 2
    assert "--dry-run" in capsys.readouterr().err
    assert gpu_check.entry(["--dry-run", "--parts", "trainng"]) == 2
    assert "unknown part(s) trainng" in capsys.readouterr().err


def test_work_counts_match_a_hand_count():
    # Llama-3.2-1B: 16 x (2 x 2048^2 + 2 x 2048 x 512 + 3 x 2048 x 8192 + 2 x 2048) + 128256 x 2048 + 2048
    assert parameter_count("random:1b") == 16 * (2 * 2048**2 + 2 * 2048 * 512 + 3 * 2048 * 8192 + 2 * 2048) + 128256 * 2048 + 2048
    assert parameter_count("random:7b") == 6_738_415_616      # Llama-2-7B's published count
    shape = workload.Shape(params=10, matmul_params=8, layers=2, hidden=4, kv_bytes_per_token=0)
    # forward over 6 tokens in sequences of 3: 2 x 8 x 6 + 4 x 2 x 4 x 3 x 6
    assert workload.forward_flops(shape, 6, 3) == 96 + 576
    # a step with no reference: 3 forwards at 1 FLOP/s plus 10 weights x 2 bytes x 4 tensors x 2 (read, write) at 1 B/s
    assert workload.training_step_bound(shape, 6, 3, 0, 2, 1.0, 1.0) == 3 * 672 + 160
    assert len(workload.forget_examples(3, 40)[0].answer) == 33 and workload.text(1, 50) == workload.text(1, 50)


def test_a_failed_launch_is_reported_by_the_ranks_error_not_the_launchers_summary():
    output = ("Traceback (most recent call last):\n  File \"x.py\", line 3\n"
              "torch.distributed.DistBackendError: NCCL error: invalid usage, Duplicate GPU detected\n"
              "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \nharness.bench.distributed_step FAILED\n")
    assert gpu_check._last_error(output).startswith("torch.distributed.DistBackendError: NCCL error")
    assert gpu_check._last_error("") == "no output"
