"""The Harry Potter adapter and its public-domain stand-in: file formats, prompt splits, errors, scores by hand, end to end.

No copyrighted text: every passage below is our own sentence.
"""
import json
import math
import sys

import pytest

from harness.benchmarks.harry_potter import (
    BOOKS_PD_STAND_IN,
    BooksPD,
    BooksPDConfig,
    HarryPotter,
    HarryPotterConfig,
    files_help,
    first_words,
    join_pair,
    merge_blocks,
    passage_bleu,
    split_blank_lines,
    split_prompt,
    token_perplexity,
)
from harness.engines.base import TokenScores
from harness.errors import HarnessError
from harness.engines.plan import PlanOutputs

from conftest import data_root

PD = data_root() / "public-domain"
needs_pd = pytest.mark.skipif(not (PD / "tinyshakespeare.txt").is_file(), reason=f"public-domain text not at {PD}")

P1 = "The old lighthouse keeper climbed the stairs every night.\nHe counted each step aloud and smiled at the sea."
P2 = "A small red boat drifted past the harbour wall while gulls argued over bread."
P3 = "Too short."


def cfg(**kw) -> HarryPotterConfig:
    return HarryPotterConfig(**{"prompt_words": 4, **kw})


def ts(lps) -> TokenScores:
    n = len(lps)
    return TokenScores(list(lps), [False] * n, [0.0] * n, [1.0] * n)


# --- pure helpers ------------------------------------------------------------------------------------
def test_prompt_and_reference_are_split_by_words_keeping_whitespace():
    prompt, continuation, reference = split_prompt("one two\nthree  four five six", 3, 2)
    assert prompt == "one two\nthree"
    assert continuation == "  four five six"
    assert reference == "four five"
    assert split_prompt("one two\nthree  four five six", 3)[2] == "four five six"  # 0 = the whole rest
    assert split_prompt("  a b c  ", 1) == ("a", " b c", "b c")
    assert split_prompt("one two three", 3) is None  # nothing left to score
    assert first_words("a\nb c", 2) == "a\nb" and first_words("a b", 0) == "a b" and first_words("", 3) == ""
    with pytest.raises(ValueError):
        split_prompt("a b", 0)


def test_blank_line_passages_and_merging():
    text = "first block\nstill first\n\n\nsecond\r\n \r\nthird one here\n\n"
    assert split_blank_lines(text) == ["first block\nstill first", "second", "third one here"]
    blocks = ["a b", "c", "d e f", "g"]
    assert merge_blocks(blocks, 3) == ["a b\n\nc", "d e f"]  # the short tail "g" is dropped
    assert join_pair("a b", "c") == "a b c" and join_pair("a b", " c") == "a b c" and join_pair("a\n", "c") == "a\nc"


# --- accepted formats ------------------------------------------------------------------------------------
def test_passages_jsonl_with_text_field(tmp_path):
    (tmp_path / "passages.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in (P1, P2, P3)) + "\n")
    bench = HarryPotter(cfg(), tmp_path)
    assert bench.forget_passages == [P1, P2, P3]
    assert [it.prompt for it in bench.items] == ["The old lighthouse keeper", "A small red boat"]
    assert bench.items[0].reference == first_words(P1.split("keeper", 1)[1], 0)
    assert bench.data_info()["sizes"]["too_short"] == 1  # P3 is trained on, not evaluated
    assert [e.answer for e in bench.forget_train()] == [P1, P2, P3]
    assert all(e.prompt == "" for e in bench.forget_train())


def test_passages_json_array_of_strings_and_txt(tmp_path):
    (tmp_path / "passages.json").write_text(json.dumps([P1, P2]))
    assert HarryPotter(cfg(), tmp_path).forget_passages == [P1, P2]
    other = tmp_path / "txt"
    other.mkdir()
    (other / "passages.txt").write_text(f"{P1}\n\n{P2}\n   \n{P3}\n")
    bench = HarryPotter(cfg(reference_words=3), other)
    assert bench.forget_passages == [P1, P2, P3]
    assert bench.items[1].reference == "drifted past the"


def test_ready_made_prompt_completion_pairs(tmp_path):
    rows = [{"prompt": "The keeper climbed", "completion": " the stairs at night."},
            {"prompt": "Gulls argued", "response": "over a crust of bread."}]
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    bench = HarryPotter(cfg(reference_words=2), tmp_path)
    assert [(it.prompt, it.reference) for it in bench.items] == [("The keeper climbed", "the stairs"), ("Gulls argued", "over a")]
    # Without a passages file, each pair is also a forget passage.
    assert bench.forget_passages == ["The keeper climbed the stairs at night.", "Gulls argued over a crust of bread."]
    pairs = HarryPotter(cfg(train_on="pairs", prompt_template="### Question: {prompt}\\n"), tmp_path).forget_train()
    assert (pairs[0].prompt, pairs[0].answer) == ("### Question: The keeper climbed\n", " the stairs at night.")
    plan = HarryPotter(cfg(prompt_template="[INST] {prompt} [/INST]"), tmp_path).eval_plan()
    assert plan.generations["completion"][1].prompt == "[INST] Gulls argued [/INST]"
    assert plan.generations["completion"][1].max_new_tokens == 200

    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "x", "answer": "y"}))
    with pytest.raises(HarnessError, match=r"prompts.jsonl, record 1: .*\"completion\" \(or \"response\"\)"):
        HarryPotter(cfg(), tmp_path)


