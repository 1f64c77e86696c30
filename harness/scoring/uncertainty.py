"""Uncertainty of leaderboard aggregates: bootstrap intervals over items and paired tests between rows.

An aggregate is a statistic of per-item scores (a mean, an AUC of members against non-members, a
harmonic mean of several means). A ``Statistic`` names the per-item arrays it needs (``groups``:
``{group: {field: array}}``, one group per independently sampled set of items) and computes its value
for a batch of resamples at once: every array arrives as ``(B, n)`` rows of item indices drawn with
replacement, so 2,000 resamples cost one numpy call, not 2,000.

- Items of a group are resampled jointly across its fields (a retain question's ROUGE, probability and
  truth ratio move together); groups are resampled separately (members and non-members of an AUC:
  stratified).
- Paired: two rows scored on the same items are resampled with the same indices, and the interval
  is of their difference.
- Several seeds of a row: each resample draws the items once (shared by all seeds, as the items are
  the same) and the seeds with replacement, and averages the statistic over the drawn seeds. The
  interval therefore covers item and seed variation (a two-level bootstrap).

Intervals are percentile intervals, seeded explicitly; a KS p-value (forget quality) is a test, not an
estimate, and gets no interval: ``ks_summary`` gives its statistic, sizes and smallest attainable p.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
LEVEL = 0.95

Groups = Mapping[str, Mapping[str, np.ndarray]]          # group -> field -> per-item values (n,)
Batch = Mapping[str, Mapping[str, np.ndarray]]           # group -> field -> resampled values (B, n)


# --------------------------------------------------------------------------- statistics


class Statistic:
    """A column's aggregate as a function of per-item scores (see the module docstring)."""

    def groups(self, per_sample: Mapping[str, Sequence[Mapping[str, Any]]], aggregates: Mapping[str, Any]) -> dict:
        """``{group: {field: array}}`` from a record's ``per_sample``; KeyError/ValueError if absent."""
        raise NotImplementedError

    def __call__(self, batch: Batch) -> np.ndarray:
        raise NotImplementedError


def _field(rows: Sequence[Mapping[str, Any]], field: str) -> np.ndarray:
    """The field's values over the items that have one (None marks an item the aggregate also skips)."""
    values = np.asarray([float(r[field]) for r in rows if r.get(field) is not None], dtype=float)
    if values.size < 2:
        raise ValueError(f"fewer than 2 items carry '{field}': no interval")
    return values


@dataclass(frozen=True)
class ItemMean(Statistic):
    """``scale * mean(transform(x))`` of one per-item field (ROUGE, probability, VerbMem x 100)."""

    split: str
    field: str
    scale: float = 1.0
    transform: Callable[[np.ndarray], np.ndarray] | None = None

    def groups(self, per_sample, aggregates):
        return {self.split: {self.field: _field(per_sample[self.split], self.field)}}

    def __call__(self, batch):
        x = batch[self.split][self.field]
        if self.transform is not None:
            x = self.transform(x)
        return self.scale * x.mean(axis=-1)


