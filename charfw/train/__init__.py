"""The embedded trainer: kohya-format LoRAs for SD1.5 from an sd-scripts dataset TOML.

    from charfw.train import train_lora
    train_lora(dataset_toml=..., settings=TrainSettings(...), steps=1000, model="model.safetensors",
               vae=None, output=Path("out.safetensors"), state_dir=Path("build/state/x"),
               log_dir=None, name="krnk", trigger_words=["krnk"])

Modules: dataset (TOML -> images), buckets (sd-scripts bucket rules), sampling (which
samples form each batch), augment (pixels), latents (VAE cache), network (adapters),
objective (loss), optim (optimizer/schedule), state (resume), metadata (ss_*/modelspec),
loop (the loop).
"""

from charfw.train.loop import train_lora

__all__ = ["train_lora"]
