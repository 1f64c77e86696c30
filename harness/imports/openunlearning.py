"""OpenUnlearning evaluation logs: ``<run>/TOFU_EVAL.json`` or ``<run>/MUSE_EVAL.json`` (and ``*_SUMMARY.json``).

OpenUnlearning's evaluator (``src/evals/base.py``) writes one JSON object per run: metric name ->
``{"agg_value": ..., "value_by_index": {index: {...}}}``. We take the per-index values and re-aggregate
them with our metrics; ``agg_value`` and the summary are never read. Re-scored from texts: every ROUGE
(ROUGE-L F1 without stemmer for MUSE, ROUGE-L recall with stemmer for TOFU, as the benchmarks' authors
define them). Re-scored from per-item numbers: truth ratios (from the paraphrased and perturbed answers'
mean losses), their forget/retain scores, forget quality (KS test against a retain model's log), the MUSE
AUC and PrivLeak (from per-text Min-K% scores, against MUSE's published retrain AUC unless a retain log is
given). Taken as given: the per-text Min-K% scores, the per-item answer probabilities and losses, the
extraction strength per item (all need the model). Ground truths are checked against the benchmark's files.

PATH is one run folder or a folder of run folders; each run is one record, named by its folder.
"""
from __future__ import annotations

import re
from pathlib import Path
from statistics import fmean
from typing import Any, Mapping

from harness.data.files import read_records
from harness.scoring.aggregate import forget_quality, model_utility
from harness.scoring.privacy import MUSE_NEWS_RETRAIN_AUC, muse_auc, privleak
from harness.scoring.probability import truth_ratio, truth_ratio_forget_score, truth_ratio_retain_score
from harness.scoring.text import rouge_l_f1, rouge_l_recall

from .records import fail, imported_record, read_json

REPOSITORY = "github.com/locuslab/open-unlearning"
FILES = {"TOFU_EVAL.json": "tofu", "MUSE_EVAL.json": "muse-news"}
COMMIT = re.compile(r"commit\s+([0-9a-f]{7,40})")
# TOFU split -> the harness's suffix; the model utility uses the nine values of retain, ra, wf
TOFU_SETS = {"forget": "f", "retain": "r", "ra": "ra", "wf": "wf"}


def _runs(root: Path) -> list[Path]:
    if any((root / f).is_file() for f in FILES):
        return [root]
    runs = sorted(p for p in root.iterdir() if p.is_dir() and any((p / f).is_file() for f in FILES)) if root.is_dir() else []
    if not runs:
        raise fail(root, f"no OpenUnlearning log here ({' or '.join(FILES)} in the folder or in its sub-folders)",
                   "Point at a run's output folder (OpenUnlearning's saves/eval/<task>/) or a folder of them.")
    return runs


def _commit(run: Path, commit: str | None) -> str:
    if commit:
        return commit
    for folder in (run, run.parent):
        if (folder / "README.md").is_file():
            found = COMMIT.search((folder / "README.md").read_text(encoding="utf-8"))
            if found:
                return found.group(1)
    raise fail(run, "the OpenUnlearning commit that wrote this log is not known", "Give --source-commit.")


def _by_index(log: Mapping[str, Any], name: str, where: Path, field: str, whole: bool = False) -> dict[int, Any]:
    """metric ``name``'s per-sample ``field`` (or the whole sample when ``whole``), by sample index."""
    entry = log.get(name)
    if not isinstance(entry, Mapping) or not isinstance(entry.get("value_by_index"), Mapping):
        raise fail(where, f"metric '{name}' is missing or has no per-sample values (value_by_index)",
                   "Evaluate with OpenUnlearning's stock metrics (eval=tofu / eval=muse) and keep the *_EVAL.json.")
    out = {}
    for key, value in entry["value_by_index"].items():
        if value is None:
            continue
        if not isinstance(value, Mapping) or field not in value:
            raise fail(where, f"metric '{name}', sample {key}: no '{field}'", "The log is not OpenUnlearning's format.")
        out[int(key)] = value if whole else value[field]
    if not out:
        raise fail(where, f"metric '{name}' has no samples", "Re-run the evaluation.")
    return out


def _check_truths(rows: Mapping[int, Mapping], references: list[str], what: str, where: Path) -> None:
    if max(rows) >= len(references):
        raise fail(where, f"{what}: sample index {max(rows)} but the reference has {len(references)} items",
                   "The log belongs to other data; give the matching --data folder.")
    for i, row in rows.items():
        if str(row.get("ground_truth", "")).strip() != str(references[i]).strip():
            raise fail(where, f"{what}: sample {i}'s ground truth differs from the reference's item {i}",
                       "The log belongs to other data; give the matching --data folder.")


