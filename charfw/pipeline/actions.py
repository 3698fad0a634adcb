"""What each doit task does, as plain module-level functions (doit -n pickles them to workers)."""

from __future__ import annotations

import functools
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from doit.exceptions import TaskFailed

from charfw.backends import train as run
from charfw.config.models import CompressSettings
from charfw.dataset.images import remove_stale, write_set
from charfw.dataset.plan import Prepared
from charfw.errors import CharfwError, os_error_message
from charfw.families import Family
from charfw.fingerprint import digest_cache
from charfw.fsutil import atomic_path, write_text
from charfw.interrupt import Interrupted, deferred_signals, die_with_parent
from charfw.process import claim_worker_gpu, cpu_threads, parallel_share
from charfw.report.charts import LOSS_TAGS, read_scalars, render_curves
from charfw.report.sheets import render_sheet
from charfw.request import TrainRequest


def reported(func):
    """Turn CharfwError and OS failures into doit's TaskFailed: one clear line instead of a traceback.

    CHARFW_DEBUG=1 lets them through as they are, traceback and all.
    """
    @functools.wraps(func)
    def run(*args, **kwargs):
        if os.environ.get("CHARFW_DEBUG") == "1":
            return func(*args, **kwargs)
        try:
            func(*args, **kwargs)
        except CharfwError as exc:
            return TaskFailed(str(exc))
        except OSError as exc:
            return TaskFailed(os_error_message(exc))
        return None
    return run


@reported
def images(out_dir: str, items: list[Prepared], background: tuple[int, int, int], keep_alpha: bool = False) -> None:
    write_set(Path(out_dir), items, background, keep_alpha)


@reported
def captions(out_dir: str, texts: dict[str, str]) -> None:
    root = Path(out_dir)
    for rel, text in texts.items():
        path = root / rel
        if not path.exists() or path.read_text(encoding="utf-8") != text + "\n":
            write_text(path, text + "\n")
    remove_stale(root, {tuple(rel.split("/")) for rel in texts}, ".txt")


@contextmanager
def outdated_on_failure(*outputs: str):
    """When a finishing step fails, its old outputs (and what was made from them) no longer match the
    settings: remove them and say so, rather than leave a stale file in dist/ that looks finished."""
    try:
        yield
    except (CharfwError, OSError) as exc:
        removed = [p for p in outputs if Path(p).exists()]
        if not removed:
            raise
        for p in removed:
            Path(p).unlink()
        text = str(exc) if isinstance(exc, CharfwError) else os_error_message(exc)
        raise CharfwError(f"{text} (removed the outdated {', '.join(removed)})") from None


@reported
def merge(src: str, dst: str, weights, presets: dict, downstream: tuple[str, ...] = ()) -> None:
    """`weights` as the manifest says them (a preset's name is what the file records), `presets` the
    workspace's own."""
    from charfw.lora.merge import merge_file

    with outdated_on_failure(dst, *downstream):
        merge_file(src, dst, weights, presets)


@reported
def compress(src: str, dst: str, settings: CompressSettings) -> None:
    from charfw.lora.compress import compress_file

    with outdated_on_failure(dst):
        if not settings.enabled:
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
            return
        with cpu_threads(1):
            compress_file(src, dst, settings.options(), progress=True, threads=parallel_share())


@reported
def generate(gen, view, prompt: str, paths: list[str], model: str, vae: str | None, family, nets: list[str],
             clip_skip: int) -> None:
    """One view's candidates: rendered over its templates, each saved with its parameters (keyed to RGBA
    with `alpha`)."""
    from charfw.generate import views as gv
    from charfw.generate.render import parameters, render_view, save_candidate
    from charfw.sample.render import save_png

    s = gen.settings
    resolved = s.model_copy(update={"controlnets": [u.model_copy(update={"model": n})
                                                    for u, n in zip(s.controlnets, nets)]})
    controls = gv.control_images(gen, view, family)
    for i, control in enumerate(controls):   # what the ControlNets were given, beside the candidates (report)
        save_png(control, Path(paths[0]).with_name(gv.control_name(view, i)))
    seeds = [s.seed + n for n in range(len(paths))]
    images = render_view(model, vae, family, resolved, prompt, controls, seeds, clip_skip)
    for image, seed, path in zip(images, seeds, paths):
        save_candidate(image, Path(path), parameters(prompt, s, seed, image.size, model),
                       gen.background if s.alpha else None, s.alpha_tolerance)


