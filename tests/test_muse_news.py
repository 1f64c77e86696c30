"""The MUSE-News adapter: prompts and stops on fixed strings, loading, variants, scoring by hand, end to end."""
import json
import math
import sys
import types
import zlib
from pathlib import Path

import pytest

from harness.benchmarks.muse_news import (
    PUBLISHED_LLAMA2_7B,
    MuseNews,
    MuseNewsConfig,
    chunk_by_words,
    cut_answer,
    knowmem_prompt,
)
from harness.engines.base import TokenScores
from harness.errors import HarnessError
from harness.engines.plan import PlanOutputs
from harness.scoring.privacy import MUSE_NEWS_RETRAIN_AUC

from conftest import data_root

MUSE = data_root() / "muse-news"
needs_data = pytest.mark.skipif(not (MUSE / "verbmem" / "forget.json").is_file(), reason=f"MUSE-News data not at {MUSE}")


# --- pure helpers on fixed strings ------------------------------------------------------------
def test_knowmem_prompt_is_muses_exact_string():
    prompt = knowmem_prompt([("Q1?", "A1"), ("Q2?", "A2")], "Q3?")
    assert prompt == "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\nQuestion: Q3?\nAnswer: "
    assert prompt.endswith("Answer: ")  # MUSE's trailing space is kept
    assert knowmem_prompt([], "Q?") == "Question: Q?\nAnswer: "


def test_answers_are_cut_at_the_earliest_muse_stop():
    assert cut_answer("1472\n\nQuestion: When?") == "1472"
    assert cut_answer("Edilnord\nQuestion: next") == "Edilnord"
    assert cut_answer("Paris Question: next") == "Paris "
    assert cut_answer("a\nb\n\nc") == "a\nb"  # a single newline is not a stop
    assert cut_answer("no stop at all") == "no stop at all"
    assert cut_answer("x Question:\n\ny") == "x "  # earliest of several


def test_chunking_by_words_keeps_inner_whitespace_and_crosses_articles():
    assert chunk_by_words(["a b c", "d e"], 2) == ["a b", "c\n\nd", "e"]
    assert chunk_by_words(["a\n\nb  c"], 3) == ["a\n\nb  c"]
    texts = ["one two three", "four", "five six seven eight"]
    chunks = chunk_by_words(texts, 3)
    assert [len(c.split()) for c in chunks] == [3, 3, 2]
    assert " ".join(chunks).split() == " ".join(texts).split()
    with pytest.raises(ValueError):
        chunk_by_words(["a"], 0)


def test_config_is_validated():
    with pytest.raises(HarnessError, match="forget_source"):
        MuseNewsConfig(forget_source="scal9")
    with pytest.raises(HarnessError, match="privleak_reference"):
        MuseNewsConfig(privleak_reference="retrain")


def test_published_rows_have_the_four_columns():
    assert PUBLISHED_LLAMA2_7B["Target"] == {"verbmem_f": 58.4, "knowmem_f": 63.9, "knowmem_r": 55.2, "privleak": -99.8}
    assert {c.key for c in MuseNews.columns} >= set(PUBLISHED_LLAMA2_7B["GA"])
    assert [c.header() for c in MuseNews.columns[:4]] == ["VerbMem f ↓", "KnowMem f ↓", "KnowMem r ↑", "PrivLeak → 0"]


# --- a tiny layout of our own, for loading errors and hand-checked scores -----------------------
def write_layout(root: Path) -> Path:
    def put(rel, obj):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=1))

    put("verbmem/forget.json", [{"prompt": "p one", "gt": "w x y z"}, {"prompt": "p two", "gt": "a b c d"},
                                {"prompt": "p three", "gt": "q"}])
    put("knowmem/forget_qa.json", [{"question": "When?", "answer": "1472"}, {"question": "Where?", "answer": "Paris France"}])
    put("knowmem/retain_qa.json", [{"question": "Who?", "answer": "right"}, {"question": "What?", "answer": "right"}])
    put("knowmem/forget_qa_icl.json", [{"question": "fq", "answer": "fa"}])
    put("knowmem/retain_qa_icl.json", [{"question": "rq", "answer": "ra"}])
    put("privleak/forget.json", ["forget text one", "forget text two"])
    put("privleak/holdout.json", ["holdout text one", "holdout text two"])
    put("raw/forget.json", ["f1 f2 f3", "f4 f5"])
    for k in (1, 2, 3, 4):
        put(f"sust/forget_{k}.json", ["f1 f2 f3", "f4 f5"] if k == 1 else [f"s{k}a words", f"s{k}b words"])
    return root


