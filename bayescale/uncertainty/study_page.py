"""The uncertainty study as one self-contained HTML page (``bayescale report --study FILE.json``).

Input: the result JSON of ``benchmarks/uncertainty_study.py``
(``benchmarks/results/uncertainty_study_<dataset>.json``). The page has the provenance (data
set, epochs, commit, machine, command), the method table (accuracy, NLL, Brier, ECE, AURC, OOD
AUROC where measured, shift ECE, training and inference seconds, seeds), the FC section when the
JSON has one, the targets as met / not met, and accuracy and ECE against shift level
(:func:`bayescale.uncertainty.plots.plot_shift_curves`) as an embedded PNG. It uses the HTML
pieces and the style of the run report (:mod:`bayescale.uncertainty.report`).

The page is written next to the JSON as ``<stem>.html``, or ``<stem>-2.html``, ... when that name
is taken: an existing page is never overwritten.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import plots
from .report import _e, _Figures, _fmt, _kv, _note, _page, _table, free_html_path

__all__ = ["write_study_report", "study_report_path", "load_study"]

_HOW = ("pass the result JSON that benchmarks/uncertainty_study.py writes, e.g. "
        "benchmarks/results/uncertainty_study_mnist.json")
# (key, column header, format of a value); accuracy is shown in %
_COLUMNS = (("accuracy", "accuracy (%)", "{:.2f}"), ("nll", "NLL", "{:.4f}"),
            ("brier", "Brier", "{:.4f}"), ("ece", "ECE", "{:.4f}"), ("aurc", "AURC", "{:.4f}"),
            ("ood_auroc", "OOD AUROC (score)", "{:.3f}"), ("shift_ece", "shift ECE", "{:.4f}"),
            ("train_s", "train s", "{:.0f}"), ("infer_s", "infer s", "{:.1f}"))


def study_report_path(study_json: str | Path) -> Path:
    """The first free name among ``<stem>.html``, ``<stem>-2.html``, ... next to the JSON."""
    study_json = Path(study_json)
    return free_html_path(study_json.parent, study_json.stem)


def _check_methods(methods: Any, where: str, path: Path) -> None:
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError(f"{path}: {where} is not a non-empty mapping of method results; {_HOW}")
    for name, m in methods.items():
        shifts = m.get("per_shift") if isinstance(m, Mapping) else None
        if not isinstance(shifts, list) or not shifts:
            raise ValueError(f"{path}: method {name!r} in {where} has no per_shift results (a "
                             "list of {shift, level, accuracy, ece}); rebuild the JSON with "
                             "benchmarks/uncertainty_study.py (it re-renders from its partial "
                             "rows) or pass a complete study result")
        if not all(isinstance(p, Mapping) and {"shift", "level", "accuracy", "ece"} <= p.keys()
                   for p in shifts):
            raise ValueError(f"{path}: method {name!r} in {where}: every per_shift entry needs "
                             "shift, level, accuracy and ece; rebuild the JSON with "
                             "benchmarks/uncertainty_study.py")


def load_study(study_json: str | Path) -> dict[str, Any]:
    """Read and check an uncertainty study result JSON.

    Raises:
        ValueError: no such file, not JSON, no ``methods`` mapping, or a method (also in the
            ``fc`` section) without ``per_shift`` results; the message names the file and the fix.
    """
    path = Path(study_json)
    if not path.is_file():
        raise ValueError(f"{path}: no such file; {_HOW}")
    try:
        study = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {_HOW} (not the .partial.jsonl "
                         "row log)") from None
    if not isinstance(study, dict) or not isinstance(study.get("methods"), Mapping):
        raise ValueError(f"{path} has no \"methods\" mapping, so it is not an uncertainty study "
                         f"result; {_HOW}")
    _check_methods(study["methods"], '"methods"', path)
    fc = _fc_methods(study)
    if fc is not None:
        _check_methods(fc, '"fc"', path)
    return study


def _fc_methods(study: Mapping[str, Any]) -> Mapping[str, Any] | None:
    fc = study.get("fc")
    if not fc:
        return None
    return fc["methods"] if isinstance(fc, Mapping) and "methods" in fc else fc


# ------------------------------------------------------------------------------ sections
def _cell(m: Mapping[str, Any], key: str, fmt: str) -> str:
    value = m.get(key)
    if value is None:
        return "n/a"
    scale = 100.0 if key == "accuracy" else 1.0
    try:
        text = fmt.format(scale * value)
    except (TypeError, ValueError):
        return _fmt(value)
    per_seed = [v for v in (m.get("per_seed") or {}).get(key) or () if v is not None]
    if len(per_seed) > 1:
        text += " ± " + fmt.format(scale * statistics.stdev(per_seed))
    if key == "ood_auroc" and m.get("ood_score"):
        score = m["ood_score"]
        text += f" ({', '.join(map(str, score)) if isinstance(score, list) else score})"
    return text


def _methods_table(methods: Mapping[str, Mapping[str, Any]]) -> str:
    cols = [c for c in _COLUMNS
            if c[0] != "ood_auroc" or any(m.get("ood_auroc") is not None
                                          for m in methods.values())]
    rows = [(name, *(_cell(m, key, fmt) for key, _, fmt in cols),
             ", ".join(map(str, m.get("seeds") or ())) or "n/a", _fmt(m.get("mc_samples", "")))
            for name, m in methods.items()]
    return _table(("method", *(head for _, head, _ in cols), "seeds", "T"), rows)


def _provenance_section(study: Mapping[str, Any], path: Path) -> str:
    prov = study.get("provenance") or {}
    cfg = prov.get("config") or {}
    shifts = "; ".join(f"{kind}: {', '.join(map(_fmt, levels))}"
                       for kind, levels in cfg.get("shifts") or ())
    machine = ", ".join(str(v) for v in (
        prov.get("device"), prov.get("cpu_count") and f"{prov['cpu_count']} CPUs",
        prov.get("torch_threads") and f"torch threads {prov['torch_threads']}",
        prov.get("cuda") and f"CUDA {prov['cuda']}") if v) or None
    pairs = [("benchmark", study.get("benchmark")), ("data set", cfg.get("dataset")),
             ("epochs", cfg.get("epochs")), ("training / test images",
                                             f"{cfg['train_size']} / {cfg['test_size']}"
                                             if "train_size" in cfg and "test_size" in cfg
                                             else None),
             ("shifts (levels)", shifts or None), ("shifted test images", cfg.get("shift_size")),
             ("MC draws T", cfg.get("samples")), ("ensemble size", cfg.get("ensemble_size")),
             ("ECE bins", cfg.get("num_bins")), ("commit", prov.get("commit")),
             ("machine", machine), ("platform", prov.get("platform")),
             ("python / torch", " / ".join(str(prov[k]) for k in ("python", "torch")
                                           if prov.get(k)) or None),
             ("measured", prov.get("timestamp")), ("result file", str(path.resolve()))]
    command = cfg.get("command") or prov.get("command")
    return _kv(pairs) + (f"<p>command</p><pre>{_e(command)}</pre>" if command else
                         _note("the command that ran the study is not recorded"))


def _targets_section(targets: Any) -> str:
    if not isinstance(targets, Mapping) or not targets:
        return _note("no targets were evaluated (they need the bnn and deterministic rows)")
    verdict = {True: "met", False: "not met"}
    rows = [(name, verdict.get(ok, "not measured yet")) for name, ok in targets.items()]
    met = sum(ok is True for ok in targets.values())
    return _note(f"{met} of {len(targets)} targets met") + _table(("target", ""), rows)


def _shift_table(methods: Mapping[str, Mapping[str, Any]]) -> str:
    rows = [(name, p["shift"], p["level"], f"{100 * p['accuracy']:.2f}", f"{p['ece']:.4f}",
             _cell(p, "nll", "{:.4f}"))
            for name, m in methods.items() for p in m["per_shift"]]
    return ("<details><summary>the numbers per shift level</summary>"
            + _table(("method", "shift", "level", "accuracy (%)", "ECE", "NLL"), rows)
            + "</details>")


def _shift_section(methods: Mapping[str, Mapping[str, Any]], fig: _Figures, name: str,
                   title: str) -> str:
    return fig(name, lambda out: plots.plot_shift_curves(methods, out, title),
               "accuracy and ECE against shift level") + _shift_table(methods)


# ------------------------------------------------------------------------------ the page
def write_study_report(study_json: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML page of an uncertainty study result JSON and return its path.

    Args:
        study_json: e.g. ``benchmarks/results/uncertainty_study_mnist.json``.
        out: the HTML file to create (must not exist); default :func:`study_report_path`.

    Raises:
        ValueError: the JSON is missing or not a study result (see :func:`load_study`); nothing
            is written then.
        FileExistsError: ``out`` exists already.
    """
    path = Path(study_json)
    study = load_study(path)
    out = Path(out) if out is not None else study_report_path(path)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another --out (reports are never "
                              "overwritten)")
    methods, fc = study["methods"], _fc_methods(study)
    dataset = ((study.get("provenance") or {}).get("config") or {}).get("dataset") or path.stem
    with tempfile.TemporaryDirectory(prefix="bayescale-study-") as tmp:
        fig = _Figures(Path(tmp))
        sections = [
            ("Provenance", _provenance_section(study, path)),
            ("Methods", _note("accuracy, NLL (nats), Brier, ECE and AURC on the clean test set; "
                              "OOD AUROC by the score in brackets; shift ECE: the mean ECE over "
                              "the shift levels; train s and infer s: seconds of training and "
                              "of predicting the test set; T: weight draws or members; mean ± "
                              "sd over seeds") + _methods_table(methods)),
            ("FC section", _methods_table(fc) if fc else ""),
            ("Targets", _targets_section(study.get("targets"))),
            ("Accuracy and calibration under shift", _shift_section(
                methods, fig, "shift", f"{dataset}: accuracy and calibration under shift")),
            ("FC section under shift", _shift_section(
                fc, fig, "shift_fc", f"{dataset} FC: accuracy and calibration under shift")
             if fc else ""),
        ]
    page = _page(f"bayescale uncertainty study: {study.get('benchmark') or path.stem}",
                 f"result file {path.resolve()}", sections, fig.missing)
    with open(out, "x", encoding="utf-8") as fh:
        fh.write(page)
    return out
