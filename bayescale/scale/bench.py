"""Benchmark helpers: provenance, interleaved A/B timing and JSON output.

Every number a benchmark reports carries where it came from: git commit, Python/PyTorch versions,
machine, threads, allocator settings and the configuration. Timing rules: warm-up excluded,
A/B interleaved in the same process (so drift hits both sides), medians over many steps.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

__all__ = ["provenance", "time_interleaved", "summary", "write_json", "cpu_name"]


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
            timeout=10, check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


BENCH_LOCK = "/tmp/bayescale-bench.lock"  # shared by every timing job on a machine


@contextlib.contextmanager
def bench_lock(path: str | Path = BENCH_LOCK) -> Iterator[None]:
    """Hold the shared benchmark lock (an exclusive ``flock``) for one timed block, so timing
    jobs on one machine take turns (``flock /tmp/bayescale-bench.lock CMD`` takes the same)."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def provenance(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where a result came from: commit, versions, machine, threads, allocator, config."""
    cuda = torch.cuda.is_available()
    return {
        "commit": _git_commit(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "device": torch.cuda.get_device_name() if cuda else cpu_name(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "config": config or {},
    }


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    warmup: int = 5,
    rounds: int = 10,
    steps_per_round: int = 10,
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Per-call seconds of each function, A/B interleaved: every round runs each function
    ``steps_per_round`` times, the order rotating between rounds. Warm-up calls are not timed.
    """
    sync = sync or (torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None))
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            for _ in range(steps_per_round):
                sync()
                t0 = time.perf_counter()
                fns[name]()
                sync()
                times[name].append(time.perf_counter() - t0)
    return times


def summary(times: Sequence[float]) -> dict[str, float]:
    """Median, mean, std and count of a list of seconds."""
    return {
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "std_s": statistics.pstdev(times),
        "n": len(times),
    }


RESULTS_ENV = "BAYESCALE_RESULTS_DIR"


def results_path(name: str) -> Path:
    """Where a benchmark writes ``name``: ``$BAYESCALE_RESULTS_DIR`` if set (the quick suite of
    benchmarks/run_all.py), else the repository's ``benchmarks/results/`` (the README's runs)."""
    root = os.environ.get(RESULTS_ENV) or Path(__file__).resolve().parents[2] / "benchmarks" / \
        "results"
    return Path(root) / name


def figures_path(name: str) -> Path:
    """Where a benchmark draws figure ``name``: ``$BAYESCALE_RESULTS_DIR/figures`` if set, else
    the README's ``docs/figures/``."""
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV]) / "figures" / name
    return Path(__file__).resolve().parents[2] / "docs" / "figures" / name


def write_json(path: str | Path, record: dict[str, Any]) -> Path:
    """Write one result record as indented JSON (atomically: temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def descendants(pid: int) -> list[int]:
    """Every live descendant process id of ``pid`` (Linux /proc; [] elsewhere), e.g. the workers
    under a ``torchrun`` agent for fault-injection benchmarks and tests."""
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids + [g for k in kids for g in descendants(k)]