def test_missing_files_say_exactly_what_to_supply(tmp_path):
    with pytest.raises(HarnessError) as err:
        HarryPotter(cfg(), tmp_path)
    assert str(err.value) == f"no passages or prompts file in {tmp_path}. " + files_help(tmp_path)
    for name in ("passages.jsonl", "passages.json", "passages.txt", "prompts.jsonl", '"completion"', "blank lines",
                 "retain.jsonl", "wikitext.txt", str(tmp_path)):
        assert name in str(err.value), name
    with pytest.raises(HarnessError) as err:
        HarryPotter(cfg(), None)
    assert str(err.value) == files_help(None) and "--data-dir" in str(err.value)
    (tmp_path / "passages.txt").write_text(P3)
    with pytest.raises(HarnessError, match="no evaluation prompt could be made"):
        HarryPotter(cfg(), tmp_path)
    with pytest.raises(HarnessError, match="train_on"):
        HarryPotterConfig(train_on="all")
    with pytest.raises(HarnessError, match="prompt_template"):
        HarryPotterConfig(prompt_template="no placeholder")


def test_retain_holdout_and_perplexity_files_are_optional(tmp_path):
    (tmp_path / "passages.txt").write_text(f"{P1}\n\n{P2}")
    bench = HarryPotter(cfg(), tmp_path)
    assert bench.retain_train() is None
    assert set(bench.eval_plan().logprobs) == set()
    (tmp_path / "retain.txt").write_text("one two three four five\n\nsix seven")
    (tmp_path / "holdout.jsonl").write_text(json.dumps({"text": "never seen words here"}))
    (tmp_path / "wikitext.txt").write_text("w " * 10)
    bench = HarryPotter(cfg(chunk_words=3, ppl_chunk_words=4), tmp_path)
    assert [e.answer for e in bench.retain_train()] == ["one two three", "four five", "six seven"]
    plan = bench.eval_plan()
    assert [r.continuation for r in plan.logprobs["ppl"]] == ["w w w w", "w w w w", "w w"]
    assert all(r.prompt == "" for r in plan.logprobs["ppl"])
    assert len(plan.logprobs["mia_forget"]) == 2 and len(plan.logprobs["mia_holdout"]) == 1
    with pytest.raises(HarnessError, match="ppl_file=nope.txt"):
        HarryPotter(cfg(ppl_file="nope.txt"), tmp_path)


# --- scores by hand ------------------------------------------------------------------------------------
def test_scores_match_hand_computed_values(tmp_path):
    sacrebleu = pytest.importorskip("sacrebleu")
    (tmp_path / "passages.txt").write_text(
        "w1 w2 w3 w4 the owl flew home\n\nw1 w2 w3 w4 the cat sat on the mat tonight"
    )
    (tmp_path / "wikitext.txt").write_text("alpha beta gamma delta epsilon")
    bench = HarryPotter(cfg(ppl_chunk_words=3), tmp_path)
    refs = [it.reference for it in bench.items]
    assert refs == ["the owl flew home", "the cat sat on the mat tonight"]
    gens = ["the owls flew over the hill", "the cat sat on the mat tonight"]
    # Perplexity pieces "alpha beta gamma" and "delta epsilon": token log-probs -1, -2 and -3.
    outputs = PlanOutputs({"completion": gens}, {"ppl": [ts([-1.0, -2.0]), ts([-3.0])]}, {}, {})
    scores = bench.score(outputs, None)
    agg, rows = scores.aggregates, scores.per_sample["completions"]
    # ROUGE-L recall with the stemmer: "owls" stems to "owl"; LCS "the owl flew" = 3 of 4 reference tokens.
    assert rows[0]["rouge_l_recall"] == pytest.approx(0.75)
    assert rows[1]["rouge_l_recall"] == pytest.approx(1.0) and rows[1]["bleu"] == pytest.approx(100.0)
    assert rows[0]["bleu"] == pytest.approx(sacrebleu.corpus_bleu([gens[0]], [[refs[0]]]).score)
    assert agg["rouge_l"] == pytest.approx((0.75 + 1.0) / 2)
    assert agg["bleu"] == pytest.approx((rows[0]["bleu"] + 100.0) / 2)
    assert agg["bleu_corpus"] == pytest.approx(sacrebleu.corpus_bleu(gens, [refs]).score)
    # exp(total NLL / total tokens) = exp(6 / 3); per word: exp(6 / 5).
    assert agg["perplexity"] == pytest.approx(math.exp(2.0))
    assert agg["word_perplexity"] == pytest.approx(math.exp(6.0 / 5))
    assert token_perplexity([[-1.0, -2.0], [-3.0]]) == pytest.approx(math.exp(2.0))
    assert "lm-evaluation-harness" in scores.missing["zero_shot"] and "lm_eval --model hf" in scores.missing["zero_shot"]
    assert "perplexity" not in scores.missing
    assert "completion" not in rows[0] and "reference" not in rows[0]  # no book text in records by default


