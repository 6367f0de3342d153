"""Data-parallel plumbing on ``torch.distributed``: launcher detection, set-up, helpers.

Works unchanged under ``torchrun`` (single and multi-node, c10d rendezvous), SLURM ``srun`` and
MPI launchers (``mpirun``/``aprun``): rank and size come from the launcher's environment. The
rendezvous address is ``MASTER_ADDR``/``MASTER_PORT`` (torchrun sets them; under SLURM the first
host of the allocation and a port derived from the job id are used when they are unset).
gloo on CPU, NCCL on GPU. Only rank 0 writes files (:func:`is_main`).

Faults: a collective that outlives ``timeout_s`` (a worker stopped, hung or unreachable) or whose
peer vanished (a worker crashed or was killed) raises in the surviving workers; :func:`explain`
turns gloo's/NCCL's low-level error into a :class:`CollectiveError` that names the cause and the
fix, and :func:`abandon` drops the broken group without the barrier :func:`teardown` would wait in.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "detect_env", "setup", "teardown", "is_main", "world_size", "rank",
           "available_cores", "tune_malloc", "AllReduceTimer", "all_reduce_sum", "broadcast_object",
           "CollectiveError", "explain", "abandon"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: launcher, global rank/size, rank/size on this node."""

    launcher: str  # "none", "torchrun", "slurm", "mpi"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1


def _int(env: dict[str, str], *names: str) -> int | None:
    for n in names:
        if n in env:
            try:
                return int(env[n])
            except ValueError as err:
                raise RuntimeError(f"environment variable {n}={env[n]!r} is not an integer"
                                   ) from err
    return None


def _slurm_tasks_on_node(env: dict[str, str]) -> int | None:
    """First entry of SLURM_TASKS_PER_NODE, e.g. ``'2(x3),1'`` -> 2."""
    spec = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    m = re.match(r"(\d+)", spec or "")
    return int(m.group(1)) if m else None


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: ``'nid[0012-0015,0020]'`` -> ``'nid0012'``."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise RuntimeError(f"cannot parse SLURM node list {nodelist!r}; set MASTER_ADDR")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + re.split(r"[-,]", ranges)[0]


def detect_env(env: dict[str, str] | None = None) -> DistEnv:
    """Rank and size from torchrun, SLURM or MPI (OpenMPI, MPICH/PMI, Cray ALPS) variables."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun / torch.distributed.launch
        return DistEnv("torchrun", _int(env, "RANK"), _int(env, "WORLD_SIZE"),
                       _int(env, "LOCAL_RANK") or 0, _int(env, "LOCAL_WORLD_SIZE") or 1)
    size = _int(env, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE")
    if size is not None and size > 1 and "SLURM_STEP_ID" not in env:
        rank = _int(env, "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK",
                    "ALPS_APP_PE")
        local_rank = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                          "MV2_COMM_WORLD_LOCAL_RANK", "PALS_LOCAL_RANKID")
        local_size = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                          "MV2_COMM_WORLD_LOCAL_SIZE", "PALS_LOCAL_SIZE")
        if rank is None:
            raise RuntimeError("MPI launch detected (size variable set) but no rank variable; "
                               "launch with mpirun/aprun/srun or torchrun")
        return DistEnv("mpi", rank, size, local_rank or 0, local_size or 1)
    if "SLURM_PROCID" in env and _int(env, "SLURM_NTASKS") not in (None, 1):
        return DistEnv("slurm", _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"),
                       _int(env, "SLURM_LOCALID") or 0, _slurm_tasks_on_node(env) or 1)
    return DistEnv("none")


def available_cores() -> int:
    """CPU cores this process may run on (affinity mask, not the machine total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1


def tune_malloc(threshold: int = 1 << 30) -> bool:
    """glibc only: keep freed blocks below ``threshold`` in the heap instead of unmapping them.

    By default glibc serves allocations above 32 MiB with ``mmap`` and returns them on free, so
    every large CPU activation is page-faulted in again on the next step (measured here: MC
    evaluation of BNN_conv_flip 2.6x faster with this). Skipped when the user set
    ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` or on non-glibc systems.
    Returns whether the setting was applied.
    """
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, threshold)
                    and libc.mallopt(m_trim_threshold, threshold))
    except (OSError, AttributeError):
        return False


def _rendezvous_env(e: DistEnv) -> None:
    if "MASTER_ADDR" not in os.environ:
        if e.launcher == "slurm" and "SLURM_JOB_NODELIST" in os.environ:
            os.environ["MASTER_ADDR"] = first_slurm_host(os.environ["SLURM_JOB_NODELIST"])
        else:
            raise RuntimeError(
                f"{e.launcher} launch with {e.world_size} processes needs MASTER_ADDR (and "
                "MASTER_PORT): export MASTER_ADDR=<host of rank 0> MASTER_PORT=29500")
    if "MASTER_PORT" not in os.environ:
        job = os.environ.get("SLURM_JOB_ID", "0")
        os.environ["MASTER_PORT"] = str(20000 + int(job) % 20000 if job.isdigit() else 29500)


