"""The lm-evaluation-harness route: lm-eval tasks scored on the model in memory, beside the EvalPlan.

Some benchmarks' published numbers are lm-evaluation-harness numbers (WMDP's hazard accuracy, MMLU
as utility): the task's prompt, choices and metric are lm-eval's own task definition. Rather than
re-implement them, this route runs lm-eval as a library: its ``HFLM`` wrapper around our model and
tokenizer objects, ``lm_eval.simple_evaluate`` over the tasks, and the task results turned into
record columns ``lm_eval/<task>/<metric>`` (``acc``; a metric under a filter other than ``none`` is
``<metric>@<filter>``) plus per-document rows ``per_sample["lm_eval/<task>"]`` (target, the
choices' log-likelihoods, the metric per document), so a column gets a bootstrap interval like
every other.

A task is named three ways:

- a task or group registered in lm-eval (``mmlu``, ``wmdp_bio``): lm-eval loads its hub dataset,
  so offline (``hub_unreachable``) it is refused before any model loads;
- a YAML file (``path/to/task.yaml``): an lm-eval task definition; when its ``dataset_path`` is a
  local builder (``json``, ``parquet``, ``csv``, ``text``, ``arrow``) with ``dataset_kwargs.data_files``
  it runs offline (relative data files are looked up beside the YAML first);
- from code (``LmEvalTask.local``): a registered task's own definition with its dataset swapped
  for local files. The WMDP adapter reads its ``--data-dir`` copy that way, keeping lm-eval's prompt
  template and metric.

What differs from ``lm_eval --model hf``: the model is the one in memory (after unlearning, before
it is saved), on its device and dtype; lm-eval's global seeding (``random``, numpy, torch) is
turned off and the global random streams (Python's, numpy's, torch's CPU one) are put back afterwards, so that
an evaluation between epochs leaves training's random state alone (the few-shot sampler keeps lm-eval's
seed 1234); stderr bootstraps are skipped (the leaderboard's
intervals come from the per-document rows). The HF engine, the vLLM engine and the evaluation
cache are not involved: every evaluation runs these tasks afresh, on the HF model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from harness.data.hub import hub_unreachable
from harness.errors import HarnessError, closest

PREFIX = "lm_eval"
LOCAL_BUILDERS = ("json", "parquet", "csv", "text", "arrow")
INSTALL_HINT = ("the lm-eval route needs lm-evaluation-harness, which is not installed: "
                "pip install 'unlearning-harness[lm-eval]' (or pip install lm_eval)")


def column_key(task: str, metric: str = "acc") -> str:
    """The record aggregate of one task's metric: ``lm_eval/<task>/<metric>``."""
    return f"{PREFIX}/{task}/{metric}"


def samples_key(task: str) -> str:
    """Where a task's per-document rows live in ``per_sample``."""
    return f"{PREFIX}/{task}"


@dataclass
class LmEvalTask:
    """One lm-eval task as the route runs it: a registered name, or a full task config (dict)."""

    name: str
    config: dict[str, Any] | None = None     # None: the registered task (or group) of that name
    origin: str = "registered"               # registered | file:<path> | local copy of <task>
    data_files: tuple[Path, ...] = ()        # local files the config reads (fingerprinted)

    @property
    def spec(self) -> str | dict[str, Any]:
        return self.name if self.config is None else self.config

    @property
    def needs_hub(self) -> bool:
        if self.config is None:
            return True
        path = str(self.config.get("dataset_path", ""))
        return path not in LOCAL_BUILDERS and not Path(path).expanduser().exists()

    def fingerprint(self) -> str:
        """What the task's results depend on besides the model: its config and its local data's bytes."""
        if not hasattr(self, "_fingerprint"):
            h = hashlib.sha256(json.dumps(self.config or self.name, sort_keys=True, default=_stable).encode())
            for path in self.data_files:
                h.update(hashlib.sha256(Path(path).read_bytes()).digest())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "origin": self.origin, "fingerprint": self.fingerprint()}

    @classmethod
    def local(cls, registered: str, data_files: dict[str, Path], builder: str, folder: str | None = None) -> "LmEvalTask":
        """lm-eval's own definition of ``registered`` (in ``lm_eval/tasks/<folder>`` where given) reading
        ``data_files`` ({split: file}) instead of the hub."""
        config = registered_config(registered, folder)
        config.update({"dataset_path": builder, "dataset_name": None,
                       "dataset_kwargs": {"data_files": {split: str(p) for split, p in data_files.items()}}})
        return cls(registered, config, f"local copy of {registered}", tuple(Path(p) for p in data_files.values()))


def _stable(value: Any) -> str:
    """A config value JSON cannot hold (a ``!function`` callable): its qualified name, never its address."""
    return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__name__)}"