def test_missing_perplexity_file_is_named(tmp_path):
    (tmp_path / "passages.txt").write_text("w1 w2 w3 w4 the owl flew home")
    bench = HarryPotter(cfg(), tmp_path)
    scores = bench.score(PlanOutputs({"completion": ["the owl"]}, {}, {}, {}), None)
    assert "perplexity" not in scores.aggregates
    assert str(tmp_path / "wikitext.txt") in scores.missing["perplexity"]
    assert "benchmark.ppl_file" in scores.missing["perplexity"]


def test_missing_sacrebleu_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # import sacrebleu -> ImportError
    with pytest.raises(HarnessError, match="pip install sacrebleu"):
        passage_bleu("a b", "a b")


# --- books-pd ------------------------------------------------------------------------------------------
@needs_pd
def test_books_pd_is_built_deterministically_from_the_public_domain_text():
    a, b = BooksPD(None, PD), BooksPD(None, PD)
    c = a.config
    assert (c.prompt_words, c.reference_words, c.completion_tokens) == (50, 50, 64)
    assert a.forget_passages == b.forget_passages and a.fingerprint == b.fingerprint
    assert (len(a.forget_passages), len(a.retain_passages), len(a.holdout_passages)) == (32, 32, 32)
    groups = a.forget_passages + a.retain_passages + a.holdout_passages
    assert len(set(groups)) == len(groups)
    assert all(len(p.split()) >= 100 for p in groups)
    assert a.forget_passages[0].startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    assert len(a.items) == 32 and all(len(it.prompt.split()) == 50 and len(it.reference.split()) == 50 for it in a.items)
    assert a.ppl_chunks and not set(a.ppl_text.split("\n\n")) & set(groups)
    info = a.data_info()
    assert info["stand_in"].startswith(BOOKS_PD_STAND_IN)
    assert "public-domain stand-in for the Harry Potter books; not the published benchmark" in info["stand_in"]
    assert a.retain_train() and a.eval_plan().logprobs.keys() == {"ppl", "mia_forget", "mia_holdout"}
    small = BooksPD(BooksPDConfig(num_forget=3, num_retain=2, num_holdout=1), PD, limit=2)
    # Splits are consecutive runs of one passage list; --limit then keeps the first N of each.
    assert small.forget_passages == a.forget_passages[:2] and small.retain_passages == a.forget_passages[3:5]
    assert small.holdout_passages == [a.forget_passages[5]] and len(small.items) == 2


def test_books_pd_without_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("HARNESS_DATA_ROOT", raising=False)
    with pytest.raises(HarnessError, match=r"pass --data-dir \.\./shared/data/public-domain"):
        BooksPD()
    monkeypatch.setenv("HARNESS_DATA_ROOT", str(tmp_path))
    (tmp_path / "public-domain").mkdir()
    (tmp_path / "public-domain" / "tinyshakespeare.txt").write_text(
        "\n\n".join(" ".join(f"w{i}x{j}" for j in range(12)) for i in range(8))
    )
    bench = BooksPD(BooksPDConfig(prompt_words=5, reference_words=5, num_forget=2, num_retain=2, num_holdout=2,
                                  ppl_passages=1))
    assert [len(p.split()) for p in bench.forget_passages] == [12, 12]
    assert bench.ppl_text.startswith("w6x0")
    with pytest.raises(HarnessError, match="lower them"):
        BooksPD(BooksPDConfig(prompt_words=5, reference_words=5, num_forget=8))


@needs_pd
def test_run_end_to_end_on_the_tiny_model(tmp_path):
    from harness.cli import main

    code = main([
        "run", "--methods", "ga", "--benchmark", "books-pd", "--data-dir", str(PD), "--model", "tiny-random",
        "--limit", "2", "--set", "finetune.epochs=1", "--set", "train.epochs=1",
        "--set", "benchmark.completion_tokens=8", "--no-save-models", "--results-dir", str(tmp_path),
    ])
    assert code == 0
    records = {p.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("books-pd/*/*/*.json")}
    assert set(records) == {"target", "retain", "ga"}
    for rec in records.values():
        assert rec["status"] == "ok"
        agg = rec["aggregates"]
        for key in ("bleu", "rouge_l", "perplexity", "auc_min_k", "privleak"):
            assert math.isfinite(agg[key]), key
        assert 0 <= agg["bleu"] <= 100 and 0 <= agg["rouge_l"] <= 1 and agg["perplexity"] > 1
        assert len(rec["per_sample"]["completions"]) == 2
        assert rec["data"]["stand_in"].startswith(BOOKS_PD_STAND_IN)
        assert "zero_shot" in rec["missing"]
    assert records["retain"]["aggregates"]["privleak"] == pytest.approx(0.0)
    assert records["ga"]["config"]["train"]["lr"] == 1e-4
    assert "stand-in data" in (tmp_path / "LEADERBOARD.md").read_text()
