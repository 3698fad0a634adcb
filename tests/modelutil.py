"""Loading the builtin test models by family, for tests across folders."""

from pathlib import Path

from charfw.families import SD15, SDXL


def load_sd15(model, vae=None, **kwargs):
    """load_model, refusing anything but an SD1.5-family checkpoint."""
    from charfw.models import load_model
    return load_model(model, vae, family=SD15, **kwargs)


def load_sdxl(model, vae=None, **kwargs):
    from charfw.models import load_model
    return load_model(model, vae, family=SDXL, **kwargs)


def write_tiny_sd15(path, seed: int = 0) -> Path:
    from charfw.models import write_random
    return write_random(path, "tiny-sd15", seed)
