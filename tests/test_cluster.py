"""Trainings on a Ray cluster: a real local cluster of two GPU nodes (a declared GPU resource on CPUs,
bound to 127.0.0.1, stopped by the fixture), against a local build of the same workspace."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from modelutil import write_tiny_sd15
from wsutil import copy_example, executed, run_charfw, run_doit

from charfw.cluster import driver
from charfw.cluster.bundle import pack, relative, replace_folder, safe, snapshot, unpack, written
from charfw.cluster.driver import reachable
from charfw.cluster.settings import cluster_settings
from charfw.config.models import ClusterSettings
from charfw.errors import CharfwError

EPOCH = "1700000000"


def test_bundle_paths_stay_inside_their_folder(tmp_path):
    root = tmp_path / "ws"
    (root / "build/a").mkdir(parents=True)
    (root / "build/a/x.txt").write_text("x")
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes(b"lora")
    files = pack([root / "build/a", outside], root)
    assert files["build/a/x.txt"] == b"x"
    (far,) = [k for k in files if k.startswith("_outside/")]
    assert far.endswith("/elsewhere.safetensors") and relative(outside, root) == far
    for bad in ("../x", "/etc/passwd", "a/../../x", "a\\..\\x", "", "a//b"):
        with pytest.raises(CharfwError, match="leaves its folder"):
            safe(bad)
    with pytest.raises(CharfwError):
        unpack({"../escape.txt": b"no"}, tmp_path / "node")
    assert not (tmp_path / "escape.txt").exists()
    node = tmp_path / "node"
    unpack(files, node)
    before = snapshot(node)
    (node / "build/a/new.txt").write_text("n")
    (node / "build/state").mkdir()
    (node / "build/state/s.json").write_text("{}")
    assert written(node, before, skip=("build/state",)) == {"build/a/new.txt": b"n"}


def test_a_state_folder_is_replaced_whole(tmp_path):
    root = tmp_path
    state = root / "build/train/k.state"
    state.mkdir(parents=True)
    (state / "network-00000010.safetensors").write_bytes(b"old")
    (state / "latents").mkdir()
    replace_folder(state, {"build/train/k.state/network-00000020.safetensors": b"new",
                           "build/train/k.state/state.json": b"{}"}, root)
    assert sorted(p.name for p in state.iterdir()) == ["latents", "network-00000020.safetensors", "state.json"]


def test_cluster_settings_come_from_the_workspace_or_the_environment():
    assert cluster_settings(None, {}) is None
    s = cluster_settings(None, {"CHARFW_RAY_ADDRESS": "ray://head:10001"})
    assert s.address == "ray://head:10001" and s.gpus_per_training == 1
    mine = ClusterSettings(address="auto", gpus_per_training=2)
    assert cluster_settings(mine, {"CHARFW_RAY_ADDRESS": "10.0.0.5:6379"}).gpus_per_training == 2
    assert cluster_settings(mine, {}) is mine


def test_an_unreachable_cluster_is_one_line_naming_it():
    with pytest.raises(CharfwError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:9: .*refused"):
        reachable("127.0.0.1:9")
    with pytest.raises(CharfwError, match="ray://127.0.0.1:9"):
        reachable("ray://127.0.0.1:9")
    with pytest.raises(CharfwError, match="not host:port"):
        reachable("somewhere")


class FlakyRay:
    """Stands in for `ray`: its first `refusals` handshakes fail the way Ray Client's did on a busy CI head."""

    def __init__(self, refusals, error):
        self.refusals, self.error, self.inits, self.connected = refusals, error, 0, False

    def is_initialized(self):
        return self.connected

    def init(self, **kwargs):
        self.inits += 1
        if self.inits <= self.refusals:
            raise self.error
        self.connected = True

    def shutdown(self):
        self.connected = False


PROXIER_TRACEBACK = ("Initialization failure from server:\nTraceback (most recent call last):\n"
                     '  File "proxier.py", line 765, in Datapath\n'
                     "RuntimeError: Starting Ray client server failed. "
                     "See ray_client_server_23003.err for detailed logs.\n")


