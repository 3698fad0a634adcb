"""Process-wide settings (logging, CPU threads), applied by entry points only.

`dodo.py` (through charfw.pipeline.load_tasks) and the `charfw` command call `setup`;
library functions never touch handlers or thread counts.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

THREADS_ENV = "CHARFW_THREADS"


def doit_workers(argv: list[str]) -> int:
    """How many tasks doit runs at once, from its command line (`-n 3`, `-n3`, `--process=3`)."""
    for i, arg in enumerate(argv):
        value = None
        if arg in ("-n", "--process") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--process="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-n") and arg[2:].isdigit():
            value = arg[2:]
        if value is not None and value.isdigit():
            return max(1, int(value))
    return 1


def threads_per_worker(workers: int, cpus: int | None = None, env: dict | None = None) -> int:
    """CPU threads for each of `workers` parallel tasks: CHARFW_THREADS, else an equal share of all cores
    but one.

    Oversubscription is what hurts: `bench/train.py --case tiny-128` on 2 cores ran 1.41 steps/s
    with 1 thread and 0.13 with 2 while one other 2-thread process ran, against 1.79-1.87 vs
    1.91-2.07 on the quiet machine. Leaving one core free costs at most ~10% when the machine
    is quiet and avoids the 11x collapse when it is not.
    """
    env = os.environ if env is None else env
    if env.get(THREADS_ENV, "").isdigit() and int(env[THREADS_ENV]) > 0:
        return int(env[THREADS_ENV])
    return max(1, ((cpus or os.cpu_count() or 1) - 1) // workers)


def worker_slot() -> int:
    """0 in the main process; k-1 in the k-th worker process of `doit -n N` (a progress-bar line)."""
    import multiprocessing

    ident = multiprocessing.current_process()._identity
    return ident[0] - 1 if ident else 0


def set_threads(n: int) -> None:
    """Before torch starts (workers fork later and inherit it), or directly if it already has."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def show_log() -> None:
    """charfw's notes (resuming from step N, AdamW instead of AdamW 8-bit) go to the console."""
    logger = logging.getLogger("charfw")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("charfw: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_workers = 1   # tasks doit runs at once, as the entry point said (setup); forked workers inherit it


def parallel_share(env: dict | None = None) -> int:
    """Threads for work cut into independent single-threaded pieces (SVD compression's modules):
    CHARFW_THREADS, else this process's share of the usable cores among doit's workers. No core is
    kept free here: single-threaded kernels do not spin-wait on each other as OpenMP teams do."""
    env = os.environ if env is None else env
    if env.get(THREADS_ENV, "").isdigit() and int(env[THREADS_ENV]) > 0:
        return int(env[THREADS_ENV])
    return max(1, usable_cpus() // _workers)


def quiet_third_party() -> None:
    """Warnings a user cannot act on: transformers' "`CLIPImageProcessor` requires torchvision" when
    diffusers builds a pipeline (charfw never uses image processors, and torchvision would force
    another torch)."""
    logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)


def setup(workers: int = 1) -> None:
    global _workers
    _workers = max(1, workers)
    show_log()
    quiet_third_party()
    if THREADS_ENV in os.environ or "OMP_NUM_THREADS" not in os.environ:  # a user's OMP_NUM_THREADS stands
        set_threads(threads_per_worker(workers))


@contextmanager
def cpu_threads(n: int):
    """Run a block with torch on `n` CPU threads (SVD compression: many small factorizations)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (ids or UUIDs)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def worker_gpu(slot: int, gpus: list[int] | None, visible: list[str]) -> str | None:
    """The one GPU `doit -n` worker `slot` trains on: round robin over `gpus` (indices into the
    visible devices) or over every visible device; None without a GPU."""
    pool = [visible[i] for i in gpus if 0 <= i < len(visible)] if gpus else visible
    return pool[slot % len(pool)] if pool else None


def claim_worker_gpu(gpus: list[int] | None) -> str | None:
    """In a `doit -n` worker, before CUDA starts: see only this worker's GPU, so N targets train at once
    on N GPUs. The main process (plain `doit`, `charfw train`) keeps every device."""
    import multiprocessing

    global _claimed
    if multiprocessing.parent_process() is None:
        return None
    if _claimed is None:   # a worker chooses once: CUDA keeps the devices it saw at its first task
        _claimed = (worker_gpu(worker_slot(), gpus, visible_gpus()),)
        if _claimed[0] is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = _claimed[0]
    return _claimed[0]


_claimed: tuple[str | None] | None = None
