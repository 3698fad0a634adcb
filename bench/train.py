"""Training speed and peak memory of the embedded trainer, and of kohya sd-scripts beside it.

    python bench/train.py                         # every case that fits this machine, one subprocess each
    python bench/train.py --case tiny-512 --steps 20
    python bench/train.py --sd-scripts ~/sd-scripts [--sd-scripts-python PY]   # GPU cases, side by side

CPU cases: the builtin tiny models (SD1.5 and SDXL topology) with the default settings
(C3Lier dim 128, AdamW, gradient checkpointing, colour/flip augmentation), drawn images,
batch 2 (SDXL: 1). CUDA cases: the full architectures with random weights, written once
as ordinary single-file checkpoints (`charfw model random`) that both trainers load:

- `sd15-512-fp16`: SD1.5, 512x512, batch 2, fp16, C3Lier dim 128 / alpha 64, text encoder
  trained, gradient checkpointing (the seed's settings);
- `sd15-512-fp16-8bit`: the same with AdamW 8-bit (the seed's optimizer; must not be slower);
- `sd15-512-b8`: the same at batch 8 without gradient checkpointing (what `batch_scale: auto`
  and `gradient_checkpointing: auto` choose on an 80 GB GPU): images/s;
- `sd15-512-b8-compiled`, `sd15-512-b8-graphs`: the same with compiled transformer blocks, and
  with those replayed as CUDA graphs (`compile: on`, `cuda_graphs: true`);
- `tiny-128-cuda`: the example's tiny model at 128 px on the GPU (the fixed per-step cost), and
  `tiny-128-cuda-graphs` with compiled blocks replayed as CUDA graphs, no checkpointing;
- `sdxl-1024`: SDXL, 1024x1024, batch 1, fp16, C3Lier dim 128, U-Net only with cached
  text-encoder outputs, gradient checkpointing, AdamW 8-bit where bitsandbytes works.

After `--warmup` steps (model load, first VAE encodes, compilation and allocator warm-up
excluded) a few steps run under torch.profiler: kernel launches per step and the share of the
time the GPU is busy (on a CPU: aten ops dispatched per step, the same overhead measure). Then
steps/s and images/s are timed over `--steps` steps (on a GPU both are rounded up to multiples
of the trainer's loss-read interval, where the step hook fires); peak memory is the process's
max RSS and, on GPU, torch.cuda.max_memory_allocated / max_memory_reserved. With `--sd-scripts`, each CUDA case
also runs sd-scripts' train_network.py (sdxl_train_network.py) on the same images (colour
augmentation off, latents cached, as sd-scripts requires for caching), the same checkpoint
and the same settings; its steps/s comes from the wall times of its per-step TensorBoard
scalars after the same warm-up, its peak from nvidia-smi. The tokenizers it needs are
charfw's shipped files, given through `--tokenizer_cache_dir`, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CASES = {
    "tiny-128": dict(model="builtin:tiny-sd15", size=128, device="cpu"),
    "tiny-512": dict(model="builtin:tiny-sd15", size=512, device="cpu"),
    "tiny-sdxl-128": dict(model="builtin:tiny-sdxl", size=128, device="cpu", family="sdxl", batch=1),
    "tiny-128-cuda": dict(model="builtin:tiny-sd15", size=128, device="cuda"),
    "sd15-512-fp16": dict(model="random:sd15", size=512, device="cuda"),
    "sd15-512-fp16-8bit": dict(model="random:sd15", size=512, device="cuda", settings=dict(optimizer="adamw8bit")),
    "sd15-512-b8": dict(model="random:sd15", size=512, device="cuda", batch=8,
                        settings=dict(gradient_checkpointing=False)),
    "sd15-512-b8-compiled": dict(model="random:sd15", size=512, device="cuda", batch=8, sd_scripts=False,
                                 settings=dict(gradient_checkpointing=False, compile="on")),
    "sd15-512-b8-graphs": dict(model="random:sd15", size=512, device="cuda", batch=8, sd_scripts=False,
                               settings=dict(gradient_checkpointing=False, compile="on", cuda_graphs=True)),
    "tiny-128-cuda-graphs": dict(model="builtin:tiny-sd15", size=128, device="cuda",
                                 settings=dict(gradient_checkpointing=False, compile="on", cuda_graphs=True)),
    "sdxl-1024": dict(model="random:sdxl", size=1024, device="cuda", family="sdxl", batch=1),
}
SDXL_TOKENIZERS = ("openai_clip-vit-large-patch14", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k")


def draw_dataset(root: Path, size: int, count: int = 6, *, resolution: int = 512, batch: int = 2,
                 color_aug: bool = True) -> Path:
    from PIL import Image, ImageDraw

    folder = root / f"bench girl_f{size:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("RGB", (size, size), (0, 0, 0))
        draw = ImageDraw.Draw(image)
        draw.ellipse((size // 8, size // 8, size * 7 // 8 - i, size * 7 // 8), fill=(40 * i, 200 - 20 * i, 120))
        image.save(folder / f"f0{i}.png")
        (folder / f"f0{i}.txt").write_text(f"bench, white background, from front, c{i}", encoding="utf-8")
    toml = root / ("data.toml" if color_aug else "data-no-color-aug.toml")
    toml.write_text(f"""[general]
