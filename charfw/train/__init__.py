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

from charfw.train.loop import train_lora, training_device

__all__ = ["train_lora", "training_device"]
