"""Build-overhead benchmark: a workspace of N characters, timed no-op `doit` and `charfw check`.

    python bench/workspace.py [--characters 100] [--keep DIR]

Each character is a copy of the example's krnk (15 face images, 15 outfit images, a face
and an outfit target). The data stages are built for real; trained LoRAs are stood in for
by a one-module LoRA whose run key is recorded through charfw's own API, so `doit` sees
every target finished and a no-op run measures only charfw's and doit's overhead. Prints:

    tasks, file deps, `doit list` (task loading), no-op `doit` without and with trained
    targets (and with charfw's file caches removed), and `charfw check` cold (no caches: every
    image header read), first after a build, and warm (nothing changed).

Run it against another checkout with PYTHONPATH=that/checkout to compare side by side.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DODO = '''from pathlib import Path
from charfw.pipeline import load_tasks
globals().update(load_tasks(Path(__file__).parent))
'''


def make_workspace(ws: Path, n: int) -> None:
    chars = ws / "characters"
    chars.mkdir(parents=True)
    (ws / "charfw.yaml").write_text("model: builtin:tiny-sd15\nsizes:\n  face: [128, 192]\n  body: [128, 192]\n"
                                    "sample:\n  enabled: false\n")   # the sample stage would render every target
    (ws / "dodo.py").write_text(DODO)
    src = ROOT / "characters" / "krnk"
    for i in range(n):
        name = f"c{i:03d}"
        shutil.copytree(src, chars / name, ignore=shutil.ignore_patterns("*.yaml"))
        (chars / name / "character.yaml").write_text(
            f"keyword: {name}\nclass: girl\noutfits:\n  sf:\n    keyword: {name}sf\n    init: face\n")


def drop_caches(ws: Path) -> None:
    """Remove what charfw remembers about files (build/.*.json), as a fresh clone or a new machine has it."""
    for path in (ws / "build").glob(".*.json"):
        path.unlink()


def timed(cmd: list[str], cwd: Path, repeat: int = 3, before=None) -> float:
    """Best of `repeat` wall-clock runs (the machine is shared); `before` runs untimed before each."""
    best = float("inf")
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        best = min(best, time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return best


STAND_IN = '''
import sys, torch
from pathlib import Path
from safetensors.torch import save_file
ws = Path(sys.argv[1])
from charfw.workspace import load_project
from charfw.layout import Layout
from charfw.fingerprint import run_key
layout = Layout(load_project(ws))
reqs = [layout.train_request(t) for t in layout.project.trained_targets()]
name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"   # block IN01: FACE and BODY keep it
tensors = {f"{name}.lora_down.weight": torch.full((1, 320), 0.01), f"{name}.lora_up.weight": torch.full((320, 1), 0.01),
           f"{name}.alpha": torch.tensor(1.0)}
for req in sorted(reqs, key=lambda r: r.init_weights is not None):  # faces first: outfits hash them
    req.output.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(req.output), {"ss_network_dim": "1"})
    req.key_file.write_text(run_key(req) + "\\n")
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--characters", type=int, default=100)
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it")
    args = parser.parse_args()
    tmp = None if args.keep else tempfile.TemporaryDirectory()
    ws = args.keep or Path(tmp.name) / "ws"
    doit = [sys.executable, "-m", "doit"]
    charfw = [sys.executable, "-m", "charfw.cli"]
    try:
        if not (ws / "dodo.py").exists():
            make_workspace(ws, args.characters)
        t0 = time.perf_counter()
        check_cold = timed(charfw + ["check", "-C", str(ws)], ws, repeat=1, before=lambda: drop_caches(ws))
        check_warm = timed(charfw + ["check", "-C", str(ws)], ws)
        drop_caches(ws)
        subprocess.run(doit + ["-n", "2", "images", "captions", "dataset"], cwd=ws, check=True, capture_output=True)
        check_after_build = timed(charfw + ["check", "-C", str(ws)], ws, repeat=1)
        listing = subprocess.run(doit + ["list", "--all", "--quiet"], cwd=ws, check=True, capture_output=True,
                                 text=True).stdout.split()
        untrained = timed(doit + ["images", "captions", "dataset"], ws)
        subprocess.run([sys.executable, "-c", STAND_IN, str(ws)], cwd=ws, check=True)
        subprocess.run(doit + ["-n", "2"], cwd=ws, check=True, capture_output=True)  # merge + compress once
        load = timed(doit + ["list"], ws)
        trained = timed(doit, ws)
        trained_cold = timed(doit, ws, repeat=1, before=lambda: drop_caches(ws))
        deps = sum(1 for _ in (ws / "build" / "images").rglob("*.*"))
        print(f"workspace: {args.characters} characters, {len(listing)} tasks, {deps} prepared files "
              f"(set up in {time.perf_counter() - t0:.0f} s)")
        print(f"charfw check, cold (no build/ caches)      {check_cold:6.2f} s")
        print(f"charfw check, first after a build          {check_after_build:6.2f} s")
        print(f"charfw check, warm (nothing changed)        {check_warm:6.2f} s")
        print(f"doit list (load tasks)                     {load:6.2f} s")
        print(f"no-op doit, data stages only               {untrained:6.2f} s")
        print(f"no-op doit, with trained targets           {trained:6.2f} s")
        print(f"no-op doit, trained, caches removed        {trained_cold:6.2f} s")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
