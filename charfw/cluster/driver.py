"""The build's side of a remote training: connect, ship, wait, stop, retry, write what comes back.

Called by `backends.train` in place of the local trainers when `cluster:` is set; the run key and
the run cache stay there. Each training is one Ray task holding `gpus_per_training` GPUs; its
inputs travel as a bundle (charfw.cluster.bundle), model files once per node (node.cached_model).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from charfw.cluster.bundle import OUTSIDE, pack, relative, replace_folder, unpack
from charfw.cluster.node import FORWARDED_ENV, StateBox, render_task, train_task
from charfw.cluster.wire import model_files, to_wire
from charfw.config.models import ClusterSettings
from charfw.errors import CharfwError
from charfw.fingerprint import DigestCache
from charfw.interrupt import Interrupted, requested
from charfw.request import TrainRequest

RETRIES = 3               # a training whose node is lost is started again this often (from its saved state)
POLL_S = 1.0              # how often the build looks for a stop request and a newer saved state
STOP_WAIT_S = 300         # how long a stopped training may take to save its state and answer
CHUNK = 64 << 20          # model files travel in pieces of this size
CONNECT_ATTEMPTS = 3      # a refused Ray handshake is tried this often ...
CONNECT_BACKOFF_S = 2.0   # ... waiting this much longer before each new try


def say(text: str) -> None:
    print(f"charfw: {text}", file=sys.stderr, flush=True)


def _ray():
    try:
        import ray
    except ImportError:
        raise CharfwError("cluster: needs Ray on this machine and on the nodes: pip install -e '.[cluster]'") from None
    return ray


def reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once, naming the address, when nothing listens there (Ray itself would retry for minutes)."""
    if address == "auto" or address.startswith("local"):
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    if not parts.hostname or parts.port is None:
        raise CharfwError(f"cluster address {address!r} is not host:port or ray://host:port")
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=timeout).close()
    except OSError as exc:
        raise CharfwError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} "
                          "(is it running, and may this machine connect to it?)") from None


def connect(settings: ClusterSettings) -> None:
    """Join the cluster once per process (doit's `-n` workers each connect).

    A refused Ray Client handshake is tried again: its head starts a server process per connecting build,
    and on a busy head (or with several `-n` workers connecting at once) that start fails now and
    then although the cluster is fine (ray-project/ray#63202: the forked server dies in gRPC).
    """
    ray = _ray()
    if ray.is_initialized():
        return
    reachable(settings.address)
    attempts = CONNECT_ATTEMPTS if settings.address.startswith("ray://") else 1   # only Ray Client races
    for attempt in range(1, attempts + 1):
        try:
            _init(ray, settings.address)
            return
        except (ConnectionError, RuntimeError, ValueError) as exc:   # only a refused handshake is worth a retry
            if not isinstance(exc, ConnectionError) or attempt == attempts:
                tries = f" ({attempt} attempts)" if attempt > 1 else ""
                raise CharfwError(f"cannot reach the Ray cluster at {settings.address}: "
                                  f"{_reason(exc)}{tries}") from None
            say(f"the Ray cluster at {settings.address} refused this build's connection ({_reason(exc)}); "
                "trying again")
            if ray.is_initialized():     # a half-made connection would make the next init refuse
                ray.shutdown()
            time.sleep(CONNECT_BACKOFF_S * attempt)


def _init(ray, address: str) -> None:
    # Ray puts its own SIGTERM handler in (it would end the build without stopping the remote training)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ray.init(address=address, namespace="charfw", log_to_driver=False, logging_level=logging.ERROR)
    finally:
        for sig, handler in handlers.items():
            if handler is not None and threading.current_thread() is threading.main_thread():
                signal.signal(sig, handler)


