"""`harry-potter` (copyrighted books, user-supplied) and `books-pd` (its public-domain stand-in).

The Harry Potter evaluation as FLAT (Wang et al. 2025) and SGA (Zheng et al. 2025) use it, after
SOUL: passages of the books, a prompt made of each passage's first ``prompt_words`` words
(200; SOUL also uses 100 and 300), greedy completion, and BLEU and ROUGE-L recall of the
completion against the rest of the passage; utility is perplexity on Wikitext and zero-shot
accuracy (reference.md section 2, "Harry Potter").

The harness never ships the books. ``harry-potter`` reads user-supplied files from ``--data-dir``:

- ``passages.jsonl`` or ``passages.json``: one passage per record, ``{"text": "..."}`` objects or
  plain JSON strings, as JSON Lines or one JSON array; or ``passages.txt``: plain UTF-8 text whose
  passages are separated by one or more blank lines. The first file found in that order is used.
  Evaluation prompts are the first ``prompt_words`` words of each passage (inner whitespace and
  line breaks kept, as in the text), the reference is the rest of the passage, at most
  ``reference_words`` words (0 = all of it). A passage of ``prompt_words`` words or fewer has no
  reference: it is still trained on, but not evaluated (``data_info()["sizes"]["too_short"]``).
- ``prompts.jsonl`` or ``prompts.json``: ready-made pairs ``{"prompt": "...", "completion": "..."}``
  (``"response"`` is accepted instead of ``"completion"``: it is the field name of the SOUL/FLAT
  files ``hp_{train,test}_qa_{k}.jsonl``). When present, these pairs are the evaluation set, used
  as given (``prompt_words`` does not apply; ``reference_words`` still caps the reference).
  Without a passages file, each pair's prompt + completion is also a forget passage.
- at least one of the two above is required; optional beside them:
  ``retain.{jsonl,json,txt}`` (retain corpus, same formats as passages; without it
  ``retain_train()`` is None and methods that need retain data are refused),
  ``holdout.{jsonl,json,txt}`` (passages never trained on: non-members for a Min-K% PrivLeak with
  the forget passages as members) and ``wikitext.txt`` (plain text for the perplexity utility, e.g.
  the wikitext-2-raw-v1 test split; another file via ``--set benchmark.ppl_file=PATH``, relative
  paths looked up in ``--data-dir`` first).

Metrics:

- BLEU f (0-100): for each passage ``sacrebleu.corpus_bleu([completion], [[reference]]).score``,
  mean over passages. This is what the FLAT/SOUL official copyright evaluation computes per
  passage; ``sentence_bleu`` would differ (it uses sacrebleu's "effective order", which gives
  short texts without 4-gram matches a non-zero score), so it is not used. The corpus BLEU of all
  completions against all references is recorded too (``bleu_corpus``, not a column).
- ROUGE-L f: ROUGE-L recall (``rouge_score``, stemmer on) of the completion vs the reference, mean.
- Perplexity (utility): the perplexity file cut into pieces of ``ppl_chunk_words`` words, each
  scored with teacher forcing from BOS (``LogprobRequest("", piece)``); ``perplexity = exp(total
  NLL / total tokens)`` over all pieces. ``word_perplexity = exp(total NLL / total words)`` is
  recorded too: lm-evaluation-harness's ``wikitext`` task (what FLAT ran) reports word perplexity
  over whole documents with rolling windows, so neither number is directly comparable to the
  papers' tables. Without a perplexity file, ``missing["perplexity"]`` names the file to supply.
- Zero-shot accuracy (boolq, rte, hellaswag, winogrande, arc_challenge, arc_easy, openbookqa, piqa,
  truthfulqa) is not computed here: it needs lm-evaluation-harness and its task data;
  ``missing["zero_shot"]`` says how to run it on a saved model.
- PrivLeak (only with holdout passages): Min-K% Prob (k = ``min_k``) of forget vs holdout passages,
  AUC in MUSE's convention, against the retain model's AUC (reference.md section 2, MUSE).

Generation: greedy, ``completion_tokens`` new tokens (default 200), stopping early only at EOS.
The official FLAT/SOUL code generates up to 600 tokens in total (prompt included, so about 300 new
tokens after a 200-word prompt) and drops the first generated token before scoring; neither
quirk is reproduced. Their prompts are wrapped as ``"### Question: {prompt}\\n"`` (OPT) or
``"[INST] {prompt} [/INST]"`` (Llama-2); ``prompt_template`` (default ``"{prompt}"``: a plain
continuation) reproduces that, a literal ``\\n`` in the template meaning a newline.

Training data: the forget passages cut into pieces of at most ``chunk_words`` words, each an
``Example("", piece)`` (loss on the whole text), never crossing passages; ``train_on=pairs``
trains on the evaluation pairs instead, ``Example(template(prompt), continuation)``, as FLAT's
official code trains on ``hp_qa.jsonl`` prompt/response pairs. Retain passages are chunked alike.

Privacy of results: per-passage rows hold scores and lengths only, no text, unless
``store_text=true`` (the books are copyrighted; records get shared).

``books-pd`` is the same adapter on public-domain text (``tinyshakespeare.txt``): the text is split
at blank lines into speeches, consecutive speeches are merged until a passage holds at least
``prompt_words + reference_words`` words; forget = the first ``num_forget`` passages, retain = the
next ``num_retain``, holdout = the next ``num_holdout`` (Min-K% PrivLeak), and, when no
``wikitext.txt`` is in the data folder, the next ``ppl_passages`` passages are the perplexity
text (held-out Shakespeare, declared). Defaults are ours, smaller for CPU: 50-word prompts,
50-word references, 64 new tokens. It is a stand-in, not the published benchmark, and says so.

Models: no published small target exists, so ``run`` prepares a target (forget + retain) and a
retain model (retain only). ``harry-potter`` without a retain file cannot prepare a retain model:
pass ``--target`` (a model fine-tuned on the books, as FLAT/SOUL use) and optionally ``--retain``.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean
from typing import Any, Sequence

from harness.data.batching import Example
from harness.benchmarks.base import Benchmark, Scores
from harness.benchmarks.muse_news import chunk_by_words
from harness.data.files import read_records, read_texts
from harness.engines.base import GenerationRequest, LogprobRequest
from harness.errors import HarnessError
from harness.engines.plan import EvalPlan, PlanOutputs
from harness.leaderboard.columns import Column
from harness.registry import metric, register_benchmark
from harness.scoring.privacy import min_k_score, muse_auc, privleak
from harness.scoring.text import rouge_l_recall

PASSAGE_FILES = ("passages.jsonl", "passages.json", "passages.txt")
PROMPT_FILES = ("prompts.jsonl", "prompts.json")
RETAIN_FILES = ("retain.jsonl", "retain.json", "retain.txt")
HOLDOUT_FILES = ("holdout.jsonl", "holdout.json", "holdout.txt")
PPL_FILE = "wikitext.txt"
COMPLETION_FIELDS = ("completion", "response")
TRAIN_ON = ("chunks", "pairs")
ZERO_SHOT_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_challenge", "arc_easy", "openbookqa", "piqa",
                   "truthfulqa")
ZERO_SHOT_MISSING = (
    "mean zero-shot accuracy needs lm-evaluation-harness (pip install lm-eval) and its task data offline, so it is "
    "not run here; on the saved model: lm_eval --model hf --model_args pretrained=MODEL_PATH --tasks "
    + ",".join(ZERO_SHOT_TASKS) + " --batch_size 8, then average acc over the tasks (FLAT skips truthfulqa_gen)."
)
BOOKS_PD_STAND_IN = "public-domain stand-in for the Harry Potter books; not the published benchmark"


def files_help(data_dir: Any) -> str:
    """What ``harry-potter`` needs in its data folder (used in every missing-data error)."""
    where = f"--data-dir (now {data_dir})" if data_dir is not None else "a folder passed as --data-dir"
    return (
        f"benchmark 'harry-potter' reads user-supplied text (the harness never ships the Harry Potter books). "
        f"Put in {where} either passages.jsonl or passages.json (one passage per record: {{\"text\": \"...\"}} "
        "objects or JSON strings, JSON Lines or one JSON array) or passages.txt (plain UTF-8 text, passages "
        "separated by blank lines), and/or prompts.jsonl or prompts.json (ready-made pairs "
        "{\"prompt\": \"...\", \"completion\": \"...\"}; \"response\" is accepted for \"completion\"). Optional: "
        "retain.jsonl/.json/.txt (retain corpus, needed by methods that use retain data), holdout.jsonl/.json/.txt "
        "(non-member passages for PrivLeak), wikitext.txt (perplexity text; or --set benchmark.ppl_file=PATH)."
    )


# --- pure helpers (public: tested on fixed strings) ----------------------------------------------
def first_words(text: str, n: int) -> str:
    """The first ``n`` words of ``text`` (0 = all), with the whitespace between them kept, ends trimmed."""
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    if not spans:
        return ""
    last = spans[min(n, len(spans)) - 1] if n else spans[-1]
    return text[spans[0][0] : last[1]]


def split_prompt(text: str, prompt_words: int, reference_words: int = 0) -> tuple[str, str, str] | None:
    """``(prompt, continuation, reference)`` of a passage, or None if it has no word after the prompt.

    prompt = the first ``prompt_words`` words (inner whitespace kept); continuation = everything
    after them, starting with the whitespace that followed (what training on pairs uses);
    reference = the continuation's first ``reference_words`` words (0 = all), trimmed.
    """
    if prompt_words < 1:
        raise ValueError(f"prompt_words must be at least 1, got {prompt_words}")
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    if len(spans) <= prompt_words:
        return None
    cut = spans[prompt_words - 1][1]
    continuation = text[cut:].rstrip()
    return text[spans[0][0] : cut], continuation, first_words(continuation, reference_words)


def split_blank_lines(text: str) -> list[str]:
    """Passages of a plain text: blocks separated by one or more blank lines, trimmed, empty ones dropped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [block.strip() for block in re.split(r"\n[ \t]*\n", text) if block.strip()]


