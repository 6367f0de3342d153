"""``bayescale train ... optim.name=ivon``: the CLI check, refusal of Bayesian layers, every
deterministic zoo model, --help, the saved posterior, exact resume, and evaluate on the run."""

from __future__ import annotations

import pytest
import torch

from bayescale import cli
from bayescale.train.checkpoint import load_checkpoint
from bayescale.train.config import IVONConfig, describe_options, load_config
from bayescale.train.engine import train
from bayescale.train.runs import load_run

FAST = ["data.name=synthetic", "data.size=200", "train.batch_size=16", "eval.samples=2",
        "train.progress=false", "train.threads=1", "optim.name=ivon", "optim.lr=0.05"]


def test_quickstart_config_with_ivon_writes_a_checkpoint_and_the_posterior(tmp_path, capsys):
    rc = cli.main(["train", "quickstart", "model.name=CNN_conv", "optim.name=ivon",
                   "train.steps=20", f"output.dir={tmp_path}", "output.name=run",
                   "train.progress=false", "data.limit_test=200"])
    assert rc == 0
    run = tmp_path / "run"
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["step"] == 20
    state = ckpt["optimizer"]["state"]
    assert state and all(s["step"] == 20 for s in state.values())
    # ess defaults to the training-set size (mnist-small: 10000 training images)
    assert ckpt["optimizer"]["param_groups"][0]["ess"] == ckpt["num_train"] == 10000
    post = torch.load(run / "posterior.pt", weights_only=True)
    weights = torch.load(run / "model.pt", weights_only=True)
    assert post["names"] == list(weights)
    assert all(torch.equal(m, weights[n]) for n, m in zip(post["names"], post["mean"],
                                                          strict=True))
    assert all((s > 0).all() for s in post["std"])


def test_bayesian_layers_are_refused_cleanly(tmp_path, capsys):
    rc = cli.main(["train", "quickstart", "model.name=BNN_conv_flip", "optim.name=ivon",
                   "train.steps=20", f"output.dir={tmp_path}", "train.progress=false"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "Bayesian layers" in err and "ivon" in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


def test_help_documents_every_ivon_option():
    text = describe_options()
    for name in IVONConfig.__dataclass_fields__:
        assert f"  ivon.{name} (" in text, name
    assert "ivon" in text.split("optim.name (", 1)[1].split("\n", 1)[0]


@pytest.mark.parametrize("model", [["model.name=CNN_conv"], ["model.name=CNN_FC"],
                                   ["model.name=CIFAR10_BNN_model", "model.bayesian=false"],
                                   ["model.name=resnet18", "model.bayesian=false"]])
def test_every_deterministic_zoo_model_trains(tmp_path, model):
    bs = ["train.batch_size=4", "data.size=40"] if "resnet18" in model[0] else []
    cfg = load_config(None, [*FAST, *model, *bs, "train.steps=3", f"output.dir={tmp_path}",
                             "output.name=r"])
    out = train(cfg)
    assert out["steps"] == 3
    run = load_run(tmp_path / "r")
    assert run.posterior is not None and len(run.posterior) == len(list(run.model.parameters()))


def test_resume_is_bit_identical_and_evaluate_draws_from_the_posterior(tmp_path):
    extra = ["model.name=CNN_FC", "train.log_every=1", "ivon.beta2=0.999", "ivon.mc_samples=2"]
    train(load_config(None, [*FAST, *extra, "train.steps=8", f"output.dir={tmp_path}",
                             "output.name=a"]))
    train(load_config(None, [*FAST, *extra, "train.steps=4", f"output.dir={tmp_path}",
                             "output.name=b"]))
    train(load_config(None, [*FAST, *extra, "train.steps=8", f"output.dir={tmp_path}",
                             "output.name=b"]), resume=tmp_path / "b")
    for name in ("model.pt", "posterior.pt"):
        a = torch.load(tmp_path / "a" / name, weights_only=True)
        b = torch.load(tmp_path / "b" / name, weights_only=True)
        flat_a = a.values() if name == "model.pt" else a["mean"] + a["std"]
        flat_b = b.values() if name == "model.pt" else b["mean"] + b["std"]
        assert all(torch.equal(x, y) for x, y in zip(flat_a, flat_b, strict=True)), name
    from bayescale.evaluate import evaluate_run

    m = evaluate_run(tmp_path / "a", num_samples=4, progress=False)
    assert m["bayesian"] and m["mc_passes"] == 4 and m["mean_epistemic"] > 0


def test_bad_ivon_settings_are_config_errors(tmp_path):
    with pytest.raises(ValueError, match="ivon.beta2"):
        load_config(None, ["ivon.beta2=1.0"])
    with pytest.raises(ValueError, match="ivon.ess"):
        load_config(None, ["ivon.ess=0"])


@pytest.mark.dist
def test_two_torchrun_workers_keep_one_posterior(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "bayescale", "train", *FAST, "model.name=CNN_FC", "train.steps=12",
           "train.checkpoint_every=2", "ivon.beta2=0.99", f"output.dir={tmp_path}",
           "output.name=run"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["world_size"] == 2
    a, b = ckpt["param_checksums"]  # checked at every checkpoint (every 2 steps): m identical
    assert a == b
    assert not torch.equal(ckpt["rng"][0]["cpu"], ckpt["rng"][1]["cpu"])  # own noise per rank
    assert ckpt["optimizer"]["state"][0]["hess"].ne(1.0).any()  # h moved
