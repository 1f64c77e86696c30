"""`synthetic`: our own offline benchmark of fictitious people, scored on all four families.

The data comes from ``synthetic_data.generate`` (no third-party text). A target model is
fine-tuned on forget + retain people and a retain model on retain people only; unlearning
targets the forget people. Metrics, each with its published definition (reference.md s.2):

- verbatim: VerbMem, ROUGE-L F1 (no stemmer) x 100 of the greedy continuation of the second
  half of each forget biography from its first half (MUSE definition);
- knowledge: ROUGE-L recall (stemmer) of greedy answers and the length-normalised answer
  probability on forget questions, the forget truth ratio, and forget quality (KS test of
  per-item truth ratios against the retain model's; TOFU definitions);
- privacy: Min-K% Prob (k = 0.4) scores of forget texts (members) and holdout texts
  (never trained on), AUC in MUSE's convention, and PrivLeak against the retain model's AUC;
- utility: the same knowledge metrics on retain people, and their harmonic mean.

Scoring conventions (decided per part, after the benchmark each part follows): scored QA
answers (probability, truth ratio, ES) carry the tokenizer's EOS, as TOFU's data code and
OpenUnlearning score them and as training appends it; the MIA texts are scored as plain texts
without EOS, as MUSE's PrivLeak scores ``tokenizer.encode(text)``. Generated answers are
stripped of surrounding whitespace; their stops (a newline, ``"Question:"``) are part of this
benchmark's own definition (its target models answer on one line after ``"Answer: "``), and a
split whose generations are mostly empty is flagged in the record.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import fmean

from harness.data.batching import Example
from harness.benchmarks.base import Benchmark, Scores, degenerate_generations
from harness.benchmarks.synthetic_data import generate, splits_fingerprint
from harness.engines.base import GenerationRequest, LogprobRequest
from harness.errors import HarnessError
from harness.engines.plan import EvalPlan, PlanOutputs
from harness.leaderboard.columns import Column
from harness.registry import register_benchmark
from harness.scoring.aggregate import forget_quality, model_utility
from harness.scoring.memorization import extraction_strength, without_eos_prediction
from harness.scoring.privacy import min_k_score, muse_auc, privleak
from harness.scoring.probability import (
    mean_token_probability,
    truth_ratio,
    truth_ratio_forget_score,
    truth_ratio_retain_score,
)
from harness.scoring.text import rouge_l_f1, rouge_l_recall
from harness.scoring.uncertainty import HarmonicMean, ItemMean, RelativeToReference, SplitAuc, truth_ratio_retain_items

QA_STOPS = ("\n", "Question:")


def qa_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


@dataclass
class SyntheticConfig:
    # Sizes (issue 23): 8 forget people give 32 forget questions and 8 biographies, so the target
    # and retain rows' 95% intervals are apart in every forget column and the KS test of forget
    # quality has a floor of 1.1e-18 (n = m = 32; it was 3.3e-9 at 16) with steps of 1/32 in D;
    # 8 holdout people give 40 non-member texts against 40 members. Measured with SmolLM2-135M,
    # --threads 1 on a loaded 2-core machine: evaluation about 1.7x the old 4/4 sizes per cell
    # (68 s against 39 s for the target), GA's training 1.7x (63 s against 38 s).
    num_forget: int = 8
    num_retain: int = 8
    num_holdout: int = 8
    qa_per_person: int = 4
    data_seed: int = 0               # the data is fixed by this, not by the run's seed
    utility_items: int = 12          # retain QA items scored for utility (0 = all); all are trained on
    min_k: float = 0.4               # Min-K% fraction (MUSE uses 0.4)
    answer_tokens: int = 24          # greedy budget for QA answers
    continuation_tokens: int = 56    # greedy budget for biography continuations


@register_benchmark()
class Synthetic(Benchmark):
    name = "synthetic"
    description = "Offline fictitious-people benchmark (generated in code); all four scoring families"
    Config = SyntheticConfig
    columns = [
        Column("verbmem_f", "VerbMem f", "down", "verbatim", digits=1,
               interval=ItemMean("verbmem_forget", "rouge_l_f1", scale=100.0)),
        Column("rouge_f", "ROUGE f", "down", "knowledge", digits=3, interval=ItemMean("qa_forget", "rouge_l_recall")),
        Column("prob_f", "Prob f", "down", "knowledge", digits=3, interval=ItemMean("qa_forget", "probability")),
        Column("es_f", "ES f", "down", "knowledge", digits=3, interval=ItemMean("qa_forget", "extraction_strength")),
        Column("forget_quality", "Forget quality", "up", "knowledge", digits=3, sci_below=0.01),  # a KS p-value
        Column("privleak", "PrivLeak", "ref", "privacy", target=0.0, digits=1,
               interval=RelativeToReference(SplitAuc("mia", "set", "holdout", "forget", "min_k"),
                                            "auc_min_k", "privleak")),
        Column("rouge_r", "ROUGE r", "up", "utility", digits=3, interval=ItemMean("qa_retain", "rouge_l_recall")),
        Column("prob_r", "Prob r", "up", "utility", digits=3, interval=ItemMean("qa_retain", "probability")),
        Column("model_utility", "Utility", "up", "utility", digits=3, interval=HarmonicMean((
            ItemMean("qa_retain", "rouge_l_recall"), ItemMean("qa_retain", "probability"),
            ItemMean("qa_retain", "truth_ratio", transform=truth_ratio_retain_items)))),
    ]
    # Our own settings for this benchmark, not from a paper: chosen with SmolLM2-135M on a
    # 2-core CPU so that the target memorises the forget people (final loss < 0.1) and the
    # whole default run (prepare + all methods) finishes within about 20 minutes.
    finetune_defaults = {"lr": 4e-4, "epochs": 6, "global_batch": 8, "micro_batch": 8, "warmup_ratio": 0.1}
    method_defaults = {
        "*": {"train.lr": 1e-4, "train.epochs": 2, "train.global_batch": 8, "train.micro_batch": 8},
        "sga": {"sga.K": 3},
        # RMU's own loop (constant rate, no clipping, no decay) comes from the method. Here: the forget
        # and retain items share one format, so the paper's alpha 1200 held the forget states in place
        # (90 steps changed nothing); alpha 1 is OpenUnlearning's RMU config for TOFU/MUSE
        # (configs/trainer/RMU.yaml). lr 1e-3 and 10 epochs (30 steps) are ours, measured on
        # SmolLM2-135M: the paper's 5e-5 moved no answer in 90 steps (docs/methods.md, "On synthetic").
        "rmu": {"rmu.alpha": 1.0, "train.lr": 1e-3, "train.epochs": 10},
    }
    reads_files = False   # generated in code: --data-dir is refused rather than ignored

    def __init__(self, config=None, data_dir=None, limit=None):
        super().__init__(config, data_dir, limit)
        c = self.config
        try:
            self.splits = generate(c.num_forget, c.num_retain, c.num_holdout, c.qa_per_person, seed=c.data_seed)
        except ValueError as exc:
            raise HarnessError(f"benchmark 'synthetic': {exc}") from None
        s = self.splits
        self.forget_qa, self.retain_qa, self.holdout_qa = (self._cut(x) for x in (s.forget_qa, s.retain_qa, s.holdout_qa))
        self.utility_qa = self.retain_qa[: c.utility_items] if c.utility_items else self.retain_qa
        self.forget_bio, self.retain_bio, self.holdout_bio = (
            self._cut(x) for x in (s.forget_passages, s.retain_passages, s.holdout_passages)
        )

    def data_info(self):
        return {
            "source": f"generated in code (synthetic_data, seed {self.config.data_seed})",
            "stand_in": None,
            "fingerprint": splits_fingerprint(self.splits),
            "config": asdict(self.config),
            "limit": self.limit,
            "sizes": {
                "forget_qa": len(self.forget_qa), "retain_qa": len(self.retain_qa), "holdout_qa": len(self.holdout_qa),
                "utility_qa": len(self.utility_qa),
                "forget_bio": len(self.forget_bio), "retain_bio": len(self.retain_bio), "holdout_bio": len(self.holdout_bio),
            },
        }

    # --- training data -------------------------------------------------------------------
    @staticmethod
    def _examples(qa, bios) -> list[Example]:
        return [
            Example(qa_prompt(q.question), " " + q.answer, q.id,
                    perturbed=tuple(" " + p for p in q.perturbed_answers), paraphrased=" " + q.paraphrased_answer)
            for q in qa
        ] + [
            Example("", b.text, b.id) for b in bios
        ]

    def forget_train(self):
        return self._examples(self.forget_qa, self.forget_bio)

    def retain_train(self):
        return self._examples(self.retain_qa, self.retain_bio)

    # --- forget subsets (relearning attack) ---------------------------------------------------
    def forget_units(self):
        """One unit per forget person: their QA items and biography go together (the biography
        states every fact the QA items ask about, so splitting a person would re-inject answers)."""
        return sorted({q.person for q in self.forget_qa} | {b.person for b in self.forget_bio})

    def _keep_forget(self, units):
        self.forget_qa = [q for q in self.forget_qa if q.person in units]
        self.forget_bio = [b for b in self.forget_bio if b.person in units]

    def forget_facts(self):
        """One fact per forget QA item (its person is the unit). Biographies state every fact of
        their person, so a fact subset holds no biography (neither trained on nor scored)."""
        return {q.id: q.person for q in self.forget_qa}

    def _keep_facts(self, facts):
        self.forget_qa = [q for q in self.forget_qa if q.id in facts]
        self.forget_bio = []

    # --- evaluation ----------------------------------------------------------------------
    @staticmethod
    def _split_bio(text: str) -> tuple[str, str]:
        words = text.split()
        half = len(words) // 2
        return " ".join(words[:half]), " " + " ".join(words[half:])

    @staticmethod
    def _qa_text(q) -> str:
        return f"{qa_prompt(q.question)} {q.answer}"

    def eval_plan(self):
        c = self.config
        answer = lambda q: GenerationRequest(qa_prompt(q.question), c.answer_tokens, QA_STOPS)  # noqa: E731
        plan = EvalPlan()
        plan.generations["qa_forget"] = [answer(q) for q in self.forget_qa]
        plan.generations["qa_retain"] = [answer(q) for q in self.utility_qa]
        plan.generations["bio_forget"] = [
            GenerationRequest(self._split_bio(b.text)[0], c.continuation_tokens, ("\n",)) for b in self.forget_bio
        ]
        for split, qa in (("forget", self.forget_qa), ("retain", self.utility_qa)):
            scored = lambda q, text: LogprobRequest(qa_prompt(q.question), " " + text, add_eos=True)  # noqa: E731
            plan.logprobs[f"answer_{split}"] = [scored(q, q.answer) for q in qa]
            plan.logprobs[f"para_{split}"] = [scored(q, q.paraphrased_answer) for q in qa]
            plan.logprobs[f"pert_{split}"] = [scored(q, p) for q in qa for p in q.perturbed_answers]
        plan.logprobs["mia_forget"] = [LogprobRequest("", t) for t in self._mia_texts(self.forget_qa, self.forget_bio)]
        plan.logprobs["mia_holdout"] = [LogprobRequest("", t) for t in self._mia_texts(self.holdout_qa, self.holdout_bio)]
        plan.readers = {f"answer_{s}": ("probability", "extraction_strength") for s in ("forget", "retain")}
        return plan

    def _mia_texts(self, qa, bios) -> list[str]:
        return [self._qa_text(q) for q in qa] + [b.text for b in bios]

    def score(self, outputs: PlanOutputs, reference):
        g, lp, scores = outputs.generations, outputs.logprobs, Scores()
        agg, per = scores.aggregates, scores.per_sample

        # Verbatim: VerbMem on forget biographies.
        rows = []
        for b, gen in zip(self.forget_bio, g["bio_forget"]):
            prompt, truth = self._split_bio(b.text)
            rows.append({"id": b.id, "prompt": prompt, "reference": truth.strip(), "generation": gen,
                         "rouge_l_f1": rouge_l_f1(gen, truth.strip())})
        per["verbmem_forget"] = rows
        scores.warnings += degenerate_generations("verbmem_forget", [r["generation"] for r in rows])
        if rows:
            agg["verbmem_f"] = 100 * fmean(r["rouge_l_f1"] for r in rows)

        # Knowledge (forget) and utility (retain): ROUGE-L recall, probability, truth ratio.
        for split, qa, tag in (("forget", self.forget_qa, "f"), ("retain", self.utility_qa, "r")):
            m = len(qa[0].perturbed_answers) if qa else 0
            rows = []
            answers = [text.strip() for text in g[f"qa_{split}"]]
            scores.warnings += degenerate_generations(f"qa_{split}", answers)
            for i, q in enumerate(qa):
                gen = answers[i]
                ans = lp[f"answer_{split}"][i]
                perturbed = [lp[f"pert_{split}"][i * m + j].logprobs for j in range(m)]
                rows.append({
                    "id": q.id, "question": q.question, "reference": q.answer, "generation": gen,
                    "rouge_l_recall": rouge_l_recall(gen, q.answer),
                    "probability": mean_token_probability(ans.logprobs),
                    "truth_ratio": truth_ratio(lp[f"para_{split}"][i].logprobs, perturbed),
                    "extraction_strength": extraction_strength(without_eos_prediction(ans.greedy_match)),
                })
            per[f"qa_{split}"] = rows
            if not rows:
                continue
            agg[f"rouge_{tag}"] = fmean(r["rouge_l_recall"] for r in rows)
            agg[f"prob_{tag}"] = fmean(r["probability"] for r in rows)
            agg[f"es_{tag}"] = fmean(r["extraction_strength"] for r in rows)
            ratios = [r["truth_ratio"] for r in rows]
            if split == "forget":
                agg["truth_ratio_f"] = truth_ratio_forget_score(ratios)
                scores.reference_values["forget_truth_ratios"] = ratios
            else:
                agg["truth_ratio_r"] = truth_ratio_retain_score(ratios)
                agg["model_utility"] = model_utility([agg["rouge_r"], agg["prob_r"], agg["truth_ratio_r"]])

        # Privacy: Min-K% AUC of forget (members) vs holdout (non-members), MUSE convention.
        k = self.config.min_k
        member = [min_k_score(s.logprobs, k) for s in lp["mia_forget"]]
        nonmember = [min_k_score(s.logprobs, k) for s in lp["mia_holdout"]]
        per["mia"] = [{"set": "forget", "min_k": v} for v in member] + [{"set": "holdout", "min_k": v} for v in nonmember]
        if member and nonmember:
            agg["auc_min_k"] = muse_auc(member, nonmember)
            scores.reference_values["auc"] = agg["auc_min_k"]

        self._score_against_reference(scores, reference or {})
        return scores

    @staticmethod
    def _score_against_reference(scores: Scores, reference: dict) -> None:
        agg = scores.aggregates
        ref_ratios, ref_auc = reference.get("forget_truth_ratios"), reference.get("auc")
        if "forget_truth_ratios" not in scores.reference_values:
            pass
        elif ref_ratios:
            agg["forget_quality"] = forget_quality(scores.reference_values["forget_truth_ratios"], ref_ratios)
        else:
            scores.missing["forget_quality"] = (
                "needs the retain model's per-item forget truth ratios: evaluate a retain model "
                "(run prepares one, or pass --retain PATH)"
            )
        if "auc_min_k" not in agg:
            pass
        elif ref_auc:
            agg["privleak"] = privleak(agg["auc_min_k"], ref_auc)
        else:
            scores.missing["privleak"] = (
                "needs the retain model's Min-K% AUC: evaluate a retain model (run prepares one, or pass --retain PATH)"
            )
