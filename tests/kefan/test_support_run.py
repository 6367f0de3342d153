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
    # warm-up = one cycle = 3 epochs; the E-step runs from epoch 4 (0-based 3): the 2 samples
    # of the second cycle (epoch ends 5 and 6) come after it
    assert s["samples"] == 2 and s["param"] == "fc1.weight"
    freq = s["inclusion_frequency"]
    assert s["num_selected"] == sum(f >= 0.5 for f in freq)
    assert s["num_undecided"] == sum(0.1 < f < 0.9 for f in freq)
    assert res["bma_eval"]["support"]["num_selected"] == s["num_selected"]
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