def ts(logp: float, n: int = 5, match=None, mu: float = 0.0, sigma: float = 1.0) -> TokenScores:
    match = [True] * n if match is None else match
    return TokenScores([logp] * n, match, [mu] * n, [sigma] * n)


def fabricate(bench: MuseNews, verbmem=("w x y z", "a b", ""), es=None) -> PlanOutputs:
    gens = {
        "verbmem_f": list(verbmem),
        "knowmem_f": ["1472\n\nQuestion: When?", "Paris Question: Who?"],   # cut to "1472" and "Paris "
        "knowmem_r": ["wrong\nQuestion: x", "right"],
    }
    es = es if es is not None else [[False, True, True, True], [True] * 4, []]
    lps = {
        "verbmem_gt": [TokenScores([-1.0] * len(m), m, [0.0] * len(m), [1.0] * len(m)) for m in es],
        # Min-K% (k = 0.4) of a constant text is -logp: forget [1, 3], holdout [2, 4].
        "privleak_forget": [ts(-1.0), ts(-3.0)],
        "privleak_holdout": [ts(-2.0), ts(-4.0)],
    }
    return PlanOutputs(gens, lps, {}, {})


def test_scores_match_hand_computed_values(tmp_path):
    bench = MuseNews(data_dir=write_layout(tmp_path))
    plan = bench.eval_plan()
    assert plan.generations["knowmem_f"][0].prompt == "Question: fq\nAnswer: fa\n\nQuestion: When?\nAnswer: "
    assert plan.generations["knowmem_r"][1].prompt == "Question: rq\nAnswer: ra\n\nQuestion: What?\nAnswer: "
    assert plan.generations["knowmem_f"][0].stop == ("\n\n", "\nQuestion", "Question:")
    assert plan.generations["verbmem_f"][0].max_new_tokens == 128 and plan.generations["knowmem_f"][0].max_new_tokens == 32
    assert plan.logprobs["verbmem_gt"][1].prompt == "p two" and plan.logprobs["verbmem_gt"][1].continuation == "a b c d"
    # MUSE's conventions: no EOS on scored texts, PrivLeak texts whole, generations decoded with clean-up.
    assert not any(r.add_eos for requests in plan.logprobs.values() for r in requests)
    assert all(r.full_context for r in plan.logprobs["privleak_forget"] + plan.logprobs["privleak_holdout"])
    # Min-K%++ reads mu/sigma: PrivLeak texts go to an engine with the full distribution, nothing else does.
    assert all(r.needs_distribution for r in plan.logprobs["privleak_forget"] + plan.logprobs["privleak_holdout"])
    assert not any(r.needs_distribution for r in plan.logprobs["verbmem_gt"])
    assert not any(r.full_context for r in plan.logprobs["verbmem_gt"])
    assert all(r.clean_up_spaces for requests in plan.generations.values() for r in requests)
    assert plan.logprobs["privleak_forget"][0].prompt == ""

    scores = bench.score(fabricate(bench), None)
    agg = scores.aggregates
    # VerbMem: F1 1, then "a b" vs "a b c d" (P 1, R 1/2, F1 2/3), then "" vs "q" (0): mean x 100.
    assert agg["verbmem_f"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    # KnowMem f: "1472" exact (1), "Paris " vs "Paris France" (2/3); KnowMem r: "wrong" (0), "right" (1).
    assert agg["knowmem_f"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert agg["knowmem_r"] == pytest.approx(50.0)
    assert [r["generation"] for r in scores.per_sample["knowmem_f"]] == ["1472", "Paris "]
    # ES: 1 - 1/4 and 1; the empty (truncated-away) item is left out, not counted as 0.
    assert agg["es_f"] == pytest.approx((0.75 + 1.0) / 2)
    assert scores.per_sample["es_f"][2]["extraction_strength"] is None
    # MUSE AUC (holdout = 1, decision -score): holdout -2 beats forget -3 only: 1 of 4 pairs.
    assert agg["auc_min_k"] == pytest.approx(0.25)
    assert agg["auc_loss"] == pytest.approx(0.25) and agg["auc_mink_pp"] == pytest.approx(0.25)
    z = lambda loss, text: loss / len(zlib.compress(text.encode()))  # noqa: E731
    zf = [z(1.0, "forget text one"), z(3.0, "forget text two")]
    zh = [z(2.0, "holdout text one"), z(4.0, "holdout text two")]
    pairs = [(h, f) for h in zh for f in zf]
    assert agg["auc_zlib"] == pytest.approx(sum(-h > -f for h, f in pairs) / len(pairs))
    # No evaluated reference: the published retrain AUC, recorded.
    assert agg["privleak"] == pytest.approx((0.25 - 0.4772) / 0.4772 * 100)
    assert agg["privleak_reference_auc"] == MUSE_NEWS_RETRAIN_AUC
    assert "no evaluated retain model" in scores.per_sample["privleak"][0]["reference"]
    assert scores.reference_values["auc"] == pytest.approx(0.25)
    assert not scores.missing


def test_privleak_against_evaluated_and_published_references(tmp_path):
    root = write_layout(tmp_path)
    bench = MuseNews(data_dir=root)
    out = fabricate(bench)
    evaluated = bench.score(out, {"auc": 0.5}).aggregates
    assert evaluated["privleak"] == pytest.approx(-50.0) and evaluated["privleak_reference_auc"] == 0.5
    own = bench.score(out, bench.score(out, None).reference_values).aggregates
    assert own["privleak"] == pytest.approx(0.0)  # the retain model against itself
    unusable = bench.score(out, {"auc": 0.0})
    assert unusable.aggregates["privleak_reference_auc"] == MUSE_NEWS_RETRAIN_AUC
    assert "unusable" in unusable.per_sample["privleak"][0]["reference"]
    published = MuseNews(MuseNewsConfig(privleak_reference="published"), root).score(out, {"auc": 0.5}).aggregates
    assert published["privleak"] == pytest.approx((0.25 - 0.4772) / 0.4772 * 100)


def test_es_truncated_away_is_named_missing(tmp_path):
    bench = MuseNews(data_dir=write_layout(tmp_path))
    scores = bench.score(fabricate(bench, es=[[], [], []]), None)
    assert "es_f" not in scores.aggregates and "eval.max_length" in scores.missing["es_f"]


def test_limit_cuts_every_split_but_the_icl_pairs(tmp_path):
    bench = MuseNews(data_dir=write_layout(tmp_path), limit=1)
    info = bench.data_info()
    assert info["sizes"]["verbmem"] == 1 and info["sizes"]["knowmem_forget"] == 1 and info["sizes"]["privleak_holdout"] == 1
    assert info["sizes"]["icl_forget"] == 1 and info["limit"] == 1  # all ICL pairs (this layout has one)
    assert [e.answer for e in bench.forget_train()] == ["f1 f2 f3"]


def test_malformed_and_incomplete_files_name_path_and_line(tmp_path):
    root = write_layout(tmp_path)
    bad = root / "knowmem" / "forget_qa.json"
    bad.write_text('[\n {"question": "q", "answer": "a"},\n {"question": "q" "answer": "a"}\n]')
    with pytest.raises(HarnessError, match=f"malformed JSON in {bad} at line 3, column"):
        MuseNews(data_dir=root)
    bad.write_text('[{"question": "q", "answer": "a"}, {"question": "q"}]')
    with pytest.raises(HarnessError, match=rf"{bad}, record 2: missing field\(s\) answer"):
        MuseNews(data_dir=root)
    write_layout(root)
    text = root / "privleak" / "holdout.json"
    text.write_text('[\n "one",\n "two\n]')
    with pytest.raises(HarnessError, match=f"malformed JSON in {text} at line 3"):
        MuseNews(data_dir=root)
    text.write_text('["one", 2]')
    with pytest.raises(HarnessError, match=f"{text}, record 2: expected a string"):
        MuseNews(data_dir=root)
    text.unlink()
    with pytest.raises(HarnessError, match="does not exist; check --data-dir"):
        MuseNews(data_dir=root)


def test_retain1_offline_when_absent_is_a_clear_error(tmp_path):
    with pytest.raises(HarnessError, match="retain_source=sust"):
        MuseNews(MuseNewsConfig(retain_source="retain1"), write_layout(tmp_path))


def test_online_loads_the_hub_splits_and_wraps_failures(monkeypatch):
    calls = []

    def fake_load(repo, subset, split):
        calls.append((repo, subset, split))
        if subset == "verbmem":
            return [{"prompt": "p", "gt": "g"}]
        if subset == "knowmem":
            return [{"question": "q", "answer": "a"}]
        return [{"text": f"{subset} {split} text"}]

    monkeypatch.setattr(sys.modules[MuseNews.__module__], "hub_unreachable", lambda: None)   # the hub is "reachable"
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load))
    bench = MuseNews()
    info = bench.data_info()
    assert ("muse-bench/MUSE-News", "raw", "retain1") in calls and info["stand_in"] is None
    assert info["source"] == "Hugging Face hub muse-bench/MUSE-News" and len(info["fingerprint"]) == 16
    assert [e.answer for e in bench.retain_train()] == ["raw retain1 text"]
    scal = MuseNews(MuseNewsConfig(forget_source="scal2"))
    assert [e.answer for e in scal.forget_train()] == ["scal forget_2 text"]

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(HarnessError, match="pass --data-dir"):
        MuseNews()


