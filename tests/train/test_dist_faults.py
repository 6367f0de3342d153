"""Distributed faults: a worker SIGKILLed under ``torchrun --max-restarts`` is survived by
restarting the group from the last checkpoint (``--resume auto``), bit-identical to an
uninterrupted run; a worker that stops responding makes the others fail within ``dist.timeout_s``
with a clear message instead of hanging. gloo on CPU; Linux (/proc) for finding the workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bayescale.scale.bench import descendants
from bayescale.train import distributed as D
from bayescale.train.checkpoint import CheckpointError, load_latest

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")

# 1200 single-worker steps = 600 per worker on 2 workers; a checkpoint every 50 steps
CONFIG = ["model.name=BNN_FC_flip", "data.name=synthetic", "data.size=1024", "train.steps=1200",
          "train.batch_size=32", "train.checkpoint_every=50", "eval.every_epochs=0",
          "eval.samples=2", "train.threads=1", "train.progress=false", "train.seed=5"]
PER_WORKER = 600


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
              "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT"):
        env.pop(k, None)
    return env


def _torchrun(out: Path, name: str, restarts: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           f"--max-restarts={restarts}", "-m", "bayescale", "train", *CONFIG,
           f"output.dir={out}", f"output.name={name}", "--resume", "auto"]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)




def _worker(agent: int, rank: int) -> int | None:
    """The pid of the torchrun worker of ``rank`` (of the current attempt) under ``agent``."""
    for pid in descendants(agent):
        try:
            env = dict(kv.split("=", 1) for kv in
                       Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        except OSError:
            continue
        if env.get("RANK") == str(rank) and "TORCHELASTIC_RESTART_COUNT" in env:
            return pid
    return None


def _ckpt_step(run: Path) -> int | None:
    try:
        return load_latest(run)[1]["step"]
    except (CheckpointError, OSError, RuntimeError):
        return None


def _timing(run: Path) -> list[list[float]]:
    return [[float(v) for v in r.split(",")] for r in
            (run / "timing.csv").read_text().splitlines()[1:]]


@pytest.mark.dist
@pytest.mark.slow
def test_sigkilled_worker_restarts_group_and_resumes_bit_identical(tmp_path):
    ref = _torchrun(tmp_path, "ref", restarts=0)
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]
    run = tmp_path / "run"
    p = _torchrun(tmp_path, "run", restarts=1)
    try:
        deadline = time.time() + 120
        while (_ckpt_step(run) or 0) < 100 and time.time() < deadline and p.poll() is None:
            time.sleep(0.02)
        seen = _ckpt_step(run)
        victim = _worker(p.pid, 1)
        assert p.poll() is None and victim is not None, "the run ended before it could be killed"
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err[-3000:]
    # torchrun restarted the group once; rank 0 resumed from the newest checkpoint, not step 0
    resumes = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert len(resumes) == 1 and resumes[0]["restart_count"] == 1
    step = resumes[0]["step"]
    assert seen <= step < PER_WORKER and step % 50 == 0
    assert f"resuming {run} at step {step}" in err
    # the step log has no gap or repeat; rows up to the checkpoint predate the kill, later ones
    # were written by the restarted group
    rows = _timing(run)
    assert [int(r[0]) for r in rows] == list(range(1, PER_WORKER + 1))
    assert all(r[4] < killed_at for r in rows[:step]) and all(r[3] > killed_at
                                                              for r in rows[step:])
    assert all(int(r[7]) == 2 for r in rows)
    # every rank's RNG stream was checkpointed and 2-worker gloo sums are order-free: bit-identical
    a = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)
    b = torch.load(run / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.dist
def test_stopped_worker_makes_the_other_fail_within_the_timeout(tmp_path):
    timeout_s = 5
    env = dict(_env(), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()))
    cmd = [sys.executable, "-m", "bayescale", "train", *CONFIG, "train.steps=1000000",
           "train.scaling=weak", f"dist.timeout_s={timeout_s}", f"output.dir={tmp_path}",
           "output.name=run"]
    procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    try:
        deadline = time.time() + 120
        while _ckpt_step(tmp_path / "run") is None and time.time() < deadline:
            assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-3000:]
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGSTOP)  # rank 1 stops taking part, its sockets stay open
        stopped = time.time()
        _, err = procs[0].communicate(timeout=timeout_s + 60)  # never hangs: bounded here
        took = time.time() - stopped
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode == 1, err[-3000:]
    assert "bayescale train: collective timed out after 5 s (worker 0 of 2 at step" in err
    assert "raise dist.timeout_s" in err and "Traceback" not in err
    assert timeout_s - 0.5 < took < timeout_s + 30


class _GlooTimeout(RuntimeError):
    pass


@pytest.mark.parametrize("message, want", [
    ("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation",
     "collective timed out after 5 s (worker 1 of 2 at step 7)"),
    ("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4321",
     "a peer worker disappeared during a collective (worker 1 of 2 at step 7)"),
    ("[gloo/transport/tcp/pair.cc:598] Connection reset by peer", "a peer worker disappeared"),
    ("Timed out waiting for the data loader", None),  # not a collective
    ("size mismatch for fc.weight", None),
])
def test_explain_names_cause_and_fix(monkeypatch, message, want):
    monkeypatch.setattr(D, "world_size", lambda: 2)
    monkeypatch.setattr(D, "rank", lambda: 1)
    got = D.explain(RuntimeError(message), 5, "at step 7")
    if want is None:
        assert got is None
    else:
        assert isinstance(got, D.CollectiveError) and want in str(got)
    monkeypatch.setattr(D, "world_size", lambda: 1)  # one process: nothing to explain
    assert D.explain(RuntimeError(message), 5) is None


def test_resume_auto_needs_a_fixed_run_name(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bayescale", "train", *CONFIG, "train.steps=2",
                          f"output.dir={tmp_path}", "--resume", "auto"],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "--resume auto needs a fixed run directory" in out.stderr


def test_resume_auto_starts_then_continues(tmp_path):
    """Single process: the first launch starts the run, the same command continues it."""
    from bayescale.train.engine import train

    cfg = {"model": {"name": "BNN_FC_flip"}, "data": {"name": "synthetic", "size": 256},
           "train": {"steps": 8, "batch_size": 32, "threads": 1, "progress": False,
                     "checkpoint_every": 4},
           "eval": {"every_epochs": 0, "samples": 1},
           "output": {"dir": str(tmp_path), "name": "r", "tensorboard": False}}
    first = train(cfg, resume="auto")
    assert first["steps"] == 8 and not (tmp_path / "r" / "resumes.jsonl").exists()
    cfg["train"]["steps"] = 12
    again = train(cfg, resume="auto")
    assert again["steps"] == 12
    resumes = [json.loads(x) for x in (tmp_path / "r" / "resumes.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumes] == [8]
    assert [int(r[0]) for r in _timing(tmp_path / "r")] == list(range(1, 13))
