"""random:<architecture> models: real shapes, random weights, records marked, leaderboards without them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.errors import HarnessError
from harness.run.results import leaderboard_records, made_with_random_weights
from harness.runtime.models import load_model, load_tokenizer
from harness.runtime.random_models import ARCHITECTURES, parameter_count

QUICK = ["--benchmark", "synthetic", "--limit", "2", "--set", "finetune.epochs=1", "--set", "train.epochs=1",
         "--no-save-models"]


def test_random_models_have_the_architecture_and_say_random_weights():
    loaded = load_model("random:135m", torch.device("cpu"))
    c = loaded.model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (30, 576, 9, 3, 49152)
    assert sum(p.numel() for p in loaded.model.parameters()) == parameter_count("random:135m") == 134_515_008
    assert loaded.source.startswith("random weights (135m")
    again = load_model("random:135m", torch.device("cpu")).model
    assert torch.equal(again.model.layers[3].mlp.up_proj.weight, loaded.model.model.layers[3].mlp.up_proj.weight)  # seed 0
    ids = loaded.tokenizer("abc", return_tensors="pt")["input_ids"]
    assert loaded.model(ids).logits.shape == (1, 3, 49152)


def test_unknown_random_architecture_is_refused_with_the_names():
    for call in (lambda: load_model("random:3b", torch.device("cpu")), lambda: load_tokenizer("random:3b")):
        with pytest.raises(HarnessError) as err:
            call()
        assert all(f"random:{n}" in str(err.value) for n in ARCHITECTURES)


def test_leaderboard_filter_keeps_random_records_out_unless_asked():
    real = {"status": "ok", "model": "smollm2-135m", "model_source": "SmolLM2 gguf"}
    by_name = {"status": "ok", "model": "random:1b", "model_source": "$HARNESS_CACHE/models/target-x"}
    by_source = {"status": "ok", "model": "some-folder", "model_source": "random weights (tiny Llama-style ...)"}
    failed = {"status": "claimed", "model": "x"}
    assert [made_with_random_weights(r) for r in (real, by_name, by_source)] == [False, True, True]
    assert leaderboard_records([real, by_name, by_source, failed]) == [real]
    assert leaderboard_records([real, by_name, by_source, failed], include_random=True) == [real, by_name, by_source]


def test_a_run_with_random_weights_is_marked_and_left_out_of_the_leaderboard(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["run", "--methods", "ga", "--model", "random:tiny", "--results-dir", str(results), *QUICK]) == 0
    out = capsys.readouterr().out
    assert "made with random weights (random:<architecture>) left out" in out
    records = [json.loads(p.read_text()) for p in results.glob("synthetic/**/*.json")]
    assert {r["method"] for r in records} >= {"ga", "retain", "target"}
    assert all(r["model"] == "random:tiny" for r in records)
    assert all(r["model_source"].startswith("random weights") for r in records)   # also cells loaded from a prepared target
    board = (results / "LEADERBOARD.md").read_text()
    assert "random:tiny" not in board

    assert main(["leaderboard", "--results-dir", str(results), "--include-random", "--json"]) == 0
    board = (results / "LEADERBOARD.md").read_text()
    assert "random:tiny" in board and "GA" in board
    exported = json.loads((results / "LEADERBOARD.json").read_text())
    assert exported and "random:tiny" in json.dumps(exported)

    assert main(["leaderboard", "--results-dir", str(results), "--json"]) == 0
    assert "random:tiny" not in (results / "LEADERBOARD.md").read_text()
    assert "random:tiny" not in (results / "LEADERBOARD.json").read_text()
