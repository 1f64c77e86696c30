"""Paper tables from fixture records: declarations, matching, cells, notes, CLI verb, determinism."""
from __future__ import annotations

import copy
import hashlib
import json
import random
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.leaderboard.paper_tables import (
    NOT_RUN, PAPERS_DIR, UNKNOWN, format_sig, known_papers, load_paper, parse_paper, render_paper_table,
)
from harness.run.results import record_path, write_record

MODEL = "smollm2-135m"


def rec(benchmark, method, seed, aggregates, *, kind="method", row=None, cid="c0ffee00", method_config=None,
        benchmark_config=None, status="ok", model=MODEL, step=None, stand_in=None, losses=None):
    config = {"benchmark": benchmark, "benchmark_config": dict(benchmark_config or {}), "model": model}
    if kind == "method":
        config.update(method=method, method_config=dict(method_config or {}))
    else:
        config["role"] = method
    return {
        "schema": 1,
        "benchmark": benchmark, "model": model, "method": method, "row": row or method.upper(), "kind": kind,
        "seed": seed, "config_id": cid, "status": status, "aggregates": aggregates,
        "path": f"{benchmark}/{model}/{method}/{cid}-seed{seed}.json",
        "settings": "lr=1e-05, epochs=1", "config": config,
        "data": {"source": f"{benchmark} fixture files", "stand_in": stand_in},
        "training": {"losses": losses if losses is not None else [1.0, 0.5], "logs": [], "diverged_at_step": step,
                     "last_finite_loss": 0.5},
        "commit": "abc1234",
    }


def muse(method, seed, values, **kw):
    aggregates = dict(zip(("verbmem_f", "knowmem_f", "knowmem_r", "privleak"), values))
    kw.setdefault("benchmark_config", {"forget_source": "raw", "min_k": 0.4})
    return rec("muse-news", method, seed, aggregates, **kw)


def tofu(method, split, fq, mu, seed=0, **kw):
    kw.setdefault("cid", hashlib.sha1(f"{method} {split}".encode()).hexdigest()[:8])   # records are <8 hex>-seed<N>.json
    return rec("tofu", method, seed, {"forget_quality": fq, "model_utility": mu, "rouge_f": 0.3},
               benchmark_config={"split": split, "prompt_format": "auto"}, **kw)


def muse_records():
    return [
        muse("target", 0, (60.0, 62.0, 50.0, -90.0), kind="reference", row="Target", cid="7a7a7a7a"),
        muse("retain", 0, (20.0, 30.0, 51.5, 0.0), kind="reference", row="Retain", cid="8b8b8b8b"),
        muse("ga", 0, (1.5, 0.25, 2.0, 10.04), row="GA", cid="11111111"),
        muse("graddiff", 0, (5.0, 30.0, 25.0, 100.0), row="GradDiff", cid="22222222",
             method_config={"gamma": 1.0, "alpha": 1.0, "retain_loss": "nll"}),
        # GA_KLR: two seeds -> mean ± std
        muse("graddiff", 0, (26.0, 50.0, 44.0, -96.0), row="GradDiff", cid="33333333",
             method_config={"gamma": 1.0, "alpha": 1.0, "retain_loss": "kl"}),
        muse("graddiff", 1, (28.0, 52.0, 46.0, -94.0), row="GradDiff", cid="33333333",
             method_config={"gamma": 1.0, "alpha": 1.0, "retain_loss": "kl"}),
        muse("npo", 0, (0.5, 0.0, 0.0, 30.0), row="NPO", cid="44444444", status="diverged", step=7,
             method_config={"beta": 0.1, "retain_loss": "none", "alpha": 1.0}),
        # another forget source: excluded by the declaration's where
        muse("ga", 0, (99.0, 99.0, 99.0, 99.0), row="GA", cid="55555555",
             benchmark_config={"forget_source": "sust2", "min_k": 0.4}),
        # a running (unfinished) record never counts
        muse("simnpo", 0, (1.0, 1.0, 1.0, 1.0), row="SimNPO", cid="66666666", status="running"),
    ]


