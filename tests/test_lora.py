"""LoRA through the shared loop: only adapters train, the merged weights are base + (alpha/r)·B·A, the
model leaves the loop plain (same module tree and state-dict names), methods' trainable parameters
decide where adapters go, and a LoRA GA run unlearns."""
import copy
import json

import pytest
import torch

import harness.training.lora as lora_module
from harness.cli import main
from harness.data.batching import Example, make_batch
from harness.errors import HarnessError
from harness.methods.ga import GradientAscent
from harness.methods.rmu import RMU, RMUConfig
from harness.runtime.models import build_tiny_random
from harness.training.finetune import Finetune
from harness.training.lora import LoraSettings
from harness.training.losses import answer_ce
from harness.training.loop import TrainConfig, train

FACTS = [Example(f"Q{i}:", f" fact number {i} is {w}") for i, w in enumerate(["zorb", "quix", "mavel", "tonk"])]
OTHER = [Example(f"R{i}:", f" other {w}") for i, w in enumerate(["alpha", "beta", "gamma", "delta"])]
CFG = TrainConfig(lr=1e-2, epochs=3, global_batch=4, micro_batch=2, weight_decay=0.0)


@pytest.fixture
def captured(monkeypatch):
    """(layer name, base weight, A, B, scale) of every adapter just before it is merged."""
    seen = []
    original = lora_module.merge_and_remove

    def recording(model):
        for name, m in lora_module.lora_layers(model):
            seen.append((name, m.get_base_layer().weight.detach().clone(), m.lora_A["default"].weight.detach().clone(),
                         m.lora_B["default"].weight.detach().clone(), m.scaling["default"]))
        original(model)

    monkeypatch.setattr(lora_module, "merge_and_remove", recording)
    return seen


def test_only_adapters_train_and_the_merge_is_base_plus_scaled_ba(tiny, captured):
    model, tok = tiny
    start = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    settings = LoraSettings(r=4, alpha=8.0)
    result = train(model, tok, GradientAscent(), FACTS, None, CFG, seed=0, lora=settings)
    assert result.status == "ok" and result.steps == 3
    # the model is plain again: same names, no adapter modules, requires_grad as before
    assert list(model.state_dict()) == list(start)
    assert not lora_module.lora_layers(model)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    adapted = {name + ".weight" for name, *_ in captured}
    head = model.get_output_embeddings()
    linear = {n + ".weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    assert adapted == linear   # every linear layer but the (tied) head
    for name, base, a, b, scale in captured:
        key = name + ".weight"
        assert torch.equal(base, start[key]), "the base weight must not train"
        assert b.abs().max() > 0, "B must have trained away from 0"
        assert scale == pytest.approx(8.0 / 4)
        assert torch.allclose(model.state_dict()[key], base + scale * b @ a, atol=1e-6)
    for key, value in start.items():
        if key not in adapted:
            assert torch.equal(model.state_dict()[key], value), key


def test_adapters_follow_the_methods_trainable_parameters(tiny, captured):
    """RMU trains mlp.down_proj of its chosen layers only: LoRA adapts exactly those."""
    model, tok = tiny
    method = RMU(RMUConfig(layer=1, update_layers=1, steering_coeff=5.0, alpha=1.0))
    chosen = {id(p) for p in method.trainable_parameters(model)}
    expected = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and id(m.weight) in chosen}
    train(model, tok, method, FACTS, OTHER, CFG, seed=0, lora=LoraSettings(r=2))
    assert {name for name, *_ in captured} == expected and len(expected) == 1


def test_targets_and_bad_settings(tiny, captured):
    model, tok = tiny
    train(model, tok, GradientAscent(), FACTS, None, CFG, seed=0, lora=LoraSettings(r=2, targets="q_proj,v_proj"))
    assert {name.rsplit(".", 1)[-1] for name, *_ in captured} == {"q_proj", "v_proj"}
    with pytest.raises(HarnessError, match="no linear layer matching"):
        train(model, tok, GradientAscent(), FACTS, None, CFG, seed=0, lora=LoraSettings(r=2, targets="nothing_here"))
    assert not lora_module.lora_layers(model)
    for bad in (dict(r=-1), dict(r=2, alpha=0), dict(r=2, dropout=1.0)):
        with pytest.raises(HarnessError):
            LoraSettings(**bad)


def test_lora_ga_raises_the_forget_loss():
    model, tok = build_tiny_random()
    model = model.float()
    train(model, tok, Finetune(), FACTS, None,
          TrainConfig(lr=3e-3, epochs=30, global_batch=4, micro_batch=4, weight_decay=0.0), seed=0)
    with torch.no_grad():
        before = answer_ce(model.eval(), make_batch(tok, FACTS)).item()
    result = train(model, tok, GradientAscent(), FACTS, None,
                   TrainConfig(lr=1e-2, epochs=5, global_batch=4, weight_decay=0.0), seed=0, lora=LoraSettings(r=8, alpha=16))
    with torch.no_grad():
        after = answer_ce(model.eval(), make_batch(tok, FACTS)).item()
    assert result.status == "ok" and after > before + 0.5, (before, after)


def test_cli_records_lora_and_keeps_the_cell_apart(tmp_path):
    args = ["run", "--methods", "ga", "--benchmark", "synthetic", "--model", "tiny-random", "--limit", "3",
            "--set", "finetune.epochs=1", "--set", "train.epochs=1", "--no-save-models", "--results-dir", str(tmp_path)]
    assert main(args + ["--set", "train.lora.r=4", "--set", "train.lora.alpha=8"]) == 0
    assert main(args) == 0
    records = [json.loads(p.read_text()) for p in tmp_path.glob("synthetic/tiny-random/ga/*.json")]
    assert len(records) == 2   # a LoRA cell and a full fine-tuning cell
    with_lora = [r for r in records if "lora" in r["config"]]
    assert len(with_lora) == 1 and with_lora[0]["config"]["lora"]["r"] == 4 and with_lora[0]["config"]["lora"]["alpha"] == 8.0
    assert with_lora[0]["status"] == "ok"
    assert main(args + ["--set", "train.lora.r=-2"]) != 0


def test_per_epoch_callback_sees_plain_merged_weights(tiny):
    model, tok = tiny
    keys = list(model.state_dict())
    seen = []

    def on_epoch_end(epoch, m):
        seen.append((list(m.state_dict()), not lora_module.lora_layers(m), {k: v.clone() for k, v in m.state_dict().items()}))

    train(model, tok, GradientAscent(), FACTS, None, CFG, seed=0, lora=LoraSettings(r=2), on_epoch_end=on_epoch_end)
    assert len(seen) == 3 and all(names == keys and plain for names, plain, _ in seen)
    assert all(torch.equal(seen[-1][2][k], v) for k, v in model.state_dict().items())   # the last epoch is the result
