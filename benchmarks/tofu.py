"""`tofu`: TOFU (Maini et al. 2024), scored as published (reference.md section 2, TOFU).

Data
----
Offline from ``--data-dir`` (a local copy of ``locuslab/TOFU``: JSON Lines despite ``.json``),
online from the hub (``datasets.load_dataset("locuslab/TOFU", name)``) when no data dir is given.
Files read, for ``split = forgetXX``:

- ``forgetXX`` and ``retainYY`` (YY = 100 - XX): the unlearning / fine-tuning data
  (``forget_train`` / ``retain_train``); ``prepare`` fine-tunes the target on both and the retain
  model on ``retainYY`` alone, as TOFU does;
- ``forgetXX_perturbed``, ``retain_perturbed``, ``real_authors_perturbed``,
  ``world_facts_perturbed``: the four evaluation sets.

Metrics (per evaluation set; ``f`` forget, ``r`` retain, ``ra`` real authors, ``wf`` world facts)
------------------------------------------------------------------------------------------
- ``prob_*``: forget/retain: mean ``p̄(a|q)``; real authors/world facts: mean
  ``p̄(a) / (p̄(a) + Σ_j p̄(pert_j))`` (normalised over the answer and its 3 perturbed answers);
- ``rouge_*``: ROUGE-L recall (``rouge_score``, stemmer on) of the greedy answer vs the answer;
- ``truth_ratio_*``: per item ``R = (Π_j p̄(pert_j))^(1/m) / p̄(para)``; forget reports
  ``mean(min(R, 1/R))``, the others ``mean(max(0, 1 - R))``. real_authors/world_facts have no
  paraphrased answer (their files have no ``paraphrased_answer`` field), so their denominator is
  the original answer, as in TOFU;
- ``model_utility``: harmonic mean of the 9 numbers {prob, rouge, truth ratio} x {r, ra, wf};
- ``forget_quality``: KS-test p-value between this model's per-item forget truth ratios and the
  retain model's (``reference["forget_truth_ratios"]``), or those of a stored TOFU eval log
  (``benchmark.reference_log``); when neither exists it is listed in ``Scores.missing``;
- ``es_f`` / ``em_f``: extraction strength and exact memorisation of the forget answers
  (teacher-forced, OpenUnlearning definitions; where no suffix of the answer is greedily
  matched, ES is 0 as in the published definition, where OpenUnlearning's loop gives 1/L);
- MIA / PrivLeak: NOT computed: TOFU's holdout splits are not in the local copy (see
  ``PRIVLEAK_MISSING``), which every score says in ``Scores.missing["privleak"]``.

Settings (``--set benchmark.<name>=...``)
-----------------------------------------
- ``split``: forget01 | forget05 | forget10 (default forget01).
- ``prompt_format``: ``auto`` (default) | ``chat`` | ``phi`` | ``llama2``. ``phi`` is TOFU's
  phi-1.5 format ``"Question: q\\nAnswer:"`` + ``" a"``; ``llama2`` is ``"[INST] q [/INST]"`` +
  ``" a"``; ``chat`` renders the question with the tokenizer's chat template, exactly as
  OpenUnlearning does for its instruct checkpoints (``apply_chat_template: true``; see
  ``harness/data/chat.py``): ``system_prompt`` as the system message (OpenUnlearning's Llama-3
  configs: ``"You are a helpful assistant."``; empty = none, the template's own default),
  ``date_string`` passed to the template (theirs: ``"10 Apr 2025"``), the answer as the
  assistant turn, and every token after the generation prompt scored. ``auto`` picks ``chat``
  when the model's tokenizer has a chat template, otherwise ``phi``; the record says which
  (``resolved_settings``), and target/retain models are fine-tuned in the same format. In the
  plain formats answers start with a space (the harness convention); TOFU's Llama-2 format
  joins ``[/INST]`` and the answer without one.
- ``system_prompt`` / ``date_string``: the chat format's settings (above).
- ``answer_tokens``: greedy budget, 200 new tokens as in TOFU (TOFU's ``max_length=200`` counted
  the prompt as well; we give 200 new tokens).
- ``stop_at_newline``: False (default) is TOFU's and OpenUnlearning's procedure: no stop
  strings, EOS or the budget ends a generation, special tokens are skipped and the decoded
  answer is stripped of surrounding whitespace. True is an opt-in shortcut that stops each
  generation at its first newline (and at ``"Question:"`` / ``"[INST]"``), saving most of the
  budget; it changes scores (a model that starts its answer with a newline answers nothing:
  SmolLM2 after ``"Answer:"`` does), so every row scored with it is footnoted on the leaderboard.

Scored continuations (Prob, truth ratio, ES, EM) carry the tokenizer's EOS token after the
answer, counted in the log-prob and the token count: TOFU's data code (``convert_raw_data_to_model_format``
adds ``tokenizer.eos_token`` to every answer) and OpenUnlearning's ``preprocess_chat_instance``
both do, and training appends it too.
- ``max_items``: evaluate only the first N items of each evaluation set (0 = all; training data
  is never cut by it). ``legacy_first_300``: the legacy TOFU code (and its stored logs,
  ``ds_size300``) scored only the first 300 items of each set; True caps every set at 300.
- ``reference_log``: path of a TOFU authors' ``eval_log_aggregated.json`` (e.g.
  ``retain_eval_logs/llama2-7b_retain90_wd0.01_eval_log_aggregated.json``) whose forget truth
  ratios serve as the forget-quality reference when no retain model was evaluated. Only
  meaningful for the TOFU authors' own models; its items must be ours (checked).

``--limit N`` keeps the first N items of every split (training and evaluation).

Parity with the TOFU authors' logs: ``scores_from_logs(path, reference_log)`` recomputes every
metric from a stored log alone (no model) with the same aggregation code as ``score``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from harness.data.batching import Example
from harness.data.chat import ChatPrompt, has_chat_template
from harness.benchmarks.base import Benchmark, Scores, degenerate_generations
from harness.data.files import read_records, require_fields
from harness.engines.base import GenerationRequest, LogprobRequest
from harness.errors import HarnessError
from harness.data.hub import hub_unreachable
from harness.engines.plan import EvalPlan, PlanOutputs
from harness.leaderboard.columns import Column
from harness.registry import register_benchmark
from harness.scoring.aggregate import forget_quality, model_utility
from harness.scoring.memorization import exact_memorization, extraction_strength, without_eos_prediction
from harness.scoring.probability import (
    mean_token_probability,
    normalised_answer_probability,
    truth_ratio,
    truth_ratio_forget_score,
    truth_ratio_retain_score,
)
from harness.scoring.text import rouge_l_recall
from harness.scoring.uncertainty import HarmonicMean, ItemMean, truth_ratio_forget_items, truth_ratio_retain_items

HUB_ID = "locuslab/TOFU"
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
PROMPT_FORMATS = ("auto", "chat", "phi", "llama2")
LEGACY_ITEMS = 300
QA_PER_AUTHOR = 20    # TOFU: 200 authors x 20 questions, in order; forgetXX is the last XX% of them
# Evaluation sets: name -> (file, short tag used in aggregate keys).
EVAL_SETS = {
    "forget": (None, "f"),  # the file depends on the split: forgetXX_perturbed
    "retain": ("retain_perturbed", "r"),
    "real_authors": ("real_authors_perturbed", "ra"),
    "world_facts": ("world_facts_perturbed", "wf"),
}
UTILITY_SETS = ("retain", "real_authors", "world_facts")
# the per-item fields behind the nine utility numbers (probability, ROUGE, truth ratio of each set)
UTILITY_ITEM_FIELDS = (("probability", None), ("rouge_l_recall", None), ("truth_ratio", truth_ratio_retain_items))
QA_FIELDS = ("question", "answer")
PERTURBED_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answer")
AUTHORS_FIELDS = ("question", "answer", "perturbed_answer")  # real_authors / world_facts: no paraphrase

PRIVLEAK_MISSING = (
    "TOFU holdout splits (holdout01/05/10) are not available offline; the local copy of locuslab/TOFU "
    "predates them and this adapter does not load them, so no MIA AUC or PrivLeak is computed for TOFU "
    "(the synthetic benchmark scores privacy offline)."
)
FORGET_QUALITY_MISSING = (
    "needs the retain model's per-item forget truth ratios: evaluate a retain model on the same split "
    "(run prepares one, or pass --retain PATH), or, for the TOFU authors' own Llama-2/phi models, point "
    "--set benchmark.reference_log=PATH at their stored retain-model eval log (retain_eval_logs/)."
)

# The TOFU authors' stored eval logs (eval_log_aggregated.json): set -> key in the log.
LOG_KEYS = {
    "forget": "eval_log_forget.json",
    "retain": "eval_log.json",
    "real_authors": "eval_real_author_wo_options.json",
    "world_facts": "eval_real_world_wo_options.json",
}
LOG_FIELDS = ("generated_text", "rougeL_recall", "avg_gt_loss", "avg_paraphrased_loss", "average_perturb_loss")


@dataclass
class TofuConfig:
    split: str = "forget01"           # forget01 | forget05 | forget10 (retain99 / retain95 / retain90)
    prompt_format: str = "auto"       # auto (chat with a chat template, else phi) | chat | phi | llama2
    system_prompt: str = ""           # chat format: the system message ("" = none)
    date_string: str = ""             # chat format: passed to templates that print a date ("" = default)
    answer_tokens: int = 200          # greedy budget (TOFU: 200)
    stop_at_newline: bool = False     # opt-in shortcut: cut generations at a newline; False = TOFU
    max_items: int = 0                # evaluate the first N items of each evaluation set (0 = all)
    legacy_first_300: bool = False    # the legacy TOFU code scored only the first 300 items
    reference_log: str = ""           # a stored TOFU retain-model eval log for forget quality


@dataclass(frozen=True)
class TofuItem:
    id: str
    question: str
    answer: str
    paraphrased: str | None           # None where the set has no paraphrase (real_authors, world_facts)
    perturbed: tuple[str, ...]


def format_prompt(question: str, style: str, system: str = "", date_string: str = "") -> str | ChatPrompt:
    """The prompt of one question; the answer follows as ``answer_text(answer, style)``."""
    if style == "chat":
        return ChatPrompt(question, system, date_string)
    if style == "llama2":
        return f"[INST] {question} [/INST]"
    return f"Question: {question}\nAnswer:"  # phi


def answer_text(answer: str, style: str) -> str:
    """The scored answer: the assistant turn's content in the chat format, else after a space."""
    return answer if style == "chat" else " " + answer


