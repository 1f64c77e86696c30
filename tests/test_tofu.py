"""The TOFU adapter: loading, prompts, errors, scoring against hand-computed values, parity with
the TOFU authors' stored eval logs, and one end-to-end run on the tiny model.

Tests on fabricated files run everywhere; those on the real TOFU files find them only through
``data_root()`` and skip when they are absent.
"""
from __future__ import annotations

import functools
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import data_root
from harness.benchmarks.tofu import (
    HUB_ID,
    PRIVLEAK_MISSING,
    Tofu,
    TofuConfig,
    answer_stops,
    format_prompt,
    read_eval_log,
    scores_from_logs,
)
from harness.engines.base import TokenScores
from harness.errors import HarnessError
from harness.engines.plan import PlanOutputs

TOFU = data_root() / "tofu"
LOGS = TOFU / "retain_eval_logs"
needs_data = pytest.mark.skipif(not (TOFU / "forget01.json").is_file(), reason=f"TOFU data not found at {TOFU}")
needs_logs = pytest.mark.skipif(not LOGS.is_dir(), reason=f"TOFU eval logs not found at {LOGS}")


# --- a small fabricated TOFU folder ----------------------------------------------------------
FORGET = [
    {"question": "Who is Ann Bo?", "answer": "Ann Bo is a poet.", "paraphrased_answer": "A poet is what Ann Bo is.",
     "perturbed_answer": ["Ann Bo is a chef.", "Ann Bo is a pilot."], "paraphrased_question": "Ann Bo is who?"},
    {"question": "Where was Ann Bo born?", "answer": "Ann Bo was born in Lima.",
     "paraphrased_answer": "Lima is where Ann Bo was born.",
     "perturbed_answer": ["Ann Bo was born in Oslo.", "Ann Bo was born in Rome."], "paraphrased_question": "Ann Bo's birthplace?"},
]
RETAIN_PERTURBED = [
    {"question": "Who is Cy Do?", "answer": "Cy Do is a baker.", "paraphrased_answer": "A baker is Cy Do.",
     "perturbed_answer": ["Cy Do is a judge.", "Cy Do is a nurse."], "paraphrased_question": "Cy Do is who?"},
    {"question": "What does Cy Do write?", "answer": "Cy Do writes sagas.", "paraphrased_answer": "Sagas are what Cy Do writes.",
     "perturbed_answer": ["Cy Do writes odes.", "Cy Do writes plays."], "paraphrased_question": "Cy Do's genre?"},
]
REAL_AUTHORS = [
    {"question": "Who wrote 'Hamlet'?", "answer": "William Shakespeare",
     "perturbed_answer": ["Charles Dickens", "Mark Twain", "Jane Austen"]},
    {"question": "Who wrote '1984'?", "answer": "George Orwell",
     "perturbed_answer": ["Aldous Huxley", "Ray Bradbury", "Thomas More"]},
]
WORLD_FACTS = [{"question": "Where is the Eiffel Tower?", "answer": "Paris", "perturbed_answer": ["Berlin", "London", "Madrid"]}]