color_aug = {str(color_aug).lower()}
enable_bucket = true
bucket_no_upscale = true
caption_extension = '.txt'
num_repeats = 4

[[datasets]]
resolution = [{resolution}, {resolution}]
batch_size = {batch}

[[datasets.subsets]]
image_dir = '{folder}'
class_tokens = 'bench girl'
flip_aug = true
""", encoding="utf-8")
    return toml


def random_checkpoint(arch: str, folder: Path) -> Path:
    """A full-size random-weight single-file checkpoint (fp16), written once per folder."""
    import torch

    from charfw.models.tiny import write_random

    path = folder / f"random-{arch}.safetensors"
    if not path.is_file():
        write_random(path, arch, dtype=torch.float16)
    return path


def family_of(spec: dict):
    """The case's model family: SD1.5 unless the case names another."""
    from charfw.families import family

    return family(spec.get("family", "sd15"))


def settings_for(case: str):
    from charfw.config.models import TrainSettings

    spec = CASES[case]
    cuda = spec["device"] == "cuda"   # the GPU cases: the seed's settings, checkpointing on as it sets it
    return TrainSettings(**{**dict(network="c3lier", dim=128, mixed_precision="fp16",
                                   gradient_checkpointing=True if cuda else "auto", save_every_n_steps=10_000,
                                   optimizer="adamw8bit" if family_of(spec).name == "sdxl" else "adamw",
                                   batch_scale=1),   # each case measures the batch it names
                            **spec.get("settings", {})})


