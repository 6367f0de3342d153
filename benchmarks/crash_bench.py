"""Crash safety (issue 9): SIGKILL a training run at random points, resume it, compare.

    python benchmarks/crash_bench.py --kills 20          # ~4 min on 2 cores

A reference run trains ``BNN_FC_flip`` on synthetic data without interruption. The same run is
then started, killed with SIGKILL after a random delay, resumed with ``--resume`` (or started
again when no checkpoint existed yet), killed again, ... ``--kills`` times, and finally let
finish. After every kill the run directory must hold no temp files left half-written that a load
would trust, its newest checkpoint must load (checksum verified) or be absent, and every resume
must continue from the step of the last checkpoint. At the end the final parameters must be
bit-identical to the reference (all RNG states are checkpointed; CPU, fixed seed).

Writes benchmarks/results/crash.json with provenance.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bayescale.scale.bench import provenance, results_path, write_json
from bayescale.train.checkpoint import CheckpointError, load_latest

STEPS = 6000
CONFIG = ["model.name=BNN_FC_flip", "data.name=synthetic", "data.size=4096", "train.steps=6000",
          "train.batch_size=32", "train.checkpoint_every=100", "eval.every_epochs=0",
          "eval.samples=2", "train.threads=1", "train.progress=false", "train.seed=3"]


def _cmd(out: Path, name: str, resume: bool) -> list[str]:
    base = [sys.executable, "-m", "bayescale", "train"]
    if resume:
        return [*base, "--resume", str(out / name)]
    return [*base, *CONFIG, f"output.dir={out}", f"output.name={name}"]


def run_with_kills(out: Path, name: str, kills: int, startup: float, train_s: float,
                   seed: int) -> dict:
    rng = random.Random(seed)
    events = []
    run = out / name
    for k in range(kills + 1):
        ckpt_before = None
        try:
            _, st = load_latest(run)
            ckpt_before = st["step"]
        except CheckpointError:
            pass
        resume = ckpt_before is not None
        proc = subprocess.Popen(_cmd(out, name, resume), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        if k < kills:
            # a random point of what is left: startup, then some of the remaining steps
            left = train_s * (STEPS - (ckpt_before or 0)) / STEPS
            # (spread so that the kills still to come share the remaining steps)
            delay = rng.uniform(0.5, 1.0) * startup + rng.uniform(0.0, 2 * left / (kills - k + 1))
            try:
                proc.wait(timeout=delay)
                finished = True
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                finished = False
        else:
            proc.wait()
            finished, delay = True, None
        if finished and proc.returncode != 0:
            raise SystemExit(f"run failed (exit {proc.returncode}):\n"
                             f"{proc.stderr.read().decode()[-3000:]}")
        step_after = None
        try:
            _, st = load_latest(run)
            step_after = st["step"]
            intact = True
        except CheckpointError as err:
            intact = "no checkpoint" in str(err)
        events.append({"kill": k, "delay_s": delay, "resumed_from": ckpt_before,
                       "finished": finished, "checkpoint_step_after": step_after,
                       "checkpoint_intact": intact,
                       "temp_files": len(list(run.glob(".*.tmp"))) if run.exists() else 0})
        print(events[-1], flush=True)
        if finished:
            break
    return {"events": events}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        subprocess.run(_cmd(out, "reference", False), check=True, stdout=subprocess.DEVNULL)
        ref_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([*_cmd(out, "x", False), "--print-config"], check=True,
                       stdout=subprocess.DEVNULL)
        startup = time.perf_counter() - t0
        res = run_with_kills(out, "killed", a.kills, startup, max(1.0, ref_s - startup), a.seed)
        ref = torch.load(out / "reference" / "model.pt", weights_only=True)
        got = torch.load(out / "killed" / "model.pt", weights_only=True)
        identical = all(torch.equal(ref[k], got[k]) for k in ref)
        # every resume continued where the last checkpoint was: the step log has no gap/repeat
        steps = [int(r.split(",")[0]) for r in
                 (out / "killed" / "timing.csv").read_text().splitlines()[1:]]
        log_continuous = steps == list(range(1, len(steps) + 1)) and len(steps) == STEPS
    ev = res["events"]
    kills = sum(not e["finished"] for e in ev)
    summary = {"kills": kills, "all_checkpoints_intact": all(e["checkpoint_intact"] for e in ev),
               "resumes": sum(e["resumed_from"] is not None for e in ev),
               "final_bit_identical": identical, "step_log_continuous": log_continuous,
               "reference_run_s": ref_s}
    print(summary)
    print("wrote", write_json(results_path("crash.json"),
                              {"benchmark": "crash", "provenance": provenance(
                                  {**vars(a), "config": CONFIG}),
                               "results": {**summary, **res}}))
    if not (identical and log_continuous and summary["all_checkpoints_intact"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
