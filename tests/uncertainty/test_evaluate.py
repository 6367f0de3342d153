"""bayescale evaluate / predict and the shipped fashion-mnist-small OOD set.

A 4-step run on generated data is evaluated; every metric is recomputed here from the saved
arrays with naive loops (not with bayescale.uncertainty.metrics), predictions are checked against
decompose()
on the same weight draws, and bad inputs must fail with exit code != 0 and leave files untouched.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import importlib.util
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bayescale.cli import main
from bayescale.data import builtin as builtin_data
from bayescale.data.catalogue import load_dataset
from bayescale.data.datasets import FASHION_MNIST_CLASSES, read_idx
from bayescale.evaluate import EvaluationError, evaluate_run, load_predictions, predict_run
from bayescale.train.engine import train
from bayescale.train.runs import load_run
from bayescale.uncertainty.predict import decompose, mc_predict

REPO = Path(__file__).resolve().parents[2]
SHIPPED = Path(builtin_data.__file__).parent / "files" / "fashion-mnist-small"
T = 8


def _train(out: Path, name: str, model: str = "BNN_FC_flip", **model_kw) -> str:
    cfg = {"model": {"name": model, **model_kw}, "data": {"name": "synthetic", "size": 256},
           "train": {"steps": 4, "batch_size": 32, "progress": False, "posterior_every": 2},
           "eval": {"samples": 2}, "output": {"dir": str(out), "name": name,
                                              "tensorboard": False}}
    return train(cfg)["run_dir"]


@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> Path:
    """No-signal inputs near the origin: equidistant from every class centre (ambiguous)."""
    path = tmp_path_factory.mktemp("ood") / "shifted.npy"
    g = torch.Generator().manual_seed(1)
    np.save(path, (0.3 * torch.randn(64, 1, 28, 28, generator=g)).numpy())
    return path


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, shifted):
    run_dir = _train(tmp_path_factory.mktemp("runs"), "bnn")
    metrics = evaluate_run(run_dir, T, ood=str(shifted), num_bins=10, progress=False)
    return Path(run_dir), metrics


# ------------------------------------------------------------------------------ naive refs
def _entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(-1)


def _ece(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(c >= lo and (c < hi or (b == bins - 1 and c <= hi))) for c in conf]
        idx = np.flatnonzero(inside)
        if len(idx):
            acc = np.mean(pred[idx] == labels[idx])
            total += len(idx) / len(conf) * abs(acc - conf[idx].mean())
    return total


def _auroc(s_in: np.ndarray, s_out: np.ndarray) -> float:
    wins = sum(float(o > i) + 0.5 * float(o == i) for o in s_out for i in s_in)
    return wins / (len(s_in) * len(s_out))


# ------------------------------------------------------------------------------ evaluate
def test_metrics_recomputed_from_saved_arrays(evaluated):
    run_dir, m = evaluated
    saved = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert saved["accuracy"] == m["accuracy"] and saved["num_samples"] == T
    p = load_predictions(run_dir)
    probs, y = p["probs"].astype(np.float64), p["labels"]
    n = len(y)
    assert probs.shape == (n, 10) and n == len(load_run(run_dir).data().test)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert m["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y), abs=1e-12)
    nll = -np.mean([math.log(max(probs[i, y[i]], 1e-12)) for i in range(n)])
    assert m["nll"] == pytest.approx(nll, rel=1e-5)
    assert m["heldout_log_likelihood"] == pytest.approx(-nll, rel=1e-5)
    brier = np.mean([sum((probs[i, c] - (c == y[i])) ** 2 for c in range(10)) for i in range(n)])
    assert m["brier"] == pytest.approx(brier, rel=1e-5)
    assert m["ece"] == pytest.approx(_ece(probs, y, 10), abs=1e-6)
    assert p["sample_accuracy"].shape == (T,)
    assert m["mean_single_sample_accuracy"] == pytest.approx(p["sample_accuracy"].mean(), abs=1e-6)
    # total = H[mean p] and total = aleatoric + epistemic, per input
    np.testing.assert_allclose(p["total"], _entropy(probs), atol=1e-5)
    np.testing.assert_allclose(p["total"], p["aleatoric"] + p["epistemic"], atol=1e-5)
    assert (p["epistemic"] >= 0).all() and p["epistemic"].max() > 1e-3  # a BNN disagrees
    # one test image per class: the first of each, its true-class probability over the T draws
    idx = p["class_index"]
    assert [int(np.flatnonzero(y == c)[0]) for c in sorted(set(y.tolist()))] == idx.tolist()
    assert p["class_true_probs"].shape == (T, len(idx))
    np.testing.assert_allclose(p["class_true_probs"].mean(0), probs[idx, y[idx]], atol=1e-5)
    assert p["class_images"].shape == (len(idx), 1, 28, 28)
    # OOD metrics from the saved scores (naive pairwise AUROC)
    ood = m["ood"]
    assert ood["num"] == 64 and p["ood_total"].shape == (64,)
    assert ood["entropy"]["auroc"] == pytest.approx(_auroc(p["total"], p["ood_total"]), abs=1e-9)
    assert ood["mutual_information"]["auroc"] == pytest.approx(
        _auroc(p["epistemic"], p["ood_epistemic"]), abs=1e-9)
    assert m["mc_inference_s"] > 0 and ood["mc_inference_s"] > 0


def test_ood_auroc_is_high_on_an_obviously_shifted_set(evaluated):
    _, m = evaluated
    assert m["ood"]["entropy"]["auroc"] > 0.95
    assert m["ood"]["entropy"]["fpr95"] < 0.2


def test_evaluate_is_reproducible_and_refuses_to_overwrite_out(evaluated, tmp_path, shifted):
    run_dir, m = evaluated
    before = load_predictions(run_dir)
    out = tmp_path / "m.json"
    out.write_text("keep me")
    with pytest.raises(EvaluationError, match="already exists"):
        evaluate_run(run_dir, T, ood=str(shifted), num_bins=10, out_file=out, progress=False)
    assert out.read_text() == "keep me"
    again = evaluate_run(run_dir, T, ood=str(shifted), num_bins=10, progress=False,
                         out_file=tmp_path / "new.json")
    assert again["accuracy"] == m["accuracy"] and again["nll"] == m["nll"]
    for k, v in load_predictions(run_dir).items():
        np.testing.assert_array_equal(v, before[k])
    assert json.loads((tmp_path / "new.json").read_text())["nll"] == m["nll"]


def test_deterministic_twin_has_zero_mutual_information(tmp_path, shifted):
    run_dir = _train(tmp_path, "cnn", bayesian=False)
    m = evaluate_run(run_dir, 5, ood=str(shifted), progress=False)
    p = load_predictions(run_dir)
    assert not m["bayesian"] and m["mc_passes"] == 1
    assert np.all(p["epistemic"] == 0) and np.all(p["ood_epistemic"] == 0)
    assert np.all(p["sample_accuracy"] == p["sample_accuracy"][0])
    assert m["ood"]["mutual_information"]["auroc"] == 0.5 and "deterministic" in m["ood"]["note"]


# ------------------------------------------------------------------------------ predict
def test_predict_rows_match_decompose_on_the_same_draws(evaluated, tmp_path):
    run_dir, _ = evaluated
    x = torch.rand(13, 28, 28)  # (N, H, W): the channel is added
    np.savez(tmp_path / "in.npz", x=x.numpy())
    out = predict_run(run_dir, tmp_path / "p.csv", inputs=tmp_path / "in.npz", num_samples=6,
                      seed=3, progress=False)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 13 and [int(r["index"]) for r in rows] == list(range(13))
    model = load_run(run_dir).model  # (building it draws an init: seed after)
    torch.manual_seed(3)
    samples = mc_predict(model, x.unsqueeze(1), 6, return_samples=True)
    parts, mean = decompose(samples), samples.double().mean(0)
    for i, r in enumerate(rows):
        assert int(r["predicted"]) == int(mean[i].argmax())
        assert float(r["probability"]) == pytest.approx(float(mean[i].max()), rel=1e-5)
        for k in ("total", "aleatoric", "epistemic"):
            assert float(r[k]) == pytest.approx(float(parts[k][i]), rel=1e-5, abs=1e-7)
    assert "label" not in rows[0]


def test_predict_on_the_runs_test_set_has_labels(evaluated, tmp_path):
    run_dir, _ = evaluated
    out = tmp_path / "test.csv"
    assert main(["predict", str(run_dir), "--data", "synthetic", "--samples", "3",
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    y = load_run(run_dir).data().test.y
    assert len(rows) == len(y) and [int(r["label"]) for r in rows] == y.tolist()
    assert all(r["correct"] == str(int(r["label"] == r["predicted"])) for r in rows)


# ------------------------------------------------------------------------------ CLI, bad input
def test_cli_evaluate_writes_metrics(evaluated, tmp_path, capsys):
    run_dir = shutil.copytree(evaluated[0], tmp_path / "run")  # leave the shared run as is
    out = tmp_path / "cli.json"
    assert main(["evaluate", str(run_dir / "checkpoint.pt"), "--samples", "2", "--bins", "5",
                 "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["num_samples"] == 2 and m["num_bins"] == 5 and "ood" not in m
    assert m["weights"].endswith("checkpoint.pt") and "wrote" in capsys.readouterr().out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_inputs_fail_cleanly_and_write_nothing(evaluated, tmp_path, capsys):
    run_dir, _ = evaluated
    before = _snapshot(run_dir)
    assert main(["evaluate", str(tmp_path / "missing")]) != 0
    assert "no run or checkpoint" in capsys.readouterr().err
    assert main(["evaluate", str(run_dir), "--ood", "fashion-mnits-small"]) != 0
    err = capsys.readouterr().err
    assert "unknown data set" in err and "fashion-mnist-small" in err  # names the fix
    np.save(tmp_path / "bad.npy", np.zeros((4, 3, 5, 5), np.float32))
    assert main(["evaluate", str(run_dir), "--ood", str(tmp_path / "bad.npy")]) != 0
    assert "(N, 1, 28, 28)" in capsys.readouterr().err
    out = tmp_path / "p.csv"
    assert main(["predict", str(run_dir), "--input", str(tmp_path / "bad.npy"),
                 "--out", str(out)]) != 0
    assert "has shape (4, 3, 5, 5)" in capsys.readouterr().err and not out.exists()
    out.write_text("old")
    np.save(tmp_path / "ok.npy", np.zeros((2, 784), np.float32))
    assert main(["predict", str(run_dir), "--input", str(tmp_path / "ok.npy"),
                 "--out", str(out)]) != 0
    assert "already exists" in capsys.readouterr().err and out.read_text() == "old"
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    torch.save(argparse.Namespace(x=1), tmp_path / "code.pt")  # a pickle that is not plain data
    for bad in ("junk.npy", "code.pt"):
        with pytest.raises(EvaluationError, match="not a readable"):
            predict_run(run_dir, tmp_path / "q.csv", inputs=tmp_path / bad)
    np.savez(tmp_path / "two.npz", a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(EvaluationError, match="name the inputs 'x'"):
        predict_run(run_dir, tmp_path / "q.csv", inputs=tmp_path / "two.npz")
    assert _snapshot(run_dir) == before  # nothing in the run was touched


# ------------------------------------------------------------------------------ the OOD data
def test_fashion_mnist_small_is_real_fashion_mnist():
    split = load_dataset("fashion-mnist-small")
    assert split.name == "fashion-mnist-small" and split.classes == FASHION_MNIST_CLASSES
    x, y = split.test.x, split.test.y
    assert x.shape == (2000, 1, 28, 28) and x.dtype == torch.float32 and len(split.train) == 0
    assert torch.equal(x * 255, (x * 255).round()) and float(x.max()) == 1.0
    # Fashion-MNIST's well-known first test labels (ankle boot, pullover, trouser, ...)
    assert y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert torch.bincount(y, minlength=10).tolist() == [200, 203, 214, 190, 219, 195, 197, 200,
                                                         194, 188]
    assert float(x.mean()) == pytest.approx(0.2870, abs=5e-4)  # MNIST digits: 0.13
    for alias in ("fashion_mnist_small", "fmnist-small", " Fashion-Small "):
        assert torch.equal(load_dataset(alias).test.y, y)


def test_fashion_mnist_small_checksums_readme_and_corruption(tmp_path, monkeypatch):
    readme = (SHIPPED / "README.md").read_text()
    table = dict(re.findall(r"\| `([\w.-]+\.gz)` \| [\d,]+ \| `([0-9a-f]{32})` \|", readme))
    assert table == builtin_data.FASHION_MNIST_SMALL_MD5 and "MIT" in readme
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) < 1_100_000
    folder = tmp_path / "copy"
    shutil.copytree(SHIPPED, folder)
    monkeypatch.setattr(builtin_data, "_fashion_mnist_small_files", lambda: folder)
    name = "t10k-images-idx3-ubyte.gz"
    blob = bytearray((folder / name).read_bytes())
    blob[len(blob) // 3] ^= 0x04
    (folder / name).write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"fashion-mnist-small: .* is corrupt .*reinstall"):
        load_dataset("fashion-mnist-small")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    (folder / name).write_bytes((SHIPPED / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz is missing"):
        load_dataset("fashion-mnist-small")


def test_make_fashion_mnist_small_script_is_reproducible(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "make_fashion_mnist_small", REPO / "scripts" / "make_fashion_mnist_small.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rng = np.random.default_rng(0)
    images = np.zeros((10000, 28, 28), np.uint8)
    images[:9] = rng.integers(0, 256, (9, 28, 28))
    labels = rng.integers(0, 10, 10000).astype(np.uint8)
    for stem, arr in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        head = (0x0800 + arr.ndim).to_bytes(4, "big") + b"".join(
            d.to_bytes(4, "big") for d in arr.shape)
        (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(head + arr.tobytes(), 1))
    for out in ("a", "b"):
        script.main([str(tmp_path), "--out", str(tmp_path / out), "--n-test", "9"])
    for name in builtin_data.FASHION_MNIST_SMALL_MD5:
        blob = (tmp_path / "a" / name).read_bytes()
        assert blob == (tmp_path / "b" / name).read_bytes() and blob[4:8] == b"\0\0\0\0"
        want = images[:9] if "images" in name else labels[:9]
        np.testing.assert_array_equal(read_idx(tmp_path / "a" / name), want)
        assert hashlib.md5(blob).hexdigest() in (tmp_path / "a" / "README.md").read_text()


def test_evaluate_averages_the_samples_an_sghmc_run_collected(tmp_path):
    """A Ke & Fan run's collected samples are the draws of `evaluate` (Bayesian model averaging)."""
    import json

    from bayescale.evaluate import evaluate_run
    from bayescale.train.config import load_config
    from bayescale.train.engine import train
    from bayescale.train.sghmc import load_samples

    cfg = load_config("mnist_cnn_fc", [
        "data.name=synthetic", "data.size=300", "train.batch_size=32", "train.progress=false",
        "train.threads=1", "optim.name=sghmc", "optim.lr=0.05", "sghmc.warm_up=0",
        "sghmc.cycles=1", "sghmc.samples_per_cycle=3", "train.epochs=3",
        f"output.dir={tmp_path}", "output.name=s"])
    train(cfg)
    run = tmp_path / "s"
    members = load_samples(run)
    m = evaluate_run(run, num_samples=50, progress=False)
    assert m["collected_samples"] == len(members) == m["num_samples"] >= 2
    bma = json.loads((run / "bma.json").read_text())
    assert m["accuracy"] == pytest.approx(bma["test_acc"])
    # the saved mean probabilities are the average of the members' softmax outputs
    import numpy as np

    saved = np.load(run / "eval" / "predictions.npz")
    x = load_run_data_x(run)
    with torch.no_grad():
        ref = torch.stack([torch.softmax(s(x), -1) for s in members]).mean(0)
    np.testing.assert_allclose(saved["probs"], ref.numpy(), atol=1e-6)


