"""Issue 25, first contact round 3: inputs that used to hang, crash or be believed.

The inputs refused before any model loads are catalogued in tests/test_error_catalogue.py
(docs/errors.md); this file holds those that need a machine state (no CUDA, an unwritable
cache, an immutable folder, a signal), a hand-edited record, or a model that trains.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.cli import main

REPO = Path(__file__).resolve().parent.parent
QUICK = ["run", "--methods", "ga", "--benchmark", "synthetic", "--model", "tiny-random", "--limit", "2",
         "--set", "finetune.epochs=1", "--set", "train.epochs=1", "--no-save-models"]


def _error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, (code, err)
    return err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch that sees no CUDA GPU")
def test_device_cuda_without_a_gpu_is_refused_up_front(capsys, tmp_path):
    err = _error(capsys, [*QUICK, "--results-dir", str(tmp_path), "--device", "cuda"])
    assert "sees no CUDA GPU" in err and "--device cpu" in err
    assert not list(tmp_path.iterdir())   # nothing recorded, cell by cell or otherwise


def test_unwritable_harness_cache_is_refused_up_front(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", "/proc/harness-cache")
    err = _error(capsys, [*QUICK, "--results-dir", str(tmp_path)])
    assert "'/proc/harness-cache' cannot be written" in err and "HARNESS_CACHE=<folder>" in err


def test_leaderboard_on_an_immutable_folder_is_a_clear_error(capsys, tmp_path):
    folder = tmp_path / "results"
    shutil.copytree(REPO / "results" / "synthetic", folder / "synthetic")
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root on a file system with attributes)")
    try:
        err = _error(capsys, ["leaderboard", "--results-dir", str(folder)])
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    assert f"results directory '{folder}' is not writable" in err


# --------------------------------------------------------------------------- records validated when read


def _committed_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the committed synthetic records, and the record of its GA row."""
    folder = tmp_path / "results"
    shutil.copytree(REPO / "results" / "synthetic", folder / "synthetic")
    return folder, next(folder.glob("synthetic/smollm2-135m/ga/*-seed0.json"))


@pytest.mark.parametrize("edit, problem", [
    (lambda r: r["aggregates"].update(rouge_f=-7.5), "score 'rouge_f' = -7.5 lies outside its range [0, 1]"),
    (lambda r: r["aggregates"].update(model_utility=math.nan), "score 'model_utility' is nan, expected a finite number"),
    (lambda r: r["aggregates"].update(privleak=math.inf), "score 'privleak' is inf, expected a finite number"),
    (lambda r: r["aggregates"].update(prob_f="0.5"), "score 'prob_f' is str '0.5', expected a number"),
    (lambda r: r.update(seed="0"), "'seed' is str '0', expected int"),
    (lambda r: r.update(status="great"), "status 'great' is none of ok, diverged, failed"),
])
def test_a_hand_edited_record_is_refused_and_not_shown(tmp_path, capsys, edit, problem):
    folder, path = _committed_copy(tmp_path)
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))   # json writes NaN / Infinity, as a hand edit could
    assert main(["leaderboard", "--results-dir", str(folder)]) == 0
    captured = capsys.readouterr()
    assert f"invalid result record {path}: {problem}" in captured.out
    board = (folder / "LEADERBOARD.md").read_text()
    ga_rows = [line for line in board.splitlines() if line.startswith("| GA ") or line.startswith("| **GA")]
    assert not ga_rows, ga_rows
    assert "-7.5" not in board


