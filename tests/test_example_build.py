"""The example workspace builds end to end with the README's build command, offline, on CPU."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open
from wsutil import ROOT, copy_example, executed, run_doit

from charfw.families import SD15, SDXL
from charfw.lora.keys import lora_module_specs

TARGETS = ("krnk", "krnksf", "tyank", "tyankps", "krnksf_tyankps")


def readme_build_command() -> str:
    """The quick start's first command: install, then `.venv/bin/doit` in the clone."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```sh\n(.*?)```", readme, re.S).group(1)
    return block.strip().splitlines()[0]


def modules(path: Path) -> set[str]:
    with safe_open(path, "pt") as f:
        return {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in f.keys()}


@pytest.mark.slow
def test_example_builds_end_to_end(tmp_path):
    command = readme_build_command()
    assert command.endswith("&& .venv/bin/doit -n 2")  # the build is doit in the clone
    ws = copy_example(tmp_path)
    settings = ws / "charfw.yaml"   # every stage as shipped, training a few steps instead of 100
    assert "  steps: 100" in settings.read_text()
    settings.write_text(settings.read_text().replace("  steps: 100", "  steps: 4"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CHARFW_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "doit", "-n", "2"], cwd=ws, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in TARGETS:
        assert (ws / "dist" / f"{name}.safetensors").is_file(), name
    # trained C3Lier LoRAs carry exactly SD1.5's 350 modules; merge/compress keep a subset
    assert modules(ws / "build/train/krnk.safetensors") == set(list(lora_module_specs(SD15, conv3x3=True)))
    assert modules(ws / "dist/krnk.safetensors") < set(list(lora_module_specs(SD15, conv3x3=True)))
    with safe_open(ws / "dist/krnksf.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.trigger_phrase"] == "krnksf, krnk" and meta["ss_network_dim"] == "Dynamic"
    assert executed(run_doit(ws)) == set()


@pytest.mark.slow
def test_sdxl_example_builds_end_to_end(tmp_path):
    """examples/sdxl: the same characters (the root example's images) on builtin:tiny-sdxl, every stage."""
    import shutil

    from charfw.lora.keys import lora_module_specs

    shutil.copytree(ROOT / "characters", tmp_path / "characters")           # the images its manifests point at
    ws = tmp_path / "examples" / "sdxl"
    shutil.copytree(ROOT / "examples" / "sdxl", ws, ignore=shutil.ignore_patterns("build", "dist", ".doit.db*"))
    settings = ws / "charfw.yaml"
    assert "  steps: 60" in settings.read_text()
    settings.write_text(settings.read_text().replace("  steps: 60", "  steps: 2"))
    groups = ws / "characters/groups.yaml"
    groups.write_text(groups.read_text().replace("steps: 60", "steps: 2"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CHARFW_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "doit", "-n", "2"], cwd=ws, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in TARGETS:
        assert (ws / "dist" / f"{name}.safetensors").is_file(), name
    # U-Net only (SDXL's default): sd-scripts' 788 SDXL C3Lier modules, LDM-style names
    unet = {n for n in lora_module_specs(SDXL, conv3x3=True) if n.startswith("lora_unet_")}
    assert modules(ws / "build/train/krnk.safetensors") == unet and len(unet) == 788
    assert modules(ws / "dist/krnk.safetensors") < unet
    with safe_open(ws / "dist/krnksf_tyankps.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["charfw_arch"] == "sdxl"
    tomls = list((ws / "build").rglob("*.toml"))   # 128/192 px images are SDXL's LOW class: trained at 1024
    assert tomls and all("resolution = [1024, 1024]" in t.read_text() for t in tomls)
    proc = subprocess.run([sys.executable, "-m", "doit"], cwd=ws, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and executed(proc) == set(), proc.stdout
