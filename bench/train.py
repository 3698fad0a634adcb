"""Training speed and peak memory of the embedded trainer.

    python bench/train.py            # every case that fits this machine, one subprocess each
    python bench/train.py --case tiny-512 --steps 20

CPU: builtin:tiny-sd15 with the default settings (C3Lier dim 128, AdamW, gradient
checkpointing, colour/flip augmentation), drawn images at 128 and 512 px, batch 2.
CUDA (when available): the full SD1.5 architecture with random weights from the
shipped configs, 512x512, batch 2, fp16 mixed precision, C3Lier dim 128, gradient
checkpointing. Steps/s is measured after `--warmup` steps (model load, first VAE
encodes and allocator warm-up excluded); peak memory is the process's max RSS and,
on GPU, torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "tiny-128": dict(model="builtin:tiny-sd15", size=128, device="cpu"),
    "tiny-512": dict(model="builtin:tiny-sd15", size=512, device="cpu"),
    "sd15-512-fp16": dict(model="random:sd15", size=512, device="cuda"),
}


def draw_dataset(root: Path, size: int, count: int = 6) -> Path:
    from PIL import Image, ImageDraw

    folder = root / f"bench girl_f{size:04d}"
    folder.mkdir(parents=True)
    for i in range(count):
        image = Image.new("RGB", (size, size), (0, 0, 0))
        draw = ImageDraw.Draw(image)
        draw.ellipse((size // 8, size // 8, size * 7 // 8 - i, size * 7 // 8), fill=(40 * i, 200 - 20 * i, 120))
        image.save(folder / f"f0{i}.png")
        (folder / f"f0{i}.txt").write_text(f"bench, white background, from front, c{i}", encoding="utf-8")
    toml = root / "data.toml"
    toml.write_text(f"""[general]
color_aug = true
enable_bucket = true
bucket_no_upscale = true
caption_extension = '.txt'
num_repeats = 4

[[datasets]]
resolution = [512, 512]
batch_size = 2

[[datasets.subsets]]
image_dir = '{folder.name}'
class_tokens = 'bench girl'
flip_aug = true
""", encoding="utf-8")
    return toml


def random_sd15():
    """SD1.5 architecture (shipped configs) with random weights, built in memory: no checkpoint needed."""
    import torch
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    from charfw.models import Sd
    from charfw.models.build import empty_models
    from charfw.models.configs import TOKENIZER_DIR, scheduler_config

    parts = empty_models("sd15")   # parameters on the meta device, buffers real
    unet, vae, te = parts["unet"], parts["vae"], parts["text_encoder"]
    gen = torch.Generator().manual_seed(0)
    for model in (unet, vae, te):
        weights = {}
        for name, p in model.named_parameters():
            if p.dim() == 1:
                is_scale = "norm" in name and name.endswith("weight")
                weights[name] = torch.ones(p.shape) if is_scale else torch.zeros(p.shape)
            else:
                weights[name] = torch.randn(p.shape, generator=gen) * (1 / p[0].numel()) ** 0.5
        model.load_state_dict(weights, strict=False, assign=True)
        assert not any(p.is_meta for p in model.parameters())
        model.eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
    return Sd(unet=unet, vae=vae, text_encoder=te, tokenizer=tokenizer,
                noise_scheduler=DDPMScheduler.from_config(scheduler_config()), name="random:sd15")


def one(case: str, steps: int, warmup: int) -> dict:
    import torch

    from charfw.config.models import TrainSettings
    from charfw.request import TrainRequest
    from charfw.train.loop import reset_accelerate, run

    spec = CASES[case]
    settings = TrainSettings(network="c3lier", dim=128, mixed_precision="fp16", gradient_checkpointing=True,
                             save_every_n_steps=10_000)
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        toml = draw_dataset(tmp / "data", spec["size"])
        models = random_sd15() if spec["model"].startswith("random:") else None
        job = TrainRequest(name="bench", settings=settings, steps=warmup + steps, dataset_toml=toml,
                           model=spec["model"], output=tmp / "out.safetensors", state_dir=tmp / "state",
                           trigger_words=("bench",), progress=False, device=spec["device"])
        if spec["device"] == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def tick(step: int, loss: float) -> None:
            if spec["device"] == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

        reset_accelerate()
        run(job, on_step=tick, models=models)
    measured = times[warmup:]
    result = {"case": case, "steps": steps, "threads": torch.get_num_threads(),
              "steps_per_s": (len(measured) - 1) / (measured[-1] - measured[0]),
              "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if spec["device"] == "cuda":
        result["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(one(args.case, args.steps, args.warmup)))
        return
    import torch
    cases = [c for c, s in CASES.items() if s["device"] == "cpu" or torch.cuda.is_available()]
    print(f"{'case':<16} {'steps/s':>8} {'s/step':>8} {'max RSS MiB':>12} {'CUDA MiB':>9}")
    for case in cases:
        extra = ["--threads", str(args.threads)] if args.threads else []
        proc = subprocess.run([sys.executable, __file__, "--case", case, "--steps", str(args.steps),
                               "--warmup", str(args.warmup), *extra], capture_output=True, text=True)
        if proc.returncode:
            print(f"{case:<16} failed:\n{proc.stderr[-3000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        cuda = f"{r['cuda_max_allocated_mib']:9.0f}" if "cuda_max_allocated_mib" in r else f"{'-':>9}"
        print(f"{case:<16} {r['steps_per_s']:8.2f} {1 / r['steps_per_s']:8.2f} {r['max_rss_mib']:12.0f} {cuda}"
              + (f"  ({r['gpu']})" if "gpu" in r else f"  ({r['threads']} threads)"))


if __name__ == "__main__":
    main()
