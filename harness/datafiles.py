"""Reading benchmark data files (JSON arrays or JSON Lines) with errors that say where and how to fix.

A malformed file names its path and line; a record missing a field the benchmark needs names
the file, the record and the field. Used by every file-backed adapter.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from harness.errors import HarnessError


def read_records(path: Path) -> list[dict[str, Any]]:
    """All records of a JSON array file or a JSON Lines file (detected from the content)."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"data file {path} does not exist; check --data-dir (it must hold the benchmark's files).")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"data file {path} cannot be read: {exc}.") from None
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HarnessError(f"malformed JSON in {path} at line {exc.lineno}, column {exc.colno}: {exc.msg}.") from None
        return [_as_record(item, path, i + 1) for i, item in enumerate(data)]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HarnessError(
                f"malformed JSON Lines in {path} at line {number}: {exc.msg}. Each line must be one JSON object."
            ) from None
        records.append(_as_record(item, path, number))
    return records


def _as_record(item: Any, path: Path, where: int) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise HarnessError(f"{path}, record {where}: expected a JSON object, got {type(item).__name__}.")
    return item


def require_fields(records: Iterable[dict[str, Any]], fields: Iterable[str], path: Path) -> None:
    """Fail on the first record that lacks one of ``fields``, naming file, record and field."""
    fields = list(fields)
    for number, record in enumerate(records, start=1):
        missing = [f for f in fields if f not in record]
        if missing:
            raise HarnessError(
                f"{path}, record {number}: missing field(s) {', '.join(missing)}; every record of this split "
                f"needs {', '.join(fields)}."
            )
