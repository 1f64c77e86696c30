"""Built-in benchmark adapters; each module registers itself on import."""
from harness.benchmarks import synthetic  # noqa: F401
