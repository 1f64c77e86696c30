"""Sweeps: a grid of settings run as cells, and one declared rule that picks each method's operating point.

``harness run --sweep train.lr=1e-5,3e-5,1e-4 --sweep graddiff.alpha=1,2`` runs every method at
every point of the grid (the cartesian product of the lists, in the order given). Each point is a
cell of its own (its settings are part of the cell's identity, so it has its own record), run by
whichever executor runs the others. A key that belongs to another method's section does not
apply to a method, so that method gets one cell per distinct point, not duplicates.

Which point a method's leaderboard row shows is decided by ``eval.select`` (harness/run/selection.py),
declared before the run and the same for every method: the candidates are the grid points in the
order given, each with the scores its cell reported (with ``eval.per_epoch`` that is the epoch the
same rule chose inside the cell, which makes the choice one over every setting and epoch: the rules
rank each candidate on its own, so the best of the per-setting bests is the best overall). The
choice is written to ``<method folder>/sweep-<id>.selection.json`` and recomputed, from the records
alone, by the leaderboard (``choose_point``), so both always agree.

Only settings of the unlearning itself can be swept (``train.*``, ``train.lora.*`` and a method's
own section): benchmark, evaluation, fine-tuning and attack settings change the reference rows or
the rule, which a sweep must hold fixed.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from harness.errors import HarnessError
from harness.run import selection

#: sections whose keys may not be swept: they change the reference rows or the selection itself
FIXED = ("benchmark", "eval", "finetune", "attack", "attack.lora")


def parse(pairs: Sequence[str] | None) -> dict[str, list[str]]:
    """``["train.lr=1e-5,3e-5"]`` -> ``{"train.lr": ["1e-5", "3e-5"]}`` (keys as given, bare keys kept)."""
    out: dict[str, list[str]] = {}
    for pair in pairs or []:
        key, sep, values = pair.partition("=")
        key = key.strip()
        items = [v.strip() for v in values.split(",")]
        if not sep or not key or not values.strip() or any(not v for v in items):
            raise HarnessError(f"--sweep expects KEY=V1,V2,... (e.g. --sweep train.lr=1e-5,3e-5,1e-4), got '{pair}'.")
        if key in out:
            raise HarnessError(f"--sweep {key} is given twice; list all its values in one --sweep {key}=V1,V2,...")
        if len(set(items)) != len(items):
            raise HarnessError(f"--sweep {key}: the value list {','.join(items)} repeats a value; give each value once.")
        out[key] = items
    return out


def check_keys(sweep: Mapping[str, list[str]], overrides: Mapping[str, str]) -> None:
    """Refuse keys a sweep must hold fixed, and a key also given with --set (keys already normalised)."""
    for key in sweep:
        section = key.rsplit(".", 1)[0]
        if section in FIXED:
            raise HarnessError(
                f"--sweep {key}: {section}.* settings change the target/retain rows or the selection rule, which every "
                "point of a sweep shares; sweep train.*, train.lora.* or a method's own settings (e.g. graddiff.alpha), "
                f"and set {key} with --set (one run per value)."
            )
        if key in overrides:
            raise HarnessError(f"--sweep {key} and --set {key} both give {key}; keep one.")


def applies(key: str, method: str) -> bool:
    """Whether swept ``key`` is a setting of ``method``'s cells (loop settings apply to every method)."""
    section = key.rsplit(".", 1)[0]
    return section in ("train", "train.lora") or section == method


def grid(sweep: Mapping[str, list[str]]) -> list[dict[str, str]]:
    """Every point of the grid, in the order given (the first key varies slowest); ``[{}]`` without a sweep."""
    keys = list(sweep)
    return [dict(zip(keys, values)) for values in itertools.product(*(sweep[k] for k in keys))]


def points_for(method: str, sweep: Mapping[str, list[str]]) -> list[dict[str, str]]:
    """The distinct points of ``method``: keys of other methods dropped, duplicates removed, order kept."""
    out: list[dict[str, str]] = []
    for point in grid({k: v for k, v in sweep.items() if applies(k, method)}):
        if point not in out:
            out.append(point)
    return out


