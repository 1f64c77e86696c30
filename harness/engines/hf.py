"""The Hugging Face evaluation engine: batched greedy generation and teacher-forced log-probs.

Requests are sorted by length so batches carry little padding; generation pads on the left
and a row leaves its batch as soon as it ends; log-prob batches compute the full next-token
distribution only at the scored positions, a chunk of positions at a time, where they also
yield the greedy-match flags (exact memorisation, extraction strength) and the mean and
standard deviation of log p under the model's own distribution (Min-K%++). Continuations
scored under the same prompt (a correct, a paraphrased and several perturbed answers) share one
pass over that prompt through its KV cache. A memory budget bounds every batch.
"""
from __future__ import annotations

import copy
import inspect
import itertools
import sys

import torch
import torch.nn.functional as F
from transformers import StoppingCriteria

from harness.data.batching import IGNORE, encode
from harness.engines.base import GenerationRequest, LogprobRequest, TokenScores, TokenizedEngine
from harness.errors import HarnessError
from harness.runtime import threads



_SAID: set[str] = set()   # context-length warnings already given in this process


def cache_kwarg(model, cache) -> dict:
    """The KV cache as a forward keyword: ``cache`` where transformers renamed ``past_key_values`` (5.x),
    which otherwise warns (FutureWarning) on every forward call of every evaluation."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def cache_of(out):
    """The KV cache a forward returned, under the field name this transformers uses (no deprecation warning)."""
    return out.cache if "cache" in getattr(out, "__dataclass_fields__", {}) else out.past_key_values

class StopOnStrings(StoppingCriteria):
    """Stop a row once its *generated* text contains a stop string.

    transformers' own ``stop_strings`` also match across the prompt boundary (a prompt ending
    in "Answer:" plus a generated ":" matches "::"), which would cut generations short.
    """

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt_width: int):
        self.tokenizer, self.stops, self.prompt_width = tokenizer, stops, prompt_width

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


CPU_BATCH = 32            # on CPU compute is the limit: larger batches only cost memory
NOMINAL_TOKENS = 512      # the sequence length the GPU estimate plans for; longer batches may halve
CPU_BUDGET_GB = 1.5       # default evaluation memory budget on CPU (``eval.memory_budget_gb=0``)
GPU_BUDGET_SHARE = 0.6    # ... and on GPU, this share of the free memory
CPU_MAX_CHUNK = 128       # scored positions per chunk on CPU: larger chunks are slower there (the
                          # allocator maps fresh pages for every large temporary; docs/engines.md)


def memory_budget(device, budget_gb: float = 0.0, free_bytes: int | None = None) -> int:
    """Bytes the evaluation may use beyond the weights: ``budget_gb`` when set, else 1.5 GiB on
    CPU and 60% of the free memory on GPU."""
    if budget_gb and budget_gb > 0:
        return int(budget_gb * 2**30)
    if device.type != "cuda":
        return int(CPU_BUDGET_GB * 2**30)
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
    return int(GPU_BUDGET_SHARE * free_bytes)


def token_bytes(model, full_logits: bool = False) -> int:
    """Memory one token of a batch costs in a forward pass: its KV cache, a few hidden-sized and
    MLP-sized activations of the layer being computed, and, where the model returns logits at
    every position, three vocabulary-sized float32 rows (logits, their kept copy, slack)."""
    c = model.config
    width = next(model.parameters()).element_size()
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    inner = getattr(c, "intermediate_size", None) or 4 * c.hidden_size
    per_token = 2 * c.num_hidden_layers * kv_heads * head_dim * width + (12 * c.hidden_size + 4 * inner) * width
    return per_token + (3 * c.vocab_size * 4 if full_logits else 0)


def scored_position_bytes(model) -> int:
    """Float32 vocabulary rows alive at once when one position is scored: logits, log-softmax,
    probabilities, and two products (see ``_token_scores``)."""
    return 5 * model.config.vocab_size * 4


def auto_batch_size(model, device, free_bytes: int | None = None, budget_gb: float = 0.0) -> int:
    """Sequences per batch from the memory budget on GPU (``eval.batch_size=0``); 32 on CPU.

    The budget (by default 60% of free memory) over the per-token cost of ``token_bytes`` at
    NOMINAL_TOKENS tokens a sequence; the vocabulary-sized work is chunked under the same
    budget, so it does not grow with the batch. A rough estimate on purpose: a batch that still
    runs out of memory is halved and retried, and longer texts get fewer rows (``_rows_that_fit``).
    """
    if device.type != "cuda":
        return CPU_BATCH
    budget = memory_budget(device, budget_gb, free_bytes)
    return int(max(1, min(256, budget // (token_bytes(model) * NOMINAL_TOKENS))))


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


class HFEngine(TokenizedEngine):
    """Evaluates one model; ``batch_size`` is the number of sequences per forward pass."""

    name = "hf"
    full_distribution = True

    def __init__(self, model, tokenizer, batch_size: int = 16, max_length: int = 2048, share_prompts: bool = True,
                 memory_budget_gb: float = 0.0):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        # The budget bounds what one batch may hold beyond the weights: a quarter for the
        # vocabulary-sized rows of the scored positions (computed in chunks), the rest for the
        # batch's tokens (``_rows_that_fit``); on GPU it also sizes the default batch.
        self.memory_budget = memory_budget(self.device, memory_budget_gb)
        self.batch_size = batch_size if batch_size > 0 else auto_batch_size(model, self.device, budget_gb=memory_budget_gb)
        self.chunk = max(1, self.memory_budget // 4 // scored_position_bytes(model))
        if self.device.type != "cuda":
            self.chunk = min(self.chunk, CPU_MAX_CHUNK)
        self.max_length = max_length
        self.share_prompts = share_prompts   # run a prompt once for all continuations scored under it
        self.sort_by_length = True           # batch similar lengths together (off only for the naive baseline)
        self.drop_finished = True            # finished rows leave a generation batch (off only for the naive baseline)
        # Whole texts are right-padded: in a causal model no real token attends to the pads after
        # it, so the padding mask is not needed and attention may skip the masked-out half
        # (same outputs, measured bit for bit; off only for the naive baseline).
        self.causal_only = True
        self.head_at_kept_positions = (
            getattr(getattr(model, "config", None), "model_type", None) in HEAD_ONLY_AT_KEPT_POSITIONS
            and hasattr(model, "base_model_prefix") and hasattr(model, "get_output_embeddings")
        )
        self.oom_retries = 0   # how often a batch was halved after running out of memory

    def settings(self) -> dict:
        """What the outputs depend on besides weights, tokenizer and request (the cache key).

        The batch size is left out: it changes only the padding, which moves log-probs by
        float rounding (about 1e-6), never a greedy token in our tests. The CPU thread count is in
        (``threads.identity``): it is part of a CPU cell's identity, so a cell re-run with another
        count computes its scores anew rather than reading the other count's.
        """
        import transformers

        return {
            "engine": "hf", "dtype": str(next(self.model.parameters()).dtype), "device": self.device.type,
            "max_length": self.max_length, "torch": torch.__version__, "transformers": transformers.__version__,
            **threads.identity(self.device),
        }

    def describe(self) -> dict:
        """How this engine ran (for records and ``harness bench``); not part of the cache key."""
        return {"memory_budget_gb": round(self.memory_budget / 2**30, 3), "position_chunk": self.chunk,
                "batch_size": self.batch_size, "drop_finished_rows": self.drop_finished}

    def _rows_that_fit(self, widths: list[int]) -> int:
        """How many of the next rows (token counts ``widths``, in batch order) fit the budget
        together (at least one): rows x longest x the per-token cost within 3/4 of it."""
        per_token = token_bytes(self.model, full_logits=not self.head_at_kept_positions)
        room, longest = 0.75 * self.memory_budget, 0
        for n, width in enumerate(widths):
            longest = max(longest, width)
            if n and (n + 1) * longest * per_token > room:
                return n
        return len(widths)

    # --- log-probs -------------------------------------------------------------------------
    def _forward(self, ids, mask, positions, keep, past=None, use_cache=False):
        """Features at the ``keep`` positions only (row-major), and the KV cache when asked for.

        For decoder families whose logits are exactly ``lm_head(last hidden state)`` the
        features are hidden states and the head runs later, chunk by chunk, on the kept
        positions alone (``_logits``); it is a fifth of a small model's per-token compute and
        most positions of a scored text are not scored. Other models give their full logits.
        """
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=use_cache, **cache_kwarg(self.model, past))
        if self.head_at_kept_positions:
            out = getattr(self.model, self.model.base_model_prefix)(**kwargs)
            features = out.last_hidden_state[keep]
        else:
            out = self.model(**kwargs)
            features = out.logits[keep]
        return features, (cache_of(out) if use_cache else None)

    def _logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(features) if self.head_at_kept_positions else features

    def _token_scores(self, features: torch.Tensor, tokens: torch.Tensor, counts: list[int]) -> list[TokenScores]:
        """Scores of the kept positions, ``self.chunk`` positions at a time (bounded memory)."""
        parts = [_token_scores(self._logits(features[s : s + self.chunk]), tokens[s : s + self.chunk])
                 for s in range(0, features.shape[0], self.chunk)]
        logp, match, mu, sigma = (torch.cat(p).tolist() for p in zip(*parts)) if parts else ([], [], [], [])
        out, offset = [], 0
        for n in counts:
            sl = slice(offset, offset + n)
            out.append(TokenScores(logp[sl], match[sl], mu[sl], sigma[sl]))
            offset += n
        return out

    def _score_group(self, encoded: list[tuple[list[int], list[int]]]) -> list[TokenScores]:
        """Whole texts in one right-padded forward pass."""
        width = max(len(seq) for seq, _ in encoded)
        ids = torch.full((len(encoded), width), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full_like(ids, IGNORE)
        mask = torch.zeros_like(ids)
        for row, (seq, lab) in enumerate(encoded):
            ids[row, : len(seq)], labels[row, : len(lab)], mask[row, : len(seq)] = torch.tensor(seq), torch.tensor(lab), 1
        target = labels[:, 1:].to(self.device)
        scored = target != IGNORE
        keep = torch.cat([scored, torch.zeros_like(scored[:, :1])], dim=1)  # position t predicts token t+1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        attention = None if self.causal_only else mask.to(self.device)
        features, _ = self._forward(ids.to(self.device), attention, positions.to(self.device), keep)
        return self._token_scores(features, target[scored], scored.sum(1).tolist())

    def _score_shared_prompts(self, prompts: list[list[int]], rows: list[tuple[int, list[int]]]) -> list[TokenScores]:
        """Continuations that share prompts: each prompt runs once, its KV cache serves them all.

        ``rows`` holds (index into ``prompts``, continuation ids). Prompts are left-padded so
        they end in the same column; positions are given explicitly, so every token sees the
        same positions as in a whole-text pass and the scores agree to rounding.
        """
        width = max(len(p) for p in prompts)
        p_ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        p_mask = torch.zeros_like(p_ids)
        for row, p in enumerate(prompts):
            p_ids[row, width - len(p) :], p_mask[row, width - len(p) :] = torch.tensor(p), 1
        p_pos = (p_mask.cumsum(-1) - 1).clamp(min=0)
        last = torch.zeros_like(p_mask, dtype=torch.bool)
        last[:, -1] = True
        first, cache = self._forward(p_ids.to(self.device), p_mask.to(self.device), p_pos.to(self.device), last.to(self.device), use_cache=True)

        owner = torch.tensor([p for p, _ in rows])
        c_width = max(len(c) for _, c in rows)
        c_ids = torch.full((len(rows), c_width), self.tokenizer.pad_token_id, dtype=torch.long)
        c_mask = torch.zeros_like(c_ids)
        for row, (_, c) in enumerate(rows):
            c_ids[row, : len(c)], c_mask[row, : len(c)] = torch.tensor(c), 1
        cache.batch_select_indices(owner.to(self.device))   # one copy of each prompt's cache per continuation
        mask = torch.cat([p_mask[owner], c_mask], dim=1)
        lengths = torch.tensor([len(prompts[p]) for p, _ in rows])
        positions = lengths[:, None] + torch.arange(c_width)[None, :]
        keep = torch.zeros_like(c_mask, dtype=torch.bool)   # continuation token j predicts token j+1
        keep[:, :-1] = c_mask[:, 1:].bool()
        rest, _ = self._forward(c_ids.to(self.device), mask.to(self.device), positions.to(self.device), keep.to(self.device), past=cache)

        # Reassemble row-major: each row's first token from its prompt, the rest from its own pass.
        counts = c_mask.sum(1).tolist()
        order, offset = [], len(prompts)
        for row, n in enumerate(counts):
            order.append(int(owner[row]))
            order.extend(range(offset, offset + n - 1))
            offset += n - 1
        features = torch.cat([first, rest])[torch.tensor(order, device=self.device)]
        return self._token_scores(features, c_ids[c_mask.bool()].to(self.device), counts)

    @torch.inference_mode()
    def generate(self, requests: list[GenerationRequest], progress=None) -> list[str]:
        encoded = [self.prompt_ids(r.prompt) for r in requests]
        clusters = _prefix_clusters(encoded) if self.share_prompts else [-1] * len(encoded)
        # Batch only requests with the same settings and shared-prefix cluster; inside, similar lengths.
        by_length = (lambda i: len(encoded[i])) if self.sort_by_length else (lambda i: 0)  # noqa: E731
        setting = lambda i: (requests[i].max_new_tokens, requests[i].stop, requests[i].clean_up_spaces, clusters[i])  # noqa: E731
        order = sorted(range(len(requests)), key=lambda i: (*setting(i), by_length(i)))
        prefix_caches: dict[tuple, object] = {}

        def next_group(start: int) -> list[int]:
            group = [order[start]]
            while len(group) < self.batch_size and start + len(group) < len(order):
                if setting(order[start + len(group)]) != setting(order[start]):
                    break
                group.append(order[start + len(group)])
            return group[: self._rows_that_fit([len(encoded[i]) + requests[i].max_new_tokens for i in group])]

        def work(group: list[int]) -> list[str]:
            prompts = [encoded[i] for i in group]
            prefix = _common_prefix(prompts) if clusters[group[0]] >= 0 and len(group) > 1 else ()
            if len(prefix) < MIN_SHARED_PREFIX:
                prefix = ()
            return self._generate_group(prompts, requests[group[0]], prefix, prefix_caches)

        done = self._in_batches(order, next_group, work, progress, "generate")
        return [done[i] for i in range(len(requests))]

    def _prefix_cache(self, prefix: tuple, caches: dict):
        """The KV cache of a shared prompt prefix (e.g. MUSE's 10-shot examples), computed once."""
        if prefix not in caches:
            ids = torch.tensor([prefix], device=self.device)
            run = getattr(self.model, self.model.base_model_prefix) if self.head_at_kept_positions else self.model
            caches.clear()   # batches come grouped by prefix: keep only the current one
            caches[prefix] = cache_of(run(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True))
        return caches[prefix]

    def _generate_group(self, prompts: list[list[int]], head: GenerationRequest, prefix: tuple = (), caches=None) -> list[str]:
        """Greedy generation for one batch. With a shared ``prefix`` the rows are laid out as
        [prefix | left padding | rest of prompt]: the prefix sits at the same positions in every
        row, so its KV cache (computed once) serves them all, and positions computed from the
        attention mask are those of the unpadded prompt."""
        tok = self.tokenizer
        n = len(prefix)
        rests = [p[n:] for p in prompts]
        width = max(len(r) for r in rests)
        ids = torch.full((len(prompts), n + width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        ids[:, :n], mask[:, :n] = torch.tensor(prefix, dtype=torch.long), 1
        for row, r in enumerate(rests):  # left padding of the rest: every prompt ends at the same column
            ids[row, n + width - len(r) :] = torch.tensor(r)
            mask[row, n + width - len(r) :] = 1
        extra, cache = {}, None
        if n:
            cache = copy.deepcopy(self._prefix_cache(prefix, caches))
            cache.batch_repeat_interleave(len(prompts))
            extra = cache_kwarg(self.model, cache)
        if self.drop_finished and plain_greedy(self.model):
            rows = self._greedy(ids.to(self.device), mask.to(self.device), n, head, cache)
            return [self.decode(row, head) for row in rows]
        generated = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=head.max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            stopping_criteria=[StopOnStrings(tok, head.stop, n + width)] if head.stop else None,
            **extra,
        )
        return [self.decode(row, head) for row in generated[:, n + width :].tolist()]

    def _greedy(self, ids, mask, cached: int, head: GenerationRequest, cache=None) -> list[list[int]]:
        """Greedy decoding in which a row leaves the batch as soon as it ends (EOS or a stop
        string), so finished rows stop costing; ``model.generate`` keeps decoding them until the
        batch's longest answer ends. The stop check decodes only each row's last few tokens.

        Same inputs as ``model.generate`` gets (left padding, positions from the attention mask,
        the first ``cached`` tokens already in ``cache``) and the same argmax, so the same text.
        """
        eos = self.tokenizer.eos_token_id
        window = max((len(s) for s in head.stop), default=0) + 8   # tokens: each adds >= 1 character
        live, out = list(range(ids.shape[0])), [[] for _ in range(ids.shape[0])]
        step_ids = ids[:, cached:]
        positions = ((mask.cumsum(-1) - 1).clamp(min=0))[:, cached:]
        for step in range(head.max_new_tokens):
            logits, cache = self._last_logits(step_ids, mask, positions, cache)
            chosen = logits.argmax(-1)
            still = []
            for j, token in enumerate(chosen.tolist()):
                row = out[live[j]]
                row.append(token)
                if token != eos and not (head.stop and self._ends_in_stop(row[-window:], head.stop)):
                    still.append(j)
            if not still or step == head.max_new_tokens - 1:
                break
            if len(still) < len(live):   # drop finished rows from the cache, mask and next input
                keep = torch.tensor(still, device=ids.device)
                cache.batch_select_indices(keep)
                mask, chosen, live = mask[keep], chosen[keep], [live[j] for j in still]
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
            step_ids, positions = chosen[:, None], mask.sum(1, keepdim=True) - 1
        return out

    def _last_logits(self, ids, mask, positions, cache):
        """Next-token logits (float32) at the last position, and the updated KV cache."""
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **cache_kwarg(self.model, cache))
        if self.head_at_kept_positions:
            out = getattr(self.model, self.model.base_model_prefix)(**kwargs)
            logits = self.model.get_output_embeddings()(out.last_hidden_state[:, -1])
        else:
            out = self.model(**kwargs)
            logits = out.logits[:, -1]
        return logits.float(), cache_of(out)

    def _ends_in_stop(self, tail: list[int], stops: tuple[str, ...]) -> bool:
        text = self.tokenizer.decode(tail, skip_special_tokens=True)
        return any(s and s in text for s in stops)

    def _in_batches(self, order: list[int], next_group, work, progress, desc: str) -> dict:
        """Run ``work`` on consecutive groups of ``order``; returns {request index: result}.

        A group that runs out of memory is retried after the batch size is halved.
        """
        results: dict = {}
        bar = progress(total=len(order), desc=desc, unit="req") if progress else None
        start = 0
        while start < len(order):
            group = next_group(start)
            answers = self._shrinking_on_oom(lambda: work(group), len(group))
            if answers is None:
                continue  # out of memory: retry the same requests in a smaller batch
            for i, answer in zip(group, answers):
                results[i] = answer
            if bar:
                bar.update(len(group))
            start += len(group)
        if bar:
            bar.close()
        return results

    def _shrinking_on_oom(self, work, size: int):
        """Run ``work``; on out-of-memory halve the batch size and return None (the caller retries)."""
        try:
            return work()
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not _is_oom(exc):
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if size <= 1:
                raise HarnessError(
                    "out of memory during evaluation even with batch size 1: lower eval.max_length, "
                    "use a smaller model, or a device with more memory."
                ) from None
            self.batch_size = max(1, self.batch_size // 2)
            self.oom_retries += 1
            return None

    def logprobs(self, requests: list[LogprobRequest], progress=None) -> list[TokenScores]:
        results = self._scored(requests, progress)
        for request, scores in zip(requests, results):
            if request.grad_norm:
                scores.grad_norm = self._grad_norm(request)
        return results

    def _grad_norm(self, request: LogprobRequest) -> float:
        """GradNorm MIA statistic of one text (OpenUnlearning's ``mia/gradnorm.py``, p = 2): the loss is
        the mean NLL of the scored tokens, and the statistic the mean over parameter tensors of the
        L2 norm of each tensor's gradient. One text per backward pass; weights are not changed and
        no gradient is left behind. Eval mode (OpenUnlearning switches to train mode, which differs
        only where the model has dropout)."""
        ids, labels = self.scored_ids(request)
        ids_t = torch.tensor([ids], device=self.device)
        target = torch.tensor(labels[1:], device=self.device)
        scored = target != IGNORE
        if not bool(scored.any()):
            return float("nan")
        params = list(self.model.parameters())
        flags = [p.requires_grad for p in params]
        try:
            with torch.inference_mode(False), torch.enable_grad():
                for p in params:
                    p.requires_grad_(True)
                    p.grad = None
                logits = self.model(input_ids=ids_t).logits[0, :-1][scored].float()
                loss = F.cross_entropy(logits, target[scored])
                loss.backward()
                norms = [p.grad.detach().float().norm(2) for p in params if p.grad is not None]
                return float(torch.stack(norms).mean())
        finally:
            for p, flag in zip(params, flags):
                p.grad = None
                p.requires_grad_(flag)

    @torch.inference_mode()
    def _scored(self, requests: list[LogprobRequest], progress=None) -> list[TokenScores]:
        encoded = [self.scored_ids(r) for r in requests]
        self._warn_cut(requests, encoded)
        shared, alone = _prompt_groups(requests, encoded, self.max_length) if self.share_prompts else ({}, list(range(len(requests))))
        results: list = [None] * len(requests)
        if alone:
            order = sorted(alone, key=lambda i: len(encoded[i][0])) if self.sort_by_length else alone
            def next_group(start: int) -> list[int]:
                group = order[start : start + self.batch_size]
                return group[: self._rows_that_fit([len(encoded[i][0]) for i in group])]

            work = lambda group: self._score_group([encoded[i] for i in group])  # noqa: E731
            for i, scores in self._in_batches(order, next_group, work, progress, "log-probs").items():
                results[i] = scores
        if shared:
            self._score_shared(shared, encoded, results, progress)
        return results

    def _warn_cut(self, requests: list[LogprobRequest], encoded) -> None:
        """Say when a text that should be scored whole was cut at the model's context length."""
        cut = [i for i, r in enumerate(requests) if r.full_context and len(encoded[i][0]) >= self._limit(r)
               and len(encode(self.tokenizer, r.prompt, r.continuation, 10**9, r.add_eos)[0]) > self._limit(r)]
        message = (f"{len(cut)} text(s) are longer than the model's context of {self._limit(requests[cut[0]])} "
                   "tokens and were scored only up to it.") if cut else ""
        if message and message not in _SAID:   # the same texts for every model of a run: said once
            _SAID.add(message)
            print(f"warning: evaluation: {message}", file=sys.stderr, flush=True)   # one line, not a Python warning's two

    def _score_shared(self, shared: dict[tuple, list[int]], encoded, results: list, progress) -> None:
        """Batches of whole prompt groups (a group larger than a batch is split), by length."""
        prompt_of = {i: prompt for prompt, members in shared.items() for i in members}
        units = [members[i : i + self.batch_size] for members in shared.values() for i in range(0, len(members), self.batch_size)]
        units.sort(key=lambda u: (len(prompt_of[u[0]]), max(len(encoded[i][0]) for i in u)))
        flat = [i for u in units for i in u]
        bounds = set(itertools.accumulate(len(u) for u in units))

        def next_group(start: int) -> list[int]:
            """Whole groups up to the batch size; a group that alone exceeds it is split."""
            end = min(start + self.batch_size, len(flat))
            end = start + self._rows_that_fit([len(encoded[i][0]) for i in flat[start:end]])
            cut = max((b for b in range(start + 1, end + 1) if b in bounds), default=end)
            return flat[start:cut]

        def work(group: list[int]) -> list[TokenScores]:
            prompts: dict[tuple, int] = {}
            rows = []
            for i in group:
                prompt = prompt_of[i]
                rows.append((prompts.setdefault(prompt, len(prompts)), encoded[i][0][len(prompt) :]))
            return self._score_shared_prompts([list(p) for p in prompts], rows)

        for i, scores in self._in_batches(flat, next_group, work, progress, "log-probs (shared prompts)").items():
            results[i] = scores


# Model types whose logits are exactly lm_head(final hidden state): no logit scaling or soft-capping.
HEAD_ONLY_AT_KEPT_POSITIONS = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi", "phi3", "olmo", "olmo2", "gpt_neox", "smollm3"})


# Generation settings under which greedy decoding is a plain argmax of the logits; a model whose
# generation_config sets any of them (a repetition penalty, banned words...) uses model.generate.
PENALTIES = ("repetition_penalty", "encoder_repetition_penalty", "guidance_scale")   # neutral at 1
LOGIT_PROCESSING = ("no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "min_length", "min_new_tokens",
                    "bad_words_ids", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens",
                    "begin_suppress_tokens", "sequence_bias", "exponential_decay_length_penalty",
                    "watermarking_config", "remove_invalid_values")   # neutral when unset


def plain_greedy(model) -> bool:
    """Whether greedy decoding of ``model`` is a plain argmax of its logits: no setting of its
    generation_config (a repetition penalty, banned words...) changes them; else model.generate."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return False
    return (all(getattr(config, name, None) in (None, 1) for name in PENALTIES)
            and all(not getattr(config, name, None) for name in LOGIT_PROCESSING))


MIN_SHARED_PREFIX = 64   # tokens: shorter shared prompt prefixes are not worth a separate cache


def _prefix_clusters(encoded: list[list[int]]) -> list[int]:
    """A cluster id per prompt: prompts that share their first MIN_SHARED_PREFIX tokens (and
    have at least one more) are generated together from one prefix cache; -1 for the rest."""
    keys = [tuple(ids[:MIN_SHARED_PREFIX]) if len(ids) > MIN_SHARED_PREFIX else None for ids in encoded]
    counts: dict[tuple, int] = {}
    for k in keys:
        if k is not None:
            counts[k] = counts.get(k, 0) + 1
    ids: dict[tuple, int] = {}
    return [ids.setdefault(k, len(ids)) if k is not None and counts[k] > 1 else -1 for k in keys]


def _common_prefix(prompts: list[list[int]]) -> tuple:
    """The longest common token prefix, leaving every prompt at least one token of its own."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for p in prompts[1:]:
        n = min(n, next((j for j in range(n) if p[j] != first[j]), n))
    return tuple(first[: max(0, n)])


def _prompt_length(encoded: tuple[list[int], list[int]]) -> int:
    labels = encoded[1]
    return next((j for j, t in enumerate(labels) if t != IGNORE), len(labels))


def _prompt_groups(requests, encoded, max_length: int) -> tuple[dict[tuple, list[int]], list[int]]:
    """Requests whose prompt (as tokens) is shared by at least one other request, and the rest.

    Texts without a prompt, or cut by ``max_length``, are scored whole.
    """
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        ids, _ = encoded[i]
        n = _prompt_length(encoded[i])
        if r.prompt and 0 < n < len(ids) and len(ids) < max_length:
            groups.setdefault(tuple(ids[:n]), []).append(i)
    shared = {k: v for k, v in groups.items() if len(v) > 1}
    in_shared = {i for v in shared.values() for i in v}
    return shared, [i for i in range(len(requests)) if i not in in_shared]


def _token_scores(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per position: log p of the token, greedy match, and the mean/std of log p under the
    model (Min-K%++). Row-wise only, so a chunk of positions gives the same bits as the whole."""
    rows = F.log_softmax(logits.float(), dim=-1)
    logp = rows.gather(1, tokens.unsqueeze(1)).squeeze(1)
    match = rows.argmax(-1) == tokens
    probs = rows.exp()
    mu = (probs * rows).sum(-1)
    sigma = ((probs * rows.square()).sum(-1) - mu.square()).clamp(min=0).sqrt()
    return logp, match, mu, sigma
