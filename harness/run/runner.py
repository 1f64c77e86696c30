"""Running a plan: benchmark x methods, reference rows first, one atomic record per cell.

The flow of one run: resolve settings; get the target and retain models (given, or built by
``prepare``); evaluate the retain model (its scores are the reference for forget quality and
PrivLeak) and the target; then for each method copy the target, unlearn, evaluate, write the
record. A finished cell is skipped unless forced; a cell that raises is recorded as failed
and the run goes on, so one crash never loses the other cells. With ``eval.per_epoch`` a method
is also evaluated after every epoch, and ``eval.select`` (``harness/run/selection.py``), declared
before the run, decides which epoch's scores and weights its record reports.
"""
from __future__ import annotations

import dataclasses
import functools
import gc
import importlib
import shutil
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from harness.runtime import codeversion
from harness.runtime.progress import RunProgress, set_run_status
from harness.training import distributed
from harness.run import selection
from harness.run import sweep as sweeps
from harness.runtime import threads
from harness.data import truncation
from harness.run import validation
from harness.run import config as cfgmod
from harness.attacks.suite import AttackConfig, Attacks, cumulative_lr, parse_attacks
from harness.run.claims import Claims, claim_cell, owner_label
from harness.run.config import EvalConfig
from harness.engines.factory import EvalEngines, default_engine, resolve_engine
from harness.errors import HarnessError
from harness.engines.cache import EvalCache
from harness.engines.plan import run_plan
from harness.engines import lm_eval_route
from harness.runtime.random_models import RANDOM_SOURCE, is_random_spec
from harness.runtime.random_models import source_text as random_source
from harness.runtime.models import SMOLLM2_ALIAS, cache_root, fingerprint, load_model, pick_device, portable_path, smollm2_folder
from harness.methods.base import NEEDS_RETAIN
from harness.run.prepare import prepare
from harness.registry import BENCHMARKS, METHODS
from harness.run.results import (
    FINISHED,
    read_record_quietly,
    config_id,
    leaderboard_records,
    ensure_inside,
    finished_record,
    git_commit,
    load_records,
    record_path,
    slug,
    versions,
    write_record,
)
from harness.training.loop import TrainConfig, check_shardable, epoch_plan, train
from harness.leaderboard.intervals import record_intervals
from harness.training import lora
from harness.training.lora import LoraSettings


#: where ad-hoc runs write (git-ignored); the committed records of the default run live in results/
DEFAULT_RESULTS = Path("runs")


@dataclass
class RunRequest:
    benchmark: str
    methods: str = "all"
    model: str = "smollm2-135m"
    target: str | None = None
    retain: str | None = None
    data_dir: Path | None = None
    results_dir: Path | None = DEFAULT_RESULTS   # None: the verb writes no records (prepare, bench)
    seed: int = 0
    limit: int | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    force: bool = False
    save_models: bool = True
    models_dir: Path | None = None
    device: str | None = None
    trust_remote_code: bool = False
    eval_cache: bool = True        # reuse engine outputs of identical weights (harness/engines/cache.py)
    engine: str = field(default_factory=default_engine)   # auto, hf or vllm (harness/engines/factory.py)
    trains: bool = True   # False for eval/prepare: methods are named only so that their --set keys are valid
    threads: int | None = None     # torch's CPU threads, part of a CPU cell's identity; None: as torch is set now
                                   # (the CLI resolves --threads first; executors pass it on to their tasks)
    sweep: dict[str, list[str]] = field(default_factory=dict)   # --sweep KEY=V1,V2: a grid of method cells (sweep.py)


@dataclass
class RunSummary:
    records: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)   # cells another process was computing (claims.py)
    leaderboard: Path | None = None


def resolve_methods(spec: str) -> list[str]:
    if spec.strip().lower() == "all":
        return METHODS.names()
    names = [m.strip().lower() for m in spec.split(",") if m.strip()]
    if not names:
        raise HarnessError(f"--methods got no method names; use 'all' or a comma list of: {', '.join(METHODS.names())}.")
    for name in names:
        METHODS.get(name)  # raises with the known names
    return names


ALWAYS_SHOWN_TRAIN = ("lr", "epochs", "global_batch", "max_steps")   # the settings column's first entries


def loop_text(cfg: TrainConfig, sources: dict[str, str]) -> str:
    """For the settings column: the other ``train.*`` values a method declared or ``--set`` gave,
    grouped by source, e.g. ``; method rmu: schedule=constant, weight_decay=0, max_grad_norm=0``."""
    groups: dict[str, list[str]] = {}
    for f in dataclasses.fields(cfg):
        source = sources.get(f.name, "default")
        if f.name in ALWAYS_SHOWN_TRAIN or not (source.startswith("method ") or source == "--set"):
            continue
        value = getattr(cfg, f.name)
        groups.setdefault(source, []).append(f"{f.name}={value:g}" if isinstance(value, float) else f"{f.name}={value}")
    return "".join(f"; {source}: {', '.join(items)}" for source, items in groups.items())


