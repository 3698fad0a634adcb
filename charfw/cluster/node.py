"""What runs on a cluster node: one training in a scratch folder, the node's model cache, and the
mailbox that carries each saved state home while the training runs.

The functions here are made Ray tasks and actors by `driver` (so importing charfw never imports ray).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from charfw.cluster.bundle import pack, relative, snapshot, unpack, written

NODE_CACHE_ENV = "CHARFW_NODE_CACHE"
FORWARDED_ENV = ("SOURCE_DATE_EPOCH", "CHARFW_THREADS")   # what a node takes from the build's environment


def node_cache() -> Path:
    """Where a node keeps model files between tasks and its trainings' scratch folders: CHARFW_NODE_CACHE,
    else the system's temp folder."""
    return Path(os.environ.get(NODE_CACHE_ENV) or Path(tempfile.gettempdir()) / "charfw-node-cache")


def cached_model(entry: dict, cache: Path | None = None) -> tuple[Path | None, bool]:
    """This node's copy of a model file, as (path or None when it must be sent, whether it was received now).

    `entry`: name, md5, size and `chunks` (object refs, or None when the driver has not sent them).
    The file keeps its name (`<md5>/<name>`: the run key and metadata name it as the build does);
    one task per node writes it (a file lock), every other task on that node waits and uses it.
    """
    import ray

    cache = cache or node_cache()
    path = cache / "models" / entry["md5"] / entry["name"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file() and path.stat().st_size == entry["size"]:
            return path, False
        if entry["chunks"] is None:
            return None, False
        digest = hashlib.md5()
        tmp = path.with_name(path.name + ".part")
        with open(tmp, "wb") as out:
            for ref in entry["chunks"]:
                data = ray.get(ref)
                digest.update(data)
                out.write(data)
        if digest.hexdigest() != entry["md5"]:
            tmp.unlink()
            raise RuntimeError(f"{entry['name']} arrived damaged on this node (MD5 differs)")
        os.replace(tmp, path)
        return path, True


class StateBox:
    """The newest saved state of one training, held on the build's side of the cluster until the build
    takes it (a lost node loses nothing that was saved)."""

    def __init__(self):
        self.step, self.files = -1, None

    def put(self, step: int, files: dict[str, bytes]) -> None:
        if step > self.step:
            self.step, self.files = step, files

    def take(self, after: int):
        return (self.step, self.files) if self.step > after else None


def _models_here(models: list[dict]) -> tuple[dict[str, str] | None, list[str]]:
    """({build's model path: this node's copy} or None when one must be sent first, names received now)."""
    local, received = {}, []
    for entry in models:
        path, new = cached_model(entry)
        if path is None:
            return None, []
        local[entry["path"]] = str(path)
        if new:
            received.append(entry["name"])
    return local, received


def _scratch(name: str) -> Path:
    runs = node_cache() / "runs"        # scratch beside the model cache (a node's fast local disk)
    runs.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=runs))


def train_task(job: dict, files: dict[str, bytes], models: list[dict], box) -> dict:
    """One training on this node: unpack, train, send back what it wrote.

    Returns {"need_models": node} when a model file must be sent first; else the node, the models
    received, `cpu` and `outputs` (the LoRA, logs, progress samples); on a stop request
    (ray.cancel: SIGINT) the state is saved and sent through `box`, and `interrupted` says where.
    """
    import ray

    from charfw.backends import train_here
    from charfw.cluster.wire import from_wire
    from charfw.interrupt import Interrupted, deferred_signals

    node = ray.get_runtime_context().get_node_id()
    local, received = _models_here(models)
    if local is None:
        return {"need_models": node}
    os.environ.update(job["env"])
    root = _scratch(job["request"]["name"])
    try:
        unpack(files, root)
        before = snapshot(root)
        state_dir = root / job["request"]["state_dir"]

        def send_state(step: int) -> None:
            try:
                ray.get(box.put.remote(step, pack([state_dir], root)))
            except ray.exceptions.RayError:   # the mailbox is gone (its node too): train on, state kept here
                pass

        req = from_wire(job["request"], root, local, on_state_saved=send_state)
        result = {"node": node, "received": received}
        started = time.monotonic()
        try:
            with deferred_signals(twice_stops_now=False):
                result["cpu"] = train_here(req)
            result["train_s"] = time.monotonic() - started
        except Interrupted as exc:   # the saved state comes home too (sd-scripts' has no mailbox)
            result["interrupted"] = str(exc)
            result["outputs"] = written(root, before)
            return result
        result["outputs"] = written(root, before, skip=(relative(state_dir, root),))
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def render_task(job: dict, files: dict[str, bytes], models: list[dict]) -> dict:
    """One of the sample stage's renders (charfw.sample.jobs) on this node; the images go back."""
    import ray

    from charfw.config.models import SampleSettings
    from charfw.families import family
    from charfw.sample.jobs import RENDERS

    node = ray.get_runtime_context().get_node_id()
    local, received = _models_here(models)
    if local is None:
        return {"need_models": node}
    root = _scratch(job["kind"])
    try:
        unpack(files, root)
        before = snapshot(root)
        args = {"model": local.get(job["model"], job["model"]),
                "vae": None if job["vae"] is None else local.get(job["vae"], job["vae"]),
                "family": family(job["family"]), "lora": str(root / job["lora"]), "prompts": job["prompts"],
                "settings": SampleSettings.model_validate(job["settings"]), "clip_skip": job["clip_skip"],
                "outs": [str(root / o) for o in job["outs"]]}
        if "rows" in job:
            args["rows"] = job["rows"]
        RENDERS[job["kind"]](**args)
        return {"node": node, "received": received, "outputs": written(root, before)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