@pytest.mark.parametrize("message, reason", [
    ("Initialization failure from server:\n", "no reason given (the head node's ray_client_server*.err"),
    (PROXIER_TRACEBACK, "RuntimeError: Starting Ray client server failed. See ray_client_server_23003.err"),
], ids=["empty-reason", "server-traceback"])
def test_a_refused_ray_handshake_is_tried_again_and_then_named_in_one_line(monkeypatch, capsys, message, reason):
    monkeypatch.setattr(driver, "reachable", lambda address: None)
    monkeypatch.setattr(driver.time, "sleep", lambda s: None)
    settings = ClusterSettings(address="ray://head:10001")

    flaky = FlakyRay(driver.CONNECT_ATTEMPTS - 1, ConnectionAbortedError(message))
    monkeypatch.setattr(driver, "_ray", lambda: flaky)
    driver.connect(settings)
    assert flaky.connected and flaky.inits == driver.CONNECT_ATTEMPTS
    retries = [line for line in capsys.readouterr().err.splitlines() if "trying again" in line]
    assert len(retries) == driver.CONNECT_ATTEMPTS - 1 and reason in retries[0]

    refusing = FlakyRay(driver.CONNECT_ATTEMPTS, ConnectionAbortedError(message))
    monkeypatch.setattr(driver, "_ray", lambda: refusing)
    with pytest.raises(CharfwError) as err:
        driver.connect(settings)
    assert refusing.inits == driver.CONNECT_ATTEMPTS and not refusing.connected
    assert "\n" not in str(err.value) and "cannot reach the Ray cluster at ray://head:10001" in str(err.value)
    assert reason in str(err.value)

    direct = FlakyRay(1, ConnectionError("Could not connect to the GCS at head:6379"))   # no Ray Client: no race
    monkeypatch.setattr(driver, "_ray", lambda: direct)
    with pytest.raises(CharfwError, match="Could not connect to the GCS at head:6379$"):
        driver.connect(ClusterSettings(address="head:6379"))
    assert direct.inits == 1

    mismatch = FlakyRay(1, RuntimeError("Version mismatch: the cluster runs Ray 2.9"))   # not worth a retry
    monkeypatch.setattr(driver, "_ray", lambda: mismatch)
    with pytest.raises(CharfwError, match="Version mismatch"):
        driver.connect(settings)
    assert mismatch.inits == 1


@pytest.mark.slow
def test_a_build_that_cannot_reach_its_cluster_fails_in_one_line_and_loses_nothing(tmp_path):
    ws = workspace(tmp_path / "ws", "127.0.0.1:9")
    proc = doit(ws, "train:krnk", check=False)
    assert proc.returncode != 0
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert (ws / "build/datasets/krnk.toml").exists() and not (ws / "build/train/krnk.safetensors").exists()
    assert executed(doit(ws, "dataset:krnk")) == set()       # what was built stays built


# -- a real local cluster ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"   # every Ray address on 127.0.0.1 (before ray loads)
    import ray  # the cluster extra: CI installs it, as the README says
    from ray.cluster_utils import Cluster

    base = tmp_path_factory.mktemp("cluster")
    with socket.socket() as s:                   # a free port for the head's Ray Client server
        s.bind(("127.0.0.1", 0))
        client_port = s.getsockname()[1]
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False,
                                                      "ray_client_server_port": client_port})
    c.client_address = f"ray://127.0.0.1:{client_port}"
    c.caches = {}

    def add(name):
        cache = base / name
        node = c.add_node(num_cpus=1, num_gpus=1, env_vars={"CHARFW_NODE_CACHE": str(cache)})
        c.caches[node] = cache
        return node

    c.add = add
    add("node0")
    add("node1")
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def workspace(parent, address=None, steps=6, extra=""):
    parent.mkdir()
    ws = copy_example(parent)
    (ws / "models").mkdir()
    write_tiny_sd15(ws / "models/base.safetensors")
    text = (ws / "charfw.yaml").read_text()
    assert "\n  steps: 100 " in text
    text = text.replace("model: builtin:tiny-sd15", "model: models/base.safetensors")
    text = text.replace("\n  steps: 100 ", f"\n  steps: {steps}\n{extra}  #")
    if address:
        text += f"cluster:\n  address: {address}\n"
    (ws / "charfw.yaml").write_text(text)
    return ws


def doit(ws, *args, check=True):
    os.environ["SOURCE_DATE_EPOCH"] = EPOCH
    try:
        return run_doit(ws, *args, check=check)
    finally:
        del os.environ["SOURCE_DATE_EPOCH"]


