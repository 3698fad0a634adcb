"""`charfw model ...`: model files for benchmarks and for checking other tools.

    charfw model random sd15|sdxl|tiny-sd15|tiny-sdxl OUT.safetensors [--seed N] [--dtype fp16|bf16|fp32]
"""

from __future__ import annotations

from pathlib import Path

from charfw.models.configs import ARCHS

DTYPES = ("fp16", "bf16", "fp32")


def cmd_random(args) -> int:
    import torch

    from charfw.models.tiny import write_random

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    path = write_random(Path(args.out), args.arch, seed=args.seed, dtype=dtype)
    print(f"{path}: random {args.arch} checkpoint ({args.dtype}, seed {args.seed})")
    return 0


def register(sub) -> None:

    model = sub.add_parser("model", help="model files for benchmarks and compatibility checks")
    msub = model.add_subparsers(dest="model_command", required=True)
    p = msub.add_parser("random", help="write a random-weight single-file checkpoint in the original (LDM) layout")
    p.add_argument("arch", choices=ARCHS, help="sd15 / sdxl: full size; tiny-*: the builtin test models")
    p.add_argument("out", help="output .safetensors file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=DTYPES, default="fp16", help="tensor dtype (default fp16, as checkpoints ship)")
    p.set_defaults(func=cmd_random)
