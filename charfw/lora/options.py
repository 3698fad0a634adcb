"""Compression options: the one type the workspace schema, the CLI and compress_file share.

Torch-free, so a workspace validates its `compress:` sections without importing torch.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from charfw.errors import CharfwError

METHODS = ("sv_ratio", "sv_fro", "sv_cumulative", "rank")
DTYPE_NAMES = ("fp16", "bf16", "fp32")


def check_compress_values(method: str, value: float | None, max_rank: int | None,
                          max_conv_rank: int | None, dtype: str) -> None:
    """The cross-field rules, with messages that say what the value means."""
    if method not in METHODS:
        raise CharfwError(f"unknown compression method {method!r}; use {', '.join(METHODS)}")
    if value is None or not math.isfinite(value):
        raise CharfwError(f"{method} needs a finite parameter")
    if method == "sv_ratio" and value < 1:
        raise CharfwError(f"sv_ratio must be ≥ 1 (keep values ≥ largest / ratio), got {value:g}")
    if method in ("sv_fro", "sv_cumulative") and not 0 < value <= 1:
        raise CharfwError(f"{method} is a fraction in (0, 1], got {value:g}")
    if method == "rank" and (value < 1 or value != int(value)):
        raise CharfwError(f"rank must be a positive integer, got {value:g}")
    for name, v in (("max_rank", max_rank), ("max_conv_rank", max_conv_rank)):
        if v is not None and v < 1:
            raise CharfwError(f"{name.replace('_', '-')} must be ≥ 1, got {v}")
    if dtype not in DTYPE_NAMES:
        raise CharfwError(f"unknown dtype {dtype!r}; use {', '.join(DTYPE_NAMES)}")


class CompressOptions(BaseModel):
    """SVD resize of a LoRA (docs/rules.md §9): how ranks are chosen and how the result is stored.

    Validated as a whole unless the validation context says ``partial`` (one level of a
    workspace may set only `value`; the merged settings are checked).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["sv_ratio", "sv_fro", "sv_cumulative", "rank"] = "sv_ratio"
    value: float = Field(16, gt=0, description="ratio; fraction for sv_fro/sv_cumulative; the rank for rank")
    max_rank: int = Field(128, ge=1)
    max_conv_rank: int | None = Field(None, ge=1, description="separate cap for 3x3 convs")
    dtype: Literal["fp16", "bf16", "fp32"] = "fp16"
    rank_rule: Literal["sd-scripts", "exact"] = Field(
        "sd-scripts", description="sd-scripts: resize_lora.py's ranks (one more than the criterion); "
                                  "exact: the smallest rank meeting it")
    sd_scripts_compat: bool = Field(False, description="also store factors as sd-scripts does (S on up)")
    to_lora: bool = Field(False, description="convert LoHa/LoKr to LoRA (else they are left as they are)")

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo):
        if not (info.context and info.context.get("partial")):
            try:
                check_compress_values(self.method, self.value, self.max_rank, self.max_conv_rank, self.dtype)
            except CharfwError as exc:
                raise ValueError(exc.message) from None
        return self

    @classmethod
    def of(cls, **values) -> "CompressOptions":
        """Options from plain values (the CLI, tests), bad ones as a CharfwError with the rule's message."""
        check_compress_values(values.get("method", "sv_ratio"), values.get("value", 16.0),
                              values.get("max_rank", 128), values.get("max_conv_rank"),
                              values.get("dtype", "fp16"))
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise CharfwError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None

    def rank_cap(self, conv3x3: bool) -> int:
        return self.max_conv_rank if conv3x3 and self.max_conv_rank else self.max_rank

    @property
    def param(self) -> float | int:
        """The value as the method reads it (an int rank for `rank`)."""
        return int(self.value) if self.method == "rank" else self.value
