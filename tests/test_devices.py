"""``pick_device``: what --device gives, and the message for each device this machine cannot use."""
from __future__ import annotations

import pytest
import torch

from harness.errors import HarnessError
from harness.runtime.models import pick_device


def test_default_is_cuda_when_there_is_one_else_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu") and pick_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")


def test_an_explicit_device_is_taken_as_given(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cpu") == torch.device("cpu")        # even with a GPU there
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert pick_device("cuda") == torch.device("cuda")


def test_a_gpu_index_past_the_last_gpu_names_the_ones_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(HarnessError, match=r"--device cuda:2: there are 2 CUDA GPU\(s\) \(cuda:0 to cuda:1\)"):
        pick_device("cuda:2")


def test_devices_this_machine_lacks_are_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(HarnessError, match=r"--device cuda: this torch .* sees no CUDA GPU; use --device cpu"):
        pick_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(HarnessError, match=r"--device mps: MPS is not available here; use --device cpu"):
        pick_device("mps")
    with pytest.raises(HarnessError, match=r"--device 'gpu0' is not a torch device; use cpu, cuda or cuda:N"):
        pick_device("gpu0")
