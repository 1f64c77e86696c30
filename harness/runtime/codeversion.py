"""Hashes of the source code behind a result, so that changed code is never served a stale result.

A cell's identity (``config_id``) is its settings; the code that computed it is recorded beside
them as ``{module: hash}`` and checked when the cell would be skipped: a method cell records the
modules that define its method class (its own module, or the plugin file, and every base class's
module) and the shared loop (training, batching, losses). If any of them changed, the cell
re-runs and its record is replaced. Prepared models are keyed by the fine-tuning code
(``finetune_code``) and evaluation-cache entries by the engine's code (``engine_code``).

The hash is of the file's bytes: editing a comment or whitespace also counts as a change and
re-runs the cell (cheaper to explain, and never wrong, unlike guessing which edits matter).
"""
from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path

#: the shared unlearning loop: a change here changes every method's result
LOOP_MODULES = ("harness.training.loop", "harness.training.finetune", "harness.data.batching", "harness.training.losses",
                "harness.training.lora", "harness.training.divergence")
#: what `prepare` runs to fine-tune target and retain models
FINETUNE_MODULES = (*LOOP_MODULES, "harness.run.prepare")
#: what computes the outputs the evaluation cache stores
ENGINE_MODULES = ("harness.engines.hf", "harness.engines.base", "harness.engines.vllm")


def file_hash(path: str) -> str:
    """Read afresh each time (a few small files per cell): an edit in a long-lived process counts."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def _label(module_name: str, path: str) -> str:
    """A stable name for a source: the module name, or the file name of a ``--plugin`` file."""
    if module_name.startswith("harness_plugin_"):
        return f"plugin {Path(path).name}"
    return module_name


def module_hashes(names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for name in names:
        module = sys.modules.get(name) or importlib.import_module(name)
        out[_label(name, module.__file__)] = file_hash(module.__file__)
    return out


def class_hashes(cls: type) -> dict[str, str]:
    """The modules defining ``cls`` and its bases (builtins and the standard library left out)."""
    out = {}
    for klass in cls.__mro__:
        top = klass.__module__.partition(".")[0]
        path = getattr(sys.modules.get(klass.__module__), "__file__", None)
        if not path or top == "builtins" or top in sys.stdlib_module_names:
            continue
        out[_label(klass.__module__, path)] = file_hash(path)
    return out


def method_code(cls: type) -> dict[str, str]:
    """What a method cell's result depends on in code: its class hierarchy and the loop."""
    return {**class_hashes(cls), **module_hashes(LOOP_MODULES)}


def finetune_code() -> dict[str, str]:
    return module_hashes(FINETUNE_MODULES)


def engine_code() -> str:
    """One short hash of the engine's source, for the evaluation-cache key."""
    blob = "".join(f"{k}={v};" for k, v in sorted(module_hashes(ENGINE_MODULES).items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def stale_reason(recorded: dict | None, current: dict[str, str]) -> str:
    """Why a finished record's code differs from the current code ('' when it does not)."""
    if not current:
        return ""
    if not isinstance(recorded, dict):
        return "its record does not say which code made it (written before code versions were recorded)"
    changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    return f"its code changed since the record was written ({', '.join(changed)})" if changed else ""
