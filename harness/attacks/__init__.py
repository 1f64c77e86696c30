"""Attacks: what re-evaluates a finished model after modifying it (relearning, quantisation)."""


def __getattr__(name: str):
    """A name of the 0.1 module ``harness.attacks`` (now ``harness.attacks.suite``): served from there, with a warning."""
    import importlib
    import warnings
    from pathlib import Path

    if (Path(__file__).parent / f"{name}.py").is_file():   # a submodule being imported: not ours to serve
        raise AttributeError(name)
    module = importlib.import_module("harness.attacks.suite")
    if name.startswith("__") or not hasattr(module, name):
        raise AttributeError(f"module 'harness.attacks' has no attribute {name!r}")
    warnings.warn(f"harness.attacks.{name} moved to harness.attacks.suite.{name}; import it from there "
                  "(the old path will be removed)", FutureWarning, stacklevel=2)
    return getattr(module, name)