# --- the shared copy of the real data --------------------------------------------------------
@needs_data
def test_real_data_loads_with_limit_and_declares_the_stand_in():
    bench = MuseNews(data_dir=MUSE, limit=3)
    info = bench.data_info()
    assert info["sizes"] == {
        "verbmem": 3, "knowmem_forget": 3, "knowmem_retain": 3, "icl_forget": 10, "icl_retain": 10,
        "privleak_forget": 3, "privleak_holdout": 3, "forget_articles": 3, "retain_articles": 3,
    }
    assert len(info["fingerprint"]) == 16 and int(info["fingerprint"], 16) >= 0
    assert "stand-in" in info["stand_in"] and "raw/retain2" in info["stand_in"] and "2, 3, 4" in info["stand_in"]
    forget, retain = bench.forget_train(), bench.retain_train()
    assert forget and retain and all(e.prompt == "" for e in forget + retain)
    assert all(len(e.answer.split()) <= bench.config.chunk_words for e in forget + retain)
    raw = json.loads((MUSE / "raw" / "forget.json").read_text())[:3]
    assert " ".join(e.answer for e in forget).split() == " ".join(raw).split()
    sust2 = json.loads((MUSE / "sust" / "forget_2.json").read_text())[:3]
    assert " ".join(e.answer for e in retain).split() == " ".join(sust2).split()
    prompt = bench.eval_plan().generations["knowmem_r"][0].prompt
    assert prompt.count("Question: ") == 11 and prompt.endswith("\nAnswer: ")


