"""The training loop: `train_lora` turns a charfw.request.TrainRequest into a kohya LoRA file.

One process, or several under `accelerate launch` (process r trains batch
`step * world + r`; gradients are averaged across processes before each update).
Mixed precision via accelerate's autocast on GPU (the frozen base is stored in
fp16/bf16; the adapters' fp32 master weights are cast once per step, see train.network);
always fp32 on CPU. The transformer blocks may be compiled, and replayed as CUDA graphs
(train.compiled). `batch_scale` may grow the batches (fewer steps, same epochs). Every `save_every_n_steps` steps or
`save_every_minutes`, whichever comes first, and when a stop is requested (charfw.interrupt:
Ctrl-C, SIGTERM, a killed `doit`), the state is saved to `state_dir`; a rerun of the same run
resumes from it, and it is removed once the LoRA is written. Each step's noise and timesteps are drawn from a
generator seeded by (seed, step, process), so a resumed run continues exactly.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch

from charfw import interrupt
from charfw.errors import CharfwError, os_error_message
from charfw.fingerprint import file_record, fingerprint, resume_parts
from charfw.interrupt import Interrupted
from charfw.lora.io import write_safetensors
from charfw.lora.metadata import with_hashes
from charfw.models.loader import load_model
from charfw.process import worker_slot
from charfw.recipe import Recipe
from charfw.request import TrainRequest, progress_steps
from charfw.rules.compilation import cuda_graphs_blocker, use_compile
from charfw.rules.memory import auto_batch_scale, use_checkpointing
from charfw.rules.modelref import is_builtin
from charfw.rules.training import scaled_schedule
from charfw.sample import render
from charfw.train.batch import batch_loss, compute_dtype, prior_weights
from charfw.train.compiled import CompiledBlocks
from charfw.train.conditioning import TextConditioner, size_ids
from charfw.train.dataset import Dataset, load_datasets
from charfw.train.latents import LatentCache
from charfw.train.metadata import finish_metadata, model_hashes, training_metadata
from charfw.train.network import Network
from charfw.train.optim import build_optimizer, build_scheduler, logged_rates
from charfw.train.sampling import BatchPlan, bucket_counts
from charfw.train.state import clear_state, load_state, save_state, saved_state_info
from charfw.train.validation import Validator, held_out_sets

log = logging.getLogger("charfw.train")

LOSS_READ_EVERY = 16  # on a GPU, losses are read back (a sync) this many steps at a time
SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}


def train_lora(req: TrainRequest) -> Path:
    """Train a LoRA and write it (atomically) to `req.output`; returns that path.

    The in-process entry point: it forgets accelerate's state of any earlier training in this
    process (its settings may differ), then runs.
    """
    reset_accelerate()
    return run(req)


def training_device(req: TrainRequest) -> str:
    """'cpu' or 'cuda': where `run` trains this request."""
    return "cpu" if req.device == "cpu" or (req.device is None and not torch.cuda.is_available()) else "cuda"


def reset_accelerate() -> None:
    """accelerate keeps process-wide singletons; a new single-process training starts from none."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def run(req: TrainRequest, on_step: Callable[[int, float], None] | None = None, models=None) -> Path:
    """The training itself, with a hook called with (step number from 1, loss) for every step (on a GPU
    in groups of LOSS_READ_EVERY, when the losses are read back).

    `models`: an already loaded charfw.models.Sd to train on instead of loading `req.model`
    (benchmarks use random-weight SD1.5 models that exist only in memory).
    """
    if req.steps < 1:
        raise CharfwError("steps must be at least 1", field="steps")
    if req.init_weights is not None and req.init_weights.suffix != ".safetensors":
        raise CharfwError("init weights must be a .safetensors LoRA", file=req.init_weights, field="init_weights")
    logs_before = _event_files(req)
    accelerator = _accelerator(req)
    steps_done = [0]

    def counted(step: int, loss: float) -> None:
        steps_done[0] += 1
        if on_step is not None:
            on_step(step, loss)

    try:
        return _prepare_and_train(req, accelerator, models, counted)
    except BaseException:
        if not steps_done[0]:  # a run that failed before its first step leaves no empty TensorBoard log
            accelerator.end_training()
            for path in _event_files(req) - logs_before:
                path.unlink(missing_ok=True)
        raise
    finally:
        accelerator.end_training()


