"""Is it really forgotten? Attacks that re-evaluate an attacked copy of a model (``eval.attacks``).

After a model's normal evaluation, each attack makes an attacked copy and evaluates the
benchmark's metrics again through the same engine and evaluation cache. The retain model and
the target are attacked exactly like every unlearned model, so each attacked row has attacked
references on the same items: the leaderboard's guard and residual share
(``harness/attacks/scores.py``) compare them.

Relearning protocols (each fine-tunes the copy with plain cross-entropy through the shared loop,
``harness/training/loop.py``, on training examples built *after* the benchmark has seen the
model's tokenizer, so TOFU's prompt format is the one the models learned):

- ``relearn-heldout`` (Deeb and Roger 2024, arXiv 2410.08827): the forget units (a synthetic
  person, a TOFU author, a MUSE article) are split by the run's seed into a relearn half and a
  scored half; the copy trains on the relearn half's facts and is scored on the held-out half,
  whose facts cannot be guessed from the relearn half. ``relearn`` is accepted as its old name.
- ``relearn-same-entity`` (Hu et al. 2024, arXiv 2406.13356): each forget unit's facts (its
  questions) are split in two; the copy trains on one part of every unit and is scored on the other.
  Texts that state every fact of a unit at once (a synthetic biography) belong to neither part.
- ``relearn-openunlearning`` (Dorna et al. 2025, arXiv 2506.12618, Sec. 4.1): one epoch on the
  whole forget set at lr 2e-5, scored on the whole forget set; what it trains on is what it
  scores, so it is only read against the retain model under the same attack (the R score).

``relearn-heldout`` and ``relearn-same-entity`` take ``attack.relearn_steps`` steps with a linear
warm-up and decay; their learning rate defaults to the one that makes the attack's cumulative
learning rate (sum over steps) equal to the unlearning's (``unlearning_budget``): an attack no
larger than the unlearning it probes. A larger ``attack.relearn_lr`` is refused unless
``attack.over_budget=true``.

Quantisation: ``int8`` / ``int4`` (Zhang et al. 2024, arXiv 2410.16454): weight-only
round-to-nearest per group, dequantised (``harness/attacks/quantize.py``), on all items;
``bnb-int8`` / ``bnb-fp4`` / ``bnb-nf4``: the same paper's bitsandbytes quantisation, dequantised
(``harness/attacks/bnb.py``; needs the optional bitsandbytes package, refused up front without it).

Opt-in settings of the relearning protocols, all off by default (a run without them records exactly
what it did before they existed): ``attack.relearn_lr_grid`` (several rates, one kept per method by
the rule in ``harness/attacks/grid.py``), ``attack.relearn_curve`` (the scores after every step,
``harness/attacks/probe.py``) and ``attack.lora.*`` (a LoRA attacker, merged before scoring).
"""
from __future__ import annotations

import copy
import gc
import random
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

import torch

from harness.training import distributed
from harness.errors import HarnessError
from harness.runtime.models import LoadedModel
from harness.training.finetune import Finetune
from harness.training.lora import LoraSettings
from harness.training.lora import describe as describe_lora
from harness.attacks import grid as lr_grid
from harness.attacks.bnb import BNB, bnb_quantise_model_, check_available
from harness.attacks.probe import StepProbe
from harness.attacks.quantize import quantise_model_
from harness.attacks.scores import describe, guard, guard_noise, knowledge_columns, utility_key
from harness.training.loop import TrainConfig, epoch_plan, schedule_factor, train

HELDOUT = "relearn-heldout"
SAME_ENTITY = "relearn-same-entity"
OPENUNLEARNING = "relearn-openunlearning"
RELEARN_PROTOCOLS = (HELDOUT, SAME_ENTITY, OPENUNLEARNING)
QUANTISE = {"int8": 8, "int4": 4}
ATTACKS = (*RELEARN_PROTOCOLS, *QUANTISE, *BNB)
BUDGETED = (HELDOUT, SAME_ENTITY)   # the protocols whose rate comes from the unlearning's budget (and may be gridded)
ALIASES = {"relearn": HELDOUT}   # the 0.1 name of the held-out protocol
RELEARN = HELDOUT                # kept for imports of the 0.1 name