def point_label(point: Mapping[str, str]) -> str:
    """``lr=3e-05, graddiff.alpha=2``: train.* keys without their section, others in full."""
    return ", ".join(f"{k[len('train.'):] if k.startswith('train.') and k.count('.') == 1 else k}={v}"
                     for k, v in point.items())


def cell_name(method: str, point: Mapping[str, str]) -> str:
    """A cell's name in logs, plans and executors: ``ga`` alone, or ``ga[lr=3e-05]`` for a swept point."""
    return f"{method}[{point_label(point)}]" if point else method


# --------------------------------------------------------------------------- choosing the point


@dataclass(frozen=True)
class PointChoice:
    """The rule's choice among one method's swept points."""

    rule: str
    config_id: str                 # the chosen point's cell
    point: dict[str, str]
    epoch: int | None              # the epoch the chosen cell reported
    reason: str
    fallback: bool
    candidates: list[dict[str, Any]]   # every point: config_id, point, epoch, aggregates (mean over seeds)

    def as_record(self, sweep_id: str, method: str) -> dict[str, Any]:
        return {"sweep": sweep_id, "method": method, "rule": self.rule, "chosen": {
            "config_id": self.config_id, "point": self.point, "epoch": self.epoch}, "reason": self.reason,
            "fallback": self.fallback, "candidates": self.candidates}


def _mean_aggregates(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    keys = sorted({k for r in records for k in (r.get("aggregates") or {})})
    out = {}
    for key in keys:
        values = [v for r in records if isinstance(v := (r.get("aggregates") or {}).get(key), (int, float))
                  and not isinstance(v, bool) and math.isfinite(v)]
        if values:
            out[key] = math.fsum(values) / len(values)
    return out


def context_of(record: Mapping[str, Any], columns, retain: Mapping[str, Any] | None,
               target: Mapping[str, Any] | None, default_forget: str | None = None) -> selection.Context:
    """The rule's context from a record's recorded settings (``eval.select_fraction``/``select_forget``)."""
    evaluation = (record.get("config") or {}).get("eval") or {}
    return selection.Context(columns, retain, target, utility_key=None,
                             forget_key=evaluation.get("select_forget") or default_forget,
                             fraction=float(evaluation.get("select_fraction", 0.9)))


def choose_point(groups: Sequence[tuple[Mapping[str, str], Sequence[Mapping[str, Any]]]], rule: str,
                 context: selection.Context) -> PointChoice:
    """Apply ``rule`` to one method's points, in grid order; ``groups`` = (point, its records (seeds)).

    A point whose records all failed is no candidate. Scores of several seeds are averaged first."""
    usable = [(p, rs) for p, rs in groups if any(r.get("status") == "ok" for r in rs)]
    if not usable:
        raise HarnessError("no point of the sweep finished, so none can be selected; see the failed records.")
    candidates = []
    for i, (point, records) in enumerate(usable):
        ok = [r for r in records if r.get("status") == "ok"]
        epoch = (ok[0].get("selection") or {}).get("epoch")
        candidates.append({"epoch": i + 1, "aggregates": _mean_aggregates(ok), "point": dict(point),
                           "config_id": ok[0].get("config_id"), "reported_epoch": epoch})
    chosen = selection.select(rule, candidates, context.columns, context.retain, context.utility_key, context=context)
    best = candidates[chosen.epoch - 1]
    reason = chosen.reason.replace("candidates", "swept points") + f"; chosen: {point_label(best['point'])}" + (
        f", epoch {best['reported_epoch']}" if best["reported_epoch"] is not None else "")
    listed = [{"config_id": c["config_id"], "point": c["point"], "epoch": c["reported_epoch"],
               "aggregates": c["aggregates"]} for c in candidates]
    return PointChoice(rule, best["config_id"], best["point"], best["reported_epoch"], reason, chosen.fallback, listed)


def write_choice(path, choice: PointChoice, sweep_id: str, method: str) -> None:
    from harness.run.results import atomic_write_text

    atomic_write_text(path, json.dumps(choice.as_record(sweep_id, method), indent=1, sort_keys=True) + "\n")
