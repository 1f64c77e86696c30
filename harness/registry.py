"""Registries for methods, benchmarks and metrics, filled by decorators and plugins.

Built-ins register themselves on import. Third-party code joins through an installed
entry point (group ``unlearning_harness.<kind>s``) or ``--plugin path/to/file.py``.
A plugin that fails to import is reported by name and never takes the others down.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from harness.errors import HarnessError, unknown_name_error

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping for one kind of component."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            key = (name or getattr(obj, "name", None) or getattr(obj, "__name__")).lower()
            existing = self._items.get(key)
            if existing is not None and existing is not obj:
                if getattr(existing, "__qualname__", None) != getattr(obj, "__qualname__", None) or getattr(
                    existing, "__module__", None
                ) != getattr(obj, "__module__", None):
                    raise HarnessError(f"{self.kind} '{key}' is registered twice ({existing!r} and {obj!r}).")
            self._items[key] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        load_builtins()
        try:
            return self._items[name.lower()]
        except KeyError:
            raise unknown_name_error(self.kind, name, self._items) from None

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        load_builtins()
        return sorted(self._items.items())

    def __contains__(self, name: str) -> bool:
        load_builtins()
        return name.lower() in self._items


METHODS: Registry[Any] = Registry("method")
BENCHMARKS: Registry[Any] = Registry("benchmark")
METRICS: Registry[Any] = Registry("metric")

register_method = METHODS.register
register_benchmark = BENCHMARKS.register
register_metric = METRICS.register

ENTRY_POINT_GROUPS = {
    "method": "unlearning_harness.methods",
    "benchmark": "unlearning_harness.benchmarks",
    "metric": "unlearning_harness.metrics",
}


@dataclass
class PluginReport:
    """What happened to each plugin source; failures carry a one-line reason."""

    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)   # failures already shown to the user

    def unreported_failures(self) -> dict[str, str]:
        """Failures not shown yet; marks them shown, so each is reported once per process."""
        fresh = {k: v for k, v in self.failed.items() if k not in self.reported}
        self.reported.update(fresh)
        return fresh


PLUGINS = PluginReport()
_builtins_loaded = False


def load_builtins() -> None:
    """Import the built-in modules once; they register themselves."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    importlib.import_module("harness.scoring")
    importlib.import_module("harness.methods")
    importlib.import_module("harness.benchmarks")
    load_entry_points()


def load_entry_points() -> PluginReport:
    for group in ENTRY_POINT_GROUPS.values():
        for ep in entry_points(group=group):
            label = f"entry point {ep.name} ({ep.value})"
            try:
                ep.load()
                PLUGINS.loaded.append(label)
            except Exception as exc:  # a broken plugin must not stop the others
                PLUGINS.failed[label] = _one_line(exc)
    return PLUGINS


def load_plugin_file(path: str | Path) -> bool:
    """Import a plugin file by path; returns False (and records why) when it fails."""
    load_builtins()
    path = Path(path)
    label = f"plugin file {path}"
    if not path.is_file():
        PLUGINS.failed[label] = "file not found; pass the path of a .py file that registers a method, benchmark or metric"
        return False
    module_name = f"harness_plugin_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        PLUGINS.failed[label] = _one_line(exc)
        return False
    PLUGINS.loaded.append(label)
    return True


def _one_line(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


METRIC_FAMILIES = ("verbatim", "knowledge", "privacy", "utility", "auxiliary")


@dataclass(frozen=True)
class MetricInfo:
    """A scoring function's registry entry: what `harness list metrics` shows."""

    name: str
    family: str
    description: str
    fn: Callable[..., Any]


def metric(name: str, family: str, description: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a pure scoring function under ``name``; returns the function unchanged."""
    if family not in METRIC_FAMILIES:
        raise ValueError(f"metric family must be one of {METRIC_FAMILIES}, got {family!r}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        METRICS.register(name)(MetricInfo(name=name, family=family, description=description, fn=fn))
        return fn

    return decorate
