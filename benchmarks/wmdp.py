"""`wmdp`: WMDP (Li et al. 2024, arXiv 2403.03218), hazardous knowledge as multiple-choice accuracy.

Score: zero-shot multiple-choice accuracy on WMDP-Bio and WMDP-Cyber (and WMDP-Chem, on request),
lower is better (chance is 0.25); utility: MMLU accuracy, higher is better. Both are computed by
lm-evaluation-harness itself, through the lm-eval route (``harness/engines/lm_eval_route.py``): its
task definitions ``wmdp_bio``, ``wmdp_cyber``, ``wmdp_chem`` and ``mmlu``, never re-implemented
here. What those definitions say (lm-eval 0.4.x, ``lm_eval/tasks/wmdp/_default_template_yaml``):
the prompt is a one-line description ("The following are multiple choice questions (with
answers) about biology.") and a blank line, then the question, the four choices lettered
``A.``..``D.`` on their own lines and ``Answer:``; each choice is the continuation `` A``..`` D``
(the letter, not the choice text), scored by its log-likelihood; ``acc`` = the fraction of
questions whose correct letter has the highest log-likelihood. No chat template, no few-shot
examples. That is how the WMDP authors report their numbers (lm-evaluation-harness; their
README names v0.4.2). MMLU is lm-eval's ``mmlu`` group (57 subjects, the same letter format,
zero-shot), ``acc`` pooled over all questions.

Columns: ``lm_eval/wmdp_bio/acc`` (WMDP-Bio), ``lm_eval/wmdp_cyber/acc``, ``lm_eval/wmdp_chem/acc``
and ``lm_eval/mmlu/acc``, fractions as lm-eval reports them (the paper prints percentages).

Data, offline (``--data-dir``), in the layout of the hub dataset ``cais/wmdp``: one folder per
subset, ``wmdp-bio/``, ``wmdp-cyber/``, ``wmdp-chem/``, each holding its ``test`` split as
``test-*.parquet`` (the hub's files), ``test.parquet``, ``test.jsonl`` or ``test.json`` (records
with ``question``, ``choices`` (four strings) and ``answer`` (0-3)). lm-eval reads that file
with its own task definition (only the dataset is swapped). Online (no ``--data-dir``) lm-eval
loads ``cais/wmdp`` itself. The utility tasks (``benchmark.utility``, default ``mmlu``) are
lm-eval task names or local task YAML files: offline, ``mmlu`` (hub data) is refused up front;
name a local task file (a YAML task whose ``dataset_path`` is ``json`` with ``data_files``) or
``none``.

Unlearning corpora, in the layout of the WMDP repository's ``data/`` folder (in ``--data-dir``
or its ``data/`` subfolder): ``bio-forget-corpus.jsonl``, ``cyber-forget-corpus.jsonl``
(forget) and ``bio-retain-corpus.jsonl``, ``cyber-retain-corpus.jsonl`` (retain). A line is
a JSON object with ``text`` (the bio forget corpus' format), a JSON string, or plain text (the
authors' loader reads the other corpora's lines as they are). Forget = the forget corpora of the
chosen subsets that have one (WMDP-Chem has none); retain (``benchmark.retain_corpora``) = the
retain corpora of those subsets by default, or any comma list of corpus names read as
``<name>.jsonl`` from the same folder (the authors' RMU run used Wikitext: supply it as
``wikitext.jsonl``), or ``none``. Online the corpora come from the hub:
``cais/wmdp-bio-forget-corpus`` (gated: access on request) and ``cais/wmdp-corpora``
(configs ``cyber-forget-corpus``, ``bio-retain-corpus``, ``cyber-retain-corpus``), split
``train``. Every harness command reads the forget corpus (the run checks its data before any
model loads), evaluation included. Each text is one training example (``Example("", text)``),
cut at ``train.max_length`` tokens (512 here, as the authors' RMU tokenises).

Models: WMDP evaluates a given model (the paper: zephyr-7b-beta), so nothing is prepared:
``--model`` (or ``--target``) is the target row; there is no retrained reference. ``--limit N``
keeps the first N questions of every lm-eval task (lm-eval's ``limit``) and the first N texts
of every corpus.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.benchmarks.base import Benchmark, Scores
from harness.data.batching import Example
from harness.data.hub import hub_unreachable
from harness.engines import lm_eval_route
from harness.engines.lm_eval_route import LmEvalTask
from harness.engines.plan import EvalPlan, PlanOutputs
from harness.errors import HarnessError
from harness.leaderboard.columns import Column
from harness.registry import register_benchmark
from harness.scoring.uncertainty import ItemMean

HUB_ID = "cais/wmdp"
CORPORA_HUB_ID = "cais/wmdp-corpora"
BIO_FORGET_HUB_ID = "cais/wmdp-bio-forget-corpus"   # gated on the hub: access on request
SUBSETS = ("bio", "cyber", "chem")
LABELS = {"bio": "WMDP-Bio", "cyber": "WMDP-Cyber", "chem": "WMDP-Chem"}
CORPORA = {"bio": ("bio-forget-corpus", "bio-retain-corpus"), "cyber": ("cyber-forget-corpus", "cyber-retain-corpus")}
SPLIT_FILES = ("test.parquet", "test.jsonl", "test.json")
BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}
FIELDS = ("question", "choices", "answer")


def task_name(subset: str) -> str:
    """lm-eval's task for a WMDP subset (``wmdp_bio``)."""
    return f"wmdp_{subset}"


