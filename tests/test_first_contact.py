"""Issue 14, first contact: stale results after a code change, data cuts, failed cells, Ctrl-C,
truncation, the results layout, plots and duplicate names. The bad inputs that are refused up
front are in tests/test_error_catalogue.py (docs/errors.md)."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from harness.cli import main

REPO = Path(__file__).resolve().parent.parent
QUICK = ["--benchmark", "synthetic", "--model", "tiny-random", "--limit", "2", "--set", "finetune.epochs=1",
         "--set", "train.epochs=1", "--no-save-models"]

PLUGIN = '''
from harness.training.losses import answer_ce
from harness.methods.base import UnlearningMethod
from harness.registry import register_method


@register_method()
class Edited(UnlearningMethod):
    name = "edited"
    description = "gradient ascent whose loss a test edits"

    def loss(self, model, batch, ctx):
        return -SCALE * answer_ce(model, batch.forget), {}
'''


# --------------------------------------------------------------------------- 1, 5, 6: one run, edited


@pytest.fixture(scope="module")
def edited_runs(tmp_path_factory):
    """Run a plugin method, edit its loss and run again, then make it raise KeyboardInterrupt."""
    import contextlib
    import io

    from harness.registry import METHODS, load_builtins

    tmp = tmp_path_factory.mktemp("edited")
    plugin, results = tmp / "edited.py", tmp / "results"
    args = ["run", "--plugin", str(plugin), "--methods", "edited", "--results-dir", str(results), *QUICK,
            "--set", "eval.max_length=200", "--set", "train.max_length=200"]
    load_builtins()   # before the copy, or restoring it would leave the registry empty
    saved = dict(METHODS._items), dict(METHODS._sources)
    outputs = []
    try:
        for body in ("SCALE = 1.0\n", "SCALE = 2.0\n",
                     "SCALE = 2.0\n\ndef answer_ce(model, batch):\n    raise KeyboardInterrupt\n"):
            plugin.write_text(PLUGIN + body)
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(args)
            records = {p.parent.name: json.loads(p.read_text()) for p in results.glob("synthetic/tiny-random/*/*.json")}
            outputs.append((code, out.getvalue(), err.getvalue(), records))
    finally:
        METHODS._items.clear(), METHODS._items.update(saved[0])
        METHODS._sources.clear(), METHODS._sources.update(saved[1])
    return outputs


def test_edited_method_reruns_and_the_record_stores_its_code_hash(edited_runs):
    (code1, _, _, first), (code2, out2, _, second), _ = edited_runs
    assert code1 == 0 and code2 == 0
    assert set(first["edited"]["code"]) == {"plugin edited.py", "harness.methods.base", "harness.training.loop", "harness.training.finetune",
                                            "harness.data.batching", "harness.training.losses", "harness.training.lora",
                                            "harness.training.divergence"}
    assert first["edited"]["code"]["plugin edited.py"] != second["edited"]["code"]["plugin edited.py"]
    assert "re-run synthetic/tiny-random/edited seed 0: its code changed since the record was written " \
           "(plugin edited.py)" in out2
    assert "skip synthetic/tiny-random/target seed 0" in out2 and "skip synthetic/tiny-random/retain" in out2
    # the new loss really ran: twice the first run's first step (same data, same seed, same weights)
    assert second["edited"]["training"]["losses"][0] == pytest.approx(2 * first["edited"]["training"]["losses"][0])


def test_ctrl_c_lists_finished_cells_says_rerun_resumes_and_exits_130(edited_runs):
    code, _, err, records = edited_runs[2]
    assert code == 130 and "Traceback" not in err
    assert err.startswith("interrupted (Ctrl-C).\n2 cell(s) finished and kept:\n")
    assert "  synthetic/tiny-random/retain seed 0 (ok)\n  synthetic/tiny-random/target seed 0 (ok)\n" in err
    assert err.rstrip().endswith("Run the same command again to resume: finished cells are skipped, "
                                 "the interrupted one re-runs.")
    assert records["edited"]["code"] == edited_runs[1][3]["edited"]["code"]  # the interrupted cell wrote nothing


def test_truncation_is_counted_per_split_and_warned(edited_runs):
    _, out, _, records = edited_runs[0]
    record = records["edited"]
    eval_cut, train_cut = record["truncated"]["eval"], record["truncated"]["train"]
    # the tiny tokenizer is byte-level: the two biographies per split (~370 bytes) exceed 200 tokens,
    # the QA items (at most 120 bytes) do not
    assert train_cut == {"forget": 2, "retain": 2}
    cut = {k: v for k, v in eval_cut.items() if v}
    assert cut == {"mia_forget": 2, "mia_holdout": 2} and records["target"]["truncated"]["eval"] == eval_cut
    listed = ", ".join(f"{n} of {name}" for name, n in sorted(cut.items()))
    assert (f"warning: evaluation: {sum(cut.values())} item(s) longer than eval.max_length=200 tokens were cut to it "
            f"({listed}); raise it with --set eval.max_length=N to score/train on whole texts.") in out
    assert ("warning: training: 4 item(s) longer than train.max_length=200 tokens were cut to it "
            "(2 of forget, 2 of retain); raise it with --set train.max_length=N to score/train on whole texts.") in out


def test_truncation_counts_a_20000_word_answer_by_hand(tiny):
    from harness.engines.base import LogprobRequest
    from harness.engines.plan import EvalPlan
    from harness.data.truncation import eval_counts

    _, tok = tiny
    long_answer = " ".join(["word"] * 20000)
    plan = EvalPlan(logprobs={"qa": [LogprobRequest("Q: ", long_answer), LogprobRequest("Q: ", "short")],
                              "texts": [LogprobRequest("", "x" * 30)]})
    # the byte-level tokenizer: one token per byte, plus BOS for the prompt (or alone for an empty prompt)
    assert len(tok("Q: ")["input_ids"]) + len(tok("x" * 30, add_special_tokens=False)["input_ids"]) < 2048
    assert eval_counts(tok, plan, 2048) == {"qa": 1, "texts": 0}
    assert eval_counts(tok, plan, 20) == {"qa": 1, "texts": 1}


def test_code_hashes_key_prepared_models_and_the_eval_cache(monkeypatch):
    from harness.engines import cache as evalcache
    from harness.run import prepare
    from harness.benchmarks.synthetic import Synthetic
    from harness.runtime.models import build_tiny_random
    from harness.training.loop import TrainConfig

    bench, cfg = Synthetic(limit=2), TrainConfig()
    before = prepare.prepared_key("tiny-random", bench, cfg, 0)
    monkeypatch.setattr(prepare, "finetune_code", lambda: {"harness.training.loop": "edited"})
    assert prepare.prepared_key("tiny-random", bench, cfg, 0) != before
    model, tok = build_tiny_random()
    key = evalcache.model_key(model, tok, {"max_length": 8})
    monkeypatch.setattr(evalcache, "engine_code", lambda: "edited")
    assert evalcache.model_key(model, tok, {"max_length": 8}) != key


def test_a_record_without_code_hashes_reruns():
    from harness.runtime.codeversion import stale_reason

    assert stale_reason(None, {"harness.methods.ga": "abc"}) == (
        "its record does not say which code made it (written before code versions were recorded)")
    assert stale_reason({"harness.methods.ga": "abc"}, {"harness.methods.ga": "abc"}) == ""


# --------------------------------------------------------------------------- 2: data cuts, 5: failed rows


def _record(method, limit, aggregates, status="ok", **extra):
    return {"benchmark": "synthetic", "model": "tiny-random", "method": method, "row": method.capitalize(),
            "kind": "reference" if method in ("target", "retain") else "method", "seed": 0,
            "config_id": f"{method}{limit}", "config": {"limit": limit}, "status": status,
            "aggregates": aggregates, "path": f"synthetic/tiny-random/{method}/{method}{limit}-seed0.json", **extra}


def test_rows_of_different_limits_are_never_in_one_table():
    from harness.leaderboard.markdown import render_leaderboard
    from harness.registry import BENCHMARKS

    columns = {"synthetic": list(BENCHMARKS.get("synthetic").columns)}
    records = [_record("target", limit, {"rouge_f": 0.5}) for limit in (None, 3, 5)]
    board = render_leaderboard(records, columns)
    headings = re.findall(r"(?m)^## .*$", board)
    assert headings == ["## synthetic — tiny-random", "## synthetic — tiny-random — --limit 3",
                        "## synthetic — tiny-random — --limit 5"]
    for section in board.split("\n## ")[1:]:
        assert section.count("[Target]") == 1


def test_a_failed_cell_is_a_failed_row_with_its_reason():
    from harness.leaderboard.markdown import render_leaderboard
    from harness.registry import BENCHMARKS

    columns = {"synthetic": list(BENCHMARKS.get("synthetic").columns)}
    failed = _record("sga", 2, {}, status="failed",
                     error="MethodSettingsError: sga.normal_source=random with K=50 needs at least 49 retain items")
    board = render_leaderboard([_record("target", 2, {"rouge_f": 0.5}), failed], columns)
    row = next(line for line in board.splitlines() if "[Sga (failed)]" in line)
    assert "¹" in row and "n/a" in row
    assert ("- ¹ failed: MethodSettingsError: sga.normal_source=random with K=50 needs at least 49 retain items "
            "(the record holds the traceback; re-run to retry).") in board


# --------------------------------------------------------------------------- 7: results layout, progress


def test_ad_hoc_runs_default_to_a_git_ignored_folder_and_make_agrees():
    from harness.cli import build_parser

    for verb in (["run", "--benchmark", "synthetic"], ["eval", "--benchmark", "synthetic"], ["leaderboard"]):
        assert build_parser().parse_args(verb).results_dir == Path("runs")
    assert "/runs/" in (REPO / ".gitignore").read_text().splitlines()
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"(?m)^run: .*\n\t\$\(BIN\)/harness \$\(DEFAULT_JOB\) --results-dir runs ", makefile)
    assert re.search(r"(?m)^results: .*\n\t\$\(BIN\)/harness \$\(FULL_JOB\) --results-dir results --force ", makefile)
    readme = (REPO / "README.md").read_text()
    assert "`make results` regenerates them there" in readme and "writes to `runs/`" in readme


def test_progress_off_a_terminal_prints_timed_lines():
    import io

    from harness.runtime.progress import LineProgress, progress_factory

    stream = io.StringIO()
    assert progress_factory(stream).func is LineProgress
    bar = progress_factory(stream)(total=3, desc="train ga", unit="step", every=0.0)
    bar.update(1)
    bar.set_postfix(loss="0.5000")
    bar.update(2)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("  train ga: 1/3 step done (") and lines[-1].startswith("  train ga: 3/3 step finished (")
    assert lines[-1].endswith(", loss=0.5000)")
    quiet = io.StringIO()
    short = LineProgress(total=2, desc="generate", every=60.0, stream=quiet)
    short.update(2)
    short.close()
    assert quiet.getvalue() == ""  # a task shorter than the interval adds no lines


# --------------------------------------------------------------------------- 8: plots


def test_matplotlib_is_installed_by_the_package():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.match(r"matplotlib\b", d) for d in deps)


def test_overlapping_points_share_one_label_and_an_all_zero_run_one_list():
    from harness.leaderboard.plots import _merged_labels

    points = [(0.98, 0.905, "Target"), (0.33, 0.956, "Retain"), (0.525, 0.788, "GA"), (0.537, 0.790, "NPO"),
              (0.675, 0.856, "GradDiff")]
    assert [text for _, _, text in _merged_labels(points)] == ["Target", "Retain", "GA, NPO", "GradDiff"]
    zeros = [(0.0, 0.0, name) for name in ("Target", "Retain", "GA", "NPO", "SGA")]
    assert _merged_labels(zeros) == [(0.0, 0.0, "Target, Retain, GA,\nNPO, SGA")]


def test_training_plot_gives_each_method_its_own_scale(tmp_path):
    pytest.importorskip("matplotlib")
    from harness.leaderboard.markdown import _build_rows
    from harness.leaderboard.plots import _training
    from harness.registry import BENCHMARKS

    columns = list(BENCHMARKS.get("synthetic").columns)
    losses = {"ga": [-1.0, -2.0, -3.0], "npo": [7.0, 10.0, 14.0], "graddiff": [0.2, 0.1, 0.3]}
    records = [_record(m, None, {}, training={"losses": ls}) for m, ls in losses.items()]
    fig = _training("synthetic", "tiny-random", _build_rows(records, columns), columns)
    panels = {ax.get_title(): ax.get_ylim() for ax in fig.axes}
    assert set(panels) == {"Ga", "Npo", "Graddiff"}
    low, high = panels["Ga"]
    assert low <= -3.0 and high >= -1.0 and high - low < 3.0   # GA's own range, not NPO's 7-14
    assert panels["Npo"][0] > 0


# --------------------------------------------------------------------------- 9: duplicate names


def test_override_replaces_a_built_in_on_purpose_and_says_so(tmp_path, capsys, monkeypatch):
    from harness.registry import METHODS, load_builtins

    load_builtins()
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr(METHODS, "_sources", dict(METHODS._sources))
    plugin = tmp_path / "my_ga.py"
    plugin.write_text("from harness.methods.ga import GradientAscent\n"
                      "from harness.registry import register_method\n\n\n"
                      "@register_method(override=True)\n"
                      "class MyGA(GradientAscent):\n    name = 'ga'\n")
    assert main(["list", "methods", "--plugin", str(plugin)]) == 0
    assert capsys.readouterr().err == (f"note: method 'ga' of built-in module harness.methods.ga is replaced by the one "
                                       f"of plugin file {plugin} (override=True)\n")
    assert METHODS.get("ga").__name__ == "MyGA"


def test_an_unwritable_results_folder_is_refused_before_work(tmp_path, monkeypatch):
    """Root may write anywhere, so the read-only case is simulated where the check asks the OS."""
    from harness.run import validation
    from harness.errors import HarnessError

    monkeypatch.setattr(validation.os, "access", lambda path, mode: False)
    with pytest.raises(HarnessError) as caught:
        validation.check_writable(tmp_path / "results", "results directory", "--results-dir")
    assert str(caught.value) == (f"results directory '{tmp_path / 'results'}' is not writable (no write permission on "
                                 f"'{tmp_path}'); pass --results-dir with a folder you can write, or change its permissions.")