def merge_blocks(blocks: Sequence[str], min_words: int, joiner: str = "\n\n") -> list[str]:
    """Merge consecutive blocks until each passage has at least ``min_words`` words; a short tail is dropped."""
    passages, current, words = [], [], 0
    for block in blocks:
        current.append(block)
        words += len(block.split())
        if words >= min_words:
            passages.append(joiner.join(current))
            current, words = [], 0
    return passages


def join_pair(prompt: str, completion: str) -> str:
    """A prompt/completion pair as one passage: a space between them unless either side has whitespace."""
    if not prompt or not completion or prompt[-1].isspace() or completion[0].isspace():
        return prompt + completion
    return prompt + " " + completion


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:
        raise HarnessError(
            "BLEU needs the sacrebleu package, which is not installed: pip install sacrebleu"
        ) from None
    return sacrebleu


@metric(
    "passage_bleu",
    "verbatim",
    "BLEU (sacrebleu, 0-100) of one completion vs its reference: corpus_bleu([completion], [[reference]]) "
    "(FLAT/SOUL Harry Potter evaluation, averaged over passages).",
)
def passage_bleu(prediction: str, reference: str) -> float:
    """sacrebleu corpus BLEU of a one-segment corpus (default 13a tokenisation, exp smoothing), 0-100."""
    return float(_sacrebleu().corpus_bleu([prediction], [[reference]]).score)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu corpus BLEU of all predictions against their references (one reference each), 0-100."""
    return float(_sacrebleu().corpus_bleu(list(predictions), [list(references)]).score)


@metric(
    "token_perplexity",
    "utility",
    "Perplexity exp(total NLL / total tokens) over teacher-forced texts (Harry Potter utility on Wikitext).",
)
def token_perplexity(logprob_lists: Sequence[Sequence[float]]) -> float:
    """``exp(-sum of all token log-probs / number of tokens)`` pooled over texts (not a mean of per-text values)."""
    tokens = sum(len(lps) for lps in logprob_lists)
    if tokens == 0:
        raise ValueError("perplexity needs at least one scored token")
    return math.exp(-sum(sum(lps) for lps in logprob_lists) / tokens)


# --- configuration ---------------------------------------------------------------------------------
@dataclass
class HarryPotterConfig:
    prompt_words: int = 200         # FLAT/SGA/SOUL: 200 (SOUL also 100 and 300)
    reference_words: int = 0        # words of the reference after the prompt (0 = the rest of the passage)
    completion_tokens: int = 200    # greedy new tokens (official code: up to 600 tokens incl. the prompt)
    prompt_template: str = "{prompt}"   # e.g. "### Question: {prompt}\n" (SOUL/FLAT, OPT) or "[INST] {prompt} [/INST]"
    train_on: str = "chunks"        # chunks (passages cut by chunk_words) | pairs (template(prompt) -> continuation)
    chunk_words: int = 512          # words per training piece (~700 Llama-2 tokens)
    ppl_file: str = ""              # perplexity text; "" = wikitext.txt in --data-dir if present
    ppl_chunk_words: int = 256      # words per teacher-forced perplexity piece (~350 Llama-2 tokens)
    ppl_max_chunks: int = 0         # cap on perplexity pieces (0 = all)
    min_k: float = 0.4              # Min-K% fraction for PrivLeak (only with holdout passages)
    store_text: bool = False        # keep prompt/reference/completion text in per-sample rows

    def __post_init__(self):
        for key in ("prompt_words", "completion_tokens", "chunk_words", "ppl_chunk_words"):
            if getattr(self, key) < 1:
                raise HarnessError(f"benchmark.{key} must be at least 1, got {getattr(self, key)}.")
        for key in ("reference_words", "ppl_max_chunks"):
            if getattr(self, key) < 0:
                raise HarnessError(f"benchmark.{key} must be 0 (no cap) or more, got {getattr(self, key)}.")
        if self.train_on not in TRAIN_ON:
            raise HarnessError(f"benchmark.train_on must be one of {', '.join(TRAIN_ON)}, got '{self.train_on}'.")
        if "{prompt}" not in self.prompt_template:
            raise HarnessError(
                f"benchmark.prompt_template must contain {{prompt}}, got '{self.prompt_template}'."
            )
        if not 0.0 < self.min_k <= 1.0:
            raise HarnessError(f"benchmark.min_k must be a fraction in (0, 1], got {self.min_k}.")


@dataclass
class BooksPDConfig(HarryPotterConfig):
    text_file: str = "tinyshakespeare.txt"   # in --data-dir (default $HARNESS_DATA_ROOT/public-domain)
    prompt_words: int = 50          # ours (CPU); the published protocol uses 200
    reference_words: int = 50       # ours; passages are merged to >= prompt_words + reference_words words
    completion_tokens: int = 64     # ours; about 50 words of English with a BPE tokenizer
    chunk_words: int = 256
    num_forget: int = 32
    num_retain: int = 32
    num_holdout: int = 32
    ppl_passages: int = 16          # held-out passages for perplexity when no wikitext.txt (0 = none)
    store_text: bool = True         # public-domain text: keeping it in records is fine

    def __post_init__(self):
        super().__post_init__()
        if self.reference_words < 1:
            raise HarnessError("benchmark.reference_words must be at least 1 for books-pd (passages are sized by it).")
        if self.num_forget < 1:
            raise HarnessError(f"benchmark.num_forget must be at least 1, got {self.num_forget}.")
        for key in ("num_retain", "num_holdout", "ppl_passages"):
            if getattr(self, key) < 0:
                raise HarnessError(f"benchmark.{key} must be 0 or more, got {getattr(self, key)}.")


@dataclass(frozen=True)
class EvalItem:
    id: str
    prompt: str          # before the template
    continuation: str    # what followed the prompt (training pairs)
    reference: str       # what the completion is scored against


# --- the shared adapter ----------------------------------------------------------------------------
class _BookBenchmark(Benchmark):
    """Shared logic; subclasses fill the splits in ``_load``."""

    columns = [
        Column("bleu", "BLEU", "down", "verbatim", digits=2),
        Column("rouge_l", "ROUGE-L", "down", "verbatim", digits=3),
        Column("perplexity", "Perplexity", "down", "utility", digits=2),
    ]

    def __init__(self, config=None, data_dir=None, limit=None):
        super().__init__(config, data_dir, limit)
        self._hash = hashlib.sha256()
        self._files: list[str] = []
        self.forget_passages: list[str] = []
        self.items: list[EvalItem] = []
        self.retain_passages: list[str] = []
        self.holdout_passages: list[str] = []
        self.ppl_text: str | None = None
        self.ppl_desc: str | None = None
        self.ppl_missing: str | None = None
        self.too_short = 0
        self.source = ""
        self.stand_in: str | None = None
        self._load()
        self.items = self._cut(self.items)
        self.forget_passages = self._cut(self.forget_passages)
        self.retain_passages = self._cut(self.retain_passages)
        self.holdout_passages = self._cut(self.holdout_passages)
        c = self.config
        chunks = chunk_by_words([self.ppl_text], c.ppl_chunk_words) if self.ppl_text and self.ppl_text.strip() else []
        if c.ppl_max_chunks:
            chunks = chunks[: c.ppl_max_chunks]
        self.ppl_chunks = self._cut(chunks)
        if self.ppl_text is not None and not self.ppl_chunks:
            self.ppl_missing = f"the perplexity text ({self.ppl_desc}) holds no words."
        self.fingerprint = self._hash.hexdigest()[:16]

    def _load(self) -> None:
        raise NotImplementedError

    # --- reading --------------------------------------------------------------------------------
    def _note(self, path: Path, data: bytes) -> None:
        # The name, not the folder, enters the fingerprint: the same files elsewhere are the same data.
        self._hash.update(path.name.encode() + b"\0" + hashlib.sha256(data).digest())
        self._files.append(str(path))

    def _read_text(self, path: Path) -> str:
        try:
            data = path.read_bytes()
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise HarnessError(f"data file {path} cannot be read as UTF-8 text: {exc}.") from None
        self._note(path, data)
        return text

    def read_passages(self, path: Path) -> list[str]:
        """Passages of a .txt (blank-line separated) or .json/.jsonl file (strings or {"text": ...})."""
        path = Path(path)
        if path.suffix == ".txt":
            return split_blank_lines(self._read_text(path))
        texts = read_texts(path)
        self._note(path, path.read_bytes())
        return [t for t in texts if t.strip()]

    def read_pairs(self, path: Path) -> list[tuple[str, str]]:
        records = read_records(path)
        self._note(path, path.read_bytes())
        pairs = []
        for number, r in enumerate(records, start=1):
            completion = next((r[f] for f in COMPLETION_FIELDS if f in r), None)
            if "prompt" not in r or completion is None:
                raise HarnessError(
                    f"{path}, record {number}: every record needs a \"prompt\" and a \"completion\" (or \"response\") "
                    f"field; this one has {', '.join(sorted(r)) or 'none'}."
                )
            if not isinstance(r["prompt"], str) or not isinstance(completion, str):
                raise HarnessError(f"{path}, record {number}: \"prompt\" and \"completion\" must be strings.")
            pairs.append((r["prompt"], completion))
        return pairs

    def _items_from_passages(self, passages: Sequence[str], prefix: str) -> list[EvalItem]:
        c, items = self.config, []
        for i, text in enumerate(passages):
            split = split_prompt(text, c.prompt_words, c.reference_words)
            if split is None:
                self.too_short += 1
                continue
            items.append(EvalItem(f"{prefix}-{i}", *split))
        return items

    def _items_from_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[EvalItem]:
        c, items = self.config, []
        for i, (p, comp) in enumerate(pairs):
            if not comp.strip():
                self.too_short += 1   # nothing to score against
                continue
            items.append(EvalItem(f"prompt-{i}", p, comp, first_words(comp, c.reference_words)))
        return items

    def _ppl_from_file(self, default_dir: Path | None) -> None:
        """Perplexity text from ``ppl_file`` (an error if named but absent) or ``wikitext.txt`` if present."""
        name = self.config.ppl_file
        if name:
            path = Path(name)
            if not path.is_absolute() and default_dir is not None and (default_dir / path).is_file():
                path = default_dir / path
            if not path.is_file():
                raise HarnessError(
                    f"benchmark.ppl_file={name}: no such file (looked in {default_dir or '.'} and the current folder)."
                )
        elif default_dir is not None and (default_dir / PPL_FILE).is_file():
            path = default_dir / PPL_FILE
        else:
            return
        self.ppl_text, self.ppl_desc = self._read_text(path), str(path)

    # --- training data ---------------------------------------------------------------------------
    def _chunks(self, passages: Sequence[str], prefix: str) -> list[Example]:
        n = self.config.chunk_words
        return [Example("", piece, f"{prefix}-{i}-{j}")
                for i, p in enumerate(passages) for j, piece in enumerate(chunk_by_words([p], n))]

    def _template(self, prompt: str) -> str:
        return self.config.prompt_template.replace("\\n", "\n").replace("{prompt}", prompt)

    def forget_train(self) -> list[Example]:
        if self.config.train_on == "pairs":
            return [Example(self._template(it.prompt), it.continuation, it.id) for it in self.items]
        return self._chunks(self.forget_passages, "forget")

    def retain_train(self) -> list[Example] | None:
        return self._chunks(self.retain_passages, "retain") or None

    def data_info(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "stand_in": self.stand_in,
            "fingerprint": self.fingerprint,
            "config": asdict(self.config),
            "limit": self.limit,
            "files": list(self._files),
            "perplexity_text": self.ppl_desc,
            "sizes": {
                "eval_prompts": len(self.items), "too_short": self.too_short,
                "forget_passages": len(self.forget_passages), "retain_passages": len(self.retain_passages),
                "holdout_passages": len(self.holdout_passages), "ppl_chunks": len(self.ppl_chunks),
            },
        }

    # --- evaluation ------------------------------------------------------------------------------
    def eval_plan(self) -> EvalPlan:
        plan = EvalPlan()
        n = self.config.completion_tokens
        plan.generations["completion"] = [GenerationRequest(self._template(it.prompt), n) for it in self.items]
        if self.ppl_chunks:
            plan.logprobs["ppl"] = [LogprobRequest("", t) for t in self.ppl_chunks]
        if self.holdout_passages and self.forget_passages:
            plan.logprobs["mia_forget"] = [LogprobRequest("", t) for t in self.forget_passages]
            plan.logprobs["mia_holdout"] = [LogprobRequest("", t) for t in self.holdout_passages]
        return plan

    def score(self, outputs: PlanOutputs, reference: dict[str, Any] | None) -> Scores:
        g, lp, scores = outputs.generations, outputs.logprobs, Scores()
        agg, per = scores.aggregates, scores.per_sample

        # Verbatim: BLEU and ROUGE-L recall of each completion vs its reference.
        rows, gens = [], g.get("completion", [])
        for it, gen in zip(self.items, gens):
            row = {"id": it.id, "bleu": passage_bleu(gen, it.reference),
                   "rouge_l_recall": rouge_l_recall(gen, it.reference),
                   "prompt_words": len(it.prompt.split()), "reference_words": len(it.reference.split()),
                   "completion_words": len(gen.split())}
            if self.config.store_text:
                row.update({"prompt_end": it.prompt[-200:], "reference": it.reference, "completion": gen})
            rows.append(row)
        per["completions"] = rows
        if rows:
            agg["bleu"] = fmean(r["bleu"] for r in rows)
            agg["rouge_l"] = fmean(r["rouge_l_recall"] for r in rows)
            agg["bleu_corpus"] = corpus_bleu(gens, [it.reference for it in self.items])
        else:
            scores.missing["bleu"] = scores.missing["rouge_l"] = "no evaluation prompts (every passage was too short)."

        # Utility: perplexity of the perplexity text, pooled over its pieces.
        pieces = [(t, s.logprobs) for t, s in zip(self.ppl_chunks, lp.get("ppl", [])) if s.logprobs]
        if pieces:
            nll = -sum(sum(lps) for _, lps in pieces)
            agg["perplexity"] = token_perplexity([lps for _, lps in pieces])
            agg["word_perplexity"] = math.exp(nll / sum(len(t.split()) for t, _ in pieces))
            agg["ppl_tokens"] = float(sum(len(lps) for _, lps in pieces))
            per["perplexity"] = [{"index": i, "tokens": len(lps), "words": len(t.split()), "nll": -sum(lps)}
                                 for i, (t, lps) in enumerate(pieces)]
        else:
            scores.missing["perplexity"] = self.ppl_missing or "no perplexity piece was scored."
        scores.missing["zero_shot"] = ZERO_SHOT_MISSING

        # Privacy: Min-K% AUC of forget (members) vs holdout (non-members), MUSE convention, then PrivLeak.
        if "mia_forget" in lp and "mia_holdout" in lp:
            k = self.config.min_k
            member = [min_k_score(s.logprobs, k) for s in lp["mia_forget"] if s.logprobs]
            nonmember = [min_k_score(s.logprobs, k) for s in lp["mia_holdout"] if s.logprobs]
            per["mia"] = ([{"set": "forget", "min_k": v} for v in member]
                          + [{"set": "holdout", "min_k": v} for v in nonmember])
            if member and nonmember:
                agg["auc_min_k"] = muse_auc(member, nonmember)
                scores.reference_values["auc"] = agg["auc_min_k"]
                ref_auc = (reference or {}).get("auc")
                if ref_auc:
                    agg["privleak"] = privleak(agg["auc_min_k"], ref_auc)
                else:
                    scores.missing["privleak"] = (
                        "needs the retain model's Min-K% AUC on the same texts: evaluate a retain model "
                        "(run prepares one, or pass --retain PATH)."
                    )
        return scores


# --- harry-potter ----------------------------------------------------------------------------------
@register_benchmark()
class HarryPotter(_BookBenchmark):
    name = "harry-potter"
    description = ("Harry Potter books as FLAT/SGA use them (user-supplied text): BLEU and ROUGE-L recall of "
                   "greedy completions of 200-word prompts; perplexity utility")
    Config = HarryPotterConfig
    # Ours, not from a paper (the papers' target models were fine-tuned elsewhere): for preparing a
    # target on the user's passages. Pass --target to use an existing fine-tuned model instead.
    finetune_defaults = {
        "lr": 2e-5, "epochs": 3, "global_batch": 32, "micro_batch": 4, "warmup_ratio": 0.1,
        "schedule": "linear", "max_length": 1024,
    }
    # From the FLAT official code for Harry Potter (reference.md section 4): lr 2e-7, 5 epochs,
    # effective batch 32, linear schedule with warm-up (paged AdamW there, AdamW here). The length
    # of FLAT's warm-up is not confirmed: one epoch of five (0.2) is ours, after the TOFU convention.
    # micro_batch 4 (memory only) and max_length 1024 (FLAT pads HP examples to 1024 tokens) are ours.
    method_defaults = {
        "*": {"train.lr": 2e-7, "train.epochs": 5, "train.global_batch": 32, "train.micro_batch": 4,
              "train.schedule": "linear", "train.warmup_ratio": 0.2, "train.max_length": 1024},
    }
    needs_prepared_target = True

    def _load(self) -> None:
        if self.data_dir is None:
            raise HarnessError(files_help(None))
        root = Path(self.data_dir)
        if not root.is_dir():
            raise HarnessError(f"data directory {root} does not exist. " + files_help(root))
        found = lambda names: next((root / n for n in names if (root / n).is_file()), None)  # noqa: E731
        passages_path, prompts_path = found(PASSAGE_FILES), found(PROMPT_FILES)
        if passages_path is None and prompts_path is None:
            raise HarnessError(f"no passages or prompts file in {root}. " + files_help(root))
        self.source = f"user-supplied files under {root}"
        pairs = self.read_pairs(prompts_path) if prompts_path else []
        if passages_path is not None:
            self.forget_passages = self.read_passages(passages_path)
            if not self.forget_passages:
                raise HarnessError(f"{passages_path} holds no passage. " + files_help(root))
        else:
            self.forget_passages = [join_pair(p, comp) for p, comp in pairs]
        if prompts_path is not None:
            self.items = self._items_from_pairs(pairs)
        else:
            self.items = self._items_from_passages(self.forget_passages, "passage")
        if not self.items:
            what = prompts_path or f"{passages_path} (every passage has <= {self.config.prompt_words} words)"
            raise HarnessError(f"no evaluation prompt could be made from {what}. " + files_help(root))
        retain_path, holdout_path = found(RETAIN_FILES), found(HOLDOUT_FILES)
        self.retain_passages = self.read_passages(retain_path) if retain_path else []
        self.holdout_passages = self.read_passages(holdout_path) if holdout_path else []
        self._ppl_from_file(root)
        if self.ppl_text is None:
            self.ppl_missing = (
                f"no perplexity text: put a plain-text Wikitext file at {root / PPL_FILE} (e.g. the wikitext-2-raw-v1 "
                "test split as UTF-8 text) or pass --set benchmark.ppl_file=PATH."
            )


# --- books-pd --------------------------------------------------------------------------------------
@register_benchmark()
class BooksPD(_BookBenchmark):
    name = "books-pd"
    description = ("Public-domain stand-in for the Harry Potter benchmark (tinyshakespeare): BLEU/ROUGE-L of "
                   "completions, perplexity, Min-K% PrivLeak")
    Config = BooksPDConfig
    columns = _BookBenchmark.columns + [Column("privleak", "PrivLeak", "ref", "privacy", target=0.0, digits=1)]
    # Ours, not from a paper: small CPU settings (SmolLM2-135M class) like the synthetic benchmark's,
    # meant for the target to memorise the forget passages; not tuned on the real model here.
    finetune_defaults = {"lr": 4e-4, "epochs": 6, "global_batch": 8, "micro_batch": 8, "warmup_ratio": 0.1,
                         "max_length": 512}
    method_defaults = {
        "*": {"train.lr": 1e-4, "train.epochs": 2, "train.global_batch": 8, "train.micro_batch": 8,
              "train.max_length": 512},
    }
    needs_prepared_target = True

    def _folder(self) -> Path:
        if self.data_dir is not None:
            return Path(self.data_dir)
        root = os.environ.get("HARNESS_DATA_ROOT")
        if root and (Path(root) / "public-domain").is_dir():
            return Path(root) / "public-domain"
        raise HarnessError(
            "benchmark 'books-pd' needs its public-domain text file: pass --data-dir ../shared/data/public-domain "
            f"(the folder holding {self.config.text_file}), or set HARNESS_DATA_ROOT to the folder that holds "
            "public-domain/."
        )

    def _load(self) -> None:
        c = self.config
        folder = self._folder()
        path = folder / c.text_file
        if not path.is_file():
            raise HarnessError(
                f"benchmark 'books-pd': {path} does not exist; pass --data-dir ../shared/data/public-domain (the folder "
                f"holding {c.text_file}) or name another plain-text file with --set benchmark.text_file=NAME."
            )
        min_words = c.prompt_words + c.reference_words
        passages = merge_blocks(split_blank_lines(self._read_text(path)), min_words)
        counts = (c.num_forget, c.num_retain, c.num_holdout)
        self._ppl_from_file(folder)
        own_ppl = c.ppl_passages if self.ppl_text is None else 0
        need = sum(counts) + own_ppl
        if len(passages) < need:
            raise HarnessError(
                f"benchmark 'books-pd': {path} gives {len(passages)} passages of >= {min_words} words, but num_forget + "
                f"num_retain + num_holdout + ppl_passages = {need}; lower them."
            )
        a, b, h = c.num_forget, c.num_forget + c.num_retain, sum(counts)
        self.forget_passages, self.retain_passages, self.holdout_passages = passages[:a], passages[a:b], passages[b:h]
        self.items = self._items_from_passages(self.forget_passages, "forget")
        self.source = f"{path} (public domain)"
        ppl_note = ""
        if self.ppl_text is None:
            if own_ppl:
                self.ppl_text = "\n\n".join(passages[h : h + own_ppl])
                self.ppl_desc = f"{c.text_file} passages {h + 1}..{h + own_ppl} (held out, never trained on)"
                ppl_note = (f"; perplexity is measured on {own_ppl} held-out passages of the same text, not on "
                            "Wikitext (put wikitext.txt in the data folder for that)")
            else:
                self.ppl_missing = (f"no perplexity text: benchmark.ppl_passages=0 and no {PPL_FILE} in {folder} "
                                    "(or pass --set benchmark.ppl_file=PATH).")
        self.stand_in = (
            f"{BOOKS_PD_STAND_IN}: passages of {c.text_file} (blank-line-separated speeches merged to >= {min_words} "
            f"words), forget = passages 1..{a}, retain = {a + 1}..{b}, holdout = {b + 1}..{h}; "
            f"{c.prompt_words}-word prompts (the published protocol uses 200){ppl_note}."
        )
