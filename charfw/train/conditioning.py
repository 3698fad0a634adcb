"""What the U-Net is conditioned on, per model family, as sd-scripts computes it.

- SD1.5: CLIP ViT-L's hidden state `-clip_skip` passed through its final layer norm (the
  last layer as it is for clip_skip 1): the (B, 77, 768) cross-attention context.
- SDXL: the penultimate hidden states of CLIP ViT-L and OpenCLIP bigG, no final layer norm,
  concatenated to (B, 77, 2048); plus bigG's pooled output (the final-normed state at
  <|endoftext|>, projected: (B, 1280)) and six size ids per sample (`size_ids`), which the
  U-Net embeds (256 sinusoidal features each) beside the pooled text.

When the text encoders are not trained (SDXL's default, sd-scripts'
`--cache_text_encoder_outputs`), every caption is encoded once, up front, one caption per
call (so a caption's conditioning never depends on which others share the dataset), and
the encoders leave the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from charfw.models.text import encode_sdxl, encode_text, tokenize
from charfw.train.transfer import to_device

Size = tuple[int, int]  # (width, height)


def size_ids(original: Size, bucket: Size, flipped: bool) -> tuple[int, int, int, int, int, int]:
    """SDXL's (original h, original w, crop top, crop left, target h, target w) for one sample.

    As sd-scripts computes them: `original` is the image file's size before any resize; the
    crop is where the image would sit if fitted *inside* the bucket, centred (sd-scripts'
    BucketManager.get_crop_ltrb, after Stability AI's preprocessing); a flipped sample's
    left is measured from the other side; the target is the bucket.
    """
    (ow, oh), (bw, bh) = original, bucket
    if bw / bh > ow / oh:          # the bucket is wider: fit the height
        rw, rh = bh * (ow / oh), bh
    else:                          # fit the width
        rw, rh = bw, bw / (ow / oh)
    left, top = (bw - rw) // 2, (bh - rh) // 2
    if flipped:
        left = bw - (left + rw)
    return oh, ow, int(top), int(left), bh, bw


@dataclass
class Condition:
    """One batch's conditioning: the context, and for SDXL the pooled text and the size ids."""

    context: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def unet_kwargs(self) -> dict:
        if self.pooled is None:
            return {}
        return {"added_cond_kwargs": {"text_embeds": self.pooled, "time_ids": self.time_ids}}


class TextConditioner:
    """Captions -> conditioning tensors for one model; cached per caption when the encoders are frozen."""

    def __init__(self, sd, clip_skip: int, trained: bool):
        self.sd, self.clip_skip, self.trained = sd, clip_skip, trained
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._ids: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    @property
    def sdxl(self) -> bool:
        """SDXL-style conditioning: two text encoders, the pooled embedding and size/crop ids."""
        return self.sd.family.pooled_conditioning

    def _tokens(self, caption: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if caption not in self._ids:
            ids2 = tokenize(self.sd.tokenizer_2, [caption]) if self.sdxl else None
            self._ids[caption] = (tokenize(self.sd.tokenizer, [caption]), ids2)
        return self._ids[caption]

    def _encode(self, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = [self._tokens(c) for c in captions]
        ids1 = to_device(torch.cat([i[0] for i in ids]), device)
        if not self.sdxl:
            return encode_text(self.sd.text_encoder, ids1, self.clip_skip), None
        ids2 = to_device(torch.cat([i[1] for i in ids]), device)
        return encode_sdxl(self.sd.text_encoder, self.sd.text_encoder_2, ids1, ids2)

    @torch.no_grad()
    def precompute(self, captions, device, autocast) -> None:
        """Encode every caption once (frozen encoders only), then move the encoders off the GPU."""
        for caption in dict.fromkeys(captions):
            if caption not in self._cache:
                with autocast():
                    context, pooled = self._encode([caption], device)
                self._cache[caption] = (context[0], None if pooled is None else pooled[0])
        for te in self.sd.text_encoders:
            te.to("cpu")

    def __call__(self, captions: list[str], device, sizes: list[tuple[int, ...]] | None = None) -> Condition:
        if self.trained:
            context, pooled = self._encode(captions, device)
        else:
            missing = [c for c in captions if c not in self._cache]
            if missing:
                raise KeyError(f"caption not precomputed: {missing[0]!r}")
            context = torch.stack([self._cache[c][0] for c in captions])
            pooled = torch.stack([self._cache[c][1] for c in captions]) if self.sdxl else None
        time_ids = None
        if self.sdxl:
            time_ids = to_device(torch.tensor(sizes, dtype=torch.float32), device)
        return Condition(context, pooled, time_ids)
