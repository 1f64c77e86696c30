"""Is it really forgotten? Attacks that re-evaluate an attacked copy of a model (``eval.attacks``).

After a model's normal evaluation, each attack makes an attacked copy and evaluates the
benchmark's metrics again through the same engine and evaluation cache:

- ``relearn`` (Hu et al. 2024, arXiv 2406.13356; Deeb and Roger 2024, arXiv 2410.08827): the
  forget set's independent units (a synthetic person, a TOFU author, a MUSE article) are split by
  the run's seed into a *relearn* half and a *scored* half that never overlap; the copy is
  fine-tuned for ``attack.relearn_steps`` optimiser steps of plain cross-entropy on the relearn
  half through the shared loop (``harness/training/loop.py``), and only the scored half's forget items
  are scored, so the attack cannot simply re-inject what it is scored on (Feng et al. 2025, arXiv
  2506.00688). The unattacked model is scored on the same scored half for the comparison, and so
  are the target and retain models (the retain model's per-item values are the reference of
  forget quality and PrivLeak on that half). Utility items are scored in full.
- ``int8`` / ``int4`` (Zhang et al. 2024, arXiv 2410.16454): weight-only round-to-nearest
  quantisation per group, dequantised (``harness/attacks/quantize.py``); scored on the full benchmark.

The retain model is attacked too: how much a model that never saw the forget data "recovers"
is the baseline a method's recovery must be compared with.

Recovery per forget-side metric (columns of the verbatim, knowledge and privacy families):
``(attacked - unlearned) / (target - unlearned)``, the share of what unlearning removed that came
back; all three values on the same items. It is not clipped: below 0 the attack removed more,
above 1 it overshot the target. When ``|target - unlearned|`` is below the metric's displayed
precision (``10**-digits`` of its leaderboard column) nothing measurable was removed and the
recovery is None, with that reason; for the retain row "unlearned" means the retain model.
"""
from __future__ import annotations

import copy
import gc
import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch

from harness.training import distributed
from harness.errors import HarnessError
from harness.runtime.models import LoadedModel
from harness.training.finetune import Finetune
from harness.attacks.quantize import quantise_model_
from harness.training.loop import TrainConfig, train

RELEARN = "relearn"
QUANTISE = {"int8": 8, "int4": 4}
ATTACKS = (RELEARN, *QUANTISE)


@dataclass
class AttackConfig:
    """``--set attack.<field>=...``: settings of the attacks named by ``eval.attacks``."""
    relearn_steps: int = 5       # optimiser steps of fine-tuning on the relearn half (a "few" steps)
    relearn_lr: float = 0.0      # 0 = finetune.lr, the rate that taught the target the data
    relearn_batch: int = 0       # examples per step; 0 = finetune.global_batch
    group_size: int = 128        # inputs per quantisation group (Zhang et al.: 128)

    def __post_init__(self):
        if self.relearn_steps < 1:
            raise HarnessError("attack.relearn_steps must be at least 1.")
        if self.relearn_lr < 0 or self.relearn_batch < 0 or self.group_size < 0:
            raise HarnessError("attack.relearn_lr, attack.relearn_batch and attack.group_size must not be negative.")


def parse_attacks(spec: str) -> tuple[str, ...]:
    """``"relearn,int4"`` -> ``("relearn", "int4")``; an unknown name is an error listing the known ones."""
    names = []
    for name in (n.strip().lower() for n in (spec or "").split(",")):
        if not name or name in ("none", "off"):
            continue
        if name not in ATTACKS:
            raise HarnessError(f"eval.attacks: unknown attack '{name}'; known attacks: {', '.join(ATTACKS)}.")
        if name not in names:
            names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class ForgetSplit:
    relearn: tuple[str, ...]
    scored: tuple[str, ...]
    seed: int


def split_units(units: Sequence[str], seed: int) -> ForgetSplit:
    """A seeded split of the forget units into two disjoint halves (the scored half gets the odd one)."""
    distinct = sorted(set(units))
    if len(distinct) < 2:
        raise HarnessError(
            f"the relearning attack needs at least 2 independent forget units to split, this benchmark has "
            f"{len(distinct)} (--limit may have cut it down): raise --limit or leave relearn out of eval.attacks."
        )
    order = distinct[:]
    random.Random(f"relearn-split:{seed}").shuffle(order)
    half = len(order) // 2
    return ForgetSplit(tuple(sorted(order[:half])), tuple(sorted(order[half:])), seed)


