"""bayescale side by side with its peers: bayesian-torch (mean-field layers) and IVON (ivon-opt).

    pip install -c constraints.txt -e ".[peers]"     # bayesian-torch and ivon-opt, torch pinned
    python benchmarks/peers_bench.py                 # ~6 min on 2 cores

Same architectures as benchmarks/layer_overhead.py ((a) MLP, (b) conv net, (c) VGG3), same
synthetic batch, same process, A/B interleaved medians; every ratio is against the plain PyTorch
model timed in the same rounds.

* train step (batch 128, Adam; IVON, ivon-opt's and bayescale's, is its own optimizer on the plain
  model, one MC sample per step): forward + loss (+ KL) + backward + update;
* MC prediction, T samples over 1,024 inputs in batches of 1,024: bayescale ``mc_predict`` (one
  weight draw per sample, whatever the estimator), bayesian-torch's layers called T times (their
  forward draws noise anew; Flipout keeps its per-example perturbation), ivon-opt's
  ``sampled_params`` T times, bayescale's IVON through ``mc_predict(..., posterior=opt)``.

IVON side by side with ivon-opt, train steps only (``benchmarks/results/ivon_steps.json``):

    python benchmarks/peers_bench.py --kinds train_step --only 'bayescale ivon' ivon-opt \
        --rounds 12 --out benchmarks/results/ivon_steps.json

Each timed block holds the shared lock /tmp/bayescale-bench.lock.

Writes benchmarks/results/peers.json with provenance and the package versions.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import bayescale
from bayescale.scale.bench import (
    bench_lock,
    provenance,
    results_path,
    summary,
    time_interleaved,
    write_json,
)

sys.path.insert(0, str(Path(__file__).parent))
from layer_overhead import ARCHS, MALLOC_ENV, _reexec_with_malloc_env  # noqa: E402

N_TRAIN = 60000


def _peers():
    try:
        import ivon
        from bayesian_torch.models.dnn_to_bnn import dnn_to_bnn, get_kl_loss
    except ImportError as err:
        raise SystemExit(f"peers not installed ({err}); run: pip install -c constraints.txt "
                         "-e \".[peers]\"") from err
    return dnn_to_bnn, get_kl_loss, ivon


def _bt_model(build, estimator: str):
    dnn_to_bnn, _, _ = _peers()
    m = build()
    dnn_to_bnn(m, {"prior_mu": 0.0, "prior_sigma": 1.0, "posterior_mu_init": 0.0,
                   "posterior_rho_init": -3.0, "type": "Flipout" if estimator == "flipout"
                   else "Reparameterization", "moped_enable": False})
    return m


def train_steps(build, x, y) -> dict:
    _, get_kl_loss, ivon = _peers()
    fns = {}
    plain = build()
    opt_p = torch.optim.Adam(plain.parameters(), 1e-3)

    def plain_step():
        opt_p.zero_grad(set_to_none=True)
        F.cross_entropy(plain(x), y).backward()
        opt_p.step()
    fns["plain"] = plain_step
    for est in ("reparam", "flipout"):
        ours = bayescale.bayesianize(build(), estimator=est)
        opt_o = torch.optim.Adam(ours.parameters(), 1e-3)

        def our_step(m=ours, o=opt_o):
            o.zero_grad(set_to_none=True)
            bayescale.elbo_loss(m(x), y, m, N_TRAIN).backward()
            o.step()
        fns[f"bayescale {est}"] = our_step
        theirs = _bt_model(build, est)
        opt_t = torch.optim.Adam(theirs.parameters(), 1e-3)

        def their_step(m=theirs, o=opt_t):
            o.zero_grad(set_to_none=True)
            (F.cross_entropy(m(x), y) + get_kl_loss(m) / N_TRAIN).backward()
            o.step()
        fns[f"bayesian-torch {est}"] = their_step
    iv_model = build()
    iv_opt = ivon.IVON(iv_model.parameters(), lr=0.1, ess=N_TRAIN)

    def ivon_step():
        with iv_opt.sampled_params(train=True):
            iv_opt.zero_grad(set_to_none=True)
            F.cross_entropy(iv_model(x), y).backward()
        iv_opt.step()
    fns["ivon-opt"] = ivon_step
    bv_model = build()
    bv_opt = bayescale.IVON(bv_model.parameters(), lr=0.1, ess=N_TRAIN)

    def bayescale_ivon_step():
        bv_opt.zero_grad(set_to_none=True)
        with bv_opt.sampled_params(train=True):
            F.cross_entropy(bv_model(x), y).backward()
        bv_opt.step()
    fns["bayescale ivon"] = bayescale_ivon_step
    return fns


def mc_fns(build, x, samples: int) -> dict:
    _, _, ivon = _peers()
    fns = {}
    plain = build().eval()

    @torch.no_grad()
    def plain_mc():
        for _ in range(samples):
            torch.softmax(plain(x), -1)
    fns["plain"] = plain_mc
    for est in ("reparam", "flipout"):
        ours = bayescale.bayesianize(build(), estimator=est).eval()
        fns[f"bayescale {est}"] = lambda m=ours: bayescale.mc_predict(m, x, samples,
                                                                     batch_size=len(x))
        theirs = _bt_model(build, est).eval()

        @torch.no_grad()
        def their_mc(m=theirs):
            for _ in range(samples):
                torch.softmax(m(x), -1)
        fns[f"bayesian-torch {est}"] = their_mc
    iv_model = build().eval()
    iv_opt = ivon.IVON(iv_model.parameters(), lr=0.1, ess=N_TRAIN)

    @torch.no_grad()
    def ivon_mc():
        for _ in range(samples):
            with iv_opt.sampled_params():
                torch.softmax(iv_model(x), -1)
    fns["ivon-opt"] = ivon_mc
    bv_model = build().eval()
    bv_opt = bayescale.IVON(bv_model.parameters(), lr=0.1, ess=N_TRAIN)
    fns["bayescale ivon"] = lambda: bayescale.mc_predict(bv_model, x, samples, batch_size=len(x),
                                                        posterior=bv_opt)
    return fns


def _timed(fns: dict, only: list[str] | None, **kw) -> dict:
    fns = {k: v for k, v in fns.items() if only is None or k in only}
    with bench_lock():
        return time_interleaved(fns, **kw)


def main() -> None:
    _reexec_with_malloc_env()
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--samples", type=int, default=20, help="MC samples T")
    p.add_argument("--kinds", nargs="+", default=["train_step", "mc_predict"],
                   choices=["train_step", "mc_predict"], help="what to time (both)")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help="time only these entries (with 'plain', the baseline), e.g. plain "
                        "'bayescale ivon' ivon-opt")
    p.add_argument("--out", default=str(results_path("peers.json")))
    a = p.parse_args()
    if a.only is not None and "plain" not in a.only:
        a.only = ["plain", *a.only]
    _peers()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    results = {}
    for arch in a.archs:
        build, shape = ARCHS[arch]
        x, y = torch.randn(128, *shape), torch.randint(0, 10, (128,))
        results[arch] = {}
        if "train_step" in a.kinds:
            t = _timed(train_steps(build, x, y), a.only, warmup=3, rounds=a.rounds,
                       steps_per_round=5)
            base_t = summary(t["plain"])["median_s"]
            results[arch]["train_step"] = {
                k: {"median_s": summary(v)["median_s"], "ratio": summary(v)["median_s"] / base_t}
                for k, v in t.items()}
        if "mc_predict" in a.kinds:
            xm = torch.randn(1024, *shape)
            m = _timed(mc_fns(build, xm, a.samples), a.only, warmup=1,
                       rounds=max(3, a.rounds // 2), steps_per_round=1)
            base_m = summary(m["plain"])["median_s"]
            results[arch]["mc_predict"] = {
                k: {"median_s": summary(v)["median_s"], "ratio": summary(v)["median_s"] / base_m}
                for k, v in m.items()}
        for kind in results[arch]:
            print(arch, kind, {k: round(v["ratio"], 2) for k, v in results[arch][kind].items()},
                  flush=True)
    versions = {pkg: md.version(pkg) for pkg in ("bayesian-torch", "ivon-opt")}
    cfg = {**vars(a), "versions": versions, "malloc_env": MALLOC_ENV, "train_batch": 128,
           "mc_inputs": 1024}
    print("wrote", write_json(a.out, {"benchmark": "peers", "provenance": provenance(cfg),
                                      "results": results}))


if __name__ == "__main__":
    main()
