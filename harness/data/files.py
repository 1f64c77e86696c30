"""Reading benchmark data files (JSON arrays or JSON Lines) with errors that say where and how to fix.

A malformed file names its path and line; a record missing a field the benchmark needs names
the file, the record and the field. A file with no records, or holding one JSON object where a
list of records is expected, is refused with what was expected and what was found (an empty split
would otherwise prepare models on nothing; an object would be read as one record). A single
object passes as a one-line JSON Lines file (TOFU's hub files are JSON Lines named ``.json``)
unless it holds only lists or objects (columns, or a wrapper around the records) or the adapter
declares its files JSON arrays (``array=True``, e.g. MUSE). Used by every file-backed adapter.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from harness.errors import HarnessError


def read_records(path: Path, array: bool = False) -> list[dict[str, Any]]:
    """All records of a JSON array file or a JSON Lines file (detected from the content, or an
    array only when ``array``)."""
    items = _read_items(Path(path), "one JSON object", array)
    return [_as_record(item, path, i) for i, item in enumerate(items, start=1)]


def read_texts(path: Path, array: bool = False) -> list[str]:
    """A text split: a JSON array (or JSON Lines) of strings or of {"text": ...} objects."""
    path = Path(path)
    return as_texts(_read_items(path, "one JSON string or object", array), path)


def as_texts(items: list[Any], path: Path) -> list[str]:
    """Strings from plain strings or {"text": ...} objects; anything else names the record."""
    texts = []
    for number, item in enumerate(items, start=1):
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            item = item["text"]
        if not isinstance(item, str):
            raise HarnessError(
                f"{path}, record {number}: expected a string or an object with a string 'text' field, "
                f"got {type(item).__name__}."
            )
        texts.append(item)
    return texts


def _read_items(path: Path, each: str, array: bool = False) -> list[Any]:
    """The JSON values of a file: one array, or one value per line (JSON Lines)."""
    if not path.is_file():
        raise HarnessError(f"data file {path} does not exist; check --data-dir (it must hold the benchmark's files).")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HarnessError(f"data file {path} cannot be read: {exc}.") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HarnessError(f"malformed JSON in {path} at line {exc.lineno}, column {exc.colno}: {exc.msg}.") from None
        return _non_empty(items, path, "an empty JSON array")
    if stripped.startswith("{"):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None   # several values: JSON Lines, read below
        wrapper = isinstance(whole, dict) and whole and all(isinstance(v, (list, dict)) for v in whole.values())
        if isinstance(whole, dict) and (array or wrapper):
            keys = ", ".join(list(whole)[:5]) + (", ..." if len(whole) > 5 else "")
            raise HarnessError(
                f"data file {path}: expected a JSON array of records ([{{...}}, {{...}}])"
                + ("" if array else " or JSON Lines (one record per line)")
                + f", found a single JSON object (keys: {keys}). If it is one record, wrap it in [ ]."
            )
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise HarnessError(
                f"malformed JSON Lines in {path} at line {number}: {exc.msg}. Each line must be {each}."
            ) from None
    return _non_empty(items, path, "an empty file" if not stripped else "no records")


def _non_empty(items: Any, path: Path, found: str) -> list[Any]:
    if isinstance(items, list) and not items:
        raise HarnessError(f"data file {path}: expected at least one record, found {found}. "
                           "Check the file (an empty split cannot be trained on or scored).")
    return items


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