def answer_stops(style: str, stop_at_newline: bool) -> tuple[str, ...]:
    if not stop_at_newline:
        return ()
    return {"llama2": ("\n", "[INST]"), "chat": ("\n",)}.get(style, ("\n", "Question:"))


def post_process(generation: str) -> str:
    """TOFU's decoded answer (special tokens already skipped): stripped of surrounding whitespace."""
    return generation.strip()


@register_benchmark()
class Tofu(Benchmark):
    name = "tofu"
    description = "TOFU (locuslab/TOFU): fictitious authors; forget quality, model utility and their 12 parts"
    Config = TofuConfig
    # Published order (TOFU / OpenUnlearning): forget quality, model utility, then forget, retain,
    # real authors and world facts, each ROUGE, Prob, Truth ratio.
    columns = [
        # Spans many orders of magnitude (1e-25 .. 1); Column has fixed decimals only, so 4 digits
        # for now: issue 6 will add scientific formatting.
        Column("forget_quality", "Forget quality", "up", "knowledge", digits=4, sci_below=0.01),
        Column("model_utility", "Model utility", "up", "utility", digits=3,
               interval=HarmonicMean(tuple(ItemMean(split, field, transform=transform) for split in UTILITY_SETS
                                           for field, transform in UTILITY_ITEM_FIELDS))),
        Column("rouge_f", "ROUGE f", "down", "knowledge", digits=3, interval=ItemMean("forget", "rouge_l_recall")),
        Column("prob_f", "Prob f", "down", "knowledge", digits=3, interval=ItemMean("forget", "probability")),
        # mean(min(R, 1/R)): 1 when paraphrased and perturbed answers are equally likely (nothing
        # known), lower when the model prefers either; OpenUnlearning aggregates it "closer to 1 better".
        Column("truth_ratio_f", "Truth ratio f", "up", "knowledge", digits=3,
               interval=ItemMean("forget", "truth_ratio", transform=truth_ratio_forget_items)),
        Column("rouge_r", "ROUGE r", "up", "utility", digits=3, interval=ItemMean("retain", "rouge_l_recall")),
        Column("prob_r", "Prob r", "up", "utility", digits=3, interval=ItemMean("retain", "probability")),
        Column("truth_ratio_r", "Truth ratio r", "up", "utility", digits=3,
               interval=ItemMean("retain", "truth_ratio", transform=truth_ratio_retain_items)),
        Column("rouge_ra", "ROUGE ra", "up", "utility", digits=3, interval=ItemMean("real_authors", "rouge_l_recall")),
        Column("prob_ra", "Prob ra", "up", "utility", digits=3, interval=ItemMean("real_authors", "probability")),
        Column("truth_ratio_ra", "Truth ratio ra", "up", "utility", digits=3,
               interval=ItemMean("real_authors", "truth_ratio", transform=truth_ratio_retain_items)),
        Column("rouge_wf", "ROUGE wf", "up", "utility", digits=3, interval=ItemMean("world_facts", "rouge_l_recall")),
        Column("prob_wf", "Prob wf", "up", "utility", digits=3, interval=ItemMean("world_facts", "probability")),
        Column("truth_ratio_wf", "Truth ratio wf", "up", "utility", digits=3,
               interval=ItemMean("world_facts", "truth_ratio", transform=truth_ratio_retain_items)),
        Column("es_f", "ES f", "down", "verbatim", digits=3, interval=ItemMean("forget", "extraction_strength")),
        Column("em_f", "EM f", "down", "verbatim", digits=3, interval=ItemMean("forget", "exact_memorization")),
    ]
    # From the literature (reference.md section 4), not tuned here.
    # TOFU fine-tune of the target and retain models: lr 1e-5 (Llama-2; phi-1.5 used 2e-5),
    # 5 epochs, effective batch 32, 1 epoch of linear warm-up (= 0.2 of 5 epochs), AdamW wd 0.01.
    finetune_defaults = {"lr": 1e-5, "epochs": 5, "global_batch": 32, "warmup_ratio": 0.2, "weight_decay": 0.01}
    # TOFU unlearning as run by OpenUnlearning: lr 1e-5, 10 epochs, effective batch 32, 1 epoch of
    # warm-up (0.1 of 10 epochs), wd 0.01 (their optimiser is paged AdamW 32-bit; ours is AdamW).
    method_defaults = {
        "*": {"train.lr": 1e-5, "train.epochs": 10, "train.global_batch": 32, "train.warmup_ratio": 0.1,
              "train.weight_decay": 0.01},
    }
    # Offline there is no TOFU target model: run fine-tunes one (prepare). Online users pass
    # --target (e.g. the hub id of a TOFU fine-tuned model) and, for forget quality, --retain.
    needs_prepared_target = True

    def __init__(self, config=None, data_dir=None, limit=None):
        super().__init__(config, data_dir, limit)
        c = self.config
        if c.split not in RETAIN_OF:
            raise HarnessError(f"benchmark 'tofu': split must be one of {', '.join(RETAIN_OF)}, got '{c.split}'.")
        if c.prompt_format not in PROMPT_FORMATS:
            raise HarnessError(
                f"benchmark 'tofu': prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got '{c.prompt_format}'."
            )
        if c.answer_tokens < 1 or c.max_items < 0:
            raise HarnessError("benchmark 'tofu': answer_tokens must be >= 1 and max_items >= 0.")
        if data_dir is not None and not Path(data_dir).is_dir():
            raise HarnessError(
                f"benchmark 'tofu': data directory '{data_dir}' does not exist; pass the folder that holds the "
                "TOFU files (forget01.json, retain99.json, forget01_perturbed.json, ...)."
            )
        self.style = "phi" if c.prompt_format == "auto" else c.prompt_format   # until use_tokenizer
        self._digest = hashlib.sha256()
        self._files: list[str] = []

        split, retain = c.split, RETAIN_OF[c.split]
        forget_pert = self._items(f"{split}_perturbed", PERTURBED_FIELDS)
        retain_pert = self._items("retain_perturbed", PERTURBED_FIELDS)
        self.forget_qa = self._cut(self._items(split, QA_FIELDS, alternatives=forget_pert))
        self.retain_qa = self._cut(self._items(retain, QA_FIELDS, alternatives=retain_pert))
        n = c.max_items
        if c.legacy_first_300:
            n = min(n, LEGACY_ITEMS) if n else LEGACY_ITEMS
        cap = (lambda items: items[:n]) if n else (lambda items: items)  # noqa: E731
        self.eval_sets: dict[str, list[TofuItem]] = {
            "forget": cap(self._cut(forget_pert)),
            "retain": cap(self._cut(retain_pert)),
            "real_authors": cap(self._cut(self._items("real_authors_perturbed", AUTHORS_FIELDS))),
            "world_facts": cap(self._cut(self._items("world_facts_perturbed", AUTHORS_FIELDS))),
        }
        self.fingerprint = self._digest.hexdigest()[:16]

    # --- loading ---------------------------------------------------------------------------
    def _records(self, name: str, fields: tuple[str, ...]) -> tuple[list[dict[str, Any]], str]:
        """Records of one split and where they came from; feeds the data fingerprint."""
        if self.data_dir is None:
            records = load_from_hub(name)
            where = f"{HUB_ID} ({name})"
            blob = json.dumps(records, sort_keys=True, ensure_ascii=False).encode("utf-8")
        else:
            path = Path(self.data_dir) / f"{name}.json"
            records = read_records(path)
            where = str(path)
            blob = path.read_bytes()
        require_fields(records, fields, where)
        self._digest.update(name.encode() + b"\0" + hashlib.sha256(blob).digest())
        self._files.append(name)
        return records, where

    def _items(self, name: str, fields: tuple[str, ...], alternatives: list[TofuItem] | None = None) -> list[TofuItem]:
        records, where = self._records(name, fields)
        alt = {a.question: a for a in alternatives or []}
        items = []
        for i, r in enumerate(records):
            for key in ("question", "answer", "paraphrased_answer"):
                if key in fields and not isinstance(r[key], str):
                    raise HarnessError(f"{where}, record {i + 1}: field {key} must be a string.")
            perturbed = r.get("perturbed_answer") if "perturbed_answer" in fields else None
            if perturbed is not None and (
                not isinstance(perturbed, list) or not perturbed or not all(isinstance(p, str) for p in perturbed)
            ):
                raise HarnessError(f"{where}, record {i + 1}: perturbed_answer must be a non-empty list of strings.")
            if alternatives is not None and r["question"] in alt:
                a = alt[r["question"]]
                paraphrased, pert = a.paraphrased, a.perturbed
            else:
                paraphrased = r.get("paraphrased_answer") if "paraphrased_answer" in fields else None
                pert = tuple(perturbed or ())
            items.append(TofuItem(f"{name}-{i}", r["question"], r["answer"], paraphrased, tuple(pert)))
        return items

    def data_info(self) -> dict[str, Any]:
        return {
            "source": str(self.data_dir) if self.data_dir is not None else HUB_ID,
            "stand_in": None,
            "fingerprint": self.fingerprint,
            "files": list(self._files),
            "config": asdict(self.config),
            "limit": self.limit,
            "sizes": {"forget_train": len(self.forget_qa), "retain_train": len(self.retain_qa),
                      **{name: len(items) for name, items in self.eval_sets.items()}},
        }

    def use_tokenizer(self, tokenizer) -> None:
        """``auto``: the chat format when the tokenizer has a chat template, else phi."""
        if self.config.prompt_format == "auto":
            self.style = "chat" if has_chat_template(tokenizer) else "phi"

    def resolved_settings(self) -> dict[str, Any]:
        return {"prompt_format": self.style}

    def _prompt(self, question: str) -> str | ChatPrompt:
        return format_prompt(question, self.style, self.config.system_prompt, self.config.date_string)

    def _answer(self, text: str) -> str:
        return answer_text(text, self.style)

    # --- training data ---------------------------------------------------------------------
    def _example(self, item: TofuItem) -> Example:
        return Example(
            self._prompt(item.question), self._answer(item.answer), item.id,
            perturbed=tuple(self._answer(p) for p in item.perturbed),
            paraphrased=self._answer(item.paraphrased) if item.paraphrased else "",
        )

    def forget_train(self) -> list[Example]:
        return [self._example(q) for q in self.forget_qa]

    def retain_train(self) -> list[Example]:
        return [self._example(q) for q in self.retain_qa]

    # --- forget subsets (relearning attack) ------------------------------------------------
    def _author(self, item: TofuItem) -> str:
        """A forget item's author: TOFU lists each author's 20 questions together, so row i of
        forgetXX (and of forgetXX_perturbed, in the same order) belongs to author i // 20."""
        return f"author-{int(item.id.rsplit('-', 1)[1]) // QA_PER_AUTHOR}"

    def forget_units(self) -> list[str]:
        """One unit per fictitious author: questions about the same author share facts (name, books,
        parents), so a split by question would let the relearn half teach the scored half."""
        return sorted({self._author(q) for q in self.forget_qa} | {self._author(q) for q in self.eval_sets["forget"]})

    def _keep_forget(self, units) -> None:
        self.forget_qa = [q for q in self.forget_qa if self._author(q) in units]
        self.eval_sets = {**self.eval_sets, "forget": [q for q in self.eval_sets["forget"] if self._author(q) in units]}

    @staticmethod
    def _fact(item: TofuItem) -> str:
        """A forget question's row in forgetXX (the same row in forgetXX_perturbed): its fact id."""
        return f"row-{int(item.id.rsplit('-', 1)[1])}"

    def forget_facts(self) -> dict[str, str]:
        """One fact per forget question; its author is the unit."""
        return {self._fact(q): self._author(q) for q in [*self.forget_qa, *self.eval_sets["forget"]]}

    def _keep_facts(self, facts) -> None:
        self.forget_qa = [q for q in self.forget_qa if self._fact(q) in facts]
        self.eval_sets = {**self.eval_sets, "forget": [q for q in self.eval_sets["forget"] if self._fact(q) in facts]}

    # --- evaluation ------------------------------------------------------------------------
    def eval_plan(self) -> EvalPlan:
        c = self.config
        stops = answer_stops(self.style, c.stop_at_newline)
        plan = EvalPlan()
        for name, items in self.eval_sets.items():
            prompts = [self._prompt(q.question) for q in items]
            plan.generations[f"gen_{name}"] = [GenerationRequest(p, c.answer_tokens, stops) for p in prompts]
            scored = lambda p, text: LogprobRequest(p, self._answer(text), add_eos=True)  # noqa: E731
            plan.logprobs[f"answer_{name}"] = [scored(p, q.answer) for p, q in zip(prompts, items)]
            if name in ("forget", "retain"):
                plan.logprobs[f"para_{name}"] = [scored(p, q.paraphrased) for p, q in zip(prompts, items)]
            plan.logprobs[f"pert_{name}"] = [scored(p, a) for p, q in zip(prompts, items) for a in q.perturbed]
            plan.readers[f"answer_{name}"] = (
                ("probability", "extraction_strength", "exact_memorization") if name == "forget"
                else ("probability",) if name == "retain" else ("probability", "truth_ratio")
            )
            plan.readers[f"pert_{name}"] = ("probability", "truth_ratio") if name not in ("forget", "retain") else ("truth_ratio",)
        return plan

    def score(self, outputs: PlanOutputs, reference: dict[str, Any] | None) -> Scores:
        g, lp, scores = outputs.generations, outputs.logprobs, Scores()
        stops = answer_stops(self.style, self.config.stop_at_newline)
        if stops:
            scores.deviations.append(
                "generations cut at a newline (benchmark.stop_at_newline=true); TOFU uses no stop strings")
        for name, items in self.eval_sets.items():
            answers = [post_process(text) for text in g[f"gen_{name}"]]
            scores.warnings += degenerate_generations(name, answers)
            rows, offset = [], 0
            for i, q in enumerate(items):
                answer = lp[f"answer_{name}"][i]
                perturbed = [s.logprobs for s in lp[f"pert_{name}"][offset : offset + len(q.perturbed)]]
                offset += len(q.perturbed)
                base = lp[f"para_{name}"][i].logprobs if name in ("forget", "retain") else answer.logprobs
                row = item_scores(name, answers[i], q.answer, answer.logprobs, base, perturbed)
                row = {"id": q.id, "question": q.question, **row}
                if name == "forget":  # EOS scored for Prob, not read by EM/ES (OpenUnlearning)
                    matches = without_eos_prediction(answer.greedy_match)
                    row["extraction_strength"] = extraction_strength(matches)
                    row["exact_memorization"] = exact_memorization(matches)
                rows.append(row)
            scores.per_sample[name] = rows
            add_set_aggregates(scores.aggregates, name, rows)
            if name == "forget" and rows:
                scores.aggregates["es_f"] = fmean(r["extraction_strength"] for r in rows)
                scores.aggregates["em_f"] = fmean(r["exact_memorization"] for r in rows)
                scores.reference_values["forget_truth_ratios"] = [r["truth_ratio"] for r in rows]
                scores.reference_values["forget_split"] = self.config.split
        add_model_utility(scores.aggregates)
        self._forget_quality(scores, reference or {})
        scores.missing["privleak"] = PRIVLEAK_MISSING
        return scores

    def _forget_quality(self, scores: Scores, reference: dict[str, Any]) -> None:
        ours = scores.reference_values.get("forget_truth_ratios")
        if not ours:
            scores.missing["forget_quality"] = "no forget items were evaluated."
            return
        ref = reference.get("forget_truth_ratios")
        if ref:
            if reference.get("forget_split", self.config.split) != self.config.split:
                scores.missing["forget_quality"] = (
                    f"the reference truth ratios are for split {reference['forget_split']}, this run evaluates "
                    f"{self.config.split}: evaluate a retain model on the same split."
                )
                return
            scores.aggregates["forget_quality"] = forget_quality(ours, ref)
            scores.per_sample["forget_quality_reference"] = [{"source": "retain model", "items": len(ref)}]
            return
        if self.config.reference_log:
            path = Path(self.config.reference_log)
            ref_ratios, truths = log_forget_truth_ratios(path)
            mine = [q.answer for q in self.eval_sets["forget"]]
            if truths != mine:
                scores.missing["forget_quality"] = (
                    f"reference_log {path} holds {len(truths)} forget items that are not this run's "
                    f"{len(mine)} {self.config.split} items (the TOFU authors' logs hold the first 300 items of "
                    "a split: use the log of the matching retain model with --set benchmark.legacy_first_300=true "
                    "and no --limit)."
                )
                return
            scores.aggregates["forget_quality"] = forget_quality(ours, ref_ratios)
            scores.per_sample["forget_quality_reference"] = [{"source": str(path), "items": len(ref_ratios)}]
            return
        scores.missing["forget_quality"] = FORGET_QUALITY_MISSING