def auc_below(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """P(a score of ``low`` < a score of ``high``) + half the ties, per resample row: ``(B, n)`` and ``(B, m)`` in.

    With MUSE's convention (forget = 0, holdout = 1, decision = -score) the AUC is
    ``auc_below(holdout, forget)``; the standard MIA AUC (members = 1) is ``auc_below(member, nonmember)``.
    """
    a, b = low[..., :, None], high[..., None, :]
    return (a < b).mean(axis=(-2, -1)) + 0.5 * (a == b).mean(axis=(-2, -1))


@dataclass(frozen=True)
class SplitAuc(Statistic):
    """AUC of two sets of one split told apart by ``set_field``; members and non-members resampled separately.

    ``low_set`` is the set whose scores count as lower (MUSE: the holdout texts, AUC near 0 when the
    forget texts are memorised; see ``harness.scoring.privacy.muse_auc``).
    """

    split: str
    set_field: str
    low_set: str
    high_set: str
    score: str

    def groups(self, per_sample, aggregates):
        rows = per_sample[self.split]
        return {f"{self.split}:{s}": {self.score: _field([r for r in rows if r.get(self.set_field) == s], self.score)}
                for s in (self.low_set, self.high_set)}

    def __call__(self, batch):
        return auc_below(batch[f"{self.split}:{self.low_set}"][self.score],
                         batch[f"{self.split}:{self.high_set}"][self.score])


@dataclass(frozen=True)
class RelativeToReference(Statistic):
    """``(s - ref) / ref * 100`` with the reference (the retain model's AUC) held fixed: MUSE PrivLeak.

    The reference is the aggregate ``reference_key`` when the record has it, else it is recovered from
    the record's own aggregates (``ref = value / (1 + relative / 100)``). Only this model's items are
    resampled; the reference model's own sampling error is not in the interval.
    """

    inner: Statistic
    value_key: str
    relative_key: str
    reference_key: str | None = None

    def reference(self, aggregates) -> float:
        if self.reference_key and aggregates.get(self.reference_key) is not None:
            return float(aggregates[self.reference_key])
        value, relative = float(aggregates[self.value_key]), float(aggregates[self.relative_key])
        if relative == -100.0:
            raise ValueError("the reference cannot be recovered from a relative value of -100")
        return value / (1.0 + relative / 100.0)

    def groups(self, per_sample, aggregates):
        groups = dict(self.inner.groups(per_sample, aggregates))
        groups["_reference"] = {"value": np.asarray([self.reference(aggregates)])}
        return groups

    def __call__(self, batch):
        ref = batch["_reference"]["value"][..., 0]
        return (self.inner(batch) - ref) / ref * 100.0


@dataclass(frozen=True)
class HarmonicMean(Statistic):
    """Harmonic mean of several statistics (TOFU model utility); 0 when any part is 0, as ``model_utility``."""

    parts: tuple[Statistic, ...]

    def groups(self, per_sample, aggregates):
        out: dict[str, dict[str, np.ndarray]] = {}
        for part in self.parts:
            for group, fields in part.groups(per_sample, aggregates).items():
                out.setdefault(group, {}).update(fields)
        return out

    def __call__(self, batch):
        values = np.stack([part(batch) for part in self.parts])
        with np.errstate(divide="ignore"):
            h = len(self.parts) / (1.0 / values).sum(axis=0)
        return np.where((values == 0).any(axis=0), 0.0, h)


# --------------------------------------------------------------------------- resampling


def _sizes(groups: Groups) -> dict[str, int]:
    sizes = {}
    for name, fields in groups.items():
        lengths = {len(v) for v in fields.values()}
        if len(lengths) != 1:
            raise ValueError(f"group '{name}': fields of different lengths {sorted(lengths)}")
        sizes[name] = lengths.pop()
    return sizes


def resample_indices(sizes: Mapping[str, int], resamples: int, seed: int) -> dict[str, np.ndarray]:
    """``(resamples, n)`` item indices drawn with replacement per group, in sorted group order.

    A group of one value (a fixed reference) is never resampled."""
    rng = np.random.default_rng(seed)
    return {name: (np.zeros((resamples, 1), dtype=int) if n == 1 and name.startswith("_")
                   else rng.integers(0, n, size=(resamples, n)))
            for name, n in sorted(sizes.items())}


def _take(groups: Groups, indices: Mapping[str, np.ndarray]) -> dict:
    return {g: {f: np.asarray(v)[indices[g]] for f, v in fields.items()} for g, fields in groups.items()}


def _identity(groups: Groups) -> dict:
    return {g: {f: np.asarray(v)[None, :] for f, v in fields.items()} for g, fields in groups.items()}


def point(statistic: Statistic, groups: Groups) -> float:
    """The statistic on the items as they are (no resampling)."""
    return float(statistic(_identity(groups))[0])


def _row_draws(statistic: Statistic, seeds: Sequence[Groups], indices, rng: np.random.Generator) -> np.ndarray:
    """(B,) statistic of one row per resample: the mean over seeds drawn with replacement."""
    per_seed = np.stack([statistic(_take(g, indices)) for g in seeds])      # (S, B)
    if len(seeds) == 1:
        return per_seed[0]
    chosen = rng.integers(0, len(seeds), size=(len(seeds), per_seed.shape[1]))
    return np.take_along_axis(per_seed, chosen, axis=0).mean(axis=0)


def _common_sizes(rows: Sequence[Sequence[Groups]]) -> dict[str, int]:
    sizes = [_sizes(g) for row in rows for g in row]
    if any(s != sizes[0] for s in sizes):
        raise ValueError(f"the rows were not scored on the same items: sizes {sizes}")
    return sizes[0]


@dataclass(frozen=True)
class Interval:
    lo: float
    hi: float
    n: dict[str, int]
    resamples: int
    seed: int
    seeds: int = 1

    def as_record(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "n": dict(self.n), "resamples": self.resamples, "seed": self.seed,
                "seeds": self.seeds, "level": LEVEL, "method": "percentile bootstrap over items"
                + (" and seeds" if self.seeds > 1 else "")}


def _check(resamples: int) -> None:
    if resamples < 1000:
        raise ValueError(f"resamples must be at least 1000 for a 95% percentile interval, got {resamples}")


def bootstrap_interval(statistic: Statistic, seeds: Sequence[Groups], resamples: int = DEFAULT_RESAMPLES,
                       seed: int = DEFAULT_SEED) -> Interval:
    """95% percentile bootstrap interval of ``statistic`` for one row (``seeds``: its records' groups)."""
    _check(resamples)
    sizes = _common_sizes([seeds])
    draws = _row_draws(statistic, seeds, resample_indices(sizes, resamples, seed), np.random.default_rng([seed, 1]))
    lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Interval(float(lo), float(hi), {k: v for k, v in sizes.items() if not k.startswith("_")},
                    resamples, seed, len(seeds))


@dataclass(frozen=True)
class PairedTest:
    difference: float   # statistic(a) - statistic(b), means over seeds
    lo: float
    hi: float
    p_value: float      # two-sided: twice the smaller tail ((k + 1) / (B + 1)) of the differences beyond 0, at most 1
    resamples: int
    seed: int

    @property
    def distinguishable(self) -> bool:
        """The 95% interval of the difference excludes 0."""
        return self.lo > 0 or self.hi < 0


def paired_test(statistic: Statistic, a: Sequence[Groups], b: Sequence[Groups], resamples: int = DEFAULT_RESAMPLES,
                seed: int = DEFAULT_SEED) -> PairedTest:
    """Paired bootstrap of ``statistic(a) - statistic(b)`` for two rows scored on the same items.

    Both rows are evaluated on the same resampled item indices (the pairing); their seeds, if
    several, are drawn independently.
    """
    _check(resamples)
    sizes = _common_sizes([a, b])
    indices = resample_indices(sizes, resamples, seed)
    rng = np.random.default_rng([seed, 2])
    d = _row_draws(statistic, a, indices, rng) - _row_draws(statistic, b, indices, rng)
    observed = float(np.mean([point(statistic, g) for g in a]) - np.mean([point(statistic, g) for g in b]))
    lo, hi = np.quantile(d, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    # (count + 1) / (B + 1): a bootstrap p-value is never 0, its resolution is 1 / (B + 1)
    tail = min(int((d <= 0).sum()), int((d >= 0).sum()))
    p = min(1.0, 2.0 * (tail + 1) / (resamples + 1))
    return PairedTest(observed, float(lo), float(hi), p, resamples, seed)


# --------------------------------------------------------------------------- KS (forget quality)


def ks_p_min(n: int, m: int) -> float:
    """The smallest p-value ``scipy.stats.ks_2samp`` (as forget quality calls it) can return for sizes n, m.

    Reached when the two samples do not overlap (D = 1); for small samples it is 2 / C(n+m, n).
    """
    if n < 1 or m < 1:
        raise ValueError(f"sizes must be positive, got {n} and {m}")
    from scipy import stats

    return float(stats.ks_2samp(np.arange(n, dtype=float), np.arange(n, n + m, dtype=float)).pvalue)


def ks_summary(unlearned: Sequence[float], retain: Sequence[float]) -> dict[str, float | int]:
    """KS statistic, p-value, both sizes and the smallest p those sizes allow (forget quality's context)."""
    from scipy import stats

    u, r = np.asarray(unlearned, dtype=float), np.asarray(retain, dtype=float)
    result = stats.ks_2samp(u, r)
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue), "n": int(u.size),
            "m": int(r.size), "p_min": ks_p_min(int(u.size), int(r.size))}


# --------------------------------------------------------------------------- per-item transforms (vectorised)


def truth_ratio_forget_items(ratios: np.ndarray) -> np.ndarray:
    """min(R, 1/R) per item, 0 for R = 0 or inf: the items averaged by ``truth_ratio_forget_score``."""
    with np.errstate(divide="ignore"):
        out = np.where(ratios <= 1.0, ratios, 1.0 / ratios)
    return np.where(np.isfinite(out), out, 0.0)


def truth_ratio_retain_items(ratios: np.ndarray) -> np.ndarray:
    """max(0, 1 - R) per item: the items averaged by ``truth_ratio_retain_score``."""
    return np.maximum(0.0, 1.0 - ratios)
