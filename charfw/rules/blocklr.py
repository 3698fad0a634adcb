"""Block-wise learning rates and dims, as sd-scripts' networks.lora takes them (docs/rules.md §6b).

The U-Net's LoRA modules fall into sd-scripts' blocks (the family's LrBlocks): SD1.5 has 25
(IN00..IN11, the mid block, OUT00..OUT11), SDXL 23 (its time embedding, IN00..IN08, the three
parts of the middle block, OUT00..OUT08, its output layers). `down_lr_weight`/`up_lr_weight` are
a list per side or a curve (`cosine`, `sine`, `linear`, `reverse_linear`, `zeros`, optionally
`+base`), `mid_lr_weight` the middle's values; a short list is filled with 1, a weight not above
`block_lr_zero_threshold` becomes 0, and a block at 0 gets no modules at all (sd-scripts removes
them). `block_dims`/`block_alphas` (and `conv_block_dims`/`conv_block_alphas` for 3x3 convs) give
every block its own rank and alpha; rank 0 leaves a block out. Text-encoder modules keep the
network's dim and learning rate. Pure functions: the trainer, the sd-scripts command line and the
schema's checks call them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from charfw.families.family import Family
from charfw.lora.blocks import block_of

BLOCK_OPTIONS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_dims", "block_alphas", "conv_block_dims",
                 "conv_block_alphas")   # TrainSettings' block-wise options
CURVES = ("cosine", "sine", "linear", "reverse_linear", "zeros")
CURVE = re.compile(rf"^({'|'.join(CURVES)})(?:\+([0-9]*\.?[0-9]+))?$")
_MIDDLE = re.compile(r"^lora_unet_middle_block_(\d+)_")


class BlockError(ValueError):
    """A block-wise option that does not fit the family; `field` names it."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def curve(spec: str, n: int, what: str = "down_lr_weight") -> list[float]:
    """A named curve over `n` blocks, as sd-scripts draws it (`name+base` adds base to every value)."""
    m = CURVE.match(spec)
    if not m:
        raise BlockError(f"{spec!r} is not a list or one of {', '.join(CURVES)} (optionally +base, e.g. sine+0.5)",
                         what)
    name, base = m[1], float(m[2] or 0)
    steps = [i / (n - 1) for i in range(n)]
    values = {"cosine": [math.sin(math.pi * s / 2) for s in reversed(steps)],
              "sine": [math.sin(math.pi * s / 2) for s in steps],
              "linear": steps, "reverse_linear": list(reversed(steps)), "zeros": [0.0] * n}[name]
    return [v + base for v in values]


def _side(value, n: int, what: str) -> list[float]:
    values = curve(value, n, what) if isinstance(value, str) else [float(v) for v in value]
    if len(values) > n:
        raise BlockError(f"{what} has {len(values)} values; this model family has {n} blocks there", what)
    return values + [1.0] * (n - len(values))   # sd-scripts fills a short list with 1


def lr_weights(family: Family, down=None, mid=None, up=None, threshold: float = 0.0) -> tuple[float, ...] | None:
    """The learning-rate factor of every block in sd-scripts' order (None: no block-wise rates)."""
    if down is None and mid is None and up is None:
        return None
    b = family.lr_blocks
    mids = None if mid is None else ([mid] if isinstance(mid, (int, float)) else mid)
    weights = []
    for value, n, what in ((down, b.down, "down_lr_weight"), (mids, b.mid, "mid_lr_weight"), (up, b.down, "up_lr_weight")):
        given = value is not None   # sd-scripts applies the threshold to the lists given, not to the 1s it fills in
        weights += [w if w > threshold else 0.0 for w in _side(value, n, what)] if given else [1.0] * n
    return tuple([1.0] * b.ends + weights + [1.0] * b.ends)


@dataclass(frozen=True)
class BlockRanks:
    """Rank and alpha per block (sd-scripts' order) for the linear/1x1 modules and for 3x3 convs."""

    dims: tuple[int, ...]
    alphas: tuple[float, ...]
    conv_dims: tuple[int, ...]
    conv_alphas: tuple[float, ...]

    def of(self, index: int, spatial: bool) -> tuple[int, float]:
        return (self.conv_dims[index], self.conv_alphas[index]) if spatial else (self.dims[index], self.alphas[index])


def block_ranks(family: Family, dim: int, alpha: float, conv_dim: int, conv_alpha: float, dims=None, alphas=None,
                conv_dims=None, conv_alphas=None, weights: tuple[float, ...] | None = None) -> BlockRanks | None:
    """Every block's rank and alpha (None: the network's everywhere), as sd-scripts resolves them: a list not
    given is the network's value everywhere (3x3 convs: conv_dim/conv_alpha); blocks whose learning-rate
    factor is 0 get rank 0, as sd-scripts removes them."""
    if all(v is None for v in (dims, alphas, conv_dims, conv_alphas, weights)):
        return None
    n = family.lr_blocks.total
    for name, values in (("block_dims", dims), ("block_alphas", alphas), ("conv_block_dims", conv_dims),
                         ("conv_block_alphas", conv_alphas)):
        if values is not None and len(values) != n:
            raise BlockError(f"{name} has {len(values)} values; {family.label} has {n} blocks ({_order(family)})",
                             name)

    def full(values, default):
        return tuple(values) if values is not None else (default,) * n

    d, cd = full(dims, dim), full(conv_dims, conv_dim)
    if weights is not None:
        d = tuple(0 if w == 0 else v for v, w in zip(d, weights))
        cd = tuple(0 if w == 0 else v for v, w in zip(cd, weights))
    return BlockRanks(d, tuple(map(float, full(alphas, alpha))), cd, tuple(map(float, full(conv_alphas, conv_alpha))))


def _order(family: Family) -> str:
    b = family.lr_blocks
    ends = "time embedding, " if b.ends else ""
    return (f"{ends}IN00..IN{b.down - 1:02d}, {'middle 0-' + str(b.mid - 1) if b.mid > 1 else 'the mid block'}, "
            f"OUT00..OUT{b.down - 1:02d}{', output layers' if b.ends else ''}")


def block_index(name: str, family: Family) -> int | None:
    """sd-scripts' block of one U-Net module name (None: a text-encoder module, outside every block)."""
    block = block_of(name)
    if block is None or block == "BASE":
        return None
    b = family.lr_blocks
    if block.startswith("IN"):
        return b.ends + int(block[2:])
    if block.startswith("OUT"):
        return b.ends + b.down + b.mid + int(block[3:])
    middle = _MIDDLE.match(name)
    return b.ends + b.down + (int(middle[1]) if middle and b.mid > 1 else 0)
