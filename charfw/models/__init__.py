"""Offline SD1.5 and SDXL model loading (single-file checkpoints) and the builtin tiny models.

    from charfw.models import load_model, Sd
    sd = load_model("model.safetensors", vae="vae.ckpt")   # or load_model("builtin:tiny-sdxl")
    sd.family                                              # its charfw.families.Family, from the file
    pipe = sd.pipeline()

Nothing is ever downloaded: architecture configs, the noise schedule and the CLIP
tokenizer ship in charfw/models/data/.
"""

import importlib

# Lazy, so the build's up-to-date checks (model hashes) do not pay for importing torch.
_EXPORTS = {"default_cache_dir": "configs", "model_hash": "hashing", "model_sha256": "hashing",
            "Sd": "loader", "load_model": "loader",
            "BUILTINS": "tiny", "builtin_path": "tiny", "write_random": "tiny"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"charfw.models.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