# --- lm-eval, imported only when a task is named --------------------------------------------------
def _lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError:
        raise HarnessError(INSTALL_HINT) from None
    for name in ("lm_eval", "lm-eval"):   # its per-run chatter (task lists, 'pretrained is not a str') says nothing to a user
        logging.getLogger(name).setLevel(logging.ERROR)
    try:   # datasets' bars for the few-kB local files of each task, at every evaluation
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    except ImportError:
        pass
    import lm_eval

    return lm_eval


_MANAGER: Any = None


def task_manager():
    """lm-eval's task index (a scan of its task folders: built once per process)."""
    global _MANAGER
    if _MANAGER is None:
        _lm_eval()
        from lm_eval.tasks import TaskManager

        _MANAGER = TaskManager()
    return _MANAGER


def registered_config(name: str, folder: str | None = None) -> dict[str, Any]:
    """The YAML config of a registered lm-eval task (includes resolved), as lm-eval would load it.

    ``folder``: the task's folder under ``lm_eval/tasks`` where the caller knows it (``wmdp``): its
    ``<name>.yaml`` is read directly, sparing the scan of every task folder (seconds; 20 s on a busy CPU).
    """
    _lm_eval()
    from lm_eval.tasks._yaml_loader import load_yaml

    if folder is not None:
        import lm_eval.tasks as tasks_package

        path = Path(tasks_package.__file__).parent / folder / f"{name}.yaml"
        if path.is_file():
            config = dict(load_yaml(path, resolve_func=True))
            if config.get("task") == name:
                return config
    entry = task_manager().task_index.get(name)
    if entry is None or entry.yaml_path is None:
        raise _unknown_task(name)
    return dict(load_yaml(entry.yaml_path, resolve_func=True))


def _manager_for(tasks: Sequence[LmEvalTask]):
    """lm-eval's full index where a task is named, an empty one where every task is a full config."""
    if all(t.config is not None for t in tasks):
        from lm_eval.tasks import TaskManager

        return TaskManager(include_defaults=False)
    return task_manager()


def _unknown_task(name: str) -> HarnessError:
    """An unknown task name, with the nearest registered ones (lm-eval knows thousands: no full list)."""
    near = closest(name, task_manager().all_tasks)
    hint = f" Did you mean: {', '.join(near)}?" if near else ""
    return HarnessError(f"unknown lm-eval task '{name}'.{hint} `lm_eval ls tasks` lists the registered tasks; "
                        "a local task is named by its .yaml file.")


def _from_yaml(path: Path) -> LmEvalTask:
    _lm_eval()
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        config = dict(load_yaml(path, resolve_func=True))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise HarnessError(f"lm-eval task file {path} could not be read: {type(exc).__name__}: {exc}") from None
    name = config.get("task")
    if not isinstance(name, str) or not name:
        raise HarnessError(f"lm-eval task file {path} has no 'task: <name>' line; the name becomes its column "
                           f"(lm_eval/<name>/acc).")
    files: list[Path] = []
    kwargs = dict(config.get("dataset_kwargs") or {})
    data_files = kwargs.get("data_files")
    if config.get("dataset_path") in LOCAL_BUILDERS and data_files:
        table = data_files if isinstance(data_files, dict) else {"_": data_files}
        resolved = {}
        for split, value in table.items():
            items = value if isinstance(value, list) else [value]
            found = []
            for item in items:
                beside = path.parent / str(item)
                local = beside if not Path(item).is_absolute() and beside.exists() else Path(item)
                if not local.exists():
                    raise HarnessError(f"lm-eval task file {path}: data file '{item}' ({split}) does not exist "
                                       f"(looked beside the YAML and in the working directory).")
                found.append(str(local))
                files.append(local)
            resolved[split] = found if isinstance(value, list) else found[0]
        kwargs["data_files"] = resolved if isinstance(data_files, dict) else resolved["_"]
        config["dataset_kwargs"] = kwargs
    return LmEvalTask(name, config, f"file:{path.name}", tuple(files))


def parse_tasks(spec: str) -> list[LmEvalTask]:
    """``eval.lm_eval_tasks`` (a comma list of registered names and YAML files) as tasks; unknown names refused."""
    tasks: list[LmEvalTask] = []
    for item in (s.strip() for s in (spec or "").split(",")):
        if not item:
            continue
        if item.endswith((".yaml", ".yml")):
            path = Path(item).expanduser()
            if not path.is_file():
                raise HarnessError(f"lm-eval task file '{item}' does not exist (eval.lm_eval_tasks names task names "
                                   "or .yaml task files).")
            tasks.append(_from_yaml(path))
        else:
            manager = task_manager()
            if item not in manager.all_tasks:
                raise _unknown_task(item)
            tasks.append(LmEvalTask(item))
    check_distinct(tasks)
    return tasks


