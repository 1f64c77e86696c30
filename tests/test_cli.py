"""The CLI end to end on the tiny model: run, resume, re-render, list, and bad input messages."""
import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main

REPO = Path(__file__).resolve().parent.parent
QUICK = ["--benchmark", "synthetic", "--model", "tiny-random", "--limit", "3",
         "--set", "finetune.epochs=2", "--set", "train.epochs=1", "--no-save-models"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    code = main(["run", "--methods", "all", "--results-dir", str(results), *QUICK])
    return code, results


def test_run_writes_a_record_per_cell_and_the_leaderboard(finished_run):
    code, results = finished_run
    assert code == 0
    from harness.registry import METHODS

    methods = sorted(p.parent.name for p in results.glob("synthetic/tiny-random/*/*.json"))
    assert methods == sorted(METHODS.names() + ["retain", "target"])
    assert {"ga", "graddiff", "npo", "simnpo", "idkdpo", "flat", "sga"} <= set(methods)
    record = json.loads(next(results.glob("synthetic/tiny-random/ga/*.json")).read_text())
    assert record["status"] == "ok" and record["kind"] == "method" and record["seed"] == 0
    assert record["config"]["train"]["epochs"] == 1
    # 6 forget texts (3 QA, 3 biographies), global batch 32, one epoch: one step
    assert record["training"]["steps"] == 1 and len(record["training"]["losses"]) == 1
    assert {"verbmem_f", "rouge_f", "prob_f", "forget_quality", "privleak", "rouge_r", "model_utility"} <= set(record["aggregates"])
    assert [type(r["generation"]) for r in record["per_sample"]["qa_forget"]] == [str] * 3
    assert record["versions"]["torch"]
    board = (results / "LEADERBOARD.md").read_text()
    assert "[Target](synthetic/tiny-random/target/" in board and "[GA](synthetic/tiny-random/ga/" in board
    assert board.index("[Target]") < board.index("[Retain]") < board.index("[FLAT]") < board.index("[GA]")


def test_retain_row_is_its_own_reference(finished_run):
    _, results = finished_run
    retain = json.loads(next(results.glob("synthetic/tiny-random/retain/*.json")).read_text())
    assert retain["aggregates"]["forget_quality"] == 1.0
    assert retain["aggregates"]["privleak"] == 0.0


def test_second_run_skips_finished_cells_and_force_reruns(finished_run, capsys):
    _, results = finished_run
    before = {p: p.stat().st_mtime_ns for p in results.glob("synthetic/**/*.json")}
    assert main(["run", "--methods", "ga", "--results-dir", str(results), *QUICK]) == 0
    out = capsys.readouterr().out
    assert out.count("skip synthetic/tiny-random/") == 3  # retain, target, ga
    assert "prepare:" not in out  # nothing to run, so no model is prepared or even looked up
    assert {p: p.stat().st_mtime_ns for p in results.glob("synthetic/**/*.json")} == before
    assert main(["run", "--methods", "ga", "--results-dir", str(results), *QUICK, "--force"]) == 0
    out = capsys.readouterr().out
    assert "skip synthetic/" not in out and out.count("done synthetic/tiny-random/") == 3
    assert not list(results.glob("**/*.claim"))


def test_corrupt_record_is_reported_and_rerun(finished_run, capsys):
    _, results = finished_run
    path = next(results.glob("synthetic/tiny-random/ga/*.json"))
    path.write_text('{"schema": 1, "status": "ok", "aggre')
    assert main(["run", "--methods", "ga", "--results-dir", str(results), *QUICK]) == 0
    out = capsys.readouterr().out
    assert f"corrupt result record {path}" in out
    assert json.loads(path.read_text())["status"] == "ok"


def test_leaderboard_regenerates_byte_for_byte(finished_run):
    _, results = finished_run
    board = results / "LEADERBOARD.md"
    original = board.read_bytes()
    board.unlink()
    assert main(["leaderboard", "--results-dir", str(results)]) == 0
    assert board.read_bytes() == original


def test_readme_plugin_example_runs_and_is_shown_verbatim(finished_run, tmp_path):
    _, results = finished_run
    example = (REPO / "examples" / "plugin_method.py").read_text()
    assert example.strip() in (REPO / "README.md").read_text()
    out = tmp_path / "results"
    shutil.copytree(results, out)
    assert main(["run", "--plugin", str(REPO / "examples" / "plugin_method.py"), "--methods", "ga_clipped",
                 "--results-dir", str(out), *QUICK]) == 0
    record = json.loads(next(out.glob("synthetic/tiny-random/ga_clipped/*.json")).read_text())
    assert record["config"]["method_config"] == {"ceiling": 15.0}
    assert record["training"]["logs"][0]["forget_ce"] > 0


def test_broken_plugin_is_reported_and_the_rest_still_work(tmp_path, capsys):
    broken = tmp_path / "broken_plugin.py"
    broken.write_text("raise RuntimeError('plugin exploded on import')\n")
    assert main(["list", "methods", "--plugin", str(broken)]) == 0
    captured = capsys.readouterr()
    assert f"plugin file {broken} failed to load and was skipped: RuntimeError: plugin exploded on import" in captured.err
    assert "graddiff" in captured.out and "ga " in captured.out


def test_list_verbs(capsys):
    assert main(["list", "benchmarks"]) == 0
    assert "synthetic" in capsys.readouterr().out
    assert main(["list", "metrics"]) == 0
    out = capsys.readouterr().out
    assert "rouge_l_recall" in out and "min_k_score" in out and "privacy" in out


def error_of(argv, capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err.strip()


def test_unknown_method_lists_known_ones(capsys, tmp_path):
    err = error_of(["run", "--methods", "gaa", "--results-dir", str(tmp_path), *QUICK], capsys)
    from harness.registry import METHODS

    assert err.startswith("error: unknown method 'gaa'. Did you mean: ga")  # plugins from other tests may add names
    assert err.endswith(f"Known methods: {', '.join(METHODS.names())}.")
    assert "altpo, ceu, flat, ga, " in err
    assert "graddiff, idkdpo, npo, pdu, rmu, satimp, sga, simnpo, task_vector, undial, wga, whp." in err


def test_unknown_benchmark_lists_known_ones(capsys, tmp_path):
    err = error_of(["run", "--benchmark", "synthetc", "--model", "tiny-random", "--results-dir", str(tmp_path)], capsys)
    from harness.registry import BENCHMARKS

    assert err.startswith("error: unknown benchmark 'synthetc'. Did you mean: synthetic?")
    assert err.endswith(f"Known benchmarks: {', '.join(BENCHMARKS.names())}.")
    assert {"synthetic", "tofu", "muse-news"} <= set(BENCHMARKS.names())


def test_unknown_set_key_lists_valid_keys(capsys, tmp_path):
    err = error_of(["run", "--results-dir", str(tmp_path), *QUICK, "--set", "train.lrate=1"], capsys)
    assert err.startswith("error: unknown --set key 'train.lrate'. Did you mean: train.lr")
    assert "Valid keys: " in err and "graddiff.alpha" in err and "benchmark.num_forget" in err


def test_ill_typed_set_value(capsys, tmp_path):
    err = error_of(["run", "--results-dir", str(tmp_path), *QUICK, "--set", "train.epochs=two"], capsys)
    assert err == "error: --set train.epochs=two: expected int, got 'two'."


def test_missing_model_path(capsys, tmp_path):
    err = error_of(["eval", "--benchmark", "synthetic", "--model", str(tmp_path / "nope"), "--results-dir", str(tmp_path)], capsys)
    assert err == (f"error: model path '{tmp_path / 'nope'}' does not exist. Pass an existing folder, a hub id (online), "
                   "or one of the built-in aliases: smollm2-135m, tiny-random.")


def test_missing_data_dir(capsys, tmp_path):
    err = error_of(["run", "--data-dir", str(tmp_path / "absent"), "--results-dir", str(tmp_path), *QUICK], capsys)
    assert err == f"error: data directory '{tmp_path / 'absent'}' does not exist; pass the folder that holds the benchmark's files."


def test_hub_id_while_offline(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = error_of(["eval", "--benchmark", "synthetic", "--model", "no-such-org/no-such-model", "--results-dir", str(tmp_path)], capsys)
    assert err.startswith("error: could not load model 'no-such-org/no-such-model': it is not a local folder")
    assert "Offline, download it on a connected machine and pass the local folder instead." in err


def test_eval_scores_a_given_model_against_a_given_retain_model(finished_run, tmp_path, capsys):
    import os

    prepared = Path(os.environ["HARNESS_CACHE"]) / "prepared" / "synthetic" / "tiny-random"
    target = next(prepared.glob("target-*"))
    retain = next(prepared.glob("retain-*"))
    out = tmp_path / "eval-results"
    assert main(["eval", "--benchmark", "synthetic", "--model", str(target), "--retain", str(retain),
                 "--limit", "3", "--results-dir", str(out)]) == 0
    records = {p.parent.name: json.loads(p.read_text()) for p in out.glob("synthetic/*/*/*.json")}
    assert set(records) == {"target", "retain"}
    assert records["retain"]["aggregates"]["privleak"] == 0.0
    assert "privleak" in records["target"]["aggregates"] and "forget_quality" in records["target"]["aggregates"]


def test_eval_without_retain_names_the_metrics_it_cannot_compute(finished_run, tmp_path):
    import os

    prepared = Path(os.environ["HARNESS_CACHE"]) / "prepared" / "synthetic" / "tiny-random"
    target = next(prepared.glob("target-*"))
    out = tmp_path / "eval-results"
    assert main(["eval", "--benchmark", "synthetic", "--model", str(target), "--limit", "3", "--results-dir", str(out)]) == 0
    record = json.loads(next(out.glob("synthetic/*/target/*.json")).read_text())
    assert "privleak" not in record["aggregates"]
    assert record["missing"]["privleak"].startswith("needs the retain model's Min-K% AUC")
    assert record["missing"]["forget_quality"].startswith("needs the retain model's per-item forget truth ratios")


def test_method_needing_retain_on_a_benchmark_without_it(capsys, tmp_path):
    plugin = tmp_path / "forget_only.py"
    plugin.write_text(
        "from harness.benchmarks.synthetic import Synthetic\n"
        "from harness.registry import register_benchmark\n\n\n"
        "@register_benchmark()\n"
        "class ForgetOnly(Synthetic):\n"
        "    name = 'forget-only'\n"
        "    description = 'synthetic without a retain split'\n\n"
        "    def retain_train(self):\n"
        "        return None\n"
    )
    err = error_of(["run", "--plugin", str(plugin), "--benchmark", "forget-only", "--methods", "ga,graddiff",
                    "--model", "tiny-random", "--results-dir", str(tmp_path)], capsys)
    assert err == ("error: method 'graddiff' needs retain data, but benchmark 'forget-only' has no retain split. "
                   "Leave it out of --methods, or use a method that needs forget data only (e.g. ga, npo, flat).")


def test_method_whose_settings_do_not_fit_the_data_is_refused_before_any_cell(tmp_path, capsys):
    """Issue 25: SGA's K against too few retain items used to fail its cell after the others ran,
    and the summary advised a re-run that failed the same way; now it is refused up front."""
    results = tmp_path / "results"
    code = main(["run", "--methods", "sga,ga", "--results-dir", str(results), *QUICK, "--set", "sga.K=50"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: method 'sga': sga.normal_source=random with K=50 needs at least 49 retain items")
    assert "Lower sga.K or supply a larger retain split" in err and "Traceback" not in err
    assert not list(results.glob("**/*.json"))   # refused before any model or cell


def test_eval_is_not_refused_for_a_method_it_does_not_train(tmp_path, capsys):
    """`eval` names every method only so that their --set keys are valid; SGA's K against the
    retain items is no reason to refuse an evaluation (it once stopped `eval --limit 1` on TOFU)."""
    results = tmp_path / "results"
    code = main(["eval", "--benchmark", "synthetic", "--model", "tiny-random", "--limit", "1", "--no-eval-cache",
                 "--results-dir", str(results), "--set", "sga.K=50"])
    assert code == 0, capsys.readouterr().err
    assert len(list(results.glob("synthetic/*/target/*.json"))) == 1


def test_leaderboard_says_how_the_benchmark_was_cut_down(finished_run):
    _, results = finished_run
    board = (results / "LEADERBOARD.md").read_text()
    assert "Reduced: --limit 3 (first N items of every split)." in board
