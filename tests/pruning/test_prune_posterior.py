"""SNR pruning of a posterior over a plain network (IVON): scores by hand, exact counts, removed
weights exactly 0 in every draw, structured compaction with the same predictive distribution."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayescale
from bayescale.nn.posterior import ParamPosterior
from bayescale.pruning import posterior as PP
from bayescale.uncertainty.predict import mc_predict


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 8), nn.ReLU(),
                         nn.Linear(8, 3))


def _posterior(net: nn.Module, seed: int = 0) -> ParamPosterior:
    """A posterior with spread-out, known sigmas (what an IVON run would export)."""
    g = torch.Generator().manual_seed(seed)
    stds = [0.01 + 0.2 * torch.rand(p.shape, generator=g) for p in net.parameters()]
    return ParamPosterior.from_module(net, stds)


def _trained() -> tuple[nn.Module, ParamPosterior, torch.Tensor]:
    torch.manual_seed(0)
    net = _net()
    opt = bayescale.IVON(net.parameters(), lr=0.1, ess=64, hess_init=0.5)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    for _ in range(5):
        opt.zero_grad(set_to_none=True)
        with opt.sampled_params(train=True):
            F.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval(), opt.posterior(net), x


def test_snr_scores_are_abs_mean_over_std_of_the_layer_weights():
    net = _net()
    post = _posterior(net)
    scores = PP.posterior_snr_scores(net, post)
    assert list(scores) == ["0", "5", "7"]  # Linear/Conv weights only, by layer name
    names = dict(zip(post.names, range(len(post)), strict=True))
    for layer, s in scores.items():
        i = names[f"{layer}.weight"]
        torch.testing.assert_close(s, post.mean[i].abs() / post.std[i], rtol=0, atol=0)


def test_frozen_weight_scores_the_largest_value_and_removed_weight_scores_zero():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    post = ParamPosterior.from_module(net, 0.5)
    post.std[0][0, 0] = 0.0  # frozen: sigma 0, mean nonzero
    post.mean[0][0, 1], post.std[0][0, 1] = 0.0, 0.0  # already removed
    s = PP.posterior_snr_scores(net, post)["0"]
    assert s[0, 0] == torch.finfo(s.dtype).max and s[0, 1] == 0


def test_sparsity_prunes_exactly_floor_s_n_lowest_and_draws_of_them_are_zero():
    net = _net()
    post = _posterior(net)
    scores = PP.posterior_snr_scores(net, post)
    n = sum(s.numel() for s in scores.values())
    pruned, p2, info = PP.prune_posterior(net, post, sparsity=0.7)
    new = PP.posterior_snr_scores(pruned, p2)
    zeros = sum(int((s == 0).sum()) for s in new.values())
    assert zeros == math.floor(0.7 * n)
    # the pruned ones are the lowest: every pruned score <= every kept score (global scope)
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    keep = torch.cat([(s != 0).reshape(-1) for s in new.values()])
    assert flat[~keep].max() <= flat[keep].min()
    assert info["threshold"] == pytest.approx(float(flat[~keep].max()))
    assert info["percent_pruned"] == pytest.approx(100 * math.floor(0.7 * n) / n)
    # the original model and posterior are untouched
    assert all(torch.equal(a, b) for a, b in zip(PP.posterior_snr_scores(net, post).values(),
                                                 scores.values(), strict=True))
    # every draw of a pruned weight is exactly 0; kept weights keep m and sigma
    layer = pruned.get_submodule("5")
    i = p2.names.index("5.weight")
    mask = new["5"] != 0
    for _ in range(3):
        with p2.sample():
            assert (layer.weight[~mask] == 0).all() and (layer.weight[mask] != 0).all()
    j = post.names.index("5.weight")
    assert torch.equal(p2.mean[i][mask], post.mean[j][mask])
    assert torch.equal(p2.std[i][mask], post.std[j][mask])
    assert torch.equal(layer.weight.detach(), p2.mean[i])


def test_threshold_prunes_score_at_most_tau_per_layer_scope_by_fraction():
    net = _net()
    post = _posterior(net)
    scores = PP.posterior_snr_scores(net, post)
    tau = float(torch.cat([s.reshape(-1) for s in scores.values()]).median())
    _, p2, info = PP.prune_posterior(net, post, threshold=tau)
    n = sum(s.numel() for s in scores.values())
    expect = sum(int((s <= tau).sum()) for s in scores.values())
    assert info["percent_pruned"] == pytest.approx(100 * expect / n)
    pruned, p3, _ = PP.prune_posterior(net, post, sparsity=0.5, scope="layer")
    for name, s in PP.posterior_snr_scores(pruned, p3).items():
        assert int((s == 0).sum()) == math.floor(0.5 * scores[name].numel())


def test_unit_scores_are_group_snr_of_each_units_weights():
    net = _net()
    post = _posterior(net)
    u = PP.posterior_unit_scores(net, post)
    assert list(u) == ["0", "5"]  # the last layer is kept
    i = post.names.index("5.weight")
    m, s = post.mean[i], post.std[i]
    torch.testing.assert_close(u["5"], m.pow(2).sum(1).sqrt() / s.pow(2).sum(1).sqrt())


def test_structured_prune_compacts_and_keeps_the_predictive_distribution():
    net, post, x = _trained()
    small, sp = PP.structured_prune_posterior(net, post, x[:1], sparsity=0.5)
    assert small.get_submodule("0").out_channels == 3
    assert small.get_submodule("1").num_features == 3
    assert small.get_submodule("5").in_features == 3 * 16
    assert small.get_submodule("5").out_features == 4
    assert small.get_submodule("7").in_features == 4
    assert sp.names == post.names and all(
        m.shape == p.shape for m, p in zip(sp.std, sp.params, strict=True))
    # the masked full network (same units removed, not rebuilt) is the reference
    ref = copy.deepcopy(net)
    full = PP._rebind(net, post, ref)
    keep = PP.posterior_unit_scores(ref, full)
    keep = bayescale.pruning.unit_masks(keep, sparsity=0.5, scope="layer")
    PP.mask_posterior_units(ref, full, keep)
    with torch.no_grad():  # the means: the same function, exactly
        torch.testing.assert_close(small(x), ref(x), rtol=0, atol=1e-12)
    # the draws: the same predictive distribution (difference within 5 standard errors)
    torch.manual_seed(1)
    t = 500
    a = mc_predict(small, x[:8], t, posterior=sp, return_samples=True)
    b = mc_predict(ref, x[:8], t, posterior=full, return_samples=True)
    se = (a.var(0) / t + b.var(0) / t).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() <= 5 * se + 1e-12).all()
    assert se.max() > 1e-4  # the posterior really is random


def test_compaction_removes_only_channels_zero_in_every_draw():
    net, post, x = _trained()
    i = post.names.index("5.weight")
    # zero mean but random sigma on unit 0's weights: not removable; zero both on unit 1: removable
    post.mean[i][0] = 0.0
    for name in ("5.weight", "5.bias"):
        j = post.names.index(name)
        post.mean[j][1] = 0.0
        post.std[j][1] = 0.0
    small, sp = PP.compact_posterior(net, post, x[:1])
    assert small.get_submodule("5").out_features == 7
    torch.testing.assert_close(sp.std[sp.names.index("5.weight")][0], post.std[i][0])


def test_a_dead_unit_with_a_random_bias_is_refused():
    net, post, x = _trained()
    i = post.names.index("5.weight")
    post.mean[i][2], post.std[i][2] = 0.0, 0.0  # weights gone, bias kept: a random constant
    with pytest.raises(ValueError, match="mask_posterior_units"):
        PP.compact_posterior(net, post, x[:1])


def test_bad_inputs_name_the_fix():
    net = _net()
    post = _posterior(net)
    with pytest.raises(ValueError, match="opt.posterior"):
        PP.posterior_snr_scores(_net(), post)  # another model's posterior
    bnn = bayescale.bayesianize(_net())
    with pytest.raises(ValueError, match="bayescale.pruning.prune"):
        PP.posterior_layers(bnn, ParamPosterior.from_module(bnn, 0.1))
    with pytest.raises(ValueError, match="exactly one"):
        PP.prune_posterior(net, post)
    with pytest.raises(ValueError, match="all 24 weights"):
        PP.apply_posterior_masks(net, post, {"7": torch.zeros(3, 8, dtype=torch.bool)})


def test_prune_table_rows_count_and_score_from_the_posterior():
    net, post, x = _trained()
    y = torch.randint(0, 3, (x.shape[0],))
    rows = PP.posterior_prune_table(net, post, (x, y), [0.0], sparsities=[0.5],
                                    num_samples=4, num_passes=3)
    assert [r["percent_pruned"] for r in rows] == [0.0, pytest.approx(50.0, abs=0.5)]
    torch.manual_seed(0)
    for r in rows:
        assert 0 <= r["acc_single"] <= 1 and 0 <= r["acc_mc"] <= 1 and r["heldout_nats"] < 0
        assert r["mode"] == "clean" and r["num_test"] == 32


def test_prune_run_of_an_ivon_run_writes_the_table(tmp_path):
    from bayescale.pruning.bprune import prune_run
    from bayescale.train.config import load_config
    from bayescale.train.engine import train

    cfg = load_config(None, ["model.name=CNN_FC", "data.name=synthetic", "data.size=200",
                             "train.batch_size=16", "train.steps=4", "eval.samples=2",
                             "train.progress=false", "train.threads=1", "optim.name=ivon",
                             "optim.lr=0.05", f"output.dir={tmp_path}", "output.name=run"])
    train(cfg)
    res = prune_run(tmp_path / "run", sparsities=[0.5], modes=("clean", "bprune"),
                    num_samples=2, num_passes=2, plots=False)
    assert [r["percent_pruned"] for r in res["rows"]] == [0.0, pytest.approx(50.0, abs=0.1)]
    assert res["csv"].is_file()
    with pytest.raises(ValueError, match="clean mode"):
        prune_run(tmp_path / "run", sparsities=[0.5], save=True, plots=False)
