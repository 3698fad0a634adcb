"""builtin:tiny-sd15 - a random-weight model with SD1.5's exact topology and module names, tiny widths.

It is written once per cache dir as an ordinary single-file LDM-layout
`.safetensors` checkpoint and then read by the same loader as a user's model,
so tests and dry runs exercise the real loading path. Widths keep SD1.5's
ratios (U-Net 1:2:4:4, VAE 1:2:4:4) so that exactly the same layers exist
(e.g. which residual blocks have a shortcut conv); see data/tiny-sd15/.

Every tensor is drawn from its own generator seeded by (seed, tensor name), so
the file's bytes depend only on the seed and the tensor names and shapes.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch

from charfw.errors import CharfwError
from charfw.fsutil import atomic_path
from charfw.models.build import empty_models, ldm_names
from charfw.models.configs import default_cache_dir
from charfw.rules.modelref import BUILTIN_MODELS, BUILTIN_PREFIX

TINY = "tiny-sd15"
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
        write_tiny_sd15(path, seed=DEFAULT_SEED)
    return path


def _draw(name: str, shape: tuple[int, ...], live_key: str, seed: int) -> torch.Tensor:
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    module = live_key.rsplit(".", 2)[-2] if live_key.count(".") >= 1 else ""
    if len(shape) == 1:
        if "norm" in module and live_key.endswith(".weight"):
            return 1.0 + 0.05 * x          # norm scales near 1
        return 0.05 * x                    # biases, norm shifts
    if "embedding" in module:
        return 0.02 * x                    # token / position embeddings
    return x / math.sqrt(math.prod(shape[1:]))  # ~unit-variance activations


def tiny_state_dict(seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """The tiny model's tensors under their single-file LDM checkpoint names."""
    unet, vae, text_encoder = empty_models(TINY)
    tensors: dict[str, torch.Tensor] = {}
    for model, names in zip((unet, vae, text_encoder), ldm_names(unet, vae, text_encoder)):
        for key, param in model.state_dict().items():
            ldm = names[key]
            t = _draw(ldm, tuple(param.shape), key, seed)
            if model is vae and ".mid.attn_1." in ldm and t.dim() == 2:
                t = t[:, :, None, None]    # LDM stores the VAE attention projections as 1x1 convs
            tensors[ldm] = t.contiguous()
    return tensors


def write_tiny_sd15(path: str | Path, seed: int = DEFAULT_SEED) -> Path:
    """Write the tiny model as one LDM-layout .safetensors file (atomically); return its path."""
    from safetensors.torch import save_file

    path = Path(path)
    # One key only: safetensors writes metadata in hash-map order, so several keys would make
    # the file's bytes vary from run to run. (Seed and generator version are in the file name.)
    metadata = {"charfw_arch": TINY}
    tensors = tiny_state_dict(seed)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path
