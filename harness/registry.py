"""Registries for methods, benchmarks and metrics, filled by decorators and plugins.

Built-ins register themselves on import. Third-party code joins through an installed
entry point (group ``unlearning_harness.<kind>s``) or ``--plugin path/to/file.py``.
A plugin that fails to import is reported by name and never takes the others down.
A name registered twice (two plugins, or a plugin reusing a built-in name) is an error that
names both sources, unless the second registration asks for it with ``override=True``.
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


class DuplicateNameError(HarnessError):
    """Two sources register one name; raised through the plugin loaders, never skipped as a failure."""


_loading: list[str] = []   # the plugin source being imported (innermost last), for duplicate messages


def _source(obj: Any) -> str:
    """Where ``obj`` was defined, as the user knows it: a plugin file, an entry point, a module."""
    module = getattr(getattr(obj, "fn", obj), "__module__", "?")   # a metric's entry wraps its function
    return PLUGIN_SOURCES.get(module) or (_loading[-1] if _loading else f"built-in module {module}")


def _same_definition(a: Any, b: Any) -> bool:
    """One definition imported twice (the same module, or two copies of one plugin file), not two."""
    a, b = getattr(a, "fn", a), getattr(b, "fn", b)
    if getattr(a, "__qualname__", None) != getattr(b, "__qualname__", None):
        return False
    if getattr(a, "__module__", None) == getattr(b, "__module__", None):
        return True
    files = [getattr(sys.modules.get(getattr(x, "__module__", "")), "__file__", None) for x in (a, b)]
    return all(files) and Path(files[0]).read_bytes() == Path(files[1]).read_bytes()


class Registry(Generic[T]):
    """A name -> object mapping for one kind of component."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._sources: dict[str, str] = {}

    def register(self, name: str | None = None, override: bool = False) -> Callable[[T], T]:
        """Register under ``name`` (default: the object's ``name``); ``override=True`` replaces an
        existing entry on purpose (reported as a note), anything else registered twice is an error."""
        def decorate(obj: T) -> T:
            key = (name or getattr(obj, "name", None) or getattr(obj, "__name__")).lower()
            existing = self._items.get(key)
            source = _source(obj)
            if existing is not None and existing is not obj and not _same_definition(existing, obj):
                if not override:
                    raise DuplicateNameError(
                        f"{self.kind} '{key}' is registered twice: by {self._sources[key]} and by {source}. "
                        f"Rename one of them, or, to replace the first on purpose, register the second with "
                        f"override=True (@register_{self.kind}(override=True))."
                    )
                PLUGINS.overrides.append(f"{self.kind} '{key}' of {self._sources[key]} is replaced by the one of {source} "
                                         "(override=True)")
            self._items[key] = obj
            self._sources[key] = source
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
    overrides: list[str] = field(default_factory=list)  # names replaced on purpose (override=True)

    def unreported_failures(self) -> dict[str, str]:
        """Failures not shown yet; marks them shown, so each is reported once per process."""
        fresh = {k: v for k, v in self.failed.items() if k not in self.reported}
        self.reported.update(fresh)
        return fresh


PLUGINS = PluginReport()
PLUGIN_SOURCES: dict[str, str] = {}   # module name of a --plugin file -> "plugin file PATH"
_builtins_loaded = False


def load_builtins() -> None:
    """Import the built-in modules once; they register themselves."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    from harness.scoring.catalogue import declared_metrics

    for info in declared_metrics():   # imports the scoring modules, which declare their metrics
        METRICS.register(info.name)(info)
    importlib.import_module("harness.methods")
    importlib.import_module("harness.benchmarks")
    load_entry_points()


def load_entry_points() -> PluginReport:
    for group in ENTRY_POINT_GROUPS.values():
        for ep in entry_points(group=group):
            label = f"entry point {ep.name} ({ep.value})"
            _loading.append(label)
            try:
                ep.load()
                PLUGINS.loaded.append(label)
            except DuplicateNameError:
                raise
            except Exception as exc:  # a broken plugin must not stop the others
                PLUGINS.failed[label] = _one_line(exc)
            finally:
                _loading.pop()
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
    PLUGIN_SOURCES[module_name] = label
    try:
        spec.loader.exec_module(module)
    except DuplicateNameError:
        sys.modules.pop(module_name, None)
        raise
    except Exception as exc:
        sys.modules.pop(module_name, None)
        PLUGINS.failed[label] = _one_line(exc)
        return False
    PLUGINS.loaded.append(label)
    return True


def load_plugins(files: list[str]) -> None:
    """The built-ins, entry points and ``--plugin`` files; failures and overrides reported once, on stderr."""
    load_builtins()
    for f in files:
        if not Path(f).is_file():   # asked for by name: going on without it would run something else
            raise HarnessError(f"--plugin {f}: no such file; pass the path of a .py file that registers a method, "
                               "benchmark or metric.")
        load_plugin_file(f)
    for label, reason in PLUGINS.unreported_failures().items():
        print(f"warning: {label} failed to load and was skipped: {reason}", file=sys.stderr)
    for note in dict.fromkeys(PLUGINS.overrides):
        print(f"note: {note}", file=sys.stderr)
    PLUGINS.overrides.clear()


def _one_line(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def metric(name: str, family: str, description: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a plugin's pure scoring function under ``name``; returns the function unchanged.

    The built-in metrics are declared in ``harness.scoring.catalogue`` (scoring never imports the
    registry) and registered from there by ``load_builtins``.
    """
    from harness.scoring.catalogue import declare

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        info = declare(name, family, description, fn)
        METRICS.register(name)(info)
        return fn

    return decorate


def __getattr__(name: str):
    """``METRIC_FAMILIES`` and ``MetricInfo`` moved to ``harness.scoring.catalogue``; served from there."""
    if name in ("METRIC_FAMILIES", "MetricInfo"):
        from harness.scoring import catalogue

        return getattr(catalogue, name)
    raise AttributeError(f"module 'harness.registry' has no attribute {name!r}")