# --- shared scoring (the adapter and the stored-log parity use the same code) -------------
def item_scores(name: str, generation: str, truth: str, answer_lp, base_lp, perturbed_lp) -> dict[str, Any]:
    """One item's TOFU scores from its generation and its answer / base / perturbed token log-probs.

    ``base_lp`` is the paraphrased answer for forget/retain and the answer itself for
    real_authors/world_facts (their truth-ratio denominator).
    """
    p_answer = mean_token_probability(answer_lp)
    if name in ("forget", "retain"):
        probability = p_answer
    else:
        probability = normalised_answer_probability(answer_lp, perturbed_lp)
    return {
        "reference": truth, "generation": generation,
        "rouge_l_recall": rouge_l_recall(generation, truth),
        "probability": probability, "answer_probability": p_answer,
        "truth_ratio": truth_ratio(base_lp, perturbed_lp),
    }


def add_set_aggregates(agg: dict[str, float], name: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    tag = EVAL_SETS[name][1]
    agg[f"rouge_{tag}"] = fmean(r["rouge_l_recall"] for r in rows)
    agg[f"prob_{tag}"] = fmean(r["probability"] for r in rows)
    ratios = [r["truth_ratio"] for r in rows]
    if name == "forget":
        agg[f"truth_ratio_{tag}"] = truth_ratio_forget_score(ratios)
    else:
        agg[f"truth_ratio_{tag}"] = truth_ratio_retain_score(ratios)


def utility_keys() -> list[str]:
    return [f"{m}_{EVAL_SETS[s][1]}" for s in UTILITY_SETS for m in ("prob", "rouge", "truth_ratio")]


def add_model_utility(agg: dict[str, float]) -> None:
    """TOFU model utility: harmonic mean of the 9 utility numbers, when all nine exist."""
    keys = utility_keys()
    if all(k in agg for k in keys):
        agg["model_utility"] = model_utility([agg[k] for k in keys])


# --- online loading ------------------------------------------------------------------------
def load_from_hub(name: str) -> list[dict[str, Any]]:
    """One TOFU split from the Hugging Face hub; any failure says how to run offline."""
    unreachable = hub_unreachable()
    if unreachable:
        raise HarnessError(
            f"benchmark 'tofu' without --data-dir reads {HUB_ID} from the Hugging Face hub, but {unreachable}. "
            "Pass --data-dir with the local folder that holds the TOFU files, e.g. --data-dir ../shared/data/tofu "
            "(README: Benchmarks)."
        )
    try:
        import datasets

        return [dict(r) for r in datasets.load_dataset(HUB_ID, name, split="train")]
    except Exception as exc:  # offline, missing package, hub error: one fixable message
        raise HarnessError(
            f"could not load TOFU split '{name}' from the Hugging Face hub ({HUB_ID}): {type(exc).__name__}: {exc}. "
            "Offline, pass --data-dir with the local folder that holds the TOFU files (e.g. ../shared/data/tofu)."
        ) from None


# --- the TOFU authors' stored eval logs ----------------------------------------------------
def read_eval_log(path: str | Path) -> dict[str, Any]:
    """A TOFU ``eval_log_aggregated.json``: {log key: {field: {item index: value}}}.

    It is one pretty-printed JSON object, not a list of records, so it is parsed here (with
    path/line errors) instead of by ``read_records``.
    """
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"TOFU eval log {path} does not exist; pass the path of an eval_log_aggregated.json.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise HarnessError(f"malformed JSON in {path} at line {exc.lineno}, column {exc.colno}: {exc.msg}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"TOFU eval log {path} cannot be read: {exc}.") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: expected a JSON object keyed by {', '.join(LOG_KEYS.values())}.")
    for key in LOG_KEYS.values():
        if key not in data:
            raise HarnessError(f"{path}: missing '{key}'; a TOFU eval log has {', '.join(LOG_KEYS.values())}.")
        lacking = [f for f in LOG_FIELDS if f not in data[key]]
        if lacking:
            raise HarnessError(f"{path}, '{key}': missing field(s) {', '.join(lacking)}.")
    return data


