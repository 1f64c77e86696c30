"""Importers: published per-sample evaluation outputs turned into records, scored by our own metrics.

One module per format; each reads a folder, checks its layout against the benchmark's references and
returns one record per published model/checkpoint. Aggregates are always recomputed from the per-sample
texts and scores with ``harness.scoring``; the publishers' own aggregates are never copied. Every record
is ``kind: "imported"`` and names its source (repository, commit, path), so tables show it as imported.

This stage sits beside ``run``: it may use ``scoring``, ``data`` and ``run.results``; nothing lower imports it.
"""
from __future__ import annotations

from importlib import import_module
from typing import Callable

# format name -> module (each has ``read(path, **options) -> list[record]``)
FORMATS = {
    "muse": "harness.imports.muse_bench",
    "openunlearning": "harness.imports.openunlearning",
    "tofu-logs": "harness.imports.tofu_logs",
}


def reader(name: str) -> Callable:
    from harness.errors import unknown_name_error

    if name not in FORMATS:
        raise unknown_name_error("import format", name, sorted(FORMATS))
    return import_module(FORMATS[name]).read
