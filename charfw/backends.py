"""Which trainer runs a request: the embedded one or kohya sd-scripts (`train.trainer`), unless the shared
run cache (charfw.runcache) already holds the LoRA."""

from __future__ import annotations

import sys

from charfw.fingerprint import CPU_PREFIX, DigestCache, record, run_key
from charfw.request import TrainRequest
from charfw.sdscripts.runner import run_sd_scripts, sd_scripts_command


def train(req: TrainRequest, cache: DigestCache | None = None) -> None:
    """Train with the configured backend, here or on the cluster (or take the LoRA from the run cache),
    then record the run key (after the LoRA is in place) and store the LoRA in the run cache.

    The run key is computed before training: inputs changed meanwhile make the next build retrain.
    """
    runs = _run_cache(req)
    if runs is not None and served(req, runs, cache):
        return
    if req.cluster is not None:
        from charfw.cluster.driver import train_remote

        keys = {cpu: run_key(req, cache, cpu) for cpu in (False, True)}
        cpu = train_remote(req, cache)     # where it ran decides which key holds
        key = keys[cpu]
    else:
        cpu = trains_on_cpu(req)
        key = run_key(req, cache, cpu)
        train_here(req)
    record(req, key, cpu)
    if runs is not None and key is not None:
        runs.store((CPU_PREFIX if cpu else "") + key, req.output)


def trains_on_cpu(req: TrainRequest) -> bool:
    """The embedded trainer without CUDA: fp32, so `mixed_precision` is not part of that run."""
    if req.settings.trainer == "sd-scripts":
        return False
    from charfw.train import training_device

    return training_device(req) == "cpu"


def train_here(req: TrainRequest) -> bool:
    """Train in this process (or sd-scripts' child process); True when it ran on a CPU."""
    cpu = trains_on_cpu(req)
    if req.settings.trainer == "sd-scripts":
        run_sd_scripts(req)
    else:
        from charfw.train import train_lora

        train_lora(req)
    return cpu


def _run_cache(req: TrainRequest):
    if not req.run_cache:
        return None
    from charfw.runcache import RunCache

    return RunCache(req.run_cache)


def cached_keys(req: TrainRequest, cache: DigestCache | None = None) -> list[tuple[str, bool]]:
    """The run keys a cached LoRA may be stored under for this request, as (stored text, trained on a CPU):
    a GPU run's first, then a CPU run's (the embedded trainer's CPU runs leave mixed precision out)."""
    keys = [(run_key(req, cache), False)]
    if req.settings.trainer == "embedded":
        keys.append((run_key(req, cache, True), True))
    return [((CPU_PREFIX if cpu else "") + key, cpu) for key, cpu in keys if key is not None]


def served(req: TrainRequest, runs, cache: DigestCache | None = None) -> bool:
    """Take the LoRA from the run cache if it holds one for this request (checked whole); say so."""
    for stored, cpu in cached_keys(req, cache):
        if runs.fetch(stored, req.output):
            record(req, stored.removeprefix(CPU_PREFIX), cpu)
            print(f"charfw: {req.name}: taken from the run cache ({runs.url}), not trained", file=sys.stderr,
                  flush=True)
            return True
    for problem in runs.problems:
        print(f"charfw: warning: {problem}", file=sys.stderr, flush=True)
    return False


def command_line(req: TrainRequest) -> list[str]:
    """The exact command that trains this target outside doit (what `charfw plan` prints)."""
    if req.settings.trainer == "sd-scripts":

        return sd_scripts_command(req)[1]
    return ["charfw", "train", req.name, "-C", str(req.root)]