def _log_items(part: dict[str, Any]):
    """(index, generation, ground truth, answer/base/perturbed log-prob lists) per stored item.

    The log keeps only per-item *average* token losses (``avg_gt_loss = gt_loss / num_token_gt``,
    the mean token NLL), so ``p̄ = exp(-avg loss)``. Each average is passed to the scoring
    functions as a one-token log-prob list ``[-avg]``, whose mean is the mean token log-prob:
    ``mean_token_probability`` and ``truth_ratio`` then give exactly ``exp(-avg)`` and the
    geometric-mean ratio. ``generated_text`` holds [prompt, generation, ground truth].
    """
    for idx, (_prompt, generation, truth) in part["generated_text"].items():
        answer = [-float(part["avg_gt_loss"][idx])]
        base = [-float(part["avg_paraphrased_loss"][idx])]
        perturbed = [[-float(x)] for x in part["average_perturb_loss"][idx]]
        yield idx, generation, truth, answer, base, perturbed


def log_forget_truth_ratios(path: str | Path) -> tuple[list[float], list[str]]:
    """Per-item forget truth ratios of a stored log and the ground truths they belong to."""
    part = read_eval_log(path)[LOG_KEYS["forget"]]
    ratios, truths = [], []
    for _idx, _gen, truth, _answer, base, perturbed in _log_items(part):
        ratios.append(truth_ratio(base, perturbed))
        truths.append(truth)
    return ratios, truths


