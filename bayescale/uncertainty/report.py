"""One self-contained HTML report of a run (``bayescale report RUN``), from its saved files only.

Sections: run config summary, training curve, evaluation metrics, reliability, uncertainty and
OOD detection, MC draws per class, posterior convergence, pruning (``RUN/prune/*.csv`` as tables,
``RUN/prune/*.png`` as figures, ``RUN/sparsity.csv``), the selected support of a Ke & Fan
run (``RUN/support.json``: each input's inclusion frequency over the samples) and timing. Every
figure is a PNG embedded as base64 (``<img src="data:image/png;base64,...">``); there are no
scripts, style sheets or links outside the file, so it can be mailed or archived as is.
Figures come from :mod:`bayescale.uncertainty.plots` (matplotlib); without matplotlib the report
has the tables and says how to get the figures.

The report is written to ``RUN/report.html``, or ``report-2.html``, ``report-3.html``, ... when
that name is taken: an existing report is never overwritten.

The uncertainty study's result JSON has a page of its own, built from the same pieces:
:func:`bayescale.uncertainty.study_page.write_study_report` (``bayescale report --study``).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from . import plots
from .metrics import reliability
from .summary import EVAL_DIR, load_predictions

__all__ = ["write_report", "report_path"]

RUN_MARKERS = ("config.yaml", "checkpoint.pt", "model.pt")  # what every training run writes
_MAX_ROWS = 200  # rows shown per CSV table
_CSS = """body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:.5em 0}
.note{color:#666;font-size:.9em}pre{background:#f7f7f7;padding:.6em;font-size:.8em;overflow:auto}"""


def free_html_path(folder: str | Path, stem: str) -> Path:
    """The first free name among ``<stem>.html``, ``<stem>-2.html``, ... in ``folder``."""
    folder = Path(folder)
    path, k = folder / f"{stem}.html", 2
    while path.exists():
        path, k = folder / f"{stem}-{k}.html", k + 1
    return path


def report_path(run_dir: str | Path) -> Path:
    """The first free name among ``report.html``, ``report-2.html``, ... in ``run_dir``."""
    return free_html_path(run_dir, "report")


# ------------------------------------------------------------------------------ html pieces
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.4e}"
    return str(v)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _kv(pairs: Iterable[tuple[str, Any]]) -> str:
    return _table(("", "value"), [(k, v) for k, v in pairs if v is not None])


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _csv_table(path: Path) -> str:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return _note(f"{path.name} is empty")
    shown = rows[1:_MAX_ROWS + 1]
    more = (_note(f"showing the first {_MAX_ROWS} of {len(rows) - 1} rows of {path.name}")
            if len(rows) - 1 > _MAX_ROWS else "")
    return _table(rows[0], shown) + more


