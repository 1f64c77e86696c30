"""When a training run has diverged: its loss is not finite, or has grown far beyond its own start.

A fixed bound on the loss cannot serve every method. GA's loss is a negative cross-entropy of a
few nats that grows without limit by design; NPO's is bounded; RMU's is a squared distance
between hidden states times α = 1200, thousands at its first step on a 135M model and more with
a larger steering coefficient. The old guard (``train.max_abs_loss`` = 1000) stopped RMU at step
0 or 1 as soon as it was made stronger, and the untrained weights were then scored as a row.

So each run is judged against itself: the first finite loss it sees (the first micro-batch of
step 0) sets its scale, and a later loss whose size exceeds ``growth`` times that scale counts as
diverged. A loss that starts near zero (the cross-entropy of an answer the model has memorised,
0.01 nats, say) would make any rise look like an explosion, so the scale is never below
``FLOOR`` = 1: for losses that start below 1 in size the bound is ``growth`` itself (1000 by
default, the old absolute bound). A NaN or infinite loss always counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

FLOOR = 1.0   # the smallest scale a run's first loss is given (see the module docstring)


@dataclass
class DivergenceGuard:
    """Judges each loss of one run; ``growth`` = 0 turns the relative test off (NaN/inf still stop)."""

    growth: float
    start: float | None = None   # the run's first finite loss

    def problem(self, value: float) -> str | None:
        """Why ``value`` means the run diverged, or None while it has not."""
        if not math.isfinite(value):
            return f"the loss was {value}"
        if self.start is None:
            self.start = value
            return None
        bound = self.bound()
        if bound is not None and abs(value) > bound:
            return (f"the loss {value:.6g} grew beyond {self.growth:g} x max(|first loss|, {FLOOR:g}) = {bound:.6g} "
                    f"(first loss {self.start:.6g})")
        return None

    def bound(self) -> float | None:
        """The largest loss size still accepted, once the first loss is known (None: no bound)."""
        if self.growth <= 0 or self.start is None:
            return None
        return self.growth * max(abs(self.start), FLOOR)
