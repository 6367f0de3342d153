"""bayescale report, the plots (from saved data only) and the quickstart pipeline, on a 4-step run
of generated data."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bayescale.cli import main
from bayescale.evaluate import evaluate_run, load_predictions
from bayescale.quickstart import run_pipeline
from bayescale.train import runs
from bayescale.train.engine import train
from bayescale.uncertainty import plots as plots
from bayescale.uncertainty.report import write_report

pytest.importorskip("matplotlib")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    cfg = {"model": {"name": "BNN_FC_flip"}, "data": {"name": "synthetic", "size": 256},
           "train": {"steps": 4, "batch_size": 32, "progress": False, "posterior_every": 2},
           "eval": {"samples": 2}, "output": {"dir": str(out), "name": "r",
                                              "tensorboard": False}}
    run_dir = Path(train(cfg)["run_dir"])
    g = torch.Generator().manual_seed(1)
    np.save(out / "ood.npy", (0.3 * torch.randn(40, 1, 28, 28, generator=g)).numpy())
    evaluate_run(run_dir, 6, ood=str(out / "ood.npy"), progress=False)
    return run_dir


@pytest.fixture
def no_models(monkeypatch):
    """Any model forward or run loading fails: what passes uses saved files only."""
    def boom(*args, **kwargs):
        raise AssertionError("a model was run or loaded")

    monkeypatch.setattr(torch.nn.Module, "__call__", boom)
    monkeypatch.setattr(runs, "load_run", boom)


def test_plots_come_from_saved_data_only(run_dir, tmp_path, no_models):
    p = load_predictions(run_dir)
    made = [plots.plot_posterior_convergence(run_dir, tmp_path / "fig3.png"),
            plots.plot_true_class_draws(p, tmp_path / "fig4.png", class_names=list("abcdefghij")),
            plots.plot_reliability(run_dir, tmp_path / "rel.png"),
            plots.plot_uncertainty_histograms(p, tmp_path / "hist.png", "noise"),
            plots.plot_accuracy_coverage(p, tmp_path / "cov.png"),
            plots.plot_training_curve(run_dir, tmp_path / "train.png")]
    for path in made:
        assert path.read_bytes()[:8] == PNG and 5_000 < path.stat().st_size < 150_000, path
    snaps = plots.load_posterior_snapshots(run_dir)
    assert sorted(snaps) == [0, 2, 4] and "fc1" in snaps[4]
    with pytest.raises(ValueError, match="saved steps"):
        plots.plot_posterior_convergence(run_dir, tmp_path / "x.png", steps=[0, 3])
    with pytest.raises(FileNotFoundError, match="bayescale evaluate"):
        plots.plot_reliability(tmp_path, tmp_path / "y.png")


def test_report_is_one_self_contained_html(run_dir, tmp_path, no_models):
    run = shutil.copytree(run_dir, tmp_path / "run")
    (run / "prune").mkdir()
    (run / "prune" / "table.csv").write_text("threshold,pruned_pct,accuracy\n0.5,42.0,0.91\n")
    png = (plots.plot_accuracy_coverage(load_predictions(run), tmp_path / "p.png")).read_bytes()
    (run / "prune" / "accuracy.png").write_bytes(png)
    (run / "sparsity.csv").write_text("layer,sparsity\nfc1,0.75\n")
    path = write_report(run)
    assert path == run / "report.html" and [p.name for p in run.glob("report*")] == ["report.html"]
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    images = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(images) >= 7 and all(s.startswith("data:image/png;base64,") for s in images)
    for src in images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page  # prune figure
    assert "http" not in page and "<script" not in page and "<link" not in page
    assert not re.search(r"(href|src)=\"(?!data:)", page)
    for text in ("Run configuration", "Reliability", "AUROC", "<td>42.0</td>", "<td>fc1</td>",
                 "<td>0.75</td>", "Posterior convergence", "mutual information"):
        assert text in page, text
    # the test accuracy shown is the one evaluate saved
    acc = (np.load(run / "eval" / "predictions.npz")["probs"].argmax(1)
           == np.load(run / "eval" / "predictions.npz")["labels"]).mean()
    assert f"<td>{acc:.4g}</td>" in page


def test_report_never_overwrites_and_reports_bad_runs(run_dir, tmp_path, capsys):
    run = shutil.copytree(run_dir, tmp_path / "run")
    shutil.rmtree(run / "eval")  # not evaluated yet (also: fewer figures to draw)
    first = write_report(run)
    assert "bayescale evaluate" in first.read_text()  # says how to add the evaluation
    assert main(["report", str(run)]) == 0
    assert (run / "report-2.html").is_file() and "report-2.html" in capsys.readouterr().out
    before = first.read_bytes()
    assert main(["report", str(run), "--out", str(first)]) == 1
    assert "never overwritten" in capsys.readouterr().err and first.read_bytes() == before
    assert main(["report", str(tmp_path / "nope")]) == 1
    assert "no run directory" in capsys.readouterr().err
    assert sorted(p.name for p in run.glob("report*")) == ["report-2.html", "report.html"]


def test_quickstart_pipeline_trains_evaluates_and_reports(tmp_path, capsys):
    res = run_pipeline(overrides=["model.name=BNN_FC_flip", "data.name=synthetic",
                                  "data.size=256", "train.steps=6", "eval.samples=2",
                                  "output.tensorboard=false"],
                       num_samples=4, out_dir=tmp_path, progress=False)
    run = Path(res["run_dir"])
    assert run.parent == tmp_path and Path(res["report"]) == run / "report.html"
    m = res["metrics"]
    assert m["num_samples"] == 4 and m["ood"]["dataset"] == "fashion-mnist-small"
    assert m["ood"]["num"] == 2000 and (run / "eval" / "metrics.json").is_file()
    assert set(res["seconds"]) == {"train", "evaluate", "report", "total"}
    out = capsys.readouterr().out
    assert "[1/3] training" in out and "[3/3] writing the report" in out
