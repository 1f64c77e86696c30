"""unlearning-harness: run LLM unlearning methods against benchmarks and render leaderboards.

In a source checkout the top-level folders ``methods/``, ``benchmarks/`` and
``leaderboard/`` are the subpackages ``harness.methods``, ``harness.benchmarks`` and
``harness.leaderboard`` (pyproject.toml maps them the same way into a built wheel).
Extending ``__path__`` here makes that mapping hold without an install as well.
"""
from __future__ import annotations

from pathlib import Path as _Path

__version__ = "0.1.0"

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "methods" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # type: ignore[name-defined]
