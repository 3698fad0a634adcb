"""What each doit task does, as plain module-level functions (doit -n pickles them to workers)."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

from doit.exceptions import TaskFailed

from charfw.dataset.images import remove_stale, write_set
from charfw.dataset.plan import Prepared
from charfw.errors import CharfwError
from charfw.fsutil import atomic_path, write_text


def reported(func):
    """Turn CharfwError into doit's TaskFailed: one clear line instead of a traceback."""
    @functools.wraps(func)
    def run(*args, **kwargs):
        try:
            func(*args, **kwargs)
        except CharfwError as exc:
            return TaskFailed(str(exc))
        return None
    return run


@reported
def images(out_dir: str, items: list[Prepared], background: tuple[int, int, int]) -> None:
    write_set(Path(out_dir), items, background)


@reported
def captions(out_dir: str, texts: dict[str, str]) -> None:
    root = Path(out_dir)
    for rel, text in texts.items():
        path = root / rel
        if not path.exists() or path.read_text(encoding="utf-8") != text + "\n":
            write_text(path, text + "\n")
    remove_stale(root, {tuple(rel.split("/")) for rel in texts}, ".txt")


@reported
def merge(src: str, dst: str, weights: dict[str, float]) -> None:
    from charfw.lora.merge import merge_file

    merge_file(src, dst, weights)


@reported
def compress(src: str, dst: str, settings: dict) -> None:
    from charfw.lora.compress import compress_file

    settings = dict(settings)  # the task's own dict also feeds its config_changed digest
    if not settings.pop("enabled"):
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        return
    compress_file(src, dst, settings.pop("method"), settings.pop("value"), progress=True, **settings)


def share_cpu() -> None:
    """In a `doit -n N` worker, don't let every worker spawn a thread per core.

    Oversubscribed CPU training runs ~100x slower. doit does not tell tasks N, so a
    worker takes half the cores (right for -n 2); CHARFW_THREADS sets the count.
    """
    import multiprocessing

    wanted = os.environ.get("CHARFW_THREADS")
    if wanted or multiprocessing.current_process().name != "MainProcess":
        import torch

        torch.set_num_threads(int(wanted) if wanted else max(1, (os.cpu_count() or 1) // 2))


@reported
def train(job) -> None:
    from charfw.build.training import run

    share_cpu()
    run(job)


def clean_training(job) -> None:
    """`doit clean train:X` removes the LoRA, its run key and any saved state."""
    for path in (job.output, job.key_file):
        path.unlink(missing_ok=True)
    shutil.rmtree(job.state_dir, ignore_errors=True)


@reported
def text_file(path: str, text: str) -> None:
    write_text(path, text)
