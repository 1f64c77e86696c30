"""``scripts/gpu-check``: the CUDA path measured in one command, on random weights of a real architecture.

Made for a GPU lent for minutes with no network: nothing is downloaded (``random:<architecture>``
models, the byte-level tokenizer), nothing beyond the project's source is needed, and nothing on
the path imports rouge_score or datasets. Five parts, each with its own time budget (a part past
its budget is stopped by an alarm and reported; a part that would not fit in what is left of the
total budget is skipped with a line):

- training: step time, tokens/s and peak memory of GA and NPO on the unlearning loop, bf16;
- evaluation: generation and log-prob throughput of the HF engine;
- decoding: one sequence's decoding against the copy bandwidth measured on the spot (the bandwidth
  line of ``harness bench``);
- distributed: two processes (data-parallel, then FSDP) under ``torch.distributed.run``, or the
  reason the launch failed;
- precision: the same tiny model's scores in bf16 and fp32.

Each figure comes with the least time the counted work can take at the device's limit
(``harness/bench/workload.py``; H100 data-sheet figures unless ``--flops``/``--bandwidth`` say
otherwise; decoding uses the measured bandwidth), so the fraction of the limit is printed beside
the time. ``--dry-run`` runs every part on the CPU with ``random:tiny`` in seconds (CI does), so
the script cannot rot before a GPU is lent. Every figure describes speed only: the weights are random.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from harness.bench import workload
from harness.bench.report import ForwardCounter, peak_memory_mb, reset_peak_memory
from harness.engines.base import GenerationRequest, LogprobRequest
from harness.engines.hf import HFEngine
from harness.engines.roofline import copy_bandwidth, kv_bytes_per_token, measure_decoding, streamed_weight_bytes
from harness.errors import HarnessError
from harness.runtime.models import load_model
from harness.runtime.random_models import RANDOM_SOURCE, architecture, source_text

PARTS = ("training", "evaluation", "decoding", "distributed", "precision")


@dataclass
class Settings:
    """What each part runs; ``FULL`` on a GPU, ``DRY`` on the CPU in CI."""

    model: str = "random:1b"            # training, evaluation, decoding
    distributed_model: str = "random:135m"
    precision_model: str = "random:tiny"
    methods: tuple[str, ...] = ("ga", "npo")
    train_steps: int = 4                 # the first pays one-off costs; the median of the others is reported
    train_batch: int = 8                 # global batch (one micro-batch)
    train_length: int = 512              # tokens per example
    gen_requests: int = 64
    gen_prompt: int = 128
    gen_tokens: int = 64
    logprob_requests: int = 256
    logprob_length: int = 512
    eval_batch: int = 32
    decode_prompt: int = 128
    decode_steps: int = 64
    distributed_steps: int = 3
    distributed_length: int = 256
    precision_limit: int | None = None   # synthetic benchmark items (None: all)
    budget_s: float = 540.0              # all parts together (the lend is 15 minutes, start-up included)
    part_budget_s: dict = field(default_factory=lambda: {
        "training": 120.0, "evaluation": 120.0, "decoding": 60.0, "distributed": 180.0, "precision": 60.0})


FULL = Settings()
DRY = Settings(model="random:tiny", distributed_model="random:tiny", train_steps=3, train_batch=4, train_length=64,
               gen_requests=8, gen_prompt=16, gen_tokens=8, logprob_requests=16, logprob_length=64, eval_batch=8,
               decode_prompt=16, decode_steps=8, distributed_steps=2, distributed_length=32, precision_limit=2,
               budget_s=240.0, part_budget_s={"training": 60.0, "evaluation": 30.0, "decoding": 30.0,
                                              "distributed": 120.0, "precision": 30.0})


class PartTimeout(Exception):
    pass


@contextlib.contextmanager
def alarm(seconds: float):
    """Raise ``PartTimeout`` in this (main) thread after ``seconds``; nothing where signals are unavailable."""
    if not hasattr(signal, "setitimer") or seconds <= 0:
        yield
        return

    def fire(signum, frame):
        raise PartTimeout(f"stopped at its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fraction(bound_s: float, measured_s: float | None) -> float | None:
    return bound_s / measured_s if measured_s else None


class Check:
    """Runs the parts in order, prints a line per figure, collects them for the JSON file."""

    def __init__(self, settings: Settings, device: torch.device, flops: float, bandwidth: float, out=print):
        self.s, self.device, self.flops, self.bandwidth, self.out = settings, device, flops, bandwidth, out
        self.started = time.perf_counter()
        self.parts: dict[str, dict] = {}

    # --- the frame: budgets, skips, failures ---------------------------------------------------

    def run(self, names: tuple[str, ...]) -> dict:
        for name in PARTS:
            if name not in names:
                self._skip(name, "not asked for (--parts)")
                continue
            budget = self.s.part_budget_s[name]
            used = time.perf_counter() - self.started
            if used + budget > self.s.budget_s:
                self._skip(name, f"over the time budget: {used:.0f} s used, {budget:.0f} s more would pass "
                                 f"the total of {self.s.budget_s:.0f} s")
                continue
            began = time.perf_counter()
            try:
                with alarm(budget):
                    figures = getattr(self, f"part_{name}")()
                status, reason = "ok", None
            except PartTimeout as exc:
                figures, status, reason = {}, "over budget", str(exc)
            except Exception as exc:   # one part's failure must not hide the others' figures
                figures, status, reason = {}, "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            finally:
                self._release()
            seconds = time.perf_counter() - began
            self.parts[name] = {"status": status, "seconds": round(seconds, 2), "budget_s": budget, **figures}
            if reason:
                self.parts[name]["reason"] = reason
                self.out(f"[{name}] {status}: {reason}")
            self.out(f"[{name}] {status} in {seconds:.1f} s (budget {budget:.0f} s)")
        return self.parts

    def _skip(self, name: str, reason: str) -> None:
        self.parts[name] = {"status": "skipped", "reason": reason}
        self.out(f"[{name}] skipped: {reason}")

    def _release(self) -> None:
        import gc

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _load(self, spec: str):
        loaded = load_model(spec, self.device)
        _sync(self.device)
        return loaded

    # --- the parts ---------------------------------------------------------------------------

    def part_training(self) -> dict:
        """A few optimiser steps of each method on a fresh model; the median step after the first."""
        from harness.registry import METHODS
        from harness.training.loop import TrainConfig, train

        s = self.s
        cfg = TrainConfig(lr=1e-5, max_steps=s.train_steps, global_batch=s.train_batch, micro_batch=s.train_batch,
                          max_length=s.train_length, weight_decay=0.01)
        forget = workload.forget_examples(s.train_batch * s.train_steps, s.train_length)
        figures = {}
        for name in s.methods:
            loaded = self._load(s.model)
            shape = workload.Shape.of(loaded.model)
            element = next(loaded.model.parameters()).element_size()
            counter = ForwardCounter(loaded.model)
            marks: list[tuple[float, int, int]] = []

            def mark(optimiser, args, kwargs):
                _sync(self.device)
                marks.append((time.perf_counter(), counter.policy, counter.reference))

            hook = register_optimizer_step_post_hook(mark)
            reset_peak_memory(self.device)
            try:
                method = METHODS.get(name)(METHODS.get(name).Config())
                result = train(loaded.model, loaded.tokenizer, method, forget, None, cfg, seed=0)
            finally:
                hook.remove()
                counter.close()
            peak = peak_memory_mb(self.device)
            steps = [(b[0] - a[0], b[1] - a[1], b[2] - a[2]) for a, b in zip(marks, marks[1:])]
            if not steps:
                raise RuntimeError(f"{name}: fewer than two optimiser steps ({result.status})")
            step_s = statistics.median(t for t, _, _ in steps)
            policy, reference = steps[-1][1], steps[-1][2]
            tokens = result.tokens / max(1, result.steps)
            bound = workload.training_step_bound(shape, int(tokens), s.train_length, reference / max(1, policy),
                                                 element, self.flops, self.bandwidth)
            figures[name] = {"step_s": round(step_s, 4), "tokens_per_step": tokens, "tokens_per_s": round(tokens / step_s, 1),
                             "peak_memory_mib": round(peak), "policy_forwards": policy, "reference_forwards": reference,
                             "dtype": str(next(loaded.model.parameters()).dtype).replace("torch.", ""),
                             "bound_s": bound, "fraction_of_bound": _fraction(bound, step_s)}
            self.out(f"[training] {name}: {step_s * 1000:.1f} ms per step ({tokens:.0f} tokens, {tokens / step_s:.0f} tok/s), "
                     f"peak {peak:.0f} MiB, {figures[name]['dtype']}; bound {bound * 1000:.3g} ms "
                     f"({100 * bound / step_s:.1f}% of the matrix-rate limit)")
            del loaded, method, counter
            self._release()
        return {"model": s.model, "methods": figures}

    def _engine(self, loaded):
        return HFEngine(loaded.model, loaded.tokenizer, self.s.eval_batch, max(self.s.logprob_length, self.s.gen_prompt) + 64)

    def part_evaluation(self) -> dict:
        """Generation and log-prob requests on the HF engine, after a warm-up of each."""
        s = self.s
        loaded = self._load(s.model)
        shape = workload.Shape.of(loaded.model)
        element = next(loaded.model.parameters()).element_size()
        gen = [GenerationRequest(workload.text(1000 + i, s.gen_prompt), s.gen_tokens) for i in range(s.gen_requests)]
        scored = [LogprobRequest("", workload.text(5000 + i, s.logprob_length)) for i in range(s.logprob_requests)]
        engine = self._engine(loaded)
        engine.generate(gen[:2])
        engine.logprobs(scored[:2])
        reset_peak_memory(self.device)
        _sync(self.device)
        rows: list[int] = []   # each call of the output head during generation yields one token per row
        counting = loaded.model.get_output_embeddings().register_forward_pre_hook(
            lambda module, args: rows.append(int(args[0].shape[0])))
        began = time.perf_counter()
        try:
            texts = engine.generate(gen)
            _sync(self.device)
        finally:
            counting.remove()
        gen_s = time.perf_counter() - began
        gen_peak = peak_memory_mb(self.device)
        reset_peak_memory(self.device)
        began = time.perf_counter()
        engine.logprobs(scored)
        _sync(self.device)
        lp_s = time.perf_counter() - began
        lp_peak = peak_memory_mb(self.device)
        # Counted, not read back from the texts: random weights mostly emit ids the byte-level
        # tokenizer cannot spell, so the texts are short or empty; EOS (1 id in the vocabulary)
        # rarely ends a row, so the count is near the budget of requests x new tokens.
        gen_tokens = sum(rows)
        lp_tokens = s.logprob_requests * s.logprob_length
        batches = -(-s.gen_requests // s.eval_batch)
        gen_bound = (workload.generation_bound(shape, batches, s.gen_prompt, s.gen_tokens, element, self.bandwidth)
                     + workload.generation_cache_bytes(shape, s.gen_requests, s.gen_prompt, s.gen_tokens) / self.bandwidth)
        lp_bound = workload.logprob_bound(shape, lp_tokens, s.logprob_length, self.flops)
        self.out(f"[evaluation] generation: {s.gen_requests} requests, {gen_tokens} of {s.gen_requests * s.gen_tokens} "
                 f"budgeted tokens generated (batch {s.eval_batch}) "
                 f"in {gen_s:.2f} s, {gen_tokens / gen_s:.0f} tok/s, peak {gen_peak:.0f} MiB; bound {gen_bound:.3g} s "
                 f"({100 * gen_bound / gen_s:.1f}% of the bandwidth limit)")
        self.out(f"[evaluation] log-probs: {s.logprob_requests} texts x {s.logprob_length} tokens in {lp_s:.2f} s, "
                 f"{lp_tokens / lp_s:.0f} tok/s, peak {lp_peak:.0f} MiB; bound {lp_bound:.3g} s "
                 f"({100 * lp_bound / lp_s:.1f}% of the matrix-rate limit)")
        return {"model": s.model,
                "generation": {"requests": s.gen_requests, "new_tokens_budget": s.gen_requests * s.gen_tokens,
                               "tokens_generated": gen_tokens, "seconds": round(gen_s, 3),
                               "tokens_per_s": round(gen_tokens / gen_s, 1), "peak_memory_mib": round(gen_peak),
                               "texts_returned": len(texts), "bound_s": gen_bound, "fraction_of_bound": _fraction(gen_bound, gen_s)},
                "logprobs": {"texts": s.logprob_requests, "tokens": lp_tokens, "seconds": round(lp_s, 3),
                             "tokens_per_s": round(lp_tokens / lp_s, 1), "peak_memory_mib": round(lp_peak),
                             "bound_s": lp_bound, "fraction_of_bound": _fraction(lp_bound, lp_s)}}

    def part_decoding(self) -> dict:
        """The bandwidth line of ``harness bench``: transformers' generate, one sequence, EOS ignored."""
        s = self.s
        loaded = self._load(s.model)
        model, tok = loaded.model, loaded.tokenizer
        bandwidth = copy_bandwidth(self.device)
        ids = torch.tensor([tok(workload.text(7, s.decode_prompt), add_special_tokens=False)["input_ids"]], device=self.device)

        @torch.inference_mode()
        def generate(n: int) -> None:
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=tok.pad_token_id)
            _sync(self.device)

        size = next(model.parameters()).element_size()
        figure = measure_decoding(generate, ids.shape[1], s.decode_steps, streamed_weight_bytes(model, size),
                                  kv_bytes_per_token(model.config, size), bandwidth)
        line = figure.line("HF (transformers generate)")
        self.out(f"[decoding] {s.decode_steps} steps after a {ids.shape[1]}-token prompt against {bandwidth / 1e9:.1f} GB/s "
                 f"({self.device.type} copy bandwidth, measured): {line}")
        return {"model": s.model, "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2), "steps": s.decode_steps,
                "ms_per_step": round(1000 * figure.seconds / figure.steps, 3),
                "streamed_gb_s": round(figure.streamed_bytes / figure.seconds / 1e9, 2),
                "bound_s": figure.bound_s, "fraction_of_bound": figure.fraction,
                "fraction_of_datasheet": (figure.streamed_bytes / self.bandwidth) / figure.seconds}

    def part_distributed(self) -> dict:
        """Two processes on this machine's device(s), data-parallel then FSDP; a failed launch's last error line."""
        s = self.s
        figures = {}
        budget = self.s.part_budget_s["distributed"] / 2 - 5
        for mode, env in (("ddp", {}), ("fsdp", {"ACCELERATE_USE_FSDP": "true"})):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "step.json"
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                       "--master_port", str(_free_port()), "-m", "harness.bench.distributed_step",
                       "--model", s.distributed_model, "--device", self.device.type, "--out", str(out),
                       "--steps", str(s.distributed_steps), "--length", str(s.distributed_length)]
                environment = {**os.environ, "OMP_NUM_THREADS": "1", **env}
                done = _launch(cmd, environment, budget)
                if done is None:
                    figures[mode] = {"status": "failed", "reason": f"no result within {budget:.0f} s (launch stopped)"}
                    self.out(f"[distributed] {mode}: {figures[mode]['reason']}")
                    continue
                if done.returncode == 0 and out.is_file():
                    result = json.loads(out.read_text())
                    figures[mode] = {"status": "ok", **result}
                    self.out(f"[distributed] {mode}: {result['world_size']} processes on {result['device']}, "
                             f"{1000 * result['step_s']:.1f} ms per step, peak {result['peak_memory_mib']:.0f} MiB on rank 0")
                else:
                    figures[mode] = {"status": "failed", "reason": _last_error(done.stderr + done.stdout)}
                    self.out(f"[distributed] {mode}: cannot run here: {figures[mode]['reason']}")
        return {"model": s.distributed_model, "gpus": torch.cuda.device_count() if self.device.type == "cuda" else 0,
                **figures}

    def part_precision(self) -> dict:
        """The synthetic benchmark's requests scored by the same random weights in fp32 and bf16."""
        from harness.engines.plan import run_plan
        from harness.registry import BENCHMARKS
        from harness.runtime.random_models import build_random
        from harness.runtime.models import byte_level_tokenizer

        tok = byte_level_tokenizer()
        fp32 = build_random(self.s.precision_model, tok, self.device, torch.float32)
        bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
        bench = BENCHMARKS.get("synthetic")(limit=self.s.precision_limit)   # generated in code: no data files
        bench.use_tokenizer(tok)
        plan = bench.eval_plan()
        a = run_plan(HFEngine(fp32, tok, 16, 512), plan)
        b = run_plan(HFEngine(bf16, tok, 16, 512), plan)
        token_gaps, mean_gaps = [], []
        for name in a.logprobs:
            for x, y in zip(a.logprobs[name], b.logprobs[name]):
                token_gaps += [abs(p - q) for p, q in zip(x.logprobs, y.logprobs)]
                if x.logprobs:
                    mean_gaps.append(abs(statistics.fmean(x.logprobs) - statistics.fmean(y.logprobs)))
        pairs = [(x, y) for name in a.generations for x, y in zip(a.generations[name], b.generations[name])]
        same = sum(x == y for x, y in pairs)
        figures = {"model": self.s.precision_model, "scored_tokens": len(token_gaps),
                   "largest_token_logprob_gap": max(token_gaps, default=0.0),
                   "largest_mean_logprob_gap": max(mean_gaps, default=0.0),
                   "generations_identical": f"{same}/{len(pairs)}"}
        try:
            sa, sb = bench.score(a, None).aggregates, bench.score(b, None).aggregates
        except ImportError as exc:   # the synthetic benchmark's ROUGE metrics need rouge_score
            figures["aggregates"] = f"skipped: {exc.name or exc} is not installed (ROUGE metrics need it)"
        else:
            gaps = {k: abs(sa[k] - sb[k]) for k in sa if isinstance(sa.get(k), (int, float)) and isinstance(sb.get(k), (int, float))}
            figures["aggregates"] = {k: {"fp32": sa[k], "bf16": sb[k]} for k in gaps}
            figures["largest_aggregate_gap"] = max(gaps.values(), default=0.0)
        aggregates = figures["aggregates"]
        tail = (f"largest aggregate gap {figures['largest_aggregate_gap']:.3g}" if isinstance(aggregates, dict) else f"aggregates {aggregates}")
        self.out(f"[precision] bf16 vs fp32 on {self.s.precision_model}: largest per-token log-prob gap "
                 f"{figures['largest_token_logprob_gap']:.3g} over {len(token_gaps)} tokens, largest per-text mean "
                 f"{figures['largest_mean_logprob_gap']:.3g}; generations identical {same}/{len(pairs)}; {tail}")
        return figures


