"""Cluster overhead: N tiny trainings on a local two-node Ray cluster against local `doit -n 2`.

    python bench/cluster.py [--targets 8] [--steps 2] [--keep DIR]

Both workspaces are copies of one made by bench/workspace.py's `make_workspace` (each character
a face and an outfit target), trained from a tiny SD1.5 checkpoint file so that the model has to
travel. The data stages are built first and untimed; then `doit -n 2 train` is timed in each.
The cluster is two nodes with one declared GPU and one CPU each (this machine's cores), bound to
127.0.0.1, each with its own model cache. Prints the wall times side by side and, per remote
training (from the build's own lines), the seconds the cluster added beyond the training
itself (submission, shipping the inputs, a worker's start, returning and writing the results)
and the bytes each way, and how often the model file was sent per node.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workspace import make_workspace  # noqa: E402

COST = re.compile(r"charfw: (\S+): trained on cluster node (\w+) \(([\d.]+) s there, ([\d.]+) s overhead; "
                  r"([\d.]+) MB sent, ([\d.]+) MB back")


def doit(ws: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=ws, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"doit {' '.join(args)} failed in {ws}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return time.perf_counter() - t0, proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", type=int, default=8, help="trainings (two per character)")
    ap.add_argument("--steps", type=int, default=2, help="steps per training (tiny: the overhead shows)")
    ap.add_argument("--keep", help="build here and keep it (default: a temporary folder)")
    args = ap.parse_args()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"   # every Ray address on 127.0.0.1
    import ray
    from ray.cluster_utils import Cluster

    from charfw.models import write_random

    base = Path(args.keep or tempfile.mkdtemp(prefix="charfw-bench-cluster-"))
    shutil.rmtree(base, ignore_errors=True)
    local = base / "local"
    make_workspace(local, (args.targets + 1) // 2)
    (local / "models").mkdir()
    write_random(local / "models/base.safetensors", "tiny-sd15", 0)
    text = (local / "charfw.yaml").read_text().replace("model: builtin:tiny-sd15", "model: models/base.safetensors")
    (local / "charfw.yaml").write_text(text + f"train:\n  steps: {args.steps}\n")
    doit(local, "-n", "2", "dataset")
    remote = base / "remote"
    shutil.copytree(local, remote)
    model_mb = (local / "models/base.safetensors").stat().st_size / 1e6

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    caches = [base / f"node{i}" for i in range(2)]
    try:
        for cache in caches:
            cluster.add_node(num_cpus=1, num_gpus=1, env_vars={"CHARFW_NODE_CACHE": str(cache)})
        ray.init(address=cluster.address, log_to_driver=False)
        with open(remote / "charfw.yaml", "a") as f:
            f.write(f"cluster:\n  address: {cluster.address}\n")
        local_s, _ = doit(local, "-n", "2", "train")
        remote_s, proc = doit(remote, "-n", "2", "train")
    finally:
        ray.shutdown()
        cluster.shutdown()

    costs = [COST.search(line) for line in proc.stderr.splitlines()]
    costs = [m for m in costs if m]
    sends = [line for line in proc.stderr.splitlines() if "sent base.safetensors to node" in line]
    per_node = {}
    for line in sends:
        node = line.rsplit(" ", 1)[1]
        per_node[node] = per_node.get(node, 0) + 1
    overhead = [float(m[4]) for m in costs]
    work = [float(m[3]) for m in costs]
    sent = [float(m[5]) for m in costs]
    back = [float(m[6]) for m in costs]
    print(f"{len(costs)} trainings of {args.steps} steps, model file {model_mb:.1f} MB")
    print(f"local  doit -n 2 train: {local_s:7.1f} s")
    print(f"remote doit -n 2 train: {remote_s:7.1f} s on 2 nodes (ratio {remote_s / local_s:.2f})")
    if costs:
        print(f"per training: {statistics.median(work):.1f} s of work on the node; overhead median "
              f"{statistics.median(overhead):.2f} s, max {max(overhead):.2f} s (first on each node: a worker starts)")
        print(f"bytes per training: {statistics.median(sent):.2f} MB sent, {statistics.median(back):.2f} MB back")
    print(f"model file sent {len(sends)} times for {len(per_node)} nodes: "
          + ", ".join(f"{n}: {c}" for n, c in sorted(per_node.items())))
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
