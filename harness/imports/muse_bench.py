"""The MUSE authors' evaluation outputs (muse_bench: ``{verbmem,knowmem,privleak}/out/<corpus>/<model>[/<ckpt>]``).

Per model the authors saved every response (VerbMem, KnowMem) and every text's membership scores
(PrivLeak). We re-score them: ROUGE-L F1 (stemmer off) of each response against its reference, mean x 100;
the Min-40% scores of forget and holdout texts into MUSE's AUC; PrivLeak against the imported retrain
model's AUC (the published 0.4772 when the folder has no retrain model). The authors' ``out.json`` /
``auc.json`` are never read. References come from the folder's own ``data/<corpus>/``; every response
must line up with its reference (count and text), or the import stops.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from harness.scoring.privacy import MUSE_NEWS_RETRAIN_AUC, muse_auc, privleak
from harness.scoring.text import rouge_l_f1, truncate_at_stop

from .records import fail, imported_record, read_json

CORPORA = {"bbc": "muse-news"}
KNOWMEM_STOPS = ("\n\n", "\nQuestion", "Question:")
MIA_SCORE = "Min-40%"   # MUSE's table uses Min-K% Prob with k = 0.4
METHODS = {"retrain": "retain"}   # folder name -> our method name (the rest keep theirs)
SOURCE_LINE = re.compile(r"github\.com/([\w.-]+/[\w.-]+)")


def _source(root: Path, repository: str | None, commit: str | None) -> tuple[str, str]:
    if repository is None and (root / "README.md").is_file():
        found = SOURCE_LINE.search((root / "README.md").read_text(encoding="utf-8"))
        repository = f"github.com/{found.group(1)}" if found else None
    if commit is None and (root / "COMMIT").is_file():
        commit = (root / "COMMIT").read_text(encoding="utf-8").strip()
    if not repository or not commit:
        raise fail(root, "its source repository or commit is not known (no README.md naming github.com/OWNER/REPO, "
                         "no COMMIT file)", "Give --source-repo and --source-commit.")
    return repository, commit


def _checkpoints(model_dir: Path) -> list[str]:
    """'' when the model's outputs sit directly under it (forget/), else its checkpoint folder names."""
    if (model_dir / "forget").is_dir():
        return [""]
    return sorted(p.name for p in model_dir.iterdir() if p.is_dir() and (p / "forget").is_dir())


def _pick(model: str, found: list[str], chosen: Mapping[str, str], root: Path) -> str:
    if model in chosen:
        if chosen[model] not in found:
            raise fail(root, f"model '{model}' has no checkpoint '{chosen[model]}' (it has {', '.join(found) or 'none'})",
                       "Name one of its checkpoints with --checkpoint MODEL=CHECKPOINT.")
        return chosen[model]
    if len(found) == 1:
        return found[0]
    raise fail(root, f"model '{model}' has {len(found)} checkpoints ({', '.join(found)})",
               f"Name the one to import with --checkpoint {model}=CHECKPOINT (the paper table's choice is in its declaration).")


def _rouge_rows(history: Any, references: list[dict], answer_key: str, where: Path, stops=()) -> list[dict]:
    if not isinstance(history, list) or not all(isinstance(h, Mapping) and "response" in h and "gt" in h for h in history):
        raise fail(where, "history.json is not a list of {gt, response, ...} items", "Point at the authors' output folder.")
    if len(history) != len(references):
        raise fail(where, f"{len(history)} responses but {len(references)} references", "The outputs do not belong to these references.")
    rows = []
    for i, (item, ref) in enumerate(zip(history, references)):
        if item["gt"] != ref[answer_key]:
            raise fail(where, f"response {i}'s reference differs from the data's item {i}", "The outputs do not belong to these references.")
        response = truncate_at_stop(item["response"], stops) if stops else item["response"]
        rows.append({"index": i, "generation": response, "reference": ref[answer_key],
                     "rouge_l_f1": rouge_l_f1(response, ref[answer_key], use_stemmer=False)})
    return rows


def _mia_scores(path: Path, texts: list[str]) -> list[float]:
    items = read_json(path, f"PrivLeak scores ({path.stem})")
    if not isinstance(items, list) or not all(isinstance(x, Mapping) and MIA_SCORE in (x.get("ppl") or {}) for x in items):
        raise fail(path, f"not a list of {{text, ppl: {{{MIA_SCORE}: ...}}}} items", "Point at the authors' output folder.")
    if len(items) != len(texts):
        raise fail(path, f"{len(items)} scored texts but {len(texts)} texts in the data", "The outputs do not belong to these texts.")
    for i, (item, text) in enumerate(zip(items, texts)):
        if item.get("text") != text:
            raise fail(path, f"text {i} differs from the data's text {i}", "The outputs do not belong to these texts.")
    return [float(x["ppl"][MIA_SCORE]) for x in items]


def _mean100(rows: list[dict]) -> float:
    return 100.0 * sum(r["rouge_l_f1"] for r in rows) / len(rows)


