"""MUSE's clean-up decoding, written out so it does not depend on the transformers version.

MUSE (jaechan-repo/muse_bench) decodes generations with ``clean_up_tokenization_spaces=True``
under transformers 4.x, where that flag ran ``PreTrainedTokenizerBase.clean_up_tokenization``
on the decoded text (4.40: ``tokenization_utils_fast.py`` ``_decode``). transformers 5.x ignores
the flag for BPE tokenizers (a warning, the text unchanged), so the engines decode without it
and apply the same replacements here: every backend then gives MUSE's text.
"""
from __future__ import annotations

# The replacements of transformers 4.40 ``clean_up_tokenization``, in its order (order matters:
# " ' " goes before " 's" etc.).
_REPLACEMENTS = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
    (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)


def clean_up_tokenization_spaces(text: str) -> str:
    """Drop the space before punctuation and English contractions, as transformers 4.x did."""
    for old, new in _REPLACEMENTS:
        text = text.replace(old, new)
    return text
