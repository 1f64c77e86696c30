"""Runs inside vLLM's worker process (``worker_extension_cls``); imports nothing heavy on purpose.

vLLM reloads weights in place layer by layer, and re-processes each layer whose weights it
loaded. A tied output head (``tie_word_embeddings``: SmolLM2, Llama-3.2-1B, Qwen2.5-0.5B) has no
weights of its own in the checkpoint, so it is never re-processed, and vLLM's CPU build keeps a
pre-packed copy of it for its matrix multiply: after a reload the model would read the new
embeddings but score with the old output layer (log-probs off by up to 18 nats, measured). The
extension re-ties the head to the embedding and re-runs its post-loading step.
"""
from __future__ import annotations

import logging

#: layers a reload finds no weights for, by design: the tied head (refreshed below) and the
#: rotary embedding (a cache computed from the config)
EXPECTED_UNLOADED = ("ParallelLMHead", "RotaryEmbedding")


class ExpectedReloadWarnings(logging.Filter):
    """Drops vLLM's "<layer>: Failed to load weights" on each reload for the layers above only;
    any other layer still warns. Without it every model switch logged two alarming lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        layer, _, rest = record.getMessage().partition(": ")
        return not (rest == "Failed to load weights" and layer in EXPECTED_UNLOADED)


logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(ExpectedReloadWarnings())


class TiedHeadRefresh:
    """Methods added to vLLM's worker; called by name through ``LLM.collective_rpc``."""

    def refresh_tied_output_head(self) -> str:
        config = self.model_runner.model_config.hf_text_config
        if not getattr(config, "tie_word_embeddings", False):
            return "untied"
        model = self.model_runner.get_model()
        modules = dict(model.named_modules())
        head = modules.get("lm_head")
        embed = next((m for name, m in modules.items() if name.endswith("embed_tokens")), None)
        if head is None or embed is None or not hasattr(head, "quant_method"):
            raise RuntimeError("tied output head: no lm_head/embed_tokens module found to refresh")
        state = "tied" if head.weight is embed.weight else "re-tied"
        head.weight = embed.weight
        head.quant_method.process_weights_after_loading(head)
        return state
