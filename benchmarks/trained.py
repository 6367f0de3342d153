"""Trained runs shared by the benchmarks (uncertainty, pruning, optimizer): trained once, reused.

    from trained import trained_run
    run_dir = trained_run("mnist_bnn_conv_flip_seed", ["train.epochs=5"],
                          data_root="../shared/data")

A run is trained with ``bayescale train`` into ``bench_out/trained/<name>`` unless a finished one
(``model.pt``) is already there; a file lock keeps two benchmarks from training it at once. The
name encodes the config and the overrides, so another setting is another run.
"""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "bench_out" / "trained"


def trained_run(config: str, overrides: list[str] | tuple[str, ...] = (),
                data_root: str | None = None, threads: int = 2) -> Path:
    """The run directory of ``config`` + ``overrides`` (trained now if not yet done)."""
    args = list(overrides) + ([f"data.root={data_root}"] if data_root else [])
    key = hashlib.sha1(" ".join([config, *args]).encode()).hexdigest()[:8]
    run_dir = ROOT / f"{config}-{key}"
    ROOT.mkdir(parents=True, exist_ok=True)
    with open(ROOT / f".{config}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (run_dir / "model.pt").is_file():
            return run_dir
        if run_dir.exists():  # an interrupted earlier attempt: keep it aside, never delete
            run_dir.rename(run_dir.with_name(run_dir.name + f".stale{len(list(ROOT.iterdir()))}"))
        cmd = [sys.executable, "-m", "bayescale", "train", config, *args,
               f"output.dir={ROOT}", f"output.name={run_dir.name}", f"train.threads={threads}",
               "train.progress=false"]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return run_dir
