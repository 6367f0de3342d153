"""Outputs of the uncertainty study, rebuilt from its partial JSONL rows: the result JSON (means
over seeds plus the per-seed values, the targets), the figures (accuracy and ECE against shift
level, one line per method, as Ovadia et al. 2019 Fig. 2; reliability diagrams) and the table in
docs/uncertainty.md (rendered by tables.py between its markers).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from bayescale.scale.bench import figures_path, provenance, results_path, write_json
from bayescale.uncertainty.plots import STUDY_ORDER, plot_shift_curves

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("accuracy", "nll", "brier", "ece", "aurc", "ood_auroc", "ood_auroc_entropy",
           "ood_auroc_mi", "shift_ece", "train_s", "infer_s")
MAIN = {"mnist": "conv", "cifar10": "vgg3"}
ORDER = list(STUDY_ORDER)


def _mean(values: list[Any]) -> Any:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's entry from its rows (one per seed): means, and per-seed values if several."""
    rows = sorted(rows, key=lambda r: r["seed"])
    out: dict[str, Any] = {m: _mean([r.get(m) for r in rows]) for m in METRICS
                           if any(m in r for r in rows)}
    shifts = []
    for i, p in enumerate(rows[0]["per_shift"]):
        shifts.append({"shift": p["shift"], "level": p["level"],
                       **{k: _mean([r["per_shift"][i][k] for r in rows])
                          for k in ("accuracy", "nll", "ece")}})
    out["per_shift"] = shifts
    out["seeds"] = [r["seed"] for r in rows]
    out["mc_samples"] = rows[0]["mc_samples"]
    out["trainings"] = [t for r in rows for t in r["trainings"]]
    for k in ("ood_score", "study_temperature"):
        if k in rows[0]:
            out[k.removeprefix("study_")] = [r[k] for r in rows] if len(rows) > 1 else rows[0][k]
    if len(rows) > 1:
        out["per_seed"] = {m: [r.get(m) for r in rows] for m in METRICS if m in rows[0]}
        out["per_seed"]["per_shift"] = [r["per_shift"] for r in rows]
    return out


def _evals(rows: list[dict[str, Any]], section: str, epochs: Any
           ) -> tuple[list[dict[str, Any]], dict[tuple[str, int], dict[str, Any]]]:
    """A section's evaluation rows, and the latest one per (method, seed): a re-run recipe or
    a retrained model replaces its row."""
    evals = [r for r in rows if r.get("kind") == "eval" and r["section"] == section
             and r["epochs"] == epochs]
    return evals, {(r["method"], r["seed"]): r for r in evals}


def _section(rows: list[dict[str, Any]], section: str, epochs: Any) -> dict[str, Any]:
    evals, latest = _evals(rows, section, epochs)
    names = sorted({r["method"] for r in evals}, key=lambda m: ORDER.index(m)
                   if m in ORDER else len(ORDER))
    out = {m: aggregate([r for r in latest.values() if r["method"] == m]) for m in names}
    for r in evals:  # the replaced rows stay on record, summarised
        if latest[(r["method"], r["seed"])] is not r:
            out[r["method"]].setdefault("earlier", []).append(
                {k: r.get(k) for k in ("seed", "trainings", "accuracy", "nll", "ece",
                                       "shift_ece", "train_s")})
    return out


def targets(dataset: str, methods: dict[str, Any], fc: dict[str, Any] | None) -> dict[str, Any]:
    """The study's targets for ``bnn`` against ``deterministic``, as booleans (None: not yet)."""
    b, d = methods.get("bnn"), methods.get("deterministic")
    out: dict[str, Any] = {}
    if b and d:
        if dataset == "mnist":
            out = {"accuracy >= twin - 0.2 pt": b["accuracy"] >= d["accuracy"] - 0.002,
                   "nll <= twin": b["nll"] <= d["nll"], "ece <= twin": b["ece"] <= d["ece"],
                   "ood_auroc >= twin + 0.02": b["ood_auroc"] >= d["ood_auroc"] + 0.02,
                   "shift_ece <= 0.7 x twin": b["shift_ece"] <= 0.7 * d["shift_ece"]}
        else:
            out = {"accuracy >= twin - 3 pt": b["accuracy"] >= d["accuracy"] - 0.03,
                   "nll <= twin": b["nll"] <= d["nll"],
                   "shift_ece <= twin": b["shift_ece"] <= d["shift_ece"]}
    if fc and "bnn" in fc:
        out["fc bnn accuracy >= 97.0%"] = fc["bnn"]["accuracy"] >= 0.97
    v = methods.get("ivon")
    if v and d:  # IVON (Shen et al. 2024) against the same twin trained with its usual optimizer
        out.update({"ivon accuracy >= twin - 0.5 pt": v["accuracy"] >= d["accuracy"] - 0.005,
                    "ivon nll <= twin": v["nll"] <= d["nll"],
                    "ivon ece <= twin": v["ece"] <= d["ece"],
                    "ivon shift_ece <= twin": v["shift_ece"] <= d["shift_ece"],
                    "ivon train_s <= 1.3 x twin": v["train_s"] <= 1.3 * d["train_s"]})
    return out