def _rouge(rows: Mapping[int, Mapping], fn) -> list[dict]:
    return [{"index": i, "generation": r["generation"], "reference": r["ground_truth"],
             "score": fn(r["generation"], r["ground_truth"])} for i, r in sorted(rows.items())]


def _muse(log: Mapping[str, Any], where: Path, data: Path) -> tuple[dict, dict, dict, list[str]]:
    refs = {"verbmem_f": [r["gt"] for r in read_records(data / "verbmem" / "forget.json", array=True)],
            "knowmem_f": [r["answer"] for r in read_records(data / "knowmem" / "forget_qa.json", array=True)],
            "knowmem_r": [r["answer"] for r in read_records(data / "knowmem" / "retain_qa.json", array=True)]}
    names = {"verbmem_f": "forget_verbmem_ROUGE", "knowmem_f": "forget_knowmem_ROUGE", "knowmem_r": "retain_knowmem_ROUGE"}
    aggregates, per_sample, sizes = {}, {}, {}
    for key, name in names.items():
        rows = _by_index(log, name, where, "generation", whole=True)
        _check_truths(rows, refs[key], name, where)
        scored = _rouge(rows, lambda g, t: rouge_l_f1(g, t, use_stemmer=False))
        aggregates[key] = 100.0 * fmean(r["score"] for r in scored)
        per_sample[key], sizes[key] = scored, len(scored)
    mia = log.get("mia_min_k")
    if not isinstance(mia, Mapping) or not all(isinstance(mia.get(s), Mapping) for s in ("forget", "holdout")):
        raise fail(where, "metric 'mia_min_k' lacks its forget and holdout scores", "Evaluate with OpenUnlearning's muse metrics.")
    scores = {s: {i: float(v) for i, v in _by_index(mia, s, where, "score").items()} for s in ("forget", "holdout")}
    auc = muse_auc(list(scores["forget"].values()), list(scores["holdout"].values()))
    aggregates.update(auc_min_k=auc, privleak=privleak(auc, MUSE_NEWS_RETRAIN_AUC), privleak_reference_auc=MUSE_NEWS_RETRAIN_AUC)
    per_sample["mia"] = [{"index": i, "set": s, "min_k": v} for s in scores for i, v in sorted(scores[s].items())]
    sizes.update(privleak_forget=len(scores["forget"]), privleak_holdout=len(scores["holdout"]))
    if isinstance(log.get("extraction_strength"), Mapping):
        es = _by_index(log, "extraction_strength", where, "score")
        aggregates["es_f"] = fmean(es.values())
    notes = ["VerbMem and KnowMem re-scored with ROUGE-L F1, stemmer off (the MUSE authors' code; OpenUnlearning's "
             "VerbMem has it on).",
             "AUC re-computed in the MUSE authors' convention (about 0 when the forget texts were memorised).",
             f"PrivLeak against MUSE's published News retrain AUC {MUSE_NEWS_RETRAIN_AUC} (OpenUnlearning's default is 0.5); "
             "the Min-K% scores are OpenUnlearning's (no BOS token, first and last tokens left out)."]
    return aggregates, per_sample, sizes, notes


def _tofu_ratios(log: Mapping[str, Any], prefix: str, where: Path) -> dict[int, float]:
    para_name = f"{prefix}_Q_A_PARA_Prob" if f"{prefix}_Q_A_PARA_Prob" in log else f"{prefix}_Q_A_Prob"
    para = _by_index(log, para_name, where, "avg_loss")
    pert = _by_index(log, f"{prefix}_Q_A_PERT_Prob", where, "avg_loss")
    if sorted(para) != sorted(pert):
        raise fail(where, f"{para_name} and {prefix}_Q_A_PERT_Prob cover different samples", "The log is incomplete.")
    return {i: truth_ratio([-float(para[i])], [[-float(x)] for x in (pert[i] if isinstance(pert[i], list) else [pert[i]])])
            for i in sorted(para)}


