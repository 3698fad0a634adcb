"""VAE latents of training samples, encoded once and cached (memory or disk).

A sample is (image content, bucket, resize, flip, colour variant): flip and colour
are applied to the pixels *before* encoding (flipping a latent is not the same as
encoding a flipped image), and each combination is its own cache entry. Entries are
encoded lazily, on first use, so caching never costs more VAE passes than encoding
every step would. Disk entries live under `<state dir>/latents/`, named by a hash of
the VAE's identity and the sample's description, so any change makes a new entry.

The latent is a draw from the VAE's posterior (as sd-scripts caches it), made
deterministic by seeding it from the entry's key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from charfw.fsutil import atomic_path
from charfw.train.augment import color_params, load_mask, load_sample
from charfw.train.dataset import Dataset
from charfw.train.sampling import Sample


class LatentCache:
    def __init__(self, vae, datasets: list[Dataset], *, seed: int, device, disk_dir: Path | None, vae_id: str):
        self.vae, self.datasets, self.seed, self.device = vae, datasets, seed, torch.device(device)
        self.disk_dir, self.vae_id = disk_dir, vae_id
        self.scale = float(getattr(vae.config, "scaling_factor", 0.18215))
        self._memory: dict[str, torch.Tensor] = {}
        self._masks: dict[tuple, torch.Tensor] = {}
        self.encoded = 0   # VAE passes made (for tests and logs)

    def _describe(self, s: Sample) -> tuple[str, dict]:
        image = self.datasets[s.dataset].images[s.image]
        desc = {"vae": self.vae_id, "image": image.sha256, "bucket": image.placement.bucket,
                "resized": image.placement.resized, "flip": s.flip,
                "color": color_params(self.seed, image.sha256, s.color), "seed": self.seed}
        key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()
        return key, desc

    def masks(self, samples: tuple[Sample, ...], latent_size: tuple[int, int]) -> torch.Tensor | None:
        """(B, 1, h, w) loss weights from the images' alpha where their subset has `alpha_mask`, ones for the
        rest; None when no sample's subset has it. Kept per (image, placement, flip)."""
        subsets = [self.datasets[s.dataset].subsets[self.datasets[s.dataset].images[s.image].subset] for s in samples]
        if not any(sub.alpha_mask for sub in subsets):
            return None
        out = []
        for s, sub in zip(samples, subsets):
            image = self.datasets[s.dataset].images[s.image]
            key = (image.sha256, image.placement, s.flip, latent_size)
            if key not in self._masks:
                self._masks[key] = (load_mask(image.path, image.placement, s.flip, latent_size) if sub.alpha_mask
                                    else torch.ones(1, *latent_size))
            out.append(self._masks[key])
        return torch.stack(out).to(self.device)

    def batch(self, samples: tuple[Sample, ...]) -> torch.Tensor:
        """(B, 4, h, w) scaled latents on the training device."""
        keys = [self._describe(s)[0] for s in samples]
        missing = [(k, s) for k, s in zip(keys, samples) if k not in self._memory and not self._from_disk(k)]
        if missing:
            self._encode(missing)
        return torch.stack([self._memory[k] for k in keys]).to(self.device)

    def _disk_path(self, key: str) -> Path | None:
        return self.disk_dir / f"{key}.safetensors" if self.disk_dir is not None else None

    def _from_disk(self, key: str) -> bool:
        path = self._disk_path(key)
        if path is None or not path.is_file():
            return False
        from safetensors.torch import load_file
        try:
            self._memory[key] = load_file(str(path))["latent"].to(self.device)
        except Exception:  # a damaged entry is re-encoded
            return False
        return True

    @torch.no_grad()
    def _encode(self, todo: list[tuple[str, Sample]]) -> None:
        """One image per VAE call: a latent must not depend on which samples shared its batch."""
        vae_param = next(self.vae.parameters())
        for key, s in dict(todo).items():
            image = self.datasets[s.dataset].images[s.image]
            pixels = load_sample(image.path, image.placement, s.flip, color_params(self.seed, image.sha256, s.color))
            dist = self.vae.encode(pixels[None].to(vae_param.device, vae_param.dtype)).latent_dist
            gen = torch.Generator(device="cpu").manual_seed(int(key[:15], 16))
            noise = torch.randn(dist.mean.shape[1:], generator=gen).to(dist.mean.device, dist.mean.dtype)
            latent = ((dist.mean[0] + dist.std[0] * noise) * self.scale).float()
            self._memory[key] = latent.to(self.device)
            self.encoded += 1
            path = self._disk_path(key)
            if path is not None:
                from safetensors.torch import save_file
                with atomic_path(path) as tmp:
                    save_file({"latent": latent.cpu().contiguous()}, str(tmp))
