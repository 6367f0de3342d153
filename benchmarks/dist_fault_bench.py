"""Distributed faults (issue 9): SIGKILL random workers of a 2-worker torchrun run, and stop one.

    flock /tmp/bayescale-bench.lock python benchmarks/dist_fault_bench.py --kills 8 --hangs 2

1. A reference run trains ``BNN_FC_flip`` on synthetic data with 2 gloo workers under
   ``torchrun --standalone --nproc-per-node=2`` without interruption.
2. The same run is launched with ``--max-restarts=K --resume auto``; K times, a random worker of
   the current attempt is SIGKILLed after a random delay (from the attempt's start, so kills land
   in start-up as well as in training). torchrun restarts the whole group each time and the new
   group continues from the newest intact checkpoint. Reported per kill: the victim, when, the
   checkpoint step it left, the step the restarted group resumed from, kill -> resume seconds.
3. ``--hangs`` times, a run with ``dist.timeout_s=T`` and ``--max-restarts=1`` has a random worker
   SIGSTOPped mid-training (it stops taking part, its sockets stay open): the other worker must
   fail with the clear "collective timed out" message after about T s; torchrun then kills the
   stopped worker (it waits up to 30 s for it to exit) and the restarted group resumes.

Every run must end with parameters bit-identical to the reference and a step log without gap or
repeat. Linux only (workers are found through /proc). Writes benchmarks/results/dist_faults.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bayescale.scale.bench import descendants, provenance, results_path, write_json
from bayescale.train.checkpoint import CheckpointError, load_latest

PER_WORKER = 3000  # steps per worker (6000 single-worker steps, strong scaling over 2)
CONFIG = ["model.name=BNN_FC_flip", "data.name=synthetic", "data.size=4096", "train.steps=6000",
          "train.batch_size=32", "train.checkpoint_every=100", "eval.every_epochs=0",
          "eval.samples=2", "train.threads=1", "train.progress=false", "train.seed=3"]


class Launch:
    """One ``torchrun`` launch; its stderr (workers' included) is kept with arrival times."""

    def __init__(self, out: Path, name: str, restarts: int, extra: list[str] = ()) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", f"--max-restarts={restarts}", "-m", "bayescale", "train",
               *CONFIG, *extra, f"output.dir={out}", f"output.name={name}", "--resume", "auto"]
        self.run = out / name
        self.t0 = time.time()
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append((time.time(), line.rstrip()))

    def first(self, text: str, after: float = 0.0) -> float | None:
        """When a stderr line containing ``text`` first arrived after ``after``."""
        return next((t for t, ln in list(self.lines) if t > after and text in ln), None)

    def wait(self, timeout: float = 900) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        if rc != 0:
            raise SystemExit(f"torchrun failed (exit {rc}):\n"
                             + "\n".join(ln for _, ln in self.lines[-60:]))
        return rc

    def workers(self, attempt: int) -> dict[int, int]:
        """{rank: pid} of the workers of restart ``attempt`` (children of the agent)."""
        found = {}
        for pid in descendants(self.proc.pid):
            try:
                env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ")
                           .read_text().split("\0") if "=" in kv)
            except OSError:
                continue
            if env.get("TORCHELASTIC_RESTART_COUNT") == str(attempt) and "RANK" in env:
                found[int(env["RANK"])] = pid
        return found

    def wait_workers(self, attempt: int, timeout: float = 300) -> dict[int, int]:
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            w = self.workers(attempt)
            if len(w) == 2:
                return w
            time.sleep(0.01)
        return {}




def _ckpt_step(run: Path) -> int | None:
    try:
        return load_latest(run)[1]["step"]
    except (CheckpointError, OSError, RuntimeError):
        return None


def _resumes(run: Path) -> dict[int, dict]:
    path = run / "resumes.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
    return {r["restart_count"]: r for r in rows}


def _check(ref: Path, run: Path) -> dict:
    a = torch.load(ref / "model.pt", weights_only=True)
    b = torch.load(run / "model.pt", weights_only=True)
    steps = [int(r.split(",")[0]) for r in (run / "timing.csv").read_text().splitlines()[1:]]
    return {"final_bit_identical": a.keys() == b.keys() and all(torch.equal(a[k], b[k])
                                                                for k in a),
            "step_log_continuous": steps == list(range(1, PER_WORKER + 1)),
            "temp_files_left": len(list(run.glob(".*.tmp")))}


