"""Prompts rendered by the tokenizer's chat template (OpenUnlearning's ``apply_chat_template``).

Instruct checkpoints published for TOFU (OpenUnlearning's Llama-3.x and Qwen2.5 targets and
retain models) were trained and are scored inside their chat template: a system message, the
question as the user turn, the answer as the assistant turn. A benchmark builds its plan
without a tokenizer, so it carries the prompt's structure as a ``ChatPrompt`` and the engine
(or the training batcher) renders it with the model's own tokenizer.

What is scored follows OpenUnlearning's ``preprocess_chat_instance`` (src/data/utils.py):
the whole conversation is tokenised by the template, the prompt is the template rendering of
the messages up to the generation prompt, and the scored labels are every token after it (the
answer and the template's end-of-turn tokens) plus EOS when the sequence does not already end
with it.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.errors import HarnessError


@dataclass(frozen=True)
class ChatPrompt:
    """One user turn, optionally after a system message; ``date_string`` feeds templates that
    print a date (Llama-3: ``"10 Apr 2025"`` in OpenUnlearning's configs; empty = template default)."""

    user: str
    system: str = ""
    date_string: str = ""

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": "user", "content": self.user}]


def prompt_text(prompt: "str | ChatPrompt") -> str:
    """A prompt as plain text, for what only needs its words (lengths, TF-IDF, messages)."""
    if isinstance(prompt, ChatPrompt):
        return "\n".join(part for part in (prompt.system, prompt.user) if part)
    return prompt


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _template(tokenizer, messages: list[dict[str, str]], generation_prompt: bool, date_string: str) -> list[int]:
    if not has_chat_template(tokenizer):
        raise HarnessError(
            "prompt_format 'chat' needs a tokenizer with a chat template, and this model's tokenizer has none; "
            "use the benchmark's plain prompt format (e.g. --set benchmark.prompt_format=phi)."
        )
    extra = {"date_string": date_string} if date_string else {}
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt, **extra)
    if not isinstance(ids, list):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def chat_prompt_ids(tokenizer, prompt: ChatPrompt) -> list[int]:
    """The prompt's tokens up to and including the assistant's generation prompt."""
    return _template(tokenizer, prompt.messages(), True, prompt.date_string)


def chat_encode(tokenizer, prompt: ChatPrompt, answer: str, add_eos: bool) -> tuple[list[int], int]:
    """(token ids of the whole conversation, number of prompt tokens): everything after the
    prompt is scored, with EOS appended when ``add_eos`` and the conversation does not end in it."""
    full = _template(tokenizer, [*prompt.messages(), {"role": "assistant", "content": answer}], False, prompt.date_string)
    if add_eos and tokenizer.eos_token_id is not None and full[-1] != tokenizer.eos_token_id:
        full.append(tokenizer.eos_token_id)
    return full, len(chat_prompt_ids(tokenizer, prompt))
