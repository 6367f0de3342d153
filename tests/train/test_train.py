"""The training engine in one process: run files, exact resume, faults, CLI and flagfile."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from bayescale import cli
from bayescale.data.catalogue import make_synthetic_classification
from bayescale.train.checkpoint import CheckpointError, load_checkpoint
from bayescale.train.config import config_from_dict, config_to_dict, load_config
from bayescale.train.engine import TrainingDiverged, train
from bayescale.train.runlog import TIMING_COLUMNS
from bayescale.train.runs import build_model

FAST = ["data.name=synthetic", "data.size=400", "train.batch_size=32", "eval.samples=3",
        "train.progress=false", "train.threads=1"]


def _cfg(tmp_path, *extra: str):
    return load_config("mnist_bnn_fc_flip", [*FAST, f"output.dir={tmp_path}", *extra])


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_cli_run_writes_config_metrics_timing_checkpoint(tmp_path, capsys):
    rc = cli.main(["train", "mnist_bnn_fc_flip", *FAST, "train.steps=12", "train.log_every=1",
                   f"output.dir={tmp_path}", "output.name=run"])
    assert rc == 0
    assert "test accuracy" in capsys.readouterr().out
    run = tmp_path / "run"
    saved = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    assert saved == _cfg(tmp_path, "train.steps=12", "train.log_every=1", "output.name=run")

    timing = _rows(run / "timing.csv")
    assert tuple(timing[0]) == TIMING_COLUMNS and len(timing) == 12
    cum = 0.0
    for i, r in enumerate(timing, 1):
        bt = float(r["batch_time_s"])
        cum += bt
        assert int(r["step"]) == i and int(r["world_size"]) == 1
        assert float(r["time_to_train_s"]) == pytest.approx(cum, abs=1e-5)
        assert float(r["samples_per_s"]) == pytest.approx(32 / bt, rel=1e-3)
        assert float(r["t_end"]) >= float(r["t_start"])

    train_rows = _rows(run / "train.csv")
    assert [int(r["step"]) for r in train_rows] == list(range(1, 13))
    for r in train_rows:  # the ELBO convention: loss = NLL + beta * KL / N_train (N = 320)
        want = float(r["nll"]) + float(r["kl_weight"]) * float(r["kl"]) / 320
        assert float(r["loss"]) == pytest.approx(want, rel=1e-5)
    evals = _rows(run / "eval.csv")
    assert [int(r["step"]) for r in evals] == [10, 12]  # each epoch (10 steps) and the end
    assert all(int(r["test_count"]) == 80 for r in evals)
    assert float(evals[-1]["test_acc"]) > 0.5  # separable clusters, 10 classes

    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["step"] == 12 and ckpt["world_size"] == 1 and ckpt["num_train"] == 320
    weights = torch.load(run / "model.pt", weights_only=True)
    assert torch.equal(weights["fc1.weight_mu"], ckpt["model"]["fc1.weight_mu"])

    stats = [json.loads(ln) for ln in (run / "posterior" / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [0, 10]
    snap = torch.load(run / "posterior" / "step_0000010.pt", weights_only=True)["fc1"]
    assert snap["mu_hist"].sum() == 784 * 64 and snap["sigma_hist"].sum() == 784 * 64
    assert snap["mu_mean"] == pytest.approx(0.0, abs=0.02)  # init N(0, 0.1^2) barely moved
    init = torch.load(run / "posterior" / "step_0000000.pt", weights_only=True)["fc1"]
    # tutorial init: rho ~ N(-3, 0.1^2) -> sigma = softplus(rho) ~ softplus(-3) = 0.04859
    assert init["sigma_mean"] == pytest.approx(0.04859, abs=5e-4)
    assert init["mu_std"] == pytest.approx(0.1, abs=2e-3)


def test_resume_continues_exactly(tmp_path):
    extra = ("data.augment=true", "train.log_every=1", "schedule.name=constant")
    straight = train(_cfg(tmp_path, "train.steps=8", "output.name=a", *extra))
    first = train(_cfg(tmp_path, "train.steps=4", "output.name=b", *extra))
    assert first["steps"] == 4
    resumed = train(_cfg(tmp_path, "train.steps=8", "output.name=b", *extra),
                    resume=tmp_path / "b")
    assert resumed["steps"] == 8 and resumed["run_dir"] == straight["run_dir"].replace("/a", "/b")
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical: data order, noise, Adam state
    la = [r["loss"] for r in _rows(tmp_path / "a" / "train.csv")]
    lb = [r["loss"] for r in _rows(tmp_path / "b" / "train.csv")]
    assert la == lb and len(la) == 8
    assert len(_rows(tmp_path / "b" / "timing.csv")) == 8
    assert straight["final_eval"]["test_acc"] == resumed["final_eval"]["test_acc"]


def test_resume_rejects_other_run_and_corrupt_checkpoint(tmp_path):
    train(_cfg(tmp_path, "train.steps=3", "output.name=r"))
    path = tmp_path / "r" / "checkpoint.pt"
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="model"):
        train(_cfg(tmp_path, "train.steps=6", "model.name=CNN_FC"), resume=tmp_path / "r")
    with pytest.raises(CheckpointError, match="train.batch_size"):
        train(_cfg(tmp_path, "train.steps=6", "train.batch_size=16"), resume=tmp_path / "r")
    assert path.read_bytes() == before  # nothing overwritten
    bad = tmp_path / "bad" / "checkpoint.pt"
    bad.parent.mkdir()
    bad.write_bytes(before[: len(before) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        train(_cfg(tmp_path, "train.steps=6"), resume=bad)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(_cfg(tmp_path, "train.steps=6"), resume=tmp_path / "nothing")


def test_resume_of_a_checkpoint_from_before_a_new_config_key(tmp_path):
    """A key added to the config since the checkpoint was written takes its default."""
    from bayescale.train.checkpoint import save_checkpoint
    train(_cfg(tmp_path, "train.steps=3", "output.name=old"))
    path = tmp_path / "old" / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    del ckpt["config"]["model"]["bayesian_layers"], ckpt["sha256"]
    save_checkpoint(path, ckpt)
    train(_cfg(tmp_path, "train.steps=6"), resume=tmp_path / "old")
    assert load_checkpoint(path)["step"] == 6
    with pytest.raises(CheckpointError, match="bayesian_layers"):  # a real change still refused
        train(_cfg(tmp_path, "train.steps=9", "model.bayesian_layers=all"), resume=tmp_path / "old")


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, "train.steps=30", "optim.name=sgd", "optim.lr=1e8",
               "train.checkpoint_every=1", "output.name=nan")
    with pytest.raises(TrainingDiverged, match="NaN/Inf at step .* last good checkpoint"):
        train(cfg)
    ckpt = load_checkpoint(tmp_path / "nan" / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (tmp_path / "nan" / "model.pt").exists()


def test_run_directories_are_never_overwritten(tmp_path):
    r1 = train(_cfg(tmp_path, "train.steps=2"))
    r2 = train(_cfg(tmp_path, "train.steps=2"))
    assert r1["run_dir"] != r2["run_dir"] and r2["run_dir"].endswith("-2")
    with pytest.raises(FileExistsError, match="--resume"):
        train(_cfg(tmp_path, "train.steps=2", "output.name=BNN_FC_flip-synthetic"))


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    rc = cli.main(["train", "mnist_bnn_fc_flip", f"data.root={tmp_path / 'nowhere'}",
                   f"output.dir={tmp_path}", "train.progress=false"])
    err = capsys.readouterr().err
    assert rc == 1 and "nowhere" in err and err.count("\n") == 1, err
    assert cli.main(["train", "mnist_bnn_fc_flip", "optim.lr=abc"]) == 2
    assert "expected a number" in capsys.readouterr().err
    digits_like = make_synthetic_classification(100, shape=(1, 8, 8))
    with pytest.raises(ValueError, match=r"takes inputs \(1, 28, 28\)"):
        train(_cfg(tmp_path, "train.steps=2"), data=digits_like)
    with pytest.raises(ValueError, match="regression"):
        train(_cfg(tmp_path, "data.name=heteroscedastic-1d", "train.steps=2"))


def test_bf16_autocast_and_sgd_cosine_warmup(tmp_path):
    res = train(_cfg(tmp_path, "train.steps=40", "train.precision=bf16", "optim.name=sgd",
                     "optim.lr=0.05", "schedule.name=cosine", "schedule.warmup_steps=5",
                     "train.log_every=1", "optim.clip_grad_norm=5.0", "output.name=bf"))
    assert res["final_eval"]["test_acc"] > 0.5
    rows = _rows(tmp_path / "bf" / "train.csv")
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[:5] == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])
    assert lrs[-1] < 0.002  # cosine to 0 at the end


def test_seed_flagfile_runs_through_the_cli(tmp_path, capsys):
    flags = tmp_path / "config.cfg"
    flags.write_text("--model_type=BNN\n--bnnConv=BNN_FC_flip\n--batch_size=32\n"
                     "--UseEpoch=False\n--iteration=3\n--print_step=1\n")
    assert cli.main(["train", "--flagfile", str(flags), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["name"] == "BNN_FC_flip" and printed["train"]["steps"] == 3
    rc = cli.main(["train", "--flagfile", str(flags), *FAST, f"output.dir={tmp_path}",
                   "output.name=seed"])
    assert rc == 0
    cfg = yaml.safe_load((tmp_path / "seed" / "config.yaml").read_text())
    assert cfg == config_to_dict(config_from_dict(cfg))
    assert len(_rows(tmp_path / "seed" / "timing.csv")) == 3
    # resume from the run directory alone (config read back from config.yaml)
    assert cli.main(["train", "--resume", str(tmp_path / "seed"), "train.steps=5"]) == 0
    assert len(_rows(tmp_path / "seed" / "timing.csv")) == 5


def test_main_job_config_trains_a_seed_model_on_shipped_mnist(tmp_path):
    """The README's first command, shortened: BNN_conv_flip on the shipped real MNIST subset."""
    cfg = load_config("quickstart", ["train.steps=60", "eval.samples=2", "data.limit_test=500",
                                     "train.progress=false", f"output.dir={tmp_path}"])
    assert cfg.model.name == "BNN_conv_flip" and cfg.data.name == "mnist-small"
    res = train(cfg)
    assert res["data"] == "mnist-small" and res["steps"] == 60
    assert res["final_eval"]["test_count"] == 500
    assert res["final_eval"]["test_acc"] > 0.6  # 60 steps of 64 real digits; chance is 0.1


