"""Whether the Hugging Face hub can be reached, asked once and fast, before ``datasets`` is.

Offline, ``datasets.load_dataset`` retries for about half a minute before it fails; a user who
forgot ``--data-dir`` should hear at once where the local copy goes instead.
"""
from __future__ import annotations

import os
import socket
from functools import cache
from urllib.parse import urlparse

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


@cache
def hub_unreachable(timeout_s: float = 3.0) -> str | None:
    """Why the hub cannot be reached, or None when it can (or a proxy decides, which we do not probe)."""
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{flag} is set"
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError as exc:
        return f"{host} cannot be reached ({exc.strerror or type(exc).__name__})"
    return None