def check_distinct(tasks: Sequence[LmEvalTask]) -> None:
    """One column per task: a task named twice (by the benchmark and eval.lm_eval_tasks, say) is refused."""
    names = [t.name for t in tasks]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise HarnessError(f"lm-eval task(s) named twice: {', '.join(twice)} (each becomes one column; the "
                           "benchmark may already run it: see `harness list benchmarks`).")


def check_reachable(tasks: Sequence[LmEvalTask], where: str) -> None:
    """Refuse, before any model loads, a task whose data is on the hub when the hub cannot be reached."""
    hub = [t.name for t in tasks if t.needs_hub]
    if not hub:
        return
    unreachable = hub_unreachable()
    if unreachable:
        raise HarnessError(
            f"{where}: lm-eval task(s) {', '.join(hub)} read their data from the Hugging Face hub, but {unreachable}. "
            "Offline, name a local task file instead: a YAML lm-eval task whose dataset_path is json (or parquet, "
            "csv) with dataset_kwargs: {data_files: {test: FILE}} (e.g. the registered task's YAML with those two "
            "lines changed), or leave the task out (benchmark.utility names a benchmark's own utility tasks, "
            "eval.lm_eval_tasks the extra ones)."
        )


# --- running ------------------------------------------------------------------------------------
@dataclass
class LmEvalOutcome:
    aggregates: dict[str, float] = field(default_factory=dict)
    per_sample: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def _metric_key(task: str, metric_filter: str) -> str | None:
    metric, _, filt = metric_filter.partition(",")
    if metric.endswith("_stderr") or metric in ("alias", "name", "sample_len", "samples"):
        return None
    return column_key(task, metric if filt in ("", "none") else f"{metric}@{filt}")


def _row(sample: dict[str, Any], metrics: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"index": sample.get("doc_id"), "target": sample.get("target")}
    # multiple choice: resps holds one [(log-likelihood, is_greedy)] per choice
    lls = [r[0] for r in sample.get("resps") or [] if isinstance(r, (list, tuple)) and r]
    if lls and all(isinstance(x, (list, tuple)) and x and isinstance(x[0], float) for x in lls):
        row["loglikelihoods"] = [float(x[0]) for x in lls]
    for m in metrics:
        value = sample.get(m)
        if isinstance(value, bool) or isinstance(value, (int, float)):
            row[m] = float(value)
    return row


def evaluate(model, tokenizer, tasks: Sequence[LmEvalTask], batch_size: int = 0, limit: int | None = None) -> LmEvalOutcome:
    """Run ``tasks`` through lm-eval on ``model`` (an HF causal LM in memory) and collect columns and rows."""
    lm_eval = _lm_eval()
    from lm_eval.models.huggingface import HFLM

    import random

    import numpy as np
    import torch

    started = time.perf_counter()
    was_training = model.training
    # lm-eval draws from the global random streams (Python's, while building requests): put them back after,
    # so that an evaluation between epochs leaves training's randomness as it was
    streams = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size or 8)
        out = lm_eval.simple_evaluate(
            model=lm, tasks=[t.spec for t in tasks], task_manager=_manager_for(tasks), limit=limit, log_samples=True,
            bootstrap_iters=0, random_seed=None, numpy_random_seed=None, torch_random_seed=None,
        )
    finally:
        model.train(was_training)   # HFLM puts the model in eval mode
        random.setstate(streams[0])
        np.random.set_state(streams[1])
        torch.set_rng_state(streams[2])
    if out is None:
        raise HarnessError("lm-eval returned no results (a distributed rank other than 0?)")
    result = LmEvalOutcome()
    results = out.get("results", {})
    for task in tasks:   # the named tasks' (and groups') own numbers are the columns
        for metric_filter, value in (results.get(task.name) or {}).items():
            key = _metric_key(task.name, metric_filter)
            if key and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                result.aggregates[key] = float(value)
    for leaf, samples in (out.get("samples") or {}).items():
        metrics = sorted({m.split(",")[0] for m in results.get(leaf, {}) if _metric_key(leaf, m)})
        result.per_sample[samples_key(leaf)] = [_row(s, metrics) for s in samples]
    import lm_eval as package

    result.info = {
        "version": getattr(package, "__version__", "unknown"),
        "tasks": [t.describe() for t in tasks],
        "subtasks": {name: {k: v for k, v in r.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
                     for name, r in results.items() if name not in {t.name for t in tasks}},
        "n_samples": {name: n.get("effective") for name, n in (out.get("n-samples") or {}).items()},
        "versions": dict(out.get("versions") or {}),
        "limit": limit,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return result
