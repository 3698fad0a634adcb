"""`charfw lora ...`: inspect, block-weight merge and compress LoRA files from the shell.

    charfw lora inspect FILE [--json] [--plot OUT.png] [--arch sd15|sdxl]
    charfw lora merge FILE --weights FACE|v,v,...|NAME=v,... [--presets FILE] [-o OUT] [--arch ...]
    charfw lora compress FILE... [--sv-ratio P | --sv-fro P | --sv-cumulative P | --rank R]
        [--max-rank 128] [--max-conv-rank N] [--sd-scripts-compat] [--to-lora]
        [--dtype fp16|bf16|fp32] [--device cpu|cuda] [-o OUT] [--quiet]

Outputs default to the input's folder with a suffix: name-FACE / name-BW for merges,
name-SvR16, -SvF0.9, -SvC0.9, -R32 for compressions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from charfw.errors import CharfwError
from charfw.families import FAMILIES
from charfw.lora.blocks import parse_preset_lines
from charfw.lora.options import CompressOptions
from charfw.process import cpu_threads, parallel_share


def register(subparsers) -> None:
    lora = subparsers.add_parser("lora", help="inspect, merge and compress LoRA files", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = lora.add_subparsers(dest="lora_command", required=True)
    arch = dict(choices=[name for name, f in FAMILIES.items() if not f.variant_of], default=None,
                help="model family (default: detected from the keys)")

    p = sub.add_parser("inspect", help="per-block modules, ranks and ΔW norms")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="also draw a bar chart of block norms")
    p.add_argument("--arch", **arch)
    p.set_defaults(func=_inspect)

    p = sub.add_parser("merge", help="bake block weights into the file")
    p.add_argument("file", type=Path)
    p.add_argument("--weights", "-w", required=True,
                   help="preset name, 26/17 (SDXL 20/12) values, or NAME=v,... (others 1)")
    p.add_argument("--presets", type=Path, help="user presets, one NAME:weights per line")
    p.add_argument("-o", "--output", type=Path)
    p.add_argument("--arch", **arch)
    p.set_defaults(func=_merge)

    p = sub.add_parser("compress", help="SVD-resize LoRA modules (exact, from the factors)")
    p.add_argument("files", type=Path, nargs="+")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--sv-ratio", type=float, metavar="P", help="keep singular values ≥ max/P (default 16)")
    how.add_argument("--sv-fro", type=float, metavar="P", help="keep fraction P of the Frobenius norm")
    how.add_argument("--sv-cumulative", type=float, metavar="P", help="keep fraction P of the sum of values")
    how.add_argument("--rank", type=int, metavar="R", help="fixed rank")
    p.add_argument("--max-rank", type=int, default=128)
    p.add_argument("--max-conv-rank", type=int, help="rank cap for 3x3 convs (default: --max-rank)")
    p.add_argument("--rank-rule", choices=["sd-scripts", "exact"], default="sd-scripts",
                   help="sd-scripts (default): resize_lora.py's ranks, one more than the criterion; "
                        "exact: the smallest rank meeting it")
    p.add_argument("--sd-scripts-compat", action="store_true", help="also store factors as sd-scripts does (S on up)")
    p.add_argument("--to-lora", action="store_true", help="convert LoHa/LoKr modules to LoRA too")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--arch", **arch)
    p.add_argument("-o", "--output", type=Path, help="output file, or a folder for several inputs")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=_compress)


def _inspect(args) -> int:
    from charfw.lora.inspect import format_table, inspect_file, plot_blocks

    report = inspect_file(args.file, args.arch)
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_table(report))
    if args.plot:
        plot_blocks(report, args.plot)
    return 0


def _output_for(src: Path, output: Path | None, suffix: str) -> Path:
    default = src.with_name(src.stem + suffix + ".safetensors")
    if output is None:
        dst = default
    elif output.is_dir():
        dst = output / default.name
    else:
        dst = output
    if dst.resolve() == src.resolve():
        raise CharfwError("output would overwrite the input; choose another -o", file=src)
    return dst


def _merge(args) -> int:
    from charfw.lora.merge import merge_file, merge_suffix

    presets = None
    if args.presets:
        try:
            text = args.presets.read_text(encoding="utf-8")
        except OSError as exc:
            raise CharfwError(f"cannot read presets ({exc.strerror})", file=args.presets) from None
        presets = parse_preset_lines(text, str(args.presets))
    dst = _output_for(args.file, args.output, merge_suffix(args.weights))
    report = merge_file(args.file, dst, args.weights, presets, args.arch)
    print(f"{dst}: {report['modules_out']} of {report['modules_in']} modules kept ({report['arch']})")
    return 0


def _compress(args) -> int:
    import gc

    import torch

    from charfw.lora.compress import compress_file, compress_suffix

    gc.freeze()   # the ~10^5 objects torch's import made are never garbage: a full collection walked them (0.1 s)

    method, value = next(((m, v) for m, v in (("sv_fro", args.sv_fro), ("sv_cumulative", args.sv_cumulative),
                                               ("rank", args.rank), ("sv_ratio", args.sv_ratio)) if v is not None),
                         ("sv_ratio", 16.0))
    options = CompressOptions.of(method=method, value=value, max_rank=args.max_rank,
                                 max_conv_rank=args.max_conv_rank, dtype=args.dtype, rank_rule=args.rank_rule,
                                 sd_scripts_compat=args.sd_scripts_compat, to_lora=args.to_lora)
    if len(args.files) > 1 and args.output is not None and not args.output.is_dir():
        raise CharfwError("with several inputs, -o must be an existing folder", file=args.output)
    for src in args.files:
        dst = _output_for(src, args.output, compress_suffix(method, value))
        with cpu_threads(1 if args.device == "cpu" else torch.get_num_threads()):
            report = compress_file(src, dst, options, device=args.device, threads=parallel_share(),
                                   progress=not args.quiet and sys.stderr.isatty(), family=args.arch)
        new = sorted(k for _, k in report["ranks"].values())
        span = f", ranks {new[0]}..{new[-1]}" if new else ""
        print(f"{dst}: {report['compressed']} modules compressed, {report['unchanged']} unchanged{span}")
    return 0
