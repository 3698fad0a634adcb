"""Which trainer runs a request: the embedded one or kohya sd-scripts (`train.trainer`), unless the shared
run cache (charfw.runcache) already holds the LoRA."""

from __future__ import annotations

import sys

from charfw.fingerprint import CPU_PREFIX, DigestCache, record, run_key
from charfw.interrupt import Interrupted
from charfw.request import TrainRequest
from charfw.sdscripts.runner import run_sd_scripts, sd_scripts_command


def train(req: TrainRequest, cache: DigestCache | None = None) -> None:
    """Train with the configured backend, here or on the cluster (or take the LoRA from the run cache),
    then record the run key (after the LoRA is in place) and store the LoRA in the run cache.

    The run key is computed before training: inputs changed meanwhile make the next build retrain.
    With a run cache, a stopped run's state is stored there and a run without a local state takes it.
    """
    runs = _run_cache(req)
    if runs is not None and served(req, runs, cache):
        return
    states = _shared_states(req, runs, cache)
    try:
        if req.cluster is not None:
            from charfw.cluster.driver import train_remote

            keys = {cpu: run_key(req, cache, cpu) for cpu in (False, True)}
            cpu = train_remote(req, cache)     # where it ran decides which key holds
            key = keys[cpu]
        else:
            cpu = trains_on_cpu(req)
            key = run_key(req, cache, cpu)
            train_here(req)
    except Interrupted:
        if states is not None:
            states.keep()
        raise
    record(req, key, cpu)
    if runs is not None and key is not None:
        runs.store((CPU_PREFIX if cpu else "") + key, req.output)
    if states is not None:
        states.done()


class _SharedState:
    """The run's resumable state in the run cache (the embedded trainer's: safetensors and JSON only)."""

    def __init__(self, req: TrainRequest, runs, key: str):
        from charfw.runcache import StateStore

        self.req, self.store, self.key = req, StateStore(runs), key

    def take(self) -> None:
        from charfw.train.state import STATE_FILE, saved_state_info

        if saved_state_info(self.req.state_dir):
            return
        problems = self.store.runs.problems
        known = len(problems)
        if self.store.fetch(self.key, self.req.state_dir, STATE_FILE):
            step = saved_state_info(self.req.state_dir).get("step")
            _say(f"{self.req.name}: resuming from the state saved in the run cache at step {step}")
        for problem in problems[known:]:
            _say(f"warning: {problem}")

    def keep(self) -> None:
        from charfw.train.state import saved_state_info

        if saved_state_info(self.req.state_dir):
            sent = self.store.store(self.key, self.req.state_dir)
            _say(f"{self.req.name}: state stored in the run cache ({sent / 1e6:.1f} MB): any machine resumes it")

    def done(self) -> None:
        self.store.drop(self.key)


def _shared_states(req: TrainRequest, runs, cache: DigestCache | None) -> _SharedState | None:
    """sd-scripts' states hold pickles: they stay on the machine that wrote them."""
    if runs is None or req.settings.trainer != "embedded":
        return None
    key = run_key(req, cache)
    if key is None:
        return None
    states = _SharedState(req, runs, key)
    states.take()
    return states


def _say(text: str) -> None:
    print(f"charfw: {text}", file=sys.stderr, flush=True)


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
            _say(f"{req.name}: taken from the run cache ({runs.url}), not trained")
            return True
    for problem in runs.problems:
        _say(f"warning: {problem}")
    return False


def command_line(req: TrainRequest) -> list[str]:
    """The exact command that trains this target outside doit (what `charfw plan` prints)."""
    if req.settings.trainer == "sd-scripts":

        return sd_scripts_command(req)[1]
    return ["charfw", "train", req.name, "-C", str(req.root)]