SOURCES = {
    HELDOUT: "Deeb and Roger 2024, arXiv 2410.08827 (train on some forget facts, score held-out ones)",
    SAME_ENTITY: "Hu et al. 2024, arXiv 2406.13356 (train on some facts of each forget entity, score its others)",
    OPENUNLEARNING: "Dorna et al. 2025, arXiv 2506.12618 Sec. 4.1 (one epoch on the forget set at lr 2e-5)",
    "int8": "Zhang et al. 2024, arXiv 2410.16454 (round-to-nearest, 8 bits per weight, per group)",
    "int4": "Zhang et al. 2024, arXiv 2410.16454 (round-to-nearest, 4 bits per weight, per group)",
    "bnb-int8": "Zhang et al. 2024, arXiv 2410.16454 (bitsandbytes load_in_8bit: LLM.int8() weights, dequantised)",
    "bnb-fp4": "Zhang et al. 2024, arXiv 2410.16454 (bitsandbytes load_in_4bit, its default fp4, dequantised)",
    "bnb-nf4": "Dorna et al. 2025, arXiv 2506.12618 Sec. 4.1 (bitsandbytes 4-bit nf4, dequantised)",
}
ITEMS = {HELDOUT: "held-out units", SAME_ENTITY: "held-out facts", OPENUNLEARNING: "whole forget set"}


@dataclass
class AttackConfig:
    """``--set attack.<field>=...``: settings of the attacks named by ``eval.attacks``."""
    relearn_steps: int = 4            # heldout / same-entity: optimiser steps
    relearn_lr: float = 0.0           # 0 = the rate whose cumulative sum over the steps equals the unlearning's
    relearn_warmup_ratio: float = 0.5  # share of the steps warming up linearly (then linear decay)
    relearn_batch: int = 0            # examples per step; 0 = finetune.global_batch
    over_budget: bool = False         # allow a relearn_lr whose cumulative rate exceeds the unlearning's
    openunlearning_lr: float = 2e-5   # arXiv 2506.12618 Sec. 4.1
    openunlearning_epochs: int = 1    # arXiv 2506.12618 Sec. 4.1
    group_size: int = 128             # inputs per quantisation group (Zhang et al.: 128)
    guard_gap: float = 0.8            # the attacked target must keep this share of the target-retain gap
    guard_utility: float = 0.1        # the attacked retain model may lose at most this share of its utility
    relearn_lr_grid: str = ""         # heldout / same-entity: comma list of multiples of the relearn lr; '' = one rate
    relearn_lr_column: str = ""       # the forget column whose recovery picks the grid point; '' = the first scored
    relearn_curve: bool = False       # relearning: also score the attacked copy after every optimiser step

    def __post_init__(self):
        if self.relearn_steps < 1 or self.openunlearning_epochs < 1:
            raise HarnessError("attack.relearn_steps and attack.openunlearning_epochs must be at least 1.")
        if min(self.relearn_lr, self.relearn_batch, self.group_size, self.openunlearning_lr) < 0:
            raise HarnessError("attack.relearn_lr, attack.relearn_batch, attack.group_size and "
                               "attack.openunlearning_lr must not be negative.")
        if not 0 <= self.relearn_warmup_ratio <= 1:
            raise HarnessError(f"attack.relearn_warmup_ratio must be between 0 and 1, got {self.relearn_warmup_ratio}.")
        if not 0 < self.guard_gap <= 1 or not 0 <= self.guard_utility < 1:
            raise HarnessError("attack.guard_gap must be in (0, 1] and attack.guard_utility in [0, 1).")
        self.grid_multiples()   # a bad grid fails here, before anything else

    def grid_multiples(self) -> tuple[float, ...]:
        return lr_grid.parse_grid(self.relearn_lr_grid)


