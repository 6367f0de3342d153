"""The Ke & Fan robustness study (``python benchmarks/kefan_bench.py robustness``): every problem
type of :mod:`kefan_problems` over several seeds, with the oracle and the L1 baseline beside.

Resumable: each finished run is appended to ``kefan_robustness.partial.jsonl`` next to the
result, keyed by (problem, method, seed, epochs, a hash of the preset's settings); a restart
skips what is there. Each Ke & Fan run holds the shared benchmark lock
(``/tmp/bayescale-bench.lock``) for its own duration only, so other timing jobs interleave; the
baselines run outside it (their seconds are indicative). The result JSON is rewritten after
every run. Several workers may run the same command at once: each claims a run (a
``.kefan_robustness.partial.<hash>.claim`` file with its pid) before starting it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
from pathlib import Path
from typing import Any

from kefan_problems import PROBLEMS, SCORE_REL, Problem, fit_kefan, fit_lasso, fit_oracle

from bayescale.kefan.optimizer import resolve_hparams
from bayescale.scale.bench import bench_lock, provenance, write_json


def _key(r: dict[str, Any]) -> tuple:
    return r["problem"], r["method"], r["seed"], r.get("epochs_cfg"), r.get("hp")


RECORD = 2  # the run record's version: 2 adds the warm-up verdict (stability["warmup"])


def hp_tag(method: str) -> str | None:
    """A short hash of a preset's settings and the record version, so that a changed preset
    (or record) is re-run on resume."""
    if method in ("oracle", "lasso"):
        return None
    blob = json.dumps(resolve_hparams(method), sort_keys=True, default=str)
    if RECORD > 1:  # version 1 hashed the settings alone: its runs keep their tags
        blob += f"record={RECORD}"
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


def _claim_path(partial: Path, rec: dict[str, Any]) -> Path:
    tag = hashlib.sha1(json.dumps(_key(rec), default=str).encode()).hexdigest()[:12]
    return partial.with_name(f".{partial.stem}.{tag}.claim")


def _claim(partial: Path, rec: dict[str, Any]) -> bool:
    """Claim a run for this process (a file holding its pid), so that several workers can
    share one plan; a claim whose process is gone is taken over."""
    path = _claim_path(partial, rec)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(path.read_text() or 0), 0)
                return False  # a live worker has it
            except (ProcessLookupError, ValueError):
                path.unlink(missing_ok=True)
                continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def _read(partial: Path) -> list[dict[str, Any]]:
    if not partial.is_file():
        return []
    return [json.loads(ln) for ln in partial.read_text().splitlines() if ln.strip()]


def verdict(r: dict[str, Any]) -> bool:
    """A run's stability verdict from its record, with the score test at ``SCORE_REL``: no
    undecided input, at least one selected, no pruned input with signal."""
    st = r["stability"]
    ratio = st.get("score_test", {}).get("max_ratio")
    return (st["num_undecided"] == 0 and st["num_selected"] > 0
            and (ratio is None or ratio < SCORE_REL)
            and not st.get("warmup", {}).get("stalled", False))


def _summary(prob: Problem, runs: list[dict], oracle: float | None) -> dict[str, Any]:
    if not runs:
        return {}
    for r in runs:
        if "stability" in r:
            r["stability"]["stable"] = verdict(r)
    m = statistics.median(r["metric"] for r in runs)
    out = {"seeds": len(runs), "exact_support_rate": sum(r["exact_support"] for r in runs)
           / len(runs), "median_metric": m}
    if "seconds" in runs[0]:
        out["median_seconds"] = statistics.median(r["seconds"] for r in runs)
    if "epochs" in runs[0]:
        out["epochs"] = runs[0]["epochs"]
    if oracle is not None:
        if prob.loss == "mse":
            out["metric_vs_oracle"] = m / oracle
            met = out["exact_support_rate"] >= 0.9 and m <= 1.15 * oracle
        else:
            out["accuracy_minus_oracle_pts"] = 100 * (m - oracle)
            met = out["exact_support_rate"] >= 0.9 and m >= oracle - 0.01
        out["target_met"] = met if len(runs) >= 5 else None  # a target needs 5 seeds
    if "stability" in runs[0]:
        out["flagged_unstable"] = sum(not r["stability"]["stable"] for r in runs)
        out["failed_and_flagged"] = sum(not r["exact_support"] and not r["stability"]["stable"]
                                        for r in runs)
    return out


def assemble(records: list[dict], problems: list[str], preset: str, compare: list[str],
             config: dict[str, Any], previous: dict[str, str] | None = None) -> dict[str, Any]:
    """The result layout: ``{"provenance", "problems": {NAME: {"p", "widths", "loss",
    "oracle_metric", "runs", ...}}}``; ``runs`` are the default preset's. ``previous`` maps a
    label to the settings hash of an earlier version of ``preset`` whose runs are in the
    records: they join ``compare`` under that label (kept for the history, not re-run)."""
    out: dict[str, Any] = {}
    for name in problems:
        prob = PROBLEMS[name]

        def pick(method: str, name: str = name, tag: str | None = None) -> list[dict]:
            base = method in ("oracle", "lasso")  # Ke & Fan runs: this budget and settings
            tag = tag or hp_tag(method)
            return sorted((r for r in records if r["problem"] == name and r["method"] == method
                           and (base or (r.get("epochs_cfg") == config["epochs"]
                                         and r.get("hp") == tag))),
                          key=lambda r: r["seed"])

        oracle_runs = pick("oracle")
        oracle = statistics.median(r["metric"] for r in oracle_runs) if oracle_runs else None
        runs = pick(preset)
        lasso = pick("lasso")
        out[name] = {"p": prob.p, "widths": list(prob.widths), "loss": prob.loss,
                     "true_inputs": list(prob.true_inputs), "metric_name":
                     "test MSE" if prob.loss == "mse" else "test accuracy",
                     "oracle_metric": oracle, "preset": preset, "runs": runs,
                     "summary": _summary(prob, runs, oracle),
                     "oracle": {"runs": oracle_runs},
                     "lasso": {"runs": lasso, "summary": _summary(prob, lasso, oracle)},
                     "compare": {c: {"runs": pick(c), "summary": _summary(prob, pick(c), oracle)}
                                 for c in compare}}
        for label, tag in (previous or {}).items():
            old = pick(preset, tag=tag)
            if old:
                out[name]["compare"][label] = {"runs": old, "hp": tag,
                                               "summary": _summary(prob, old, oracle)}
    return {"provenance": provenance(config), "problems": out}


def run_study(problems: list[str], seeds: list[int], preset: str, compare: list[str],
              epochs: int, out_path: Path, oracle_epochs: int = 300,
              budget: str = "", lock: bool = True,
              previous: dict[str, str] | None = None) -> dict[str, Any]:
    """Run (or resume) the study and write ``out_path``; returns the result. First the oracle,
    the L1 baseline and ``preset`` on every problem and seed, then the ``compare`` presets, each
    with its own schedule (cycles, h0, ramp, warm-up) over the same ``epochs``."""
    partial = out_path.with_suffix(".partial.jsonl")
    records = _read(partial)
    done = {_key(r) for r in records}
    config = {"suite": "robustness", "problems": problems, "seeds": seeds, "preset": preset,
              "compare": compare, "epochs": epochs, "oracle_epochs": oracle_epochs,
              "batch": 1024, "threads": 1, "partial": partial.name, "budget": budget,
              "hparams": {m: resolve_hparams(m) for m in (preset, *compare)},
              "previous": previous or {}}
    plan = [(name, seed, m) for seed in seeds for name in problems
            for m in ("oracle", "lasso", preset)]
    plan += [(name, seed, m) for m in compare for seed in seeds for name in problems]
    for name, seed, method in plan:
        prob = PROBLEMS[name]
        base = method in ("oracle", "lasso")
        rec = {"problem": name, "method": method, "seed": seed,
               "epochs_cfg": None if base else epochs, "hp": hp_tag(method)}
        records = _read(partial)  # another worker on the same plan may have added runs
        done = {_key(r) for r in records}
        if _key(rec) in done or not _claim(partial, rec):
            continue
        print(f"[{name} seed {seed}] {method}", flush=True)
        # the Ke & Fan runs are the timed ones (their seconds are the cost reported); the
        # baselines' seconds are indicative only, so they run outside the shared lock; with
        # lock=False nothing is timed (seconds = wall time on a shared machine) and
        # time_runs() re-times one seed per problem under the lock
        timed = lock and not base
        with bench_lock() if timed else contextlib.nullcontext():
            if method == "oracle":
                res = fit_oracle(prob, seed, oracle_epochs)
            elif method == "lasso":
                res = fit_lasso(prob, seed)
            else:
                res = fit_kefan(prob, seed, method, epochs, log=lambda s: print(s, flush=True),
                                trace_every=max(1, epochs // 8))
        rec.update(res, timed_under_lock=timed)
        with partial.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        _claim_path(partial, rec).unlink(missing_ok=True)
        records = _read(partial)
        _print(rec)
        write_json(out_path, assemble(records, problems, preset, compare, config, previous))
    result = assemble(records, problems, preset, compare, config, previous)
    write_json(out_path, result)
    return result


def time_runs(problems: list[str], seed: int, preset: str, epochs: int,
              out_path: Path) -> dict[str, Any]:
    """Re-run ``preset`` on ``seed`` of each problem under the shared lock (the timed cost)
    and check it reproduces the study's run (same selection and metric: the runs are
    deterministic); the result JSON gains ``timing``."""
    result = json.loads(out_path.read_text())
    timing = result.setdefault("timing", {})
    for name in problems:
        if name in timing:
            continue
        print(f"[timing {name} seed {seed}] {preset}", flush=True)
        with bench_lock():
            res = fit_kefan(PROBLEMS[name], seed, preset, epochs, log=lambda s: None)
        study = next((r for r in result["problems"].get(name, {}).get("runs", [])
                      if r["seed"] == seed), None)
        timing[name] = {"seed": seed, "epochs": res["epochs"], "steps": res["steps"],
                        "seconds": res["seconds"], "ms_per_step": 1e3 * res["seconds"]
                        / res["steps"], "reproduces_study_run": study is not None
                        and study["selected"] == res["selected"]
                        and abs(study["metric"] - res["metric"]) < 1e-6}
        print(f"  -> {res['seconds']:.1f} s, reproduces: "
              f"{timing[name]['reproduces_study_run']}", flush=True)
        write_json(out_path, result)
    return result


def _print(r: dict[str, Any]) -> None:
    extra = (f" exact={r['exact_support']} kept={r.get('num_selected')}"
             if "exact_support" in r else "")
    stab = r.get("stability")
    print(f"  -> metric {r['metric']:.4f}{extra} {r.get('seconds', 0):.0f} s"
          + (f" stable={stab['stable']} undecided={stab['num_undecided']}" if stab else ""),
          flush=True)


def table(result: dict[str, Any]) -> str:
    """A markdown table of the study (one row per problem and method)."""
    rows = ["| problem | P, net | method | exact support | median metric | vs oracle | "
            "median s | epochs | flagged unstable |", "|---|---|---|---|---|---|---|---|---|"]
    for name, p in result["problems"].items():
        net = f"{p['p']}-{'-'.join(map(str, p['widths']))}-1, {p['loss']}"
        rows.append(f"| {name} | {net} | oracle (Adam, true inputs) | - | "
                    f"{p['oracle_metric']:.4f} | 1 | | | |")
        for label, s in ((p["preset"], p["summary"]), ("lasso", p["lasso"]["summary"]),
                         *((c, v["summary"]) for c, v in p["compare"].items())):
            if not s:
                continue
            vs = (f"{s['metric_vs_oracle']:.3f}x" if "metric_vs_oracle" in s
                  else f"{s.get('accuracy_minus_oracle_pts', 0):+.2f} pt")
            rows.append(f"| {name} | {net} | {label} | {s['exact_support_rate']:.0%} of "
                        f"{s['seeds']} | {s['median_metric']:.4f} | {vs} | "
                        f"{s.get('median_seconds', 0):.0f} | {s.get('epochs', '-')} | "
                        f"{s.get('flagged_unstable', '-')} |")
    return "\n".join(rows)


def figure(result: dict[str, Any], path: Path) -> Path:
    """Two panels per problem type: the share of seeds with the exact support, and the median
    metric against the oracle's (MSE ratio; accuracy difference in points for BCE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = result["problems"]
    names = list(probs)
    first = probs[names[0]]
    methods = [first["preset"], *first["compare"], "lasso"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(methods)
    for k, m in enumerate(methods):
        rates, rel = [], []
        for n in names:
            p = probs[n]
            s = (p["summary"] if m == p["preset"] else p["lasso"]["summary"] if m == "lasso"
                 else p["compare"][m]["summary"])
            rates.append(s.get("exact_support_rate", float("nan")) if s else float("nan"))
            rel.append(s.get("metric_vs_oracle", 1 + s.get("accuracy_minus_oracle_pts", 0)
                              / -100) if s else float("nan"))
        xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(names))]
        a.bar(xs, rates, width, label=m)
        b.bar(xs, rel, width, label=m)
    a.axhline(0.9, color="k", lw=0.8, ls="--")
    b.axhline(1.15, color="k", lw=0.8, ls="--")
    for ax, title in ((a, "exact support (share of seeds; target 0.9)"),
                      (b, "median metric / oracle (BCE: 1 + points below the oracle / 100)")):
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set_title(title, fontsize=9)
    a.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