def free_gpus(ray, want, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ray.available_resources().get("GPU", 0) >= want:
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
def test_remote_trainings_match_a_local_build_and_ship_the_model_once_per_node(cluster, tmp_path):
    import ray

    targets = ("compress:krnk", "compress:tyank", "compress:krnksf", "sample:krnk", "sample:grid-krnk")
    before = {p for cache in cluster.caches.values() for p in cache.rglob("base.safetensors")}
    local = workspace(tmp_path / "local")
    remote = workspace(tmp_path / "remote", cluster.address)
    doit(local, *targets)
    proc = doit(remote, "-n", "2", *targets)
    assert {"train:krnk", "train:tyank", "train:krnksf"} <= executed(proc)
    assert proc.stderr.count("trained on cluster node") == 3
    for name in ("krnk", "tyank", "krnksf"):
        for folder in ("build/train", "dist"):
            assert (remote / folder / f"{name}.safetensors").read_bytes() == \
                (local / folder / f"{name}.safetensors").read_bytes(), f"{folder}/{name}"
        assert list((remote / "build/logs" / name).glob("events.out.tfevents.*")), name   # its logs came back
    assert not list((remote / "build/train").glob("*.state"))       # a finished run leaves no state
    images = sorted(p.relative_to(local) for p in (local / "build/report").rglob("*.png")
                    if {"samples", "grids"} & set(p.parts))
    assert len(images) >= 2 and proc.stderr.count("rendered on cluster node") == 2
    for rel in images:                                               # rendered on a node, the same pixels
        assert (remote / rel).read_bytes() == (local / rel).read_bytes(), rel
    sent = [line for line in proc.stderr.splitlines() if "sent base.safetensors to node" in line]
    assert 1 <= len(sent) <= 2 and len(set(sent)) == len(sent)       # at most once per node, 3 trainings
    copies = {p for cache in cluster.caches.values() for p in cache.rglob("base.safetensors")} - before
    assert len(copies) == len(sent)
    assert free_gpus(ray, 2)
    status = run_charfw(remote, "cluster")
    assert status.returncode == 0, status.stderr
    assert f"{cluster.address}: 3 nodes, 2 GPUs, 2 trainings at once" in status.stdout
    assert "build with: doit -n 2" in status.stdout
    # up to date afterwards, like a local build
    assert not {t for t in executed(doit(remote, *targets)) if t.startswith("train:")}


def training_with_a_saved_state(cluster, tmp_path):
    """A build training krnk on the cluster, returned once a saved state has come back from the node."""
    ws = workspace(tmp_path / "ws", cluster.address, steps=30, extra="  save_every_n_steps: 5\n")
    doit(ws, "dataset:krnk")
    state = ws / "build/train/krnk.state/state.json"
    build = subprocess.Popen([sys.executable, "-m", "doit", "train:krnk"], cwd=ws, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH})
    deadline = time.monotonic() + 420   # a busy 2-core CI machine starts Ray workers slowly
    while not state.exists() and time.monotonic() < deadline and build.poll() is None:
        time.sleep(0.5)
    if not state.exists():
        build.kill()
        out, err = build.communicate()
        raise AssertionError(f"no saved state came back from the node (doit: {build.returncode}):\n{out[-2000:]}\n"
                             f"{err[-3000:]}")
    return ws, build


@pytest.mark.slow
def test_a_killed_build_stops_its_remote_training_and_the_rerun_resumes_on_another_node(cluster, tmp_path):
    import ray

    ws, build = training_with_a_saved_state(cluster, tmp_path)
    build.send_signal(signal.SIGTERM)
    out, err = build.communicate(timeout=300)
    assert build.returncode != 0 and "interrupted: krnk saved at step" in err, out[-2000:] + err[-2000:]
    assert free_gpus(ray, 2, timeout=30), "a training still holds a GPU on the cluster"
    assert not (ws / "build/train/krnk.safetensors").exists()
    step = int(err.split("saved at step ")[1].split(";")[0])

    # the node it ran on leaves the cluster; a new one joins; the rerun resumes there from that step
    ran_on = err.split("stopped on cluster node ")[1][:12]
    (node,) = [n for n in cluster.caches if n.node_id.startswith(ran_on)]
    cluster.remove_node(node)
    del cluster.caches[node]
    cluster.add("node2")
    proc = doit(ws, "train:krnk")
    assert f"resuming from its saved state at step {step}" in proc.stderr
    assert "trained on cluster node" in proc.stderr and f"trained on cluster node {ran_on}" not in proc.stderr
    assert (ws / "build/train/krnk.safetensors").exists() and not (ws / "build/train/krnk.state").exists()


@pytest.mark.slow
def test_a_lost_node_is_reported_and_the_training_goes_on_elsewhere_from_its_saved_state(cluster, tmp_path):
    ws, build = training_with_a_saved_state(cluster, tmp_path)
    (node,) = [n for n, cache in cluster.caches.items() if list((cache / "runs").glob("krnk-*"))]
    cluster.remove_node(node)           # the machine is gone, with its scratch folder and model copy
    del cluster.caches[node]
    out, err = build.communicate(timeout=600)
    cluster.add("node3")
    assert build.returncode == 0, out[-3000:] + err[-3000:]
    lost = [line for line in err.splitlines() if "its cluster node was lost" in line]
    assert len(lost) == 1 and "training again on another node from step " in lost[0], err[-3000:]
    assert (ws / "build/train/krnk.safetensors").exists() and (ws / "build/train/krnk.safetensors.key").exists()


@pytest.mark.slow
def test_a_build_through_ray_client_trains_on_the_cluster(cluster, tmp_path):
    """ray://head:port (Ray Client): the build is no node of the cluster, and still ships, waits and writes."""
    ws = workspace(tmp_path / "ws", cluster.client_address, steps=4)
    proc = doit(ws, "train:krnk")
    assert "krnk: trained on cluster node" in proc.stderr
    assert (ws / "build/train/krnk.safetensors").exists() and (ws / "build/train/krnk.safetensors.key").exists()