def kills(out: Path, ref: Path, k_total: int, startup: float, train_s: float,
          rng: random.Random) -> dict:
    job = Launch(out, "killed", restarts=k_total)
    events = []
    for k in range(k_total):
        w = job.wait_workers(k)
        if not w:
            break
        started = time.time()
        before = _ckpt_step(job.run) or 0
        left = train_s * (PER_WORKER - before) / PER_WORKER
        # start-up (import, data, checkpoint load) or training: the kills still to come share
        # what is left of the training
        delay = rng.uniform(0.3, 1.0) * startup + rng.uniform(0.0, 2 * left / (k_total - k + 1))
        while time.time() < started + delay and job.proc.poll() is None:
            time.sleep(0.01)
        if job.proc.poll() is not None:
            break
        victim = rng.choice(sorted(w))
        os.kill(w[victim], signal.SIGKILL)
        events.append({"kill": k + 1, "victim_rank": victim, "delay_s": round(delay, 3),
                       "killed_at": time.time()})
        nxt = job.wait_workers(k + 1)  # the old group is gone once the new one is spawned
        events[-1]["restarted"] = bool(nxt)
        events[-1]["checkpoint_step_left"] = _ckpt_step(job.run) if nxt else None
    job.wait()
    res = _resumes(job.run)
    for i, e in enumerate(events):
        r = res.get(e["kill"])
        e["resumed_from"] = r["step"] if r else None
        e["kill_to_resume_s"] = round(r["time"] - e["killed_at"], 2) if r else None
        newest = r is not None and r["step"] == e["checkpoint_step_left"]
        started_over = r is None and e["checkpoint_step_left"] is None
        # no resume row, but the next kill hit the new group before it got that far
        killed_early = (r is None and i + 1 < len(events)
                        and events[i + 1]["checkpoint_step_left"] == e["checkpoint_step_left"])
        e["outcome"] = ("resumed from the newest checkpoint" if newest else
                        "no checkpoint yet: started over" if started_over else
                        "next group killed in start-up, before resuming" if killed_early else
                        "WRONG: resumed from another checkpoint or not at all")
        e["ok"] = newest or started_over or killed_early
        print(e, flush=True)
    for e in events:
        del e["killed_at"]
    delays = [e["kill_to_resume_s"] for e in events if e["kill_to_resume_s"] is not None]
    return {"kills": len(events), "restarts": sum(e["restarted"] for e in events),
            "resumes_from_checkpoint": len(res),
            "every_restart_resumed_correctly": all(e["ok"] for e in events),
            "kill_to_resume_s_mean": round(sum(delays) / len(delays), 2) if delays else None,
            "kill_to_resume_s_max": max(delays, default=None),
            "run_s": round(time.time() - job.t0, 1), **_check(ref, job.run), "events": events}


def hang(out: Path, ref: Path, name: str, timeout_s: int, victim: int,
         rng: random.Random) -> dict:
    job = Launch(out, name, restarts=1, extra=[f"dist.timeout_s={timeout_s}"])
    w = job.wait_workers(0)
    target = rng.randrange(100, PER_WORKER // 2)
    while (_ckpt_step(job.run) or 0) < target and job.proc.poll() is None:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.5))  # between two checkpoints
    os.kill(w[victim], signal.SIGSTOP)
    stopped = time.time()
    last_ckpt = _ckpt_step(job.run)
    job.wait()
    detected = job.first("collective timed out", stopped)
    resumed = job.first("resuming", stopped)
    msg = next((ln for _, ln in job.lines if "collective timed out" in ln), None)
    row = {"victim_rank": victim, "timeout_s": timeout_s, "checkpoint_step_at_stop": last_ckpt,
           "detect_s": round(detected - stopped, 2) if detected else None,
           "stop_to_resume_s": round(resumed - stopped, 2) if resumed else None,
           "resumed_from": _resumes(job.run).get(1, {}).get("step"),
           "message": msg, "run_s": round(time.time() - job.t0, 1), **_check(ref, job.run)}
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=8)
    ap.add_argument("--hangs", type=int, default=2, help="SIGSTOP runs (victim rank alternates)")
    ap.add_argument("--timeout", type=int, default=10, help="dist.timeout_s of the SIGSTOP runs")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        ref = Launch(out, "reference", restarts=0)
        ref.wait_workers(0)
        spawned = time.time()
        ref.wait()
        ref_s = time.time() - ref.t0
        rows = [r.split(",") for r in (ref.run / "timing.csv").read_text().splitlines()[1:]]
        train_s = float(rows[-1][4]) - float(rows[0][3])  # first step start -> last step end
        startup = float(rows[0][3]) - spawned  # worker spawned -> first step
        print(f"reference: {ref_s:.1f} s ({startup:.1f} s worker start-up, {train_s:.1f} s "
              "training)")
        killed = kills(out, ref.run, a.kills, startup, train_s, rng)
        hangs = [hang(out, ref.run, f"hung{i}", a.timeout, i % 2, rng) for i in range(a.hangs)]
    ok = (killed["final_bit_identical"] and killed["step_log_continuous"]
          and killed["every_restart_resumed_correctly"]
          and all(h["final_bit_identical"] and h["step_log_continuous"] and h["detect_s"]
                  for h in hangs))
    summary = {"reference_run_s": round(ref_s, 1), "worker_startup_s": round(startup, 1),
               "train_s": round(train_s, 1), "all_checks_pass": ok,
               "kills": {k: v for k, v in killed.items() if k != "events"},
               "hang_detect_s": [h["detect_s"] for h in hangs],
               "hang_stop_to_resume_s": [h["stop_to_resume_s"] for h in hangs]}
    print(json.dumps(summary, indent=1))
    print("wrote", write_json(results_path("dist_faults.json"), {
        "benchmark": "dist_faults",
        "provenance": provenance({**vars(a), "config": CONFIG, "workers": 2,
                                  "launcher": "torchrun --standalone", "backend": "gloo",
                                  "threads_per_worker": 1}),
        "results": {"summary": summary, "kill_events": killed["events"], "hangs": hangs}}))
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
