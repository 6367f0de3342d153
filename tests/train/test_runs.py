"""load_run rebuilds a trained model from its run directory."""

import pytest
import torch

from bayescale.train.checkpoint import CheckpointError
from bayescale.train.engine import train
from bayescale.train.runs import load_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = {"model": {"name": "BNN_FC_flip"}, "data": {"name": "synthetic", "size": 256},
           "train": {"steps": 4, "batch_size": 32, "progress": False},
           "eval": {"samples": 2}, "output": {"dir": str(out), "name": "r"}}
    return train(cfg)["run_dir"]


def test_load_run_restores_the_trained_weights(run_dir):
    run = load_run(run_dir)
    saved = torch.load(f"{run_dir}/model.pt", weights_only=True)
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert run.config.model.name == "BNN_FC_flip" and not run.model.training
    ck = load_run(f"{run_dir}/checkpoint.pt")
    assert ck.step == 4
    for k, v in ck.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert run.data().test.x.shape[1:] == (1, 28, 28)


def test_load_run_errors(tmp_path, run_dir):
    with pytest.raises(CheckpointError, match="no run or checkpoint"):
        load_run(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="holds no model.pt"):
        load_run(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_run(bad)
