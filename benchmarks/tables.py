"""Render the benchmark tables of README.md and docs/*.md from benchmarks/results/*.json.

    python benchmarks/tables.py            # rewrite every table between its markers, in every page
    python benchmarks/tables.py --check    # exit 1 (naming the pages) if any page is out of date
    python benchmarks/tables.py --results DIR --summary DIR/TABLES.md   # tables of another run

Each table lives between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in one of the
documentation pages: README.md and every docs/*.md (today docs/training.md, docs/scaling.md
and docs/peers.md hold them all); the prose around it is written by hand. A table whose JSON is
missing is left as it is; a page without markers is left alone.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RES = ROOT / "benchmarks" / "results"  # --results changes it


def pages() -> list[Path]:
    """The pages that may hold tables: README.md, then docs/*.md in name order."""
    return [README] + sorted(DOCS.glob("*.md"))


def _load(name: str) -> dict | None:
    path = RES / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def _stamp(d: dict) -> str:
    p = d.get("provenance", {})
    return (f"\n\n<sub>commit `{str(p.get('commit', '?'))[:10]}`, torch {p.get('torch', '?')}, "
            f"{p.get('device', p.get('cpu', '?'))}, {p.get('timestamp', '?')[:10]}</sub>")


ARCH = {"mlp": "(a) MLP", "conv": "(b) conv net", "vgg3": "(c) VGG3 (CIFAR-10)"}


def layer_overhead(d: dict) -> str:
    rows = [[ARCH[r["arch"]], r["estimator"], f"{r['plain']['median_s'] * 1e3:.2f}",
             f"{r['bayes']['median_s'] * 1e3:.2f}", f"{r['ratio']:.2f}x",
             f"≤ {r['target']}x" if r["target"] else "—", _met(r["meets_target"])]
            for r in d["results"]]
    return _table(["architecture", "estimator", "plain ms/step", "Bayesian ms/step", "ratio",
                   "target", "met"], rows) + _stamp(d)


def train_mnist(d: dict) -> str:
    target = {"BNN_conv_flip": 0.985, "BNN_FC_flip": 0.97}
    rows = []
    for name, r in d["results"].items():
        t = target.get(name)
        accs = [x["test_acc"] for x in r["runs"]]
        met = None if t is None else (f"{sum(a >= t for a in accs)} of {len(accs)} seeds"
                                      if r["test_acc_mean"] >= t else "**no** (mean)")
        rows.append([f"`{name}`", str(r["runs"][0]["eval_samples"]),
                     f"{100 * r['test_acc_mean']:.2f}% ({100 * r['test_acc_min']:.2f}"
                     f"–{100 * r['test_acc_max']:.2f})", f"{r['test_nll_mean']:.3f}",
                     f"{r['epoch_time_median_s']:.1f}", f"≥ {100 * t:.1f}%" if t else "—",
                     met or "—"])
    return _table(["model", "MC draws", "test accuracy, mean (min–max)", "test NLL (nats)",
                   "s / epoch (median)", "target", "met"], rows) + _stamp(d)


def train_cifar(d: dict) -> str:
    rows = []
    for name, r in d["results"].items():
        run = r["runs"][0]
        curve = " / ".join(f"{100 * a:.1f}%" for _, a in run["eval_curve"])
        rows.append([f"`{name}`", curve, f"{run['test_nll']:.2f}",
                     f"{statistics.median(run['epoch_times_s']):.0f}"])
    return _table(["model", "test accuracy after each epoch", "test NLL", "s / epoch"],
                  rows) + _stamp(d)


def train_ddp(d: dict) -> str:
    r = d["results"]
    one, two = r["1x1"], r["2x1"]
    solo = statistics.fmean(x["median_step_s"] for x in r["2 independent x1"])
    rows = [["1 worker × 1 thread", f"{one['median_step_s'] * 1e3:.1f} ms",
             f"{r['throughput_1x1']:,.0f} img/s", "1", "—"],
            ["2 workers × 1 thread (DDP)", f"{two['median_step_s'] * 1e3:.1f} ms",
             f"{r['throughput_2x1']:,.0f} img/s", f"**{r['efficiency']:.2f}** (target ≥ 0.85: "
             f"{'yes' if r['efficiency'] >= 0.85 else '**no**'})",
             f"{100 * r['allreduce_share_2x1']:.1f}%"],
            ["2 independent runs × 1 thread", f"{solo * 1e3:.1f} ms", "—",
             f"{r['ceiling_efficiency']:.2f} (ceiling)", "—"]]
    return _table(["run", "median step", "throughput", "efficiency", "all-reduce share of step"],
                  rows) + _stamp(d)


def data_pipeline(d: dict) -> str:
    t = d["timings"]
    return _table(["loader alone", "training step", "loader share of step", "target"], [[
        f"{t['loader']['median_s'] * 1e3:.2f} ms/batch ({d['loader_images_per_s']:,.0f} img/s)",
        f"{t['step']['median_s'] * 1e3:.0f} ms", f"{100 * d['loader_share']:.2f}%",
        f"< {100 * d['target_share']:.0f}% ({'met' if d['meets_target'] else '**not met**'})"]]
    ) + _stamp(d)


def scaling(d: dict) -> str:
    r = d["results"]
    rows = [[m["label"], m["workers"], f"{float(m['median_step_s']) * 1e3:.1f} ms",
             f"{float(m['allreduce_s']) * 1e3:.2f} ms", f"{float(m['efficiency']):.2f}",
             "measured"] for m in r["measured"]]
    for label, v in r["validation_2_workers"].items():
        rows.append([label, 2, f"{v['predicted_step2_s'] * 1e3:.1f} ms",
                     f"{v['predicted_allreduce_s'] * 1e3:.2f} ms",
                     f"{v['predicted_efficiency']:.2f} (error {v['error_points']:+.1f} points)",
                     f"modelled (node-sharing factor {v['contention']:.3f}, measured)"])
    return _table(["model", "workers", "median step", "all-reduce", "efficiency", "source"],
                  rows) + _stamp(d)


def scaling_fit(d: dict) -> str:
    rows = []
    for name, f in d["results"]["seed_fit"].items():
        for model in ("BNN", "CNN"):
            errs = ", ".join(f"{100 * e:+.1f}%" for e in f["relative_error"][model])
            pred = ", ".join(f"{p:.2f}" for p in f["predicted_speedup"][model])
            obs = ", ".join(f"{p:.2f}" for p in f["observed_speedup"][model])
            rows.append([name, model, obs, pred, errs,
                         f"α = {f['software_latency_s'] * 1e6:.0f} µs, CV = "
                         f"{f['step_cv'][model]:.3f}"])
    return _table(["model variant", "net", "seed speed-up at 2/4/6/8", "modelled", "error",
                   "fitted parameters"], rows) + _stamp(d)


def scaling_extrapolation(d: dict) -> str:
    c = d["results"]["extrapolation"]["curves"]
    n = d["results"]["extrapolation"]["workers"]
    rows = []
    for key, v in c.items():
        fit, model, ic, comp, mode = key.split("|")
        if ic != "aries" and comp == "bf16":
            continue
        rows.append([fit, model, ic, comp, mode, f"{v['efficiency'][n.index(1024)]:.2f}",
                     v["below_50pct_at"] or "> 1024"])
    return _table(["fit", "net", "interconnect", "gradients", "scaling", "efficiency at 1,024",
                   "below 50% from"], rows) + _stamp(d)


def peers(d: dict) -> str:
    rows = []
    for arch, r in d["results"].items():
        for lib in r["train_step"]:
            if lib == "plain":
                continue
            rows.append([ARCH[arch], lib, f"{r['train_step'][lib]['ratio']:.2f}x",
                         f"{r['mc_predict'][lib]['ratio']:.2f}x"])
    return _table(["architecture", "library / estimator", "train step vs plain",
                   f"MC prediction (T={d['provenance']['config']['samples']}) vs plain"],
                  rows) + _stamp(d)


def ivon_steps(d: dict) -> str:
    """IVON's train step against the plain model's Adam step, bayescale's beside ivon-opt's."""
    rows = []
    for arch, r in d["results"].items():
        t = r["train_step"]
        ours, theirs = t["bayescale ivon"]["ratio"], t["ivon-opt"]["ratio"]
        target = 1.3 if arch in ("conv", "vgg3") else None
        met = ours <= theirs and (target is None or ours <= target)
        rows.append([ARCH[arch], f"{t['plain']['median_s'] * 1e3:.1f}", f"{ours:.2f}x",
                     f"{theirs:.2f}x", f"≤ ivon-opt{f', ≤ {target}x' if target else ''}",
                     _met(met)])
    return _table(["architecture", "Adam ms/step (plain model)", "bayescale IVON vs Adam",
                   "ivon-opt vs Adam", "target", "met"], rows) + _stamp(d)


def ivon_prune(d: dict) -> str:
    """BPrune SNR pruning (clean, no fine-tuning) of an IVON posterior beside a BNN's."""
    rows = []
    for name, entry in d["results"].items():
        if not name.startswith(("CNN_conv IVON", "BNN_conv_flip")):
            continue
        for r in entry["table"]:
            if r["mode"] != "clean":
                continue
            rows.append([f"`{name}`", f"{r['percent_pruned']:.0f}%",
                         f"{100 * r['acc_mc']:.2f}%", f"{r['acc_mc_loss_points']:+.2f}",
                         f"{r['heldout_nats']:.4f}", f"{r['threshold']:.2f}",
                         str(r["num_test"])])
    p = next((e["provenance"] for n, e in d["results"].items() if "IVON" in n), {})
    return _table(["model (training)", "weights pruned", "MC accuracy", "loss (points)",
                   "held-out nats", "SNR threshold", "test images"], rows) + _stamp(
        {"provenance": p})


def _study_rows(methods: dict) -> list[list[str]]:
    def f(v, spec):
        return "—" if v is None else format(v, spec)

    def pm(m, key, spec, scale=1.0):
        vals = m.get("per_seed", {}).get(key)
        mean = m.get(key)
        if mean is None:
            return "—"
        text = format(scale * mean, spec)
        if vals and len(vals) > 1 and None not in vals:
            text += f" ± {format(scale * statistics.stdev(vals), spec)}"
        return text

    rows = []
    for name, m in methods.items():
        score = m.get("ood_score")
        score = score if isinstance(score, str) else "/".join(sorted(set(score or [])))
        ood = "—" if m.get("ood_auroc") is None else f"{m['ood_auroc']:.3f} ({score})"
        rows.append([f"`{name}`", str(len(m["seeds"])), pm(m, "accuracy", ".2f", 100),
                     pm(m, "nll", ".4f"), pm(m, "brier", ".4f"), pm(m, "ece", ".4f"),
                     pm(m, "aurc", ".4f"), ood, pm(m, "shift_ece", ".4f"),
                     f(m.get("train_s"), ".0f"), f(m.get("infer_s"), ".1f"),
                     str(m.get("mc_samples", "—"))])
    return rows


_STUDY_HEADER = ["method", "seeds", "accuracy (%)", "NLL", "Brier", "ECE", "AURC",
                 "OOD AUROC (score)", "shift ECE", "train s", "infer s", "T"]


# the study's methods (study_methods.SECTIONS; not imported here: it needs torch)
STUDY_METHODS = ("deterministic", "temperature_scaled", "bnn", "mc_dropout", "sghmc_bma",
                 "deep_ensemble", "ivon")


def uncertainty_study(d: dict) -> str:
    cfg = d["provenance"]["config"]
    note = (f"\n\n<sub>{cfg['epochs']} epochs, {cfg['train_size']:,} training images; "
            f"mean ± sd over seeds; {len(d['methods'])} of {len(STUDY_METHODS)} methods "
            "done</sub>")
    return _table(_STUDY_HEADER, _study_rows(d["methods"])) + note + _stamp(d)


def uncertainty_study_fc(d: dict) -> str:
    rows = _study_rows(d.get("fc", {}).get("methods", {}))
    return _table(_STUDY_HEADER, rows) + _stamp(d) if rows else "(not measured yet)"


def uncertainty_study_targets(d: dict) -> str:
    rows = [[k, _met(v)] for k, v in d.get("targets", {}).items()]
    return _table(["target", "met"], rows) if rows else "(not measured yet)"


def _kf_rows(name: str, p: dict) -> list[list[str]]:
    mse = p["loss"] == "mse"
    net = f"{p['p']}-{'-'.join(map(str, p['widths']))}-1, {p['loss']}"
    orc = p["oracle_metric"]

    def fm(v: float) -> str:
        return f"{v:.3f}" if mse else f"{100 * v:.1f}%"

    def row(label: str, s: dict, runs: list[dict]) -> list[str]:
        if not s:
            return []
        vs = (f"{s['metric_vs_oracle']:.2f}x" if mse
              else f"{s['accuracy_minus_oracle_pts']:+.1f} pt")
        exact = sum(r["exact_support"] for r in runs)
        cost = (f"{s['epochs']} ep, {s['median_seconds']:.0f} s" if "epochs" in s
                else f"{s.get('median_seconds', 0):.0f} s")
        flagged = (f"{s['flagged_unstable']} ({s['failed_and_flagged']} of "
                   f"{len(runs) - exact} failures)" if "flagged_unstable" in s else "—")
        met = _met(s.get("target_met")) if label.startswith("`") and "target_met" in s else "—"
        return [name, net, label, f"{exact} of {len(runs)}", fm(s["median_metric"]), vs, cost,
                flagged, met]

    rows = [[name, net, "oracle (Adam, true inputs)", "—", fm(orc), "1", "—", "—", "—"]]
    rows.append(row(f"`{p['preset']}`", p["summary"], p["runs"]))
    for c, v in p["compare"].items():
        rows.append(row(f"`{c}`", v["summary"], v["runs"]))
    rows.append(row("L1 (lasso / L1 logistic)", p["lasso"]["summary"], p["lasso"]["runs"]))
    return [r for r in rows if r]


def kefan_robustness(d: dict) -> str:
    rows = [r for name, p in d["problems"].items() for r in _kf_rows(name, p)]
    return _table(["problem", "P, net, loss", "method", "exact support (seeds)",
                   "median test MSE / accuracy", "vs oracle", "cost per run (median)",
                   "flagged unstable", "target met"], rows) + _stamp(d)


def bnn_recipe(d: dict) -> str:
    rows = [[f"`{name}`", " ".join(f"`{o}`" for o in v["overrides"]) or "—",
             f"{100 * v['accuracy']:.2f}", f"{v['nll']:.4f}", f"{v['ece']:.4f}",
             f"{v['ood_auroc']:.3f} ({v['ood_score']})", f"{v['shift_ece']:.4f}"]
            for name, v in d.get("variants", {}).items()]
    base = d.get("provenance", {}).get("config", {}).get("base", "mnist_bnn_conv_flip_seed")
    return _table(["variant", f"overrides of `{base}`", "accuracy (%)", "NLL", "ECE",
                   "OOD AUROC (score)", "shift ECE"], rows) + _stamp(d)


def kefan_robustness_timing(d: dict) -> str:
    rows = [[name, t["seed"], t["epochs"], f"{t['steps']:,}", f"{t['seconds']:.1f}",
             f"{t['ms_per_step']:.2f}", _met(t["reproduces_study_run"])]
            for name, t in d.get("timing", {}).items()]
    return _table(["problem", "seed", "epochs", "steps", "seconds (under the lock)", "ms / step",
                   "same selection and metric as the study run"], rows) if rows else \
        "(not timed yet)"


def kefan_robustness_headline(d: dict) -> str:
    probs = d["problems"].values()
    pre = next(iter(probs))["preset"]
    runs = [r for p in probs for r in p["runs"]]
    met = sum(bool(p["summary"].get("target_met")) for p in probs)
    full = sum(p["summary"].get("seeds", 0) >= 5 for p in probs)
    nb = [r for p in probs for r in p["compare"].get("notebook", {}).get("runs", [])]
    nbs = (f" (`notebook`: {sum(r['exact_support'] for r in nb)} of {len(nb)})" if nb else "")
    return (f"Ke & Fan selection over {len(probs)} problem types: preset `{pre}` keeps exactly "
            f"the true inputs in {sum(r['exact_support'] for r in runs)} of {len(runs)} runs"
            f"{nbs}; targets met on {met} of the {full} types with 5 seeds run of {len(probs)}"
            " ([details](docs/kefan.md"
            "#sparse-selection-across-problems-and-seeds-preset-robust))")


def _cpu(sides: dict, side: str) -> float:
    """Loop / ``side`` on the median process CPU seconds (robust to other jobs' load)."""
    med = {k: statistics.median(c["cpu_s"] for c in v["calls"]) for k, v in sides.items()}
    return med["loop"] / med[side]


def mc_batched(d: dict) -> str:
    rows = []
    for r in d.get("batched", []):
        sd, a, t = r["sides"], r["adaptive"], r["num_samples"]
        rows.append([f"`{r['model']}`", r.get("device_name", "cpu"), f"{r['num_inputs']:,}", t,
                     f"{r['plain_pass_s']:.2f}", f"{sd['loop']['median_s']:.1f}",
                     f"{sd['batched']['median_s']:.1f} (K = {r['draws_per_pass']})",
                     f"{sd['auto']['median_s']:.1f} (K = {r['auto_draws_per_pass']})",
                     f"{r['speedup_batched']:.2f}x ({_cpu(sd, 'batched'):.2f}x)",
                     f"{r['speedup_auto']:.2f}x ({_cpu(sd, 'auto'):.2f}x)",
                     f"{r['plain_passes_per_draw']['auto']:.2f}",
                     f"{sd['loop']['calls'][0]['peak_growth_mb']:.0f} / "
                     f"{sd['batched']['calls'][0]['peak_growth_mb']:.0f}",
                     f"{max(r['max_abs_diff_vs_loop'].values()):.1e}",
                     f"{a['num_samples']}: {a['nll']:.4f} vs {a[f'nll_T{t}']:.4f} "
                     f"({100 * a['nll_rel_diff']:.2f}%)"])
    p = d.get("batched_provenance", {})
    out = _table(["model", "device", "inputs", "T", "plain pass (s)", "loop (s)", "batched (s)",
                  "auto (s)", "batched speed-up (CPU time)", "auto speed-up (CPU time)",
                  "auto: plain passes / draw",
                  "peak MB loop / batched", "max abs diff vs loop",
                  "adaptive: T, NLL vs fixed T (diff)"], rows) + _stamp({"provenance": p})
    q = d.get("quickstart_eval")
    if q:
        f, au = q["sides"]["fixed_T100"], q["sides"]["auto"]
        out += ("\n\n" + _table(
            ["quickstart evaluation", "MC draws", "seconds (median)", "NLL", "OOD AUROC (MI)"],
            [["fixed T = 100 (before)", f["calls"][0]["num_samples"], f"{f['median_s']:.1f}",
              f"{f['calls'][0]['nll']:.4f}", f"{f['calls'][0]['ood_auroc_mi']:.3f}"],
             ["`--samples auto` (now the default)", au["calls"][0]["num_samples"],
              f"{au['median_s']:.1f}", f"{au['calls'][0]['nll']:.4f}",
              f"{au['calls'][0]['ood_auroc_mi']:.3f}"]]))
    return out


RENDERERS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "mc_batched": ("mc_predict", mc_batched),
    "layer_overhead": ("layer_overhead", layer_overhead),
    "train_mnist": ("train_mnist", train_mnist),
    "train_cifar": ("train_cifar", train_cifar),
    "train_ddp": ("train_ddp", train_ddp),
    "data_pipeline": ("data_pipeline", data_pipeline),
    "scaling": ("scaling", scaling),
    "scaling_fit": ("scaling", scaling_fit),
    "scaling_extrapolation": ("scaling", scaling_extrapolation),
    "peers": ("peers", peers),
    "ivon_steps": ("ivon_steps", ivon_steps),
    "ivon_steps_1thread": ("ivon_steps_1thread", ivon_steps),
    "ivon_prune": ("prune_accuracy", ivon_prune),
    "kefan_robustness": ("kefan_robustness", kefan_robustness),
    "kefan_robustness_heldout": ("kefan_robustness_heldout", kefan_robustness),
    "kefan_robustness_heldout2": ("kefan_robustness_heldout2", kefan_robustness),
    "kefan_robustness_heldout3": ("kefan_robustness_heldout3", kefan_robustness),
    "kefan_robustness_timing": ("kefan_robustness", kefan_robustness_timing),
    "bnn_recipe": ("bnn_recipe_mnist", bnn_recipe),
    "bnn_recipe_fc": ("bnn_recipe_mnist_fc", bnn_recipe),
    "kefan_robustness_headline": ("kefan_robustness", kefan_robustness_headline),
    "uncertainty_study_mnist": ("uncertainty_study_mnist", uncertainty_study),
    "uncertainty_study_mnist_fc": ("uncertainty_study_mnist", uncertainty_study_fc),
    "uncertainty_study_mnist_targets": ("uncertainty_study_mnist", uncertainty_study_targets),
    "uncertainty_study_cifar10": ("uncertainty_study_cifar10", uncertainty_study),
    "uncertainty_study_cifar10_targets": ("uncertainty_study_cifar10",
                                          uncertainty_study_targets),
}


def render(text: str) -> tuple[str, list[str]]:
    """``text`` with every known table regenerated; also the names that were updated."""
    done = []
    for name, (source, fn) in RENDERERS.items():
        pat = re.compile(rf"(<!-- bench:{name} -->\n).*?(\n<!-- /bench:{name} -->)", re.S)
        data = _load(source)
        if data is None or not pat.search(text):
            continue
        table = fn(data)
        text = pat.sub(lambda m, t=table: m.group(1) + t + m.group(2), text)
        done.append(name)
    return text, done


def summary(text: str, page: str | None = None) -> str:
    """Only the tables of one page, each under its heading (for a results folder not the repo's)."""
    rendered, done = render(text)
    parts = []
    for name in done:
        m = re.search(rf"<!-- bench:{name} -->\n(.*?)\n<!-- /bench:{name} -->", rendered, re.S)
        heads = re.findall(r"^#+ .*$", rendered[: m.start()], re.M)
        where = ", ".join(([page] if page else []) + ([heads[-1].lstrip("# ")] if heads else []))
        parts.append(f"## {name}" + (f" ({where})" if where else "") + "\n\n" + m.group(1) + "\n")
    return "\n".join(parts)


def summaries(files: list[Path]) -> str:
    """The tables of every page in ``files``, in page order, as one Markdown file."""
    parts = [f"# Benchmark tables from {RES}\n"]
    for path in files:
        part = summary(path.read_text(), str(path.relative_to(ROOT)))
        if part:
            parts.append(part)
    return "\n".join(parts)


def main() -> None:
    global RES
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true",
                   help="only check that README.md and docs/*.md are up to date")
    p.add_argument("--results", type=Path, default=RES, help="folder of the JSON results")
    p.add_argument("--summary", type=Path,
                   help="write the tables to this file instead of rewriting the pages")
    a = p.parse_args()
    RES = a.results
    files = pages()
    if a.summary:
        a.summary.parent.mkdir(parents=True, exist_ok=True)
        a.summary.write_text(summaries(files))
        print("wrote", a.summary)
        return
    stale, regenerated = [], []
    for path in files:
        old = path.read_text()
        new, done = render(old)
        regenerated += [f"{name} ({path.relative_to(ROOT)})" for name in done]
        if new != old:
            stale.append(path)
            if not a.check:
                path.write_text(new)
    if a.check:
        for path in stale:
            print("out of date:", path.relative_to(ROOT), file=sys.stderr)
        sys.exit(1 if stale else 0)
    print("regenerated:", ", ".join(regenerated) or "nothing")


if __name__ == "__main__":
    main()