def load_run_data_x(run):
    from bayescale.train.runs import load_run

    return load_run(run).data().test.x


def test_evaluate_by_default_draws_until_the_predictive_converges(evaluated, tmp_path, shifted):
    run_dir = shutil.copytree(evaluated[0], tmp_path / "run")
    m = evaluate_run(run_dir, ood=str(shifted), progress=False, max_samples=60)
    mc = m["mc"]
    assert mc["requested"] == "auto" and 20 <= m["num_samples"] <= 60 + mc["draws_per_pass"]
    assert mc["converged"] == (mc["standard_error"] <= 5e-3)
    assert mc["converged"] or m["num_samples"] == 60
    p = load_predictions(run_dir)
    assert p["sample_accuracy"].shape == (m["num_samples"],) == (int(p["num_samples"]),)
    fixed = evaluate_run(run_dir, m["num_samples"], progress=False, out_dir=tmp_path / "fixed")
    assert fixed["accuracy"] == m["accuracy"] and fixed["nll"] == pytest.approx(m["nll"])
    with pytest.raises(EvaluationError, match="'auto' or an integer"):
        evaluate_run(run_dir, "many", progress=False)
    with pytest.raises(EvaluationError, match="--max-samples"):
        evaluate_run(run_dir, progress=False, max_samples=5)
