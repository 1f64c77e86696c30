"""One exception type for every problem a user can fix; the CLI prints its message alone."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class HarnessError(Exception):
    """A user-facing error: the message names the problem and how to fix it."""


def closest(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The known names closest to ``name``, for 'did you mean' hints."""
    return difflib.get_close_matches(name, list(known), n=n, cutoff=0.4)


def unknown_name_error(kind: str, name: str, known: Iterable[str]) -> HarnessError:
    known = sorted(known)
    near = closest(name, known)
    hint = f" Did you mean: {', '.join(near)}?" if near else ""
    return HarnessError(f"unknown {kind} '{name}'.{hint} Known {kind}s: {', '.join(known) or '(none)'}.")