def _prepare_and_train(req: TrainRequest, accelerator, models, on_step) -> Path:
    """Load data and model, inject the adapters, train; the adapters are removed again afterwards."""
    settings, device = req.settings, accelerator.device
    datasets = load_datasets(req.dataset_toml, req.recipe.validation_views)
    if models is None:
        models = load_model(req.model, req.vae, family=req.family, dtype=torch.float32, device="cpu")
    sd = models
    free = free_memory(device)   # before the model moves there: rules.memory counts its weights
    base_dtype = compute_dtype(accelerator) or torch.float32
    for part in (sd.unet, *sd.text_encoders):
        part.to(device)
        if base_dtype != torch.float32:
            part.to(base_dtype)
    sd.vae.to(device)  # fp32: it runs once per cached sample, and fp16 SD VAEs can overflow

    with torch.random.fork_rng(devices=[]):  # the adapters' random init follows the seed, as in sd-scripts
        torch.manual_seed(settings.seed)
        network = Network(req.recipe.network, sd, req.recipe.train_text_encoder)
    if req.init_weights is not None:
        _load_init(network, req.init_weights)
    network.apply_to()
    network.pack()
    blocks = CompiledBlocks(sd.unet) if use_compile(settings.compile, device.type == "cuda", req.steps) else None
    try:
        return _train(req, accelerator, datasets, sd, network, on_step, free, blocks)
    finally:
        if blocks is not None:
            blocks.undo()
        network.restore()


def _train(job: TrainRequest, accelerator, datasets: list[Dataset], sd, network: Network, on_step,
           free: float | None = None, blocks: CompiledBlocks | None = None) -> Path:
    """The run: its batches sized to the memory there is, then every step from the saved state (if any)
    to the end, the LoRA written last."""
    device, world, main = accelerator.device, accelerator.num_processes, accelerator.is_main_process
    footprint = _footprint(datasets, sd, network)
    job, datasets, batch_scale = _scaled(job, datasets, sd, world, footprint, free, device)
    plan = BatchPlan(datasets, job.settings.seed)
    run = fingerprint(resume_parts(job, datasets, sd.path, sd.vae_path, world))
    checkpointing = _checkpointing(job, datasets, sd, footprint, free, blocks, device)
    conditioner = _conditioner(job, datasets, sd, accelerator)
    steps = StepRunner(job, sd, network, accelerator, conditioner, datasets, plan, blocks)
    saver = Checkpointer(job, run, network, steps, accelerator, batch_scale)
    start = saver.resume()
    epochs = _epochs(job.steps, world, plan.per_epoch)
    meta = _metadata(job, datasets, sd, steps.optimizer_name, accelerator, checkpointing, plan.per_epoch, epochs,
                     run, batch_scale) if main else None
    disk = job.state_dir / "latents" if job.settings.cache_latents == "disk" else None
    latents = LatentCache(sd.vae, datasets, seed=job.settings.seed, device=device, disk_dir=disk, vae_id=_vae_id(sd))
    losses = LossLog(job, accelerator, on_step, plan.per_epoch, start)
    validator = _validator(job, sd, network, accelerator, conditioner, datasets, disk) if main else None
    log.info("training %s: %d images (x repeats: %d), %d batches per epoch, steps %d-%d, %s dim %d alpha %g, "
             "%s, %d process(es)", job.name, sum(len(d.images) for d in datasets),
             sum(d.num_train_images for d in datasets), plan.per_epoch, start + 1, job.steps, network.spec.algo,
             network.spec.dim, network.spec.alpha, device, world)
    sample_at = set(progress_steps(job.settings.sample_every_n_steps, job.steps)) if job.progress_samples else set()

    saver.start_clock()
    for step in range(start, job.steps):
        if step == start and interrupt.requested():
            losses.close()
            raise Interrupted(f"interrupted: {job.name} stopped before step {step + 1}; rerun doit to "
                              + ("resume" if step else "train it"))
        losses.add(step + 1, *steps.run(step, latents))
        done, stop = step + 1, interrupt.requested()
        due, validate = saver.due(done), validator is not None and validator.due(done)
        losses.read(force=done == job.steps or due or stop or validate)
        if (done in sample_at and main) or validate:
            with blocks.eager() if blocks is not None else contextlib.nullcontext():
                if done in sample_at:
                    _progress_sample(job, sd, conditioner, device, done)
                if validate:
                    validator.report(done, losses.average)
        if done < job.steps and (due or stop):
            saver.save(done)
            if stop:
                losses.close()
                raise Interrupted(f"interrupted: {job.name} saved at step {done}; rerun doit to resume")
    losses.close()

    if main:
        saver.write_lora(meta, epochs)
        log.info("wrote %s (%d VAE encodes)", job.output, latents.encoded)
    accelerator.wait_for_everyone()
    return job.output