class Runner:
    def __init__(self, req: RunRequest, progress=None, log=print):
        self.req, self.progress, self.log = req, progress, log
        if req.threads is not None and req.threads != torch.get_num_threads():
            threads.apply(req.threads)   # a task of --executor ray|slurm computes with the driver's count
        self.ranks = distributed.current(pick_device(req.device))   # several only under accelerate launch
        self.device = self.ranks.device
        if not self.ranks.is_main:  # one voice: the main process logs, evaluates and writes
            self.progress, self.log = None, (lambda *_: None)
        self.claims = Claims()
        if req.data_dir is not None and not Path(req.data_dir).is_dir():
            raise HarnessError(
                f"data directory '{req.data_dir}' does not exist; pass the folder that holds the benchmark's files."
            )
        validation.check_limit(req.limit)
        validation.check_seed(req.seed)
        validation.check_model_specs(req)
        self.bench_cls = BENCHMARKS.get(req.benchmark)
        self.methods = resolve_methods(req.methods)
        self.method_cls = {m: METHODS.get(m) for m in self.methods}
        for cls in self.method_cls.values():
            validation.check_loop_settings(cls, TrainConfig)
        sections = {
            "train": TrainConfig, "train.lora": LoraSettings, "finetune": TrainConfig, "eval": EvalConfig,
            "benchmark": self.bench_cls.Config, "attack": AttackConfig, "attack.lora": LoraSettings,
            **{m: cls.Config for m, cls in self.method_cls.items()},
        }
        self.overrides = cfgmod.normalise_overrides(req.overrides, sections)
        full = cfgmod.normalise_overrides({k: v[0] for k, v in req.sweep.items()}, sections)   # bare keys -> train.*
        self.sweep = dict(zip(full, req.sweep.values()))
        sweeps.check_keys(self.sweep, self.overrides)
        validation.check_data_dir_used(self.bench_cls, req.data_dir)
        self.bench = self.bench_cls(cfgmod.build(self.bench_cls.Config, "benchmark", [self.overrides]), req.data_dir, req.limit)
        self.eval_cfg = cfgmod.build(EvalConfig, "eval", [self.overrides])
        if self.eval_cfg.memory_budget_gb < 0:
            raise HarnessError(f"eval.memory_budget_gb must be 0 (the default budget) or a positive number of GiB, "
                               f"got {self.eval_cfg.memory_budget_gb:g}.")
        self.engines = EvalEngines(resolve_engine(req.engine), self.eval_cfg, self.device, log=log)
        self.utility_key = getattr(self.bench_cls, "utility_key", None)  # a benchmark may name its utility column
        self.forget_key = self.eval_cfg.select_forget or getattr(self.bench_cls, "selection_forget_key", None)
        self.rule = selection.validate(self.eval_cfg.select, self.eval_cfg.per_epoch, self.bench_cls.columns,
                                       utility_key=self.utility_key, forget_key=self.forget_key,
                                       fraction=self.eval_cfg.select_fraction)
        self.retain_aggregates: dict[str, Any] | None = None   # the retain row's scores, for the selection rule
        self.target_aggregates: dict[str, Any] | None = None   # the target row's scores (utility_preserving)
        ft_defaults = {f"finetune.{k}": v for k, v in self.bench_cls.finetune_defaults.items()}
        self.finetune_cfg = cfgmod.build(TrainConfig, "finetune", [ft_defaults, self.overrides])
        self.results_dir = Path(req.results_dir) if req.results_dir is not None else None
        # method cells: one per method, or one per distinct swept point of each method (sweep.py)
        self.method_cells: dict[str, tuple[str, dict[str, str]]] = {
            sweeps.cell_name(m, p): (m, p) for m in self.methods for p in sweeps.points_for(m, self.sweep)}
        self._check_needs()
        for name, point in self.method_cells.values():   # every point's settings (train.lora.* too) checked before any model loads
            try:
                self.method_configs(name, point)
                self.lora_settings(name, point)
            except HarnessError as exc:   # name the flag that gave the value
                text = str(exc)
                for key, value in point.items():
                    text = text.replace(f"--set {key}={value}:", f"--sweep {key}: the value {value}:")
                raise HarnessError(text) from None
        # lm-eval tasks: the benchmark's own (WMDP) and eval.lm_eval_tasks, resolved and checked reachable up front
        self.lm_eval_tasks = [*self.bench.lm_eval_tasks(), *lm_eval_route.parse_tasks(self.eval_cfg.lm_eval_tasks)]
        lm_eval_route.check_distinct(self.lm_eval_tasks)
        lm_eval_route.check_reachable(self.lm_eval_tasks, f"benchmark '{self.bench.name}'")
        attack_names = parse_attacks(self.eval_cfg.attacks)   # validated up front, like everything above
        attack_cfg, attack_lora = self._attack_settings()   # checked even when no attack is named
        self.attacks = Attacks(attack_names, attack_cfg, self.bench, self.finetune_cfg, req.seed, self.bench_cls.columns,
                               self.log, unlearning_budget=self._unlearning_budget(),
                               lora=attack_lora) if attack_names else None
        if self.attacks and self.attacks.needs_target_first and "retain" not in self.cell_names():
            raise HarnessError("attack.relearn_lr_grid keeps a grid point only where the attacked target and retain model "
                               "pass the guard, and this run has no retain row: pass --retain PATH, or leave the grid out.")
        self.model_label = req.model if not (req.target and req.model == RunRequest.model) else req.target
        validation.check_before_work(self, self.output_folders())
        for note in validation.short_splits(self.bench):
            self.log(note)
        self.summary = RunSummary()   # what finished so far, for the message when the run is interrupted
        self._eval_cut: dict[tuple, dict[str, int]] = {}   # truncation counts per tokenizer
        self._warned: set[str] = set()
        self.run_progress: RunProgress | None = None   # a whole run's cells done and time left (``run`` only)

    def _attack_settings(self) -> tuple[AttackConfig, LoraSettings]:
        """``attack.*`` and ``attack.lora.*`` (the LoRA attacker: the same settings as ``train.lora``)."""
        cfg = cfgmod.build(AttackConfig, "attack", [self.overrides])
        try:
            lora = cfgmod.build(LoraSettings, "attack.lora", [self.overrides])
        except HarnessError as exc:
            raise HarnessError(str(exc).replace("train.lora", "attack.lora")) from None
        return cfg, lora

    def _unlearning_budget(self) -> float | None:
        """The smallest cumulative learning rate of the run's unlearning methods: what a relearning
        attack may spend at most (harness/attacks/suite.py)."""
        n_forget = len(self.bench.forget_train())
        budgets = [cumulative_lr(self.method_configs(name)[0], n_forget) for name in self.methods]
        return min(budgets) if budgets and n_forget else None

    def output_folders(self) -> dict[str, tuple[Path, str]]:
        """The folders this run writes: checked writable before any model is loaded."""
        folders = {"results directory": (self.results_dir, "--results-dir")} if self.results_dir else {}
        if self.req.save_models:
            folders["models directory"] = ((self.req.models_dir, "--models-dir") if self.req.models_dir else
                                           (cache_root() / "unlearned", "--models-dir (default $HARNESS_CACHE/unlearned)"))
        uses_cache = (self.req.eval_cache or SMOLLM2_ALIAS in (self.req.model, self.req.target, self.req.retain)
                      or (not self.req.target and self.bench_cls.needs_prepared_target))
        if uses_cache:   # the evaluation cache, prepared models and the converted SmolLM2 live there
            folders["model cache"] = (cache_root(), "HARNESS_CACHE=<folder>")
        return folders

    def _check_needs(self) -> None:
        """Refuse, before any work, a method that needs data this benchmark does not have."""
        if self.eval_cfg.per_epoch:
            for name in self.methods:
                if not self.method_cls[name].has_epochs:
                    raise HarnessError(
                        f"method '{name}' has no unlearning epochs (its model exists only at the end), so "
                        "eval.per_epoch does not apply to it. Leave it out of --methods, or turn eval.per_epoch off."
                    )
        if self.ranks.sharded:
            for name in self.methods:
                check_shardable(self.method_cls[name](self.method_configs(name)[1]))
        if self.bench.retain_train():
            return
        for name in self.methods:
            method = self.method_cls[name](self.method_configs(name)[1])
            if NEEDS_RETAIN in method.needs_of():
                raise HarnessError(
                    f"method '{name}' needs retain data, but benchmark '{self.bench.name}' has no retain split. "
                    f"Leave it out of --methods, or use a method that needs forget data only (e.g. ga, npo, flat)."
                )

    # --- settings ----------------------------------------------------------------------------
    def method_configs(self, name: str, point: dict[str, str] | None = None) -> tuple[TrainConfig, Any]:
        return self._method_settings(name, point)[:2]

    def train_sources(self, name: str, point: dict[str, str] | None = None) -> dict[str, str]:
        """Where each ``train.*`` value of method ``name`` came from (methods/base.py: loop settings)."""
        return self._method_settings(name, point)[2]

    def _method_settings(self, name: str, point: dict[str, str] | None = None) -> tuple[TrainConfig, Any, dict[str, str]]:
        """Lowest first: dataclass defaults, the benchmark's defaults for all methods, the method's own
        ``loop_settings``, the benchmark's defaults for this method, ``--set``, the ``--sweep`` point."""
        defaults, cls = self.bench_cls.method_defaults, self.method_cls[name]
        declared = {f"train.{k}": v for k, v in cls.loop_settings.items()}
        layers = [defaults.get("*", {}), declared, defaults.get(name, {}), self.overrides, point or {}]
        names = ["benchmark", f"method {name}", f"benchmark for {name}", "--set", "--sweep"]
        sources: dict[str, str] = {}
        train_cfg = cfgmod.build(TrainConfig, "train", layers, names, sources)
        return train_cfg, cfgmod.build(cls.Config, name, layers), sources

    def selection_context(self) -> selection.Context:
        """What the rule compares candidates with: the reference rows' scores and its declared settings."""
        return selection.Context(self.bench_cls.columns, self.retain_aggregates, self.target_aggregates,
                                 self.utility_key, self.forget_key, self.eval_cfg.select_fraction)

    def _base_config(self, reference: bool = False) -> dict[str, Any]:
        """Settings that identify a cell; a reference row does not depend on how methods are selected."""
        evaluation = dataclasses.asdict(self.eval_cfg)
        for key in EVAL_NOT_IN_IDENTITY:   # recorded under "eval_runtime" instead
            evaluation.pop(key)
        if reference:  # per-epoch evaluation and selection only concern unlearning runs
            for key in REFERENCE_IGNORES_EVAL:
                evaluation.pop(key)
        if not evaluation.get("attacks"):  # runs without attacks keep the config ids they always had
            evaluation.pop("attacks", None)
        if not evaluation.get("lm_eval_tasks"):  # likewise runs without lm-eval tasks
            evaluation.pop("lm_eval_tasks", None)
        for key in ("select_fraction", "select_forget"):   # part of a cell only under a rule that reads them
            if key not in self.rule.parameters or reference:
                evaluation.pop(key, None)
        attacks = {"attack": self.attacks.settings()} if self.attacks else {}
        # lm-eval task definitions and their local data; runs without tasks keep their config ids
        lm_eval = {"lm_eval": [t.describe() for t in self.lm_eval_tasks]} if self.lm_eval_tasks else {}
        return {
            "benchmark": self.bench.name, "benchmark_config": dataclasses.asdict(self.bench.config),
            "data_fingerprint": self.bench.data_info().get("fingerprint"), "limit": self.req.limit,
            "model": self.model_label, "target": self.req.target, "retain": self.req.retain,
            "finetune": None if self.req.target else dataclasses.asdict(self.finetune_cfg),
            "eval": evaluation, **attacks, **lm_eval, **threads.identity(self.device),
        }

    # --- the run -----------------------------------------------------------------------------
    def run(self) -> RunSummary:
        try:
            return self._run()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the run's vLLM engine, if one was started."""
        self.engines.close()

    def _run(self) -> RunSummary:
        self.run_progress = RunProgress([(n, "reference" if n in ("retain", "target") else "method") for n in self.cell_names()])
        set_run_status(self.run_progress.status)   # progress lines end with the run's position and time left
        try:
            return self._run_cells()
        finally:
            set_run_status(None)

    def _timed_reference_models(self) -> tuple[str, str | None]:
        """``reference_models``, its time left out of the cell that happens to need it first: the
        other cells never pay it, so it would inflate their estimate."""
        started = time.monotonic()
        try:
            return self.reference_models()
        finally:
            if self.run_progress is not None:
                self.run_progress.exclude(time.monotonic() - started)

    def _run_cells(self) -> RunSummary:
        summary = self.summary = RunSummary()
        models = functools.cache(self._timed_reference_models)  # prepare only once a cell really has to run
        target_spec, retain_spec = (lambda: models()[0]), (lambda: models()[1])
        if self.ranks.world_size > 1:
            models()  # preparing trains on every rank together: do it before the main process goes its own way
        reference: dict[str, Any] | None = None
        has_retain = "retain" in self.cell_names()
        if has_retain:
            rec = self.reference_cell("retain", retain_spec, None, summary)
            reference = rec.get("reference_values") if rec else None
            if self.attacks:
                self.attacks.remember("retain", rec)
            self.retain_aggregates = rec.get("aggregates") if rec else None
        else:
            self.log("note: no retain model given; forget quality and PrivLeak cannot be computed (pass --retain PATH).")
        rec = self.reference_cell("target", target_spec, reference, summary)
        if self.attacks:
            self.attacks.remember("target", rec)
        self.target_aggregates = rec.get("aggregates") if rec else None
        for name, point in self.method_cells.values():
            self.method_cell(name, target_spec, reference, summary, point)
        if self.ranks.is_main:
            self.record_sweep_choices()
            summary.leaderboard = render_results(self.results_dir)
        return summary

    def record_sweep_choices(self) -> list[Path]:
        """Apply the rule across each method's swept points and write the choice beside its records."""
        if not self.sweep or self.results_dir is None:
            return []
        retain = self._finished("retain") if "retain" in self.cell_names() else None
        target = self._finished("target")
        context = dataclasses.replace(self.selection_context(), retain=(retain or {}).get("aggregates"),
                                      target=(target or {}).get("aggregates"))
        written = []
        for method in self.methods:
            groups = []
            for cell, (name, point) in self.method_cells.items():
                if name == method:
                    record = read_record_quietly(self.cell_path(cell))
                    groups.append((point, [record] if record else []))
            try:
                choice = sweeps.choose_point(groups, self.eval_cfg.select, context)
            except HarnessError as exc:
                self.log(f"sweep {method}: no point selected: {exc}")
                continue
            path = self.results_dir / self.bench.name / slug(self.model_label) / method / \
                f"sweep-{self.sweep_id(method)}.selection.json"
            sweeps.write_choice(path, choice, self.sweep_id(method), method)
            self.log(f"sweep {method}: eval.select={choice.rule} chose {sweeps.point_label(choice.point)}"
                     + (f", epoch {choice.epoch}" if choice.epoch is not None else "") + f" ({choice.reason}) -> {path}")
            written.append(path)
        return written

    def _finished(self, name: str) -> dict | None:
        return finished_record(ensure_inside(self.results_dir, self.cell_path(name)), self.log)

    def sweep_id(self, method: str) -> str:
        """One id for every point of ``method``'s sweep: the method's settings without the point, and the grid."""
        grid = {k: v for k, v in self.sweep.items() if sweeps.applies(k, method)}
        return config_id({"base": self._method_resolved(method), "grid": grid})

    def cell_names(self) -> list[str]:
        """The run's cells in order (the retain row if there is one, the target row, each method); checks the plan."""
        has_retain = bool(self.req.retain or (not self.req.target and self.bench_cls.needs_prepared_target))
        selection.validate(self.eval_cfg.select, self.eval_cfg.per_epoch, self.bench_cls.columns, has_retain,
                           self.utility_key, self.forget_key, self.eval_cfg.select_fraction)
        return (["retain"] if has_retain else []) + ["target", *self.method_cells]

    def _model_source(self, loaded) -> str:
        """The record's ``model_source``; a model grown from ``random:`` weights (a prepared target,
        say) says so first, whatever folder it was loaded from (leaderboards leave those out)."""
        source = portable_path(loaded.source)
        if is_random_spec(self.req.model) and not source.startswith(RANDOM_SOURCE):
            return f"{random_source(self.req.model, 0)}; loaded from {source}"
        return source

    def cell_path(self, name: str) -> Path:
        """Where cell ``name``'s record (and its claim) lives, without running anything."""
        if name in ("retain", "target"):
            resolved, method = {**self._base_config(reference=True), "role": name}, name
        else:
            method, point = self._method_cell(name)
            resolved = self._method_resolved(method, point)
        return record_path(self.results_dir, self.bench.name, self.model_label, method, config_id(resolved), self.req.seed)

    def _cell_name(self, method: str, point: dict[str, str]) -> str:
        """The name of the run's cell for ``method`` at sweep ``point`` (the reference rows: their role)."""
        return next((cell for cell, (name, at) in self.method_cells.items() if name == method and at == point), method)

    def _method_cell(self, name: str) -> tuple[str, dict[str, str]]:
        if name not in self.method_cells:
            raise HarnessError(f"no cell '{name}' in this run; its cells: {', '.join(self.cell_names())}.")
        return self.method_cells[name]

    def run_cell(self, name: str) -> RunSummary:
        """One cell alone, as an executor's task runs it (harness/run/executors.py).

        A method or target cell takes its references from the retain row's record, which the
        executor has finished first (were it missing, this computes it, under its claim).
        """
        try:
            return self._run_cell(name)
        finally:
            self.close()

    def _run_cell(self, name: str) -> RunSummary:
        summary = RunSummary()
        models = functools.cache(self.reference_models)
        target_spec, retain_spec = (lambda: models()[0]), (lambda: models()[1])
        reference = None
        if name != "retain" and "retain" in self.cell_names():
            # read, not re-run, even under --force: the executor's first task has just (re)computed it
            rec = finished_record(ensure_inside(self.results_dir, self.cell_path("retain")), self.log)
            rec = rec or self.reference_cell("retain", retain_spec, None, RunSummary())
            reference = rec.get("reference_values") if rec else None
            self.retain_aggregates = rec.get("aggregates") if rec else None
            if self.attacks:
                self.attacks.remember("retain", rec)
        if self.rule.needs_target and name not in ("retain", "target"):   # the executor finished it before the methods
            self.target_aggregates = (self._finished("target") or {}).get("aggregates")
        if self.attacks and name not in ("retain", "target"):  # the target's scores, if its task has finished
            self.attacks.remember("target", finished_record(ensure_inside(self.results_dir, self.cell_path("target")), self.log))
        if name in ("retain", "target"):
            self.reference_cell(name, retain_spec if name == "retain" else target_spec, reference, summary)
        else:
            method, point = self._method_cell(name)
            self.method_cell(method, target_spec, reference, summary, point)
        return summary

    def reference_models(self) -> tuple[str, str | None]:
        if self.req.target:
            return self.req.target, self.req.retain
        if not self.bench_cls.needs_prepared_target:
            return self.req.model, self.req.retain
        folders = prepare(self.req.model, self.bench, self.finetune_cfg, self.req.seed, self.device, self.progress, log=self.log)
        return str(folders["target"]), self.req.retain or str(folders["retain"])

    def reference_cell(self, role: str, spec: "str | Callable[[], str]", reference, summary: RunSummary,
                       label: str = "") -> dict | None:
        """Evaluate the target or the retain model; the retain model is its own reference.

        ``label``: the row's name where it is not the run's target or retain (``harness eval`` scores any model)."""
        resolved = {**self._base_config(reference=True), "role": role}
        label = label or {"target": "Target", "retain": "Retain"}[role]
        return self._cell(role, label, "reference", resolved, summary,
                          lambda: self._evaluate_only(spec, reference, self_reference=role == "retain", role=role))

    def method_cell(self, name: str, target_spec: "str | Callable[[], str]", reference, summary: RunSummary,
                    point: dict[str, str] | None = None) -> dict | None:
        point = point or {}
        train_cfg, method_cfg = self.method_configs(name, point)
        cls = self.method_cls[name]
        resolved = self._method_resolved(name, point)
        label = cls.label or name
        settings = f"lr={train_cfg.lr:g}, epochs={train_cfg.epochs}, global_batch={train_cfg.global_batch}" + "".join(
            f", {k}={v}" for k, v in dataclasses.asdict(method_cfg).items()
        )
        if train_cfg.max_steps:
            settings += f", max_steps={train_cfg.max_steps}"
        settings += loop_text(train_cfg, self.train_sources(name, point))
        lora_cfg = self.lora_settings(name, point)
        if lora_cfg.enabled:
            settings += f", lora r={lora_cfg.r}"
        if self.eval_cfg.per_epoch:
            settings += ", eval.per_epoch=true"
        if self.eval_cfg.select != "last":
            settings += f", eval.select={self.eval_cfg.select}"
            if "select_fraction" in self.rule.parameters:
                settings += f", eval.select_fraction={self.eval_cfg.select_fraction:g}"
        extra: dict[str, Any] = {}
        if self.sweep:
            grid = {k: v for k, v in self.sweep.items() if sweeps.applies(k, name)}
            rule = {"name": self.rule.name, "utility": self.utility_key,
                    **({"fraction": self.eval_cfg.select_fraction} if "select_fraction" in self.rule.parameters else {}),
                    **({"forget": self.forget_key} if "select_forget" in self.rule.parameters else {})}
            extra = {"sweep": {"id": self.sweep_id(name), "grid": grid, "point": point, "rule": rule,
                               "size": len(sweeps.points_for(name, self.sweep))},
                     "overrides": {**self.req.overrides, **point}}
        return self._cell(name, label, "method", resolved, summary,
                          lambda: self._unlearn(cls(method_cfg), train_cfg, target_spec, reference, resolved, point),
                          settings, code=codeversion.method_code(cls),
                          extra={"train_sources": self.train_sources(name, point), **extra})

    def _method_resolved(self, name: str, point: dict[str, str] | None = None) -> dict[str, Any]:
        train_cfg, method_cfg = self.method_configs(name, point)
        lora_cfg = self.lora_settings(name, point)
        return {
            **self._base_config(), "method": name, "method_config": dataclasses.asdict(method_cfg),
            "train": dataclasses.asdict(train_cfg),
            **({"lora": lora.describe(lora_cfg)} if lora_cfg.enabled else {}),
        }

    def lora_settings(self, name: str, point: dict[str, str] | None = None) -> LoraSettings:
        defaults = self.bench_cls.method_defaults
        return cfgmod.build(LoraSettings, "train.lora",
                            [defaults.get("*", {}), defaults.get(name, {}), self.overrides, point or {}])

    def _cell(self, method: str, label: str, kind: str, resolved: dict, summary: RunSummary, work, settings: str = "",
              code: dict | None = None, extra: dict | None = None) -> dict | None:
        """``extra``: record fields that describe the cell without being part of its identity."""
        cell_name = self._cell_name(method, ((extra or {}).get("sweep") or {}).get("point") or {})
        if self.run_progress is not None:
            self.run_progress.start(cell_name)
        record, computed = self._cell_work(method, label, kind, resolved, summary, work, settings, code, extra)
        if self.run_progress is not None:   # (an exception stops the run: nothing more to estimate)
            self.run_progress.finish(cell_name, computed)
            if computed:
                self.log(f"  {self.run_progress.status()}")
        return record

    def _cell_work(self, method: str, label: str, kind: str, resolved: dict, summary: RunSummary, work, settings: str,
                   code: dict | None, extra: dict | None = None) -> tuple[dict | None, bool]:
        """The cell's record, and whether it was computed here (not skipped, not running elsewhere)."""
        cid = config_id(resolved)
        path = ensure_inside(self.results_dir, record_path(self.results_dir, self.bench.name, self.model_label, method, cid, self.req.seed))
        cell = f"{self.bench.name}/{self.model_label}/{method} seed {self.req.seed}"
        if not self.req.force:
            done = self.ranks.broadcast(finished_record(path, self.log) if self.ranks.is_main else None)
            stale = codeversion.stale_reason(done.get("code"), code or {}) if done is not None else ""
            if stale:
                self.log(f"re-run {cell}: {stale}")
            elif done is not None:
                self.log(f"skip {cell}: finished record {path}")
                summary.records.append(done)
                return done, False
        claim = self.ranks.broadcast(self._claim(path, kind, code) if self.ranks.is_main else None)
        if claim.state != "claimed":  # finished meanwhile, or being computed by another process
            done = self._reusable(path, code) if claim.state == "done" else None
            if done is None:
                self.log(f"skip {self.bench.name}/{self.model_label}/{method}: running elsewhere ({owner_label(claim.owner)})")
                summary.elsewhere.append(f"{method}: {owner_label(claim.owner)}")
            else:
                summary.records.append(done)
            return done, False
        record = {
            "schema": 1, "benchmark": self.bench.name, "model": self.model_label, "method": method, "row": label,
            "kind": kind, "seed": self.req.seed, "config_id": cid, "config": resolved,
            "overrides": self.req.overrides, "settings": shown_settings(settings, resolved),
            "data": self.bench.data_info(), "versions": versions(), "commit": git_commit(), "device": str(self.device),
            **({"code": code} if code else {}), **(extra or {}),
            "threads": threads.describe(),
        }
        if self.ranks.world_size > 1:
            record["processes"] = self.ranks.world_size   # not part of the cell: the result does not depend on it
            if self.ranks.sharded:
                record["sharding"] = "fsdp"
        started = time.perf_counter()
        try:
            record.update(work() if self.ranks.is_main or kind == "method" else {"status": "evaluated by the main process"})
        except (KeyboardInterrupt, HarnessError):
            if self.ranks.is_main:
                self.claims.release(path)   # the run stops here: leave no claim for the next run to trip on
            raise
        except Exception as exc:  # one failing cell must not lose the others
            record.update({"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
            summary.failed.append(f"{method}: {type(exc).__name__}: {exc}")
            self.log(f"FAILED {self.bench.name}/{method}: {type(exc).__name__}: {exc} (record: {path})")
        record.setdefault("timings", {})["total_s"] = round(time.perf_counter() - started, 3)
        if self.ranks.is_main:
            write_record(path, record)
            self.claims.release(path)
        record = self.ranks.broadcast(record)
        summary.records.append(record)
        if record["status"] in FINISHED:
            self.log(one_line_summary(record, self.bench_cls.columns, path, self._warned))
        self._free()
        return record, True

    def _claim(self, path: Path, kind: str, code: dict | None = None):
        """Claim the cell before computing it; reference rows, which later cells need, are waited for."""
        finished = (lambda: None) if self.req.force else (lambda: self._reusable(path, code))
        return claim_cell(self.claims, path, finished, wait=kind == "reference", log=self.log)

    def _reusable(self, path: Path, code: dict | None):
        """The cell's finished record if it was made by the current code (harness/runtime/codeversion.py), else None."""
        done = finished_record(path, self.log)
        return None if done is None or codeversion.stale_reason(done.get("code"), code or {}) else done

    def _evaluate_only(self, spec, reference, self_reference: bool = False, role: str = "") -> dict:
        spec = spec() if callable(spec) else spec
        loaded = load_model(spec, self.device, self.req.trust_remote_code)
        out = self._evaluate(loaded, reference, self_reference, folder=weights_folder(spec))
        if self.attacks:  # stage: attack the retain model and the target like every method (the references)
            started = time.perf_counter()
            out["attacks"] = self.attacks.reference_stage(role, loaded, self._evaluate_on, out, reference)
            out["timings"]["attacks_s"] = round(time.perf_counter() - started, 3)
        out.update({"status": "ok", "model_source": self._model_source(loaded), "training": None})
        return out

    def _unlearn(self, method, train_cfg: TrainConfig, target_spec, reference, resolved, point=None) -> dict:
        for role, needed, have in (("retain", self.rule.needs_retain, self.retain_aggregates),
                                   ("target", self.rule.needs_target, self.target_aggregates)):
            if needed and have is None:
                raise HarnessError(
                    f"eval.select={self.rule.name} needs the {role} model's scores, but the {role} row has none "
                    "(its cell failed: see its record); fix and rerun it, or use eval.select=last."
                )
        loaded = load_model(target_spec() if callable(target_spec) else target_spec, self.device, self.req.trust_remote_code)
        self.bench.use_tokenizer(loaded.tokenizer)
        forget = self.bench.forget_train()
        train_cut = truncation.train_counts(loaded.tokenizer, {"forget": forget, "retain": self.bench.retain_train()},
                                            train_cfg.max_length)
        self._warn(truncation.warning(train_cut, "train.max_length", train_cfg.max_length, "training"))   # same data for every method: once
        steps_per_epoch, total, final_epoch = epoch_plan(len(forget), train_cfg)
        per_epoch = PerEpoch(self, loaded, reference, method.name, final_epoch) if self.eval_cfg.per_epoch and self.ranks.is_main else None
        target_weights = fingerprint(loaded.model) if self.ranks.is_main else None   # to flag a run that changed nothing
        try:
            result = train(loaded.model, loaded.tokenizer, method, forget, self.bench.retain_train(),
                           train_cfg, self.req.seed, progress=self.progress, log=self.log, on_epoch_end=per_epoch,
                           lora=self.lora_settings(method.name, point))
        except HarnessError as exc:  # this method's settings do not fit this data: fail its cell only
            raise MethodSettingsError(str(exc)) from None
        if not self.ranks.is_main:  # the other ranks only train; the main process evaluates and saves
            return {"status": result.status, "training": result.summary(), "timings": {}}
        scored_per_epoch = per_epoch is not None and result.status == "ok"
        if scored_per_epoch:  # evaluated at each epoch's end; the chosen epoch's weights go back into the model
            chosen = self._select(per_epoch.epochs)
            out = per_epoch.take(chosen)
        unchanged = fingerprint(loaded.model) == target_weights
        # the reported weights are saved before they are scored: vLLM then loads this copy instead of writing another
        saved = self._save(loaded, method.name, resolved) if self.req.save_models else None
        if result.status != "ok":  # diverged: the weights at that point, whatever the rule
            out = self._evaluate(loaded, reference, folder=saved)
            chosen = selection.Selection(self.rule.name, None, f"the run diverged at step {result.diverged_at_step}; "
                                         "scores are of the weights at that point, no epoch was selected")
        elif not scored_per_epoch:
            out = self._evaluate(loaded, reference, folder=saved)
            chosen = self._select([{"epoch": final_epoch, "aggregates": out["aggregates"]}])
        out["selection"] = chosen.as_record()
        # bit-identical to the weights training started from; the leaderboard adds "not distinguishable from the target"
        out["no_op"] = {"unchanged_weights": unchanged}
        if unchanged:
            text = f"{method.name}: the reported weights are bit-identical to the target's; training changed nothing."
            out["warnings"] = [*out.get("warnings", []), text]
            self._warn(f"warning: {text}")
        if self.attacks:  # stage: attacked copies of the reported weights, scored like every evaluation
            started = time.perf_counter()
            out["attacks"] = self.attacks.method_stage(loaded, self._evaluate_on, out, reference)
            out["timings"]["attacks_s"] = round(time.perf_counter() - started, 3)
        if per_epoch is not None:
            out["epochs"] = per_epoch.summary(result.losses, steps_per_epoch, total)
            out["timings"]["per_epoch_eval_s"] = per_epoch.eval_s
        out.update({"status": result.status, "model_source": self._model_source(loaded), "training": result.summary()})
        out["truncated"] = {**out["truncated"], "train": train_cut}
        out["timings"]["train_s"] = round(result.seconds, 3)
        if saved is not None:
            out["model_path"] = portable_path(saved)
        return out

    def _save(self, loaded, method_name: str, resolved) -> Path:
        folder = ((self.req.models_dir or cache_root() / "unlearned") / self.bench.name / slug(self.model_label)
                  / method_name / f"{config_id(resolved)}-seed{self.req.seed}")
        save_model_atomically(loaded, folder)
        return folder

    def _select(self, epochs: list[dict]) -> selection.Selection:
        return selection.select(self.eval_cfg.select, epochs, self.bench_cls.columns, self.retain_aggregates,
                                self.utility_key, context=self.selection_context())

    def _engine(self, loaded, folder: Path | None = None):
        """The run's engine for this model, behind the evaluation cache unless the run turned it off."""
        cache = EvalCache(cache_root() / "evals.sqlite") if self.req.eval_cache else None
        return self.engines.for_model(loaded, folder, cache)

    def _evaluate_on(self, loaded, bench, reference, self_reference: bool = False) -> dict:
        """``_evaluate`` with another view of the benchmark (the attacks' scored half of the forget set)."""
        return self._evaluate(loaded, reference, self_reference, bench)

    def _evaluate(self, loaded, reference, self_reference: bool = False, bench=None, folder: Path | None = None) -> dict:
        """``folder``: a saved copy of exactly ``loaded``'s weights (vLLM loads it instead of a copy written from memory)."""
        bench = bench or self.bench
        engine = self._engine(loaded, folder)
        bench.use_tokenizer(loaded.tokenizer)
        prefetch_imports(SLOW_SCORING_IMPORTS)
        started = time.perf_counter()
        before = {k: len(v) for k, v in self.engines.timings().items()}
        plan = bench.eval_plan()
        outputs = run_plan(engine, plan, self.progress)
        self.engines.release()   # vLLM gives GPU memory back before training needs it
        engine_times = {k: sum(v[before.get(k, 0):]) for k, v in self.engines.timings().items()}
        scores = bench.score(outputs, reference)
        if self_reference:  # the retain model against itself: forget quality 1, PrivLeak 0 by definition
            scores = bench.score(outputs, scores.reference_values)
        lm_eval = self._lm_eval(loaded)   # the route beside the plan: lm-eval's own tasks on the same model
        if lm_eval is not None:
            scores.aggregates.update(lm_eval.aggregates)
            scores.per_sample.update(lm_eval.per_sample)
        for warning in scores.warnings:   # once per run; every cell's record keeps its own
            self._warn(f"warning: {bench.name}: {warning}")
        return {
            "aggregates": scores.aggregates, "per_sample": scores.per_sample, "missing": scores.missing,
            "intervals": record_intervals(bench.columns, scores.per_sample, scores.aggregates),
            "reference_values": scores.reference_values, "truncated": {"eval": self._eval_truncation(loaded.tokenizer, bench, plan)},
            "warnings": scores.warnings, "scoring_deviations": scores.deviations,
            "resolved_settings": bench.resolved_settings(),
            "timings": {**outputs.timings, **{k: round(v, 3) for k, v in engine_times.items() if v},
                        "eval_s": round(time.perf_counter() - started, 3)},
            "eval_counts": {**outputs.counts, **getattr(engine, "counts", {})},
            "eval_engines": engine.record(),
            "eval_runtime": {**engine.describe(), **threads.describe()},
            **({"lm_eval": lm_eval.info} if lm_eval is not None else {}),
        }

    def _lm_eval(self, loaded):
        """The run's lm-eval tasks on ``loaded`` (None without any): columns lm_eval/<task>/<metric>."""
        if not self.lm_eval_tasks:
            return None
        return lm_eval_route.evaluate(loaded.model, loaded.tokenizer, self.lm_eval_tasks, self.eval_cfg.batch_size,
                                      self.req.limit)

    def _eval_truncation(self, tokenizer, bench, plan) -> dict[str, int]:
        """Items of each request list of the evaluated ``plan`` longer than eval.max_length (counted once
        per tokenizer and benchmark view: the attacks score a subset); warns."""
        key = (type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""), len(tokenizer), id(bench))
        if key not in self._eval_cut:
            self._eval_cut[key] = truncation.eval_counts(tokenizer, plan, self.eval_cfg.max_length)
        counts = self._eval_cut[key]
        self._warn(truncation.warning(counts, "eval.max_length", self.eval_cfg.max_length, "evaluation"))
        return counts

    def _warn(self, line: str) -> None:
        """Log a warning once per run."""
        if line and line not in self._warned:
            self._warned.add(line)
            self.log(line)

    @staticmethod
    def _free() -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


#: imports that scoring needs and that take seconds (rouge_score pulls in nltk and scikit-learn)
SLOW_SCORING_IMPORTS = ("rouge_score.rouge_scorer",)


def prefetch_imports(modules) -> None:
    """Import ``modules`` in a background thread while the evaluation's forward passes run
    (they release the GIL), instead of after them: ``harness eval`` finishes sooner."""
    missing = [m for m in modules if m not in sys.modules]
    if missing:
        threading.Thread(target=lambda: [importlib.import_module(m) for m in missing], daemon=True,
                         name="prefetch-imports").start()


class MethodSettingsError(Exception):
    """A method refused its settings on this data (e.g. SGA's K above the retain items).

    Not a HarnessError on purpose: it fails that method's cell, recorded with the message,
    and the run goes on with the other methods.
    """


#: eval settings that change how method rows are chosen, never a reference row's scores
REFERENCE_IGNORES_EVAL = ("per_epoch", "select")
#: eval settings that change speed and memory, not scores: not part of a cell's identity
EVAL_NOT_IN_IDENTITY = ("memory_budget_gb", "vllm_logprobs")


class PerEpoch:
    """``on_epoch_end`` of a run with ``eval.per_epoch``: evaluate, and keep what the rule may pick.

    Each epoch gets the final evaluation's plan, scoring and reference. Weights are copied (to
    the CPU) only for a rule that may pick an epoch other than the last, only when it prefers the
    epoch just evaluated, and never for the final epoch, which stays in the model.
    """

    def __init__(self, runner: Runner, loaded, reference, method: str, final_epoch: int):
        self.runner, self.loaded, self.reference = runner, loaded, reference
        self.method, self.final_epoch = method, final_epoch
        self.epochs: list[dict] = []          # {"epoch", "aggregates"} per evaluated epoch
        self.outputs: dict[int, dict] = {}    # full evaluations still needed: the latest and the kept one
        self.kept: tuple[int, dict] | None = None   # (epoch, CPU state dict) the rule prefers so far
        self.eval_s = 0.0

    def __call__(self, index: int, model) -> None:
        epoch = index + 1
        out = self.runner._evaluate(self.loaded, self.reference)
        self.eval_s = round(self.eval_s + out["timings"]["eval_s"], 3)
        self.epochs.append({"epoch": epoch, "aggregates": out["aggregates"]})
        self.outputs[epoch] = out
        if self.runner.rule.may_pick_earlier and epoch < self.final_epoch:
            preferred = self.runner._select(self.epochs)
            if preferred.epoch == epoch and not (preferred.fallback and self.runner.rule.fallback_is_last):
                self.kept = (epoch, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
        keep = {epoch, self.kept[0] if self.kept else epoch}
        self.outputs = {e: o for e, o in self.outputs.items() if e in keep}
        cells = [f"{c.label} {c.format(out['aggregates'][c.key])}" for c in self.runner.bench_cls.columns
                 if isinstance(out["aggregates"].get(c.key), (int, float))]
        self.runner.log(f"  {self.method} epoch {epoch} eval: {' | '.join(cells)}")

    def take(self, chosen: selection.Selection) -> dict:
        """The chosen epoch's evaluation; its weights are put back into the model if not the last."""
        if chosen.epoch != self.epochs[-1]["epoch"]:
            if self.kept is None or self.kept[0] != chosen.epoch:  # a rule broke the contract in selection.py
                raise RuntimeError(f"rule '{chosen.rule}' chose epoch {chosen.epoch}, whose weights were not kept")
            self.loaded.model.load_state_dict(self.kept[1])
        self.kept = None
        return self.outputs[chosen.epoch]

    def summary(self, losses: list[float], steps_per_epoch: int, total: int) -> list[dict]:
        """Per epoch: its scores and the loss of its last optimiser step."""
        return [{**e, "loss": losses[min(e["epoch"] * steps_per_epoch, total) - 1]} for e in self.epochs]


def shown_settings(settings: str, resolved: dict) -> str:
    """The record's ``settings`` line (the leaderboard's Settings column): the method's settings, or
    'evaluation only', then the CPU thread count where it is part of the cell (threads.identity)."""
    cpu = f"threads={resolved['cpu_threads']}" if "cpu_threads" in resolved else ""
    return ", ".join(part for part in (settings or "evaluation only", cpu) if part)


def weights_folder(spec: str) -> Path | None:
    """The save_pretrained folder that holds exactly the weights ``spec`` loads, where there is one."""
    if spec == SMOLLM2_ALIAS:
        return smollm2_folder()
    path = Path(spec).expanduser()
    return path if (path / "config.json").is_file() else None


def save_model_atomically(loaded, folder: Path) -> None:
    """Write weights to a sibling temporary folder, then rename: a kill never leaves half a checkpoint."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    loaded.model.save_pretrained(tmp, safe_serialization=True)
    loaded.tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)


def one_line_summary(record: dict, columns, path: Path, said: set[str] | None = None) -> str:
    """The cell's scores in one line, then why a metric is missing (each reason once per run, given ``said``)."""
    agg = record.get("aggregates", {})
    cells = [f"{c.label} {c.format(agg[c.key])}" for c in columns if c.key in agg]
    t = record.get("timings", {})
    timing = f"train {t['train_s']:.0f} s, " if "train_s" in t else ""
    status = "" if record["status"] == "ok" else f" [{record['status'].upper()}]"
    line = (f"done {record['benchmark']}/{record['model']}/{record['method']} seed {record['seed']}{status}: "
            f"{' | '.join(cells)} ({timing}eval {t.get('eval_s', 0):.0f} s) -> {path}")
    for metric, why in record.get("missing", {}).items():
        note = f"  not computed: {metric}: {why}"
        if said is None or note not in said:
            line += "\n" + note
            if said is not None:
                said.add(note)
    privleak_ref = ((record.get("per_sample") or {}).get("privleak") or [{}])[0]
    if isinstance(privleak_ref, dict) and str(privleak_ref.get("reference", "")).startswith("published"):
        line += f"\n  PrivLeak against the {privleak_ref['reference']}: AUC {privleak_ref.get('reference_auc')}"
    return line


def render_results(results_dir: Path, log=print, include_random: bool = False) -> Path:
    """Re-render ``<results>/LEADERBOARD.md`` from the stored records alone (records made with
    ``random:`` models only with ``include_random``)."""
    from harness.leaderboard.markdown import write_leaderboard

    stored = load_records(results_dir, log)
    records = leaderboard_records(stored, include_random)
    left_out = len(leaderboard_records(stored, True)) - len(records)
    if left_out:
        log(f"leaderboard: {left_out} record(s) made with random weights (random:<architecture>) left out; "
            f"`harness leaderboard --include-random` lists them")
    columns = {name: list(cls.columns) for name, cls in BENCHMARKS.items()}
    path = Path(results_dir) / "LEADERBOARD.md"
    write_leaderboard(records, columns, path)
    return path
