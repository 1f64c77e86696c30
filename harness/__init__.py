"""unlearning-harness: run LLM unlearning methods against benchmarks and render leaderboards.

In a source checkout the top-level folders ``methods/``, ``benchmarks/`` and
``leaderboard/`` are the subpackages ``harness.methods``, ``harness.benchmarks`` and
``harness.leaderboard`` (pyproject.toml maps them the same way into a built wheel).
Extending ``__path__`` here makes that mapping hold without an install as well.

Modules moved into stage folders in 0.2 (see docs/architecture.md). A plugin that still imports
an old path, e.g. ``harness.losses``, gets the module at its new path (``harness.training.losses``)
and one ``FutureWarning`` naming it; the old paths will be removed in a later release.
"""
from __future__ import annotations

import importlib as _importlib
import importlib.abc as _abc
import importlib.util as _util
import sys as _sys
import warnings as _warnings
from pathlib import Path as _Path

__version__ = "0.1.0"

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "methods" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # type: ignore[name-defined]

#: old module path (0.1) -> its stage folder path (0.2)
MOVED = {
    "activations": "training.activations",
    "batching": "data.batching",
    "bench_engines": "bench.engines",
    "chat": "data.chat",
    "claims": "run.claims",
    "codeversion": "runtime.codeversion",
    "config": "run.config",
    "datafiles": "data.files",
    "distributed": "training.distributed",
    "engine": "engines.hf",
    "engine_base": "engines.base",
    "engine_factory": "engines.factory",
    "evalcache": "engines.cache",
    "evaluation": "engines.plan",
    "executors": "run.executors",
    "losses": "training.losses",
    "models": "runtime.models",
    "prepare": "run.prepare",
    "progress": "runtime.progress",
    "quantize": "attacks.quantize",
    "results": "run.results",
    "roofline": "engines.roofline",
    "runner": "run.runner",
    "selection": "run.selection",
    "sharding": "training.sharding",
    "status": "run.status",
    "threads": "runtime.threads",
    "truncation": "data.truncation",
    "validation": "run.validation",
    "vllm_engine": "engines.vllm",
    "vllm_worker": "engines.vllm_worker",
}


def _moved_warning(old: str, new: str) -> None:
    _warnings.warn(f"harness.{old} moved to harness.{new}; import it from there (the old path will be removed)",
                   FutureWarning, stacklevel=3)


class _MovedModules(_abc.MetaPathFinder, _abc.Loader):
    """Serves ``harness.<old>`` as the module now at ``harness.<new>`` (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, old = fullname.partition(".")
        if head == "harness" and old in MOVED:
            return _util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        old = spec.name.partition(".")[2]
        _moved_warning(old, MOVED[old])
        return _importlib.import_module(f"harness.{MOVED[old]}")

    def exec_module(self, module):   # the new module is already executed
        pass


_sys.meta_path.append(_MovedModules())
