"""Built-in unlearning methods; each module registers itself on import."""
from harness.methods import ga, graddiff  # noqa: F401