def recovery(attacked: float | None, unlearned: float | None, target: float | None,
             tol: float) -> tuple[float | None, str | None]:
    """(recovery, None) or (None, why): see the module docstring."""
    if attacked is None or unlearned is None or target is None:
        return None, "a score is missing"
    removed = target - unlearned
    if abs(removed) < tol:
        return None, f"|target - unlearned| = {abs(removed):.3g} is below {tol:g}: nothing measurable was removed"
    return (attacked - unlearned) / removed, None


def recoveries(attacked: dict, unlearned: dict, target: dict, columns) -> dict[str, dict[str, Any]]:
    """Per forget-side column: {"value": recovery or None, "why": reason when None}."""
    out = {}
    for c in forget_columns(columns):
        value, why = recovery(_num(attacked.get(c.key)), _num(unlearned.get(c.key)), _num(target.get(c.key)),
                              10.0 ** -c.digits)
        out[c.key] = {"value": value} if why is None else {"value": None, "why": why}
    return out


FORGET_FAMILIES = ("verbatim", "knowledge", "privacy")


def forget_columns(columns) -> list:
    """The forget-side columns an attack may bring back (not utility, not auxiliary)."""
    return [c for c in columns if c.family in FORGET_FAMILIES]


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def copy_of(loaded: LoadedModel) -> LoadedModel:
    return LoadedModel(copy.deepcopy(loaded.model), loaded.tokenizer, loaded.name, loaded.source)


#: evaluate(loaded, benchmark, reference, self_reference) -> the runner's evaluation dict
Evaluate = Callable[..., dict]


