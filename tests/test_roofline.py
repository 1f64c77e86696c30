"""The memory-bandwidth bound of decoding (harness/engines/roofline.py), against counts made by hand
from the tiny Llama's dimensions."""
import math

import pytest
import torch

from harness.engines import roofline
from harness.runtime.models import build_tiny_random

# build_tiny_random(): hidden 64, intermediate 128, 2 layers, 4 heads of 16, 2 key-value heads
H, I, LAYERS, KV_WIDTH = 64, 128, 2, 2 * 16


def hand_count(vocab: int) -> int:
    """Weights one decoding step reads: the head (vocab x hidden), per layer q, k, v, o, the three
    MLP matrices and two norms, and the final norm; not the input table (one row of it)."""
    per_layer = H * H + 2 * H * KV_WIDTH + H * H + 3 * H * I + 2 * H
    return vocab * H + LAYERS * per_layer + H


def test_streamed_bytes_count_a_tied_table_once_and_an_untied_input_table_not_at_all():
    tied, tok = build_tiny_random()
    assert roofline.streamed_weight_bytes(tied, 4) == 4 * hand_count(len(tok))
    assert roofline.streamed_weight_bytes(tied.to(torch.bfloat16), 2) == 2 * hand_count(len(tok))

    untied = type(tied)(type(tied.config)(**{**tied.config.to_dict(), "tie_word_embeddings": False}))
    assert untied.get_output_embeddings().weight.data_ptr() != untied.get_input_embeddings().weight.data_ptr()
    assert sum(p.numel() for p in untied.parameters()) == hand_count(len(tok)) + len(tok) * H
    assert roofline.streamed_weight_bytes(untied, 4) == 4 * hand_count(len(tok))


def test_kv_bytes_per_token():
    model, _ = build_tiny_random()
    assert roofline.kv_bytes_per_token(model.config, 4) == 2 * LAYERS * KV_WIDTH * 4 == 512


def test_bound_reads_the_weights_every_step_and_a_growing_cache():
    # steps at 10, 11 and 12 cached tokens: 3 * 100 weight bytes + 33 * 2 cache bytes, at 50 B/s
    assert roofline.bound_seconds(3, 10, 100, 2, 50.0) == pytest.approx((300 + 66) / 50)


def test_decoding_time_excludes_the_prompt_pass(monkeypatch):
    clock = [0.0]
    calls = []

    def generate(n):   # 0.5 s for the prompt and the call, 0.01 s per token
        calls.append(n)
        clock[0] += 0.5 + 0.01 * n

    monkeypatch.setattr(roofline.time, "perf_counter", lambda: clock[0])
    figure = roofline.measure_decoding(generate, context=10, steps=4, weight_bytes=100, kv_per_token=2,
                                       bandwidth=1e5, repeats=2)
    assert calls == [2, 1, 1, 5, 5]
    assert figure.seconds == pytest.approx(0.04)
    bound = (4 * 100 + (11 + 12 + 13 + 14) * 2) / 1e5   # 0.005 s
    assert figure.bound_s == pytest.approx(bound) and figure.streamed_bytes == pytest.approx(500)
    assert figure.fraction == pytest.approx(bound / 0.04)
    assert figure.line("x") == "x: 10.00 ms per step, 0.00 GB/s streamed, 12.5% of the bound"


def test_copy_bandwidth_is_measured():
    bandwidth = roofline.copy_bandwidth(torch.device("cpu"), mib=8, repeats=2)
    assert math.isfinite(bandwidth) and bandwidth > 1e8   # any machine copies 100 MB/s
