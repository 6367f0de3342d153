"""A `bayescale train` run with the default Ke & Fan preset records how stable its selected
support was (RUN/support.json) and the HTML report shows it, a failing one marked UNSTABLE."""

import csv
import json

import torch

from bayescale.kefan.stability import support_report
from bayescale.train.config import load_config
from bayescale.train.engine import train
from bayescale.uncertainty.report import write_report

RUN = ["data.name=synthetic", "data.size=400", "train.batch_size=32", "train.progress=false",
       "train.threads=1", "train.log_every=5", "optim.name=sghmc", "optim.lr=0.05",
       "sghmc.cycles=2", "sghmc.samples_per_cycle=2", "train.epochs=6"]


def test_default_preset_run_writes_support_and_report_shows_it(tmp_path):
    cfg = load_config("mnist_cnn_fc", [*RUN, f"output.dir={tmp_path}", "output.name=a"])
    assert cfg.sghmc.preset == "robust"
    res = train(cfg)
    run = tmp_path / "a"
    s = json.loads((run / "support.json").read_text())
    # warm-up = one cycle (warm_up 3: the E-step runs from 0-based epoch 4): the 2 samples
    # of the second cycle (epoch ends 5 and 6) come after it
    assert s["samples"] == 2 and s["param"] == "fc1.weight"
    freq = s["inclusion_frequency"]
    assert s["num_selected"] == sum(f >= 0.5 for f in freq)
    assert s["num_undecided"] == sum(0.1 < f < 0.9 for f in freq)
    assert res["bma_eval"]["support"]["num_selected"] == s["num_selected"]
    # the warm-up verdict reads the epochs' mean training losses that sparsity.csv records
    with open(run / "sparsity.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["train_loss"] == "" and all(float(r["train_loss"]) > 0 for r in rows[1:])
    # warm_up = 3: epochs 0..3 (0-based) run dense, the E-step first runs as epoch 4 starts
    warm = [float(r["train_loss"]) for r in rows[1:5]]
    assert s["warmup"]["epochs"] == 4 and s["warmup"]["end_loss"] == warm[-1]
    assert s["warmup"]["min_loss"] == min(warm)
    assert s["stable"] == (s["num_undecided"] == 0 and s["num_selected"] > 0
                           and not s["warmup"]["stalled"])
    with open(run / "train.csv") as fh:
        lrs = [float(r["lr"]) for r in csv.DictReader(fh)]
    assert 1.5 * 0.05 < max(lrs) <= 4 * 0.05 + 1e-12  # h0 x after_factor (4) at most
    html = write_report(run).read_text()
    assert "Selected support (Ke &amp; Fan samples)" in html
    # the same run with an undecided support: the report says so without any ground truth
    w = [torch.ones(3, 4), torch.ones(3, 4)]
    w[1][:, 2:] = 0.0
    bad = {"param": "fc1.weight", **support_report(w, "in", 0.5)}
    assert bad["stable"] is False and bad["undecided"] == [2, 3]
    (run / "support.json").write_text(json.dumps(bad))
    html = write_report(run, tmp_path / "bad.html").read_text()
    assert "UNSTABLE" in html and "do not trust this selection" in html
    # a warm-up that lost its fit is named as such
    stalled = {**bad, "undecided": [], "num_undecided": 0, "stable": False,
               "warmup": {"stalled": True, "end_loss": 3.456, "min_loss": 2.3, "min_epoch": 46,
                          "epochs": 300}}
    (run / "support.json").write_text(json.dumps(stalled))
    html = write_report(run, tmp_path / "stalled.html").read_text()
    assert "dense warm-up lost its fit" in html and "2.3 (46) / 3.456" in html
