"""TOFU on SmolLM2-135M against an independent reference implementation of TOFU's procedure.

The reference below is written from TOFU's published procedure (and OpenUnlearning's chat
preprocessing for instruct models), item by item, with one forward pass per scored answer and
one unbatched greedy generation per question; it uses no harness scoring or engine code:

- p̄(a|q) = exp(-mean NLL) over the answer tokens plus one EOS (chat: every token after the
  generation prompt, plus EOS when the conversation does not end with it);
- Prob: p̄(a) on forget/retain; p̄(a) / (p̄(a) + Σ p̄(pert)) on real authors / world facts;
- truth ratio: geometric mean of p̄(pert) / p̄(paraphrase) (real authors / world facts: / p̄(a));
- ROUGE-L recall (rouge_score, stemmer on) of the greedy answer: no stop strings, special
  tokens skipped, whitespace stripped;
- forget EM and ES from the argmax at each scored position less the last (the EOS prediction,
  left out as OpenUnlearning's ``tokenwise_vocab_logprobs`` does); ES 0 when the last answer
  token is not predicted.

Two checks against it:

- on every ``make test``: ``harness eval`` on the first CI_LIMIT items of each split with a
  CI_BUDGET-token answer budget, compared per item with ``tofu_parity_smollm2.json`` (next to
  this file), the reference's values for those items, computed and committed by running this
  module as a script (``python tests/test_tofu_parity.py``; about a minute);
- opt-in, the "done when" command of issue 11 (10 items, 100 tokens; minutes on a CPU)::

    harness eval --benchmark tofu --model smollm2-135m --data-dir ../shared/data/tofu --limit 10 \\
        --set benchmark.answer_tokens=100

  ``HARNESS_TOFU_PARITY_RECORD=path/to/record.json`` compares an existing record;
  ``HARNESS_TOFU_PARITY=1`` runs the command first (into a temporary folder).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from conftest import data_root

TOFU = data_root() / "tofu"
RECORD = os.environ.get("HARNESS_TOFU_PARITY_RECORD")
RUN = os.environ.get("HARNESS_TOFU_PARITY") == "1"
pytestmark = pytest.mark.skipif(not (TOFU / "forget01.json").is_file(), reason=f"TOFU data not found at {TOFU}")
opt_in = pytest.mark.skipif(not (RECORD or RUN), reason="opt-in: set HARNESS_TOFU_PARITY_RECORD or HARNESS_TOFU_PARITY=1")
LIMIT, BUDGET, TOLERANCE = 10, 100, 1e-3
CI_LIMIT, CI_BUDGET = 1, 32   # the per-submission check: small enough for every `make test`
COMMITTED = Path(__file__).with_name("tofu_parity_smollm2.json")
KEYS = ("probability", "truth_ratio", "rouge_l_recall")
MEMORISED = ("exact_memorization", "extraction_strength")   # forget split only


def keys_of(split: str) -> tuple[str, ...]:
    return KEYS + (MEMORISED if split == "forget" else ())
FILES = {"forget": "forget01_perturbed", "retain": "retain_perturbed",
         "real_authors": "real_authors_perturbed", "world_facts": "world_facts_perturbed"}


def first_items(name: str, limit: int = LIMIT) -> list[dict]:
    lines = (TOFU / f"{name}.json").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()][:limit]


class Reference:
    def __init__(self, model, tok, fmt: str, system: str, date_string: str, budget: int = BUDGET):
        self.model, self.tok, self.fmt, self.budget = model.float().eval(), tok, fmt, budget
        self.system, self.date = system, date_string

    def _chat(self, messages, generation_prompt: bool) -> list[int]:
        extra = {"date_string": self.date} if self.date else {}
        ids = self.tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt, **extra)
        return list(ids if isinstance(ids, list) else ids["input_ids"])

    def _messages(self, question: str) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": "user", "content": question}]

    def prompt(self, question: str) -> list[int]:
        if self.fmt == "chat":
            return self._chat(self._messages(question), True)
        return self.tok(f"Question: {question}\nAnswer:", add_special_tokens=True)["input_ids"]

    def sequence(self, question: str, answer: str) -> tuple[list[int], int]:
        """(ids of prompt + scored tokens, number of prompt tokens)."""
        eos = self.tok.eos_token_id
        if self.fmt == "chat":
            full = self._chat(self._messages(question) + [{"role": "assistant", "content": answer}], False)
            if full[-1] != eos:
                full.append(eos)
            return full, len(self.prompt(question))
        head = self.prompt(question)
        return head + self.tok(" " + answer, add_special_tokens=False)["input_ids"] + [eos], len(head)

    @torch.no_grad()
    def mean_prob(self, question: str, answer: str) -> float:
        ids, n = self.sequence(question, answer)
        logits = self.model(input_ids=torch.tensor([ids])).logits[0].double()
        nll = torch.nn.functional.cross_entropy(logits[n - 1 : -1], torch.tensor(ids[n:]), reduction="mean")
        return math.exp(-nll.item())

    @torch.no_grad()
    def greedy_hits(self, question: str, answer: str) -> list[bool]:
        """Argmax == token at each scored position, the last (EOS) prediction left out."""
        ids, n = self.sequence(question, answer)
        predicted = self.model(input_ids=torch.tensor([ids])).logits[0, n - 1 : -1].argmax(-1).tolist()
        return [p == t for p, t in zip(predicted, ids[n:])][:-1]

    @torch.no_grad()
    def answer(self, question: str) -> str:
        ids = torch.tensor([self.prompt(question)])
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.budget,
                                  do_sample=False, pad_token_id=self.tok.pad_token_id or self.tok.eos_token_id,
                                  eos_token_id=self.tok.eos_token_id)
        return self.tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def reference_rows(ref: Reference, name: str, item: dict) -> dict:
    from rouge_score import rouge_scorer

    q = item["question"]
    p_answer = ref.mean_prob(q, item["answer"])
    pert = [ref.mean_prob(q, a) for a in item["perturbed_answer"]]
    base = ref.mean_prob(q, item["paraphrased_answer"]) if name in ("forget", "retain") else p_answer
    prob = p_answer if name in ("forget", "retain") else p_answer / (p_answer + sum(pert))
    generation = ref.answer(q)
    memorised = {}
    if name == "forget":
        hits = ref.greedy_hits(q, item["answer"])
        suffix = len(hits) - next((k for k in range(len(hits)) if all(hits[k:])), len(hits))
        memorised = {"exact_memorization": sum(hits) / len(hits), "extraction_strength": suffix / len(hits)}
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(item["answer"], generation)["rougeL"].recall
    return {"probability": prob, "truth_ratio": math.prod(pert) ** (1 / len(pert)) / base,
            "rouge_l_recall": rouge, "generation": generation, **memorised}


def harness_record(out: Path, limit: int, budget: int) -> dict:
    from harness.cli import main

    assert main(["eval", "--benchmark", "tofu", "--model", "smollm2-135m", "--data-dir", str(TOFU), "--no-eval-cache",
                 "--limit", str(limit), "--set", f"benchmark.answer_tokens={budget}", "--results-dir", str(out)]) == 0
    return json.loads(next(out.glob("tofu/*/target/*.json")).read_text())


def the_record(tmp_path: Path) -> dict:
    if RECORD:
        return json.loads(Path(RECORD).read_text())
    return harness_record(tmp_path / "results", LIMIT, BUDGET)


def test_smollm2_tofu_agrees_with_the_committed_reference_values(tmp_path):
    """Runs on every submission: the harness on CI_LIMIT items per split against the reference's
    values committed in tofu_parity_smollm2.json (written by this module's __main__)."""
    committed = json.loads(COMMITTED.read_text())
    assert committed["limit"] == CI_LIMIT and committed["budget"] == CI_BUDGET
    record = harness_record(tmp_path / "results", CI_LIMIT, CI_BUDGET)
    assert record["resolved_settings"]["prompt_format"] == committed["prompt_format"]
    for name, file in FILES.items():
        rows, expected = record["per_sample"][name], committed["splits"][name]
        assert [r["question"] for r in rows] == [i["question"] for i in first_items(file, CI_LIMIT)]
        assert len(rows) == len(expected) == CI_LIMIT
        for row, want in zip(rows, expected):
            assert row["generation"].strip() == want["generation"], (name, row["question"])
            for key in keys_of(name):
                assert abs(row[key] - want[key]) <= TOLERANCE, (name, row["question"], key, row[key], want[key])


@opt_in
def test_smollm2_tofu_agrees_with_the_reference_per_item(tmp_path):
    from harness.runtime.models import load_model

    record = the_record(tmp_path)
    config = record["config"]["benchmark_config"]
    assert config["answer_tokens"] == BUDGET and config["stop_at_newline"] is False
    loaded = load_model("smollm2-135m", torch.device("cpu"))
    fmt = record["resolved_settings"]["prompt_format"]
    ref = Reference(loaded.model, loaded.tokenizer, fmt, config.get("system_prompt", ""), config.get("date_string", ""))
    worst = {}
    for name, file in FILES.items():
        rows = record["per_sample"][name]
        items = first_items(file)
        assert len(rows) == len(items) == LIMIT
        for item, row in zip(items, rows):
            assert row["question"] == item["question"]
            expected = reference_rows(ref, name, item)
            for key in keys_of(name):
                diff = abs(row[key] - expected[key])
                worst[(name, key)] = max(worst.get((name, key), 0.0), diff)
                assert diff <= TOLERANCE, (name, item["question"], key, row[key], expected[key], row["generation"],
                                           expected["generation"])
        print(f"{name}: {LIMIT} items agree; largest differences "
              + ", ".join(f"{k} {worst[(name, k)]:.1e}" for k in ("probability", "truth_ratio", "rouge_l_recall")),
              flush=True)
    print("largest per-item difference:", {f"{n}/{k}": f"{v:.1e}" for (n, k), v in worst.items()})
    assert record["aggregates"]["model_utility"] > 0


def write_committed_reference() -> None:
    """Compute the reference's values for the CI check with the model alone (no harness scoring
    or engine code; the settings are the TOFU adapter's defaults, read from its config)."""
    from harness.benchmarks.tofu import TofuConfig
    from harness.runtime.models import load_model

    loaded = load_model("smollm2-135m", torch.device("cpu"))
    config = TofuConfig()
    fmt = "chat" if loaded.tokenizer.chat_template else "phi"
    ref = Reference(loaded.model, loaded.tokenizer, fmt, config.system_prompt, config.date_string, CI_BUDGET)
    splits = {}
    for name, file in FILES.items():
        rows = [reference_rows(ref, name, item) for item in first_items(file, CI_LIMIT)]
        splits[name] = [{k: row[k] for k in (*keys_of(name), "generation")} for row in rows]
    out = {"model": "smollm2-135m", "limit": CI_LIMIT, "budget": CI_BUDGET, "prompt_format": fmt, "splits": splits}
    COMMITTED.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write_committed_reference()