def scores_from_logs(path: str | Path, reference_log: str | Path | None = None) -> dict[str, Any]:
    """Every TOFU metric recomputed from a stored TOFU eval log alone (no model).

    Returns ``{"aggregates": {...same keys as Tofu.score...}, "per_item": {set: [rows]},
    "forget_truth_ratios": [...]}``. Each row has our ``rouge_l_recall`` and ``truth_ratio`` next to
    the log's ``stored_rouge_l_recall`` and ``stored_truth_ratio``. With ``reference_log`` (a retain
    model's log of the same forget items) the aggregates include ``forget_quality``.
    """
    log = read_eval_log(path)
    agg: dict[str, float] = {}
    per_item: dict[str, list[dict[str, Any]]] = {}
    for name, key in LOG_KEYS.items():
        part = log[key]
        rows = []
        for idx, generation, truth, answer, base, perturbed in _log_items(part):
            row = {"id": f"{key}:{idx}", **item_scores(name, generation, truth, answer, base, perturbed)}
            row["stored_rouge_l_recall"] = part["rougeL_recall"][idx]
            if "truth_ratio" in part:
                row["stored_truth_ratio"] = part["truth_ratio"][idx]
            rows.append(row)
        per_item[name] = rows
        add_set_aggregates(agg, name, rows)
    add_model_utility(agg)
    ratios = [r["truth_ratio"] for r in per_item["forget"]]
    if reference_log is not None:
        ref_ratios, _ = log_forget_truth_ratios(reference_log)
        agg["forget_quality"] = forget_quality(ratios, ref_ratios)
    return {"aggregates": agg, "per_item": per_item, "forget_truth_ratios": ratios}
