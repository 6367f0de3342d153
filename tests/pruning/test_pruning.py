"""Pruning: scores, masks, clean/bprune modes, BPrune counting, persistence, table, errors."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayescale
from bayescale.nn.layers import BayesianLayer
from bayescale.pruning import bprune as P


def _mlp(estimator: str = "flipout", dtype=torch.float32) -> nn.Module:
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).to(dtype)
    return bayescale.bayesianize(net, estimator=estimator)


def _cnn() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 5 * 5, 3))
    return bayescale.bayesianize(net)


def test_snr_scores_match_closed_form():
    model = _cnn()
    scores = P.snr_scores(model)
    assert list(scores) == ["0", "3"]
    for name, layer in P.prunable_layers(model).items():
        ref = layer.weight_mu.abs() / torch.log1p(torch.exp(layer.weight_rho))
        torch.testing.assert_close(scores[name], ref.detach(), rtol=1e-6, atol=0)
    mags = P.magnitude_scores(model)
    torch.testing.assert_close(mags["0"], model[0].weight_mu.detach().abs())


@pytest.mark.parametrize("s", [0.0, 0.1, 0.37, 0.5, 0.8, 0.9, 0.999])
def test_sparsity_prunes_exactly_floor_sN_global_and_per_layer(s):
    model = _cnn()
    scores = P.snr_scores(model)
    scores["3"][:, :10] = 0.5  # ties must not change the count
    n_total = sum(v.numel() for v in scores.values())
    g = P.masks_from_scores(scores, sparsity=s, scope="global")
    assert sum(int((~m).sum()) for m in g.values()) == math.floor(s * n_total)
    # global: every pruned score <= every kept score (one ranking across layers)
    pruned = torch.cat([scores[n][~m] for n, m in g.items()])
    kept = torch.cat([scores[n][m] for n, m in g.items()])
    if pruned.numel() and kept.numel():
        assert pruned.max() <= kept.min()
    per = P.masks_from_scores(scores, sparsity=s, scope="layer")
    for name, m in per.items():
        assert int((~m).sum()) == math.floor(s * m.numel())
        if (~m).any() and m.any():
            assert scores[name][~m].max() <= scores[name][m].min()
    # applied in clean mode, the model has exactly that many zero weights
    P.apply_masks(model, per)
    zeros = sum(int((P._effective_mu(l) == 0).sum()) for l in P.prunable_layers(model).values())
    assert zeros == sum(math.floor(s * m.numel()) for m in per.values())


def test_threshold_is_one_absolute_value_for_every_layer():
    model = _cnn()
    scores = P.snr_scores(model)
    tau = float(torch.cat([v.reshape(-1) for v in scores.values()]).median())
    masks = P.masks_from_scores(scores, threshold=tau)
    for name, s in scores.items():  # naive loop reference: pruned iff SNR <= tau
        ref = torch.tensor([float(v) > tau for v in s.reshape(-1)]).view(s.shape)
        assert torch.equal(masks[name], ref)
    # threshold 0 is BPrune's inference mode: nothing pruned unless SNR is exactly 0
    scores["0"].view(-1)[:3] = 0.0
    zero = P.masks_from_scores(scores, threshold=0.0)
    assert int((~zero["0"]).sum()) == 3 and zero["3"].all()


def test_bprune_mode_sigma_ln2_and_percent_pruned_counting():
    model = _mlp()
    n = [l.weight_mu.numel() for l in P.prunable_layers(model).values()]  # 48, 24
    masks = {"0": torch.ones(8, 6, dtype=torch.bool), "2": torch.ones(3, 8, dtype=torch.bool)}
    masks["0"][:, :2] = False  # 16 of 48
    masks["2"][0, :5] = False  # 5 of 24
    before = P.bprune_nonzeros(model)
    assert before == {"0": 2 * n[0], "2": 2 * n[1]}  # mu and sigma per weight
    P.apply_masks(model, masks, mode="bprune")
    for name, layer in P.prunable_layers(model).items():
        m = masks[name]
        assert (layer.weight_mu[~m] == 0).all() and (layer.weight_rho[~m] == 0).all()
        torch.testing.assert_close(layer.weight_sigma[~m],
                                   torch.full(((~m).sum(),), math.log(2.0)))
        assert not layer._masked  # bprune writes parameters, no mask
    after = P.bprune_nonzeros(model)
    assert after == {"0": 2 * (48 - 16), "2": 2 * (24 - 5)}
    assert P.percent_pruned(before, after) == pytest.approx(100 * 21 / 72)
    assert P.pruned_fraction(model) == pytest.approx(21 / 72)
    # pruned weights are N(0, ln2^2) noise sources: the mean forward ignores them
    x = torch.randn(5, 6)
    with bayescale.mean_weights(model):
        out = model(x)
    h = F.relu(F.linear(x, model[0].weight_mu * masks["0"], model[0].bias))
    torch.testing.assert_close(out, F.linear(h, model[2].weight_mu, model[2].bias))


def test_prune_reports_bprune_percent_and_equivalent_threshold():
    model = _mlp()
    pruned, info = P.prune(model, sparsity=0.5, mode="clean")
    assert info["percent_pruned"] == pytest.approx(50.0)
    assert P.pruned_fraction(model) == 0.0  # the input model is untouched (copy)
    # the global sparsity's threshold, used as a BPrune threshold, prunes the same weights
    again, info2 = P.prune(model, threshold=info["threshold"])
    assert info2["percent_pruned"] == pytest.approx(50.0)
    for a, b in zip(P.get_masks(pruned).values(), P.get_masks(again).values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("estimator", bayescale.ESTIMATORS)
def test_clean_mode_removes_weights_no_noise(estimator):
    torch.set_default_dtype(torch.float64)
    try:
        layer = bayescale.BayesLinear(6, 4, estimator=estimator)
    finally:
        torch.set_default_dtype(torch.float32)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[:, 3:] = False  # inputs 3..5 are cut off
    model = nn.Sequential(layer)
    P.apply_masks(model, {"0": mask})
    x = torch.zeros(7, 6, dtype=torch.float64)
    x[:, 3:] = torch.randn(7, 3, dtype=torch.float64)
    bias = layer.bias.detach().expand(7, 4)
    # sampled: no noise from pruned weights, exactly (local: up to its 1e-8 std floor)
    tol = 1e-7 if estimator == "local" else 0.0
    torch.testing.assert_close(layer(x), bias, rtol=0, atol=tol)
    with bayescale.fixed_sample(model):
        assert torch.equal(layer(x), bias)
    x2 = torch.randn(7, 6, dtype=torch.float64)
    with bayescale.mean_weights(model):
        torch.testing.assert_close(layer(x2), F.linear(x2, layer.weight_mu * mask, layer.bias),
                                   rtol=0, atol=1e-12)
    # KL only over the kept weights (closed-form Gaussian KL against N(0, 1))
    mu, sig = layer.weight_mu[mask], layer.weight_sigma[mask]
    ref = (-torch.log(sig) + (sig**2 + mu**2) / 2 - 0.5).sum()
    torch.testing.assert_close(layer.kl(), ref)
    # gradients of pruned weights are zero (fine-tuning keeps them pruned)
    layer(x2).sum().backward()
    assert (layer.weight_mu.grad[~mask] == 0).all() and (layer.weight_rho.grad[~mask] == 0).all()


def test_masks_survive_save_and_load_into_fresh_model():
    model = _cnn()
    P.apply_masks(model, P.masks_from_scores(P.snr_scores(model), sparsity=0.7))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert state["0.weight_mask"].dtype == torch.bool
    fresh = _cnn()
    assert not fresh[0]._masked
    fresh.load_state_dict(state)
    for a, b in zip(P.get_masks(model).values(), P.get_masks(fresh).values(), strict=True):
        assert torch.equal(a, b)
    x = torch.randn(3, 2, 5, 5)
    with bayescale.mean_weights(model), bayescale.mean_weights(fresh):
        torch.testing.assert_close(model(x), fresh(x), rtol=0, atol=0)
    assert "pruned=" in repr(fresh[0])
    P.remove_masks(fresh)  # reversible: back to the unpruned posterior
    assert "0.weight_mask" not in fresh.state_dict() and P.pruned_fraction(fresh) == 0.0


def test_load_run_of_a_pruned_run(tmp_path):
    import yaml

    from bayescale.train.config import config_to_dict, load_config
    from bayescale.train.runs import build_model, load_run

    cfg = load_config(None, ["model.name=BNN_FC_flip", "data.name=synthetic"])
    model = build_model(cfg)
    pruned, _ = P.prune(model, sparsity=0.6)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    torch.save(pruned.state_dict(), tmp_path / "model.pt")
    run = load_run(tmp_path)
    assert P.pruned_fraction(run.model) == pytest.approx(0.6, abs=1e-4)


def test_bad_input_clear_errors():
    model = _mlp()
    scores = P.snr_scores(model)
    for bad in (-1.0, float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match="threshold must be"):
            P.masks_from_scores(scores, threshold=bad)
    for bad in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="sparsity must be"):
            P.masks_from_scores(scores, sparsity=bad)
    with pytest.raises(ValueError, match="exactly one"):
        P.masks_from_scores(scores, threshold=1.0, sparsity=0.5)
    with pytest.raises(ValueError, match="scope"):
        P.masks_from_scores(scores, sparsity=0.5, scope="row")
    with pytest.raises(ValueError, match="no Bayesian layers"):
        P.snr_scores(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="all 48 weights of layer '0'"):
        P.prune(model, threshold=float(scores["0"].max()))
    empty = P.get_masks(model)
    empty["2"][:] = False
    with pytest.raises(ValueError, match="all 24 weights of layer '2'"):
        P.apply_masks(model, empty, mode="bprune")
    with pytest.raises(ValueError, match="unknown mode"):
        P.apply_masks(model, P.get_masks(model), mode="soft")
    with pytest.raises(ValueError, match="lacks"):
        P.apply_masks(model, {"nope": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="bool tensor of shape"):
        model[0].set_weight_mask(torch.ones(8, 6))
    assert P.pruned_fraction(model) == 0.0  # nothing was applied by the failed calls


def test_bprune_table_rows_and_plots(tmp_path):
    from bayescale.pruning import plots as prune_plots
    from bayescale.uncertainty.metrics import mean_single_sample_accuracy

    torch.manual_seed(0)
    model = _mlp().eval()
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    rows = P.bprune_table(model, (x, y), thresholds=[0.0, 1.0], sparsities=[0.5],
                          modes=("clean", "bprune"), num_samples=8, num_passes=5)
    assert [(r["mode"], r["threshold"] if r["target_sparsity"] is None else "s") for r in rows] \
        == [("clean", 0.0), ("clean", 1.0), ("clean", "s"), ("bprune", 0.0), ("bprune", 1.0),
            ("bprune", "s")]
    assert rows[0]["percent_pruned"] == 0.0 and rows[2]["percent_pruned"] == pytest.approx(50)
    for r in rows:
        assert 0 <= r["acc_single"] <= 1 and 0 <= r["acc_mc"] <= 1
        assert r["heldout_nats"] < 0 and r["infer_time_s"] > 0 and r["num_test"] == 40
    # with sigma ~ 1e-13 every pass is the mean network: acc_single = its accuracy
    sharp = _mlp().eval()
    for layer in P.prunable_layers(sharp).values():
        layer.weight_rho.data.fill_(-30.0)
    with bayescale.mean_weights(sharp):
        probs = torch.softmax(sharp(x), -1)
    det = P.bprune_table(sharp, (x, y), thresholds=[0.0], num_samples=2, num_passes=3)[0]
    assert det["acc_single"] == pytest.approx(mean_single_sample_accuracy(probs[None], y))
    assert det["acc_mc"] == det["acc_single"]
    assert P.pruned_fraction(model) == 0.0
    csv_path = P.write_table_csv(rows, tmp_path / "bprune.csv")
    assert csv_path.read_text().splitlines()[0].startswith("mode,criterion,scope,threshold")
    p1 = prune_plots.plot_snr_distribution(P.snr_scores(model), tmp_path / "snr.png", [1.0])
    p2 = prune_plots.plot_accuracy_vs_sparsity(rows, tmp_path / "acc.png")
    assert p1.stat().st_size > 1000 and p2.stat().st_size > 1000


def test_unmasked_layers_have_no_mask_state():
    model = _mlp()
    assert all(not l._masked for l in model.modules() if isinstance(l, BayesianLayer))
    assert not any(k.endswith("weight_mask") for k in model.state_dict())


def test_cli_prune_writes_table_plots_and_loadable_pruned_model(tmp_path, capsys):
    import yaml

    from bayescale.cli import main
    from bayescale.train.config import config_to_dict, load_config
    from bayescale.train.runs import build_model, load_run

    cfg = load_config(None, ["model.name=BNN_FC_flip", "data.name=synthetic", "data.size=64"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    torch.save(build_model(cfg).state_dict(), tmp_path / "model.pt")
    before = (tmp_path / "model.pt").read_bytes()
    args = ["prune", str(tmp_path), "--sparsity", "0.5", "--mode", "clean", "--samples", "3",
            "--passes", "2", "--num-test", "20", "--save"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "50.00" in out and "model_pruned.pt" in out
    rows = (tmp_path / "prune" / "bprune.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("clean,snr,global,0.0,")  # baseline first
    assert (tmp_path / "prune" / "snr.png").is_file()
    assert (tmp_path / "prune" / "accuracy_vs_pruned.png").is_file()
    assert (tmp_path / "model.pt").read_bytes() == before  # never overwritten
    run = load_run(tmp_path / "prune" / "model_pruned.pt")
    assert P.pruned_fraction(run.model) == pytest.approx(0.5, abs=1e-4)
    assert main(["prune", str(tmp_path)]) == 2  # nothing asked: a usage error
    assert "--threshold" in capsys.readouterr().err
    assert main(["prune", str(tmp_path), "--threshold", "-1", "--no-plots"]) == 1
    assert "threshold must be" in capsys.readouterr().err


def test_finetune_keeps_pruned_weights_removed_and_lowers_the_loss():
    from bayescale.nn.elbo import elbo_loss

    model = _mlp()
    pruned, _ = P.prune(model, sparsity=0.6)
    masks = P.get_masks(pruned)
    mu_before = {n: l.weight_mu.detach().clone() for n, l in P.prunable_layers(pruned).items()}
    x = torch.randn(256, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    with bayescale.mean_weights(pruned):
        before = float(elbo_loss(pruned(x), y, pruned, 256))
    P.finetune(pruned, x, y, epochs=5, batch_size=32, lr=1e-2)
    with bayescale.mean_weights(pruned):
        assert float(elbo_loss(pruned(x), y, pruned, 256)) < before
    for name, layer in P.prunable_layers(pruned).items():
        assert torch.equal(layer.weight_mask, masks[name])
        assert torch.equal(layer.weight_mu[~masks[name]], mu_before[name][~masks[name]])
    assert not pruned.training
