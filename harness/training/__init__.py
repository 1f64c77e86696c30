"""Training: the shared unlearning loop, its batching and losses, multi-process and FSDP
training."""


def __getattr__(name: str):
    """A name of the 0.1 module ``harness.training`` (now ``harness.training.loop``): served from there, with a warning."""
    import importlib
    import warnings
    from pathlib import Path

    if (Path(__file__).parent / f"{name}.py").is_file():   # a submodule being imported: not ours to serve
        raise AttributeError(name)
    module = importlib.import_module("harness.training.loop")
    if name.startswith("__") or not hasattr(module, name):
        raise AttributeError(f"module 'harness.training' has no attribute {name!r}")
    warnings.warn(f"harness.training.{name} moved to harness.training.loop.{name}; import it from there "
                  "(the old path will be removed)", FutureWarning, stacklevel=2)
    return getattr(module, name)
