"""Random-weight models: the builtins (tiny-sd15, tiny-sdxl) and full-size random checkpoints.

`builtin:tiny-sd15` and `builtin:tiny-sdxl` have their family's exact topology and tensor
names at tiny widths (same levels, layers per block, transformer depths and text-encoder
depths, so exactly the same layers and LoRA modules exist; see data/tiny-*/). Each is
written once per cache dir as an ordinary single-file `.safetensors` checkpoint and then
read by the same loader as a user's model, so tests and dry runs exercise the real path.
`charfw model random sd15|sdxl` writes the full-size architectures the same way, for
benchmarks and for checking that other tools load charfw's files.

Every tensor is drawn from its own generator seeded by (seed, tensor name), so a file's
bytes depend only on the seed and the tensor names and shapes.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from charfw.errors import CharfwError
from charfw.families import Family, of_builtin
from charfw.fsutil import atomic_path
from charfw.models.build import checkpoint_tensors, empty_models, ldm_names
from charfw.models.configs import ARCHS, default_cache_dir
from charfw.rules.modelref import BUILTIN_MODELS, BUILTIN_PREFIX

BUILTINS = BUILTIN_MODELS
GENERATOR_VERSION = 1   # bump when the drawn values change: the cache file name changes with it
DEFAULT_SEED = 0


def builtin_path(name: str, cache_dir: str | Path | None = None) -> Path:
    """The cached checkpoint of a builtin model, written (atomically) on first use."""
    if name not in BUILTINS:
        raise CharfwError(f"unknown builtin model {name!r}; known: " + ", ".join(BUILTIN_PREFIX + b for b in BUILTINS),
                          field="model")
    path = default_cache_dir(cache_dir) / "models" / f"{name}-g{GENERATOR_VERSION}-s{DEFAULT_SEED}.safetensors"
    if not path.is_file():
        family = of_builtin(name)
        write_random(path, family.configs[1], seed=DEFAULT_SEED, flags=flag_tensors(family))
    return path


def flag_tensors(family: Family) -> tuple[str, ...]:
    """The marker tensors a checkpoint of this family variant carries (`v_pred`, `ztsnr`), as ComfyUI
    reads them."""
    flags = (family.checkpoint_flag,) if family.checkpoint_flag else ()
    return flags + (("ztsnr",) if family.zero_terminal_snr else ())


def _draw(name: str, shape: tuple[int, ...], live_key: str, seed: int) -> torch.Tensor:
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    module = live_key.rsplit(".", 2)[-2] if live_key.count(".") >= 1 else ""
    if len(shape) == 1:
        if ("norm" in module or "ln_" in module) and live_key.endswith(".weight"):
            return 1.0 + 0.05 * x          # norm scales near 1
        return 0.05 * x                    # biases, norm shifts
    if "embedding" in module:
        return 0.02 * x                    # token / position embeddings
    return x / math.sqrt(math.prod(shape[1:]))  # ~unit-variance activations


def random_state_dict(arch: str, seed: int = DEFAULT_SEED, dtype: torch.dtype = torch.float32
                      ) -> dict[str, torch.Tensor]:
    """A random-weight model of `arch` under its single-file checkpoint names."""
    if arch not in ARCHS:
        raise CharfwError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    models = empty_models(arch)
    names = ldm_names(models, arch)
    drawn: dict[str, dict[str, torch.Tensor]] = {}
    for part, model in models.items():
        drawn[part] = {}
        for key, param in model.state_dict().items():
            # name the draw by the checkpoint key where it is 1:1, else by the part and key
            name = names[part][key] if part in names else f"{part}/{key}"
            drawn[part][key] = _draw(name, tuple(param.shape), key, seed).to(dtype)
    return {k: v.contiguous() for k, v in checkpoint_tensors(drawn, arch, names).items()}


def write_random(path: str | Path, arch: str, seed: int = DEFAULT_SEED, dtype: torch.dtype = torch.float32,
                 flags: tuple[str, ...] = ()) -> Path:
    """Write a random-weight `arch` model as one single-file .safetensors checkpoint (atomically);
    `flags`: empty marker tensors (a v-prediction model's `v_pred`, `ztsnr`)."""
    from safetensors.torch import save_file

    path = Path(path)
    # One key only: safetensors writes metadata in hash-map order, so several keys would make
    # the file's bytes vary from run to run. (Seed and generator version are in the file name.)
    metadata = {"charfw_arch": arch}
    tensors = random_state_dict(arch, seed, dtype)
    tensors.update({flag: torch.zeros(0) for flag in flags})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path
