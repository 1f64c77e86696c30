"""`harness leaderboard --html`: one self-contained page, checked in a real headless Chromium.

The browser part needs Debian's `chromium` and the `websocket-client` package; it skips without them,
except under CI (CI=true), where a missing browser is a failure (`.ci/run` installs it).
"""
from __future__ import annotations

import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.leaderboard.columns import Column
from harness.leaderboard.html import render_html
from harness.scoring.uncertainty import ItemMean, bootstrap_interval

from headless import find_browser

REPO = Path(__file__).resolve().parents[1]
ITEM_COLUMNS = {"synthetic": [Column("rouge_f", "ROUGE f", "down", "knowledge", digits=2, interval=ItemMean("qa", "x"))]}
COLUMNS = {"synthetic": [Column("rouge_f", "ROUGE f", "down", "knowledge", digits=2),
                         Column("privleak", "PrivLeak", "ref", "privacy", target=0.0, digits=1)]}


def record(method, rouge, seed=0, **extra):
    return {"schema": 1, "status": "ok", "kind": "method", "benchmark": "synthetic", "model": "tiny", "method": method,
            "config_id": f"c{method}", "seed": seed, "path": f"synthetic/tiny/{method}/c-seed{seed}.json",
            "settings": "lr=1e-05", "commit": "abc1234", "aggregates": {"rouge_f": rouge, "privleak": 3.0}, **extra}


def test_page_is_self_contained_and_shows_the_markdowns_intervals_and_verdicts():
    """The page shows what LEADERBOARD.md computes from the records' per-item scores: the interval
    (here also as [lo, hi]), the ≈ of a row not distinguishable from the best, the no-op flag."""
    base = np.array([0.1, 0.9, 0.4, 0.35, 0.8, 0.05, 0.6, 0.7, 0.2, 0.55, 0.3, 0.95])
    noise = np.array([0.05, -0.05, 0.04, -0.04, 0.05, -0.05, 0.03, -0.03, 0.05, -0.05, 0.04, -0.04])
    records = [record("ga", float(base.mean()), per_sample={"qa": [{"x": float(v)} for v in base]}),
               record("npo", float((base + noise).mean() + 0.01), per_sample={"qa": [{"x": float(v) + 0.01} for v in base + noise]}),
               record("rmu", 0.9, no_op={"unchanged_weights": True})]
    page = render_html(records, ITEM_COLUMNS)
    assert "<script src" not in page and "<link" not in page and not re.search(r"url\(\s*['\"]?https?:", page)
    iv = bootstrap_interval(ItemMean("qa", "x"), [{"qa": {"x": base}}])   # the same draws as the Markdown
    assert f"{base.mean():.2f} ±{(iv.hi - iv.lo) / 2:.2f}" in page
    assert f'<span class="ci">[{iv.lo:.2f}, {iv.hi:.2f}]</span>' in page
    npo_row = next(r for r in page.split("<tr") if 'data-method="npo"' in r)
    assert " ≈" in npo_row   # noise only: not distinguishable from GA, the best row
    assert '<span class="flag">(unchanged)</span>' in page
    assert 'href="synthetic/tiny/ga/c-seed0.json"' in page and "commit abc1234" in page
    assert re.search(r'<td class="best" data-value="[0-9.]+">' + f"{base.mean():.2f}", page)
    plain = render_html([record("ga", 0.25)], COLUMNS)
    assert 'class="ci"' not in plain and "±" not in plain   # no per-item scores: no interval invented


def browser_or_skip() -> str:
    binary = find_browser()
    try:
        import websocket  # noqa: F401
    except ImportError:
        binary = None
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI: chromium (apt-get install chromium) and websocket-client are required for the HTML test")
        pytest.skip("chromium or websocket-client not installed")
    return binary


def png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_committed_results_page_in_a_headless_browser(tmp_path):
    from headless import Browser

    binary = browser_or_skip()
    results = shutil.copytree(REPO / "results", tmp_path / "results")
    assert main(["leaderboard", "--html", "--results-dir", str(results)]) == 0
    page = results / "LEADERBOARD.html"
    text = page.read_text()
    for href in re.findall(r'<a href="([^"]+\.json)"', text):
        assert (results / href).is_file(), href     # each row links to its record
    assert "<figure><svg" in text                    # the plots inline

    browser = Browser(binary)
    try:
        browser.open(page)
        assert browser.errors == [], browser.errors
        table = "section.board[data-benchmark='synthetic'] table.board"
        column = browser.evaluate(f"Array.prototype.indexOf.call(document.querySelector(\"{table} thead tr\").children,"
                                  f" document.querySelector(\"{table} th[data-key='verbmem_f']\"))")
        read = (f"Array.from(document.querySelectorAll(\"{table} tbody tr\")).map(r => r.cells[{column}]"
                ".getAttribute('data-value')).filter(v => v !== '').map(Number)")
        before = browser.evaluate(read)
        assert len(before) > 5 and before != sorted(before)
        browser.click(f"{table} th[data-key='verbmem_f']")
        assert browser.evaluate(read) == sorted(before)
        browser.click(f"{table} th[data-key='verbmem_f']")
        assert browser.evaluate(read) == sorted(before, reverse=True)

        rows = "document.querySelectorAll('section.board tbody tr')"
        total = browser.evaluate(f"{rows}.length")
        browser.evaluate("(function(){var s=document.getElementById('filter-method'); s.value='ga';"
                         "s.dispatchEvent(new Event('change'));})()")
        shown = browser.evaluate(f"Array.from({rows}).filter(r => r.offsetParent !== null).map(r => r.dataset.method)")
        assert shown and set(shown) == {"ga"} and len(shown) < total
        browser.evaluate("(function(){var m=document.getElementById('filter-method'); m.value='';"
                         "m.dispatchEvent(new Event('change')); var b=document.getElementById('filter-benchmark');"
                         "b.value='tofu'; b.dispatchEvent(new Event('change'));})()")
        sections = browser.evaluate("Array.from(document.querySelectorAll('section.board'))"
                                    ".filter(s => s.offsetParent !== null).map(s => s.dataset.benchmark)")
        assert sections and set(sections) == {"tofu"}
        browser.evaluate("(function(){var b=document.getElementById('filter-benchmark'); b.value='';"
                         "b.dispatchEvent(new Event('change'));})()")
        assert browser.evaluate(f"Array.from({rows}).filter(r => r.offsetParent !== null).length") == total

        shot = browser.screenshot(tmp_path / "leaderboard.png")
        assert png_size(shot) == (1366, 900)
        if os.environ.get("HARNESS_SCREENSHOT"):
            shutil.copy(shot, os.environ["HARNESS_SCREENSHOT"])
        assert browser.errors == [], browser.errors
    finally:
        browser.close()
