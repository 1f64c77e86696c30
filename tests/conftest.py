"""Shared fixtures. Tests never touch the network: models are built in code.

``HARNESS_DATA_ROOT`` (default: ../shared/data beside the checkout) is the one setting through
which tests find the third-party benchmark files; tests that need them skip when it is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")   # the CLI's thread choice (harness/runtime/threads.py) then agrees with _one_thread
# Runs and CLI calls evaluate with the HF engine unless a test asks for vLLM: `auto` would start
# vLLM (20-55 s on a CPU) in every test where it is installed. tests/test_vllm_engine.py covers it.
os.environ.setdefault("HARNESS_ENGINE", "hf")


def data_root() -> Path:
    return Path(os.environ.get("HARNESS_DATA_ROOT", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run far faster on one thread than on two contended ones."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Prepared and converted models go to a per-session temporary cache, never ~/.cache."""
    previous = os.environ.get("HARNESS_CACHE")
    os.environ["HARNESS_CACHE"] = str(tmp_path_factory.mktemp("harness-cache"))
    yield
    if previous is None:
        os.environ.pop("HARNESS_CACHE", None)
    else:
        os.environ["HARNESS_CACHE"] = previous


@pytest.fixture
def tiny():
    from harness.runtime.models import build_tiny_random

    model, tok = build_tiny_random()
    return model.float().eval(), tok
