"""Smoke test of the uncertainty study (benchmarks/uncertainty_study.py): every method trains a
few steps through the library on a slice of the shipped mnist-small and is evaluated (clean,
OOD on fashion-mnist-small, two shift levels); rows resume; the JSON has the issue's layout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import study_methods as SM  # noqa: E402
import study_report as SR  # noqa: E402
import uncertainty_study as US  # noqa: E402

from bayescale.data.catalogue import load_dataset  # noqa: E402
from bayescale.data.datasets import Dataset  # noqa: E402
from bayescale.data.split import validation_split  # noqa: E402
from bayescale.train.runs import load_run  # noqa: E402
from bayescale.uncertainty import metrics as M  # noqa: E402


def _tiny_data():
    split = load_dataset("mnist-small")
    ood = load_dataset("fashion-mnist-small").test
    sub = Dataset(split.train.x[:160], split.train.y[:160], "mnist/train", 10)
    train, val = validation_split(sub, 32, 0)
    return {"train": train, "val": val, "test_raw": Dataset(split.test.x[:48], split.test.y[:48],
                                                            "mnist/test", 10),
            "ood": Dataset(ood.x[:48], ood.y[:48], "fashion/test", 10), "prep": lambda x: x,
            "num_classes": 10, "name": "mnist"}


def test_every_method_trains_evaluates_resumes_and_writes_the_layout(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("BAYESCALE_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setattr(US, "WORK", tmp_path / "work")
    monkeypatch.setattr(US, "LOCK", tmp_path / "bench.lock")
    monkeypatch.setattr(US, "FIGURES_EVERY_ROW", False)  # drawn once at the end
    monkeypatch.setattr(US, "SHIFTS", {"mnist": [("rotation", [0, 90]), ("noise", [0.3])]})
    monkeypatch.setattr(US, "load_data", lambda dataset, root: _tiny_data())
    args = ["mnist", "--data-root", "unused", "--epochs", "1", "--seeds", "0",
            "--samples", "3", "--ensemble-size", "2", "--sghmc-cycles", "1",
            "--sghmc-per-cycle", "1", "--shift-size", "16", "--batch-size", "64"]
    US.main(args)
    log = tmp_path / "results" / "uncertainty_study_mnist.partial.jsonl"
    rows = US.read_rows(log)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert sorted((r["section"], r["method"]) for r in evals) == sorted(
        [("conv", m) for m in SM.SECTIONS["mnist"]["conv"]] + [("fc", "deterministic"),
                                                               ("fc", "bnn")])
    # the twins are trained once and shared by deterministic, temperature_scaled, deep_ensemble
    trains = [r["training"] for r in rows if r["kind"] == "train"]
    assert len(trains) == len(set(trains)) == 8
    samples = {r["method"]: r["mc_samples"] for r in evals if r["section"] == "conv"}
    assert samples == {"deterministic": 1, "temperature_scaled": 1, "bnn": 3, "mc_dropout": 3,
                       "sghmc_bma": 1, "deep_ensemble": 2, "ivon": 3}
    for r in evals:
        assert 0 <= r["accuracy"] <= 1 and r["nll"] > 0 and 0 <= r["ece"] <= 1
        assert r["shift_ece"] == pytest.approx(sum(p["ece"] for p in r["per_shift"]) / 3)
        assert r["train_s"] > 0 and r["infer_s"] > 0
    det = next(r for r in evals if r["method"] == "deterministic" and r["section"] == "conv")
    assert det["ood_auroc_mi"] is None and det["ood_auroc"] == det["ood_auroc_entropy"]
    # naive references: the ensemble is the mean of its members' softmax, the temperature-scaled
    # twin is softmax(logits / T) with T fitted on the validation split
    data = _tiny_data()
    x, y = data["test_raw"].x, data["test_raw"].y
    twins = [load_run(tmp_path / "work" / "mnist" / f"conv-deterministic-s{k}").model.eval()
             for k in (0, 1)]
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(x), -1) for m in twins]).mean(0).double()
        logits = twins[0](x).double()
    ens = next(r for r in evals if r["method"] == "deep_ensemble")
    assert ens["nll"] == pytest.approx(M.nll(mean, y), rel=1e-5)
    assert ens["ece"] == pytest.approx(M.ece(mean, y, 15), abs=1e-6)
    ts = next(r for r in evals if r["method"] == "temperature_scaled")
    t = ts["study_temperature"]
    assert ts["nll"] == pytest.approx(M.nll(torch.softmax(logits / t, -1), y), rel=1e-4)
    assert ts["accuracy"] == det["accuracy"]  # a temperature never changes the argmax
    # a restart skips everything that is done
    US.main(args)
    assert len(US.read_rows(log)) == len(rows)
    # a twin trained again after its evaluations: the methods built on it are evaluated anew,
    # nothing else; the replaced rows stay on record
    summary = tmp_path / "work" / "mnist" / "conv-deterministic-s0" / "study_train.json"
    meta = json.loads(summary.read_text())
    summary.write_text(json.dumps({**meta, "finished": "2999-01-01T00:00:00Z"}))
    US.main(args)
    again = [r for r in US.read_rows(log)[len(rows):] if r["kind"] == "eval"]
    assert sorted(r["method"] for r in again) == ["deep_ensemble", "deterministic",
                                                   "temperature_scaled"]
    assert not [r for r in US.read_rows(log)[len(rows):] if r["kind"] == "train"]
    out = json.loads((tmp_path / "results" / "uncertainty_study_mnist.json").read_text())
    assert out["provenance"]["config"]["epochs"] == 1
    assert list(out["methods"]) == SR.ORDER
    for m in out["methods"].values():
        assert set(SR.METRICS[:1] + ("nll", "brier", "ece", "aurc", "ood_auroc", "shift_ece",
                                     "train_s", "infer_s", "per_shift")) <= set(m)
    assert set(out["fc"]["methods"]) == {"deterministic", "bnn"}
    assert [e["trainings"] for e in out["methods"]["deterministic"]["earlier"]] == [
        ["conv-deterministic-s0"]]
    assert isinstance(out["methods"]["temperature_scaled"]["temperature"], float)
    assert (tmp_path / "results" / "figures" / "uncertainty_study_mnist_shift.png").is_file()


def test_targets_read_the_ivon_row_against_the_twin():
    twin = {"accuracy": 0.99, "nll": 0.05, "ece": 0.010, "shift_ece": 0.40, "train_s": 100.0,
            "ood_auroc": 0.95}
    good = {"accuracy": 0.9851, "nll": 0.049, "ece": 0.009, "shift_ece": 0.39, "train_s": 130.0,
            "ood_auroc": 0.95}
    out = SR.targets("mnist", {"deterministic": twin, "ivon": good}, None)
    ivon = {k: v for k, v in out.items() if k.startswith("ivon")}
    assert len(ivon) == 5 and all(ivon.values())
    bad = {**good, "accuracy": 0.9849, "train_s": 130.1, "nll": 0.0501}
    out = SR.targets("cifar10", {"deterministic": twin, "ivon": bad}, None)
    assert not out["ivon accuracy >= twin - 0.5 pt"] and not out["ivon train_s <= 1.3 x twin"]
    assert not out["ivon nll <= twin"] and out["ivon ece <= twin"]
    assert "ivon nll <= twin" not in SR.targets("mnist", {"ivon": good}, None)


def test_the_tables_count_the_study_methods():
    import tables

    for dataset, sections in SM.SECTIONS.items():
        assert set(next(iter(sections.values()))) == set(tables.STUDY_METHODS), dataset


def test_plan_runs_three_seeds_on_mnist_and_one_on_cifar10():
    mnist = US.plan("mnist", ["deterministic", "bnn", "ivon"], None)
    assert sorted(s for sec, m, s in mnist if (sec, m) == ("conv", "deterministic")) == [0, 1, 2]
    assert [s for sec, m, s in mnist if m == "ivon"] == [0]
    cifar = US.plan("cifar10", ["deterministic", "bnn", "ivon"], None)
    assert sorted(cifar) == [("vgg3", "bnn", 0), ("vgg3", "deterministic", 0), ("vgg3", "ivon", 0)]
    assert {s for _, _, s in US.plan("cifar10", ["bnn"], [0, 3])} == {0, 3}


def test_a_rerun_recipe_replaces_its_row_and_keeps_the_old_one_on_record():
    def row(acc, trainings):
        return {"kind": "eval", "section": "vgg3", "method": "ivon", "seed": 0, "epochs": 30,
                "accuracy": acc, "nll": 1 - acc, "ece": 0.05, "shift_ece": 0.2, "train_s": 9.0,
                "mc_samples": 20, "trainings": trainings,
                "per_shift": [{"shift": "contrast", "level": 1, "accuracy": acc, "nll": 0.5,
                               "ece": 0.1}]}
    out = SR._section([row(0.78, ["vgg3-ivon-s0"]), row(0.81, ["vgg3-ivon_cos-s0"])], "vgg3", 30)
    assert out["ivon"]["accuracy"] == 0.81 and out["ivon"]["seeds"] == [0]
    assert [e["accuracy"] for e in out["ivon"]["earlier"]] == [0.78]
    assert out["ivon"]["earlier"][0]["trainings"] == ["vgg3-ivon-s0"]
