"""Offline SD1.5 model loading (single-file LDM checkpoints) and the builtin tiny model.

    from charfw.models import load_sd15, Sd15
    sd = load_sd15("model.safetensors", vae="vae.ckpt")   # or load_sd15("builtin:tiny-sd15")
    pipe = sd.pipeline()

Nothing is ever downloaded: architecture configs, the noise schedule and the CLIP
tokenizer ship in charfw/models/data/.
"""

from charfw.models.configs import default_cache_dir
from charfw.models.hashing import model_hash, model_sha256
from charfw.models.loader import BUILTIN_PREFIX, Sd15, load_sd15
from charfw.models.tiny import BUILTINS, builtin_path, write_tiny_sd15

__all__ = [
    "BUILTINS", "BUILTIN_PREFIX", "Sd15", "builtin_path", "default_cache_dir", "load_sd15",
    "model_hash", "model_sha256", "write_tiny_sd15",
]
