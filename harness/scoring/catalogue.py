"""The built-in metrics' names, families and descriptions, declared beside their functions.

A scoring module marks a function with ``@metric(...)``; the declaration is kept here, in a list
that the registry reads when it loads the built-ins. Scoring therefore never imports the
registry: it stays at the bottom of the import order, pure functions with no plugin machinery.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

METRIC_FAMILIES = ("verbatim", "knowledge", "privacy", "utility", "auxiliary")
SCORING_MODULES = ("aggregate", "memorization", "privacy", "probability", "text")


@dataclass(frozen=True)
class MetricInfo:
    """A scoring function's registry entry: what `harness list metrics` shows."""

    name: str
    family: str
    description: str
    fn: Callable[..., Any]


_DECLARED: list[MetricInfo] = []


def declare(name: str, family: str, description: str, fn: Callable[..., Any]) -> MetricInfo:
    if family not in METRIC_FAMILIES:
        raise ValueError(f"metric family must be one of {METRIC_FAMILIES}, got {family!r}")
    return MetricInfo(name=name, family=family, description=description, fn=fn)


def metric(name: str, family: str, description: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a built-in scoring function; returns it unchanged."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        _DECLARED.append(declare(name, family, description, fn))
        return fn

    return decorate


def declared_metrics() -> list[MetricInfo]:
    """Every built-in metric, after importing the scoring modules that declare them."""
    for module in SCORING_MODULES:
        importlib.import_module(f"harness.scoring.{module}")
    return list(_DECLARED)
