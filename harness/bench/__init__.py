"""The speed bench: per-stage figures of one evaluation and one training, and the engine comparison."""


def __getattr__(name: str):
    """A name of the 0.1 module ``harness.bench`` (now ``harness.bench.report``): served from there, with a warning."""
    import importlib
    import warnings
    from pathlib import Path

    if (Path(__file__).parent / f"{name}.py").is_file():   # a submodule being imported: not ours to serve
        raise AttributeError(name)
    module = importlib.import_module("harness.bench.report")
    if name.startswith("__") or not hasattr(module, name):
        raise AttributeError(f"module 'harness.bench' has no attribute {name!r}")
    warnings.warn(f"harness.bench.{name} moved to harness.bench.report.{name}; import it from there "
                  "(the old path will be removed)", FutureWarning, stacklevel=2)
    return getattr(module, name)
