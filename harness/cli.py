"""The `harness` command line: run, eval, prepare, list, leaderboard, tables, bench."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from harness.errors import HarnessError
from harness.registry import load_plugins
from harness.runtime.quiet import quiet_libraries

EPILOG = """examples:
  harness run --methods all --benchmark synthetic                # embedded SmolLM2, offline
  harness run --methods ga,graddiff --benchmark synthetic --model tiny-random --limit 4
  harness run --methods graddiff --benchmark synthetic --set graddiff.alpha=2 --set train.lr=1e-5
  harness run --methods ga,npo --benchmark synthetic --sweep train.lr=1e-5,3e-5,1e-4 --set eval.select=utility_preserving
  harness eval --benchmark synthetic --model path/to/model --retain path/to/retain_model
  harness list methods
  harness leaderboard                                            # re-render runs/LEADERBOARD.md
  harness leaderboard --results-dir results --csv --json --plots # the committed records: + .csv/.json, plots/
  harness tables --list
  harness tables --paper muse_news                               # -> results/tables/muse_news.md
  harness bench --benchmark synthetic --model tiny-random        # figures; last line: speedup vs naive
  harness run --methods all --benchmark tofu --executor ray --ray-address auto   # one Ray task per cell
  harness status --results-dir results                           # queued / running (where) / done / failed
