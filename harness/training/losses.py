"""Token-level quantities the method losses are written in (reference.md section 3 notation).

``answer_ce`` is CE(B), the mean token cross-entropy over the answer tokens of a batch;
``sequence_logprob`` is log pi(y|x), the sum of answer-token log-probs per example.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.data.batching import IGNORE, TokenBatch


def shifted(batch: TokenBatch, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at positions that predict a label, the labels, and the answer mask."""
    logits = logits[:, :-1, :]
    labels = batch.labels[:, 1:]
    mask = labels != IGNORE
    return logits, labels.clamp(min=0), mask


def token_logprobs(model, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the labels [B, T-1] and the answer mask [B, T-1]."""
    logits, labels, mask = shifted(batch, model(**batch.model_inputs()).logits)
    logp = torch.gather(F.log_softmax(logits.float(), dim=-1), 2, labels.unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def answer_ce(model, batch: TokenBatch) -> torch.Tensor:
    """CE(B): mean token cross-entropy over all answer tokens of the batch."""
    logits, labels, mask = shifted(batch, model(**batch.model_inputs()).logits)
    return F.cross_entropy(logits[mask].float(), labels[mask])


def sequence_logprob(model, batch: TokenBatch) -> torch.Tensor:
    """log pi(y|x) per example: the sum of answer-token log-probs [B]."""
    logp, _ = token_logprobs(model, batch)
    return logp.sum(-1)


def answer_kl(model, reference_model, batch: TokenBatch) -> torch.Tensor:
    """KL(pi_ref || pi_theta) per answer token, averaged over answer tokens (reference frozen)."""
    logits, _, mask = shifted(batch, model(**batch.model_inputs()).logits)
    with torch.no_grad():
        ref_logits, _, _ = shifted(batch, reference_model(**batch.model_inputs()).logits)
    logq = F.log_softmax(logits[mask].float(), dim=-1)
    logp_ref = F.log_softmax(ref_logits[mask].float(), dim=-1)
    return F.kl_div(logq, logp_ref, log_target=True, reduction="batchmean")