def tofu_records():
    return [
        tofu("target", "forget01", 0.0127, 0.61, kind="reference", row="Target"),
        tofu("retain", "forget01", 1.0, 0.63, kind="reference", row="Retain"),
        tofu("ga", "forget01", 1.88e-6, 0.5, row="GA"),
        tofu("ga", "forget05", 0.0, 0.0, row="GA"),
        tofu("sga", "forget01", 0.05, 0.52, row="SGA"),
        tofu("sga", "forget05", 0.01, 0.5, row="SGA"),
        tofu("sga", "forget05", 0.02, 0.54, row="SGA", seed=1),
    ]


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def table(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header cells and {row name (link and note marks stripped): cells} of a section's table."""
    lines = [l for l in text.splitlines() if l.startswith("|")]
    split = lambda l: [c.strip() for c in l.strip("|").split(" | ")]  # noqa: E731
    headers = split(lines[0])
    rows = {}
    for line in lines[2:]:
        cells = split(line)
        name = cells[0]
        if name.startswith("["):
            name = name[1:name.index("]")]
        rows[name.rstrip("⁰¹²³⁴⁵⁶⁷⁸⁹,")] = cells
    return headers, rows


def cell(headers, row, header):
    return row[headers.index(header)]


# --------------------------------------------------------------------------- declarations


def test_every_shipped_declaration_loads_and_is_listed():
    names = known_papers()
    assert {"muse_news", "tofu_openunlearning", "sga"} <= set(names)
    for name in names:
        paper = load_paper(name)
        assert paper.title and paper.tables and not names[name].startswith("(invalid")


def test_published_values_are_the_reference_numbers():
    muse = load_paper("muse_news").tables[0]
    rows = {r.name: r for r in muse.rows}
    assert rows["NPO_GDR"].published == {"verbmem_f": 1.2, "knowmem_f": 54.6, "knowmem_r": 40.5, "privleak": 105.8}
    assert rows["Target"].published["privleak"] == -99.8 and rows["WHP"].match.method == "whp"
    assert rows["Task Vector"].match.method_config == {"alpha": 5.0}
    tofu = {t.title: {r.name: r for r in t.rows} for t in load_paper("tofu_openunlearning").tables}
    assert tofu["TOFU forget05"]["GradAscent"].published == {"forget_quality": 1.94e-119, "model_utility": 0}
    assert tofu["TOFU forget10"]["Retain"].published == {"forget_quality": 1.0, "model_utility": 0.61}
    assert tofu["TOFU forget05"]["RMU"].published == {"forget_quality": 9.59e-10, "model_utility": 0.02}
    sga = {t.benchmark: {r.name: r for r in t.rows} for t in load_paper("sga").tables}
    assert sga["muse-news"]["SGA"].published["knowmem_r"] == 1.94
    assert sga["muse-news"]["GA"].published["knowmem_r"] == 0
    assert sga["muse-news"]["Retrained"].published["knowmem_r"] == 55
    # Everything else the reviews did not confirm stays unknown.
    known = sum(v is not None for t in sga.values() for r in t.values() for v in r.published.values())
    assert known == 3


def minimal(**over):
    doc = {"title": "T", "benchmark": "synthetic",
           "columns": [{"key": "rouge_f", "label": "ROUGE f", "direction": "down", "digits": 2}],
           "rows": [{"name": "GA", "match": {"method": "ga"}, "published": {"rouge_f": 0.25}}]}
    doc.update(over)
    return doc


@pytest.mark.parametrize("change, message", [
    ({"rows": [{"name": "GA", "match": {"method": "ga"}, "published": {}}]}, "missing rouge_f"),
    ({"rows": [{"name": "GA", "match": {"method": "ga"}, "published": {"rouge_f": 0.125}}]}, "would be rounded"),
    ({"rows": [{"name": "GA", "match": {"method": "ga"}, "published": {"rouge_f": "0.2"}}]}, "finite number or null"),
    ({"rows": [{"name": "GA", "published": {"rouge_f": 0.2}}]}, "needs a 'match'"),
    ({"rows": [{"name": "GA", "match": {"method": "ga", "split": "x"}, "published": {"rouge_f": 0.2}}]},
     "unknown field(s) split"),
    ({"columns": [{"key": "privleak", "direction": "ref", "digits": 1}]}, "needs a finite target"),
    ({"columns": [{"key": "rouge_f", "direction": "sideways"}]}, "direction"),
])
def test_bad_declarations_name_the_problem(change, message):
    with pytest.raises(HarnessError, match="paper table") as err:
        parse_paper(minimal(**change), "bad")
    assert message in str(err.value)


def test_unknown_paper_lists_the_known_ones():
    with pytest.raises(HarnessError) as err:
        load_paper("muse-newz")
    text = str(err.value)
    assert "unknown paper 'muse-newz'" in text and "muse_news" in text and "tofu_openunlearning" in text


def test_sig_format():
    assert [format_sig(v, 3) for v in (1.27e-3, 5.87e-14, 1.0, 0.4, 1.94e-119, 0.0, 123456.0)] == [
        "0.00127", "5.87e-14", "1", "0.4", "1.94e-119", "0", "1.23e5"]


# --------------------------------------------------------------------------- rendering


def test_muse_news_cells():
    text = render_paper_table(load_paper("muse_news"), muse_records())
    headers, rows = table(section(text, f"## muse-news — {MODEL}"))
    assert headers[:5] == ["Row", "Harness run", "VerbMem f ↓ ours", "VerbMem f authors' archive", "VerbMem f Δ"]
    assert "KnowMem r ↑ ours" in headers and "PrivLeak → 0 ours" in headers  # direction marks
    assert list(rows) == ["Target", "Retrain", "GA", "GA_GDR", "GA_KLR", "NPO", "NPO_GDR", "NPO_KLR",
                          "Task Vector", "WHP"]
    ga = rows["GA"]
    assert cell(headers, ga, "Harness run") == "ga"
    assert [cell(headers, ga, h) for h in ("VerbMem f ↓ ours", "VerbMem f authors' archive", "VerbMem f Δ")] == ["1.5", "0.0", "+1.5"]
    # Δ from the values as shown: 10.0 - 5.2
    assert [cell(headers, ga, h) for h in ("PrivLeak → 0 ours", "PrivLeak authors' archive", "PrivLeak Δ")] == ["10.0", "5.2", "+4.8"]
    assert cell(headers, rows["Target"], "KnowMem r Δ") == "-5.2"
    assert cell(headers, rows["Retrain"], "Harness run") == "retain (reference)"
    assert cell(headers, rows["Retrain"], "PrivLeak Δ") == "0.0"
    klr = rows["GA_KLR"]
    assert cell(headers, klr, "Harness run") == "graddiff (retain_loss=kl)"
    assert cell(headers, klr, "VerbMem f ↓ ours") == "27.0 ± 1.4" and cell(headers, klr, "VerbMem f Δ") == "-0.4"
    assert cell(headers, klr, "Seed(s)") == "0, 1"
    assert cell(headers, rows["GA_GDR"], "KnowMem f ↓ ours") == "30.0"
    for name in ("NPO_GDR", "NPO_KLR", "Task Vector", "WHP"):
        assert cell(headers, rows[name], "VerbMem f ↓ ours") == NOT_RUN
        assert cell(headers, rows[name], "VerbMem f Δ") == "—"
    assert cell(headers, rows["WHP"], "Harness run") == "whp"
    assert cell(headers, rows["WHP"], "VerbMem f authors' archive") == "19.7"
    body = section(text, f"## muse-news — {MODEL}")
    assert "NPO¹" in body and "- ¹ diverged at step 7; scores are of the weights at that point." in body
    assert "negated task vector applied with alpha = 5" in body and "MUSE's WHP evaluates the combined logits" in body
    assert "99.0" not in body and "SimNPO" not in body  # other forget source and unfinished record left out
    assert "Records considered: benchmark.forget_source=raw." in body


def test_tofu_cells_per_split_log10_difference_and_empty_split():
    text = render_paper_table(load_paper("tofu_openunlearning"), tofu_records())
    headers, rows = table(section(text, f"## TOFU forget01 — {MODEL}"))
    assert "Forget quality Δlog10" in headers and "Forget quality ↑ ours" in headers
    fin = rows["Finetuned"]
    assert [cell(headers, fin, h) for h in ("Forget quality ↑ ours", "Forget quality OpenUnlearning", "Forget quality Δlog10")] \
        == ["0.0127", "0.00127", "+1.00"]
    assert [cell(headers, fin, h) for h in ("Model utility ↑ ours", "Model utility OpenUnlearning", "Model utility Δ")] \
        == ["0.61", "0.63", "-0.02"]
    ga = rows["GradAscent"]
    assert cell(headers, ga, "Forget quality ↑ ours") == "1.88e-6" and cell(headers, ga, "Forget quality Δlog10") == "-2.00"
    assert cell(headers, rows["NPO"], "Forget quality ↑ ours") == NOT_RUN
    assert cell(headers, rows["NPO"], "Harness run") == "npo (retain_loss=nll)"
    headers5, rows5 = table(section(text, f"## TOFU forget05 — {MODEL}"))
    ga5 = rows5["GradAscent"]
    assert cell(headers5, ga5, "Forget quality OpenUnlearning") == "1.94e-119"
    assert cell(headers5, ga5, "Forget quality Δlog10") == "n/a"  # log of 0
    assert cell(headers5, ga5, "Model utility Δ") == "0.00"
    assert cell(headers5, rows5["Finetuned"], "Forget quality ↑ ours") == NOT_RUN  # no forget05 target
    headers10, rows10 = table(section(text, "## TOFU forget10 — no matching records"))
    assert all(cell(headers10, r, "Model utility ↑ ours") == NOT_RUN for r in rows10.values())
    assert cell(headers10, rows10["GradDiff"], "Forget quality OpenUnlearning") == "1.8e-229"


def test_sga_unknown_cells_and_ambiguous_configurations():
    text = render_paper_table(load_paper("sga"), muse_records() + tofu_records())
    headers, rows = table(section(text, f"## MUSE-News — {MODEL}"))
    sga = rows["SGA"]
    assert cell(headers, sga, "KnowMem r paper") == "1.94" and cell(headers, sga, "KnowMem r ↑ ours") == NOT_RUN
    assert cell(headers, sga, "VerbMem f paper") == UNKNOWN
    assert cell(headers, rows["GA"], "KnowMem r ↑ ours") == "2.00"
    assert cell(headers, rows["GA"], "KnowMem r paper") == "0.00" and cell(headers, rows["GA"], "KnowMem r Δ") == "+2.00"
    assert cell(headers, rows["GA"], "KnowMem f paper") == UNKNOWN and cell(headers, rows["GA"], "KnowMem f Δ") == "—"
    assert cell(headers, rows["Retrained"], "KnowMem r paper") == "55.00"
    assert cell(headers, rows["KL"], "KnowMem r ↑ ours") == "45.00 ± 1.41"
    assert cell(headers, rows["KL"], "KnowMem r paper") == UNKNOWN
    assert sum(c == UNKNOWN for r in rows.values() for c in r) == 6 * 4 - 3

    tofu_part = section(text, f"## TOFU — {MODEL}")
    headers, rows = table(tofu_part)
    assert all(cell(headers, r, h) .startswith(UNKNOWN) for r in rows.values()
               for h in ("Forget quality paper", "Model utility paper"))
    # SGA ran on two splits: the configuration with more seeds is shown and the other one named.
    assert cell(headers, rows["SGA"], "Forget quality ↑ ours") == "0.015 ± 0.00707"
    assert cell(headers, rows["SGA"], "Seed(s)") == "0, 1"
    one, five = (tofu("sga", split, 0, 0)["config_id"] for split in ("forget01", "forget05"))
    assert (f"1 other configuration(s) also match 'SGA' (config {one}); shown: config {five} "
            "(benchmark_config.split=forget05), the one with the most seeds.") in tofu_part
    # The review's range is a note on the unknown cell, never a number in it.
    sga_paper = cell(headers, rows["SGA"], "Forget quality paper")
    assert sga_paper != UNKNOWN and sga_paper.startswith(UNKNOWN) and "0.006" not in sga_paper
    assert "about 0.006-0.09" in tofu_part


def test_links_and_determinism():
    paper = load_paper("muse_news")
    records = muse_records()
    expected = render_paper_table(paper, records, link_base="../")
    shuffled = copy.deepcopy(records)
    random.Random(3).shuffle(shuffled)
    assert render_paper_table(paper, shuffled, link_base="../") == expected
    assert f"[GA](../muse-news/{MODEL}/ga/11111111-seed0.json)" in expected
    assert "](" not in render_paper_table(paper, records)
    assert expected.endswith("\n") and not expected.endswith("\n\n")


def test_models_get_one_section_each():
    records = muse_records() + [muse("ga", 0, (3.0, 3.0, 3.0, 3.0), model="tiny-random", row="GA")]
    text = render_paper_table(load_paper("muse_news"), records)
    assert text.index(f"## muse-news — {MODEL}") < text.index("## muse-news — tiny-random")
    headers, rows = table(section(text, "## muse-news — tiny-random"))
    assert cell(headers, rows["GA"], "VerbMem f ↓ ours") == "3.0"
    assert cell(headers, rows["Target"], "VerbMem f ↓ ours") == NOT_RUN


# --------------------------------------------------------------------------- CLI


def write_store(root: Path, records) -> None:
    for r in records:
        r = dict(r)
        r.pop("path")
        write_record(record_path(root, r["benchmark"], r["model"], r["method"], r["config_id"], r["seed"]), r)


def test_tables_verb_end_to_end(tmp_path, capsys):
    from harness.cli import main

    results = tmp_path / "results"
    write_store(results, muse_records() + tofu_records())
    assert main(["tables", "--paper", "muse_news", "--results-dir", str(results)]) == 0
    out = results / "tables" / "muse_news.md"
    assert f"table: {out}" in capsys.readouterr().out
    first = out.read_bytes()
    text = first.decode()
    headers, rows = table(section(text, f"## muse-news — {MODEL}"))
    assert cell(headers, rows["GA"], "VerbMem f Δ") == "+1.5"
    assert rows["GA"][0] == f"[GA](../muse-news/{MODEL}/ga/11111111-seed0.json)"
    assert (results / rows["GA"][0].split("](../")[1].rstrip(")")).is_file()
    assert main(["tables", "--paper", "muse_news", "--results-dir", str(results)]) == 0
    assert out.read_bytes() == first  # same bytes twice

    custom = tmp_path / "elsewhere" / "tofu.md"
    assert main(["tables", "--paper", "tofu_openunlearning", "--results-dir", str(results), "--out", str(custom)]) == 0
    assert custom.is_file() and "(../results/tofu/" in custom.read_text()

    assert main(["tables", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "muse_news" in listing and "sga" in listing and "tofu_openunlearning" in listing


def test_tables_verb_unknown_paper_and_missing_arguments(tmp_path, capsys):
    from harness.cli import main

    assert main(["tables", "--paper", "nope", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown paper 'nope'" in err and "muse_news, sga, tofu_openunlearning" in err
    assert main(["tables", "--results-dir", str(tmp_path)]) == 2
    assert "--paper" in capsys.readouterr().err
    assert main(["tables", "--paper", "sga", "--results-dir", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_paper_declared_in_any_json_file(tmp_path, capsys):
    from harness.cli import main

    declaration = tmp_path / "mine.json"
    declaration.write_text(json.dumps(minimal()))
    results = tmp_path / "results"
    write_store(results, [rec("synthetic", "ga", 0, {"rouge_f": 0.5}, row="GA")])
    assert main(["tables", "--paper", str(declaration), "--results-dir", str(results)]) == 0
    headers, rows = table((results / "tables" / "mine.md").read_text())
    assert [cell(headers, rows["GA"], h) for h in ("ROUGE f ↓ ours", "ROUGE f paper", "ROUGE f Δ")] == ["0.50", "0.25", "+0.25"]


def test_papers_folder_is_inside_the_package():
    assert PAPERS_DIR.parent.name == "leaderboard" and (PAPERS_DIR / "muse_news.json").is_file()
