"""Launcher detection, the all-reduce timer, and real multi-process runs of the engine:
2 workers under ``torchrun --standalone`` and 2 ``torchrun`` agents (``--nnodes=2``) meeting
through a c10d rendezvous on 127.0.0.1, all with gloo on CPU."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys

import pytest

from bayescale.train.checkpoint import load_checkpoint
from bayescale.train.distributed import AllReduceTimer, DistEnv, detect_env, first_slurm_host

RUN = ["mnist_bnn_fc_flip", "data.name=synthetic", "data.size=400", "train.batch_size=16",
       "eval.samples=2", "train.progress=false", "train.log_every=1"]


@pytest.mark.parametrize("env, want", [
    ({}, DistEnv("none")),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"},
     DistEnv("torchrun", 3, 8, 1, 2)),
    ({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "6",
      "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"},
     DistEnv("mpi", 5, 6, 1, 2)),
    ({"PMI_RANK": "2", "PMI_SIZE": "4"}, DistEnv("mpi", 2, 4, 0, 1)),  # MPICH / Cray aprun
    ({"SLURM_PROCID": "7", "SLURM_NTASKS": "16", "SLURM_LOCALID": "3",
      "SLURM_TASKS_PER_NODE": "4(x4)", "SLURM_STEP_ID": "0", "PMI_SIZE": "16", "PMI_RANK": "7"},
     DistEnv("slurm", 7, 16, 3, 4)),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, DistEnv("none")),  # a one-task sbatch script
])
def test_detect_env(env, want):
    assert detect_env(env) == want


def test_detect_env_errors():
    with pytest.raises(RuntimeError, match="not an integer"):
        detect_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(RuntimeError, match="no rank variable"):
        detect_env({"OMPI_COMM_WORLD_SIZE": "2"})


def test_first_slurm_host():
    assert first_slurm_host("nid[0012-0015,0020]") == "nid0012"
    assert first_slurm_host("node7,node9") == "node7"
    assert first_slurm_host("gpu-a[3,5]") == "gpu-a3"


def test_allreduce_timer_unions_overlapping_intervals():
    t = AllReduceTimer()
    t.intervals = [(0.0, 1.0), (0.5, 2.0), (3.0, 3.5), (3.2, 3.4), (5.0, 5.25)]
    assert t.pop() == pytest.approx(2.0 + 0.5 + 0.25)
    assert t.pop() == 0.0 and t.intervals == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.dist
def test_two_workers_torchrun_strong_scaling(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "bayescale", "train", *RUN, "train.steps=20", "train.scaling=strong",
           "optim.scale_lr_by_world_size=true", "train.threads=1",
           f"output.dir={tmp_path}", "output.name=run"]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("test accuracy") == 1  # only rank 0 reports
    run = tmp_path / "run"
    timing = _rows(run / "timing.csv")
    assert len(timing) == 10  # strong scaling: 20 single-worker steps / 2 workers
    assert all(int(r["world_size"]) == 2 for r in timing)
    assert sum(float(r["allreduce_s"]) for r in timing) > 0
    for r in timing:  # samples/s counts both workers
        assert float(r["samples_per_s"]) == pytest.approx(32 / float(r["batch_time_s"]), rel=1e-3)
    rows = _rows(run / "train.csv")
    assert {float(r["lr"]) for r in rows} == {2e-3}  # lr x world_size (Horovod recipe)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert not all(ckpt["rng"][0]["cpu"] == ckpt["rng"][1]["cpu"])  # own noise stream per rank
    a, b = ckpt["param_checksums"]
    assert a == b  # identical parameters on both ranks
    evals = _rows(run / "eval.csv")
    assert int(evals[-1]["test_count"]) == 80  # sharded evaluation covers the whole test set
    # resuming with another number of workers is refused with a clear message
    solo = subprocess.run([sys.executable, "-m", "bayescale", "train", "--resume", str(run),
                           "train.steps=40"], env=_env(), capture_output=True, text=True)
    assert solo.returncode == 1 and "same number of workers" in solo.stderr


@pytest.mark.dist
def test_two_torchrun_agents_c10d_rendezvous(tmp_path):
    port = _free_port()
    procs = []
    for _node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
               "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
               "--rdzv-id=bayescale-test", "--max-restarts=0", "-m", "bayescale", "train", *RUN,
               "train.steps=6", "train.scaling=weak", "train.threads=1",
               f"output.dir={tmp_path}", "output.name=run"]
        procs.append(subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    timing = _rows(tmp_path / "run" / "timing.csv")
    assert len(timing) == 6  # weak scaling: the same steps per worker
    assert all(int(r["world_size"]) == 2 for r in timing)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and ckpt["param_checksums"][0] == ckpt["param_checksums"][1]


def test_exit_process_after_abandon_is_a_hard_exit_with_the_code_and_flushed_output():
    import subprocess
    import sys

    code = ("import atexit, sys; from bayescale.train import distributed as D; "
            "atexit.register(lambda: print('teardown ran')); print('reported', end=''); "
            "D.abandon(); assert D.abandoned(); D.exit_process(3)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 3 and out.stdout == "reported"  # no interpreter teardown
    plain = subprocess.run([sys.executable, "-c", code.replace("D.abandon(); assert "
                                                               "D.abandoned(); ", "")],
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 3 and plain.stdout == "reportedteardown ran\n"
