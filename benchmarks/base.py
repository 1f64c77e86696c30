"""The benchmark adapter contract: splits, prompts, an evaluation plan, scoring and defaults.

An adapter turns its data into training examples (forget, retain), declares every request
its metrics need as one ``EvalPlan``, and turns the plan's outputs into aggregate and
per-sample scores. Metrics that need a reference model (forget quality, PrivLeak) read the
``reference`` values that the retain model's own evaluation produced; when those are absent
they are listed under ``missing`` with the reason, never reported as a silent None.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Collection

from harness.data.batching import Example
from harness.errors import HarnessError
from harness.engines.plan import EvalPlan, PlanOutputs
from harness.engines.lm_eval_route import LmEvalTask
from harness.leaderboard.columns import Column


@dataclass
class Scores:
    aggregates: dict[str, float] = field(default_factory=dict)
    per_sample: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    reference_values: dict[str, Any] = field(default_factory=dict)   # what this model offers as a reference
    missing: dict[str, str] = field(default_factory=dict)            # metric -> why it could not be computed
    warnings: list[str] = field(default_factory=list)                # e.g. degenerate (mostly empty) generations
    deviations: list[str] = field(default_factory=list)              # non-default scoring settings, footnoted


def degenerate_generations(name: str, texts: list[str]) -> list[str]:
    """Warnings for a split whose generations say nothing about forgetting: more than half empty after
    post-processing, or all the same text.

    An empty answer is almost always a prompt or stop-string problem (e.g. a model that starts
    its answer with a newline under a newline stop), not forgetting; one answer to every prompt is a
    collapsed model (or a decoding fault), whose scores measure that answer's overlap with each reference.
    """
    empty = sum(1 for t in texts if not t.strip())
    if texts and empty * 2 > len(texts):
        count = f"all {empty}" if empty == len(texts) else f"{empty} of {len(texts)}"
        return [f"{count} '{name}' generations are empty: the model ended its answer at once (EOS "
                "first, or a line break under a newline stop). A model never fine-tuned on this benchmark's prompt "
                "format does that (SmolLM2-Instruct, outside its chat template, answers a plain 'Question: ... Answer:' "
                "with <|im_end|> or a line break); otherwise check the prompt format and stop strings before reading "
                "these scores as forgetting."]
    distinct = {" ".join(t.split()) for t in texts}
    if len(texts) > 1 and len(distinct) == 1:
        shown = next(iter(distinct))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return [f"all {len(texts)} '{name}' generations are the same text ({shown!r}): the model answers every "
                "prompt alike, so these scores measure that one text against each reference, not forgetting."]
    return []


@dataclass
class NoBenchmarkConfig:
    pass


class Benchmark:
    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type] = NoBenchmarkConfig
    columns: ClassVar[list[Column]] = []
    # TrainConfig fields for `prepare` (fine-tuning target and retain models on this benchmark).
    finetune_defaults: ClassVar[dict[str, Any]] = {}
    # Per-method defaults: {"*": {...}, "<method>": {...}}; keys are "train.<field>" or "<method>.<field>".
    method_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    needs_prepared_target: ClassVar[bool] = True   # no published target model exists

    def __init__(self, config: Any = None, data_dir: Path | None = None, limit: int | None = None):
        self.config = config if config is not None else self.Config()
        self.data_dir = data_dir
        self.limit = limit

    def use_tokenizer(self, tokenizer) -> None:
        """Settle choices that depend on the model's tokenizer (TOFU's ``prompt_format=auto``).

        Called with the model's tokenizer before ``forget_train``/``retain_train``/``eval_plan``.
        """

    def resolved_settings(self) -> dict[str, Any]:
        """Settings as resolved for the last tokenizer (recorded with each evaluation)."""
        return {}

    def data_info(self) -> dict[str, Any]:
        """Where the data came from, its fingerprint, and any declared stand-in split."""
        raise NotImplementedError

    def forget_train(self) -> list[Example]:
        raise NotImplementedError

    def retain_train(self) -> list[Example] | None:
        return None

    def eval_plan(self) -> EvalPlan:
        raise NotImplementedError

    def lm_eval_tasks(self) -> list[LmEvalTask]:
        """lm-evaluation-harness tasks this benchmark scores through lm-eval itself (WMDP's multiple choice,
        MMLU), beside its plan: their results join the record as ``lm_eval/<task>/<metric>`` aggregates and
        ``per_sample["lm_eval/<task>"]`` rows (``harness/engines/lm_eval_route.py``). Called before any model loads."""
        return []

    def score(self, outputs: PlanOutputs, reference: dict[str, Any] | None) -> Scores:
        raise NotImplementedError

    # --- subsets of the forget set (the relearning attack, harness/attacks/suite.py) ------------------
    def forget_units(self) -> list[str]:
        """Ids of the forget set's independent units (a person, an author, an article).

        The relearning attack splits these into a half it trains on and a half it scores, so a unit
        must hold everything that teaches its forget items: no item of one unit may be learnable
        from another unit's training text.
        """
        raise HarnessError(
            f"benchmark '{self.name}' does not say how to split its forget set, so the relearning attack cannot "
            "run on it: leave relearn out of eval.attacks (int8/int4 work on every benchmark)."
        )

    def forget_subset(self, units: Collection[str]) -> "Benchmark":
        """A copy whose forget training data and forget-side evaluation hold only ``units``' items.

        Utility (retain) items and non-member texts are kept whole. Adapters implement
        ``_keep_forget(units)``, which filters the copy's forget lists in place.
        """
        unknown = set(units) - set(self.forget_units())
        if unknown:
            raise HarnessError(f"benchmark '{self.name}': unknown forget unit(s) {', '.join(sorted(unknown))}.")
        view = copy.copy(self)
        view._keep_forget(frozenset(units))
        return view

    def _keep_forget(self, units: frozenset[str]) -> None:
        raise NotImplementedError

    def _cut(self, items: list) -> list:
        """Apply ``--limit``: the first N items of a split."""
        return items[: self.limit] if self.limit else items
