"""Compression options: the one type the workspace schema, the CLI and compress_file share.

A frozen dataclass that checks itself, free of torch and pydantic: `charfw lora compress` starts
without pydantic's ~0.15 s of imports, and the workspace's `compress:` section is a pydantic view of
these same fields (charfw.config.models.CompressSettings, built from them), so each field, default
and rule is written once, here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal, get_args

from charfw.errors import CharfwError

Method = Literal["sv_ratio", "sv_fro", "sv_cumulative", "rank"]
DtypeName = Literal["fp16", "bf16", "fp32"]
RankRule = Literal["sd-scripts", "exact"]
METHODS, DTYPE_NAMES, RANK_RULES = get_args(Method), get_args(DtypeName), get_args(RankRule)


def check_compress_values(method: str, value: float | None, max_rank: int | None,
                          max_conv_rank: int | None, dtype: str, rank_rule: str = "sd-scripts") -> None:
    """The cross-field rules, with messages that say what the value means."""
    if method not in METHODS:
        raise CharfwError(f"unknown compression method {method!r}; use {', '.join(METHODS)}")
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CharfwError(f"{method} needs a finite parameter")
    if method == "sv_ratio" and value < 1:
        raise CharfwError(f"sv_ratio must be ≥ 1 (keep values ≥ largest / ratio), got {value:g}")
    if method in ("sv_fro", "sv_cumulative") and not 0 < value <= 1:
        raise CharfwError(f"{method} is a fraction in (0, 1], got {value:g}")
    if method == "rank" and (value < 1 or value != int(value)):
        raise CharfwError(f"rank must be a positive integer, got {value:g}")
    for name, v in (("max_rank", max_rank), ("max_conv_rank", max_conv_rank)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise CharfwError(f"{name.replace('_', '-')} must be an integer ≥ 1, got {v}")
    if dtype not in DTYPE_NAMES:
        raise CharfwError(f"unknown dtype {dtype!r}; use {', '.join(DTYPE_NAMES)}")
    if rank_rule not in RANK_RULES:
        raise CharfwError(f"unknown rank rule {rank_rule!r}; use {', '.join(RANK_RULES)}")


def _field(default, description: str | None = None, **constraints):
    """A field whose metadata the workspace schema turns into its pydantic Field (description, gt/ge)."""
    return field(default=default, metadata={"description": description, **constraints})


@dataclass(frozen=True)
class CompressOptions:
    """SVD resize of a LoRA (docs/rules.md §9): how ranks are chosen and how the result is stored.

    Checked as a whole on construction (a CharfwError with the rule's message).
    """

    method: Method = "sv_ratio"
    value: float = _field(16.0, "ratio; fraction for sv_fro/sv_cumulative; the rank for rank", gt=0)
    max_rank: int = _field(128, ge=1)
    max_conv_rank: int | None = _field(None, "separate cap for 3x3 convs", ge=1)
    dtype: DtypeName = "fp16"
    rank_rule: RankRule = _field(
        "sd-scripts", "sd-scripts: resize_lora.py's ranks (one more than the criterion); "
                      "exact: the smallest rank meeting it")
    sd_scripts_compat: bool = _field(False, "also store factors as sd-scripts does (S on up)")
    to_lora: bool = _field(False, "convert LoHa/LoKr to LoRA (else they are left as they are)")

    def __post_init__(self):
        check_compress_values(self.method, self.value, self.max_rank, self.max_conv_rank, self.dtype, self.rank_rule)
        for name in ("sd_scripts_compat", "to_lora"):
            if not isinstance(getattr(self, name), bool):
                raise CharfwError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def of(cls, **values) -> "CompressOptions":
        """Options from plain values (the CLI, tests); an unknown name is a CharfwError too."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise CharfwError(f"unknown compression option {unknown[0]!r}")
        return cls(**values)

    def rank_cap(self, conv3x3: bool) -> int:
        return self.max_conv_rank if conv3x3 and self.max_conv_rank else self.max_rank

    @property
    def param(self) -> float | int:
        """The value as the method reads it (an int rank for `rank`)."""
        return int(self.value) if self.method == "rank" else self.value
