"""SIGKILL mid-training, resume, and end bit-identical to an uninterrupted run."""

import signal
import subprocess
import sys
import time

import pytest
import torch

from bayescale.train.checkpoint import CheckpointError, load_latest

CONFIG = ["model.name=BNN_FC_flip", "data.name=synthetic", "data.size=1024", "train.steps=1500",
          "train.batch_size=32", "train.checkpoint_every=50", "eval.every_epochs=0",
          "eval.samples=2", "train.threads=1", "train.progress=false", "train.seed=5"]


def _train(out, name, resume=False):
    base = [sys.executable, "-m", "bayescale", "train"]
    if resume:
        return subprocess.Popen([*base, "--resume", str(out / name)], stderr=subprocess.PIPE)
    return subprocess.Popen([*base, *CONFIG, f"output.dir={out}", f"output.name={name}"],
                            stderr=subprocess.PIPE)


def _last_step(run):
    try:
        return load_latest(run)[1]["step"]
    except CheckpointError:
        return None


@pytest.mark.slow
def test_killed_and_resumed_run_is_bit_identical(tmp_path):
    ref = _train(tmp_path, "ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()[-2000:]
    run = tmp_path / "killed"
    p = _train(tmp_path, "killed")
    seen = []
    for _ in range(3):  # kill as soon as a new checkpoint appears, mid-way through the run
        deadline = time.time() + 120
        while _last_step(run) in (None, *seen) and time.time() < deadline and p.poll() is None:
            time.sleep(0.05)
        if p.poll() is not None:
            break
        time.sleep(0.1)
        p.send_signal(signal.SIGKILL)
        p.wait()
        step = _last_step(run)
        assert step is not None and step % 50 == 0 and step not in seen
        seen.append(step)
        p = _train(tmp_path, "killed", resume=True)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    assert len(seen) >= 2, f"the run ended before it could be killed twice ({seen})"
    a = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)
    b = torch.load(run / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [int(r.split(",")[0]) for r in (run / "timing.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 1501))  # each resume continued from the last checkpoint
