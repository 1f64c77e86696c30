"""Nothing committed names a folder of the machine it was made on (records, tables, code, docs).

Records name cached models relative to the cache root (``$HARNESS_CACHE/prepared/...``); code
comments and paper-table sources cite papers, repositories or the project's own files.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.runtime.models import cache_root, portable_path

REPO = Path(__file__).resolve().parent.parent
# An absolute path into a home, temporary, scratch or system-user folder. Built from parts so
# this file does not match itself.
ROOTS = ("root", "home", "tmp", "work", "Users", "mnt", "scratch", "var/folders", "private/var")
MACHINE_PATH = re.compile(r"(?<![\w.$~-])/(?:" + "|".join(ROOTS) + r")/[\w.-]")


def committed_files() -> list[Path]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the committed files cannot be listed")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / name for name in out.decode().split("\0") if name]


def test_no_committed_file_holds_an_absolute_machine_path():
    offenders = []
    for path in committed_files():
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary (images)
        for number, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert not offenders, "absolute paths of a machine in committed files:\n" + "\n".join(offenders[:20])


def test_the_pattern_catches_machine_paths_and_spares_portable_ones():
    bad = ["/" + "root/.cache/unlearning-harness/prepared/x", "see /" + "work/shared/docs/reference.md",
           '"/' + 'tmp/fresh/unlearned/a"', "/" + "home/me/model"]
    good = ["$HARNESS_CACHE/prepared/tofu/x", "~/.cache/unlearning-harness", "results/tofu/a.json",
            "https://github.com/locuslab/open-unlearning/tree/main/src", "../shared/data/tofu"]
    assert all(MACHINE_PATH.search(b) for b in bad)
    assert not any(MACHINE_PATH.search(g) for g in good)


def test_records_name_cached_models_relative_to_the_cache_root():
    inside = cache_root() / "prepared" / "tofu" / "smollm2-135m" / "target-abc"
    assert portable_path(inside) == "$HARNESS_CACHE/prepared/tofu/smollm2-135m/target-abc"
    assert portable_path("hub:locuslab/tofu_ft_llama2-7b") == "hub:locuslab/tofu_ft_llama2-7b"
    assert portable_path("built in code (seed 0)") == "built in code (seed 0)"