def _tofu(log: Mapping[str, Any], where: Path, data: Path, split: str, retain_log: Path | None) -> tuple[dict, dict, dict, list[str]]:
    files = {"forget": f"{split}.json", "retain": "retain_perturbed.json", "ra": "real_authors.json", "wf": "world_facts.json"}
    aggregates, per_sample, sizes, notes, utility = {}, {}, {}, [], []
    for prefix, suffix in TOFU_SETS.items():
        if f"{prefix}_Q_A_ROUGE" not in log:
            if prefix in ("forget", "retain"):
                raise fail(where, f"the {prefix} split is missing (no {prefix}_Q_A_ROUGE)", "Evaluate with eval=tofu.")
            notes.append(f"no {prefix} metrics in the log: model utility not computed.")
            continue
        refs = [r["answer"] for r in read_records(data / files[prefix])]
        rows = _by_index(log, f"{prefix}_Q_A_ROUGE", where, "generation", whole=True)
        _check_truths(rows, refs, f"{prefix}_Q_A_ROUGE", where)
        scored = _rouge(rows, lambda g, t: rouge_l_recall(g, t, use_stemmer=True))
        aggregates[f"rouge_{suffix}"] = fmean(r["score"] for r in scored)
        per_sample[f"rouge_{suffix}"], sizes[prefix] = scored, len(scored)
        prob = _by_index(log, f"{prefix}_Q_A_Prob", where, "prob")
        aggregates[f"prob_{suffix}"] = fmean(float(p) for p in prob.values())
        ratios = _tofu_ratios(log, prefix, where)
        score = truth_ratio_forget_score if prefix == "forget" else truth_ratio_retain_score
        aggregates[f"truth_ratio_{suffix}"] = score(list(ratios.values()))
        per_sample[f"truth_ratio_{suffix}"] = [{"index": i, "truth_ratio": r} for i, r in ratios.items()]
        if prefix != "forget":
            utility += [aggregates[f"prob_{suffix}"], aggregates[f"rouge_{suffix}"], aggregates[f"truth_ratio_{suffix}"]]
    if len(utility) == 9:
        aggregates["model_utility"] = model_utility(utility)
    if retain_log is not None:
        reference = _tofu_ratios(read_json(retain_log, "the retain model's OpenUnlearning log"), "forget", retain_log)
        ours = [r["truth_ratio"] for r in per_sample["truth_ratio_f"]]
        aggregates["forget_quality"] = forget_quality(ours, list(reference.values()))
        notes.append(f"forget quality against the retain model's log {retain_log.name}.")
    else:
        notes.append("forget quality not computed: give --retain-log (the retain model's TOFU_EVAL.json).")
    notes.append("ra and wf probabilities are OpenUnlearning's per-item values (normalised over the options when "
                 "the log has them), re-averaged here.")
    return aggregates, per_sample, sizes, notes


def read(path: str | Path, *, data: str | Path | None = None, model: str | None = None, repository: str | None = None,
         commit: str | None = None, split: str = "forget10", retain_log: str | Path | None = None, **_: Any) -> list[dict]:
    root = Path(path)
    runs = _runs(root)
    records = []
    for run in runs:
        found = [f for f in FILES if (run / f).is_file()]
        if len(found) > 1:
            raise fail(run, f"it holds both {' and '.join(found)}", "Keep one evaluation per run folder.")
        benchmark = FILES[found[0]]
        if data is None:
            raise fail(run, f"its ground truths cannot be checked without the {benchmark} files",
                       f"Give --data, the folder of the {benchmark} benchmark's files.")
        log = read_json(run / found[0], "the OpenUnlearning log")
        if not isinstance(log, Mapping):
            raise fail(run / found[0], "not a JSON object of metrics", "Point at OpenUnlearning's *_EVAL.json.")
        if benchmark == "muse-news":
            aggregates, per_sample, sizes, notes = _muse(log, run / found[0], Path(data))
            config = {"forget_source": "raw"}
        else:
            aggregates, per_sample, sizes, notes = _tofu(log, run / found[0], Path(data), split,
                                                         None if retain_log is None else Path(retain_log))
            config = {"split": split}
        rel = run.name if run != root else root.name
        source = {"repository": repository or REPOSITORY, "commit": _commit(run, commit), "path": f"{rel}/{found[0]}",
                  "paths": [f"{rel}/{found[0]}"], "model": run.name}
        records.append(imported_record(
            fmt="openunlearning", benchmark=benchmark, model=f"{model or 'OpenUnlearning run'} [imported]",
            method=run.name, row=f"{run.name} (imported)", source=source, aggregates=aggregates, per_sample=per_sample,
            sizes=sizes, benchmark_config=config, rescored=sorted(aggregates),
            as_given=["per-item probabilities and losses", "per-text Min-K% scores", "per-item extraction strength",
                      "generations"], notes=notes))
    return records
