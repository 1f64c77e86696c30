"""Checks a run makes before any model is loaded: limits, settings and their ranges, data, folders.

A bad setting found after the target and retain models were prepared and evaluated costs
minutes on a real model, and a raw ``PermissionError`` after the retain evaluation loses them.
So the runner resolves every setting of every requested method, the benchmark and the
train/finetune/eval sections up front (types are checked by ``config.cast``, the dataclasses'
own ``__post_init__`` checks run), checks the value ranges below, that the data has something
to train on, and that the folders it will write are writable. Each failure is a ``HarnessError``
that names the setting or path and the fix.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from harness.errors import HarnessError

# (test, what the value must be) per field; a field not listed has no range beyond its type.
Range = tuple[Callable[[Any], bool], str]
POSITIVE: Range = (lambda v: v > 0, "> 0")
AT_LEAST_0: Range = (lambda v: v >= 0, ">= 0")
AT_LEAST_1: Range = (lambda v: v >= 1, ">= 1")
FRACTION: Range = (lambda v: 0 <= v < 1, "in [0, 1)")
OFF_OR_ABOVE_1: Range = (lambda v: v == 0 or v > 1, "0 (off) or > 1")

TRAIN_RANGES: dict[str, Range] = {
    "lr": POSITIVE, "epochs": AT_LEAST_0, "max_steps": AT_LEAST_0, "global_batch": AT_LEAST_1,
    "micro_batch": AT_LEAST_1, "warmup_ratio": FRACTION, "weight_decay": AT_LEAST_0,
    "max_grad_norm": AT_LEAST_0, "max_length": AT_LEAST_1, "divergence_growth": OFF_OR_ABOVE_1,
}
EVAL_RANGES: dict[str, Range] = {"batch_size": AT_LEAST_0, "max_length": AT_LEAST_1}


def check_limit(limit: int | None) -> None:
    """``--limit`` keeps the first N items; 0 or a negative N would silently mean 'all' or 'all but N'."""
    if limit is not None and limit < 1:
        raise HarnessError(
            f"--limit must be at least 1 (it keeps the first N items of every split), got {limit}. "
            "Leave --limit out to use the whole benchmark."
        )


def check_ranges(section: str, config: Any, ranges: dict[str, Range]) -> None:
    """Every float of ``config`` finite, and every field listed in ``ranges`` inside its range."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise HarnessError(f"{section}.{f.name}: must be a finite number, got {value}; "
                               f"set it with --set {section}.{f.name}=VALUE.")
        if f.name in ranges:
            ok, must = ranges[f.name]
            if not ok(value):
                default = "" if f.default is dataclasses.MISSING else f" (default {f.default})"
                raise HarnessError(f"{section}.{f.name}={value}: must be {must}{default}; "
                                   f"set it with --set {section}.{f.name}=VALUE.")


def check_loop_settings(method_cls: type, train_cls: type) -> None:
    """A method's declared ``loop_settings`` name fields of the loop's settings (methods/base.py)."""
    valid = [f.name for f in dataclasses.fields(train_cls)]
    unknown = [k for k in method_cls.loop_settings if k not in valid]
    if unknown:
        raise HarnessError(f"method '{method_cls.name}' declares loop setting(s) {', '.join(unknown)}, which the "
                           f"training loop does not have; its loop_settings may name: {', '.join(valid)}.")


def check_settings(runner) -> None:
    """Resolve (and so type-check) every section of the run, then check value ranges."""
    check_ranges("finetune", runner.finetune_cfg, TRAIN_RANGES)
    check_ranges("eval", runner.eval_cfg, EVAL_RANGES)
    check_ranges("benchmark", runner.bench.config, {})
    for name, point in runner.method_cells.values():   # every swept point of every method
        train_cfg, method_cfg = runner.method_configs(name, point)
        check_ranges("train", train_cfg, TRAIN_RANGES)
        check_ranges(name, method_cfg, {})


def check_data(bench) -> None:
    """A split the run trains on must hold items: an empty one would prepare models on nothing."""
    info = bench.data_info() or {}
    where = info.get("source") or "the benchmark's data"
    cut = f" (after --limit {bench.limit})" if getattr(bench, "limit", None) else ""
    for split, items in (("forget", bench.forget_train()), ("retain", bench.retain_train())):
        if items is not None and len(items) == 0:
            raise HarnessError(
                f"benchmark '{bench.name}': the {split} split is empty{cut}; read from {where}. "
                f"Expected at least one {split} item: check the data files (--data-dir) and benchmark.* settings."
            )


