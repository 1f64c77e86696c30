"""The TOFU authors' per-sample evaluation logs (``<model>_<full|retainNN>_wd<wd>_eval_log_aggregated.json``).

Each log holds, per item of the forget split, retain, real authors and world facts, the generation and
the mean token losses of the answer, its paraphrase and its perturbations. We re-score everything with
the TOFU adapter's log scoring (``benchmarks.tofu.scores_from_logs``: ROUGE-L recall from the texts, the
probabilities and truth ratios from the losses, model utility), and forget quality against the authors' own
retain model of the same base model and split when that log is among those imported. The ground truths
are checked against the TOFU files (``--data``, default: the folder above the logs).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from harness.benchmarks.tofu import EVAL_SETS, LOG_KEYS, read_eval_log, scores_from_logs
from harness.data.files import read_records

from .records import fail, imported_record

NAME = re.compile(r"^(?P<model>.+?)_(?P<which>full|retain(?P<keep>\d\d))_wd(?P<wd>[\d.]+)_eval_log_aggregated\.json$")
MODELS = {"llama2-7b": "Llama-2-7b-chat", "phi": "phi-1.5"}   # the TOFU authors' file prefixes
REPOSITORY = "github.com/locuslab/tofu"
SPLITS = ("forget01", "forget05", "forget10")


def _files(root: Path) -> list[Path]:
    files = [root] if root.is_file() else sorted(root.glob("*_eval_log_aggregated.json")) if root.is_dir() else []
    if not files:
        raise fail(root, "no TOFU eval log here (<model>_<full|retainNN>_wd<wd>_eval_log_aggregated.json)",
                   "Point at the TOFU authors' retain_eval_logs folder or one of its files.")
    bad = [f.name for f in files if not NAME.match(f.name)]
    if bad:
        raise fail(root, f"file name(s) not of the TOFU authors' pattern: {', '.join(bad)}",
                   "Keep the authors' names (e.g. phi_retain90_wd0.01_eval_log_aggregated.json): they say model and split.")
    return files


def _truths(part: dict) -> list[str]:
    """Ground truths in item order; indices must run 0..n-1."""
    items = part["generated_text"]
    if sorted(int(k) for k in items) != list(range(len(items))):
        raise fail("log", "item indices are not 0..n-1", "Use the authors' file unchanged.")
    return [items[str(i)][2] for i in range(len(items))]


def _same(mine: str, theirs: str) -> bool:
    """Equal up to whitespace: the authors' logs hold decoded ground truths ('Mammadov ,' comes back 'Mammadov,')."""
    return "".join(mine.split()) == "".join(theirs.split())


def _check(path: Path, key: str, truths: list[str], reference: list[str]) -> None:
    if len(truths) > len(reference):
        raise fail(path, f"'{key}' holds {len(truths)} items, the reference only {len(reference)}",
                   "The log belongs to other data; give the matching --data folder.")
    for i, (mine, theirs) in enumerate(zip(truths, reference)):
        if not _same(mine, theirs):
            raise fail(path, f"'{key}' item {i}'s ground truth differs from the reference's item {i}",
                       "The log belongs to other data; give the matching --data folder.")


def _split(path: Path, keep: str | None, forget: list[str], answers: dict[str, list[str]]) -> str:
    if keep is not None:
        split = f"forget{100 - int(keep):02d}"
        if split not in answers:
            raise fail(path, f"retain{keep} has no forget split {split} in the data", "Give the TOFU data folder as --data.")
        return split
    fits = [s for s in SPLITS if len(forget) <= len(answers[s])
            and all(_same(a, b) for a, b in zip(forget, answers[s]))]
    if len(fits) != 1:
        raise fail(path, f"the forget items match {', '.join(fits) or 'no split'}", "Import the retain logs, or rename the file.")
    return fits[0]


def read(path: str | Path, *, data: str | Path | None = None, model: str | None = None, repository: str | None = None,
         commit: str | None = None, **_: Any) -> list[dict]:
    root = Path(path)
    files = _files(root)
    data = Path(data) if data is not None else (root if root.is_dir() else root.parent).parent
    if not (data / "retain_perturbed.json").is_file():
        raise fail(root, f"the TOFU files are not in {data.name or data} (no retain_perturbed.json)", "Give --data, the TOFU data folder.")
    answers = {s: [r["answer"] for r in read_records(data / f"{s}.json")] for s in SPLITS if (data / f"{s}.json").is_file()}
    for name, (stem, _) in EVAL_SETS.items():
        if stem:
            answers[name] = [r["answer"] for r in read_records(data / f"{stem}.json")]
    seen, logs = {}, []
    for f in files:
        found = NAME.match(f.name)
        log = read_eval_log(f)    # names a missing split or field
        truths = {name: _truths(log[key]) for name, key in LOG_KEYS.items()}
        split = _split(f, found["keep"], truths["forget"], answers)
        for name, key in LOG_KEYS.items():
            _check(f, key, truths[name], answers[split if name == "forget" else name])
        who = (found["model"], found["which"])
        if who in seen:
            raise fail(root, f"model {found['model']} {found['which']} is named twice ({seen[who]} and {f.name})", "Import each log once.")
        seen[who] = f.name
        logs.append((f, found, split, truths["forget"]))
    records = []
    for f, found, split, forget in logs:
        reference = next((g for g, other, s, truths in logs if other["model"] == found["model"] and other["keep"] is not None
                          and s == split and truths == forget), None)
        scored = scores_from_logs(f, reference_log=reference)
        base = model or MODELS.get(found["model"], found["model"])
        notes = [f"the first {len(forget)} items of {split} (the TOFU authors evaluated at most 300 per set)."]
        notes.append(f"forget quality against the authors' {reference.name.split('_wd')[0]} log." if reference is not None
                     else f"forget quality not computed: no retain log of {found['model']} on these {split} items was imported.")
        per_sample = {name: rows for name, rows in scored["per_item"].items()}
        source = {"repository": repository or REPOSITORY, "commit": commit or "not recorded in the files",
                  "path": f.name, "paths": [f.name], "model": f"{found['model']}_{found['which']}"}
        record = imported_record(
            fmt="tofu-logs", benchmark="tofu", model=f"{base} [imported]", method="target" if found["keep"] is None else "retain",
            row=f"{found['which']} (TOFU authors, imported)", source=source, aggregates=scored["aggregates"],
            per_sample=per_sample, sizes={n: len(r) for n, r in per_sample.items()}, benchmark_config={"split": split},
            rescored=sorted(scored["aggregates"]), as_given=["per-item mean token losses", "generations"], notes=notes)
        record["overrides"] = {"benchmark.split": split}   # one leaderboard section per split
        records.append(record)
    return records