class _Figures:
    """Renders plot functions into PNG bytes in a temporary folder; remembers why it cannot."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.missing = tmp, None
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            self.missing = 'figures need matplotlib: pip install "bayescale[plot]"'

    def __call__(self, name: str, fn: Callable[[Path], Path], alt: str) -> str:
        if self.missing:
            return ""
        try:
            return _img(fn(self.tmp / f"{name}.png").read_bytes(), alt)
        except (FileNotFoundError, ValueError, KeyError) as err:
            return _note(f"{alt}: not available ({err})")


# ------------------------------------------------------------------------------ sections
def _config_section(run_dir: Path) -> str:
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        return _note("no config.yaml in the run directory")
    cfg = yaml.safe_load(cfg_file.read_text()) or {}

    def g(section: str, key: str) -> Any:
        return (cfg.get(section) or {}).get(key)

    pairs = [("model", g("model", "name")), ("bayesian (override)", g("model", "bayesian")),
             ("estimator (override)", g("model", "estimator")),
             ("prior std", g("model", "prior_std")), ("data", g("data", "name")),
             ("epochs", g("train", "epochs")), ("steps", g("train", "steps")),
             ("batch size per rank", g("train", "batch_size")), ("seed", g("train", "seed")),
             ("optimizer", g("optim", "name")), ("learning rate", g("optim", "lr")),
             ("lr schedule", g("schedule", "name")), ("KL weight beta", g("kl", "weight")),
             ("KL schedule", g("kl", "schedule")), ("MC samples at eval", g("eval", "samples"))]
    full = f"<details><summary>full config.yaml</summary><pre>{_e(cfg_file.read_text())}</pre>" \
           "</details>"
    return _kv(pairs) + full


def _training_section(run_dir: Path, fig: _Figures) -> str:
    if not (run_dir / "train.csv").is_file():
        return _note("no train.csv: training metrics were not logged")
    out = fig("training", lambda p: plots.plot_training_curve(run_dir, p), "training curve")
    if (run_dir / "eval.csv").is_file():
        out += _csv_table(run_dir / "eval.csv")
    return out


def _metrics_section(m: dict[str, Any]) -> str:
    rows = [("accuracy (MC-averaged)", m.get("accuracy")), ("NLL (nats)", m.get("nll")),
            ("Brier score", m.get("brier")), (f"ECE ({m.get('num_bins')} bins)", m.get("ece")),
            ("mean single-sample accuracy", m.get("mean_single_sample_accuracy")),
            ("held-out log-likelihood (nats)", m.get("heldout_log_likelihood")),
            ("AURC (by entropy)", m.get("aurc_entropy")),
            ("mean total / aleatoric / epistemic (nats)",
             " / ".join(_fmt(m.get(k)) for k in ("mean_total", "mean_aleatoric",
                                                  "mean_epistemic"))),
            ("test inputs", m.get("num_test")), ("MC weight draws T", m.get("num_samples")),
            ("MC inference time (s)", m.get("mc_inference_s")),
            ("weights", m.get("weights")), ("evaluated", m.get("created"))]
    return _kv(rows)


def _ood_section(m: dict[str, Any]) -> str:
    ood = m.get("ood")
    if not ood:
        return _note("no out-of-distribution set was evaluated (bayescale evaluate RUN --ood "
                     "fashion-mnist-small)")
    rows = [(score, *(ood[key][k] for k in ("auroc", "aupr", "fpr95")))
            for score, key in (("predictive entropy", "entropy"),
                               ("mutual information", "mutual_information"))]
    head = _note(f"in-distribution: {m.get('data')} test ({m.get('num_test')}); "
                 f"out-of-distribution: {ood['dataset']} ({ood['num']}); OOD is the positive "
                 "class, a higher score means more OOD.")
    return head + _table(("score", "AUROC", "AUPR", "FPR at 95% TPR"), rows) + (
        _note(ood["note"]) if ood.get("note") else "")


def _eval_sections(run_dir: Path, fig: _Figures) -> list[tuple[str, str]]:
    mfile = run_dir / EVAL_DIR / "metrics.json"
    if not mfile.is_file():
        return [("Evaluation", _note("not evaluated yet: run `bayescale evaluate RUN --ood "
                                     "fashion-mnist-small` and report again"))]
    m = json.loads(mfile.read_text())
    try:
        p = load_predictions(run_dir)
    except FileNotFoundError as err:
        return [("Evaluation", _metrics_section(m) + _note(str(err)))]
    r = reliability(torch.from_numpy(p["probs"]), torch.from_numpy(p["labels"]).long(),
                    int(m.get("num_bins", 15)))
    bins = [(f"[{lo:.3f}, {hi:.3f})", int(n), c if n else "", a if n else "")
            for lo, hi, n, c, a in zip(r["bin_lower"].tolist(), r["bin_upper"].tolist(),
                                       r["count"].tolist(), r["confidence"].tolist(),
                                       r["accuracy"].tolist(), strict=True)]
    ood_name = (m.get("ood") or {}).get("dataset", "OOD")
    return [
        ("Evaluation metrics", _metrics_section(m)),
        ("Reliability", fig("reliability", lambda f: plots.plot_reliability(p, f),
                            "reliability diagram")
         + _table(("confidence bin", "count", "mean confidence", "accuracy"), bins)),
        ("Uncertainty and out-of-distribution detection", _ood_section(m)
         + fig("uncertainty", lambda f: plots.plot_uncertainty_histograms(p, f, ood_name),
               "uncertainty histograms")
         + fig("coverage", lambda f: plots.plot_accuracy_coverage(p, f), "accuracy vs coverage")),
        ("MC draws of the true-class probability", fig(
            "draws", lambda f: plots.plot_true_class_draws(p, f), "MC draws per class")),
    ]


def _prune_section(run_dir: Path) -> str:
    parts = []
    for path in sorted((run_dir / "prune").glob("*.csv")):
        parts.append(f"<h3>{_e(path.name)}</h3>" + _csv_table(path))
    for path in sorted((run_dir / "prune").glob("*.png")):
        parts.append(f"<h3>{_e(path.name)}</h3>" + _img(path.read_bytes(), path.name))
    if (run_dir / "sparsity.csv").is_file():
        parts.append("<h3>sparsity.csv</h3>" + _csv_table(run_dir / "sparsity.csv"))
    return "".join(parts)


def _support_section(run_dir: Path) -> str:
    """Ke & Fan runs: how stable the selected input groups were over the weight samples
    (``RUN/support.json``, :func:`bayescale.kefan.stability.support_report`)."""
    path = run_dir / "support.json"
    if not path.is_file():
        return ""
    s = json.loads(path.read_text())
    freq = s.get("inclusion_frequency", [])
    warm = s.get("warmup") or {}
    verdict = ("stable: every group is kept in (nearly) all samples or (nearly) none"
               if s.get("stable") else
               "UNSTABLE: the dense warm-up lost its fit before the first E-step (a loss spike: "
               "its last epoch ended above an earlier low), so what it pruned was decided on a "
               "broken net; do not trust this selection (rerun with another seed or a smaller "
               "sghmc step size)" if warm.get("stalled") else
               "UNSTABLE: the chain did not settle on one support; "
               "do not trust this selection (train longer, or compare seeds)")
    head = _kv([("verdict", verdict), ("weight", s.get("param")),
                ("samples after the warm-up", s.get("samples")),
                ("selected groups (frequency >= 1/2)", s.get("num_selected")),
                (f"undecided groups (frequency in ({s.get('band')}, {1 - s.get('band', 0)}))",
                 s.get("num_undecided")),
                ("lowest frequency among the selected", s.get("min_selected_freq")),
                ("highest frequency among the rest", s.get("max_rejected_freq")),
                ("E-step threshold (mean w^2)", s.get("threshold")),
                *([("warm-up training loss: lowest (epoch) / last",
                    f"{warm['min_loss']:.4g} ({warm['min_epoch']}) / {warm['end_loss']:.4g}")]
                  if warm.get("min_loss") is not None else [])])
    shown = sorted((i for i, f in enumerate(freq) if f > 0), key=lambda i: -freq[i])[:50]
    rows = [(i, freq[i], "selected" if freq[i] >= 0.5 else "rejected") for i in shown]
    return head + (_table(("input group", "inclusion frequency", ""), rows) if rows else "")


def _timing_section(run_dir: Path) -> str:
    path = run_dir / "timing.csv"
    if not path.is_file():
        return ""
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return ""
    steps = [float(r["batch_time_s"]) for r in rows]
    return _kv([("steps logged", len(steps)), ("workers", rows[-1].get("world_size")),
                ("median step (ms)", 1e3 * statistics.median(steps)),
                ("median throughput (samples/s, all workers)",
                 statistics.median(float(r["samples_per_s"]) for r in rows)),
                ("time to train (s, step time only)", float(rows[-1]["time_to_train_s"]))])


# ------------------------------------------------------------------------------ the report
def _page(title: str, source: str, sections: Iterable[tuple[str, str]],
          missing: str | None = None) -> str:
    """The HTML page: ``title``, a note naming ``source`` and the time, then the non-empty
    ``(heading, html)`` sections; ``missing`` (why there are no figures) is noted first."""
    body = "".join(f"<h2>{_e(head)}</h2>{content}" for head, content in sections if content)
    if missing:
        body = _note(missing) + body
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><h1>{_e(title)}</h1>"
            + _note(f"{source}; written {time.strftime('%Y-%m-%d %H:%M:%S')}") + body
            + "</body></html>\n")


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML report of a run directory and return its path.

    Args:
        run_dir: a ``bayescale train`` run directory (evaluated or not).
        out: the HTML file to create (must not exist); default :func:`report_path`.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run directory (nothing is written then).
        FileExistsError: ``out`` exists already.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {str(run_dir)!r}; pass the folder "
                                "`bayescale train` wrote (under runs/ by default)")
    if not any((run_dir / name).is_file() for name in RUN_MARKERS):
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run directory (it holds none of "
                                f"{', '.join(RUN_MARKERS)}); pass a folder written by "
                                "`bayescale train` or `bayescale quickstart`")
    out = Path(out) if out is not None else report_path(run_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another --out (reports are never "
                              "overwritten)")
    with tempfile.TemporaryDirectory(prefix="bayescale-report-") as tmp:
        fig = _Figures(Path(tmp))
        sections = [("Run configuration", _config_section(run_dir)),
                    ("Training", _training_section(run_dir, fig)),
                    *_eval_sections(run_dir, fig),
                    ("Posterior convergence", fig(
                        "posterior", lambda f: plots.plot_posterior_convergence(run_dir, f),
                        "posterior convergence")),
                    ("Pruning", _prune_section(run_dir)),
                    ("Selected support (Ke & Fan samples)", _support_section(run_dir)),
                    ("Timing", _timing_section(run_dir))]
    page = _page(f"bayescale report: {run_dir.name}", f"run directory {run_dir.resolve()}",
                 sections, fig.missing)
    with open(out, "x", encoding="utf-8") as fh:
        fh.write(page)
    return out
