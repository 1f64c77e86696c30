"""`muse-news`: MUSE-News (Shi et al. 2024), scored as published (reference.md section 2, MUSE).

Data: offline from ``--data-dir`` in the layout of the hub dataset ``muse-bench/MUSE-News``
(``verbmem/forget.json``, ``knowmem/{forget_qa,retain_qa,forget_qa_icl,retain_qa_icl}.json``,
``privleak/{forget,holdout}.json``, ``raw/forget.json``, ``sust/forget_1..4.json``; a text split
is a JSON array of strings or of ``{"text": ...}`` objects); online (no ``--data-dir``) through
``datasets.load_dataset("muse-bench/MUSE-News", <config>, split=<split>)``.

Metrics, each with MUSE's definition (checked against the authors' evaluation code):

- VerbMem f: greedy continuation of each ``verbmem/forget`` prompt for 128 new tokens; ROUGE-L
  F1 (``rouge_score``, no stemmer) against ``gt``; mean x 100. MUSE also cuts ``gt`` to its first
  128 Llama tokens (BOS included) before scoring; the adapter never sees a tokenizer, so it scores
  against the whole ``gt``, which the data already sizes at about 128 Llama tokens (83 words on
  average): at most the last token or two differ.
- KnowMem f / KnowMem r: the 10 ICL pairs of the split (``forget_qa_icl`` for forget,
  ``retain_qa_icl`` for retain), each ``"Question: {q}\\nAnswer: {a}\\n\\n"``, then
  ``"Question: {q}\\nAnswer: "`` (see ``knowmem_prompt``); greedy, 32 new tokens, cut at the first
  ``"\\n\\n"``, ``"\\nQuestion"`` or ``"Question:"``; ROUGE-L F1 against the answer; mean x 100.
  MUSE generates all 32 tokens and cuts afterwards; the engine stops a row once its generated
  text holds a stop string and cuts at the same place, which gives the same greedy text.
- PrivLeak: Min-K% Prob (k = 0.4) of each ``privleak/forget`` (members) and ``privleak/holdout``
  (non-members) text; AUC in MUSE's convention (forget = 0, holdout = 1, score negated:
  ``muse_auc``); ``PrivLeak = (AUC - AUC_ref) / AUC_ref x 100``. ``privleak_reference="evaluated"``
  (default) uses the evaluated retain model's AUC when the run has one, else the published
  retrain AUC 0.4772 (``MUSE_NEWS_RETRAIN_AUC``, what MUSE's own code always uses);
  ``"published"`` always uses 0.4772. The AUC used is recorded in
  ``aggregates["privleak_reference_auc"]`` and ``per_sample["privleak"]``.
- Extras from the same passes: extraction strength on the verbmem ``gt`` (teacher forcing, prompt =
  verbmem prompt; ``es_f``), and the LOSS, ZLib and Min-K%++ attacks as ``auc_loss``,
  ``auc_zlib``, ``auc_mink_pp`` (same AUC convention; ``auc_min_k`` is the PrivLeak one), the
  Reference attack as ``auc_reference`` (each text's loss minus the evaluated retain model's; rows
  scored with a retain model in the run) and, with ``benchmark.mia_gradnorm=true``, GradNorm as
  ``auc_gradnorm`` (one backward pass per text, on the HF engine).

Whitespace: the KnowMem prompt ends in ``"Answer: "`` with a trailing space, exactly as MUSE's
code builds it. A tokenizer then ends the prompt on a lone-space token (Llama: ``"▁"``; byte-level
BPE: ``"Ġ"``/``" "``), so the model must continue with a space-less token, a boundary it rarely saw
in training. It is kept because the published numbers were produced with it; the engine passes
prompts to the tokenizer unchanged. The verbmem ``prompt``/``gt`` pairs were cut at Llama token
boundaries and decoded separately, so ``prompt + gt`` is not always the original text (a space or
a newline at the cut is lost in about a third of the items); teacher-forced ES scores ``gt``
exactly as given, which can change how the first token or two are split but barely moves ES
(``1 - k/L`` over about 128 positions).

Training data (MUSE: the whole forget file tokenised as one stream, cut into 2048-token chunks
with a BOS each): the articles are joined with a blank line and cut into chunks of at most
``chunk_words`` words, since nothing can be tokenised when the data is loaded. On this corpus
Llama-2 counts about 1.51 tokens per word (verbmem prompts: 1024 tokens ~ 674 words; privleak
texts: 2048 tokens ~ 1358 words), so 1300 words ~ 1960 Llama tokens, just under MUSE's 2048
(about 1700 tokens with SmolLM2's tokenizer). ``train.max_length`` (2048 in the method defaults)
truncates anything longer. Chunks cross article boundaries, as MUSE's do.

Retain corpus: online it is ``raw/retain1`` (MUSE's retain data for GradDiff-style methods).
``raw/retain1`` is not in the shared offline copy, so offline the adapter uses a declared stand-in
(``retain_source="sust"``, chosen by ``"auto"`` when ``raw/retain1.json`` is absent): the articles
of the sustainability folds that are not in the forget set (folds 2..4 for the default forget
set, since ``raw/forget`` == ``sust/forget_1``), capped at ``retain_max_articles`` (1777, the size
of ``raw/retain1``). They are other BBC articles from the same period, NOT the retain split: the
KnowMem r questions and ``privleak/retain`` texts are about ``raw/retain2``, which is in neither
corpus. ``data_info()["stand_in"]`` says so and the leaderboard footnotes it.

Variants: ``forget_source`` = ``raw`` (default), ``sust1``..``sust4`` (the disjoint
sustainability folds) or ``scal1``..``scal4`` (scalability: folds 1..k concatenated; read from
``scal/forget_k.json`` when present, otherwise built from the ``sust`` folds, which is what the hub's
byte counts show ``scal`` to be). Each runs as one ordinary unlearning run; the evaluation sets stay
the ``raw/forget``-derived ones, as in MUSE, where scalability and sustainability report KnowMem r.
The sequential sustainability protocol (unlearning fold after fold on the same model) is not
implemented here.

Models: no published small target exists, so ``run`` prepares a target (forget + retain corpus)
and a retain model (retain corpus) with ``prepare``; for the published protocol, online users pass
``--target muse-bench/MUSE-News_target`` (the id MUSE's own scripts use), and ``--retain`` with a
retrain model for an evaluated PrivLeak reference (without one, PrivLeak uses the published
retrain AUC, as MUSE's code does). A prepared target never saw ``raw/retain2``, so its KnowMem r is
background knowledge, not retained fine-tuning knowledge.

Scale: privleak texts are about 2048 Llama tokens and verbmem prompts about 1024; nothing is
cut by words before tokenisation. PrivLeak texts are scored whole, as MUSE scores them (its
``metrics/privleak.py`` never truncates): up to the model's context length, with a warning for a
text longer than that; the verbmem ES request is cut at ``eval.max_length`` (2048 by default:
the verbmem prompt plus ``gt`` fit); generation prompts are not truncated.

Scored texts carry no EOS (MUSE tokenises them with ``tokenizer.encode``: BOS, no EOS), and
generations are decoded with ``clean_up_tokenization_spaces=True`` as MUSE's
``metrics/verbmem.py`` and ``metrics/knowmem.py`` do (``clean_up_spaces``, on by default; it
joins a space before punctuation such as `` ,`` or `` n't``). KnowMem generations that are
mostly empty after the stop cut raise a warning in the record. On a
CPU, use ``--limit`` (it keeps the first N items of every split and the first N articles of each
corpus; the 10 ICL pairs are always kept). The generation budgets ``verbmem_tokens`` and
``knowmem_tokens`` can be lowered for smoke tests only.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean
from typing import Any, Iterable, Sequence

from harness.data.batching import Example
from harness.benchmarks.base import Benchmark, Scores, degenerate_generations
from harness.data.files import as_texts, read_records, read_texts, require_fields
from harness.engines.base import GenerationRequest, LogprobRequest
from harness.errors import HarnessError
from harness.data.hub import hub_unreachable
from harness.engines.plan import EvalPlan, PlanOutputs
from harness.leaderboard.columns import Column
from harness.registry import register_benchmark
from harness.scoring.memorization import extraction_strength
from harness.scoring.privacy import (
    MUSE_NEWS_RETRAIN_AUC,
    loss_score,
    min_k_plus_plus_score,
    min_k_score,
    muse_auc,
    privleak,
    zlib_score,
    gradnorm_score,
)
from harness.scoring.text import rouge_l_f1, truncate_at_stop
from harness.scoring.uncertainty import ItemMean, RelativeToReference, SplitAuc

HUB_ID = "muse-bench/MUSE-News"
KNOWMEM_STOPS = ("\n\n", "\nQuestion", "Question:")
ARTICLE_JOINER = "\n\n"          # how articles are joined before chunking (MUSE's forget.txt layout is not published)
RETAIN1_ARTICLES = 1777          # size of raw/retain1 (hub dataset card)
SUST_FOLDS = (1, 2, 3, 4)
FORGET_SOURCES = ("raw",) + tuple(f"sust{k}" for k in SUST_FOLDS) + tuple(f"scal{k}" for k in SUST_FOLDS)
RETAIN_SOURCES = ("auto", "retain1", "sust", "none")
PRIVLEAK_REFERENCES = ("evaluated", "published")

# Published MUSE-News results for Llama-2-7B (x100; PrivLeak in %), for reference rows (issue 6).
# Source: the MUSE authors' archived per-sample outputs (github.com/swj0419/muse_bench), re-scored
# (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models"); the Task
# Vector and NPO_KLR cells may differ from the printed paper.
PUBLISHED_LLAMA2_7B: dict[str, dict[str, float]] = {
    "Target": {"verbmem_f": 58.4, "knowmem_f": 63.9, "knowmem_r": 55.2, "privleak": -99.8},
    "Retrain": {"verbmem_f": 20.8, "knowmem_f": 33.1, "knowmem_r": 55.0, "privleak": 0.0},
    "GA": {"verbmem_f": 0.0, "knowmem_f": 0.0, "knowmem_r": 0.0, "privleak": 5.2},
    "GA_GDR": {"verbmem_f": 4.9, "knowmem_f": 31.0, "knowmem_r": 27.3, "privleak": 108.1},
    "GA_KLR": {"verbmem_f": 27.4, "knowmem_f": 50.2, "knowmem_r": 44.8, "privleak": -96.1},
    "NPO": {"verbmem_f": 0.0, "knowmem_f": 0.0, "knowmem_r": 0.0, "privleak": 24.4},
    "NPO_GDR": {"verbmem_f": 1.2, "knowmem_f": 54.6, "knowmem_r": 40.5, "privleak": 105.8},
    "NPO_KLR": {"verbmem_f": 26.9, "knowmem_f": 49.0, "knowmem_r": 45.4, "privleak": -95.8},
    "Task Vector": {"verbmem_f": 57.2, "knowmem_f": 66.2, "knowmem_r": 55.8, "privleak": -99.8},
    "WHP": {"verbmem_f": 19.7, "knowmem_f": 21.2, "knowmem_r": 28.3, "privleak": 109.6},
}
PUBLISHED_SOURCE = "MUSE (Shi et al. 2024), Llama-2-7B on MUSE-News, authors' archived outputs (reference.md s.5)"


# --- pure helpers (public: tested on fixed strings) ----------------------------------------
def knowmem_prompt(icl: Iterable[tuple[str, str]], question: str) -> str:
    """MUSE's KnowMem prompt: every ICL pair as "Question: q\\nAnswer: a\\n\\n", then the question.

    The result ends in "Answer: " with a trailing space, exactly as MUSE builds it.
    """
    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in icl)
    return shots + f"Question: {question}\nAnswer: "


def cut_answer(text: str) -> str:
    """A KnowMem generation cut at the first "\\n\\n", "\\nQuestion" or "Question:" (MUSE)."""
    return truncate_at_stop(text, KNOWMEM_STOPS)


def chunk_by_words(texts: Sequence[str], chunk_words: int, joiner: str = ARTICLE_JOINER) -> list[str]:
    """Join ``texts`` with ``joiner`` and cut the stream into pieces of at most ``chunk_words`` words.

    Words are maximal runs of non-whitespace; a piece keeps the original whitespace inside it
    (paragraph breaks included) and loses only the whitespace at its end. Pieces cross text
    boundaries, like MUSE's token chunks of the concatenated corpus.
    """
    if chunk_words < 1:
        raise ValueError(f"chunk_words must be at least 1, got {chunk_words}")
    stream = joiner.join(texts)
    starts = [m.start() for m in re.finditer(r"\S+", stream)]
    cuts = starts[::chunk_words] + [len(stream)]
    return [stream[a:b].rstrip() for a, b in zip(cuts, cuts[1:])]


def _fold_set(forget_source: str) -> tuple[int, ...]:
    """The sust folds a forget source consists of (raw/forget == sust/forget_1, per the data's provenance)."""
    if forget_source == "raw":
        return (1,)
    k = int(forget_source[4:])
    return (k,) if forget_source.startswith("sust") else tuple(range(1, k + 1))


@dataclass
class MuseNewsConfig:
    forget_source: str = "raw"          # raw | sust1..sust4 | scal1..scal4
    retain_source: str = "auto"         # auto (retain1 if available, else the sust stand-in) | retain1 | sust | none
    retain_max_articles: int = RETAIN1_ARTICLES   # cap on the sust stand-in (0 = every article of the other folds)
    chunk_words: int = 1300             # words per training chunk (~2048 Llama-2 tokens; see the module docstring)
    verbmem_tokens: int = 128           # MUSE verbmem_max_new_tokens (lower only for smoke tests)
    knowmem_tokens: int = 32            # MUSE knowmem_max_new_tokens (lower only for smoke tests)
    min_k: float = 0.4                  # Min-K% fraction; MUSE's PrivLeak key is forget_holdout_Min-40%
    privleak_reference: str = "evaluated"   # evaluated (retain model's AUC, else published) | published
    extraction_strength: bool = True    # teacher-forced ES on the verbmem gt (one extra log-prob pass)
    clean_up_spaces: bool = True        # decode with clean_up_tokenization_spaces=True, as MUSE does
    mia_gradnorm: bool = False          # GradNorm MIA on the PrivLeak texts (a backward pass per text; HF engine)

    def __post_init__(self):
        def bad(key, value, allowed):
            return HarnessError(
                f"benchmark.{key} must be one of {', '.join(allowed)}, got '{value}'."
            )
        if self.forget_source not in FORGET_SOURCES:
            raise bad("forget_source", self.forget_source, FORGET_SOURCES)
        if self.retain_source not in RETAIN_SOURCES:
            raise bad("retain_source", self.retain_source, RETAIN_SOURCES)
        if self.privleak_reference not in PRIVLEAK_REFERENCES:
            raise bad("privleak_reference", self.privleak_reference, PRIVLEAK_REFERENCES)
        if self.chunk_words < 1 or self.verbmem_tokens < 1 or self.knowmem_tokens < 1:
            raise HarnessError("benchmark.chunk_words, verbmem_tokens and knowmem_tokens must be at least 1.")
        if self.retain_max_articles < 0:
            raise HarnessError("benchmark.retain_max_articles must be 0 (no cap) or more.")
        if not 0.0 < self.min_k <= 1.0:
            raise HarnessError(f"benchmark.min_k must be a fraction in (0, 1], got {self.min_k}.")


@register_benchmark()
class MuseNews(Benchmark):
    name = "muse-news"
    description = "MUSE-News (BBC articles): VerbMem, KnowMem forget/retain, PrivLeak, scored as published"
    Config = MuseNewsConfig
    columns = [  # MUSE's published order
        Column("verbmem_f", "VerbMem f", "down", "verbatim", digits=1,
               interval=ItemMean("verbmem_f", "rouge_l_f1", scale=100.0)),
        Column("knowmem_f", "KnowMem f", "down", "knowledge", digits=1,
               interval=ItemMean("knowmem_f", "rouge_l_f1", scale=100.0)),
        Column("knowmem_r", "KnowMem r", "up", "utility", digits=1,
               interval=ItemMean("knowmem_r", "rouge_l_f1", scale=100.0)),
        Column("privleak", "PrivLeak", "ref", "privacy", target=0.0, digits=1,
               interval=RelativeToReference(SplitAuc("mia", "set", "holdout", "forget", "min_k"), "auc_min_k",
                                            "privleak", reference_key="privleak_reference_auc")),
        Column("es_f", "ES f", "down", "verbatim", digits=3, interval=ItemMean("es_f", "extraction_strength")),
    ]
    # Ours, not from a paper: for small models (SmolLM2-135M class) to memorise the forget chunks;
    # MUSE's own target is a Llama-2-7B the authors fine-tuned (muse-bench/MUSE-News_target).
    finetune_defaults = {
        "lr": 1e-4, "epochs": 3, "global_batch": 32, "micro_batch": 4, "warmup_ratio": 0.1,
        "schedule": "linear", "max_length": 2048,
    }
    # From the literature (MUSE unlearning, reference.md section 4): lr 1e-5, constant schedule,
    # effective batch 32, 2048-token chunks; epochs GA 1, GA_GDR 7, GA_KLR 10, NPO 1, NPO_GDR 10,
    # NPO_KLR 10. Mapped to our names: ga 1, graddiff 7 (GA_GDR: its default retain_loss=nll),
    # npo 1 (its default retain_loss=none). With retain_loss=kl (GA_KLR/NPO_KLR) or npo
    # retain_loss=nll (NPO_GDR) MUSE used 10: pass --set train.epochs=10. Other methods (simnpo,
    # idkdpo, flat, sga) were not run by MUSE; our choice is 1 epoch, MUSE's forget-only setting.
    # micro_batch 4 is ours (memory only: the global batch fixes the optimisation).
    # Task Vector as MUSE ran it (baselines/scripts/unlearn_news.sh): the fine-tune on the forget
    # text is 10 epochs at lr 1e-5, the negated vector scaled by alpha 5. WHP's reinforced model
    # gets the same 10 epochs (ours: MUSE's scripts do not say how its WHP model was reinforced).
    method_defaults = {
        "*": {"train.lr": 1e-5, "train.schedule": "constant", "train.warmup_ratio": 0.0, "train.global_batch": 32,
              "train.micro_batch": 4, "train.max_length": 2048, "train.epochs": 1},
        "ga": {"train.epochs": 1},
        "graddiff": {"train.epochs": 7},
        "npo": {"train.epochs": 1},
        "task_vector": {"train.epochs": 10, "task_vector.alpha": 5.0},
        "whp": {"whp.reinforce_epochs": 10},
    }
    needs_prepared_target = True

    def __init__(self, config=None, data_dir=None, limit=None):
        super().__init__(config, data_dir, limit)
        self._hash = hashlib.sha256()
        self._read: list[str] = []
        self._forget_chunks: list[str] | None = None
        self._retain_chunks: list[str] | None = None
        self._memo: dict[str, Any] = {}
        c = self.config
        self.verbmem = self._cut(self._records("verbmem", "forget", ("prompt", "gt")))
        self.forget_qa = self._cut(self._records("knowmem", "forget_qa", ("question", "answer")))
        self.retain_qa = self._cut(self._records("knowmem", "retain_qa", ("question", "answer")))
        self.forget_icl = [(str(r["question"]), str(r["answer"]))
                           for r in self._records("knowmem", "forget_qa_icl", ("question", "answer"))]
        self.retain_icl = [(str(r["question"]), str(r["answer"]))
                           for r in self._records("knowmem", "retain_qa_icl", ("question", "answer"))]
        self.privleak_forget = self._cut(self._texts("privleak", "forget"))
        self.privleak_holdout = self._cut(self._texts("privleak", "holdout"))
        self.forget_articles, self.forget_desc = self._forget_corpus()
        self.forget_articles = self._cut(self.forget_articles)
        self.retain_articles, self.retain_desc, self.stand_in = self._retain_corpus()
        self.retain_articles = self._cut(self.retain_articles)
        self.fingerprint = self._hash.hexdigest()[:16]

    # --- reading -----------------------------------------------------------------------------
    @property
    def offline(self) -> bool:
        return self.data_dir is not None

    def _local(self, subset: str, split: str) -> Path:
        return Path(self.data_dir) / subset / f"{split}.json"

    def _note_file(self, label: str, data: bytes) -> None:
        self._hash.update(label.encode() + b"\0" + hashlib.sha256(data).digest())
        self._read.append(label)

    def _hub(self, subset: str, split: str) -> list[Any]:
        unreachable = hub_unreachable()
        if unreachable:
            raise HarnessError(
                f"benchmark 'muse-news' without --data-dir reads {HUB_ID} from the Hugging Face hub, but {unreachable}. "
                "Pass --data-dir with a local copy in the hub's layout, e.g. --data-dir ../shared/data/muse-news "
                "(README: Benchmarks)."
            )
        try:
            from datasets import load_dataset

            rows = [dict(r) for r in load_dataset(HUB_ID, subset, split=split)]
        except Exception as exc:  # noqa: BLE001 - any failure here means: no hub access
            raise HarnessError(
                f"could not load {HUB_ID} ({subset}, split {split}) from the Hugging Face hub: "
                f"{type(exc).__name__}: {exc}. Offline, pass --data-dir with a local copy in the hub's layout "
                f"({subset}/{split}.json, ...)."
            ) from None
        self._note_file(f"hub:{subset}/{split}", json.dumps(rows, sort_keys=True, ensure_ascii=False, default=str).encode())
        return rows

    def _records(self, subset: str, split: str, fields: Sequence[str]) -> list[dict[str, Any]]:
        if not self.offline:
            rows = self._hub(subset, split)
            require_fields(rows, fields, Path(f"{HUB_ID}/{subset}/{split}"))
            return rows
        path = self._local(subset, split)
        rows = read_records(path, array=True)   # MUSE's files are JSON arrays
        self._note_file(f"{subset}/{split}.json", path.read_bytes())
        require_fields(rows, fields, path)
        return rows

    def _texts(self, subset: str, split: str) -> list[str]:
        if not self.offline:
            return as_texts(self._hub(subset, split), Path(f"{HUB_ID}/{subset}/{split}"))
        path = self._local(subset, split)
        texts = read_texts(path, array=True)
        self._note_file(f"{subset}/{split}.json", path.read_bytes())
        return texts

    def _forget_corpus(self) -> tuple[list[str], str]:
        src = self.config.forget_source
        if src == "raw":
            return self._texts("raw", "forget"), "raw/forget"
        k = int(src[4:])
        if src.startswith("sust"):
            return self._texts("sust", f"forget_{k}"), f"sust/forget_{k}"
        if not self.offline or self._local("scal", f"forget_{k}").is_file():
            return self._texts("scal", f"forget_{k}"), f"scal/forget_{k}"
        texts = [t for fold in range(1, k + 1) for t in self._texts("sust", f"forget_{fold}")]
        return texts, f"scal/forget_{k} built as the concatenation of sust/forget_1..{k}"

    def _retain_corpus(self) -> tuple[list[str], str | None, str | None]:
        src = self.config.retain_source
        if src == "none":
            return [], None, None
        have_retain1 = not self.offline or self._local("raw", "retain1").is_file()
        if src == "retain1" or (src == "auto" and have_retain1):
            if not have_retain1:
                raise HarnessError(
                    f"benchmark.retain_source=retain1, but {self._local('raw', 'retain1')} does not exist (the shared "
                    "offline copy lacks raw/retain1). Use --set benchmark.retain_source=sust for the declared stand-in, "
                    "or none for forget-only methods."
                )
            return self._texts("raw", "retain1"), "raw/retain1", None
        folds = [f for f in SUST_FOLDS if f not in _fold_set(self.config.forget_source)]
        texts = [t for fold in folds for t in self._texts("sust", f"forget_{fold}")]
        cap = self.config.retain_max_articles
        if cap:
            texts = texts[:cap]
        names = ", ".join(str(f) for f in folds)
        if not texts:
            note = (f"no retain corpus: MUSE-News raw/retain1 is not used and forget_source={self.config.forget_source} "
                    "leaves no sustainability fold for a stand-in; methods that need retain data cannot run.")
            return [], None, note
        desc = f"sust/forget_{{{names}}}, first {len(texts)} articles before --limit"
        note = (
            f"retain corpus is a stand-in: MUSE-News raw/retain1 is not in the data used, so unlearning and model "
            f"preparation use articles of the sustainability folds {names}, taken in that order (other BBC articles "
            f"of the same period{f'; at most {cap}, the size of raw/retain1' if cap == RETAIN1_ARTICLES else ''}"
            f"{f'; at most {cap}' if cap and cap != RETAIN1_ARTICLES else ''}). They are not MUSE's retain split: "
            "the KnowMem r questions are about raw/retain2, which is in neither corpus."
        )
        return texts, desc, note

    # --- training data ------------------------------------------------------------------------
    def _chunks(self, articles: list[str]) -> list[str]:
        return chunk_by_words(articles, self.config.chunk_words) if articles else []

    def forget_train(self) -> list[Example]:
        if self._forget_chunks is None:
            self._forget_chunks = self._chunks(self.forget_articles)
        return [Example("", c, f"forget-chunk-{i}") for i, c in enumerate(self._forget_chunks)]

    def retain_train(self) -> list[Example] | None:
        if self._retain_chunks is None:
            self._retain_chunks = self._chunks(self.retain_articles)
        if not self._retain_chunks:
            return None
        return [Example("", c, f"retain-chunk-{i}") for i, c in enumerate(self._retain_chunks)]

    def data_info(self) -> dict[str, Any]:
        source = (f"local files under {self.data_dir} (layout of {HUB_ID})" if self.offline
                  else f"Hugging Face hub {HUB_ID}")
        return {
            "source": source,
            "stand_in": self.stand_in,
            "fingerprint": self.fingerprint,
            "config": asdict(self.config),
            "limit": self.limit,
            "files": list(self._read),
            "forget_corpus": self.forget_desc,
            "retain_corpus": self.retain_desc,
            "sizes": {
                "verbmem": len(self.verbmem), "knowmem_forget": len(self.forget_qa), "knowmem_retain": len(self.retain_qa),
                "icl_forget": len(self.forget_icl), "icl_retain": len(self.retain_icl),
                "privleak_forget": len(self.privleak_forget), "privleak_holdout": len(self.privleak_holdout),
                "forget_articles": len(self.forget_articles), "retain_articles": len(self.retain_articles),
            },
        }

    # --- forget subsets (relearning attack) -------------------------------------------------
    # A unit is one forget article. MUSE's evaluation items carry no article id, so an item is
    # assigned to every article it shares text with: VerbMem (prompt and gt) and PrivLeak texts to
    # the articles that contain any run of SHARED_WORDS consecutive words of theirs, KnowMem items to
    # the articles that contain their answer (case-insensitive). A subset keeps the items all of whose
    # articles are in it, so nothing a scored item asks for is stated in the other half's articles; an
    # item that shares no such run with any article (KnowMem answers absent from the text) is kept in
    # every subset, since no training article states it. Runs found in 1% of the articles or more are
    # page furniture ("This video can not be played To play this video you need to enable JavaScript
    # ...", in 210 of 889) and assign nothing. The BBC articles overlap (live pages, updated stories),
    # so most VerbMem and PrivLeak items span several articles: with the default 889 articles split in
    # two, a scored half keeps about 15 of the 100 VerbMem items, 6 to 10 of the 100 PrivLeak forget
    # texts (against all 100 holdout texts) and about 45 of the 100 KnowMem questions (measured on the
    # offline copy, seeds 0 and 1): relearning scores on MUSE-News rest on few items.
    SHARED_WORDS = 12

    def forget_units(self) -> list[str]:
        return [f"article-{i}" for i in range(len(self.forget_articles))]

    def _sources(self) -> dict[str, list[frozenset[str]]]:
        if "sources" in self._memo:   # shared with the subset copies (a shallow copy keeps the dict)
            return self._memo["sources"]
        n = self.SHARED_WORDS
        index: dict[tuple[str, ...], set[str]] = {}
        for j, article in enumerate(self.forget_articles):
            words = article.split()
            for i in range(max(1, len(words) - n + 1)):
                index.setdefault(tuple(words[i : i + n]), set()).add(f"article-{j}")
        lowered = [" ".join(a.split()).lower() for a in self.forget_articles]

        furniture = max(2, len(self.forget_articles) // 100)   # a run in >= 1% of articles is page furniture

        def by_text(text: str) -> frozenset[str]:
            words = text.split()
            found: set[str] = set()
            for i in range(max(1, len(words) - n + 1)):
                where = index.get(tuple(words[i : i + n]), set())
                if len(where) < furniture:
                    found |= where
            return frozenset(found)

        def by_answer(answer: str) -> frozenset[str]:
            flat = " ".join(str(answer).split()).lower()
            return frozenset(f"article-{j}" for j, a in enumerate(lowered) if flat and flat in a)

        self._memo["sources"] = {
            "verbmem": [by_text(r["prompt"]) | by_text(r["gt"]) for r in self.verbmem],
            "knowmem": [by_answer(r["answer"]) for r in self.forget_qa],
            "privleak": [by_text(t) for t in self.privleak_forget],
        }
        return self._memo["sources"]

    def _keep_forget(self, units) -> None:
        sources = self._sources()
        keep = lambda items, key: [x for x, src in zip(items, sources[key]) if src <= units]  # noqa: E731
        self.verbmem = keep(self.verbmem, "verbmem")
        self.forget_qa = keep(self.forget_qa, "knowmem")
        self.privleak_forget = keep(self.privleak_forget, "privleak")
        self.forget_articles = [a for i, a in enumerate(self.forget_articles) if f"article-{i}" in units]
        self._forget_chunks = None

    # --- evaluation ---------------------------------------------------------------------------
    def eval_plan(self) -> EvalPlan:
        c = self.config
        plan = EvalPlan()
        clean = c.clean_up_spaces
        plan.generations["verbmem_f"] = [GenerationRequest(r["prompt"], c.verbmem_tokens, clean_up_spaces=clean)
                                         for r in self.verbmem]
        plan.generations["knowmem_f"] = [
            GenerationRequest(knowmem_prompt(self.forget_icl, r["question"]), c.knowmem_tokens, KNOWMEM_STOPS, clean)
            for r in self.forget_qa
        ]
        plan.generations["knowmem_r"] = [
            GenerationRequest(knowmem_prompt(self.retain_icl, r["question"]), c.knowmem_tokens, KNOWMEM_STOPS, clean)
            for r in self.retain_qa
        ]
        # No EOS on any scored text: MUSE's metrics/privleak.py scores tokenizer.encode(text) (BOS, no EOS).
        if c.extraction_strength:
            plan.logprobs["verbmem_gt"] = [LogprobRequest(r["prompt"], r["gt"]) for r in self.verbmem]
        # PrivLeak texts whole, as MUSE scores them: up to the model's context, not eval.max_length.
        # Min-K%++ reads the full next-token distribution: these go to an engine that has it.
        gradnorm = c.mia_gradnorm
        plan.logprobs["privleak_forget"] = [LogprobRequest("", t, full_context=True, needs_distribution=True, grad_norm=gradnorm)
                                            for t in self.privleak_forget]
        plan.logprobs["privleak_holdout"] = [LogprobRequest("", t, full_context=True, needs_distribution=True, grad_norm=gradnorm)
                                             for t in self.privleak_holdout]
        attacks = ("privleak_min_k", "auc_loss", "auc_zlib", "auc_mink_pp", "auc_reference") + (("auc_gradnorm",) if gradnorm else ())
        plan.readers = {"verbmem_gt": ("es_f",), "privleak_forget": attacks, "privleak_holdout": attacks}
        return plan

    def score(self, outputs: PlanOutputs, reference: dict[str, Any] | None) -> Scores:
        g, lp, scores = outputs.generations, outputs.logprobs, Scores()
        agg, per = scores.aggregates, scores.per_sample

        # VerbMem f: ROUGE-L F1 (no stemmer) of the continuation vs gt, mean x 100.
        rows = [
            {"index": i, "prompt_end": r["prompt"][-120:], "reference": r["gt"], "generation": gen,
             "rouge_l_f1": rouge_l_f1(gen, r["gt"])}
            for i, (r, gen) in enumerate(zip(self.verbmem, g["verbmem_f"]))
        ]
        per["verbmem_f"] = rows
        scores.warnings += degenerate_generations("verbmem_f", [x["generation"] for x in rows])
        if rows:
            agg["verbmem_f"] = 100 * fmean(x["rouge_l_f1"] for x in rows)

        # KnowMem f / r: answers cut at MUSE's stops, ROUGE-L F1 vs the gold answer, mean x 100.
        for key, qa in (("knowmem_f", self.forget_qa), ("knowmem_r", self.retain_qa)):
            rows = []
            for i, (r, gen) in enumerate(zip(qa, g[key])):
                answer = cut_answer(gen)
                rows.append({"index": i, "question": r["question"], "reference": str(r["answer"]),
                             "generation": answer, "rouge_l_f1": rouge_l_f1(answer, str(r["answer"]))})
            per[key] = rows
            scores.warnings += degenerate_generations(key, [x["generation"] for x in rows])
            if rows:
                agg[key] = 100 * fmean(x["rouge_l_f1"] for x in rows)

        # Extraction strength on the verbmem gt (teacher forcing).
        if "verbmem_gt" in lp:
            rows = [{"index": i, "tokens": len(s.greedy_match),
                     "extraction_strength": extraction_strength(s.greedy_match) if s.greedy_match else None}
                    for i, s in enumerate(lp["verbmem_gt"])]
            per["es_f"] = rows
            values = [x["extraction_strength"] for x in rows if x["extraction_strength"] is not None]
            if values:
                agg["es_f"] = fmean(values)
            elif rows:
                scores.missing["es_f"] = (
                    "every verbmem gt was truncated away: the prompt alone fills eval.max_length tokens; raise "
                    "eval.max_length (MUSE's prompts are ~1024 Llama tokens plus ~128 for gt)."
                )

        # Membership inference: Min-K% (PrivLeak), LOSS, ZLib, Min-K%++, Reference, GradNorm; MUSE AUC convention.
        k = self.config.min_k
        mia: dict[str, dict[str, list[float]]] = {}
        rows = []
        # Reference attack: each text's mean NLL minus the retain model's (its record offers them).
        ref_losses = (reference or {}).get("mia_losses")
        for group, texts in (("forget", self.privleak_forget), ("holdout", self.privleak_holdout)):
            cols = mia[group] = {"min_k": [], "loss": [], "zlib": [], "min_k_pp": [], "reference": [], "gradnorm": []}
            losses: list[float | None] = []
            for i, (text, s) in enumerate(zip(texts, lp[f"privleak_{group}"])):
                losses.append(loss_score(s.logprobs) if s.logprobs else None)
                if not s.logprobs:
                    continue
                vals = {
                    "min_k": min_k_score(s.logprobs, k),
                    "loss": losses[-1],
                    "zlib": zlib_score(s.logprobs, text),
                    "min_k_pp": min_k_plus_plus_score(s.logprobs, s.mu, s.sigma, k),
                }
                ref_loss = ref_losses[group][i] if ref_losses and i < len(ref_losses[group]) else None
                if ref_loss is not None:
                    vals["reference"] = losses[-1] - ref_loss   # = reference_score(own, reference log-probs)
                if s.grad_norm is not None:
                    vals["gradnorm"] = gradnorm_score(s.grad_norm)
                for name, v in vals.items():
                    cols[name].append(v)
                rows.append({"set": group, "index": i, "tokens": len(s.logprobs), **vals})
            scores.reference_values.setdefault("mia_losses", {})[group] = losses
        per["mia"] = rows
        if mia["forget"]["min_k"] and mia["holdout"]["min_k"]:
            for name, key in (("min_k", "auc_min_k"), ("loss", "auc_loss"), ("zlib", "auc_zlib"),
                              ("min_k_pp", "auc_mink_pp"), ("reference", "auc_reference"), ("gradnorm", "auc_gradnorm")):
                if name in ("reference", "gradnorm") and not (
                        len(mia["forget"][name]) == len(mia["forget"]["loss"]) and
                        len(mia["holdout"][name]) == len(mia["holdout"]["loss"])):
                    if name == "reference" and reference is not None:
                        scores.missing["auc_reference"] = (
                            "needs the retain model's per-text losses on the same PrivLeak texts (evaluate with a retain model)")
                    continue
                agg[key] = muse_auc(mia["forget"][name], mia["holdout"][name])
            scores.reference_values["auc"] = agg["auc_min_k"]
            self._privleak(scores, reference or {})
        else:
            scores.missing["privleak"] = "no privleak forget or holdout texts were scored."
        return scores

    def _privleak(self, scores: Scores, reference: dict[str, Any]) -> None:
        agg = scores.aggregates
        ref_auc = reference.get("auc")
        if self.config.privleak_reference == "evaluated" and ref_auc:
            used, source = float(ref_auc), "evaluated retain model (Min-K% AUC on the same texts)"
        else:
            used = MUSE_NEWS_RETRAIN_AUC
            if self.config.privleak_reference == "published":
                source = "published MUSE-News retrain AUC (benchmark.privleak_reference=published)"
            elif ref_auc is None:
                source = "published MUSE-News retrain AUC (no evaluated retain model in this run)"
            else:
                source = f"published MUSE-News retrain AUC (the evaluated retain model's AUC {ref_auc!r} is unusable)"
        agg["privleak"] = privleak(agg["auc_min_k"], used)
        agg["privleak_reference_auc"] = used
        scores.per_sample["privleak"] = [
            {"auc": agg["auc_min_k"], "reference_auc": used, "reference": source, "privleak": agg["privleak"]}
        ]
