"""Benchmark: charfw's factor-based compression vs the dense-SVD resize sd-scripts does.

Builds a synthetic 128-dim C3Lier LoRA (SD1.5: 350 modules; `--arch sdxl`: 1,052 modules, the
U-Net's 788 and both text encoders; the real shapes from charfw.lora.keys, fp16, ΔW with a
decaying spectrum), writes it to a temporary file, then

- runs charfw.lora.compress_file on it in a fresh process, default fp16 output (wall time
  of the call, and the process's peak RSS, which includes ~0.5 GB of torch itself);
- runs it again with fp32 output, so the error measures the algorithm, not fp16 rounding;
- runs the dense baseline in this process: ΔW = up @ down formed densely, torch.linalg.svd,
  truncated with the same rank rule (compute only; its file I/O is not timed), on
  `--baseline-threads` threads (default 1: on a shared 2-core CPU that was 2.3x faster
  than 2 threads for a 1280 x 11520 SVD, so it is the stronger baseline);
- compares each module's ΔW from charfw's fp32 output with the baseline's (max relative
  Frobenius error).

The dense baseline over all 350 modules takes minutes on a small CPU: `--modules N` times it
on N modules spread over the file and extrapolates by the dense SVD cost m·n·min(m, n),
saying so in the output. charfw output is fp32 here so the error measures the algorithm,
not fp16 rounding.

Then, for each of `--floor-dims` (32, 64, 128), `charfw lora compress` run as a user runs it,
against the I/O floor it measures itself: a process that imports torch, reads the same file
and writes it back (medians of interleaved runs; wall time and peak RSS ratios).

    python bench/compress.py [--arch sd15|sdxl] [--modules 40] [--method sv_ratio --param 16] [--rank 128]
                             [--baseline-threads 1] [--floor-dims 32,64,128] [--floor-repeat 5] [--floor-only]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from charfw.families import FAMILIES, family  # noqa: E402
from charfw.lora.compress import sd_scripts_rank  # noqa: E402
from charfw.lora.keys import lora_module_specs  # noqa: E402


def build_lora(path: Path, rank: int, seed: int, arch: str = "sd15") -> int:
    """Write the synthetic LoRA; returns its size in bytes."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    decay = 0.97 ** torch.arange(rank, dtype=torch.float32)       # sv_ratio 16 keeps ~90 of 128
    for s in lora_module_specs(family(arch), conv3x3=True).values():
        n = s.in_dim * s.kernel * s.kernel
        down = torch.randn(rank, n, generator=gen) / n ** 0.5
        up = torch.randn(s.out_dim, rank, generator=gen) * 0.05 * decay
        if s.conv:
            down, up = down.reshape(rank, s.in_dim, s.kernel, s.kernel), up.reshape(s.out_dim, rank, 1, 1)
        tensors[f"{s.name}.lora_down.weight"] = down.half()
        tensors[f"{s.name}.lora_up.weight"] = up.half()
        tensors[f"{s.name}.alpha"] = torch.tensor(rank / 2, dtype=torch.float16)
    save_file(tensors, str(path), {"ss_network_dim": str(rank), "ss_network_alpha": str(rank / 2)})
    return path.stat().st_size


def peak_rss() -> int:
    """This process's peak RSS in bytes. VmHWM, not ru_maxrss: a spawned child inherits the parent's
    ru_maxrss across fork and exec, which would count the parent's synthetic LoRA as charfw's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _charfw_child(src: str, dst: str, method: str, param: float, dtype: str, queue) -> None:
    from charfw.lora import compress_file
    from charfw.lora.options import CompressOptions
    from charfw.process import cpu_threads, parallel_share

    base_rss = peak_rss()
    t0 = time.perf_counter()
    with cpu_threads(1):  # as the CLI runs it: one torch thread, the modules spread over the cores
        report = compress_file(src, dst, CompressOptions.of(method=method, value=param, dtype=dtype),
                               threads=parallel_share())
    elapsed = time.perf_counter() - t0
    queue.put({"seconds": elapsed, "peak_rss": peak_rss(),
               "rss_after_imports": base_rss, "ranks": report["ranks"]})


def run_charfw(src: Path, dst: Path, method: str, param: float, dtype: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_charfw_child, args=(str(src), str(dst), method, param, dtype, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


FLOOR = """
import sys, torch
from safetensors.torch import load_file, save_file
save_file(load_file(sys.argv[1]), sys.argv[2])
"""


# Runs a command (`-m module ...` or `-c code ...`) and writes its own peak RSS (VmHWM, kB) to the file
# $BENCH_PEAK_FILE at exit. The kernel's wait4 ru_maxrss cannot be used: a forked child starts from the
# parent's high-water mark, so after the dense baseline every child "peaked" at this process's 2 GiB.
PEAK_WRAPPER = """
import atexit, os, runpy, sys