def _reason(exc: BaseException) -> str:
    """One line of a Ray error: a server's traceback gives its last line, an empty reason says where to look."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1]
    if len(lines) == 1 and lines[0].endswith(":"):
        return f"{lines[0]} no reason given (the head node's ray_client_server*.err logs say more)"
    return lines[0] if lines else type(exc).__name__


def cluster_gpus(settings: ClusterSettings) -> tuple[int, float]:
    """(nodes alive, GPUs in all): what `doit -n` may use."""
    ray = _ray()
    connect(settings)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return len(nodes), sum(n.get("Resources", {}).get("GPU", 0) for n in nodes)


def _model_entries(models: dict[str, str | None], cache: DigestCache | None) -> list[dict]:
    """What a node needs to know of each model file (`role: model value`; built-ins need nothing)."""
    cache = cache or DigestCache()
    entries = []
    for role, path in model_files(models).items():
        digest = cache.digest(path)
        if digest is None:
            raise CharfwError(f"{role} file {path} does not exist")
        entries.append({"role": role, "path": str(path), "name": path.name, "md5": digest,
                        "size": path.stat().st_size, "chunks": None})
    return entries


def _send(ray, entries: list[dict]) -> int:
    """Put the model files into the object store (a node that lacks them fetches them from there)."""
    sent = 0
    for entry in entries:
        if entry["chunks"] is None:
            with open(entry["path"], "rb") as f:
                entry["chunks"] = [ray.put(data) for data in iter(lambda: f.read(CHUNK), b"")]
            sent += entry["size"]
    return sent


def _write_outputs(root: Path, outputs: dict[str, bytes], last: Path | None = None) -> None:
    """Write what the node wrote, each file atomically (`last`, the LoRA, after the others)."""
    order = sorted((r for r in outputs if not r.startswith(OUTSIDE + "/")),
                   key=lambda r: last is not None and (root / r).resolve() == last.resolve())
    unpack({rel: outputs[rel] for rel in order}, root)


def _clear_state(state_dir: Path) -> None:
    """A finished remote run leaves no local state (what a cache_latents: disk cache left stays)."""
    if state_dir.is_dir():
        for path in state_dir.iterdir():
            if path.is_file():
                path.unlink()
        if not any(state_dir.iterdir()):
            state_dir.rmdir()


def _node_here(ray) -> str | None:
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:   # Ray Client: the build is no node
        return None


class Lost(Exception):
    """The task's node (or its worker) went away: the task may run again elsewhere."""


def _run(ray, fn, options: dict, args: tuple, models: list[dict], what: str, poll=None) -> dict:
    """Run `fn(job, files, models, *rest)` as a task until it answers: model files are sent to the node
    that asks for them (pinned there), a stop request cancels it (SIGINT in the task), a lost node is `Lost`."""
    from ray import exceptions as rex
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    lost_errors = tuple(getattr(rex, n) for n in ("WorkerCrashedError", "NodeDiedError", "ObjectLostError",
                                                  "RaySystemError", "OwnerDiedError") if hasattr(rex, n))
    remote = ray.remote(fn)
    task = remote.options(**options)
    shipped = 0
    while True:
        ref = task.remote(args[0], args[1], models, *args[2:])
        stopping = False
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=POLL_S)
                if poll is not None:
                    poll()
                if ready:
                    break
                if requested() and not stopping:
                    ray.cancel(ref)        # SIGINT in the task: a training saves its state and answers
                    stopping = True
            result = ray.get(ref, timeout=STOP_WAIT_S if stopping else None)
        except (rex.TaskCancelledError, KeyboardInterrupt) as exc:
            if isinstance(exc, KeyboardInterrupt):
                ray.cancel(ref, force=True)
                raise
            raise Interrupted(f"interrupted: {what} stopped on the cluster; rerun doit to continue") from None
        except rex.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, CharfwError):
                raise CharfwError(str(cause)) from None
            if stopping or isinstance(cause, KeyboardInterrupt):
                raise Interrupted(f"interrupted: {what} stopped on the cluster; rerun doit to continue") from None
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise CharfwError(f"{what} failed on the cluster: {last}") from None
        except lost_errors as exc:
            raise Lost(f"{type(exc).__name__}") from None
        finally:
            if poll is not None:
                poll()
        if "need_models" in result:
            shipped += _send(ray, models)
            task = remote.options(**options, scheduling_strategy=NodeAffinitySchedulingStrategy(
                result["need_models"], soft=False))
            continue
        for name in result["received"]:
            say(f"{what}: sent {name} to node {result['node'][:12]}")
        result["model_bytes"] = shipped
        return result