"""


#: ad-hoc runs go to a git-ignored folder; `make results` regenerates the committed records in results/
DEFAULT_RESULTS = Path("runs")
RESULTS_HELP = "where records and LEADERBOARD.md go (default: runs, git-ignored; the committed records are in results)"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="import a plugin file that registers methods, benchmarks or metrics (repeatable)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", required=True, help="benchmark name (see `harness list benchmarks`)")
    p.add_argument("--model", default="smollm2-135m",
                   help="base model: alias (smollm2-135m, tiny-random), random:<tiny|135m|1b|7b> (random weights), local folder or hub id (default: smollm2-135m)")
    p.add_argument("--data-dir", type=Path, help="local folder with the benchmark's files (offline)")
    p.add_argument("--seed", type=int, default=0, help="seed for training order, pairing and initialisation, 0 to 2**32-1 (default 0)")
    p.add_argument("--limit", type=int, help="use only the first N items of every split (quick runs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. train.lr=1e-5, graddiff.alpha=2, benchmark.num_forget=3, eval.batch_size=8")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch, at least 1 (default: OMP_NUM_THREADS if set, else the free cores: "
                        "CPU affinity and cgroup quota less the current load)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    p.add_argument("--no-eval-cache", dest="eval_cache", action="store_false",
                   help="evaluate every model afresh instead of reusing stored outputs of identical weights")


def _executor_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("many cells at once (see README: Scaling out)")
    g.add_argument("--executor", default="local", choices=["local", "ray", "slurm"],
                   help="local: cells one after another here (default); ray: one Ray task per cell; slurm: a submitit job array")
    g.add_argument("--workers", type=int, default=0, help="most cells at once (ray: CPUs of a local cluster; slurm: array parallelism)")
    g.add_argument("--ray-address", help="an existing Ray cluster (e.g. auto, ray://head:10001); default: start a local one")
    g.add_argument("--slurm-partition", help="SLURM partition for the cell jobs")
    g.add_argument("--slurm-time-min", type=int, default=240, help="time limit per cell job in minutes (default 240)")
    g.add_argument("--slurm-gpus", type=int, default=1, help="GPUs per cell job (default 1)")
    g.add_argument("--slurm-folder", type=Path, help="submitit job folder (default <results-dir>/.submitit)")
    g.add_argument("--slurm-cluster", choices=["slurm", "local", "debug"],
                   help="submitit executor: slurm (default when sbatch exists), or local/debug to run the jobs on this machine")
    g.add_argument("--poll-s", type=float, default=10.0, help="seconds between progress lines of a ray/slurm run")


def _engine_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--engine", choices=["auto", "hf", "vllm"], default=None,
                   help=f"{what}: auto (vLLM where installed, else HF), hf or vllm "
                        "(default: $HARNESS_ENGINE, else auto; see docs/engines.md)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness", description="Benchmark LLM unlearning methods and render leaderboards.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    run = sub.add_parser("run", help="unlearn with each method, evaluate, write records and the leaderboard")
    _model_args(run)
    run.add_argument("--methods", default="all",
                     help="'all' (the default: every registered method, see `harness list methods`) or a comma list, e.g. ga,graddiff")
    run.add_argument("--target", help="an existing target model (skips prepare); --model then only labels the rows")
    run.add_argument("--retain", help="an existing retain model for the reference row and per-item references")
    run.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                     help="run every method at each value (repeatable: a grid; each point is a cell with its own "
                          "record), e.g. train.lr=1e-5,3e-5,1e-4; eval.select picks each method's point (docs/selection.md)")
    run.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS, help=RESULTS_HELP)
    run.add_argument("--force", action="store_true", help="re-run cells that already have a finished record")
    run.add_argument("--no-save-models", dest="save_models", action="store_false", help="do not save unlearned weights")
    run.add_argument("--models-dir", type=Path, help="where unlearned weights go (default: $HARNESS_CACHE/unlearned)")
    _executor_args(run)
    _engine_arg(run, "evaluation engine")
    _common(run)

    st = sub.add_parser("status", help="which cells are queued, running (where), done or failed, from records and claims")
    st.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS, help=RESULTS_HELP)
    _common(st)

    ev = sub.add_parser("eval", help="score a model on a benchmark without unlearning")
    _model_args(ev)
    ev.add_argument("--retain", help="retain model whose scores are the reference (forget quality, PrivLeak)")
    ev.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS, help=RESULTS_HELP)
    ev.add_argument("--force", action="store_true")
    _engine_arg(ev, "evaluation engine")
    _common(ev)

    prep = sub.add_parser("prepare", help="fine-tune (or reuse cached) target and retain models from a base model")
    _model_args(prep)
    prep.add_argument("--force", action="store_true", help="fine-tune again even if cached")
    _common(prep)

    ls = sub.add_parser("list", help="list registered methods, benchmarks or metrics")
    ls.add_argument("what", choices=["methods", "benchmarks", "metrics"])
    _common(ls)

    lb = sub.add_parser("leaderboard", help="re-render LEADERBOARD.md from stored records only")
    lb.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS, help=RESULTS_HELP)
    lb.add_argument("--csv", action="store_true", help="also write LEADERBOARD.csv (same rows and values) next to it")
    lb.add_argument("--json", action="store_true", help="also write LEADERBOARD.json (same rows and values) next to it")
    lb.add_argument("--plots", action="store_true",
                    help="also write <results-dir>/plots/*.png|svg (needs matplotlib) and link them under a Plots section")
    lb.add_argument("--html", action="store_true",
                    help="also write LEADERBOARD.html: one self-contained page (sortable, filterable, plots inline)")
    lb.add_argument("--include-random", action="store_true",
                    help="also list records made with random:<architecture> models (random weights: speed figures only)")
    _common(lb)

    bn = sub.add_parser("bench", help="figures: evaluation vs a naive baseline, one training step per method, memory")
    _model_args(bn)
    bn.add_argument("--methods", default="all", help="methods whose training step is timed: 'all', a comma list, or 'none'")
    _engine_arg(bn, "engine to measure; vllm (or auto with vLLM installed) compares vLLM with HF on the same requests")
    _common(bn)

    tb = sub.add_parser("tables", help="regenerate a paper's table: published values beside ours, from stored records")
    tb.add_argument("--paper", metavar="NAME", help="paper table name (see --list) or the path of a declaration .json")
    tb.add_argument("--list", action="store_true", help="list the known paper tables")
    tb.add_argument("--results-dir", type=Path, default=Path("results"))
    tb.add_argument("--out", type=Path, help="output file (default: <results-dir>/tables/<NAME>.md)")
    _common(tb)

    im = sub.add_parser("import", help="turn published per-sample outputs into records, scored by our metrics")
    im.add_argument("format", help="muse (the MUSE authors' muse_bench outputs), openunlearning (TOFU_EVAL/MUSE_EVAL.json), "
                                   "tofu-logs (the TOFU authors' *_eval_log_aggregated.json)")
    im.add_argument("path", type=Path, help="the published folder (or file)")
    im.add_argument("--results-dir", type=Path, default=Path("results"))
    im.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=CHECKPOINT",
                    help="which checkpoint of a model to import (muse: e.g. ga=step=102); needed when it has several")
    im.add_argument("--model", help="the evaluated base model's name shown in tables (each format has a default)")
    im.add_argument("--source-repo", help="repository the outputs come from (default: read from the folder)")
    im.add_argument("--source-commit", help="its commit (default: read from the folder)")
    im.add_argument("--data", type=Path, help="openunlearning: the benchmark's files (e.g. ../shared/data/tofu), to check ground truths")
    im.add_argument("--split", default="forget10", help="openunlearning TOFU: the forget split the log evaluated")
    im.add_argument("--retain-log", type=Path, help="openunlearning TOFU: the retain model's TOFU_EVAL.json, for forget quality")
    _common(im)
    return parser


def _progress():
    from harness.runtime.progress import progress_factory

    return progress_factory()


def _log(msg: str) -> None:
    from harness.runtime.progress import note_output

    print(msg, flush=True)
    note_output()   # progress lines stay quiet while the run itself is talking


def cmd_list(args) -> int:
    from harness.registry import BENCHMARKS, METHODS, METRICS

    if args.what == "methods":
        for name, cls in METHODS.items():
            paper = f"  [{cls.paper}]" if getattr(cls, "paper", "") else ""
            print(f"{name:<12} {cls.description}{paper}")
    elif args.what == "benchmarks":
        for name, cls in BENCHMARKS.items():
            print(f"{name:<14} {cls.description}")
    else:
        for name, info in METRICS.items():
            print(f"{name:<32} {info.family:<10} {info.description}")
    return 0


def torch_threads() -> int:
    """The thread count ``main`` resolved from --threads (harness/runtime/threads.py)."""
    from harness.runtime import threads

    return threads.describe()["threads"]


def _request(args, **extra):
    from harness.run.config import parse_set
    from harness.run.runner import RunRequest

    return RunRequest(
        benchmark=args.benchmark, model=args.model, data_dir=args.data_dir, seed=args.seed, limit=args.limit,
        overrides=parse_set(args.overrides), device=args.device, trust_remote_code=args.trust_remote_code,
        eval_cache=getattr(args, "eval_cache", True), threads=torch_threads(), **extra,
        **({"engine": args.engine} if getattr(args, "engine", None) else {}),
    )


def cmd_run(args) -> int:
    from harness.run.runner import Runner
    from harness.runtime.lock import drift_warning

    if (lock_warning := drift_warning()) is not None:  # before any work: numbers may differ from results/
        print(lock_warning, file=sys.stderr)
    from harness.run.sweep import parse as parse_sweep

    req = _request(args, methods=args.methods, target=args.target, retain=args.retain, results_dir=args.results_dir,
                   force=args.force, save_models=args.save_models, models_dir=args.models_dir,
                   sweep=parse_sweep(args.sweep))
    started = time.perf_counter()
    if args.executor != "local":
        from harness.run.executors import check_available

        check_available(args.executor)
        from harness.training.distributed import launched_world_size

        if launched_world_size() > 1:
            raise HarnessError("--executor ray|slurm runs cells as separate jobs; launch it with plain `harness run`, not "
                               "accelerate launch (a cell on several GPUs is launched with accelerate, one run at a time).")
    runner = Runner(req, _progress(), _log)
    try:
        if args.executor == "local":
            summary = runner.run()
        else:
            from harness.run.executors import ExecutorOptions, run_distributed

            opts = ExecutorOptions(args.executor, args.workers, args.ray_address, args.slurm_folder, args.slurm_partition,
                                   args.slurm_time_min, args.slurm_gpus, args.slurm_cluster, args.poll_s)
            summary = run_distributed(runner, opts, args.plugin, _log)
    except KeyboardInterrupt:
        raise Interrupted(runner.summary.records) from None
    if not runner.ranks.is_main:  # under accelerate launch the main process reports
        return 1 if summary.failed else 0
    print(f"leaderboard: {summary.leaderboard}  (wall time {time.perf_counter() - started:.0f} s)")
    for line in summary.elsewhere:
        print(f"running elsewhere (claimed by another process; its record appears when it finishes): {line}")
    if summary.failed:
        print(f"{len(summary.failed)} cell(s) failed; their records hold the traceback, rerun to retry:", file=sys.stderr)
        for line in summary.failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def cmd_eval(args) -> int:
    from harness.run.runner import Runner, RunSummary, render_results

    req = _request(args, methods="all", target=args.model, retain=args.retain, results_dir=args.results_dir,
                   force=args.force, save_models=False, trains=False)
    runner, summary, reference = Runner(req, _progress(), _log), RunSummary(), None
    if runner.attacks:
        raise HarnessError("eval.attacks attacks unlearned models and the retain baseline inside `harness run`; "
                           "`harness eval` scores a model as the target row, which is never attacked. Leave it out here.")
    try:
        if args.retain:
            retain_record = runner.reference_cell("retain", args.retain, None, summary)
            reference = retain_record.get("reference_values") if retain_record else None
        else:
            print("note: no --retain model given; scores that need one are left out (forget quality; PrivLeak, "
                  "except where the benchmark publishes a retain AUC: MUSE-News uses it, said below its scores).")
        # not "Target": that row is a run's fine-tuned target, and this may be any model (a base never fine-tuned)
        record = runner.reference_cell("target", args.model, reference, summary, label=f"Evaluated: {Path(args.model).name or args.model}")
    except KeyboardInterrupt:
        raise Interrupted(summary.records) from None
    finally:
        runner.close()
    print(f"leaderboard: {render_results(args.results_dir)}")
    return 0 if record and record.get("status") == "ok" else 1


def cmd_prepare(args) -> int:
    from harness.run.runner import Runner

    req = _request(args, methods="all", results_dir=None, save_models=False, trains=False)
    runner = Runner(req, _progress(), _log)
    from harness.run.prepare import prepare

    folders = prepare(args.model, runner.bench, runner.finetune_cfg, args.seed, runner.device, _progress(), args.force, _log)
    for role, folder in folders.items():
        print(f"{role}: {folder}")
    return 0


def cmd_bench(args) -> int:
    from harness.bench.report import report
    from harness.runtime.models import load_model
    from harness.run.runner import Runner

    no_training = args.methods.strip().lower() == "none"
    runner = Runner(_request(args, methods="all" if no_training else args.methods, results_dir=None, save_models=False,
                             trains=not no_training),
                    None, _log)
    loaded = load_model(args.model, runner.device, args.trust_remote_code)
    from harness.engines.hf import auto_batch_size

    args.memory_budget_gb = runner.eval_cfg.memory_budget_gb
    args.batch_size = runner.eval_cfg.batch_size or auto_batch_size(loaded.model, runner.device, budget_gb=args.memory_budget_gb)
    args.max_length = runner.eval_cfg.max_length
    if runner.engines.kind == "vllm":
        from harness.bench.engines import report_engines
        from harness.run.runner import weights_folder

        args.eval_cfg = runner.eval_cfg
        report_engines(runner.bench, loaded, args, runner.device, weights_folder(args.model))
        return 0
    report(runner.bench, loaded, args, [] if no_training else runner.methods, runner.method_configs, runner.device)
    return 0


def cmd_leaderboard(args) -> int:
    from harness.run.runner import render_results

    if not Path(args.results_dir).is_dir():
        raise HarnessError(f"results directory '{args.results_dir}' does not exist; run `harness run` first or pass --results-dir.")
    if args.plots:
        from harness.leaderboard.plots import require_matplotlib

        require_matplotlib()  # before anything is written
    from harness.run.validation import check_writable

    check_writable(args.results_dir, "results directory", "--results-dir")   # LEADERBOARD.md is written there
    path = render_results(args.results_dir, include_random=args.include_random)
    if args.csv or args.json or args.plots or args.html:
        from harness.leaderboard.export import leaderboard_inputs, write_exports

        records, columns = leaderboard_inputs(args.results_dir, include_random=args.include_random)
        for written in write_exports(records, columns, path.parent, csv=args.csv, json_=args.json):
            print(f"export: {written}")
        files = []
        if args.plots:
            from harness.leaderboard.plots import add_plots_section, write_plots

            files = write_plots(records, columns, Path(args.results_dir) / "plots")
            add_plots_section(path, files)
            print(f"plots: {len(files)} figure(s) in {Path(args.results_dir) / 'plots'}")
        if args.html:
            print(f"html: {_write_html(records, columns, path.with_suffix('.html'), files)}")
    print(f"leaderboard: {path}")
    return 0


def _write_html(records, columns, target: Path, files) -> Path:
    """The page beside the Markdown, plots inline (drawn into a scratch folder unless --plots drew them)."""
    import tempfile

    from harness.leaderboard.html import write_html
    from harness.leaderboard.plots import write_plots

    if files:
        return write_html(records, columns, target, plots=files)
    with tempfile.TemporaryDirectory() as scratch:
        return write_html(records, columns, target, plots=write_plots(records, columns, scratch, formats=("svg",)))


def cmd_status(args) -> int:
    from harness.run.status import report

    print(report(args.results_dir))
    return 0


def cmd_tables(args) -> int:
    from harness.leaderboard.paper_tables import known_papers, load_paper, write_paper_table

    if args.list:
        for name, title in known_papers().items():
            print(f"{name:<22} {title}")
        return 0
    if not args.paper:
        raise HarnessError(f"give --paper NAME; known paper tables: {', '.join(known_papers()) or '(none)'} (see `harness tables --list`).")
    paper = load_paper(args.paper)
    if not Path(args.results_dir).is_dir():
        raise HarnessError(f"results directory '{args.results_dir}' does not exist; run `harness run` first or pass --results-dir.")
    print(f"table: {write_paper_table(paper, args.results_dir, args.out)}")
    return 0


def cmd_import(args) -> int:
    from harness.imports import reader
    from harness.imports.records import write_imported

    chosen = {}
    for item in args.checkpoint:
        name, sep, ckpt = item.partition("=")
        if not sep or not name or not ckpt:
            raise HarnessError(f"--checkpoint '{item}': give MODEL=CHECKPOINT (e.g. ga=step=102).")
        if name in chosen:
            raise HarnessError(f"--checkpoint: model '{name}' is named twice; give one checkpoint per model.")
        chosen[name] = ckpt
    records = reader(args.format)(args.path, checkpoints=chosen, model=args.model, repository=args.source_repo,
                                  commit=args.source_commit, data=args.data, split=args.split, retain_log=args.retain_log)
    for path in write_imported(records, args.results_dir):
        print(f"imported: {path}")
    return 0


COMMANDS = {"import": cmd_import, "bench": cmd_bench, "run": cmd_run, "eval": cmd_eval, "prepare": cmd_prepare, "list": cmd_list, "leaderboard": cmd_leaderboard,
            "tables": cmd_tables, "status": cmd_status}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_libraries()
    previous = _exit_on_sigterm()
    try:
        if hasattr(args, "threads"):   # verbs that compute
            if args.threads is not None and args.threads < 1:
                raise HarnessError(f"--threads must be at least 1, got {args.threads}; leave --threads out for the "
                                   "default (OMP_NUM_THREADS if set, else the free cores).")
            from harness.runtime import threads

            threads.apply(args.threads)
        load_plugins(args.plugin)
        with _heartbeat(args.verb):
            return COMMANDS[args.verb](args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(interrupted_message(exc.records if isinstance(exc, Interrupted) else []), file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _heartbeat(verb: str):
    """Off a terminal, the verbs that train or evaluate print a line whenever they have been silent
    for 20 s (harness/runtime/progress.py); on a terminal tqdm's bars move instead."""
    from contextlib import nullcontext

    from harness.runtime.progress import Heartbeat, is_terminal

    if verb not in ("run", "eval", "prepare") or is_terminal(sys.stderr):
        return nullcontext()
    return Heartbeat()


def _exit_on_sigterm():
    """SIGTERM (kill, a scheduler's time limit) exits through Python, so claims are released on the way out.

    Python's default ends the process at once, leaving the cell's ``.claim`` behind. Returns the
    previous handler (None where a handler cannot be set: outside the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, carrying the records finished (or skipped as finished) before it."""

    def __init__(self, records: list):
        super().__init__()
        self.records = records


def interrupted_message(records: list) -> str:
    """What Ctrl-C leaves behind: the finished cells, and that re-running the command resumes."""
    done = [f"  {r['benchmark']}/{r['model']}/{r['method']} seed {r['seed']} ({r['status']})" for r in records]
    lines = ["interrupted (Ctrl-C).",
             f"{len(done)} cell(s) finished and kept:" if done else "no cell had finished; nothing was kept.", *done,
             "Run the same command again to resume: finished cells are skipped, the interrupted one re-runs."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