def plot_shift(dataset: str, methods: dict[str, Any], out: Path) -> Path:
    """Accuracy (top) and ECE (bottom) against shift level, one column per shift, one line per
    method (:func:`bayescale.uncertainty.plots.plot_shift_curves`)."""
    return plot_shift_curves(methods, out, f"{dataset}: accuracy and calibration under shift",
                             dpi=110)


def plot_reliability_grid(dataset: str, rows: dict[str, dict[str, Any]], out: Path) -> Path:
    """Reliability diagram (clean test set, first seed) of every method, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(2.8 * len(rows), 3.1), squeeze=False)
    for ax, (name, r) in zip(axes[0], rows.items(), strict=True):
        rel = r["reliability"]
        has = [c > 0 for c in rel["count"]]
        lo = [v for v, h in zip(rel["bin_lower"], has, strict=True) if h]
        width = [u - v for u, v, h in zip(rel["bin_upper"], rel["bin_lower"], has, strict=True)
                 if h]
        acc = [v for v, h in zip(rel["accuracy"], has, strict=True) if h]
        conf = [v for v, h in zip(rel["confidence"], has, strict=True) if h]
        ax.bar(lo, acc, width=width, align="edge", edgecolor="k", color="C0", label="accuracy")
        ax.bar(lo, [c - a for c, a in zip(conf, acc, strict=True)], bottom=acc, width=width,
               align="edge", color="C3", alpha=0.35, label="gap")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_title(f"{name}\nECE {r['ece']:.4f}", fontsize=9)
        ax.set_xlabel("confidence", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("accuracy", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_outputs(dataset: str, rows: list[dict[str, Any]], config: dict[str, Any],
                  command: str, docs: bool = True, figures: bool = True) -> Path:
    """The result JSON (and the figures, and with ``docs`` the docs table) from ``rows``."""
    epochs = config["epochs"]
    main = MAIN[dataset]
    methods = _section(rows, main, epochs)
    record: dict[str, Any] = {"benchmark": f"uncertainty_study_{dataset}",
                              "provenance": provenance({**config, "command": command})}
    record["methods"] = methods
    fc = _section(rows, "fc", epochs) if dataset == "mnist" else None
    if fc is not None:
        record["fc"] = {"methods": fc}
    record["targets"] = targets(dataset, methods, fc)
    trains = {r["training"]: r for r in rows if r.get("kind") == "train"}
    record["trainings"] = {k: {f: v.get(f) for f in ("config", "overrides", "epochs", "train_s",
                                                      "wall_s", "finished", "machine")}
                           for k, v in sorted(trains.items())}
    if methods and figures:
        latest = _evals(rows, main, epochs)[1]
        first: dict[str, dict[str, Any]] = {}
        for (method, _), r in sorted(latest.items(), key=lambda kv: kv[0][1]):
            first.setdefault(method, r)
        plot_shift(dataset, methods, figures_path(f"uncertainty_study_{dataset}_shift.png"))
        plot_reliability_grid(dataset, {m: first[m] for m in methods},
                              figures_path(f"uncertainty_study_{dataset}_reliability.png"))
    record["figures"] = [f"docs/figures/uncertainty_study_{dataset}_{k}.png"
                         for k in ("shift", "reliability")] if methods else []
    path = write_json(results_path(f"uncertainty_study_{dataset}.json"), record)
    if docs and not os.environ.get("BAYESCALE_RESULTS_DIR"):
        import tables

        page = ROOT / "docs" / "uncertainty.md"
        text, _ = tables.render(page.read_text())
        page.write_text(text)
    return path