def _scaled(job: TrainRequest, datasets: list[Dataset], sd, world: int, footprint: dict, free: float | None,
            device) -> tuple[TrainRequest, list[Dataset], int]:
    """The request and datasets at the `batch_scale` that fits (or that the saved state began with)."""
    scale = _resumed_scale(job, datasets, _batch_scale(job, datasets, footprint, free, device), sd, world)
    grown, datasets = _grow_batches(job, datasets, scale)
    if scale > 1:
        log.info("batch_scale %s: batches x%d, %d steps instead of %d (same epochs), learning rate x%.3f",
                 job.settings.batch_scale, scale, grown.steps, job.steps, grown.settings.lr / job.settings.lr)
    return grown, datasets, scale


def _checkpointing(job: TrainRequest, datasets: list[Dataset], sd, footprint: dict, free: float | None,
                   blocks: CompiledBlocks | None, device) -> bool:
    """Gradient checkpointing on or off (rules.memory), and the compiled blocks as CUDA graphs where
    asked for and possible; returns whether checkpointing is on."""
    settings = job.settings
    checkpointing = use_checkpointing(settings.gradient_checkpointing, free, sd.family,
                                      max(d.batch_size for d in datasets), **footprint)
    if checkpointing:
        _enable_checkpointing(sd, job.recipe.train_text_encoder)
    if settings.gradient_checkpointing == "auto":
        log.info("gradient checkpointing (auto): %s", "on" if checkpointing else "off")
    if settings.cuda_graphs:
        blocker = cuda_graphs_blocker(blocks is not None, device.type == "cuda", checkpointing)
        if blocker is None:
            blocks.use_graphs()
        else:
            log.warning("cuda_graphs: true is not used: %s", blocker)
    return checkpointing


def _validator(job: TrainRequest, sd, network: Network, accelerator, conditioner: TextConditioner,
               datasets: list[Dataset], disk: Path | None) -> Validator | None:
    """The held-out images' loss, where the run holds any out (validation_views, validation_split)."""
    if not any(d.held_out for d in datasets):
        if job.recipe.validates:
            log.warning("%s: validation is set but no image is held out (no image of the views %s)", job.name,
                        ", ".join(job.recipe.validation_views) or "-")
        return None
    held = held_out_sets(datasets)
    latents = LatentCache(sd.vae, held, seed=job.settings.seed, device=accelerator.device, disk_dir=disk,
                          vae_id=_vae_id(sd))
    return Validator(job, sd, network, accelerator, conditioner, held, latents)


def _conditioner(job: TrainRequest, datasets: list[Dataset], sd, accelerator) -> TextConditioner:
    """The captions' conditioning; with frozen text encoders every caption (and the progress-sample
    prompts) encoded once, up front."""
    conditioner = TextConditioner(sd, job.settings.clip_skip, trained=job.recipe.train_text_encoder)
    if not job.recipe.train_text_encoder:
        samples = job.progress_samples
        extra = [samples.prompt, samples.settings.negative_prompt] if samples else []
        captions = [im.caption for d in datasets for im in (*d.images, *d.held_out)]
        conditioner.precompute(captions + extra, accelerator.device, accelerator.autocast)
    return conditioner