def _peak():
    with open("/proc/self/status") as status:
        kb = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["BENCH_PEAK_FILE"], "w") as out:
        out.write(kb)

atexit.register(_peak)
mode, target, *rest = sys.argv[1:]
sys.argv = [target if mode == "-m" else "-c", *rest]
if mode == "-m":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    exec(compile(target, "<floor>", "exec"), {"__name__": "__main__"})
"""


def timed_process(args: list[str], peak_file: Path) -> tuple[float, int]:
    """(wall seconds, the child's own peak RSS in bytes) of `python <args>` (args start with -m or -c)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env={**os.environ, "BENCH_PEAK_FILE": str(peak_file)})
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {proc.stderr.decode()[-2000:]}")
    return seconds, int(peak_file.read_text()) * 1024


def floor_ratios(tmp: Path, dims: list[int], arch: str, method: str, param: float, repeat: int) -> None:
    """`charfw lora compress` as a user runs it, against the I/O floor: a process that imports torch,
    reads the same file and writes it back. Interleaved runs, medians; time and peak-memory ratios."""
    flag = {"sv_ratio": "--sv-ratio", "sv_fro": "--sv-fro", "sv_cumulative": "--sv-cumulative",
            "rank": "--rank"}[method]
    print(f"against the I/O floor (import torch + read + write the file), median of {repeat} interleaved runs, "
          f"{os.cpu_count()} CPUs:")
    for dim in dims:
        src = tmp / f"floor-{dim}.safetensors"
        size = build_lora(src, dim, 0, arch)
        ours_cmd = ["-m", "charfw.cli", "lora", "compress", str(src), flag, f"{param:g}", "-q",
                    "-o", str(tmp / "floor-out.safetensors")]
        floor_cmd = ["-c", FLOOR, str(src), str(tmp / "floor-copy.safetensors")]
        ours, floor = [], []
        for _ in range(repeat):
            ours.append(timed_process(ours_cmd, tmp / "peak"))
            floor.append(timed_process(floor_cmd, tmp / "peak"))
        (t_ours, m_ours), (t_floor, m_floor) = (tuple(statistics.median(x) for x in zip(*runs))
                                                  for runs in (ours, floor))
        print(f"  dim {dim:3d} ({size / 2**20:5.0f} MiB): compress {t_ours:5.2f} s {m_ours / 2**20:6.0f} MiB | "
              f"floor {t_floor:5.2f} s {m_floor / 2**20:6.0f} MiB | time {t_ours / t_floor:.2f}x, "
              f"memory {m_ours / m_floor:.2f}x")


def dense_cost(shape: tuple[int, int]) -> float:
    m, n = shape
    return m * n * min(m, n)


def pick(names: list[str], shapes: dict[str, tuple[int, int]], count: int | None) -> list[str]:
    """`count` modules spread evenly over the cost-sorted list (so big and small convs are in)."""
    if count is None or count >= len(names):
        return names
    by_cost = sorted(names, key=lambda n: dense_cost(shapes[n]))
    step = len(by_cost) / count
    return [by_cost[int(i * step + step / 2)] for i in range(count)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--method", default="sv_ratio")
    ap.add_argument("--param", type=float, default=16.0)
    ap.add_argument("--arch", choices=list(FAMILIES), default="sd15")
    ap.add_argument("--modules", type=int, default=40, help="modules for the dense baseline (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-threads", type=int, default=1)
    ap.add_argument("--floor-dims", default="32,64,128", help="dims to time against the I/O floor ('' = none)")
    ap.add_argument("--floor-repeat", type=int, default=5)
    ap.add_argument("--floor-only", action="store_true", help="only the I/O floor comparison")
    args = ap.parse_args()
    if args.floor_only:
        with tempfile.TemporaryDirectory() as tmp:
            floor_ratios(Path(tmp), [int(d) for d in args.floor_dims.split(",") if d], args.arch, args.method,
                         args.param, args.floor_repeat)
        return 0

    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / f"{args.arch}-c3lier-128.safetensors", Path(tmp) / "out.safetensors"
        size = build_lora(src, args.rank, args.seed, args.arch)
        count = len(lora_module_specs(family(args.arch), conv3x3=True))
        print(f"input: {args.arch} C3Lier LoRA, {count} modules, rank {args.rank}, fp16, {size / 2**20:.1f} MiB")
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
              f"method {args.method} {args.param:g}")

        dst16 = Path(tmp) / "out16.safetensors"
        ours = run_charfw(src, dst16, args.method, args.param, "fp16")
        print(f"charfw compress_file: {ours['seconds']:.2f} s for all {count} modules, fp16 output "
              f"(incl. reading and writing)")
        exact = run_charfw(src, dst, args.method, args.param, "fp32")
        print(f"charfw compress_file: {exact['seconds']:.2f} s with fp32 output (used for the error below)")
        torch.set_num_threads(args.baseline_threads)

        with safe_open(str(src), "pt") as f_in, safe_open(str(dst), "pt") as f_out, \
                safe_open(str(dst16), "pt") as f_16:
            names = sorted({k.split(".")[0] for k in f_in.keys()})

            def factors(f, name):
                up = f.get_tensor(f"{name}.lora_up.weight").float()
                down = f.get_tensor(f"{name}.lora_down.weight").float()
                # charfw's outputs fold alpha/rank into the factors and store no alpha (read as alpha = rank)
                alpha = f"{name}.alpha"
                scale = float(f.get_tensor(alpha)) / down.shape[0] if alpha in f.keys() else 1.0
                return up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1), scale

            shapes = {}
            for n in names:
                up, down, _ = factors(f_in, n)
                shapes[n] = (up.shape[0], down.shape[1])
            subset = pick(names, shapes, args.modules or None)

            dense_seconds, max_err, max_err16, rank_mismatch = 0.0, 0.0, 0.0, 0
            for n in subset:
                up, down, scale = factors(f_in, n)
                t0 = time.perf_counter()
                delta = up @ down                                   # what sd-scripts does
                u, s, vh = torch.linalg.svd(delta, full_matrices=False)
                k = sd_scripts_rank(s, args.method, args.param, 128)   # charfw's default rank rule
                new_up, new_down = u[:, :k] * s[:k], vh[:k]
                dense_seconds += time.perf_counter() - t0
                ref = (new_up @ new_down).double() * scale
                o_up, o_down, o_scale = factors(f_out, n)
                rank_mismatch += o_down.shape[0] != k
                got = (o_up.double() @ o_down.double()) * o_scale
                max_err = max(max_err, float(torch.linalg.norm(got - ref) / torch.linalg.norm(ref)))
                h_up, h_down, h_scale = factors(f_16, n)
                got16 = (h_up.double() @ h_down.double()) * h_scale
                max_err16 = max(max_err16, float(torch.linalg.norm(got16 - ref) / torch.linalg.norm(ref)))

        total_cost = sum(dense_cost(shapes[n]) for n in names)
        subset_cost = sum(dense_cost(shapes[n]) for n in subset)
        dense_total = dense_seconds * total_cost / subset_cost
        if len(subset) < len(names):
            print(f"dense SVD baseline: {dense_seconds:.2f} s for {len(subset)} of {len(names)} modules, "
                  f"extrapolated by m*n*min(m,n) cost to {dense_total:.1f} s for all {count} (estimate)")
        else:
            print(f"dense SVD baseline: {dense_total:.2f} s for all {count} modules (compute only)")
        print(f"(baseline on {args.baseline_threads} thread(s); load average now {os.getloadavg()[0]:.1f})")
        print(f"speed-up: {dense_total / ours['seconds']:.0f}x")
        print(f"max relative error of ΔW vs dense SVD ({len(subset)} modules compared): {max_err:.2e}; "
              f"rank mismatches: {rank_mismatch}")
        print(f"the same with the default fp16 output (its own rounding included): {max_err16:.2e}")
        peak, budget = ours["peak_rss"], 2 * size + 2**30
        print(f"charfw peak RSS: {peak / 2**20:.0f} MiB (of which {ours['rss_after_imports'] / 2**20:.0f} MiB "
              f"after importing torch); budget 2 x input + 1 GiB = {budget / 2**20:.0f} MiB -> "
              f"{'OK' if peak <= budget else 'OVER'}")
        ranks = sorted(k for _, k in ours["ranks"].values())
        print(f"new ranks: {ranks[0]}..{ranks[-1]} (median {ranks[len(ranks) // 2]})")
        if args.floor_dims:
            floor_ratios(Path(tmp), [int(d) for d in args.floor_dims.split(",")], args.arch, args.method,
                         args.param, args.floor_repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