@needs_data
def test_scal_is_the_concatenation_of_sust_folds_and_the_stand_in_avoids_them():
    folds = {k: json.loads((MUSE / "sust" / f"forget_{k}.json").read_text()) for k in (1, 2, 3, 4)}
    scal = MuseNews(MuseNewsConfig(forget_source="scal2", retain_max_articles=0), MUSE)
    assert scal.forget_articles == folds[1] + folds[2]
    assert scal.retain_articles == folds[3] + folds[4] and "3, 4" in scal.data_info()["stand_in"]
    sust = MuseNews(MuseNewsConfig(forget_source="sust3", retain_max_articles=0), MUSE)
    assert sust.forget_articles == folds[3] and sust.retain_articles == folds[1] + folds[2] + folds[4]
    whole = MuseNews(MuseNewsConfig(forget_source="scal4"), MUSE)
    assert whole.retain_train() is None and "no retain corpus" in whole.data_info()["stand_in"]


@needs_data
def test_run_end_to_end_on_the_tiny_model(tmp_path):
    from harness.cli import main

    code = main([
        "run", "--methods", "ga", "--benchmark", "muse-news", "--data-dir", str(MUSE), "--model", "tiny-random",
        "--limit", "2", "--set", "finetune.epochs=1", "--set", "train.epochs=1", "--set", "eval.max_length=256",
        "--set", "finetune.max_length=256", "--set", "train.max_length=256",
        "--set", "benchmark.verbmem_tokens=8", "--set", "benchmark.knowmem_tokens=4",
        "--no-save-models", "--results-dir", str(tmp_path),
    ])
    assert code == 0
    records = {p.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("muse-news/*/*/*.json")}
    assert set(records) == {"target", "retain", "ga"}
    for rec in records.values():
        assert rec["status"] == "ok"
        agg = rec["aggregates"]
        for key in ("verbmem_f", "knowmem_f", "knowmem_r", "privleak", "auc_min_k", "auc_loss", "auc_zlib", "auc_mink_pp"):
            assert math.isfinite(agg[key]), key
        assert 0 <= agg["verbmem_f"] <= 100 and 0 <= agg["knowmem_r"] <= 100
        assert "stand-in" in rec["data"]["stand_in"]
        # 256 tokens of the byte-level tokenizer hold no verbmem gt after a ~4500-byte prompt.
        assert "es_f" in rec["missing"]
    assert records["retain"]["aggregates"]["privleak"] == pytest.approx(0.0)
    assert records["ga"]["aggregates"]["privleak_reference_auc"] == pytest.approx(records["retain"]["aggregates"]["auc_min_k"])
    assert records["ga"]["config"]["train"]["schedule"] == "constant" and records["ga"]["config"]["train"]["lr"] == 1e-5
    assert "stand-in data" in (tmp_path / "LEADERBOARD.md").read_text()


