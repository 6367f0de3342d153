"""Command line: ``bayescale <command>`` (also ``python -m bayescale``). Thin over the library."""

from __future__ import annotations

import argparse
import json
import sys

from .layers import ESTIMATORS

__all__ = ["main"]


def _quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_digits

    result = run_digits(epochs=args.epochs, estimator=args.estimator, num_samples=args.samples,
                        seed=args.seed)
    print(f"test accuracy {result['test_accuracy']:.4f}  test NLL {result['test_nll']:.4f} nats  "
          f"KL {result['kl']:.1f} nats  ({result['mc_samples']} MC samples, "
          f"{result['train_seconds']:.1f} s training)")
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bayescale", description="Bayesian neural networks at "
                                     "scale: mean-field VI layers, training, uncertainty, pruning.")
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quickstart", help="train a Bayesian CNN on scikit-learn's digits and "
                       "print test accuracy, NLL and KL")
    q.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    q.add_argument("--estimator", choices=ESTIMATORS, default="flipout",
                   help="gradient estimator of the Bayesian layers (default flipout)")
    q.add_argument("--samples", type=int, default=100, help="MC weight samples at test time")
    q.add_argument("--seed", type=int, default=0, help="random seed")
    q.add_argument("--json", action="store_true", help="also print all results as JSON")
    q.set_defaults(func=_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
