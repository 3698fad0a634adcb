"""The embedded trainer: kohya-format LoRAs from an sd-scripts dataset TOML, for every family.

    from charfw.request import TrainRequest
    from charfw.train import train_lora
    train_lora(TrainRequest(name="krnk", settings=TrainSettings(...), steps=1000, dataset_toml=...,
                            model="/models/model.safetensors", output=Path("out.safetensors"),
                            state_dir=Path("build/train/krnk.state"), family=SD15, trigger_words=("krnk",)))

Modules: dataset (TOML -> images, bucketed by charfw.rules.buckets), sampling (which samples
form each batch), augment (pixels), latents (VAE cache), conditioning (text and size ids per
family), network (adapters), objective (loss), optim (optimizer/schedule from the recipe),
state (resume), metadata (ss_*/modelspec), compiled (compiled blocks, CUDA graphs), loop (the loop).
"""

from charfw.train.loop import train_lora, training_device

__all__ = ["train_lora", "training_device"]