def read(path: str | Path, *, checkpoints: Mapping[str, str] | None = None, model: str | None = None,
         repository: str | None = None, commit: str | None = None, corpus: str = "bbc", **_: Any) -> list[dict]:
    root = Path(path)
    if not root.is_dir():
        raise fail(root, "no such folder", "Give the folder holding verbmem/, knowmem/, privleak/ and data/.")
    if corpus not in CORPORA:
        raise fail(root, f"corpus '{corpus}' is not supported (known: {', '.join(CORPORA)})", "Use --corpus bbc (MUSE-News).")
    parts = {m: root / m / "out" / corpus for m in ("verbmem", "knowmem", "privleak")}
    missing = [str(p.relative_to(root)) for p in [*parts.values(), root / "data" / corpus] if not p.is_dir()]
    if missing:
        raise fail(root, f"this is not the MUSE authors' layout: missing {', '.join(missing)}",
                   "Point at the folder holding verbmem/out/, knowmem/out/, privleak/out/ and data/ (muse_bench's layout).")
    repository, commit = _source(root, repository, commit)
    chosen = dict(checkpoints or {})
    data = root / "data" / corpus
    verb_refs = read_json(data / "verbmem" / "forget.json", "VerbMem references")
    qa_refs = {s: read_json(data / "knowmem" / f"{f}.json", f"KnowMem {s} references")
               for s, f in (("forget", "forget_qa"), ("retain", "retain2_qa"))}
    texts = {s: read_json(data / "privleak" / f"{s}.json", f"PrivLeak {s} texts") for s in ("forget", "holdout")}

    models = sorted(p.name for p in parts["verbmem"].iterdir() if p.is_dir())
    unknown = sorted(set(chosen) - set(models))
    if unknown:
        raise fail(root, f"--checkpoint names model(s) not in the folder: {', '.join(unknown)} (it has {', '.join(models)})",
                   "Name a model folder under verbmem/out/.")
    label = f"{model or 'Llama-2-7B'} [imported]"
    out, aucs = [], {}
    for name in models:
        ckpt = _pick(name, _checkpoints(parts["verbmem"] / name), chosen, root)
        rel = Path(name, ckpt) if ckpt else Path(name)
        where = {m: parts[m] / rel for m in parts}
        for split in ("forget", "retain"):
            if not (where["knowmem"] / split).is_dir():
                raise fail(root, f"model '{name}' lacks the KnowMem {split} split (knowmem/out/{corpus}/{rel.as_posix()}/{split}/)",
                           "Every model needs verbmem forget, knowmem forget and retain, privleak forget and holdout.")
        verb = _rouge_rows(read_json(where["verbmem"] / "forget" / "history.json", "VerbMem responses"), verb_refs, "gt",
                           where["verbmem"] / "forget")
        know = {s: _rouge_rows(read_json(where["knowmem"] / s / "history.json", f"KnowMem {s} responses"), qa_refs[s],
                               "answer", where["knowmem"] / s, KNOWMEM_STOPS) for s in qa_refs}
        scores = {s: _mia_scores(where["privleak"] / f"{s}.json", texts[s]) for s in texts}
        aucs[name] = muse_auc(scores["forget"], scores["holdout"])
        out.append({"name": name, "ckpt": ckpt, "rel": rel, "verb": verb, "know": know, "scores": scores})

    reference_auc = aucs.get("retrain")
    reference = ("the imported retrain model's AUC" if reference_auc is not None
                 else "the published MUSE-News retrain AUC (no retrain model in the folder)")
    reference_auc = MUSE_NEWS_RETRAIN_AUC if reference_auc is None else reference_auc
    records = []
    for m in out:
        method = METHODS.get(m["name"], m["name"])
        auc = aucs[m["name"]]
        aggregates = {"verbmem_f": _mean100(m["verb"]), "knowmem_f": _mean100(m["know"]["forget"]),
                      "knowmem_r": _mean100(m["know"]["retain"]), "auc_min_k": auc,
                      "privleak": privleak(auc, reference_auc), "privleak_reference_auc": reference_auc}
        mia = [{"index": i, "set": s, "min_k": v} for s in ("forget", "holdout") for i, v in enumerate(m["scores"][s])]
        rel = m["rel"].as_posix()
        source = {"repository": repository, "commit": commit, "path": f"{{verbmem,knowmem,privleak}}/out/{corpus}/{rel}",
                  "paths": [f"verbmem/out/{corpus}/{rel}/forget/history.json",
                            *(f"knowmem/out/{corpus}/{rel}/{s}/history.json" for s in ("forget", "retain")),
                            *(f"privleak/out/{corpus}/{rel}/{s}.json" for s in ("forget", "holdout"))],
                  "model": m["name"]}
        records.append(imported_record(
            fmt="muse", benchmark=CORPORA[corpus], model=label, method=method, checkpoint=m["ckpt"] or None,
            row=f"{m['name']}{' ' + m['ckpt'] if m['ckpt'] else ''} (imported)", source=source, aggregates=aggregates,
            per_sample={"verbmem_f": m["verb"], "knowmem_f": m["know"]["forget"], "knowmem_r": m["know"]["retain"], "mia": mia},
            sizes={"verbmem_forget": len(m["verb"]), "knowmem_forget": len(m["know"]["forget"]),
                   "knowmem_retain": len(m["know"]["retain"]), "privleak_forget": len(m["scores"]["forget"]),
                   "privleak_holdout": len(m["scores"]["holdout"])},
            benchmark_config={"forget_source": "raw"},
            rescored=["verbmem_f", "knowmem_f", "knowmem_r", "auc_min_k", "privleak"],
            as_given=[f"per-text {MIA_SCORE} scores (computed by the authors from their model's log-probs)",
                      "responses (generated by the authors)"],
            notes=[f"PrivLeak reference: {reference} ({reference_auc:.4f})."]))
    return records
