"""The line under a leaderboard table when its rows were made with different library versions.

Every record stores the versions of the libraries that change numbers (``versions``; vLLM's under
``eval_engines`` where vLLM served the evaluation). Two rows made with, say, transformers 5.24 and
5.25 can differ by the version alone, so a table mixing them says which rows used which.
Records that did not store a version (older ones) are left out of the count, not guessed.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

NUMERIC = ("torch", "transformers", "vllm", "rouge-score", "scikit-learn", "scipy")


def record_version(record: Mapping[str, Any], library: str) -> str | None:
    if library == "vllm":
        served = (record.get("eval_engines") or {}).get("served") or {}
        if not any("vllm" in (engines or {}) for engines in served.values()):
            return None  # vLLM installed or not, it did not score this record
        return ((record.get("eval_engines") or {}).get("settings") or {}).get("vllm", {}).get("vllm")
    found = (record.get("versions") or {}).get(library)
    return None if found in (None, "", "not installed") else str(found)


def mixed_versions(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[str]]]:
    """library -> version -> row labels (in the given order), for the libraries with two versions or more."""
    out: dict[str, dict[str, list[str]]] = {}
    for library in NUMERIC:
        by_version: dict[str, list[str]] = {}
        for record in records:
            found = record_version(record, library)
            if found is not None:
                rows = by_version.setdefault(found, [])
                label = str(record.get("row") or record.get("method") or "?")
                if label not in rows:
                    rows.append(label)
        if len(by_version) > 1:
            out[library] = by_version
    return out


def render_version_note(records: Sequence[Mapping[str, Any]]) -> str:
    """One Markdown paragraph naming the mixed versions and their rows, or '' when nothing is mixed."""
    mixed = mixed_versions(records)
    if not mixed:
        return ""
    parts = []
    for library, by_version in mixed.items():
        listed = "; ".join(f"{v}: {', '.join(rows)}" for v, rows in sorted(by_version.items()))
        parts.append(f"{library} {listed}")
    return ("**Mixed library versions**: these rows were made with different versions of libraries that change "
            "numbers, so they can differ by the version alone (re-run them with the locked versions, "
            "constraints.txt): " + ". ".join(parts) + ".")