def one(case: str, steps: int, warmup: int, work: Path) -> dict:
    import torch

    from charfw.request import TrainRequest
    from charfw.train.loop import LOSS_READ_EVERY, reset_accelerate, run

    spec = CASES[case]
    family = family_of(spec)
    cuda = spec["device"] == "cuda"
    if cuda:  # losses (and so this hook) come back LOSS_READ_EVERY steps at a time: measure on those bounds
        round_up = lambda n: -(-n // LOSS_READ_EVERY) * LOSS_READ_EVERY  # noqa: E731
        steps, warmup = round_up(steps), round_up(warmup)
    window = LOSS_READ_EVERY if cuda else 2            # steps profiled (before the timed ones)
    ticks: dict[int, float] = {}
    profile: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        toml = draw_dataset(tmp / "data", spec["size"], resolution=family.sample_size,
                            batch=spec.get("batch", 2))
        model = spec["model"]
        if model.startswith("random:"):
            model = str(random_checkpoint(model.split(":")[1], work))
        job = TrainRequest(name="bench", settings=settings_for(case), steps=warmup + window + steps,
                           dataset_toml=toml, model=model, output=tmp / "out.safetensors", state_dir=tmp / "state",
                           trigger_words=("bench",), progress=False, device=spec["device"], family=family)
        if cuda:
            torch.cuda.reset_peak_memory_stats()

        def tick(step: int, loss: float) -> None:
            if cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            if step == warmup + window:
                profile["prof"].__exit__(None, None, None)
                profile.update(launches_and_busy(profile.pop("prof"), window, now - ticks[warmup], cuda))
                now = time.perf_counter()   # reading the profile takes seconds: the timed steps start after it
            ticks[step] = now
            if step == warmup:
                profile["prof"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU] + (
                    [torch.profiler.ProfilerActivity.CUDA] if cuda else []))
                profile["prof"].__enter__()

        reset_accelerate()
        run(job, on_step=tick)
    first, last = warmup + window, warmup + window + steps
    result = {"case": case, "steps": steps, "threads": torch.get_num_threads(),
              "steps_per_s": steps / (ticks[last] - ticks[first]),
              "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **profile}
    result["images_per_s"] = result["steps_per_s"] * spec.get("batch", 2)
    if cuda:
        result["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["cuda_max_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    return result


def launches_and_busy(prof, steps: int, seconds: float, cuda: bool) -> dict:
    """Per step: kernel launches (CUDA) or aten ops dispatched (CPU), and the share of the time the GPU
    ran kernels (profiled steps run slower than timed ones; the counts are what matters)."""
    events = prof.events()
    if not cuda:
        return {"ops_per_step": sum(e.name.startswith("aten::") for e in events) / steps}
    launches = sum(e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC") for e in events)
    busy_us = sum(e.device_time_total for e in events if e.device_type.name == "CUDA")
    return {"kernel_launches_per_step": launches / steps, "gpu_busy_share": busy_us / 1e6 / seconds}


# --------------------------------------------------------------------------- sd-scripts side

def sd_scripts_args(case: str, checkpoint: Path, toml: Path, out: Path, tokenizers: Path, steps: int) -> list[str]:
    """sd-scripts' options for the same recipe (the seed's LoRA.bat line, sdpa attention, cached latents)."""
    from charfw.request import TrainRequest
    from charfw.sdscripts.command import train_args

    spec = CASES[case]
    req = TrainRequest(name="sds", settings=settings_for(case).model_copy(update={"attention": "sdpa",
                                                                                  "color_aug": False}),
                       steps=steps, dataset_toml=toml, model=str(checkpoint), output=out / "sds.safetensors",
                       state_dir=out, log_dir=out / "log", family=family_of(spec))
    drop = ("--save_every_n_steps", "--save_state", "--save_last_n_steps_state", "--persistent_data_loader_workers")
    args = [a for a in train_args(req) if not a.startswith(drop)]
    return args + [f"--tokenizer_cache_dir={tokenizers}", "--log_with=tensorboard"]


def tokenizer_cache(folder: Path) -> Path:
    """sd-scripts' --tokenizer_cache_dir, filled with charfw's shipped CLIP tokenizer (both SDXL names)."""
    from charfw.models.configs import TOKENIZER_DIR

    for name in SDXL_TOKENIZERS:
        if not (folder / name).is_dir():
            shutil.copytree(TOKENIZER_DIR, folder / name)
    return folder


def sd_scripts_rate(log_dir: Path, skip: int) -> float:
    """steps/s from the wall times of sd-scripts' longest per-step scalar, after `skip` steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    best = []
    for path in log_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            events = acc.Scalars(tag)
            best = events if len(events) > len(best) else best
    events = best[skip:]
    return (len(events) - 1) / (events[-1].wall_time - events[0].wall_time)


def gpu_memory_poll(stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        try:
            used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True, timeout=5).stdout.split()
            peak[0] = max(peak[0], max(int(u) for u in used))
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return
        stop.wait(0.2)


def run_sd_scripts(case: str, sd_scripts: Path, python: str, steps: int, warmup: int, work: Path) -> dict:
    spec = CASES[case]
    family = family_of(spec)
    checkpoint = random_checkpoint(spec["model"].split(":")[1], work)
    out = work / f"sds-{case}"
    shutil.rmtree(out, ignore_errors=True)
    toml = draw_dataset(out / "data", spec["size"], resolution=family.sample_size,
                        batch=spec.get("batch", 2), color_aug=False)
    args = sd_scripts_args(case, checkpoint, toml, out, tokenizer_cache(work / "tokenizers"), warmup + steps)
    stop, peak = threading.Event(), [0]
    poll = threading.Thread(target=gpu_memory_poll, args=(stop, peak), daemon=True)
    poll.start()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([python, str(sd_scripts / family.sd_scripts_script), *args], cwd=out, env=env,
                          capture_output=True, text=True)
    stop.set()
    poll.join()
    if proc.returncode:
        return {"case": case, "error": proc.stdout[-2000:] + proc.stderr[-2000:]}
    return {"case": case, "steps_per_s": sd_scripts_rate(out / "log", warmup), "nvidia_smi_peak_mib": peak[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--sd-scripts", type=Path, help="a kohya sd-scripts checkout: run it beside charfw (GPU)")
    parser.add_argument("--sd-scripts-python", default=sys.executable, help="the python that runs sd-scripts")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "charfw-bench",
                        help="folder for the random checkpoints (kept between runs)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(one(args.case, args.steps, args.warmup, args.work)))
        return
    import torch
    cases = [c for c, s in CASES.items() if s["device"] == "cpu" or torch.cuda.is_available()]
    print(f"{'case':<20} {'steps/s':>8} {'img/s':>7} {'max RSS MiB':>12} {'CUDA MiB':>9} {'reserved':>9} "
          f"{'launches/step':>13} {'GPU busy':>8}")
    for case in cases:
        extra = ["--threads", str(args.threads)] if args.threads else []
        proc = subprocess.run([sys.executable, __file__, "--case", case, "--steps", str(args.steps),
                               "--warmup", str(args.warmup), "--work", str(args.work), *extra],
                              capture_output=True, text=True)
        if proc.returncode:
            print(f"{case:<20} failed:\n{proc.stderr[-3000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        cuda = (f"{r['cuda_max_allocated_mib']:9.0f} {r['cuda_max_reserved_mib']:9.0f}"
                if "cuda_max_allocated_mib" in r else f"{'-':>9} {'-':>9}")
        launches = r.get("kernel_launches_per_step", r.get("ops_per_step", 0))
        busy = f"{r['gpu_busy_share']:8.0%}" if "gpu_busy_share" in r else f"{'-':>8}"
        print(f"{case:<20} {r['steps_per_s']:8.2f} {r['images_per_s']:7.2f} {r['max_rss_mib']:12.0f} {cuda} "
              f"{launches:13.0f} {busy}" + (f"  ({r['gpu']})" if "gpu" in r else
                                            f"  ({r['threads']} threads; CPU: aten ops/step)"), flush=True)
        if args.sd_scripts and CASES[case]["model"].startswith("random:") and CASES[case].get("sd_scripts", True):
            s = run_sd_scripts(case, args.sd_scripts.expanduser().resolve(), args.sd_scripts_python, args.steps,
                               args.warmup, args.work)
            if "error" in s:
                print(f"{'  sd-scripts':<20} failed:\n{s['error']}")
            else:
                print(f"{'  sd-scripts':<20} {s['steps_per_s']:8.2f} {'':>7} "
                      f"{'':>12} {s['nvidia_smi_peak_mib']:9.0f} (nvidia-smi)   charfw / sd-scripts: "
                      f"{r['steps_per_s'] / s['steps_per_s']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
