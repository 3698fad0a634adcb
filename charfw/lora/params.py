"""Compression parameters checked without importing torch, so a workspace loads fast."""

from __future__ import annotations

import math

from charfw.errors import CharfwError

METHODS = ("sv_ratio", "sv_fro", "sv_cumulative", "rank")
DTYPE_NAMES = ("fp16", "bf16", "fp32")


def check_compress_params(method: str, param: float | None, max_rank: int | None,
                          max_conv_rank: int | None, dtype: str) -> None:
    if method not in METHODS:
        raise CharfwError(f"unknown compression method {method!r}; use {', '.join(METHODS)}")
    if param is None or not math.isfinite(param):
        raise CharfwError(f"{method} needs a finite parameter")
    if method == "sv_ratio" and param < 1:
        raise CharfwError(f"sv_ratio must be ≥ 1 (keep values ≥ largest / ratio), got {param:g}")
    if method in ("sv_fro", "sv_cumulative") and not 0 < param <= 1:
        raise CharfwError(f"{method} is a fraction in (0, 1], got {param:g}")
    if method == "rank" and (param < 1 or param != int(param)):
        raise CharfwError(f"rank must be a positive integer, got {param:g}")
    for name, v in (("max_rank", max_rank), ("max_conv_rank", max_conv_rank)):
        if v is not None and v < 1:
            raise CharfwError(f"{name.replace('_', '-')} must be ≥ 1, got {v}")
    if dtype not in DTYPE_NAMES:
        raise CharfwError(f"unknown dtype {dtype!r}; use {', '.join(DTYPE_NAMES)}")
