"""`harness import`: published per-sample outputs re-scored by our metrics, checked against their publishers.

The publishers' own aggregates (the MUSE authors' out.json / auc.json, OpenUnlearning's agg_value) are read
here only to compare; the importers never read them.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.imports import reader
from harness.imports.records import write_imported
from harness.leaderboard.paper_tables import load_paper, render_paper_table
from harness.run.results import load_records

from conftest import data_root

MUSE = data_root() / "muse-news-outputs"
needs_muse = pytest.mark.skipif(not (MUSE / "verbmem").is_dir(), reason="MUSE authors' outputs not under HARNESS_DATA_ROOT")
MODELS = {"target": "target", "retrain": "retrain", "ga": "ga/step=102", "npo": "npo/step=102"}
RETRAIN_AUC = 0.4772   # the MUSE paper's News retrain AUC (reference.md section 2)


def mirror(src: Path, dst: Path) -> Path:
    """A copy of ``src`` made of symlinks, so that a test can replace one file cheaply."""
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    return dst


def replace_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.unlink()
    path.write_text(json.dumps(change(data)))


def authors(rel: str, part: str) -> float:
    if part == "privleak":
        return json.loads((MUSE / "privleak/out/bbc" / rel / "auc.json").read_text())["forget_holdout"]["Min-40%"]
    kind, split = part.split("/")
    return json.loads((MUSE / f"{kind}/out/bbc" / rel / split / "out.json").read_text())["mean_rougeL"]


@needs_muse
def test_muse_import_gives_the_authors_aggregates(tmp_path, capsys):
    assert main(["import", "muse", str(MUSE), "--results-dir", str(tmp_path)]) == 0
    records = {r["imported"]["model"]: r for r in load_records(tmp_path)}
    assert sorted(records) == sorted(MODELS)
    for name, rel in MODELS.items():
        r = records[name]
        a = r["aggregates"]
        assert r["kind"] == "imported" and r["imported"]["commit"] == "9b89f0d9ecd0dec2477334e885705d81458967cb"
        assert r["imported"]["repository"] == "github.com/jaechan-repo/muse_bench"
        assert r["imported"]["checkpoint"] == (rel.split("/")[1] if "/" in rel else None)
        assert round(a["verbmem_f"], 2) == round(100 * authors(rel, "verbmem/forget"), 2)
        assert round(a["knowmem_f"], 2) == round(100 * authors(rel, "knowmem/forget"), 2)
        assert round(a["knowmem_r"], 2) == round(100 * authors(rel, "knowmem/retain"), 2)
        auc = authors(rel, "privleak")
        assert a["auc_min_k"] == pytest.approx(auc, abs=1e-9)
        assert round(a["privleak"], 2) == round((auc - RETRAIN_AUC) / RETRAIN_AUC * 100, 2)
        assert len(r["per_sample"]["verbmem_f"]) == 100 and len(r["per_sample"]["mia"]) == 200
    # the retrain model's own AUC is the reference, and it is the paper's 0.4772
    assert records["retrain"]["aggregates"]["privleak_reference_auc"] == pytest.approx(RETRAIN_AUC, abs=1e-9)
    assert records["target"]["aggregates"]["verbmem_f"] == pytest.approx(58.4375, abs=1e-4)


@needs_muse
def test_muse_paper_table_shows_the_regenerated_values(tmp_path):
    records = reader("muse")(MUSE)
    write_imported(records, tmp_path)
    text = render_paper_table(load_paper("muse_news"), load_records(tmp_path))
    header = next(line for line in text.splitlines() if line.startswith("| Row"))
    headers = [h.strip() for h in header.strip("|").split("|")]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| Row")}
    col = headers.index("PrivLeak imported")
    assert rows["Target"][col] == "-99.8" and rows["GA"][col] == "5.2" and rows["NPO"][col] == "24.4"
    assert rows["Retrain"][headers.index("KnowMem f imported")] == "33.1"
    assert rows["Retrain"][headers.index("KnowMem f authors' archive")] == "33.1"
    assert rows["GA_GDR"][col] == "not declared"
    assert rows["Target"][headers.index("VerbMem f ↓ ours")] == "not run"   # imported records are not "ours"
    assert "github.com/jaechan-repo/muse_bench @ 9b89f0d" in text


def test_a_difference_from_the_published_value_is_footnoted(tmp_path):
    paper = load_paper("muse_news")
    record = {"schema": 1, "status": "ok", "kind": "imported", "benchmark": "muse-news", "model": "M [imported]",
              "method": "ga", "config_id": "x", "seed": 0, "path": "p.json",
              "imported": {"model": "ga", "checkpoint": "step=102", "repository": "r", "commit": "c", "format": "muse"},
              "aggregates": {"verbmem_f": 1.0, "knowmem_f": 0.0, "knowmem_r": 0.0, "privleak": 5.2}}
    text = render_paper_table(paper, [record])
    assert "GA VerbMem f: the published outputs re-scored give 1.0, the authors' archive value is 0.0." in text
    other = dict(record, imported=dict(record["imported"], checkpoint="step=51"))
    text = render_paper_table(paper, [other])
    assert "the paper's choice is step=102: import it with --checkpoint ga=step=102" in text


@needs_muse
def test_muse_import_refuses_bad_folders(tmp_path, capsys):
    with pytest.raises(HarnessError, match="not the MUSE authors' layout"):
        reader("muse")(data_root() / "tofu")
    copy = mirror(MUSE, tmp_path / "m")
    shutil.rmtree(copy / "knowmem/out/bbc/npo/step=102/retain")
    with pytest.raises(HarnessError, match="lacks the KnowMem retain split"):
        reader("muse")(copy)
    copy = mirror(MUSE, tmp_path / "n")
    replace_json(copy / "verbmem/out/bbc/ga/step=102/forget/history.json", lambda h: h[:99])
    with pytest.raises(HarnessError, match="99 responses but 100 references"):
        reader("muse")(copy)
    copy = mirror(MUSE, tmp_path / "o")
    replace_json(copy / "privleak/out/bbc/target/holdout.json", lambda h: h[1:] + h[:1])
    with pytest.raises(HarnessError, match="text 0 differs"):
        reader("muse")(copy)
    copy = mirror(MUSE, tmp_path / "p")
    (copy / "verbmem/out/bbc/ga/step=51/forget").mkdir(parents=True)
    with pytest.raises(HarnessError, match=r"model 'ga' has 2 checkpoints.*--checkpoint ga=CHECKPOINT"):
        reader("muse")(copy)
    assert main(["import", "muse", str(MUSE), "--results-dir", str(tmp_path / "r"),
                 "--checkpoint", "ga=step=102", "--checkpoint", "ga=step=51"]) == 2
    assert "model 'ga' is named twice" in capsys.readouterr().err
    records = reader("muse")(MUSE)
    with pytest.raises(HarnessError, match="named twice"):
        write_imported(records + records[:1], tmp_path / "r")


# --------------------------------------------------------------------------- OpenUnlearning logs

OU_MUSE = data_root() / "openunlearning-logs" / "muse-news-smollm2-135m-4items"
TOFU = data_root() / "tofu"
needs_ou = pytest.mark.skipif(not OU_MUSE.is_dir() or not (data_root() / "muse-news").is_dir(),
                              reason="OpenUnlearning log or MUSE-News data not under HARNESS_DATA_ROOT")
needs_tofu = pytest.mark.skipif(not (TOFU / "forget01.json").is_file(), reason="TOFU data not under HARNESS_DATA_ROOT")


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@needs_ou
def test_openunlearning_muse_log_imports_and_shows_in_the_leaderboard(tmp_path):
    from rouge_score import rouge_scorer

    assert main(["import", "openunlearning", str(OU_MUSE), "--data", str(data_root() / "muse-news"),
                 "--results-dir", str(tmp_path)]) == 0
    [record] = load_records(tmp_path)
    log = json.loads((OU_MUSE / "MUSE_EVAL.json").read_text())
    # hand computation from the log's texts: ROUGE-L F1, stemmer off, mean x 100
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rows = log["retain_knowmem_ROUGE"]["value_by_index"].values()
    assert record["aggregates"]["knowmem_r"] == pytest.approx(
        100 * sum(scorer.score(r["ground_truth"], r["generation"])["rougeL"].fmeasure for r in rows) / len(rows))
    assert record["aggregates"]["knowmem_r"] == pytest.approx(25.0)   # OpenUnlearning's own agg_value x 100
    # AUC by hand: the share of (forget, holdout) pairs where the holdout text scores lower (MUSE's convention)
    f = [v["score"] for v in log["mia_min_k"]["forget"]["value_by_index"].values()]
    h = [v["score"] for v in log["mia_min_k"]["holdout"]["value_by_index"].values()]
    auc = sum((y < x) + 0.5 * (y == x) for x in f for y in h) / (len(f) * len(h))
    assert record["aggregates"]["auc_min_k"] == pytest.approx(auc)
    assert record["aggregates"]["privleak"] == pytest.approx((auc - RETAIN_AUC) / RETAIN_AUC * 100)
    assert record["imported"]["commit"] == "d3d7cf9" and record["kind"] == "imported"
    assert main(["leaderboard", "--results-dir", str(tmp_path)]) == 0
    board = (tmp_path / "LEADERBOARD.md").read_text()
    assert "OpenUnlearning run [imported]" in board and "imported from locuslab/open-unlearning@d3d7cf9" in board
    with pytest.raises(HarnessError, match="cannot be checked without"):
        reader("openunlearning")(OU_MUSE)


RETAIN_AUC = RETRAIN_AUC


def tofu_log(n: int, shift: float) -> dict:
    """An OpenUnlearning TOFU_EVAL.json over the first n items of forget01 and retain, as its evaluator writes it."""
    forget, retain = lines(TOFU / "forget01.json")[:n], lines(TOFU / "retain_perturbed.json")[:n]
    log = {}
    for prefix, items in (("forget", forget), ("retain", retain)):
        log[f"{prefix}_Q_A_ROUGE"] = {"agg_value": 0.0, "value_by_index": {
            str(i): {"ground_truth": it["answer"], "generation": " ".join(it["answer"].split()[: 3 + i]), "input": it["question"]}
            for i, it in enumerate(items)}}
        log[f"{prefix}_Q_A_Prob"] = {"agg_value": 0.0, "value_by_index": {
            str(i): {"prob": 0.1 * (i + 1), "avg_loss": 1.0 + i} for i in range(n)}}
        log[f"{prefix}_Q_A_PARA_Prob"] = {"agg_value": 0.0, "value_by_index": {
            str(i): {"prob": 0.2, "avg_loss": 1.0 + shift * i} for i in range(n)}}
        log[f"{prefix}_Q_A_PERT_Prob"] = {"agg_value": 0.0, "value_by_index": {
            str(i): {"prob": [0.1, 0.1], "avg_loss": [1.5, 2.5 - shift]} for i in range(n)}}
    return log


@needs_tofu
def test_openunlearning_tofu_log_rescored_by_hand(tmp_path):
    import math

    from rouge_score import rouge_scorer
    from scipy.stats import ks_2samp

    run, retain = tmp_path / "runs" / "tofu_GradAscent", tmp_path / "retain"
    run.mkdir(parents=True), retain.mkdir()
    (run / "TOFU_EVAL.json").write_text(json.dumps(tofu_log(3, 0.5)))
    (retain / "TOFU_EVAL.json").write_text(json.dumps(tofu_log(3, -0.25)))
    assert main(["import", "openunlearning", str(tmp_path / "runs"), "--data", str(TOFU), "--split", "forget01",
                 "--retain-log", str(retain / "TOFU_EVAL.json"), "--source-commit", "abc1234",
                 "--results-dir", str(tmp_path / "r")]) == 0
    [record] = load_records(tmp_path / "r")
    a = record["aggregates"]

    def ratios(shift):   # R = exp(-mean(perturbed losses)) / exp(-paraphrased loss)
        return [math.exp(-(1.5 + 2.5 - shift) / 2 + (1.0 + shift * i)) for i in range(3)]

    mine = ratios(0.5)
    assert a["truth_ratio_f"] == pytest.approx(sum(min(r, 1 / r) for r in mine) / 3)
    assert a["truth_ratio_r"] == pytest.approx(sum(max(0, 1 - r) for r in ratios(0.5)) / 3)
    assert a["forget_quality"] == pytest.approx(ks_2samp(mine, ratios(-0.25)).pvalue)
    assert a["prob_f"] == pytest.approx(0.2)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    items = lines(TOFU / "forget01.json")[:3]
    assert a["rouge_f"] == pytest.approx(sum(scorer.score(it["answer"], " ".join(it["answer"].split()[: 3 + i]))["rougeL"].recall
                                             for i, it in enumerate(items)) / 3)
    assert "model_utility" not in a   # no ra / wf metrics in this log: said, not invented
    assert any("model utility not computed" in w for w in record["warnings"])
    assert record["method"] == "tofu_GradAscent" and record["config"]["benchmark_config"] == {"split": "forget01"}


@needs_tofu
def test_openunlearning_bad_logs(tmp_path):
    log = tofu_log(3, 0.5)
    del log["retain_Q_A_ROUGE"]
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps(log))
    with pytest.raises(HarnessError, match="the retain split is missing"):
        reader("openunlearning")(tmp_path, data=TOFU, split="forget01", commit="x")
    log = tofu_log(3, 0.5)
    log["forget_Q_A_ROUGE"]["value_by_index"]["0"]["ground_truth"] = "something else"
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps(log))
    with pytest.raises(HarnessError, match="sample 0's ground truth differs"):
        reader("openunlearning")(tmp_path, data=TOFU, split="forget01", commit="x")
    log = tofu_log(3, 0.5)
    log["forget_Q_A_ROUGE"]["value_by_index"]["45"] = log["forget_Q_A_ROUGE"]["value_by_index"]["0"]
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps(log))
    with pytest.raises(HarnessError, match="sample index 45 but the reference has 40 items"):
        reader("openunlearning")(tmp_path, data=TOFU, split="forget01", commit="x")
    with pytest.raises(HarnessError, match="no OpenUnlearning log here"):
        reader("openunlearning")(tmp_path / "nothing", data=TOFU)


# --------------------------------------------------------------------------- the TOFU authors' logs

LOGS = TOFU / "retain_eval_logs"
needs_logs = pytest.mark.skipif(not (LOGS / "phi_retain90_wd0.01_eval_log_aggregated.json").is_file(),
                                reason="TOFU authors' logs not under HARNESS_DATA_ROOT")


@needs_logs
def test_tofu_authors_logs_become_rows_with_forget_quality_against_their_retain_model(tmp_path):
    import math

    from scipy.stats import hmean, ks_2samp

    folder = tmp_path / "logs"
    folder.mkdir()
    for name in ("phi_retain90", "phi_full"):
        (folder / f"{name}_wd0.01_eval_log_aggregated.json").symlink_to(LOGS / f"{name}_wd0.01_eval_log_aggregated.json")
    assert main(["import", "tofu-logs", str(folder), "--data", str(TOFU), "--source-commit", "unknown",
                 "--results-dir", str(tmp_path / "r")]) == 0
    records = {r["imported"]["model"]: r for r in load_records(tmp_path / "r")}
    assert sorted(records) == ["phi_full", "phi_retain90"]
    stored = {n: json.loads((LOGS / f"{n}_wd0.01_eval_log_aggregated.json").read_text()) for n in records}

    def ratios(name):   # the authors' own per-item truth ratios, read only to compare
        return list(stored[name]["eval_log_forget.json"]["truth_ratio"].values())

    full, retain = records["phi_full"]["aggregates"], records["phi_retain90"]["aggregates"]
    assert full["forget_quality"] == pytest.approx(ks_2samp(ratios("phi_full"), ratios("phi_retain90")).pvalue, rel=1e-6)
    assert retain["forget_quality"] == pytest.approx(1.0)
    log = stored["phi_retain90"]
    nine = []
    for key in ("eval_log.json", "eval_real_author_wo_options.json", "eval_real_world_wo_options.json"):
        part = log[key]
        if key == "eval_log.json":
            prob = sum(math.exp(-v) for v in part["avg_gt_loss"].values()) / len(part["avg_gt_loss"])
        else:
            prob = sum(math.exp(-part["avg_gt_loss"][i]) / (math.exp(-part["avg_gt_loss"][i])
                       + sum(math.exp(-x) for x in part["average_perturb_loss"][i])) for i in part["avg_gt_loss"]) / len(part["avg_gt_loss"])
        rouge = sum(part["rougeL_recall"].values()) / len(part["rougeL_recall"])
        tr = sum(max(0.0, 1 - r) for r in part["truth_ratio"].values()) / len(part["truth_ratio"])
        nine += [prob, rouge, tr]
    assert retain["model_utility"] == pytest.approx(hmean(nine), abs=1e-4)
    assert records["phi_full"]["method"] == "target" and records["phi_retain90"]["method"] == "retain"
    assert records["phi_full"]["config"]["benchmark_config"] == {"split": "forget10"}
    assert main(["leaderboard", "--results-dir", str(tmp_path / "r")]) == 0
    board = (tmp_path / "r" / "LEADERBOARD.md").read_text()
    assert "phi-1.5 [imported]" in board and "full (TOFU authors, imported)" in board


@needs_logs
def test_tofu_logs_refused_when_they_do_not_fit(tmp_path):
    with pytest.raises(HarnessError, match="no TOFU eval log here"):
        reader("tofu-logs")(tmp_path)
    bad = tmp_path / "phi_retain90_wd0.01_eval_log_aggregated.json"
    replace_json_copy = json.loads((LOGS / bad.name).read_text())
    del replace_json_copy["eval_real_author_wo_options.json"]
    bad.write_text(json.dumps(replace_json_copy))
    with pytest.raises(HarnessError, match="missing 'eval_real_author_wo_options.json'"):
        reader("tofu-logs")(tmp_path, data=TOFU)
    other = tmp_path / "x"
    other.mkdir()
    (other / "phi_retain99_wd0.01_eval_log_aggregated.json").symlink_to(LOGS / "phi_retain90_wd0.01_eval_log_aggregated.json")
    with pytest.raises(HarnessError, match="holds 300 items, the reference only 40"):
        reader("tofu-logs")(other, data=TOFU)