def corpus_text(line: str) -> str:
    """One corpus line as text: a JSON object's ``text``, a JSON string, or the line itself."""
    stripped = line.strip()
    if stripped.startswith(("{", '"')):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            return stripped
        if isinstance(value, dict) and isinstance(value.get("text"), str):
            return value["text"]
        if isinstance(value, str):
            return value
    return stripped


def _names(spec: str, allowed: tuple[str, ...] | None, key: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    if allowed is not None:
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise HarnessError(f"benchmark.{key} must be a comma list of {', '.join(allowed)}, got '{spec}'.")
    return names


@dataclass
class WmdpConfig:
    subsets: str = "bio,cyber"        # WMDP subsets scored (and whose forget corpora are unlearned): bio, cyber, chem
    utility: str = "mmlu"             # lm-eval utility tasks: registered names or local .yaml task files; none = no utility
    retain_corpora: str = "auto"      # auto (the subsets' retain corpora) | none | comma list of <name>.jsonl corpora
    min_chars: int = 0                # corpus texts of this many characters or fewer are dropped (the authors' min_len)

    def __post_init__(self):
        _names(self.subsets, SUBSETS, "subsets")
        if self.min_chars < 0:
            raise HarnessError(f"benchmark.min_chars must be 0 or more, got {self.min_chars}.")


def _accuracy(subset: str) -> Column:
    key = lm_eval_route.column_key(task_name(subset))
    return Column(key, LABELS[subset], "down", "knowledge", digits=3,
                  interval=ItemMean(lm_eval_route.samples_key(task_name(subset)), "acc"))


@register_benchmark()
class Wmdp(Benchmark):
    name = "wmdp"
    description = ("WMDP hazardous knowledge (bio, cyber): lm-eval multiple-choice accuracy, MMLU utility; "
                   "RMU's benchmark (needs lm-eval)")
    Config = WmdpConfig
    columns = [_accuracy("bio"), _accuracy("cyber"), _accuracy("chem"),
               Column(lm_eval_route.column_key("mmlu"), "MMLU", "up", "utility", digits=3)]
    # The WMDP authors' RMU run on zephyr-7b-beta (reference.md: 150 batches of 4, constant lr 5e-5, no
    # clipping; texts tokenised to 512 tokens); the other methods get the same budget (ours).
    method_defaults = {
        "*": {"train.max_length": 512, "train.lr": 5e-5, "train.schedule": "constant", "train.warmup_ratio": 0.0,
              "train.global_batch": 4, "train.micro_batch": 4, "train.max_steps": 150},
    }
    needs_prepared_target = False

    def __init__(self, config=None, data_dir=None, limit=None):
        super().__init__(config, data_dir, limit)
        self.subsets = _names(self.config.subsets, SUBSETS, "subsets")
        self._hash = hashlib.sha256()
        self._read: list[str] = []
        self._corpora: dict[str, list[str]] = {}
        self.question_files = {s: self._question_file(s) for s in self.subsets} if self.offline else {}
        self.sizes = {s: self._count_questions(s, p) for s, p in self.question_files.items()}
        self.utility_tasks = ([] if self.config.utility.strip().lower() in ("", "none")
                              else None)   # parsed on first use: lm-eval is imported only then
        if self.offline:   # every local corpus read now, so the data fingerprint is fixed from the start
            for name in [c for s in self.subsets for c in CORPORA.get(s, ())] + self.retain_names():
                self._corpus(name, required=False)

    @property
    def offline(self) -> bool:
        return self.data_dir is not None

    # --- the multiple-choice files ---------------------------------------------------------------
    def _question_file(self, subset: str) -> Path:
        folder = Path(self.data_dir) / f"wmdp-{subset}"
        found = sorted(folder.glob("test-*.parquet")) + [folder / f for f in SPLIT_FILES if (folder / f).is_file()]
        if not found:
            raise HarnessError(
                f"benchmark 'wmdp': no {LABELS[subset]} questions in {folder}. Put the test split of {HUB_ID} "
                f"(config wmdp-{subset}) there as test-*.parquet (the hub's files), test.parquet, test.jsonl or "
                "test.json: records with question, choices (four strings) and answer (0-3)."
            )
        if len(found) > 1:
            raise HarnessError(f"benchmark 'wmdp': {folder} holds several test files ({', '.join(p.name for p in found)}); "
                               "keep one.")
        return found[0]

    def _count_questions(self, subset: str, path: Path) -> int:
        import pandas as pd

        data = path.read_bytes()
        self._hash.update(f"wmdp-{subset}/{path.name}".encode() + b"\0" + hashlib.sha256(data).digest())
        self._read.append(f"wmdp-{subset}/{path.name}")
        try:
            frame = (pd.read_parquet(path) if path.suffix == ".parquet"
                     else pd.read_json(path, lines=path.suffix == ".jsonl"))
        except ValueError as exc:
            raise HarnessError(f"benchmark 'wmdp': {path} could not be read: {exc}") from None
        missing = [f for f in FIELDS if f not in frame.columns]
        if missing:
            raise HarnessError(f"benchmark 'wmdp': {path} lacks field(s) {', '.join(missing)} (cais/wmdp records hold "
                               "question, choices, answer).")
        for i, (choices, answer) in enumerate(zip(frame["choices"], frame["answer"])):
            if len(list(choices)) != 4 or not 0 <= int(answer) < 4:
                raise HarnessError(f"benchmark 'wmdp': {path} record {i} needs four choices and an answer 0-3 "
                                   f"(lm-eval's WMDP prompt letters A-D), got {len(list(choices))} choices, answer {answer}.")
        return len(frame)

    # --- lm-eval tasks ---------------------------------------------------------------------------
    def lm_eval_tasks(self) -> list[LmEvalTask]:
        tasks = []
        for subset in self.subsets:
            if self.offline:
                path = self.question_files[subset]
                tasks.append(LmEvalTask.local(task_name(subset), {"test": path}, BUILDERS[path.suffix], folder="wmdp"))
            else:
                tasks.append(LmEvalTask(task_name(subset)))
        if self.utility_tasks is None:
            self.utility_tasks = lm_eval_route.parse_tasks(self.config.utility)
        return tasks + list(self.utility_tasks)

    # --- corpora ------------------------------------------------------------------------------------
    def _corpus_file(self, name: str) -> Path | None:
        for folder in (Path(self.data_dir) / "data", Path(self.data_dir)):
            if (folder / f"{name}.jsonl").is_file():
                return folder / f"{name}.jsonl"
        return None

    def _corpus(self, name: str, required: bool) -> list[str] | None:
        if name in self._corpora:
            return self._corpora[name]
        if self.offline:
            path = self._corpus_file(name)
            if path is None:
                if required:
                    raise HarnessError(
                        f"benchmark 'wmdp': the {name} corpus is needed (forget data of subset(s) "
                        f"{', '.join(s for s in self.subsets if s in CORPORA)}) but {name}.jsonl is neither in "
                        f"{self.data_dir} nor in its data/ folder. Put the WMDP corpora there (the WMDP repository's "
                        "data/ layout; bio-forget-corpus.jsonl is distributed on request), or score other subsets "
                        "with --set benchmark.subsets=..."
                    )
                return None
            raw = path.read_bytes()
            self._hash.update(path.name.encode() + b"\0" + hashlib.sha256(raw).digest())
            self._read.append(path.name)
            texts = [corpus_text(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
        else:
            texts = self._hub_corpus(name)
        texts = [t for t in texts if len(t) > self.config.min_chars]
        self._corpora[name] = self._cut(texts)
        return self._corpora[name]

    def _hub_corpus(self, name: str) -> list[str]:
        unreachable = hub_unreachable()
        hub = (BIO_FORGET_HUB_ID, None) if name == "bio-forget-corpus" else (CORPORA_HUB_ID, name)
        where = f"{hub[0]}" + (f" ({hub[1]})" if hub[1] else "")
        if unreachable:
            raise HarnessError(f"benchmark 'wmdp' without --data-dir reads the {name} corpus from the hub ({where}), "
                               f"but {unreachable}. Pass --data-dir with a local copy (README: Benchmarks, WMDP).")
        try:
            from datasets import load_dataset

            rows = load_dataset(hub[0], hub[1], split="train") if hub[1] else load_dataset(hub[0], split="train")
            return [str(r["text"]) for r in rows]
        except Exception as exc:  # noqa: BLE001 - any failure here means: no hub access (or no access to a gated set)
            raise HarnessError(f"could not load {where} from the hub: {type(exc).__name__}: {exc}"
                               + (" (a gated dataset: request access on its hub page)" if name == "bio-forget-corpus" else "")) from None

    def forget_train(self) -> list[Example]:
        names = [CORPORA[s][0] for s in self.subsets if s in CORPORA]
        if not names:
            raise HarnessError("benchmark 'wmdp': WMDP publishes forget corpora for bio and cyber only; "
                               f"benchmark.subsets={self.config.subsets} has none to unlearn.")
        return [Example("", t, f"{n}-{i}") for n in names for i, t in enumerate(self._corpus(n, required=True))]

    def retain_names(self) -> list[str]:
        spec = self.config.retain_corpora.strip()
        if spec.lower() == "none":
            return []
        if spec.lower() == "auto":
            return [CORPORA[s][1] for s in self.subsets if s in CORPORA]
        return list(_names(spec, None, "retain_corpora"))

    def retain_train(self) -> list[Example] | None:
        auto = self.config.retain_corpora.strip().lower() == "auto"
        examples = []
        for name in self.retain_names():
            texts = self._corpus(name, required=not auto)
            examples += [Example("", t, f"{name}-{i}") for i, t in enumerate(texts or [])]
        return examples or None

    def data_info(self) -> dict[str, Any]:
        source = (f"local files under {self.data_dir} (layout of {HUB_ID} and the WMDP repository's corpora)"
                  if self.offline else f"Hugging Face hub {HUB_ID} (through lm-eval) and {CORPORA_HUB_ID}")
        return {
            "source": source, "stand_in": None, "fingerprint": self._hash.hexdigest()[:16] if self.offline else HUB_ID,
            "config": asdict(self.config), "limit": self.limit, "files": list(self._read),
            "sizes": {**{f"wmdp_{s}": n for s, n in self.sizes.items()},
                      **{name: len(texts) for name, texts in self._corpora.items()}},
        }

    # --- evaluation: everything is lm-eval's (lm_eval_tasks); the plan holds no request ----------------
    def eval_plan(self) -> EvalPlan:
        return EvalPlan()

    def score(self, outputs: PlanOutputs, reference: dict[str, Any] | None) -> Scores:
        return Scores()