def _launch(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess | None:
    """Run a launcher in its own process group; past ``timeout`` the whole group (the launcher and
    its ranks, which would otherwise keep the GPU's memory) is killed and None returned."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:   # the timeout, or the part's own alarm
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        if sys.exc_info()[0] is subprocess.TimeoutExpired:
            return None
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _last_error(text: str) -> str:
    """The last line that names an error in a launcher's output (the reason a launch failed)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Warning)\b.*:", line)
              and "ChildFailedError" not in line]   # a rank's exception, not the launcher's summary of it
    errors = [line for line in lines if "rror" in line]
    return (raised or errors or lines or ["no output"])[-1][:400]


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(prog="scripts/gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="every part on the CPU with random:tiny and small sizes (seconds; what CI runs)")
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"), help="the JSON file written (default gpu-check.json)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of parts to run (default all: {','.join(PARTS)})")
    parser.add_argument("--model", default=None, help="random:<architecture> for training, evaluation, decoding "
                                                      "(default random:1b; dry run random:tiny)")
    parser.add_argument("--budget", type=float, default=None, help="total seconds for all parts (default 540; dry run 240)")
    parser.add_argument("--flops", type=float, default=workload.H100_BF16_FLOPS,
                        help="the device's dense bf16 FLOP/s for the bounds (default: H100 SXM, 989e12)")
    parser.add_argument("--bandwidth", type=float, default=workload.H100_HBM_BYTES_S,
                        help="the device's memory bytes/s for the bounds (default: H100 SXM HBM3, 3.35e12)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, out=print) -> int:
    args = parse_args(argv)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise HarnessError(f"unknown part(s) {', '.join(unknown)} in --parts; choose from {', '.join(PARTS)}.")
    settings = DRY if args.dry_run else FULL
    if args.model:
        architecture(args.model if args.model.startswith("random:") else "random:" + args.model)
        settings = replace(settings, model=args.model if args.model.startswith("random:") else "random:" + args.model)
    if args.budget:
        settings = replace(settings, budget_s=args.budget)
    if args.dry_run:
        device = torch.device("cpu")
        torch.set_num_threads(1)   # a shared CI runner: more threads than free cores is slower
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        raise HarnessError("no CUDA device here: scripts/gpu-check measures the CUDA path. "
                           "Run `scripts/gpu-check --dry-run` for the CPU rehearsal (random:tiny, seconds).")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    out(f"gpu-check: {'dry run on ' if args.dry_run else ''}{device.type} ({name}), torch {torch.__version__}, "
        f"model {settings.model}: {RANDOM_SOURCE}, figures of speed and memory only; "
        f"bounds at {args.flops / 1e12:g} TFLOP/s and {args.bandwidth / 1e12:g} TB/s; budget {settings.budget_s:.0f} s")
    check = Check(settings, device, args.flops, args.bandwidth, out)
    results = check.run(parts)
    total = time.perf_counter() - check.started
    record = {"schema": 1, "kind": "gpu-check", "dry_run": args.dry_run, "device": str(device), "device_name": name,
              "torch": torch.__version__, "model": settings.model, "model_source": source_text(settings.model, 0),
              "bounds": {"bf16_flops": args.flops, "bandwidth_bytes_s": args.bandwidth},
              "settings": {k: v for k, v in asdict(settings).items()}, "parts": results, "total_s": round(total, 2)}
    args.out.write_text(json.dumps(record, indent=1, default=str))
    states = ", ".join(f"{k} {v['status']}" for k, v in results.items())
    out(f"gpu-check: {total:.0f} s in all ({states}); figures in {args.out}")
    return 0 if all(v["status"] in ("ok", "skipped") for v in results.values()) else 1


def entry(argv: list[str] | None = None) -> int:
    try:
        return main(argv)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(entry())