@pytest.mark.slow
def test_compile_option_matches_eager_training(tmp_path, monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)  # eager's RNG stream
    common = ["train.steps=3", "train.log_every=1", "model.estimator=reparam"]
    train(_cfg(tmp_path, *common, "output.name=eager"))
    train(_cfg(tmp_path, *common, "train.compile=true", "output.name=compiled"))
    eager = [float(r["loss"]) for r in _rows(tmp_path / "eager" / "train.csv")]
    compiled = [float(r["loss"]) for r in _rows(tmp_path / "compiled" / "train.csv")]
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_mc_samples_averages_the_elbo_over_draws(tmp_path, monkeypatch):
    """train.mc_samples = K: K forward/backward passes per step, each loss / K, one update."""
    import bayescale.train.engine as engine

    def one_step(k: int):
        models, grads = [], []

        def build(*args, **kw):  # the engine's model, with a hook on fc1's mu per backward pass
            model = build_model(*args, **kw)
            model.fc1.weight_mu.register_hook(lambda g: grads.append(g.detach().clone()))
            models.append((model, model.fc1.weight_mu.detach().clone()))
            return model

        monkeypatch.setattr(engine, "build_model", build)
        train(_cfg(tmp_path, "train.steps=1", "optim.name=sgd", "optim.momentum=0",
                   "optim.lr=0.1", f"train.mc_samples={k}", f"output.name=k{k}"))
        (model, init), = models
        return init, model.fc1.weight_mu.detach(), grads

    init1, _, g1 = one_step(1)
    init2, final2, g2 = one_step(2)
    assert torch.equal(init1, init2) and len(g1) == 1 and len(g2) == 2
    torch.testing.assert_close(final2, init2 - 0.1 * (g2[0] + g2[1]))  # one update, summed
    assert not torch.equal(g2[0], g2[1])  # each pass draws its own noise
    ratio = (g2[0].norm() / g1[0].norm()).item()
    assert 0.4 < ratio < 0.6  # each pass's loss is scaled by 1/K (K = 2)


def test_mc_samples_refused_without_anything_to_draw(tmp_path):
    with pytest.raises(ValueError, match="no Bayesian layer or dropout"):
        train(_cfg(tmp_path, "model.bayesian=false", "train.mc_samples=2", "train.steps=1"))
    with pytest.raises(Exception, match="ivon.mc_samples"):
        _cfg(tmp_path, "model.bayesian=false", "optim.name=ivon", "train.mc_samples=2")
    with pytest.raises(Exception, match="bayesian_layers must be"):
        _cfg(tmp_path, "model.bayesian_layers=first")
