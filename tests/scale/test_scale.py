"""`bayescale scale`: a tiny strong-scaling study on 1 and 2 gloo workers, and batch scripts."""

import csv
import subprocess
import sys

import pytest

from bayescale.scale.study import parse_workers, write_batch_scripts

TINY = ["model.name=BNN_FC_flip", "data.name=synthetic", "data.size=256", "train.steps=8",
        "train.batch_size=16", "eval.samples=1", "eval.every_epochs=0",
        "train.checkpoint_every=1000"]


@pytest.mark.slow
def test_scale_study_on_one_and_two_workers(tmp_path):
    out = tmp_path / "study"
    res = subprocess.run([sys.executable, "-m", "bayescale", "scale", "quickstart", *TINY,
                          "--workers", "1,2", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader((out / "scaling.csv").open()))
    assert sorted((r["label"], r["workers"]) for r in rows) == [
        ("BNN", "1"), ("BNN", "2"), ("CNN", "1"), ("CNN", "2")]
    for r in rows:
        # strong scaling: the 8-step budget is split over the workers
        assert int(r["steps_per_worker"]) == 8 // int(r["workers"])
        if r["workers"] == "1":
            assert float(r["speedup"]) == pytest.approx(1.0)
        else:
            s = float(r["speedup"])
            assert s == pytest.approx(2 * float(r["efficiency"]))
            one = next(x for x in rows if x["label"] == r["label"] and x["workers"] == "1")
            assert s == pytest.approx(float(one["time_to_train_s"]) / float(r["time_to_train_s"]))
            assert float(r["allreduce_s"]) > 0
    for fig in ("time_to_train.png", "speedup.png"):
        assert (out / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the CNN twin really is deterministic: no Bayesian parameters in its weights
    import torch

    state = torch.load(out / "runs" / "CNN-w1" / "model.pt", weights_only=True)
    assert not any(k.endswith("_rho") for k in state)
    # collecting again reproduces the table
    again = subprocess.run([sys.executable, "-m", "bayescale", "scale", "--collect", str(out)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and list(csv.DictReader((out / "scaling.csv").open())) == rows


def test_batch_scripts(tmp_path):
    paths = write_batch_scripts("mnist_bnn_conv_flip", [2, 8], tmp_path, "strong",
                                ["train.epochs=1"], cores_per_node=32)
    names = sorted(p.name for p in paths)
    assert names == sorted(["BNN-n2.sbatch", "BNN-n8.sbatch", "CNN-n2.sbatch", "CNN-n8.sbatch",
                            "BNN-n2.pbs", "BNN-n8.pbs", "CNN-n2.pbs", "CNN-n8.pbs",
                            "submit_all.sh"])
    sb = (tmp_path / "batch" / "CNN-n8.sbatch").read_text()
    assert "#SBATCH --nodes=8" in sb and "model.bayesian=false" in sb
    assert "output.name=CNN-w8" in sb and "srun python -m bayescale train" in sb
    pbs = (tmp_path / "batch" / "BNN-n2.pbs").read_text()
    assert "#PBS -l select=2:ncpus=32" in pbs and "aprun -n 2 -N 1 -d 32" in pbs
    assert "model.bayesian=false" not in pbs
    for p in paths:
        assert subprocess.run(["bash", "-n", str(p)]).returncode == 0  # valid shell syntax


def test_bad_worker_lists():
    assert parse_workers("1,2,4") == [1, 2, 4]
    for bad in ("", "0,1", "2,1", "a"):
        with pytest.raises(ValueError, match="workers"):
            parse_workers(bad)
