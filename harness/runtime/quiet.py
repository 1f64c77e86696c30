"""Third-party noise that tells a user nothing, silenced at its source."""
from __future__ import annotations

import os


def quiet_libraries() -> None:
    """Keep our own progress bars and summaries readable: silence the libraries' loading bars."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