class _Training:
    """One training on the cluster, from submission to its written results."""

    def __init__(self, req: TrainRequest, cache: DigestCache | None):
        self.ray = _ray()
        self.req = req
        self.models = _model_entries({"model": req.model, "vae": req.vae}, cache)
        self.job = {"request": to_wire(req), "env": {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}
        self.options = dict(num_gpus=req.cluster.gpus_per_training, num_cpus=1, max_retries=0,
                            name=f"charfw train:{req.name}")
        self.step = -1            # the newest state written locally

    def run(self) -> bool:
        ray, req = self.ray, self.req
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from charfw.train.state import saved_state_info

        if step := saved_state_info(req.state_dir).get("step"):
            say(f"{req.name}: resuming from its saved state at step {step} (on the node that takes it)")
        here = _node_here(ray)

        def new_box():   # on the build's node when it is one
            return ray.remote(num_cpus=0)(StateBox).options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True) if here else "DEFAULT").remote()

        self.box = new_box()
        lost = 0
        try:
            while True:
                started = time.monotonic()
                files = pack([*req.inputs, *([req.state_dir] if req.state_dir.is_dir() else [])], req.root)
                try:
                    result = _run(ray, train_task, self.options, (self.job, files, self.box), self.models,
                                  req.name, poll=self._take_state)
                except Lost as exc:
                    lost += 1
                    if lost > RETRIES:
                        raise CharfwError(f"{req.name}: lost its cluster node {lost} times (last: {exc})") from None
                    say(f"{req.name}: its cluster node was lost ({exc}); training again on another node from "
                        + (f"step {self.step}" if self.step > 0 else "the start"))
                    _kill(ray, self.box)     # it may have been on the lost node: a new one for the new run
                    self.box = new_box()
                    continue
                _write_outputs(req.root, result["outputs"], last=req.output)
                if "interrupted" in result:
                    say(f"{req.name}: stopped on cluster node {result['node'][:12]}")
                    raise Interrupted(result["interrupted"])
                _clear_state(req.state_dir)
                say(f"{req.name}: trained on cluster node {result['node'][:12]} "
                    + _cost(time.monotonic() - started, result["train_s"], files, result))
                return result["cpu"]
        finally:
            _kill(ray, self.box)

    def _take_state(self) -> None:
        """Mirror the task's newest saved state into the workspace's state folder (resumable anywhere)."""
        try:
            got = self.ray.get(self.box.take.remote(self.step), timeout=30)
        except Exception:   # the box's node is gone too: keep what is here
            return
        if got is not None:
            self.step, files = got
            replace_folder(self.req.state_dir, files, self.req.root)


def _cost(wall: float, work: float, files: dict[str, bytes], result: dict) -> str:
    """What the cluster added to the work: seconds beyond it, bytes each way (model files apart)."""
    sent, back = sum(map(len, files.values())), sum(map(len, result["outputs"].values()))
    return (f"({work:.1f} s there, {max(0.0, wall - work):.1f} s overhead; {sent / 1e6:.2f} MB sent, "
            f"{back / 1e6:.2f} MB back" + (f", model files {result['model_bytes'] / 1e6:.1f} MB" if
                                          result["model_bytes"] else "") + ")")


def _kill(ray, actor) -> None:
    try:
        ray.kill(actor)
    except Exception:   # already gone with its node
        pass


def train_remote(req: TrainRequest, cache: DigestCache | None = None) -> bool:
    """Train `req` on its cluster and write its results as a local run would; True when it ran on a CPU."""
    connect(req.cluster)
    return _Training(req, cache).run()


def render_remote(settings: ClusterSettings, kind: str, job: dict) -> None:
    """The sample stage's `kind` render (charfw.sample.jobs) on a node with a GPU; its images written here."""
    ray = _ray()
    connect(settings)
    paths = [Path(job["lora"]), *map(Path, job["outs"])]
    root = Path(os.path.commonpath([p.parent for p in paths]))
    wire = {**job, "kind": kind, "family": job["family"].name, "settings": job["settings"].model_dump(mode="json"),
            "lora": relative(job["lora"], root), "outs": [relative(o, root) for o in job["outs"]]}
    what = f"{kind} of {Path(job['lora']).stem}"
    options = dict(num_gpus=settings.gpus_per_training, num_cpus=1, max_retries=0, name=f"charfw {what}")
    models = _model_entries({"model": job["model"], "vae": job["vae"]}, None)
    for lost in range(RETRIES + 1):
        try:
            result = _run(ray, render_task, options, (wire, pack([job["lora"]], root)), models, what)
            break
        except Lost as exc:
            if lost == RETRIES:
                raise CharfwError(f"{what}: lost its cluster node {lost + 1} times (last: {exc})") from None
            say(f"{what}: its cluster node was lost ({exc}); rendering again on another node")
    _write_outputs(root, result["outputs"])
    say(f"{what}: rendered on cluster node {result['node'][:12]}")
