"""The embedded trainer: kohya-format LoRAs for SD1.5 from an sd-scripts dataset TOML.

    from charfw.request import TrainRequest
    from charfw.train import train_lora
    train_lora(TrainRequest(name="krnk", settings=TrainSettings(...), steps=1000, dataset_toml=...,
                            model="/models/model.safetensors", output=Path("out.safetensors"),
                            state_dir=Path("build/train/krnk.state"), trigger_words=("krnk",)))

Modules: dataset (TOML -> images), buckets (sd-scripts bucket rules), sampling (which
samples form each batch), augment (pixels), latents (VAE cache), network (adapters),
objective (loss), optim (optimizer/schedule), state (resume), metadata (ss_*/modelspec),
loop (the loop).
"""

import importlib

__all__ = ["train_lora", "training_device"]


def __getattr__(name: str):
    # Lazy: the pure rules in this package (buckets) are used where torch must not be imported.
    if name in __all__:
        return getattr(importlib.import_module("charfw.train.loop"), name)
    raise AttributeError(name)