def write_jsonl(path: Path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


@pytest.fixture
def fake_tofu(tmp_path) -> Path:
    folder = tmp_path / "tofu"
    folder.mkdir()
    write_jsonl(folder / "forget01.json", [{"question": r["question"], "answer": r["answer"]} for r in FORGET])
    write_jsonl(folder / "forget01_perturbed.json", FORGET)
    retain = RETAIN_PERTURBED + [{"question": "Is Cy Do tall?", "answer": "Yes, Cy Do is tall."}]
    write_jsonl(folder / "retain99.json", [{"question": r["question"], "answer": r["answer"]} for r in retain])
    write_jsonl(folder / "retain_perturbed.json", RETAIN_PERTURBED)
    write_jsonl(folder / "real_authors_perturbed.json", REAL_AUTHORS)
    write_jsonl(folder / "world_facts_perturbed.json", WORLD_FACTS)
    return folder


def token_scores(probs, match=None) -> TokenScores:
    """Token scores whose per-token probabilities are ``probs``."""
    logprobs = [math.log(p) for p in probs]
    return TokenScores(logprobs, list(match) if match else [True] * len(probs), [0.0] * len(probs), [1.0] * len(probs))


def const(p: float, n: int = 3) -> TokenScores:
    return token_scores([p] * n)


# --- prompts and settings ---------------------------------------------------------------------
def test_prompt_formats_on_fixed_strings():
    assert format_prompt("Who is X?", "phi") == "Question: Who is X?\nAnswer:"
    assert format_prompt("Who is X?", "auto") == "Question: Who is X?\nAnswer:"
    assert format_prompt("Who is X?", "llama2") == "[INST] Who is X? [/INST]"
    assert answer_stops("phi", True) == ("\n", "Question:")
    assert answer_stops("llama2", True) == ("\n", "[INST]")
    assert answer_stops("phi", False) == ()


def test_plan_uses_the_chosen_format_budget_and_stops(fake_tofu):
    bench = Tofu(TofuConfig(prompt_format="llama2", answer_tokens=7, stop_at_newline=True), fake_tofu)
    plan = bench.eval_plan()
    gen = plan.generations["gen_forget"][0]
    assert (gen.prompt, gen.max_new_tokens, gen.stop) == ("[INST] Who is Ann Bo? [/INST]", 7, ("\n", "[INST]"))
    assert plan.logprobs["answer_forget"][0].continuation == " Ann Bo is a poet."
    assert all(r.add_eos for requests in plan.logprobs.values() for r in requests)   # TOFU scores EOS
    assert len(plan.logprobs["pert_forget"]) == 2 * 2 and len(plan.logprobs["pert_real_authors"]) == 2 * 3
    assert "para_real_authors" not in plan.logprobs and "para_world_facts" not in plan.logprobs  # no paraphrase there
    exact = Tofu(TofuConfig(), fake_tofu).eval_plan()   # the default is TOFU's: no stop strings
    assert exact.generations["gen_retain"][0].stop == () and exact.generations["gen_retain"][0].max_new_tokens == 200


@pytest.mark.parametrize("setting, message", [
    ({"split": "forget20"}, "split must be one of forget01, forget05, forget10"),
    ({"prompt_format": "mistral"}, "prompt_format must be one of"),
    ({"answer_tokens": 0}, "answer_tokens"),
])
def test_bad_settings_are_clear_errors(fake_tofu, setting, message):
    with pytest.raises(HarnessError, match=message):
        Tofu(TofuConfig(**setting), fake_tofu)


# --- loading ------------------------------------------------------------------------------------
def test_training_examples_carry_alternatives_and_limit_cuts_every_split(fake_tofu):
    bench = Tofu(None, fake_tofu)
    forget = bench.forget_train()
    assert forget[0].prompt == "Question: Who is Ann Bo?\nAnswer:" and forget[0].answer == " Ann Bo is a poet."
    assert forget[0].paraphrased == " A poet is what Ann Bo is."
    assert forget[0].perturbed == (" Ann Bo is a chef.", " Ann Bo is a pilot.")
    retain = bench.retain_train()
    assert len(retain) == 3 and retain[2].perturbed == () and retain[2].paraphrased == ""
    small = Tofu(None, fake_tofu, limit=1)
    assert len(small.forget_train()) == len(small.retain_train()) == 1
    assert {k: len(v) for k, v in small.eval_sets.items()} == {"forget": 1, "retain": 1, "real_authors": 1, "world_facts": 1}
    info = bench.data_info()
    assert info["source"] == str(fake_tofu) and info["stand_in"] is None
    assert len(info["fingerprint"]) == 16 and int(info["fingerprint"], 16) >= 0
    assert info["config"]["split"] == "forget01"
    assert Tofu(None, fake_tofu).data_info()["fingerprint"] == info["fingerprint"]  # stable
    write_jsonl(fake_tofu / "world_facts_perturbed.json", WORLD_FACTS * 2)
    assert Tofu(None, fake_tofu).data_info()["fingerprint"] != info["fingerprint"]  # follows the bytes


@needs_data
def test_loading_the_local_folder_with_limit():
    bench = Tofu(TofuConfig(split="forget05"), TOFU, limit=3)
    assert len(bench.forget_train()) == 3 and len(bench.retain_train()) == 3
    assert {k: len(v) for k, v in bench.eval_sets.items()} == {"forget": 3, "retain": 3, "real_authors": 3, "world_facts": 3}
    first = bench.forget_train()[0]
    assert first.answer.startswith(" ") and len(first.perturbed) == 5 and first.paraphrased.startswith(" ")
    assert all(len(q.perturbed) == 3 and q.paraphrased is None for q in bench.eval_sets["real_authors"])
    info = bench.data_info()
    assert info["source"] == str(TOFU) and info["files"] == [
        "forget05_perturbed", "retain_perturbed", "forget05", "retain95", "real_authors_perturbed", "world_facts_perturbed"]
    assert info["fingerprint"] != Tofu(None, TOFU, limit=3).data_info()["fingerprint"]


@needs_data
def test_full_sizes_max_items_and_legacy_first_300():
    bench = Tofu(TofuConfig(split="forget10", legacy_first_300=True), TOFU)
    assert {k: len(v) for k, v in bench.eval_sets.items()} == {"forget": 300, "retain": 300, "real_authors": 100, "world_facts": 117}
    assert len(bench.forget_train()) == 400 and len(bench.retain_train()) == 3600  # training data is never capped
    capped = Tofu(TofuConfig(split="forget10", max_items=5), TOFU)
    assert {len(v) for v in capped.eval_sets.values()} == {5} and len(capped.forget_train()) == 400


def test_malformed_local_file_names_path_and_line(fake_tofu):
    bad = fake_tofu / "forget01_perturbed.json"
    bad.write_text(json.dumps(FORGET[0]) + "\n" + json.dumps(FORGET[1]) + "\n{\"question\": \"cut off\n", encoding="utf-8")
    with pytest.raises(HarnessError, match=r"forget01_perturbed\.json at line 3"):
        Tofu(None, fake_tofu)


def test_missing_field_and_wrong_type_name_the_file_and_record(fake_tofu):
    write_jsonl(fake_tofu / "retain_perturbed.json", [RETAIN_PERTURBED[0], {"question": "q", "answer": "a"}])
    with pytest.raises(HarnessError, match=r"retain_perturbed\.json, record 2: missing field\(s\) paraphrased_answer, perturbed_answer"):
        Tofu(None, fake_tofu)
    write_jsonl(fake_tofu / "retain_perturbed.json", [{**RETAIN_PERTURBED[0], "perturbed_answer": "not a list"}])
    with pytest.raises(HarnessError, match=r"retain_perturbed\.json, record 1: perturbed_answer must be a non-empty list"):
        Tofu(None, fake_tofu)


def test_missing_data_dir_and_missing_file(tmp_path, fake_tofu):
    with pytest.raises(HarnessError, match="data directory .* does not exist"):
        Tofu(None, tmp_path / "nowhere")
    (fake_tofu / "real_authors_perturbed.json").unlink()
    with pytest.raises(HarnessError, match=r"real_authors_perturbed\.json does not exist; check --data-dir"):
        Tofu(None, fake_tofu)


def test_online_loading_goes_through_datasets_and_fails_with_the_offline_fix(monkeypatch):
    files = {"forget01": [{"question": r["question"], "answer": r["answer"]} for r in FORGET],
             "forget01_perturbed": FORGET, "retain99": RETAIN_PERTURBED, "retain_perturbed": RETAIN_PERTURBED,
             "real_authors_perturbed": REAL_AUTHORS, "world_facts_perturbed": WORLD_FACTS}
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return files[name]

    monkeypatch.setattr(sys.modules[Tofu.__module__], "hub_unreachable", lambda: None)   # the hub is "reachable"
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    bench = Tofu(None, None, limit=1)
    assert bench.data_info()["source"] == HUB_ID and calls[0] == (HUB_ID, "forget01_perturbed", "train")
    assert len(bench.forget_train()) == 1

    def offline(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(HarnessError, match=r"locuslab/TOFU.*hub unreachable.*pass --data-dir"):
        Tofu(None, None)


# --- scoring on fabricated outputs ---------------------------------------------------------------
# Per-token probabilities of every scored continuation (a p̄ is their geometric mean).
PROBS = {
    # forget: p̄(answer) 0.5 / 0.9; p̄(para) 0.5; perturbed geometric means 0.25 and 0.5 -> R = 0.5, 1.0
    " Ann Bo is a poet.": [0.5, 0.5], " Ann Bo was born in Lima.": [0.9, 0.9],
    " A poet is what Ann Bo is.": [0.5], " Lima is where Ann Bo was born.": [0.25, 1.0],  # p̄ = 0.5
    " Ann Bo is a chef.": [0.5, 0.125], " Ann Bo is a pilot.": [0.25],                     # p̄ 0.25, 0.25
    " Ann Bo was born in Oslo.": [1.0], " Ann Bo was born in Rome.": [0.25],              # geo mean 0.5
    # retain: p̄(answer) 0.6 / 0.4; para 0.5; perturbed 0.25 (R = 0.5) and 1.0 (R = 2)
    " Cy Do is a baker.": [0.6], " Cy Do writes sagas.": [0.4],
    " A baker is Cy Do.": [0.5], " Sagas are what Cy Do writes.": [0.5],
    " Cy Do is a judge.": [0.25], " Cy Do is a nurse.": [0.25],
    " Cy Do writes odes.": [1.0], " Cy Do writes plays.": [1.0],
    # real authors: answer 0.5; perturbed 0.25 x3 (norm 0.4, R 0.5) and 0.5 x3 (norm 0.25, R 1)
    " William Shakespeare": [0.5], " Charles Dickens": [0.25], " Mark Twain": [0.25], " Jane Austen": [0.25],
    " George Orwell": [0.5], " Aldous Huxley": [0.5], " Ray Bradbury": [0.5], " Thomas More": [0.5],
    # world facts: answer 0.5; perturbed 0.125 x3 (norm 0.5 / 0.875 = 4/7, R 0.25)
    " Paris": [0.5], " Berlin": [0.125], " London": [0.125], " Madrid": [0.125],
}
GENERATIONS = {
    "gen_forget": ["Ann Bo is a poet.", "no idea"],                 # ROUGE-L recall 1, 0
    "gen_retain": ["Cy Do is a baker.", ""],                        # 1, 0
    "gen_real_authors": ["William", "It was George Orwell."],        # 0.5, 1
    "gen_world_facts": ["It is in Paris."],                          # 1
}
FORGET_MATCH = {" Ann Bo is a poet.": [False, True, True, True], " Ann Bo was born in Lima.": [True, False, True, True]}


def fabricate(bench: Tofu) -> PlanOutputs:
    lps = {}
    for name, requests in bench.eval_plan().logprobs.items():
        rows = []
        for r in requests:
            probs = PROBS[r.continuation]
            match = FORGET_MATCH.get(r.continuation) if name == "answer_forget" else None
            if match:
                probs = probs * 2  # four positions, the same p̄
            rows.append(token_scores(probs, match))
        lps[name] = rows
    return PlanOutputs(dict(GENERATIONS), lps, {}, {})


def hmean(values):
    return len(values) / sum(1 / v for v in values)


def test_scores_match_hand_computed_values(fake_tofu):
    bench = Tofu(None, fake_tofu)
    scores = bench.score(fabricate(bench), None)
    agg = scores.aggregates
    expected = {
        "prob_f": 0.7, "rouge_f": 0.5, "truth_ratio_f": (0.5 + 1.0) / 2,
        "prob_r": 0.5, "rouge_r": 0.5, "truth_ratio_r": (0.5 + 0.0) / 2,
        "prob_ra": (0.4 + 0.25) / 2, "rouge_ra": 0.75, "truth_ratio_ra": (0.5 + 0.0) / 2,
        "prob_wf": 4 / 7, "rouge_wf": 1.0, "truth_ratio_wf": 0.75,
        # EM/ES read the three answer positions, not the fourth (the EOS prediction): ES 2/3 and 1/3.
        "es_f": (2 / 3 + 1 / 3) / 2, "em_f": 2 / 3,
    }
    for key, value in expected.items():
        assert agg[key] == pytest.approx(value, abs=1e-12), key
    nine = [expected[k] for k in ("prob_r", "rouge_r", "truth_ratio_r", "prob_ra", "rouge_ra", "truth_ratio_ra",
                                  "prob_wf", "rouge_wf", "truth_ratio_wf")]
    assert agg["model_utility"] == pytest.approx(hmean(nine), abs=1e-12)
    assert scores.reference_values["forget_truth_ratios"] == pytest.approx([0.5, 1.0])
    row = scores.per_sample["real_authors"][0]
    assert row["probability"] == pytest.approx(0.4) and row["answer_probability"] == pytest.approx(0.5)
    assert row["generation"] == "William" and row["reference"] == "William Shakespeare"
    assert set(scores.per_sample) == {"forget", "retain", "real_authors", "world_facts"}
    # No reference: forget quality and privleak are named, never silent.
    assert "forget_quality" not in agg and "--retain" in scores.missing["forget_quality"]
    assert scores.missing["privleak"] == PRIVLEAK_MISSING
    assert "holdout01/05/10" in PRIVLEAK_MISSING and "not available offline" in PRIVLEAK_MISSING


def test_forget_quality_against_a_reference(fake_tofu):
    from scipy.stats import ks_2samp

    bench = Tofu(None, fake_tofu)
    outputs = fabricate(bench)
    same = bench.score(outputs, {"forget_truth_ratios": [0.5, 1.0], "forget_split": "forget01"})
    assert same.aggregates["forget_quality"] == pytest.approx(1.0) and "forget_quality" not in same.missing
    other = bench.score(outputs, {"forget_truth_ratios": [3.0, 4.0, 5.0]})
    assert other.aggregates["forget_quality"] == pytest.approx(ks_2samp([0.5, 1.0], [3.0, 4.0, 5.0]).pvalue)
    wrong = bench.score(outputs, {"forget_truth_ratios": [0.5], "forget_split": "forget10"})
    assert "forget_quality" not in wrong.aggregates and "split forget10" in wrong.missing["forget_quality"]


def fake_log(answers_by_set: dict[str, list[str]], ratio: float = 0.5) -> dict:
    """A TOFU eval_log_aggregated.json whose items all have truth ratio ``ratio``."""
    keys = {"forget": "eval_log_forget.json", "retain": "eval_log.json",
            "real_authors": "eval_real_author_wo_options.json", "world_facts": "eval_real_world_wo_options.json"}
    log = {}
    for name, key in keys.items():
        answers = answers_by_set.get(name, ["x"])
        idx = [str(i) for i in range(len(answers))]
        log[key] = {
            "generated_text": {i: ["prompt", a, a] for i, a in zip(idx, answers)},
            "rougeL_recall": {i: 1.0 for i in idx},
            "avg_gt_loss": {i: 1.0 for i in idx},
            "avg_paraphrased_loss": {i: 1.0 for i in idx},
            "average_perturb_loss": {i: [1.0 - math.log(ratio)] * 3 for i in idx},
            "truth_ratio": {i: ratio for i in idx},
        }
    return log


def test_reference_log_gives_forget_quality_only_for_the_same_items(fake_tofu, tmp_path):
    log = tmp_path / "retain_log.json"
    log.write_text(json.dumps(fake_log({"forget": [r["answer"] for r in FORGET]}, ratio=0.25)))
    bench = Tofu(TofuConfig(reference_log=str(log)), fake_tofu)
    scores = bench.score(fabricate(bench), None)
    from scipy.stats import ks_2samp
    assert scores.aggregates["forget_quality"] == pytest.approx(ks_2samp([0.5, 1.0], [0.25, 0.25]).pvalue)
    assert scores.per_sample["forget_quality_reference"][0]["source"] == str(log)
    log.write_text(json.dumps(fake_log({"forget": ["some other answer"]})))
    scores = Tofu(TofuConfig(reference_log=str(log)), fake_tofu).score(fabricate(bench), None)
    assert "forget_quality" not in scores.aggregates and "legacy_first_300" in scores.missing["forget_quality"]


def test_scores_from_a_fabricated_log_and_log_errors(tmp_path):
    log = tmp_path / "log.json"
    log.write_text(json.dumps(fake_log({"forget": ["a b", "c d"]}, ratio=0.5), indent=1))
    out = scores_from_logs(log, reference_log=log)
    agg = out["aggregates"]
    assert out["forget_truth_ratios"] == pytest.approx([0.5, 0.5])
    assert agg["truth_ratio_f"] == pytest.approx(0.5) and agg["forget_quality"] == pytest.approx(1.0)
    assert agg["prob_r"] == pytest.approx(math.exp(-1.0)) and agg["rouge_r"] == 1.0
    assert agg["prob_ra"] == pytest.approx(math.exp(-1) / (math.exp(-1) + 3 * 0.5 * math.exp(-1)))
    # harmonic mean of the nine retain-side values above: 1/1 x3 (ROUGE), e, 2.5, 2.5 (Prob), 2 x3 (truth ratio)
    assert agg["model_utility"] == pytest.approx(9 / (3 + math.e + 2.5 + 2.5 + 3 * 2))
    log.write_text('{\n "eval_log.json": {\n  oops\n}')
    with pytest.raises(HarnessError, match=r"log\.json at line 3"):
        read_eval_log(log)
    log.write_text(json.dumps({"eval_log.json": {}}))
    with pytest.raises(HarnessError, match="missing 'eval_log_forget.json'|missing field"):
        read_eval_log(log)
    with pytest.raises(HarnessError, match="does not exist"):
        read_eval_log(tmp_path / "none.json")


# --- parity with the TOFU authors' stored eval logs ------------------------------------------------
LOG_NAMES = [f"{m}_{r}_wd0.01_eval_log_aggregated.json" for m in ("llama2-7b", "phi")
             for r in ("full", "retain90", "retain95", "retain99")]


@functools.lru_cache(maxsize=None)
def log_scores(name: str) -> dict:
    """scores_from_logs of one stored log, computed once per test session (ROUGE takes seconds)."""
    return scores_from_logs(LOGS / name)


@needs_logs
def test_rouge_and_truth_ratio_reproduce_every_stored_value():
    """Our ROUGE-L recall of each stored generation and our truth ratio of each item's stored
    losses equal the values the TOFU authors stored (all 5816 items of the 8 logs)."""
    items = rouge_ok = ratio_ok = 0
    for name in LOG_NAMES:
        out = log_scores(name)
        for rows in out["per_item"].values():
            for r in rows:
                items += 1
                rouge_ok += abs(r["rouge_l_recall"] - r["stored_rouge_l_recall"]) <= 1e-6
                # stored values are float32: about 1e-6 relative
                ratio_ok += r["truth_ratio"] == pytest.approx(r["stored_truth_ratio"], rel=1e-5)
    print(f"\nTOFU logs: ROUGE-L recall reproduced {rouge_ok}/{items}, truth ratio {ratio_ok}/{items}")
    assert rouge_ok == items and ratio_ok == items and items == 2 * (300 + 100 + 117) * 4 + 2 * (300 + 300 + 200 + 40)


def tofu_formulas(log: dict) -> tuple[float, np.ndarray]:
    """Model utility and forget-set 1/R from a stored log, written directly with numpy/scipy
    from the published definitions (an independent check of our scoring functions)."""
    from scipy.stats import hmean as scipy_hmean

    values = []
    for key in ("eval_log.json", "eval_real_author_wo_options.json", "eval_real_world_wo_options.json"):
        part = log[key]
        gt = np.array(list(part["avg_gt_loss"].values()))
        pert = np.array(list(part["average_perturb_loss"].values()))
        para = np.array(list(part["avg_paraphrased_loss"].values()))
        if key == "eval_log.json":
            prob = np.exp(-gt).mean()
        else:
            prob = (np.exp(-gt) / (np.exp(-gt) + np.exp(-pert).sum(1))).mean()
        rouge = np.array(list(part["rougeL_recall"].values())).mean()
        inverse_r = np.exp(pert.mean(1) - para)
        values += [prob, rouge, np.maximum(0, 1 - 1 / inverse_r).mean()]
    forget = log["eval_log_forget.json"]
    inv = np.exp(np.array(list(forget["average_perturb_loss"].values())).mean(1)
                 - np.array(list(forget["avg_paraphrased_loss"].values())))
    return float(scipy_hmean(values)), inv


@needs_logs
@pytest.mark.parametrize("model", ["llama2-7b", "phi"])
def test_model_utility_and_forget_quality_of_the_stored_logs(model):
    from scipy.stats import ks_2samp

    from harness.scoring.aggregate import forget_quality

    full, retain = f"{model}_full_wd0.01_eval_log_aggregated.json", f"{model}_retain90_wd0.01_eval_log_aggregated.json"
    ref = log_scores(retain)["forget_truth_ratios"]
    # What scores_from_logs(full, reference_log=retain) returns, from the cached per-log scores.
    ours = {**log_scores(full)["aggregates"], "forget_quality": forget_quality(log_scores(full)["forget_truth_ratios"], ref)}
    ours_retain = {**log_scores(retain)["aggregates"], "forget_quality": forget_quality(ref, ref)}
    full_log, retain_log = read_eval_log(LOGS / full), read_eval_log(LOGS / retain)
    mu_full, inv_full = tofu_formulas(full_log)
    mu_retain, inv_retain = tofu_formulas(retain_log)
    assert ours["model_utility"] == pytest.approx(mu_full, rel=1e-9)
    assert ours_retain["model_utility"] == pytest.approx(mu_retain, rel=1e-9)
    # KS is invariant under R -> 1/R, so our R and TOFU's exp(perturbed - paraphrased) agree.
    assert ours["forget_quality"] == pytest.approx(ks_2samp(inv_full, inv_retain).pvalue, rel=1e-9)
    assert ours_retain["forget_quality"] == pytest.approx(1.0)
    # The stored averages are per-token means: avg_gt_loss = gt_loss / num_token_gt (so p̄ = exp(-avg)).
    part = full_log["eval_log_forget.json"]
    for i in list(part["avg_gt_loss"])[:20]:
        assert part["avg_gt_loss"][i] == pytest.approx(part["gt_loss"][i] / part["num_token_gt"][i], rel=1e-5)
    print(f"\n{model} forget10 (first 300), TOFU logs: full MU {ours['model_utility']:.4f} FQ {ours['forget_quality']:.3e}; "
          f"retain90 MU {ours_retain['model_utility']:.4f} FQ {ours_retain['forget_quality']:.3g}")
    assert 0.4 < ours["model_utility"] < 0.7 and ours["forget_quality"] < 1e-10


@needs_logs
@needs_data
def test_reference_log_matches_the_real_forget10_items():
    bench = Tofu(TofuConfig(split="forget10", legacy_first_300=True,
                            reference_log=str(LOGS / "llama2-7b_retain90_wd0.01_eval_log_aggregated.json")), TOFU, limit=None)
    from harness.benchmarks.tofu import log_forget_truth_ratios

    ratios, truths = log_forget_truth_ratios(bench.config.reference_log)
    assert truths == [q.answer for q in bench.eval_sets["forget"]] and len(ratios) == 300


# --- end to end ------------------------------------------------------------------------------
@needs_data
def test_end_to_end_run_on_the_tiny_model(tmp_path):
    from harness.cli import main

    results = tmp_path / "results"
    code = main(["run", "--methods", "ga", "--benchmark", "tofu", "--data-dir", str(TOFU), "--model", "tiny-random",
                 "--limit", "2", "--set", "finetune.epochs=1", "--set", "train.epochs=1",
                 "--set", "benchmark.answer_tokens=16", "--no-save-models", "--results-dir", str(results)])
    assert code == 0
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in results.glob("tofu/**/*.json"))}
    assert set(records) == {"retain", "target", "ga"}
    for method, rec in records.items():
        assert rec["status"] == "ok", method
        agg = rec["aggregates"]
        for key in ("model_utility", "forget_quality", "rouge_f", "prob_f", "truth_ratio_f", "prob_ra", "truth_ratio_wf", "es_f"):
            assert key in agg and math.isfinite(agg[key]), (method, key)
        assert rec["missing"]["privleak"] == PRIVLEAK_MISSING
        assert rec["data"]["source"] == str(TOFU) and rec["data"]["sizes"]["forget"] == 2
    assert records["retain"]["aggregates"]["forget_quality"] == pytest.approx(1.0)
    assert "Forget quality" in (results / "LEADERBOARD.md").read_text()