def test_offline_without_data_dir_fails_at_once_and_names_the_local_copy(monkeypatch):
    """Issue 25: offline, the error came after about 27 s of the datasets library's retries and did not
    point at the local copy the README names."""
    import time

    def never(*args, **kwargs):
        raise AssertionError("datasets was asked although the hub is known to be unreachable")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from harness.data import hub

    hub.hub_unreachable.cache_clear()
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=never))
    started = time.perf_counter()
    with pytest.raises(HarnessError, match=r"HF_HUB_OFFLINE is set. Pass --data-dir .*--data-dir ../shared/data/muse-news"):
        MuseNews()
    assert time.perf_counter() - started < 5
    hub.hub_unreachable.cache_clear()


def test_reference_and_gradnorm_attacks(tmp_path):
    """Reference: own loss minus the retain model's per-text loss (offered in its reference values);
    GradNorm: the engine's gradient norm, only when benchmark.mia_gradnorm asks for it."""
    bench = MuseNews(data_dir=write_layout(tmp_path))
    assert not any(r.grad_norm for r in bench.eval_plan().logprobs["privleak_forget"])
    outputs = fabricate(bench)   # losses: forget [1, 3], holdout [2, 4]
    own = bench.score(outputs, None)
    assert own.reference_values["mia_losses"] == {"forget": [1.0, 3.0], "holdout": [2.0, 4.0]}
    assert "auc_reference" not in own.aggregates and "auc_reference" not in own.missing
    # reference losses forget [0, 3], holdout [0, 0] -> scores forget [1, 0], holdout [2, 4]: no holdout
    # text looks more like a member than a forget text, so the MUSE-convention AUC is 0.
    scores = bench.score(outputs, {"mia_losses": {"forget": [0.0, 3.0], "holdout": [0.0, 0.0]}})
    assert scores.aggregates["auc_reference"] == pytest.approx(0.0)
    assert [r["reference"] for r in scores.per_sample["mia"]] == [1.0, 0.0, 2.0, 4.0]
    assert "needs the retain model" in bench.score(outputs, {"auc": 0.5}).missing["auc_reference"]
    # the retain model against itself: every reference score 0, AUC 0.5
    assert bench.score(outputs, own.reference_values).aggregates["auc_reference"] == pytest.approx(0.5)

    gn = MuseNews(MuseNewsConfig(mia_gradnorm=True), data_dir=write_layout(tmp_path / "g"))
    assert all(r.grad_norm and r.needs_distribution for r in gn.eval_plan().logprobs["privleak_holdout"])
    outputs = fabricate(gn)
    for group, norms in (("privleak_forget", [0.1, 0.5]), ("privleak_holdout", [0.3, 0.9])):
        for s, g in zip(outputs.logprobs[group], norms):
            s.grad_norm = g
    # pairs (holdout, forget) where holdout looks more member-like (lower norm): 0.3 < 0.5 only: 1 of 4
    assert gn.score(outputs, None).aggregates["auc_gradnorm"] == pytest.approx(0.25)
