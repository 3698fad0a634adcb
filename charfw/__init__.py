"""charfw: character LoRAs for Stable Diffusion as a declarative, incremental build."""

__version__ = "0.1.0"
