"""Command line: ``bayescale <command>`` (also ``python -m bayescale``). Thin over the library.

Every subcommand calls one library function. A user error prints one line,
``bayescale CMD: what is wrong, and the fix``, and exits 2 for a bad command line (unknown option,
missing argument, bad config key or value) or 1 for anything else (missing or corrupt files, a
folder that is not a run, a diverged or failed training). Never a traceback, unless
``BAYESCALE_DEBUG=1`` asks for one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .nn.layers import ESTIMATORS

__all__ = ["main", "build_parser", "subparsers", "UsageError"]

DEBUG_ENV = "BAYESCALE_DEBUG"  # set to 1 to see the traceback of an unexpected error


class UsageError(ValueError):
    """A bad command line (exit code 2); the message names the fix."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``bayescale CMD: message; see --help``), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


_SAMPLES_HELP = ("MC weight draws T: 'auto' (default) draws in rounds until the MC standard "
                 "error of the predictive is below --tol, at most --max-samples; an integer "
                 "fixes T (the seed ran 300)")


def _samples(text: str) -> int | str:
    """``--samples``: ``auto`` or a positive integer."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 1, got {text!r}")
    return value


def _quickstart(args: argparse.Namespace) -> int:
    if not args.digits:
        return _pipeline(args)
    from .quickstart import run_digits

    result = run_digits(epochs=int(args.epochs or 40), estimator=args.estimator,
                        num_samples=100 if args.samples == "auto" else args.samples,
                        seed=args.seed)
    print(f"test accuracy {result['test_accuracy']:.4f}  test NLL {result['test_nll']:.4f} nats  "
          f"KL {result['kl']:.1f} nats  ({result['mc_samples']} MC samples, "
          f"{result['train_seconds']:.1f} s training)")
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    from .quickstart import run_pipeline

    res = run_pipeline(epochs=args.epochs, num_samples=args.samples, ood=args.ood or None,
                       out_dir=args.out_dir, seed=args.seed)
    if "report" not in res:
        return 0  # not rank 0
    m, ood = res["metrics"], res["metrics"].get("ood")
    print(f"test accuracy {m['accuracy']:.4f}  NLL {m['nll']:.4f} nats  ECE {m['ece']:.4f}  "
          f"({m['num_samples']} MC draws, {m['num_test']} test images)")
    if ood:
        print(f"out-of-distribution ({ood['dataset']}): AUROC {ood['entropy']['auroc']:.3f} "
              f"by entropy, {ood['mutual_information']['auroc']:.3f} by mutual information")
    print(f"done in {res['seconds']['total']:.0f} s; report: {res['report']}")
    if args.json:
        print(json.dumps(res["metrics"], indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run

    m = evaluate_run(args.run, args.samples, ood=args.ood, num_bins=args.bins,
                     out_file=args.out, batch_size=args.batch_size, seed=args.seed,
                     data_root=args.data_root, tol=args.tol, max_samples=args.max_samples)
    print(json.dumps({k: v for k, v in m.items() if k != "files"}, indent=2))
    print(f"wrote {m['files']['metrics']} and {m['files']['predictions']}"
          + (f" and {args.out}" if args.out else ""))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .evaluate import predict_run

    out = predict_run(args.run, args.out, inputs=args.input, data=args.data, split=args.split,
                      num_samples=args.samples, batch_size=args.batch_size, seed=args.seed,
                      data_root=args.data_root)
    print(f"wrote {out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    if args.study is not None:
        from .uncertainty.study_page import write_study_report

        out = write_study_report(args.study, args.out)
    else:
        from .uncertainty.report import write_report

        out = write_report(args.run, args.out)
    print(f"report: {out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .train.config import ConfigError, apply_overrides, config_from_dict, load_config
    from .train.engine import train

    overrides = list(args.overrides)
    config = args.config
    if config is not None and "=" in config and not Path(config).exists():
        overrides, config = [config, *overrides], None  # `bayescale train k=v` (no file)
    try:
        if args.flagfile:
            from .train.flagfile import translate_flagfile

            if config is not None:
                raise UsageError("give either a CONFIG or --flagfile, not both")
            base, notes = translate_flagfile(args.flagfile)
            for note in notes:
                print(f"[flagfile] {note}", file=sys.stderr)
            cfg = config_from_dict(apply_overrides(base, overrides))
        elif args.resume and args.resume != "auto" and config is None:
            saved = Path(args.resume)
            saved = (saved if saved.is_dir() else saved.parent) / "config.yaml"
            if not saved.is_file():
                raise ConfigError(f"--resume {args.resume}: no config.yaml beside the checkpoint; "
                                  "pass the run's CONFIG too")
            cfg = load_config(saved, overrides)
        else:
            cfg = load_config(config, overrides)
    except (FileNotFoundError, ValueError) as err:  # the config and overrides are the command line
        raise UsageError(str(err)) from err
    if args.print_config:
        import yaml

        from .train.config import config_to_dict

        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    result = train(cfg, resume=args.resume)
    final = result["final_eval"]
    if result["rank"] == 0:
        print(f"{result['model']} on {result['data']}: {result['steps']} steps/worker x "
              f"{result['world_size']} worker(s), time to train {result['time_to_train_s']:.1f} s; "
              f"test accuracy {final['test_acc']:.4f}, test NLL {final['test_nll']:.4f} nats "
              f"({final['eval_samples']} MC samples) -> {result['run_dir']}")
    return 0


def _scale(args: argparse.Namespace) -> int:
    from .scale.study import collect, run_study, write_batch_scripts

    if args.collect:
        path = collect(args.collect, args.mode)
    elif args.config is None:
        raise UsageError("give a CONFIG (or --collect DIR)")
    elif args.batch_nodes:
        paths = write_batch_scripts(args.config, _workers(args.batch_nodes, "--batch-nodes"),
                                    args.out, args.mode, args.overrides, not args.no_twin,
                                    args.cores_per_node, args.time)
        print(f"wrote {len(paths)} batch scripts to {paths[-1].parent}; submit with {paths[-1]}")
        return 0
    else:
        path = run_study(args.config, _workers(args.workers, "--workers"), args.mode, args.out,
                         args.overrides, not args.no_twin)
    print(f"scaling table {path}; figures {path.parent / 'time_to_train.png'}, "
          f"{path.parent / 'speedup.png'}")
    return 0


def _workers(text: str, flag: str) -> list[int]:
    from .scale.study import parse_workers

    try:
        return parse_workers(text)
    except ValueError as err:
        raise UsageError(f"{flag}: {err}") from err


def _floats(text: str | None, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()] if text else []
    except ValueError:
        raise UsageError(f"{flag} takes numbers separated by commas, got {text!r}") from None


def _prune(args: argparse.Namespace) -> int:
    from .pruning.bprune import prune_run

    thresholds = _floats(args.threshold, "--threshold")
    sparsities = _floats(args.sparsity, "--sparsity") + _floats(args.sweep, "--sweep")
    if not thresholds and not sparsities:
        raise UsageError("give --threshold T, --sparsity S or --sweep S1,S2,...")
    modes = ("clean", "bprune") if args.mode == "both" else (args.mode,)
    result = prune_run(args.run, thresholds=thresholds, sparsities=sparsities, scope=args.scope,
                       modes=modes, criterion=args.criterion, num_samples=args.samples,
                       num_passes=args.passes, num_test=args.num_test, save=args.save,
                       plots=not args.no_plots)
    print(f"{'mode':7} {'threshold':>10} {'% pruned':>9} {'acc 1-sample':>12} {'acc MC':>7} "
          f"{'nats':>8} {'MC time s':>9}")
    for r in result["rows"]:
        print(f"{r['mode']:7} {r['threshold']:10.4g} {r['percent_pruned']:9.2f} "
              f"{r['acc_single']:12.4f} {r['acc_mc']:7.4f} {r['heldout_nats']:8.4f} "
              f"{r['infer_time_s']:9.3f}")
    print(f"table {result['csv']}" + (f"; pruned model {result['saved']}" if "saved" in result
                                      else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bayescale", description="Bayesian neural networks at scale: "
                     "mean-field VI layers, training, uncertainty, pruning.",
                     epilog="`bayescale CMD --help` lists the options of each command.")
    parser.add_argument("--version", action="version", version=f"bayescale {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="CMD")
    q = sub.add_parser("quickstart", help="the whole pipeline on shipped real data: train "
                       "BNN_conv_flip on mnist-small, evaluate uncertainty with "
                       "fashion-mnist-small as OOD set, write the HTML report")
    q.add_argument("--epochs", type=float, default=None, help="training epochs (default: the "
                   "quickstart config's 3; --digits: 40)")
    q.add_argument("--samples", type=_samples, default="auto", help="MC weight draws T at "
                   "test time: 'auto' (default) draws until the predictive converges, at most "
                   "300; an integer fixes T (the seed ran 300; --digits: 'auto' means 100)")
    q.add_argument("--ood", default="fashion-mnist-small", help="out-of-distribution data set "
                   "('' to skip)")
    q.add_argument("--out-dir", default="runs", help="parent of the new run directory (runs)")
    q.add_argument("--seed", type=int, default=0, help="random seed")
    q.add_argument("--json", action="store_true", help="also print all results as JSON")
    q.add_argument("--digits", action="store_true", help="instead: the small example on "
                   "scikit-learn's 8x8 digits (prints test accuracy, NLL and KL)")
    q.add_argument("--estimator", choices=ESTIMATORS, default="flipout",
                   help="--digits: gradient estimator of the Bayesian layers (default flipout)")
    q.set_defaults(func=_quickstart)

    e = sub.add_parser("evaluate", help="MC evaluation of a trained run: accuracy, NLL, Brier, "
                       "ECE, uncertainty, OOD detection; writes RUN/eval/")
    e.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="run directory or a .pt file in one")
    e.add_argument("--samples", type=_samples, default="auto", help=_SAMPLES_HELP)
    e.add_argument("--tol", type=float, default=None, help="--samples auto: stop when the "
                   "mean MC standard error of the predictive probabilities is below this (5e-3)")
    e.add_argument("--max-samples", type=int, default=300, help="--samples auto: at most this "
                   "many draws (300)")
    e.add_argument("--ood", metavar="DATASET", help="out-of-distribution data set (e.g. "
                   "fashion-mnist-small) or a .npy/.npz/.pt file of inputs")
    e.add_argument("--bins", type=int, default=15, help="ECE / reliability bins (15)")
    e.add_argument("--out", metavar="FILE", help="also write the metrics JSON here (new file)")
    e.add_argument("--batch-size", type=int, default=1000, help="inputs per forward")
    e.add_argument("--seed", type=int, default=0, help="seed of the weight draws")
    e.add_argument("--data-root", help="root of file-based data sets (default: the run's)")
    e.set_defaults(func=_evaluate)

    pr = sub.add_parser("predict", help="per-input predictions with total / aleatoric / "
                        "epistemic uncertainty as CSV")
    pr.add_argument("run", metavar="RUN", help="run directory or a .pt file in one")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="FILE", help=".npy/.npz/.pt array of inputs")
    src.add_argument("--data", metavar="NAME", help="a data set (bayescale.data.list_datasets())")
    pr.add_argument("--split", default="test", choices=("test", "train"), help="with --data")
    pr.add_argument("--out", metavar="FILE.csv", required=True, help="the CSV to create")
    pr.add_argument("--samples", type=_samples, default="auto", help=_SAMPLES_HELP)
    pr.add_argument("--batch-size", type=int, default=1000, help="inputs per forward")
    pr.add_argument("--seed", type=int, default=0, help="seed of the weight draws")
    pr.add_argument("--data-root", help="root of file-based data sets (default: the run's)")
    pr.set_defaults(func=_predict)

    r = sub.add_parser("report", help="one self-contained HTML report (figures embedded) of a "
                       "run from its saved files, or of the uncertainty study (--study)",
                       description="Write one self-contained HTML page (figures embedded as "
                       "PNG): of a run directory (RUN), or with --study FILE.json of the "
                       "uncertainty study's result JSON (methods, FC section, targets, accuracy "
                       "and ECE under shift). Give exactly one of RUN and --study.")
    what = r.add_mutually_exclusive_group(required=True)
    what.add_argument("run", metavar="RUN", nargs="?", help="run directory")
    what.add_argument("--study", metavar="FILE.json", help="an uncertainty study result, e.g. "
                      "benchmarks/results/uncertainty_study_mnist.json")
    r.add_argument("--out", metavar="FILE.html", help="the file to create (default "
                   "RUN/report.html, or report-2.html, ... if taken; with --study "
                   "FILE.html next to the JSON, or FILE-2.html, ...)")
    r.set_defaults(func=_report)

    from .train.config import describe_options, shipped_configs

    t = sub.add_parser(
        "train", help="train a model from a YAML config (single process, torchrun, srun, mpirun)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train with the ELBO; data-parallel when launched with several processes "
                    "(torchrun/srun/mpirun). Writes config.yaml, metrics.jsonl, train.csv, "
                    "eval.csv, timing.csv, posterior/ and checkpoint.pt to the run directory.\n\n"
                    "Surviving worker failures: `torchrun --max-restarts=3 --nproc-per-node=N -m "
                    "bayescale train CONFIG output.name=NAME --resume auto` restarts the group "
                    "after a worker dies and continues from the newest intact checkpoint; a "
                    "worker that stops responding makes the others exit with an error after "
                    "dist.timeout_s seconds.",
        epilog="shipped configs: " + ", ".join(shipped_configs()) + "\n\noptions "
               "(set in the YAML file or as key=value):\n" + describe_options())
    t.add_argument("config", nargs="?", help="YAML file or shipped config name")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-3 "
                   "train.epochs=2")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly from its "
                   "checkpoint (config taken from RUN_DIR/config.yaml unless given); 'auto': "
                   "continue output.dir/output.name if it holds a checkpoint, else start it "
                   "there - for `torchrun --max-restarts=N`, which relaunches the same command "
                   "after a worker dies (needs a fixed output.name)")
    t.add_argument("--flagfile", metavar="CFG", help="the seed tutorial's absl flagfile "
                   "(CNN_BNN_Model.py / CIFAR10_BNN.py flags), translated")
    t.add_argument("--print-config", action="store_true", help="print the resolved config "
                   "and exit")
    t.set_defaults(func=_train)
    sc = sub.add_parser("scale", help="scaling study: train CONFIG and its CNN twin on 1, 2, ... "
                        "workers with torchrun; CSV + time-to-train and speed-up figures")
    sc.add_argument("config", nargs="?", help="YAML file or shipped config name")
    sc.add_argument("overrides", nargs="*", help="dotted overrides for every run")
    sc.add_argument("--workers", default="1,2", help="worker counts on this machine (1,2)")
    sc.add_argument("--mode", choices=("strong", "weak"), default="strong",
                    help="strong: fixed total budget (the seed's); weak: fixed steps per worker")
    sc.add_argument("--out", default="runs/scale", help="output directory (runs/scale)")
    sc.add_argument("--no-twin", action="store_true", help="skip the deterministic CNN twin")
    sc.add_argument("--collect", metavar="DIR", help="only gather DIR/runs/*/timing.csv (e.g. "
                    "after cluster jobs) into DIR/scaling.csv and the figures")
    sc.add_argument("--batch-nodes", metavar="N,N,...", help="write SLURM and PBS/Cobalt "
                    "scripts for these node counts instead of running here")
    sc.add_argument("--cores-per-node", type=int, default=64, help="threads per node (scripts)")
    sc.add_argument("--time", default="01:00:00", help="wall time per job (scripts)")
    sc.set_defaults(func=_scale)
    pp = sub.add_parser("prune", help="BPrune: SNR pruning of a trained run; table of "
                        "threshold, %% pruned, accuracy, held-out nats, MC inference time")
    pp.add_argument("run", help="run directory (or a .pt file in one)")
    pp.add_argument("--threshold", metavar="T[,T...]", help="absolute SNR thresholds |mu|/sigma "
                    "(one for every layer, as BPrune)")
    pp.add_argument("--sparsity", metavar="S[,S...]", help="target fractions of weights to prune")
    pp.add_argument("--sweep", nargs="?", const="0.5,0.7,0.8,0.9,0.95", metavar="S1,S2,...",
                    help="a sparsity sweep (default 0.5,0.7,0.8,0.9,0.95)")
    pp.add_argument("--scope", choices=("global", "layer"), default="global",
                    help="sparsity over all layers (one SNR ranking) or each layer alike")
    pp.add_argument("--mode", choices=("clean", "bprune", "both"), default="both",
                    help="clean: weights removed (exact 0); bprune: mu = rho = 0 (sigma = ln 2, "
                    "BPrune's); both (default)")
    pp.add_argument("--criterion", choices=("snr", "magnitude"), default="snr",
                    help="score: SNR |mu|/sigma (default) or |mu| (baseline)")
    pp.add_argument("--samples", type=int, default=100, help="MC samples for the averaged "
                    "accuracy, nats and timing (100)")
    pp.add_argument("--passes", type=int, default=50, help="passes for the single-sample "
                    "accuracy (BPrune: 50)")
    pp.add_argument("--num-test", type=int, default=None, help="first N test examples (all)")
    pp.add_argument("--save", action="store_true", help="also save RUN/prune/model_pruned.pt "
                    "(one threshold or sparsity, one mode)")
    pp.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    pp.set_defaults(func=_prune)
    return parser


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of ``parser`` by name (``bayescale CMD``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 error, 2 bad command line)."""
    from .evaluate import EvaluationError
    from .train.checkpoint import CheckpointError
    from .train.config import ConfigError
    from .train.distributed import CollectiveError
    from .train.engine import TrainingDiverged

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # --help, --version and usage errors exit here
    if extra:  # name the subcommand whose options were misspelt
        subparsers(parser)[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    name = f"bayescale {args.command}"
    try:
        return int(args.func(args))
    except (UsageError, ConfigError) as err:
        print(f"{name}: {_one_line(err)}; see `{name} --help`", file=sys.stderr)
        return 2
    except (CheckpointError, EvaluationError, TrainingDiverged, CollectiveError, OSError,
            ValueError, ImportError, RuntimeError) as err:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"{name}: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not a user error: still one line, the traceback on demand
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"{name}: unexpected {type(err).__name__}: {_one_line(err)} (rerun with "
              f"{DEBUG_ENV}=1 for the traceback and please report it)", file=sys.stderr)
        return 1


def run() -> None:
    """The ``bayescale`` console script: :func:`main`, then the exit (a hard one after a broken
    process group, see :func:`bayescale.train.distributed.exit_process`)."""
    from .train.distributed import exit_process

    exit_process(main())


if __name__ == "__main__":
    run()
