"""Building the target and retain models of a benchmark from a base model (TOFU/MUSE protocol).

The target is the base fine-tuned on forget + retain, the retain model the base fine-tuned on
retain alone: the retain model is what perfect unlearning would give, so it provides the
reference rows and per-item references. Both are cached by (base model, benchmark data and
config, fine-tuning config, seed, the CPU thread count on a CPU (``threads.identity``), and a hash
of the fine-tuning code: ``codeversion.finetune_code``) and reused by every later run; a change to the loop, batching, losses or this module prepares anew.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from harness.data import truncation
from harness.training import distributed
from harness.run.claims import Claims, claim_cell
from harness.runtime.codeversion import finetune_code
from harness.errors import HarnessError
from harness.runtime import threads
from harness.runtime.models import cache_root, load_model, load_tokenizer, pick_device, portable_path
from harness.run.results import slug
from harness.training.finetune import Finetune
from harness.training.loop import TrainConfig, train


def prepared_key(base: str, benchmark, cfg: TrainConfig, seed: int, device=None) -> str:
    """Base model, benchmark data and settings, fine-tuning config, seed and code; the settings the
    base's tokenizer resolved (TOFU's prompt format), where there are any; and on a CPU the thread
    count the fine-tuning computes with (``device`` None: the CPU)."""
    parts = {"base": base, "benchmark": benchmark.name, "data": benchmark.data_info(), "finetune": asdict(cfg), "seed": seed,
             "code": finetune_code(), **threads.identity(device)}
    resolved = benchmark.resolved_settings()
    if resolved:
        parts["resolved"] = resolved
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def prepared_folder(base: str, benchmark, cfg: TrainConfig, seed: int, role: str, device=None) -> Path:
    key = prepared_key(base, benchmark, cfg, seed, device)
    return cache_root() / "prepared" / benchmark.name / slug(base) / f"{role}-{key}"


def is_ready(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "prepare.json").is_file()


def prepare(base: str, benchmark, cfg: TrainConfig, seed: int, device=None, progress=None, force=False, log=print) -> dict[str, Path]:
    """Return {"target": folder, "retain": folder}, fine-tuning whichever is not cached yet."""
    benchmark.use_tokenizer(load_tokenizer(base))   # the prompt format the models are fine-tuned in
    device = device if device is not None else pick_device()   # the key says whether it is a CPU
    folders = {}
    ranks, claims = distributed.current(device), Claims()
    for role in ("target", "retain"):
        folder = prepared_folder(base, benchmark, cfg, seed, role, ranks.device)
        folders[role] = folder
        # One builder per folder: other processes sharing the cache wait for it (harness/run/claims.py);
        # under accelerate launch the main process decides for all ranks, which then train together.
        if ranks.broadcast(ranks.is_main and _wait_or_claim(claims, folder, force, log)):
            log(f"prepare: reusing cached {role} model {folder}")
            continue
        try:
            _build(base, benchmark, cfg, seed, device, progress, log, role, folder, ranks)
        finally:   # a failed build must not leave our claim behind for the next cell to wait on
            claims.release(folder)
    return folders


def _build(base, benchmark, cfg, seed, device, progress, log, role: str, folder: Path, ranks) -> None:
    """Fine-tune and save one prepared model (this process holds ``folder``'s claim)."""
    loaded = load_model(base, device)
    examples = (benchmark.forget_train() if role == "target" else []) + (benchmark.retain_train() or [])
    if not examples:
        raise HarnessError(
            f"benchmark '{benchmark.name}' has no data to fine-tune a {role} model on. Pass an existing "
            f"{role} model instead (--{role} PATH), or supply the benchmark's {role} split."
        )
    cut = truncation.warning(truncation.train_counts(
        loaded.tokenizer, {**({"forget": benchmark.forget_train()} if role == "target" else {}),
                           "retain": benchmark.retain_train() or []}, cfg.max_length),
                             "finetune.max_length", cfg.max_length, f"fine-tuning the {role} model")
    if cut:
        log(cut)
    log(f"prepare: fine-tuning the {role} model on {len(examples)} examples ({cfg.epochs} epochs, lr {cfg.lr})")
    started = time.perf_counter()
    result = train(loaded.model, loaded.tokenizer, Finetune(), examples, None, cfg, seed, progress=progress, log=log)
    if result.status != "ok":
        raise RuntimeError(f"fine-tuning the {role} model diverged at step {result.diverged_at_step}; lower finetune.lr.")
    if not ranks.is_main:
        ranks.barrier()   # the main process saves
        return
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    loaded.model.save_pretrained(tmp, safe_serialization=True)
    loaded.tokenizer.save_pretrained(tmp)
    info = {
        "role": role, "base": base, "resolved_settings": benchmark.resolved_settings(), "base_source": portable_path(loaded.source), "benchmark": benchmark.name,
        "data": benchmark.data_info(), "finetune": asdict(cfg), "seed": seed,
        "code": finetune_code(), **threads.identity(ranks.device), "examples": len(examples), "steps": result.steps, "final_loss": result.last_finite_loss,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (tmp / "prepare.json").write_text(json.dumps(info, indent=1, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)  # the folder appears complete or not at all
    ranks.barrier()
    log(f"prepare: {role} model saved to {folder} (final loss {result.last_finite_loss:.4f}, {info['seconds']} s)")


def _wait_or_claim(claims: Claims, folder: Path, force: bool, log) -> bool:
    """True if ``folder`` is ready to reuse; otherwise this process holds its claim and must build it."""
    if is_ready(folder) and not force:
        return True
    outcome = claim_cell(claims, folder, lambda: None if force or not is_ready(folder) else True, wait=True, log=log)
    return outcome.state == "done"