@reported
def train(req: TrainRequest, build_dir: str) -> None:
    """In a `doit -n` worker or doit itself: stop cleanly (state saved) on Ctrl-C, SIGTERM or doit's death."""

    die_with_parent()
    gpu = None if req.cluster is not None else claim_worker_gpu(req.settings.gpus)   # Ray picks a node's GPU
    if gpu is not None:
        print(f"charfw: {req.name} trains on GPU {gpu} (CUDA_VISIBLE_DEVICES)", file=sys.stderr, flush=True)
    try:
        with deferred_signals():
            run(req, digest_cache(Path(build_dir)))
    except Interrupted as exc:
        import multiprocessing

        if exc.signal == "SIGTERM" or multiprocessing.parent_process() is not None:
            # doit was killed, or is stopping its `-n` workers: nobody waits for this task's result,
            # and a worker that went back to doit's job queue would wait there forever
            print(f"charfw: {exc.message}", file=sys.stderr, flush=True)
            os._exit(143 if exc.signal == "SIGTERM" else 130)
        raise


def clean_training(req: TrainRequest) -> None:
    """`doit clean train:X` removes the LoRA, its run key and any saved state."""
    for path in (req.output, req.key_file):
        path.unlink(missing_ok=True)
    shutil.rmtree(req.state_dir, ignore_errors=True)


@reported
def text_file(path: str, text: str) -> None:
    write_text(path, text)


def refused(path: str) -> TaskFailed:
    return TaskFailed(f"refusing to write outside the workspace's build and dist folders: {path}")


def blocked(reason: str) -> TaskFailed:
    return TaskFailed(f"not built yet: {reason}")


@reported
def contact_sheet(rows, background: tuple[int, int, int], out: str) -> None:

    render_sheet(rows, background, Path(out))


@reported
def report_page(path: str, text: str, placeholders: tuple[str, ...] = ()) -> None:
    """Write one page; images the charts stage writes after training get a placeholder until then,
    so the page never links to a missing file and its text does not change when they arrive."""

    for image in placeholders:
        if not Path(image).exists():
            render_curves({}, [], "not trained yet", Path(image))
    write_text(path, text)


@reported
def training_charts(name: str, log_dir: str, loras: dict[str, str], outs: dict[str, str]) -> None:
    """Loss and learning-rate curves from the run's log; each LoRA file's per-block chart."""
    from charfw.lora.inspect import inspect_file, plot_blocks

    scalars = read_scalars(Path(log_dir)) if Path(log_dir).is_dir() else {}
    render_curves(scalars, LOSS_TAGS, f"{name}: loss", Path(outs["loss"]))
    render_curves(scalars, ["lr/unet", "lr/textencoder"], f"{name}: learning rate", Path(outs["lr"]))
    for which, path in loras.items():
        report = inspect_file(path)
        report["file"] = f"{which}: {Path(path).name}, {Path(path).stat().st_size / 2**20:.1f} MiB"  # the title
        plot_blocks(report, Path(outs[f"blocks-{which}"]))   # written atomically


@reported
def samples(model: str, vae: str | None, family: Family, lora: str, prompts: list[str], settings, clip_skip: int,
            outs: list[str], cluster=None) -> None:
    """One image per (prompt, seed) with the finished LoRA at strength 1 (on the cluster where one is set)."""
    job = {"model": model, "vae": vae, "family": family, "lora": lora, "prompts": prompts, "settings": settings,
           "clip_skip": clip_skip, "outs": outs}
    _render("samples", job, cluster)


@reported
def xy_grid(model: str, vae: str | None, family: Family, lora: str, prompt: str, settings, clip_skip: int,
            rows: dict[str, dict[str, float]], out: str, cluster=None) -> None:
    """Block weights (rows) x strength (columns) of the trained LoRA, one prompt and seed."""
    job = {"model": model, "vae": vae, "family": family, "lora": lora, "prompts": [prompt], "settings": settings,
           "clip_skip": clip_skip, "rows": rows, "outs": [out]}
    _render("grid", job, cluster)


def _render(kind: str, job: dict, cluster) -> None:
    from charfw.sample import jobs

    if cluster is None:
        jobs.RENDERS[kind](**job)
        return
    from charfw.cluster.driver import render_remote

    with deferred_signals():
        render_remote(cluster, kind, job)