def test_the_committed_records_are_all_valid(tmp_path, capsys):
    folder = tmp_path / "results"
    shutil.copytree(REPO / "results", folder, ignore=shutil.ignore_patterns("*.md", "*.csv", "plots", "tables"))
    assert main(["leaderboard", "--results-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "invalid result record" not in out and "corrupt result record" not in out
    assert (folder / "LEADERBOARD.md").read_text() == (REPO / "results" / "LEADERBOARD.md").read_text()


def test_a_users_own_json_file_in_the_results_folder_is_not_a_record(tmp_path, capsys):
    folder, path = _committed_copy(tmp_path)
    (path.parent / "notes.json").write_text('{"my": "notes"}')
    (folder / "notes.json").write_text("not even json")
    assert main(["leaderboard", "--results-dir", str(folder)]) == 0
    assert main(["status", "--results-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "notes.json" not in out and "corrupt" not in out


# --------------------------------------------------------------------------- claims


def test_a_claim_held_by_this_very_process_is_not_waited_for(tmp_path):
    """An earlier step of this process that failed must not make a later one wait for ever."""
    from harness.run.claims import Claims, claim_cell, claim_path

    record = tmp_path / "cell.json"
    Claims().try_claim(record)                       # held by this process, never released
    started = time.perf_counter()
    outcome = claim_cell(Claims(), record, lambda: None, wait=True, log=lambda *_: None, poll_s=60)
    assert outcome.state == "claimed" and time.perf_counter() - started < 5
    assert json.loads(claim_path(record).read_text())["pid"] == os.getpid()


def test_a_failed_prepare_releases_its_claim(tmp_path, monkeypatch):
    """The target cell failed inside prepare (once: a bad seed) and the retain cell waited on its claim."""
    from harness.run import prepare as prep
    from harness.run.claims import claim_path
    from harness.registry import BENCHMARKS, load_builtins
    from harness.training.loop import TrainConfig

    load_builtins()
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    bench = BENCHMARKS.get("synthetic")(None, None, 2)

    def fail(*_args, **_kwargs):
        raise ValueError("Seed must be between 0 and 2**32 - 1")

    monkeypatch.setattr(prep, "train", fail)
    with pytest.raises(ValueError):
        prep.prepare("tiny-random", bench, TrainConfig(epochs=1), 0, torch.device("cpu"), log=lambda *_: None)
    assert not list(tmp_path.rglob("*.claim"))


def test_sigterm_leaves_no_claim_behind(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HARNESS_CACHE": str(tmp_path / "cache")}
    results = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *QUICK, "--results-dir", str(results), "--threads", "1"],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.rglob("*.claim")) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before any claim was taken"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not list(tmp_path.rglob("*.claim"))


# --------------------------------------------------------------------------- the loop


def _examples():
    from harness.data.batching import Example

    return [Example("Question: Who wrote the letter?\nAnswer:", " Ada.", id=str(i)) for i in range(2)]


def test_a_loss_returning_a_bare_float_is_named(tiny):
    from harness.errors import HarnessError
    from harness.methods.base import UnlearningMethod
    from harness.training.loop import TrainConfig, train

    class FloatLoss(UnlearningMethod):
        name, description = "floatloss", "returns a float"

        def loss(self, model, batch, ctx):
            return 1.5

    model, tok = tiny
    with pytest.raises(HarnessError, match=r"method 'floatloss': loss\(\) must return \(loss, logs\).*it returned float 1.5"):
        train(model, tok, FloatLoss(), _examples(), None, TrainConfig(epochs=1, lr=1e-4), 0)


def test_max_length_that_leaves_no_answer_token_is_named(tiny):
    from harness.errors import HarnessError
    from harness.methods.ga import GradientAscent
    from harness.training.loop import TrainConfig, train

    model, tok = tiny
    with pytest.raises(HarnessError, match="max_length=1 leaves no answer token to train on for 2 of 2 forget items"):
        train(model, tok, GradientAscent(), _examples(), None, TrainConfig(epochs=1, max_length=1), 0)
    # the boundary: the prompt's own tokens leave nothing; one more keeps the first answer token scored
    from harness.data.batching import prompt_ids

    n = len(prompt_ids(tok, _examples()[0].prompt))
    with pytest.raises(HarnessError, match=f"max_length={n} leaves no answer token"):
        train(model, tok, GradientAscent(), _examples(), None, TrainConfig(epochs=1, max_length=n), 0)
    result = train(model, tok, GradientAscent(), _examples(), None, TrainConfig(epochs=1, max_length=n + 1, lr=1e-5), 0)
    assert result.status == "ok" and result.steps == 1 and math.isfinite(result.losses[0])


def test_the_evaluation_passes_the_kv_cache_without_a_deprecation_warning(tiny):
    import warnings

    from harness.engines.hf import cache_kwarg, cache_of

    model, _ = tiny
    ids = torch.tensor([[1, 2, 3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model(input_ids=ids, use_cache=True)
        past = cache_of(out)
        model(input_ids=torch.tensor([[4]]), use_cache=True, **cache_kwarg(model, past))
    assert past is not None


# --------------------------------------------------------------------------- noise and silence


def test_a_warning_is_said_once_per_run(tmp_path, capsys):
    """The training-truncation warning covers the same data for every method: one line, not one per cell."""
    code = main([*QUICK[:2], "ga,npo", *QUICK[3:], "--results-dir", str(tmp_path), "--set", "train.max_length=64"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("warning: training: ") == 1 and "longer than train.max_length=64" in out
    assert out.count("done synthetic/tiny-random/") == 4   # retain, target, ga, npo
    assert "FutureWarning" not in out


def test_many_epochs_print_about_ten_lines():
    from harness.training.loop import epoch_worth_a_line

    def shown(epochs):
        return [e + 1 for e in range(epochs) if epoch_worth_a_line(e, epochs, False)]

    assert shown(3) == [1, 2, 3]
    assert shown(300) == list(range(30, 301, 30))
    assert shown(7) == list(range(1, 8)) and shown(25) == [3, 6, 9, 12, 15, 18, 21, 24, 25]


def test_a_progress_line_is_not_followed_by_a_duplicate_finished_line():
    import io

    from harness.runtime.progress import LineProgress

    stream = io.StringIO()
    bar = LineProgress(total=6, desc="generate", unit="req", every=0.0, stream=stream)
    bar.update(6)
    bar.close()
    assert stream.getvalue().splitlines() == [stream.getvalue().splitlines()[0]]
    assert "generate: 6/6 req done" in stream.getvalue()
    stream = io.StringIO()
    bar = LineProgress(total=6, desc="generate", unit="req", every=0.0, stream=stream)
    bar.update(3)
    bar.every = 1e9
    bar.update(3)
    bar.close()
    assert [line.split(" (")[0] for line in stream.getvalue().splitlines()] == ["  generate: 3/6 req done",
                                                                               "  generate: 6/6 req finished"]


def test_not_computed_reasons_are_given_once_per_run():
    from harness.run.runner import one_line_summary

    record = {"benchmark": "b", "model": "m", "method": "ga", "seed": 0, "status": "ok", "aggregates": {},
              "missing": {"es_f": "every gt was truncated away"}}
    said: set[str] = set()
    first = one_line_summary(record, [], Path("r.json"), said)
    second = one_line_summary({**record, "method": "npo"}, [], Path("r.json"), said)
    assert "not computed: es_f: every gt was truncated away" in first and "not computed" not in second


def test_the_empty_generation_warning_names_its_cause():
    from harness.benchmarks.base import degenerate_generations

    (warning,) = degenerate_generations("qa_retain", ["", " "])
    assert warning.startswith("all 2 'qa_retain' generations are empty: the model ended its answer at once")
    (most,) = degenerate_generations("qa_retain", ["", " ", "Paris."])
    assert most.startswith("2 of 3 'qa_retain' generations are empty")
    assert "never fine-tuned on this benchmark's prompt format" in warning
    assert degenerate_generations("qa_retain", ["", "Paris."]) == []


def test_a_split_shorter_than_the_limit_is_stated():
    from types import SimpleNamespace

    from harness.run.validation import short_splits

    bench = SimpleNamespace(limit=2, data_info=lambda: {"sizes": {"forget": 1, "retain": 2, "too_short": 1, "icl_forget": 1}})
    assert short_splits(bench) == ["note: split 'forget' holds 1 item(s), fewer than --limit 2: it is scored on 1."]
    assert short_splits(SimpleNamespace(limit=None, data_info=lambda: {"sizes": {"forget": 1}})) == []


def test_eval_labels_its_row_as_evaluated_not_as_the_target(tmp_path, capsys):
    assert main(["eval", "--benchmark", "synthetic", "--model", "tiny-random", "--limit", "1",
                 "--results-dir", str(tmp_path), "--threads", "1"]) == 0
    record = json.loads(next(tmp_path.glob("synthetic/tiny-random/target/*.json")).read_text())
    assert record["row"] == "Evaluated: tiny-random"
    board = (tmp_path / "LEADERBOARD.md").read_text()
    assert "[Evaluated: tiny-random](" in board and "[Target](" not in board


def test_privleak_against_the_published_auc_is_said_below_the_scores():
    """harness eval on muse-news without --retain: PrivLeak comes from the published retrain AUC, and says so."""
    from harness.run.runner import one_line_summary

    record = {"benchmark": "muse-news", "model": "m", "method": "target", "seed": 0, "status": "ok", "aggregates": {},
              "per_sample": {"privleak": [{"reference": "published MUSE-News retrain AUC (no evaluated retain model "
                                                        "in this run)", "reference_auc": 0.4772}]}}
    line = one_line_summary(record, [], Path("r.json"))
    assert line.endswith("\n  PrivLeak against the published MUSE-News retrain AUC (no evaluated retain model in this "
                         "run): AUC 0.4772")
    evaluated = {**record, "per_sample": {"privleak": [{"reference": "evaluated retain model", "reference_auc": 0.5}]}}
    assert "PrivLeak against" not in one_line_summary(evaluated, [], Path("r.json"))


def test_a_progress_line_waits_while_the_run_itself_is_talking():
    """With one step per epoch, 'train finetune: 2/6 step done' came at the same second as 'epoch 2/6'."""
    import io

    from harness.runtime.progress import LineProgress, note_output

    stream = io.StringIO()
    bar = LineProgress(total=6, desc="train finetune", unit="step", every=0.3, stream=stream)
    time.sleep(0.35)
    note_output()                  # the runner's epoch line
    bar.update(1)
    assert stream.getvalue() == ""
    time.sleep(0.35)               # then silence for longer than `every`: the progress line speaks
    bar.update(1)
    assert stream.getvalue().startswith("  train finetune: 2/6 step done")