class Attacks:
    """The attack stage of every cell of one run, and what it shares between cells.

    Built up front (so a bad setting or a benchmark that cannot be split fails before any work);
    the retain cell stores its scores on the scored half (the reference there), the target cell
    its own (the recovery's target there), then every method cell is attacked.
    """

    def __init__(self, names: Sequence[str], cfg: AttackConfig, bench, finetune_cfg: TrainConfig, seed: int,
                 columns, log=print, progress=None):
        self.names, self.cfg, self.bench, self.seed, self.columns = tuple(names), cfg, bench, seed, columns
        self.log, self.progress = log, progress
        self.split = self.scored = None
        self.relearn_examples: list = []
        if RELEARN in self.names:
            self.split = split_units(bench.forget_units(), seed)
            self.scored = bench.forget_subset(self.split.scored)
            self.relearn_examples = bench.forget_subset(self.split.relearn).forget_train()
            if not self.relearn_examples:
                raise HarnessError("the relearn half of the forget set holds no training examples.")
        self.relearn_cfg = TrainConfig(**{
            **asdict(finetune_cfg), "lr": cfg.relearn_lr or finetune_cfg.lr, "epochs": 1,
            "max_steps": cfg.relearn_steps, "global_batch": cfg.relearn_batch or finetune_cfg.global_batch,
            "micro_batch": min(finetune_cfg.micro_batch, cfg.relearn_batch or finetune_cfg.global_batch),
            "warmup_ratio": 0.0, "schedule": "constant",
        })
        self.scored_reference: dict | None = None   # the retain model's reference values on the scored half
        self.target: dict[str, dict | None] = {"full": None, "scored": None}

    def settings(self) -> dict[str, Any]:
        """What identifies the attacks of a run (part of every cell's config)."""
        out: dict[str, Any] = {"names": list(self.names), "seed": self.seed}
        if RELEARN in self.names:
            out["relearn"] = {"steps": self.cfg.relearn_steps, "train": asdict(self.relearn_cfg),
                              "relearn_units": list(self.split.relearn), "scored_units": list(self.split.scored)}
        if any(n in QUANTISE for n in self.names):
            out["quantise"] = {"group_size": self.cfg.group_size, "scheme": "RTN per group, dequantised"}
        return out

    # --- stages ------------------------------------------------------------------------------
    def reference_stage(self, role: str, loaded: LoadedModel, evaluate: Evaluate, out: dict) -> dict:
        """Retain: scores on the scored half (its own reference) and every attack. Target: its scores only."""
        result: dict[str, Any] = {}
        if role == "target":
            if self.scored is not None:
                scored = evaluate(loaded, self.scored, self.scored_reference)
                self.target["scored"] = scored["aggregates"]
                result[RELEARN] = {"role": "reference", "split": self._split_record(),
                                   "unattacked": scored["aggregates"], "timings": {"eval_s": scored["timings"]["eval_s"]}}
            return result
        if self.scored is not None:
            self.scored_reference = evaluate(loaded, self.scored, None, self_reference=True)["reference_values"]
        result = self._attack_all(loaded, evaluate, out, out.get("reference_values"), self_reference=True)
        if RELEARN in result:
            result[RELEARN]["reference_values"] = self.scored_reference
        return result

    def remember(self, role: str, record: dict | None) -> None:
        """Take from a reference row's record (fresh or a finished one that was skipped) what later cells need."""
        if not record or record.get("status") not in ("ok", "diverged"):
            return
        block = (record.get("attacks") or {}).get(RELEARN) or {}
        if role == "retain":
            self.scored_reference = block.get("reference_values", self.scored_reference)
        elif role == "target":
            self.target = {"full": record.get("aggregates"), "scored": block.get("unattacked")}

    def method_stage(self, loaded: LoadedModel, evaluate: Evaluate, out: dict, reference) -> dict:
        return self._attack_all(loaded, evaluate, out, reference)

    # --- attacks -----------------------------------------------------------------------------
    def _attack_all(self, loaded, evaluate, out, reference, self_reference: bool = False) -> dict:
        result = {}
        for name in self.names:
            started = time.perf_counter()
            if name == RELEARN:
                block = self._relearn(loaded, evaluate, self_reference)
            else:
                block = self._quantise(name, loaded, evaluate, out, reference, self_reference)
            block["timings"]["total_s"] = round(time.perf_counter() - started, 3)
            result[name] = block
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return result

    def _split_record(self) -> dict:
        return {"seed": self.split.seed, "relearn_units": list(self.split.relearn),
                "scored_units": list(self.split.scored), "relearn_examples": len(self.relearn_examples)}

    def _relearn(self, loaded, evaluate, self_reference: bool) -> dict:
        # Self-referenced (the retain model): its own scored-half values are the reference of its
        # unattacked scores; the attacked copy is scored against them like any other model.
        before = evaluate(loaded, self.scored, self.scored_reference, self_reference=self_reference)
        attacked = copy_of(loaded)
        try:
            with distributed.this_process_only():   # the main process attacks; launched ranks wait for it
                result = train(attacked.model, attacked.tokenizer, Finetune(), self.relearn_examples, None,
                               self.relearn_cfg, self.seed, progress=self.progress)
            after = evaluate(attacked, self.scored, self.scored_reference)
        finally:
            del attacked
        block = {
            "settings": {"steps": self.cfg.relearn_steps, "lr": self.relearn_cfg.lr,
                         "global_batch": self.relearn_cfg.global_batch, "loss": "cross-entropy (finetune)"},
            "seed": self.seed, "split": self._split_record(), "items": "scored half of the forget set; utility in full",
            "unattacked": before["aggregates"], "aggregates": after["aggregates"], "missing": after["missing"],
            "training": {"status": result.status, "steps": result.steps, "losses": result.losses},
            "timings": {"train_s": round(result.seconds, 3), "eval_s": after["timings"]["eval_s"]},
            "eval_counts": after["eval_counts"],
        }
        if not self_reference and self.target["scored"] is not None:
            block["recovery"] = recoveries(after["aggregates"], before["aggregates"], self.target["scored"], self.columns)
        return block

    def _quantise(self, name, loaded, evaluate, out, reference, self_reference: bool) -> dict:
        attacked = copy_of(loaded)
        try:
            started = time.perf_counter()
            summary = quantise_model_(attacked.model, QUANTISE[name], self.cfg.group_size)
            quantise_s = time.perf_counter() - started
            after = evaluate(attacked, self.bench, reference)   # the retain model's own values when it is attacked
        finally:
            del attacked
        block = {
            "settings": summary, "seed": self.seed, "items": "all",
            "unattacked": out["aggregates"], "aggregates": after["aggregates"], "missing": after["missing"],
            "timings": {"quantise_s": round(quantise_s, 3), "eval_s": after["timings"]["eval_s"]},
            "eval_counts": after["eval_counts"],
        }
        if not self_reference and self.target["full"] is not None:
            block["recovery"] = recoveries(after["aggregates"], out["aggregates"], self.target["full"], self.columns)
        return block