def check_seed(seed: int) -> None:
    """numpy and torch take seeds in [0, 2**32); outside it every cell would fail on its own."""
    if not 0 <= seed < 2**32:
        raise HarnessError(f"--seed must be between 0 and {2**32 - 1} (numpy and torch seeds are 32-bit), got {seed}.")


def check_methods_fit_data(runner) -> None:
    """A method setting that cannot work with this data (e.g. SGA's K against the retain items) is refused now."""
    if not runner.req.trains:   # eval and prepare train no method
        return
    forget, retain = runner.bench.forget_train(), runner.bench.retain_train()
    for name, point in runner.method_cells.values():
        problem = runner.method_cls[name](runner.method_configs(name, point)[1]).data_problem(forget, retain)
        if problem:
            cut = f" (--limit {runner.req.limit} keeps the first {runner.req.limit} items of every split)" if runner.req.limit else ""
            raise HarnessError(f"method '{name}': {problem}{cut}")


def check_data_dir_used(bench, data_dir) -> None:
    """``--data-dir`` for a benchmark that reads no files would be silently ignored."""
    if data_dir is not None and not getattr(bench, "reads_files", True):
        raise HarnessError(f"benchmark '{bench.name}' is built into the harness and reads no files, so --data-dir "
                           f"'{data_dir}' would be ignored; leave --data-dir out.")


def check_model_specs(req) -> None:
    """Local model folders (--model, --target, --retain) hold a config and safetensors weights."""
    from harness.runtime.models import check_model_folder

    for option, spec in (("--model", req.model), ("--target", req.target), ("--retain", req.retain)):
        if spec and Path(spec).expanduser().exists():
            try:
                check_model_folder(Path(spec).expanduser(), spec)
            except HarnessError as exc:
                raise HarnessError(f"{option}: {exc}") from None


def short_splits(bench) -> list[str]:
    """Notes for splits holding fewer items than ``--limit`` asked for: scored on fewer, and said so."""
    limit = getattr(bench, "limit", None)
    sizes = (bench.data_info() or {}).get("sizes") or {}
    return [f"note: split '{name}' holds {n} item(s), fewer than --limit {limit}: it is scored on {n}."
            for name, n in sizes.items() if limit and isinstance(n, int) and 0 < n < limit and not name.startswith(NOT_SPLITS)]


# ``data_info()["sizes"]`` entries that are counts of something else than a split's items
NOT_SPLITS = ("too_short", "icl_", "ppl_")


def check_writable(folder: Path | str, what: str, option: str) -> None:
    """``folder`` exists as a writable folder, or can be created in a writable one."""
    folder = Path(folder)
    for part in folder.parts:
        if len(part.encode()) > 255:   # NAME_MAX of common file systems; the exact limit is checked below
            raise HarnessError(f"{what}: the folder name '{part[:40]}...' is {len(part.encode())} bytes long; file "
                               f"systems allow at most 255 per name. Pass {option} with a shorter name.")
    if folder.exists() and not folder.is_dir():
        raise HarnessError(f"{what} '{folder}' is a file, not a folder; pass {option} with a folder path.")
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise HarnessError(
            f"{what} '{folder}' cannot be created: '{probe}' is a file, not a folder; pass {option} with a folder path."
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise HarnessError(
            f"{what} '{folder}' is not writable (no write permission on '{probe}'); "
            f"pass {option} with a folder you can write, or change its permissions."
        )
    try:
        longest = os.pathconf(probe, "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    for part in folder.parts:
        if len(part.encode()) > longest:
            raise HarnessError(f"{what}: the folder name '{part[:40]}...' is {len(part.encode())} bytes long; this file "
                               f"system allows at most {longest} per name. Pass {option} with a shorter name.")
    _try_writing(folder, what, option)


def _try_writing(folder: Path, what: str, option: str) -> None:
    """Create ``folder`` and a file in it: permissions alone do not tell (/proc, read-only mounts, chattr +i)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise HarnessError(f"{what} '{folder}' cannot be written ({exc.strerror or exc}); "
                           f"pass {option} with a folder you can write.") from None


def check_before_work(runner, folders: dict[str, tuple[Path, str]]) -> None:
    """Everything the runner can check before it loads a model; ``folders``: what -> (path, option)."""
    check_settings(runner)
    check_data(runner.bench)
    check_methods_fit_data(runner)
    for what, (path, option) in folders.items():
        check_writable(path, what, option)