class StepRunner:
    """One optimizer step: the batch's forward and backward in the accelerator's precision (through the
    compiled blocks or their CUDA graphs where in use), gradients averaged over processes, clipped,
    and the update. Owns the optimizer and the learning-rate schedule (from the recipe)."""

    def __init__(self, job: TrainRequest, sd, network: Network, accelerator, conditioner: TextConditioner,
                 datasets: list[Dataset], plan: BatchPlan, blocks: CompiledBlocks | None):
        self.job, self.sd, self.network, self.accelerator = job, sd, network, accelerator
        self.conditioner, self.datasets, self.plan, self.blocks = conditioner, datasets, plan, blocks
        unet_params, te_params = network.param_groups()
        self.params = unet_params + te_params
        optimizer, self.optimizer_name = build_optimizer(job.recipe, unet_params, te_params, accelerator.device,
                                                         network.up_params(), network.param_factors())
        self.lr_scheduler = build_scheduler(job.recipe, optimizer)
        self.optimizer = accelerator.prepare_optimizer(optimizer)

    def run(self, step: int, latents: LatentCache) -> tuple[torch.Tensor, list[float], dict[str, float]]:
        """Step `step` (from 0): its loss, still on the device, the learning rates after it, and what
        max-norm regularization did (sd-scripts' `max_norm/*` scalars), if it is on."""
        acc, world, rank = self.accelerator, self.accelerator.num_processes, self.accelerator.process_index
        samples = self.plan[step * world + rank]
        images = [self.datasets[s.dataset].images[s.image] for s in samples]
        sizes = [size_ids(im.size, im.bucket, s.flip) for im, s in zip(images, samples)]
        x0 = latents.batch(samples)
        mask = latents.masks(samples, tuple(x0.shape[2:])) if self.job.recipe.masked_loss else None
        weights = prior_weights(self.datasets, samples, self.job.recipe.prior_loss_weight)
        loss = _step_with_fallback(self.blocks, self.optimizer, lambda: _step(
            self.sd, self.network, self.job.recipe, acc, x0, self.conditioner,
            [im.caption for im in images], sizes,
            torch.Generator().manual_seed(_step_seed(self.job.settings.seed, step, rank)), mask, weights))
        if world > 1:
            _average_gradients(acc, self.params)
        acc.clip_grad_norm_(self.params, self.job.recipe.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        extra = {}
        if self.job.recipe.scale_weight_norms:
            scaled, mean, largest = self.network.scale_weight_norms(self.job.recipe.scale_weight_norms)
            extra = {"max_norm/keys_scaled": scaled, "max_norm/average_key_norm": mean,
                     "max_norm/max_key_norm": largest}
        return loss, logged_rates(self.optimizer, self.lr_scheduler.get_last_lr()), extra

    def state(self) -> dict:
        """The optimizer's, the schedule's and the loss scaler's state, for a saved state."""
        return _optim_state(self.optimizer, self.lr_scheduler, self.accelerator)


class Checkpointer:
    """The run's resumable state: where the run starts (this run's saved state, if any), when it saves
    (every `save_every_n_steps` steps or `save_every_minutes`, whichever comes first, and before it
    stops for an interrupt), and the final write, which keeps the steps if the LoRA cannot be written."""

    def __init__(self, job: TrainRequest, run: str, network: Network, steps: StepRunner, accelerator,
                 batch_scale: int):
        self.job, self.run, self.network, self.steps = job, run, network, steps
        self.accelerator, self.batch_scale = accelerator, batch_scale
        self.last_save = time.monotonic()

    def start_clock(self) -> None:
        """`save_every_minutes` counts from the first step (not from loading and hashing)."""
        self.last_save = time.monotonic()

    def resume(self) -> int:
        """The step to continue from: 0, or that of this run's saved state (loaded)."""
        return _resume(self.job, self.run, self.network, self.steps.optimizer, self.steps.lr_scheduler,
                       self.accelerator)

    def due(self, done: int) -> bool:
        settings = self.job.settings
        return (done % settings.save_every_n_steps == 0
                or time.monotonic() - self.last_save >= settings.save_every_minutes * 60)

    def save(self, done: int) -> None:
        if self.accelerator.is_main_process:
            self._save(done)
            log.info("saved training state at step %d", done)
            if self.job.on_state_saved is not None:
                self.job.on_state_saved(done)
        self.accelerator.wait_for_everyone()
        self.last_save = time.monotonic()

    def _save(self, done: int) -> None:
        save_state(self.job.state_dir, self.run, done, self.network.kohya_state_dict(torch.float32),
                   self.steps.state(), batch_scale=self.batch_scale)

    def write_lora(self, meta: dict, epochs: int) -> None:
        """The finished LoRA, then the saved state removed. A failed write (a full disk, say) saves the
        finished run's state first where it can, so a rerun after freeing space only writes."""
        job = self.job
        try:
            _write_lora(job, self.network, meta, epochs)
        except OSError as exc:
            raise _unwritten(exc, job, lambda: self._save(job.steps)) from None
        clear_state(job.state_dir)


class LossLog:
    """The steps' losses: read back from the device a group at a time (on a GPU each read waits for it),
    then checked, logged to TensorBoard, averaged over about an epoch, passed to `on_step` and shown
    on the progress bar."""

    def __init__(self, job: TrainRequest, accelerator, on_step, per_epoch: int, start: int):
        from tqdm.auto import tqdm

        self.accelerator, self.on_step = accelerator, on_step
        self.window = collections.deque(maxlen=max(1, per_epoch))   # loss/average: over about one epoch
        self.pending: list[tuple[int, torch.Tensor, list[float], dict]] = []   # losses not read back yet
        self.read_every = loss_read_every(accelerator.device)
        self.bar = tqdm(total=job.steps, initial=start, desc=job.name, smoothing=0, dynamic_ncols=True,
                        position=worker_slot(),  # under `doit -n N`: one line per worker, not one overwritten line
                        disable=not (job.progress and accelerator.is_local_main_process))

    def add(self, done: int, loss: torch.Tensor, lrs: list[float], extra: dict | None = None) -> None:
        self.pending.append((done, loss, lrs, extra or {}))
        self.bar.update(1)

    def read(self, force: bool = False) -> None:
        """Read the pending losses in one transfer when a group is complete (or `force`), then report."""
        if not self.pending or not (force or len(self.pending) >= self.read_every):
            return
        values = torch.stack([loss for _, loss, _, _ in self.pending]).float().cpu().tolist()
        acc = self.accelerator
        for (done, _, lrs, extra), value in zip(self.pending, values):
            if not math.isfinite(value) and acc.scaler is None:  # (the fp16 scaler skips such steps)
                raise CharfwError(f"training diverged at step {done} (loss {value}); lower the learning rate",
                                  field="lr")
            self.window.append(value)
            average = sum(self.window) / len(self.window)
            if acc.trackers:
                scalars = {"loss/current": value, "loss/average": average, "lr/unet": lrs[0]}
                if len(lrs) > 1:
                    scalars["lr/textencoder"] = lrs[1]
                acc.log({**scalars, **extra}, step=done)
            if self.on_step is not None:
                self.on_step(done, value)
        self.bar.set_postfix(loss=f"{average:.4f}", refresh=False)
        self.pending.clear()

    @property
    def average(self) -> float | None:
        """The moving average of the losses read so far (about one epoch)."""
        return sum(self.window) / len(self.window) if self.window else None

    def close(self) -> None:
        self.bar.close()


def _unwritten(exc: OSError, job: TrainRequest, save: Callable[[], None]) -> CharfwError:
    """The LoRA could not be written: save the finished run's state if the disk allows, and say which happened."""
    try:
        save()
        after = f"the trained state is saved: after freeing space, rerun to write {job.output.name} without training again"
    except OSError:
        after = "the training state could not be saved either (a rerun resumes from the last saved state, if any)"
    return CharfwError(f"{os_error_message(exc)}; {after}")


def _footprint(datasets: list[Dataset], sd, network: Network) -> dict:
    """What rules.memory estimates a step's memory from, besides the batch size and free memory."""
    return dict(pixels=max(im.bucket[0] * im.bucket[1] for d in datasets for im in d.images),
                adapter_params=sum(p.numel() for p in network.parameters()),
                weight_bytes=sum(p.numel() * p.element_size() for m in (sd.unet, *sd.text_encoders)
                                 for p in m.parameters()))


def _batch_scale(job: TrainRequest, datasets: list[Dataset], footprint: dict, free: float | None, device) -> int:
    """The `batch_scale` that fits this run now (rules.memory.auto_batch_scale)."""
    return auto_batch_scale(job.settings.batch_scale, free, device.type == "cuda", job.family,
                            max(d.batch_size for d in datasets), checkpointing=job.settings.gradient_checkpointing,
                            largest_bucket=max(n for d in datasets for n in bucket_counts(d).values()), **footprint)


def _resumed_scale(job: TrainRequest, datasets: list[Dataset], scale: int, sd, world: int) -> int:
    """An `auto` run begun at a smaller scale (less free memory then) resumes at it, if the saved state
    is this run at that scale; otherwise `scale`."""
    started = saved_state_info(job.state_dir)
    smaller = started.get("batch_scale")
    if job.settings.batch_scale != "auto" or not isinstance(smaller, int) or not 1 <= smaller < scale:
        return scale
    same_run = fingerprint(resume_parts(*_grow_batches(job, datasets, smaller), sd.path, sd.vae_path, world)) \
        == started.get("run")
    return smaller if same_run else scale


def _grow_batches(job: TrainRequest, datasets: list[Dataset], scale: int) -> tuple[TrainRequest, list[Dataset]]:
    """The datasets at `scale` times their batch sizes, and the request with the steps, warm-up and learning
    rates that keep the epochs and the update noise (rules.training.scaled_schedule)."""
    if scale == 1:
        return job, datasets
    settings = job.settings
    grown = [dataclasses.replace(d, batch_size=d.batch_size * scale) for d in datasets]
    steps, warmup, factor = scaled_schedule(job.steps, settings.warmup_steps, BatchPlan(datasets, 0).per_epoch,
                                            BatchPlan(grown, 0).per_epoch)
    return dataclasses.replace(job, steps=steps, settings=settings.model_copy(update={
        "lr": settings.lr * factor, "text_encoder_lr": job.recipe.text_encoder_lr * factor, "warmup_steps": warmup})), grown


def _step_with_fallback(blocks: CompiledBlocks | None, optimizer, step: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`step()`, marked as a new step for CUDA graphs. A failure inside the graphs (a torch limitation,
    or memory their pool holds) drops them and runs the step again without: its data, noise and
    timesteps come from the step's seed, and nothing was updated yet, so it is the same step."""
    if blocks is None or not blocks.graphs:
        return step()
    blocks.step_begin()
    try:
        return step()
    except RuntimeError as exc:   # torch.OutOfMemoryError is one
        blocks.drop_graphs(exc)
        optimizer.zero_grad(set_to_none=True)
        return step()


def _step(sd, network: Network, recipe: Recipe, accelerator, x0: torch.Tensor, conditioner: TextConditioner,
          captions: list[str], sizes: list[tuple[int, ...]], gen: torch.Generator, mask: torch.Tensor | None = None,
          weights: torch.Tensor | None = None) -> torch.Tensor:
    """Forward and backward of one batch; returns the loss (a tensor: reading it would wait for the GPU)."""
    network.refresh(compute_dtype(accelerator))
    try:
        loss = batch_loss(sd, recipe, accelerator, x0, conditioner, captions, sizes, gen, mask, weights)
        accelerator.backward(loss)
    finally:
        network.release()
    return loss.detach()


@torch.no_grad()
def _progress_sample(job: TrainRequest, sd, conditioner: TextConditioner, device, step: int) -> None:
    """The first sample prompt, rendered with the adapters as they are now (the report's strip)."""
    s = job.progress_samples
    training = sd.unet.training
    sd.unet.eval()
    try:
        pos, neg = (conditioner([text], device, [(s.settings.height or 0,) * 6]) for text in
                    (s.prompt, s.settings.negative_prompt))
        dtype = next(sd.unet.parameters()).dtype
        embeds = {"prompt_embeds": pos.context.to(dtype), "negative_prompt_embeds": neg.context.to(dtype)}
        if pos.pooled is not None:
            embeds.update(pooled_prompt_embeds=pos.pooled.to(dtype), negative_pooled_prompt_embeds=neg.pooled.to(dtype))
        image = render.render(sd, [s.prompt], s.settings.seeds[:1], s.settings, embeds=[embeds])[0]
        render.save_png(image, s.folder / f"step-{step:06d}.png")
    finally:
        sd.unet.train(training)


def loss_read_every(device: torch.device) -> int:
    """Steps between loss reads: each read waits for the GPU; on a CPU it costs nothing."""
    return 1 if device.type == "cpu" else LOSS_READ_EVERY


def free_memory(device: torch.device) -> float | None:
    """Free bytes where the training runs: the GPU's, or the machine's available RAM; None if unknown."""
    try:
        if device.type == "cuda":
            return float(torch.cuda.mem_get_info(device)[0])
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None


def _enable_checkpointing(sd, text_encoders: bool) -> None:
    sd.unet.enable_gradient_checkpointing()
    sd.unet.train()  # transformers checkpoints only in training mode; CLIP and the U-Net have no dropout
    if not text_encoders:  # frozen encoders run once per caption, without gradients
        return
    for te in sd.text_encoders:
        if hasattr(te, "activation_checkpointing_enable"):
            te.activation_checkpointing_enable()
        else:
            te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        te.train()


def _resume(job: TrainRequest, run: str, network: Network, optimizer, lr_scheduler, accelerator) -> int:
    """Load this run's saved state, if any; returns the step to continue from."""
    saved = load_state(job.state_dir, run)
    if saved is None:
        return 0
    network.load_adapter_state(saved.network)
    optimizer.load_state_dict(saved.optim["optimizer"])
    lr_scheduler.load_state_dict(saved.optim["scheduler"])
    if accelerator.scaler is not None and saved.optim.get("scaler"):
        accelerator.scaler.load_state_dict(saved.optim["scaler"])
    log.info("resuming %s from step %d", job.name, saved.step)
    return saved.step


def _accelerator(job: TrainRequest):
    from accelerate import Accelerator
    from accelerate.utils import is_tensorboard_available

    cpu = training_device(job) == "cpu"
    mixed = "no" if cpu else job.settings.mixed_precision
    tensorboard = job.log_dir is not None and is_tensorboard_available()
    if job.log_dir is not None and not tensorboard:
        log.info("tensorboard is not installed: no training logs in %s", job.log_dir)
    accelerator = Accelerator(mixed_precision=mixed, cpu=cpu, log_with="tensorboard" if tensorboard else None,
                              project_dir=str(job.log_dir) if tensorboard else None)
    if tensorboard:
        accelerator.init_trackers(job.name)
    return accelerator


def _event_files(req: TrainRequest) -> set[Path]:
    return set((req.log_dir / req.name).glob("events.out.tfevents.*")) if req.log_dir is not None else set()


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int.from_bytes(hashlib.sha256(f"charfw-step/{seed}/{step}/{rank}".encode()).digest()[:8], "little") >> 1


def _average_gradients(accelerator, params) -> None:
    """Mean of the gradients over processes, in one collective (all ranks have the same None grads)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _optim_state(optimizer, lr_scheduler, accelerator) -> dict:
    state = {"optimizer": optimizer.state_dict(), "scheduler": lr_scheduler.state_dict()}
    if accelerator.scaler is not None:
        state["scaler"] = accelerator.scaler.state_dict()
    return state


def _load_init(network: Network, path: Path) -> None:
    from safetensors.torch import load_file
    if not path.is_file():
        raise CharfwError("init weights file not found", file=path, field="init_weights")
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise CharfwError(f"not a readable safetensors file ({exc})", file=path, field="init_weights") from None
    n = network.load_kohya(tensors, path)
    log.info("initialised %d of %d modules from %s", n, len(network.names), path)


def _vae_id(sd) -> str:
    return f"{file_record(sd.path)}/{file_record(sd.vae_path)}"


def _metadata(job: TrainRequest, datasets, sd, optimizer_name: str, accelerator, checkpointing: bool,
              per_epoch: int, epochs: int, run: str, batch_scale: int) -> dict:
    model_name = job.model if is_builtin(job.model) else (sd.path.name if sd.path else str(job.model))
    meta = training_metadata(
        recipe=job.recipe, datasets=datasets, optimizer_name=optimizer_name,
        mixed_precision=accelerator.mixed_precision, checkpointing=checkpointing, model_name=model_name, model_hashes=model_hashes(sd.path),
        vae_name=sd.vae_path.name if sd.vae_path else None, vae_hashes=model_hashes(sd.vae_path),
        name=job.name, trigger_words=list(job.trigger_words), started_at=_now(), batches_per_epoch=per_epoch,
        epochs=epochs, session_id=int(run[:8], 16))
    meta["charfw_batch_scale"] = str(batch_scale)
    return meta


def _now() -> float:
    """The time recorded in metadata: SOURCE_DATE_EPOCH when set (reproducible builds), else now."""
    fixed = os.environ.get("SOURCE_DATE_EPOCH", "")
    return float(fixed) if fixed.isdigit() else time.time()


def _epochs(steps: int, world: int, per_epoch: int) -> int:
    """Epochs begun by `steps` steps of `world` processes (what sd-scripts records as ss_epoch)."""
    return (steps * world - 1) // per_epoch + 1


def _write_lora(job: TrainRequest, network: Network, meta: dict, epochs: int) -> None:
    tensors = network.kohya_state_dict(SAVE_DTYPES[job.settings.save_precision])
    meta = with_hashes(tensors, finish_metadata(meta, steps=job.steps, epoch=epochs, finished_at=_now()))
    write_safetensors(job.output, tensors, meta)