def _elastic_store(e: DistEnv, timeout: datetime.timedelta) -> dist.Store | None:
    """The torchrun agent's store, namespaced by restart, when the workers share it.

    torchrun (torch >= 2.4, c10d rendezvous) keeps one TCPStore for all restarts of a group and
    the workers' default ``env://`` set-up adds no per-attempt namespace, so a restarted worker
    can read the previous attempt's gloo/NCCL addresses and fail with "connectFullMesh failed ...
    Connection refused" (3 of 4 restarts here, torch 2.13; pytorch/pytorch#135712). Keys
    are put under ``TORCHELASTIC_RESTART_COUNT``, which every worker of one agent shares (with
    several agents whose membership changes between restarts, export
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` instead). ``None``: let ``env://`` do it.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          e.world_size, is_master=False, timeout=timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"bayescale/attempt_{attempt}/", store)


def setup(backend: str = "auto", device: str = "auto", threads: int | None = None,
          timeout_s: int = 1800, malloc_tuning: bool = True) -> tuple[DistEnv, torch.device]:
    """Initialise the process group when launched with several processes; pick the device.

    Sets torch threads to ``threads`` or the available cores divided by the workers on this node.
    Returns the environment and this worker's device (``cuda:local_rank`` on GPU machines).
    """
    e = detect_env()
    if malloc_tuning:
        tune_malloc()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but CUDA is not available; use train.device=cpu")
        dev = torch.device("cuda", e.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    torch.set_num_threads(threads or max(1, available_cores() // max(1, e.local_world_size)))
    if e.world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        if backend == "nccl" and dev.type != "cuda":
            raise RuntimeError("dist.backend=nccl needs CUDA; use dist.backend=gloo on CPU")
        _rendezvous_env(e)
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(backend, rank=e.rank, world_size=e.world_size, timeout=timeout,
                                store=_elastic_store(e, timeout),
                                device_id=dev if dev.type == "cuda" else None)
    return e, dev


def teardown() -> None:
    """Destroy the process group after a barrier (no rank tears down while another still talks
    to it: gloo aborts the process when a peer's connection vanishes mid-operation)."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


class CollectiveError(RuntimeError):
    """A collective operation failed: a peer stopped responding (timeout) or disappeared."""


# Substrings of the backends' messages (gloo transport, c10d store, NCCL watchdog), lower case.
_TIMEOUT = ("timed out", "timeout")
_BACKEND = ("gloo", "nccl", "c10d", "processgroup")
_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe",
         "socket closed", "connection refused", "no route to host")


def explain(err: BaseException, timeout_s: float, where: str = "") -> CollectiveError | None:
    """The clear error for a failed collective, or ``None`` when ``err`` is something else.

    Only meaningful in a group of several workers; ``where`` says what this worker was doing
    (e.g. ``"at step 120"``).
    """
    if isinstance(err, CollectiveError):
        return err
    if world_size() < 2 or not isinstance(err, RuntimeError):
        return None
    text = str(err).lower()
    if not (isinstance(err, dist.DistError) or any(k in text for k in _BACKEND)):
        return None
    me = f"worker {rank()} of {world_size()}" + (f" {where}" if where else "")
    if any(k in text for k in _LOST):
        return CollectiveError(
            f"a peer worker disappeared during a collective ({me}): it crashed or was killed, or "
            "its node went down. Check that worker's log; under `torchrun --max-restarts=N` with "
            "`--resume auto` the group restarts from the last checkpoint")
    if any(k in text for k in _TIMEOUT):
        return CollectiveError(
            f"collective timed out after {timeout_s:g} s ({me}): another worker stopped "
            "responding (stopped, hung, swapped out, or its node is unreachable). Check the other "
            "workers and nodes; if a step or checkpoint write legitimately takes longer, raise "
            f"dist.timeout_s (now {timeout_s:g})")
    return None


_ABANDONED = False


def abandoned() -> bool:
    """Whether this process dropped a broken process group (:func:`abandon`)."""
    return _ABANDONED


def exit_process(code: int) -> None:
    """End the process with ``code``; after :func:`abandon`, without running the interpreter's
    teardown: the backend's threads of a broken gloo group can otherwise abort the process
    (SIGABRT, "terminate called without an active exception") after the error was reported."""
    if _ABANDONED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def abandon() -> None:
    """Drop a process group whose peers may be gone (no barrier: it could never complete)."""
    global _ABANDONED
    _ABANDONED = True
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort on a broken group
            pass


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and without a process group): the only process that writes."""
    return rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op on one process)."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every rank (e.g. the run directory name)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class AllReduceTimer:
    """DDP communication hook (:meth:`hook`): average gradient buckets, time the all-reduces.

    Each bucket's all-reduce is in flight from the hook call until its future completes;
    :meth:`pop` returns the wall time during which at least one was in flight since the last
    call (the union of the intervals), i.e. the all-reduce time of one step.
    """

    def __init__(self) -> None:
        self.intervals: list[tuple[float, float]] = []

    def hook(self, state, bucket):  # no annotations: DDP checks them literally
        start = time.perf_counter()
        buf = bucket.buffer().div_(dist.get_world_size())
        fut = dist.all_reduce(buf, async_op=True).get_future()

        def done(f: torch.futures.Future) -> torch.Tensor:
            self.intervals.append((start, time.perf_counter()))
            return f.value()[0]

        return fut.then(done)

    def pop(self) -> float:
        spans, self.intervals = sorted(self.intervals), []
        total, cur_start, cur_end = 0.0, None, None
        for s, t in spans:
            if cur_end is None or s > cur_end:
                if cur_end is not None:
                    total += cur_end - cur_start
                cur_start, cur_end = s, t
            else:
                cur_end = max(cur_end, t)
        if cur_end is not None:
            total += cur_end - cur_start
        return total
