"""Engine outputs cached by (model fingerprint, engine settings, request).

Evaluation is the costly part of a run, and the same model is often evaluated again: the target
and retain reference rows in every run, a re-run after a crash, ``harness eval`` of a model that
``run`` already scored. The key holds a hash of every weight byte, of the tokenizer and of the
engine's source code (``codeversion.engine_code``), so a hit means the same weights, tokenizer and
request under the same engine code and settings; log-probs are
stored as the float32 values the engine produced, so a cached answer equals a fresh one bit
for bit. One SQLite file under ``$HARNESS_CACHE`` (``--no-eval-cache`` turns it off).

The key also holds ``SCORING_CONVENTION``, the declared version of how the engine turns a
request into tokens and back (what is scored, how generations are decoded): an output stored
under an older convention would otherwise be served after the convention changed. Bump it
whenever a change moves any engine output for an unchanged request.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path

import numpy as np

from harness.runtime.codeversion import engine_code
from harness.engines.base import GenerationRequest, LogprobRequest, TokenScores
from harness.runtime.models import fingerprint

# History: 1 = answers scored without EOS, plain prompts only; 2 = request-level EOS
# (LogprobRequest.add_eos), chat-template prompts, decoding with clean_up_spaces, full-context
# texts; 3 = TOFU's and synthetic's EM/ES read the answer without the EOS prediction, and
# clean_up_spaces is done by harness.data.cleanup (transformers 5.x ignored the flag for BPE).
SCORING_CONVENTION = 3

SCHEMA = """CREATE TABLE IF NOT EXISTS outputs (
    model TEXT NOT NULL, request TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (model, request))"""


def tokenizer_fingerprint(tokenizer) -> str:
    """The vocabulary, special tokens and chat template: what decides how a text is tokenised."""
    h = hashlib.sha256()
    h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(
        {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}, sort_keys=True
    ).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    h.update(type(tokenizer).__name__.encode())
    return h.hexdigest()[:16]


def model_key(model, tokenizer, engine_settings: dict, convention: int = SCORING_CONVENTION) -> str:
    """What an output depends on besides the request: weights, tokenizer, engine code and
    settings, and the scoring convention."""
    settings = json.dumps({**engine_settings, "engine_code": engine_code(), "scoring_convention": convention},
                          sort_keys=True)
    return f"{fingerprint(model)}:{tokenizer_fingerprint(tokenizer)}:{hashlib.sha256(settings.encode()).hexdigest()[:12]}"


def request_key(request) -> str:
    kind = {GenerationRequest: "gen", LogprobRequest: "logprob"}[type(request)]
    fields = dataclasses.asdict(request)
    if kind == "logprob" and not fields["grad_norm"]:
        del fields["grad_norm"]   # keys of requests made before the field existed stay valid
    return kind + json.dumps(fields, sort_keys=True)


def _encode(value) -> bytes:
    if isinstance(value, str):
        return b"s" + value.encode()
    if value.grad_norm is not None:   # "g": the gradient norm (float64), then the scores as below
        return b"g" + np.asarray([value.grad_norm], np.float64).tobytes() + _encode(
            TokenScores(value.logprobs, value.greedy_match, value.mu, value.sigma))
    # "t": log-probs with the distribution's moments; "p": without them (an engine like vLLM)
    moments = value.mu is not None
    arrays = [np.asarray(value.logprobs, np.float32)]
    arrays += [np.asarray(value.mu, np.float32), np.asarray(value.sigma, np.float32)] if moments else []
    arrays += [np.asarray(value.greedy_match, np.uint8)]
    return (b"t" if moments else b"p") + np.asarray([len(value.logprobs)], np.int64).tobytes() + b"".join(a.tobytes() for a in arrays)


def _decode(blob: bytes):
    if blob[:1] == b"s":
        return blob[1:].decode()
    if blob[:1] == b"g":
        scores = _decode(blob[9:])
        scores.grad_norm = float(np.frombuffer(blob[1:9], np.float64)[0])
        return scores
    rows = 3 if blob[:1] == b"t" else 1
    n = int(np.frombuffer(blob[1:9], np.int64)[0])
    floats = np.frombuffer(blob[9 : 9 + 4 * rows * n], np.float32).reshape(rows, n).astype(np.float64)
    match = np.frombuffer(blob[9 + 4 * rows * n :], np.uint8).astype(bool)
    if rows == 1:
        return TokenScores(floats[0].tolist(), match.tolist(), None, None)
    return TokenScores(floats[0].tolist(), match.tolist(), floats[1].tolist(), floats[2].tolist())


class EvalCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60)
        db.execute(SCHEMA)
        return db

    def lookup(self, model: str, requests: list) -> dict:
        """{request: cached output} for the requests that are stored."""
        keys = {request_key(r): r for r in requests}
        found = {}
        with self._connect() as db:
            names = list(keys)
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                rows = db.execute(
                    f"SELECT request, value FROM outputs WHERE model = ? AND request IN ({','.join('?' * len(chunk))})",
                    [model, *chunk],
                )
                for name, blob in rows:
                    found[keys[name]] = _decode(blob)
        self.hits += len(found)
        self.misses += len(requests) - len(found)
        return found

    def store(self, model: str, outputs: dict) -> None:
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO outputs (model, request, value) VALUES (?, ?, ?)",
                [(model, request_key(r), _encode(v)) for r, v in outputs.items()],
            )


class CachedEngine:
    """An engine whose generate/logprobs answer stored requests from the cache, the rest live."""

    def __init__(self, engine, cache: EvalCache, model: str):
        self.engine, self.cache, self.model = engine, cache, model

    def __getattr__(self, attr):  # name, full_distribution, settings() of the engine inside
        if attr == "engine":
            raise AttributeError(attr)
        return getattr(self.engine, attr)

    def _answer(self, requests: list, run) -> list:
        found = self.cache.lookup(self.model, requests)
        todo = [r for r in requests if r not in found]
        if todo:
            fresh = dict(zip(todo, run(todo)))
            self.cache.store(self.model, fresh)
            found.update(fresh)
        return [found[r] for r in requests]

    @property
    def counts(self) -> dict[str, int]:
        return {"cache_hits": self.cache.hits, "cache_misses": self.cache.misses}

    def generate(self, requests, progress=None):
        return self._answer(requests, lambda todo: self.engine.generate(todo, progress))

    def logprobs(self, requests, progress=None):
        return self._answer(requests, lambda todo: self.engine.logprobs(todo, progress))
