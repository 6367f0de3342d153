"""One table of bad inputs across the library and the CLI: each one is refused with a
message that names the problem, and no file that existed before is changed or removed."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import bayescale as B
from bayescale.data.catalogue import load_dataset
from bayescale.kefan.groups import group_view, spike_slab_estep
from bayescale.kefan.optimizer import SGHMCSpikeSlab
from bayescale.pruning import bprune as P
from bayescale.scale.study import parse_workers
from bayescale.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bayescale.train.config import ConfigError, load_config
from bayescale.train.runs import load_run
from bayescale.uncertainty.metrics import accuracy, ece, nll


def _bnn():
    torch.manual_seed(0)
    return B.bayesianize(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(),
                                       nn.Linear(3, 2)))


def _probs():
    return torch.tensor([[0.7, 0.3], [0.2, 0.8]])


def _files(tmp: Path) -> dict[str, str]:
    """Every file under tmp with its SHA-256 (what must not change)."""
    return {str(p.relative_to(tmp)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tmp.rglob("*")) if p.is_file()}


def _setup(tmp: Path) -> None:
    save_checkpoint(tmp / "good.pt", {"model": {"w": torch.ones(2)}, "step": 1})
    (tmp / "trunc.pt").write_bytes((tmp / "good.pt").read_bytes()[:50])
    (tmp / "text.pt").write_text("not a checkpoint")
    (tmp / "cfg.yaml").write_text("model:\n  name: BNN_FC_flip\ntrain:\n  batch_sise: 3\n")
    (tmp / "badyaml.yaml").write_text("model: [unclosed\n")
    (tmp / "notmap.yaml").write_text("- a\n- b\n")
    (tmp / "run").mkdir()
    (tmp / "run" / "model.pt").write_bytes(b"PK\x03\x04broken")
    (tmp / "run" / "config.yaml").write_text("model:\n  name: BNN_FC_flip\n")


CASES = [
    # --- config
    ("unknown key", lambda t: load_config("quickstart", ["optim.lrr=1"]), ConfigError, "optim.lr"),
    ("unknown section", lambda t: load_config("quickstart", ["optimm.lr=1"]), ConfigError,
     "unknown"),
    ("wrong type", lambda t: load_config("quickstart", ["train.batch_size=abc"]), ConfigError,
     "integer"),
    ("negative batch", lambda t: load_config("quickstart", ["train.batch_size=0"]), ConfigError,
     ">= 1"),
    ("zero lr", lambda t: load_config("quickstart", ["optim.lr=0"]), ConfigError, "> 0"),
    ("bad choice", lambda t: load_config("quickstart", ["optim.name=adamax"]), ConfigError,
     "one of"),
    ("typo in yaml file", lambda t: load_config(t / "cfg.yaml"), ConfigError, "batch_size"),
    ("broken yaml", lambda t: load_config(t / "badyaml.yaml"), ConfigError, ""),
    ("yaml not a mapping", lambda t: load_config(t / "notmap.yaml"), ConfigError, "mapping"),
    ("missing config", lambda t: load_config(t / "nope.yaml"), (ConfigError, FileNotFoundError),
     "nope"),
    ("path traversal in output.name", lambda t: load_config("quickstart",
                                                            ["output.name=../../x"]),
     ConfigError, "plain directory name"),
    ("keep 0 checkpoints", lambda t: load_config("quickstart", ["train.keep_checkpoints=0"]),
     ConfigError, ">= 1"),
    # --- checkpoints and runs
    ("truncated checkpoint", lambda t: load_checkpoint(t / "trunc.pt"), CheckpointError,
     "corrupt"),
    ("text as checkpoint", lambda t: load_checkpoint(t / "text.pt"), CheckpointError, ""),
    ("missing checkpoint", lambda t: load_checkpoint(t / "none.pt"), CheckpointError,
     "no checkpoint"),
    ("missing run", lambda t: load_run(t / "norun"), CheckpointError, "no run"),
    ("corrupt model.pt", lambda t: load_run(t / "run"), CheckpointError, "corrupt"),
    ("empty run dir", lambda t: (t / "empty").mkdir() or load_run(t / "empty"), CheckpointError,
     "no model.pt"),
    # --- data
    ("unknown data set", lambda t: load_dataset("mnits"), (ValueError, KeyError), "mnist"),
    ("data not downloaded", lambda t: load_dataset("mnist", root=t / "nodata"),
     (FileNotFoundError, RuntimeError, ValueError), "download"),
    # --- layers
    ("unknown estimator", lambda t: B.BayesLinear(3, 2, estimator="flip"), ValueError,
     "estimator"),
    ("wrong input width", lambda t: B.BayesLinear(3, 2)(torch.ones(2, 4)), ValueError,
     "in_features"),
    ("integer input", lambda t: _bnn()(torch.ones(2, 4, dtype=torch.long)), (TypeError,
                                                                           ValueError), ""),
    # --- mc_predict
    ("zero MC samples", lambda t: B.mc_predict(_bnn(), torch.ones(2, 4), 0), ValueError,
     "num_samples"),
    ("negative MC samples", lambda t: B.mc_predict(_bnn(), torch.ones(2, 4), -3), ValueError,
     "num_samples"),
    ("Inf input to mc_predict", lambda t: B.mc_predict(_bnn(), torch.full((2, 4), float("inf")),
                                                       2), ValueError, "NaN/Inf"),
    ("bad task", lambda t: B.mc_predict(_bnn(), torch.ones(2, 4), 2, task="ranking"),
     ValueError, "task"),
    # --- metrics
    ("labels out of range", lambda t: accuracy(_probs(), torch.tensor([0, 2])), ValueError,
     "label"),
    ("shape mismatch", lambda t: nll(_probs(), torch.tensor([0, 1, 1])), ValueError, ""),
    ("probabilities do not sum to 1", lambda t: ece(torch.tensor([[0.7, 0.7], [0.1, 0.1]]),
                                                   torch.tensor([0, 1])), ValueError, "sum"),
    ("zero ECE bins", lambda t: ece(_probs(), torch.tensor([0, 1]), num_bins=0), ValueError,
     "bins"),
    # --- pruning
    ("threshold below 0", lambda t: P.prune(_bnn(), threshold=-1.0), ValueError, "threshold"),
    ("sparsity above 1", lambda t: P.prune(_bnn(), sparsity=1.5), ValueError, "sparsity"),
    ("sparsity that empties a layer", lambda t: P.prune(_bnn(), sparsity=1.0, scope="layer"),
     ValueError, ""),
    ("model without Bayesian layers", lambda t: P.snr_scores(nn.Linear(3, 2)), ValueError,
     "Bayesian"),
    ("unknown pruning mode", lambda t: P.prune(_bnn(), sparsity=0.5, mode="soft"), ValueError,
     "mode"),
    # --- groups and the Ke & Fan optimizer
    ("unknown grouping", lambda t: group_view(torch.ones(2, 2), "cols"), ValueError, "grouping"),
    ("negative soft threshold", lambda t: spike_slab_estep(torch.ones(2, 2), "in", -1.0),
     ValueError, "soft_threshold"),
    ("SGHMC zero num_train", lambda t: SGHMCSpikeSlab([nn.Parameter(torch.ones(2))], 0),
     ValueError, "num_train"),
    ("SGHMC negative lr", lambda t: SGHMCSpikeSlab([nn.Parameter(torch.ones(2))], 10, lr=-1.0),
     ValueError, "lr"),
    ("SGHMC unknown preset", lambda t: SGHMCSpikeSlab([nn.Parameter(torch.ones(2))], 10,
                                                      preset="imagenet"), ValueError, "preset"),
    # --- scale
    ("bad worker list", lambda t: parse_workers("2,1"), ValueError, "workers"),
]


@pytest.mark.parametrize("name,call,exc,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_nothing_is_lost(tmp_path, name, call, exc, words):
    _setup(tmp_path)
    before = _files(tmp_path)
    with pytest.raises(exc) as info:
        call(tmp_path)
    assert words.lower() in str(info.value).lower(), str(info.value)
    after = _files(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing changed or lost


CLI_CASES = [
    (["train", "quickstart", "optim.lrr=1"], "optim.lr"),
    (["train", "quickstart", "train.epochs=-1"], "train.epochs"),
    (["evaluate", "NORUN"], "no run"),
    (["prune", "NORUN", "--sparsity", "0.5"], "no run"),
    (["scale", "quickstart", "--workers", "0"], "workers"),
]


@pytest.mark.parametrize("argv,words", CLI_CASES, ids=[" ".join(a[0][:2]) for a in CLI_CASES])
def test_cli_bad_input_exits_nonzero_with_a_message(tmp_path, argv, words):
    _setup(tmp_path)
    before = _files(tmp_path)
    argv = [str(tmp_path / a) if a == "NORUN" else a for a in argv]
    res = subprocess.run([sys.executable, "-m", "bayescale", *argv], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert res.returncode != 0
    assert words.lower() in res.stderr.lower(), res.stderr[-2000:]
    assert _files(tmp_path) == before  # in particular, no run directory was created


def test_the_sweep_has_at_least_40_cases():
    assert len(CASES) + len(CLI_CASES) >= 40
