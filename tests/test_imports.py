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