def parse_attacks(spec: str) -> tuple[str, ...]:
    """``"relearn-heldout,int4"`` -> ``("relearn-heldout", "int4")``; an unknown name is an error listing the known ones."""
    names = []
    for name in (n.strip().lower() for n in (spec or "").split(",")):
        if not name or name in ("none", "off"):
            continue
        name = ALIASES.get(name, name)
        if name not in ATTACKS:
            raise HarnessError(f"eval.attacks: unknown attack '{name}'; known attacks: {', '.join(ATTACKS)} "
                               f"('relearn' is {HELDOUT}).")
        if name not in names:
            names.append(name)
    return tuple(names)


# --- splits ----------------------------------------------------------------------------------
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
            f"relearn-heldout needs at least 2 independent forget units to split, this benchmark has "
            f"{len(distinct)} (--limit may have cut it down): raise --limit or leave it out of eval.attacks."
        )
    order = distinct[:]
    random.Random(f"relearn-split:{seed}").shuffle(order)
    half = len(order) // 2
    return ForgetSplit(tuple(sorted(order[:half])), tuple(sorted(order[half:])), seed)


def split_facts(facts: dict[str, str], seed: int) -> ForgetSplit:
    """Per unit, a seeded split of its facts into a relearn part and a scored part (the scored part gets
    the odd one); units with a single fact cannot be split and are left out of both."""
    by_unit: dict[str, list[str]] = {}
    for fact, unit in facts.items():
        by_unit.setdefault(unit, []).append(fact)
    relearn, scored = [], []
    for unit in sorted(by_unit):
        own = sorted(by_unit[unit])
        if len(own) < 2:
            continue
        random.Random(f"relearn-facts:{seed}:{unit}").shuffle(own)
        relearn += own[: len(own) // 2]
        scored += own[len(own) // 2:]
    if not relearn:
        raise HarnessError(
            "relearn-same-entity needs a forget unit with at least 2 facts to split, this benchmark has none "
            "(--limit may have cut it down): raise --limit or leave it out of eval.attacks."
        )
    return ForgetSplit(tuple(sorted(relearn)), tuple(sorted(scored)), seed)


# --- budgets ---------------------------------------------------------------------------------
def cumulative_lr(cfg: TrainConfig, n_examples: int) -> float:
    """Sum over the optimiser steps of the learning rate ``cfg`` gives a run over ``n_examples``."""
    _, total, _ = epoch_plan(n_examples, cfg)
    warmup = int(round(cfg.warmup_ratio * total))
    return cfg.lr * sum(schedule_factor(s, total, warmup, cfg.schedule) for s in range(total))


def _copy_of(loaded: LoadedModel) -> LoadedModel:
    return LoadedModel(copy.deepcopy(loaded.model), loaded.tokenizer, loaded.name, loaded.source)


copy_of = _copy_of


@dataclass
class RelearnPlan:
    """One relearning protocol: the view it trains on, the view it scores, its training settings."""
    name: str
    train_view: Any
    scored_view: Any
    split: dict[str, Any]
    cfg: TrainConfig
    budget: dict[str, Any] = field(default_factory=dict)
    points: list[tuple[float, TrainConfig]] = field(default_factory=list)   # attack.relearn_lr_grid: (multiple, cfg)

    def examples(self, tokenizer) -> list:
        """The training examples in the prompt format ``tokenizer`` resolves (TOFU's ``auto``)."""
        self.train_view.use_tokenizer(tokenizer)
        examples = self.train_view.forget_train()
        if not examples:
            raise HarnessError(f"{self.name}: the part of the forget set it trains on holds no training examples.")
        return examples


#: evaluate(loaded, benchmark, reference, self_reference) -> the runner's evaluation dict
Evaluate = Callable[..., dict]
KEPT = ("aggregates", "per_sample", "missing")


class Attacks:
    """The attack stage of every cell of one run, and what it shares between cells.

    Built up front (a bad setting or a benchmark that cannot be split fails before any work). The
    retain cell stores its reference values on each scored view; every cell (retain, target,
    method) is then attacked the same way.
    """

    def __init__(self, names: Sequence[str], cfg: AttackConfig, bench, finetune_cfg: TrainConfig, seed: int,
                 columns, log=print, progress=None, unlearning_budget: float | None = None,
                 lora: LoraSettings | None = None):
        names = tuple(dict.fromkeys(ALIASES.get(n, n) for n in names))
        self.names, self.cfg, self.bench, self.seed, self.columns = names, cfg, bench, seed, columns
        self.log, self.progress = log, progress
        self.unlearning_budget = unlearning_budget
        self.lora = lora if lora is not None and lora.enabled else None
        self.multiples = cfg.grid_multiples()
        self._check_options()
        self.plans: dict[str, RelearnPlan] = {}
        batch = cfg.relearn_batch or finetune_cfg.global_batch
        base = {**asdict(finetune_cfg), "global_batch": batch, "micro_batch": min(finetune_cfg.micro_batch, batch)}
        for name in self.names:
            if name == HELDOUT:
                split = split_units(bench.forget_units(), seed)
                train_view, scored_view = bench.forget_subset(split.relearn), bench.forget_subset(split.scored)
                record = {"seed": seed, "relearn_units": list(split.relearn), "scored_units": list(split.scored)}
            elif name == SAME_ENTITY:
                split = split_facts(bench.forget_facts(), seed)
                train_view, scored_view = bench.forget_fact_subset(split.relearn), bench.forget_fact_subset(split.scored)
                record = {"seed": seed, "relearn_facts": list(split.relearn), "scored_facts": list(split.scored)}
            elif name == OPENUNLEARNING:
                train_view = scored_view = bench
                record = {"seed": seed, "trains_on": "the whole forget set", "scores": "the whole forget set"}
            else:
                continue
            plan = RelearnPlan(name, train_view, scored_view, record, self._train_cfg(name, base, train_view))
            if self.multiples and name in BUDGETED:
                plan.points = [(m, self._grid_cfg(name, plan, m)) for m in self.multiples]
            self.plans[name] = plan
        self.scored_reference: dict[str, dict | None] = {n: None for n in self.plans}   # the retain model's, per view
        # attack.relearn_lr_grid: the retain and target rows' attack blocks (every grid point), per protocol
        self.grid_reference: dict[str, dict[str, dict]] = {n: {} for n, p in self.plans.items() if p.points}
        self.grid_column = self._grid_column() if self.grid_reference else None

    def _check_options(self) -> None:
        """Opt-in settings that would do nothing in this run are refused, not ignored."""
        check_available(self.names)
        relearning = [n for n in self.names if n in RELEARN_PROTOCOLS]
        if self.multiples and not any(n in BUDGETED for n in self.names):
            raise HarnessError(f"attack.relearn_lr_grid applies to {HELDOUT} and {SAME_ENTITY} (their rate comes from "
                               "the unlearning's budget); eval.attacks names neither. Add one, or leave the grid out.")
        if self.cfg.relearn_lr_column and not self.multiples:
            raise HarnessError("attack.relearn_lr_column picks a point of attack.relearn_lr_grid, which is not set.")
        for setting, on in (("attack.relearn_curve", self.cfg.relearn_curve), ("attack.lora.r", self.lora is not None)):
            if on and not relearning:
                raise HarnessError(f"{setting} applies to the relearning attacks ({', '.join(RELEARN_PROTOCOLS)}); "
                                   "eval.attacks names none of them. Add one, or leave it out.")

    def _grid_column(self) -> str:
        """The column whose recovery picks a grid point: attack.relearn_lr_column, else the first knowledge column."""
        keys = [c.key for c in knowledge_columns(self.columns)]
        chosen = self.cfg.relearn_lr_column
        if chosen and chosen not in keys:
            raise HarnessError(f"attack.relearn_lr_column={chosen!r} is not a forget column where a higher value means "
                               f"more knowledge on this benchmark; choose one of: {', '.join(keys) or '(none)'}.")
        if not keys:
            raise HarnessError("attack.relearn_lr_grid needs a forget column where a higher value means more knowledge "
                               "to pick a point by, and this benchmark has none.")
        return chosen or keys[0]

    def _grid_cfg(self, name: str, plan: RelearnPlan, multiple: float) -> TrainConfig:
        """The plan's settings at ``multiple`` times its rate, under the same budget rule as attack.relearn_lr."""
        lr = multiple * plan.cfg.lr
        spent = cumulative_lr(replace(plan.cfg, lr=lr), len(plan.train_view.forget_train()))
        if self.unlearning_budget and spent > self.unlearning_budget * (1 + 1e-9) and not self.cfg.over_budget:
            raise HarnessError(
                f"{name}: attack.relearn_lr_grid's multiple {multiple:g} gives lr {lr:.3g}, whose {self.cfg.relearn_steps} "
                f"steps sum to a learning rate of {spent:.3g}, more than the unlearning's {self.unlearning_budget:.3g}: "
                "that point would be larger than what it probes. Keep the multiples at most 1 (with attack.relearn_lr=0 "
                "the rate already spends the whole budget), or set attack.over_budget=true."
            )
        return replace(plan.cfg, lr=lr)

    @property
    def needs_target_first(self) -> bool:
        """Method cells choose their grid point against the attacked target: it must be finished before them."""
        return bool(self.grid_reference)

    def _train_cfg(self, name: str, base: dict, view) -> TrainConfig:
        n = len(view.forget_train())   # a count only: the same in every prompt format
        if name == OPENUNLEARNING:
            return TrainConfig(**{**base, "lr": self.cfg.openunlearning_lr, "epochs": self.cfg.openunlearning_epochs,
                                  "max_steps": 0, "warmup_ratio": 0.0, "schedule": "constant"})
        shape = TrainConfig(**{**base, "lr": 1.0, "epochs": 1, "max_steps": self.cfg.relearn_steps,
                               "warmup_ratio": self.cfg.relearn_warmup_ratio, "schedule": "linear"})
        per_unit_lr = cumulative_lr(shape, n)
        lr = self.cfg.relearn_lr
        if not lr:
            if not self.unlearning_budget:
                raise HarnessError(f"{name}: attack.relearn_lr=0 takes the unlearning's cumulative learning rate, "
                                   "which this run does not know; set attack.relearn_lr.")
            lr = self.unlearning_budget / per_unit_lr
        elif self.unlearning_budget and lr * per_unit_lr > self.unlearning_budget * (1 + 1e-9) and not self.cfg.over_budget:
            raise HarnessError(
                f"{name}: attack.relearn_lr={lr:g} over {self.cfg.relearn_steps} steps sums to a learning rate of "
                f"{lr * per_unit_lr:.3g}, more than the unlearning's {self.unlearning_budget:.3g}: the attack would be "
                "larger than what it probes. Lower attack.relearn_lr or attack.relearn_steps (0 = the unlearning's "
                "budget), or set attack.over_budget=true."
            )
        return TrainConfig(**{**asdict(shape), "lr": lr})

    def settings(self) -> dict[str, Any]:
        """What identifies the attacks of a run (part of every cell's config)."""
        out: dict[str, Any] = {"names": list(self.names), "seed": self.seed,
                               "guard": {"gap": self.cfg.guard_gap, "utility": self.cfg.guard_utility}}
        for name, plan in self.plans.items():
            out[name] = {"source": SOURCES[name], "train": asdict(plan.cfg), "split": plan.split,
                         "cumulative_lr": cumulative_lr(plan.cfg, len(plan.train_view.forget_train())),
                         "unlearning_cumulative_lr": self.unlearning_budget}
            out[name].update(self._options(plan))   # only the opt-in settings that are on: the default ids stay
        if any(n in QUANTISE for n in self.names):
            out["quantise"] = {"group_size": self.cfg.group_size, "scheme": "RTN per group, dequantised"}
        if any(n in BNB for n in self.names):
            out["bnb"] = {n: SOURCES[n] for n in self.names if n in BNB}
        return out

    def _options(self, plan: RelearnPlan) -> dict[str, Any]:
        """The opt-in settings of a relearning plan that are on (none by default)."""
        out: dict[str, Any] = {}
        if plan.points:
            n = len(plan.train_view.forget_train())
            out["lr_grid"] = {"multiples": [m for m, _ in plan.points], "lrs": [c.lr for _, c in plan.points],
                              "cumulative_lrs": [cumulative_lr(c, n) for _, c in plan.points],
                              "column": self.grid_column, "rule": lr_grid.RULE, "source": SOURCES[HELDOUT],
                              "over_budget": self.cfg.over_budget}
        if self.cfg.relearn_curve:
            out["curve"] = "scores after every optimiser step"
        if self.lora is not None:
            out["lora"] = describe_lora(self.lora)
        return out

    # --- stages ------------------------------------------------------------------------------
    def reference_stage(self, role: str, loaded: LoadedModel, evaluate: Evaluate, out: dict, reference=None) -> dict:
        """Retain: its reference values on each scored view, then every attack. Target: every attack
        (``reference``: the retain model's values on the full benchmark)."""
        if role == "retain":
            for name, plan in self.plans.items():
                view = evaluate(loaded, plan.scored_view, None, self_reference=True)
                self.scored_reference[name] = view["reference_values"]
            result = self._attack_all(loaded, evaluate, out, out.get("reference_values"), self_reference=True,
                                      role=role)
            for name in self.plans:
                result[name]["reference_values"] = self.scored_reference[name]
            return result
        return self._attack_all(loaded, evaluate, out, reference, role=role)

    def remember(self, role: str, record: dict | None) -> None:
        """Take from a reference row's record (fresh or a finished one that was skipped) what the method rows
        need: the retain model's reference values on each scored view and, with a learning-rate grid, the
        retain and target rows' results at every grid point."""
        if role not in ("retain", "target") or not record or record.get("status") not in ("ok", "diverged"):
            return
        attacks = record.get("attacks") or {}
        for name in self.plans:
            block = attacks.get(name) or {}
            values = block.get("reference_values")
            if role == "retain" and values is not None:
                self.scored_reference[name] = values
            if name in self.grid_reference and isinstance(block.get("lr_grid"), dict):
                self.grid_reference[name][role] = block

    def method_stage(self, loaded: LoadedModel, evaluate: Evaluate, out: dict, reference) -> dict:
        return self._attack_all(loaded, evaluate, out, reference)

    # --- attacks -----------------------------------------------------------------------------
    def _attack_all(self, loaded, evaluate, out, reference, self_reference: bool = False, role: str = "method") -> dict:
        result = {}
        for name in self.names:
            started = time.perf_counter()
            if name in self.plans and self.plans[name].points:
                block = self._relearn_grid(self.plans[name], loaded, evaluate, out, self_reference, role)
            elif name in self.plans:
                block = self._relearn(self.plans[name], loaded, evaluate, out, self_reference)
            else:
                block = self._quantise(name, loaded, evaluate, out, reference)
            block["timings"]["total_s"] = round(time.perf_counter() - started, 3)
            result[name] = block
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return result

    def _unattacked(self, plan: RelearnPlan, loaded, evaluate, out, self_reference: bool) -> dict:
        # Self-referenced (the retain model): its own values on the scored view are the reference of
        # its unattacked scores; the attacked copy is scored against them like any other model.
        if plan.scored_view is self.bench and not self_reference:
            return {"aggregates": out["aggregates"]}
        return evaluate(loaded, plan.scored_view, self.scored_reference[plan.name], self_reference=self_reference)

    def _relearn(self, plan: RelearnPlan, loaded, evaluate, out, self_reference: bool) -> dict:
        before = self._unattacked(plan, loaded, evaluate, out, self_reference)
        examples = plan.examples(loaded.tokenizer)   # after the tokenizer has settled the prompt format
        run = self._train_and_score(plan, plan.cfg, loaded, evaluate, examples)
        return {
            "settings": self._run_settings(plan, plan.cfg, run, examples),
            "seed": self.seed, "split": plan.split, "items": ITEMS[plan.name],
            "unattacked": before["aggregates"], **self._scored(run),
        }

    def _train_and_score(self, plan: RelearnPlan, cfg: TrainConfig, loaded, evaluate, examples) -> dict:
        """Fine-tune a fresh copy of ``loaded`` with ``cfg`` and score it on the plan's scored view."""
        reference = self.scored_reference[plan.name]
        curve: list[dict] = []
        method: Finetune = Finetune()
        if self.cfg.relearn_curve:
            def score_step(step, model):
                found = evaluate(LoadedModel(model, loaded.tokenizer, loaded.name, loaded.source), plan.scored_view,
                                 reference)
                curve.append({"step": step, "aggregates": found["aggregates"]})
            method = StepProbe(score_step)
        options = {"lora": self.lora} if self.lora is not None else {}
        attacked = _copy_of(loaded)
        try:
            with distributed.this_process_only():   # the main process attacks; launched ranks wait for it
                result = train(attacked.model, attacked.tokenizer, method, examples, None,
                               cfg, self.seed, progress=self.progress, **options)
            after = evaluate(attacked, plan.scored_view, reference)
        finally:
            del attacked
        run = {"result": result, "after": after}
        if self.cfg.relearn_curve:
            run["curve"] = curve + [{"step": result.steps, "aggregates": after["aggregates"]}]
            run["curve_s"] = method.seconds
        return run

    def _run_settings(self, plan: RelearnPlan, cfg: TrainConfig, run: dict, examples) -> dict:
        settings = {"source": SOURCES[plan.name], "steps": run["result"].steps, "lr": cfg.lr,
                    "warmup_ratio": cfg.warmup_ratio, "schedule": cfg.schedule,
                    "global_batch": cfg.global_batch, "examples": len(examples),
                    "loss": "cross-entropy (finetune)"}
        if self.lora is not None:
            settings["lora"] = {**describe_lora(self.lora), "merged": "before scoring"}
        return settings

    def _scored(self, run: dict) -> dict:
        """What a block keeps of one attacked run: scores, training, timings (and the curve when asked)."""
        result, after = run["result"], run["after"]
        block = {
            **{k: after[k] for k in KEPT},
            "training": {"status": result.status, "steps": result.steps, "losses": result.losses},
            "timings": {"train_s": round(result.seconds, 3), "eval_s": after["timings"]["eval_s"]},
            "eval_counts": after["eval_counts"],
        }
        if "curve" in run:   # the probe's scoring ran inside training: not training time
            block["timings"] = {"train_s": round(result.seconds - run["curve_s"], 3), "curve_eval_s":
                                round(run["curve_s"], 3), "eval_s": after["timings"]["eval_s"]}
            block["curve"] = run["curve"]
        return block

    def _relearn_grid(self, plan: RelearnPlan, loaded, evaluate, out, self_reference: bool, role: str) -> dict:
        """Every grid point from the same weights; a method row keeps one by ``grid.choose``, a reference row
        shows the point nearest the budget (method rows are read against the references at their own point)."""
        before = self._unattacked(plan, loaded, evaluate, out, self_reference)
        examples = plan.examples(loaded.tokenizer)
        points = []
        for multiple, cfg in plan.points:
            run = self._train_and_score(plan, cfg, loaded, evaluate, examples)
            points.append({"multiple": multiple, "lr": cfg.lr, "settings": self._run_settings(plan, cfg, run, examples),
                           **self._scored(run)})
        shown = lr_grid.nearest_budget(self.multiples)
        column = self._scored_column(points)
        if role == "method":
            for point in points:
                point["guard"] = self._point_guard(plan.name, point["multiple"])
            kept, why = lr_grid.choose(points, column)
            shown = kept if kept is not None else shown
        else:
            kept, why = None, ("a reference row: it shows the point nearest the budget; each method row is read against "
                               "the references attacked at the point that method kept")
        chosen = next(p for p in points if p["multiple"] == shown)
        block = {
            "settings": chosen["settings"], "seed": self.seed, "split": plan.split, "items": ITEMS[plan.name],
            "unattacked": before["aggregates"],
            **{k: v for k, v in chosen.items() if k not in ("multiple", "lr", "settings", "guard")},
            "lr_grid": {"column": column, "rule": lr_grid.RULE, "kept": kept, "shown": shown, "why": why,
                        "points": points},
        }
        block["timings"] = {"train_s": round(sum(p["timings"]["train_s"] for p in points), 3),
                            "eval_s": round(sum(p["timings"]["eval_s"] for p in points), 3)}
        return block

    def _scored_column(self, points: list[dict]) -> str:
        """The declared column; by default the first knowledge column this protocol scores (same-entity
        leaves the synthetic biographies, hence VerbMem, out)."""
        if self.cfg.relearn_lr_column:
            return self.cfg.relearn_lr_column
        keys = [c.key for c in knowledge_columns(self.columns)]
        return next((k for k in keys if any(lr_grid.knowledge_value(p["aggregates"], k) is not None for p in points)),
                    self.grid_column)

    def _point_guard(self, name: str, multiple: float) -> dict | None:
        """The guard on the retain and target rows attacked at ``multiple`` (None when either is missing)."""
        refs = self.grid_reference.get(name) or {}
        found = {}
        for role in ("target", "retain"):
            block = refs.get(role)
            point = next((p for p in ((block or {}).get("lr_grid") or {}).get("points", [])
                          if p.get("multiple") == multiple), None)
            if block is None or point is None:
                return None
            found[role] = (block.get("unattacked") or {}, point)
        (tb, ta), (rb, ra) = found["target"], found["retain"]
        noise = guard_noise(self.columns, ta, ra)
        verdict = guard(tb, ta.get("aggregates") or {}, rb, ra.get("aggregates") or {}, self.columns,
                        utility_key(self.columns), self.cfg.guard_gap, self.cfg.guard_utility, noise)
        return describe(verdict)

    def _quantise(self, name, loaded, evaluate, out, reference) -> dict:
        attacked = _copy_of(loaded)
        try:
            started = time.perf_counter()
            if name in BNB:
                summary = bnb_quantise_model_(attacked.model, name)
            else:
                summary = quantise_model_(attacked.model, QUANTISE[name], self.cfg.group_size)
            quantise_s = time.perf_counter() - started
            after = evaluate(attacked, self.bench, reference)   # the retain model's own values when it is attacked
        finally:
            del attacked
        return {
            "settings": {"source": SOURCES[name], **summary}, "seed": self.seed, "items": "all",
            "unattacked": out["aggregates"], **{k: after[k] for k in KEPT},
            "timings": {"quantise_s": round(quantise_s, 3), "eval_s": after["timings"]["eval_s"]},
            "eval_counts": after["eval_counts"],
        }
