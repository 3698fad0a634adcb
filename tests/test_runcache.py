"""The shared run cache: a LoRA trained once under its run key is taken from the cache by every other
workspace with the same inputs; a half-written or corrupt entry is never used."""

import shutil

import pytest
from wsutil import copy_example, run_charfw, run_doit

from charfw.runcache import RunCache, StateStore, cache_url


def test_entries_are_whole_or_absent(tmp_path):
    runs = RunCache(str(tmp_path / "cache"))
    lora = tmp_path / "a.safetensors"
    lora.write_bytes(b"x" * 1000)
    assert not runs.fetch("k1", tmp_path / "out.safetensors") and not (tmp_path / "out.safetensors").exists()
    runs.store("cpu:k1", lora)
    assert runs.has("cpu:k1") and runs.fetch("cpu:k1", tmp_path / "out.safetensors")
    assert (tmp_path / "out.safetensors").read_bytes() == lora.read_bytes()
    assert not [p for p in (tmp_path / "cache").rglob("*") if ".tmp" in p.name]      # no temporary files left
    # a file without its manifest (an upload cut short) is no entry
    (tmp_path / "cache/loras/k2.safetensors").write_bytes(b"half")
    assert not runs.has("k2") and not runs.fetch("k2", tmp_path / "o2.safetensors")
    # a corrupt file is detected, reported, not used, and replaced by the next store
    entry = tmp_path / "cache/loras/cpu-k1.safetensors"
    entry.write_bytes(b"y" * 1000)
    assert not runs.fetch("cpu:k1", tmp_path / "o3.safetensors") and not (tmp_path / "o3.safetensors").exists()
    assert "corrupt" in runs.problems[-1]
    runs.store("cpu:k1", lora)
    assert entry.read_bytes() == lora.read_bytes()


def test_a_stored_state_is_whole_or_absent_and_holds_no_pickle(tmp_path):
    runs = RunCache(str(tmp_path / "cache"))
    store = StateStore(runs)
    state = tmp_path / "a.state"
    state.mkdir()
    (state / "network-00000005.safetensors").write_bytes(b"n" * 100)
    (state / "optim-00000005.safetensors").write_bytes(b"o" * 100)
    (state / "state.json").write_text('{"step": 5}')
    (state / "optim-00000001.pt").write_bytes(b"a pickle")       # an old version's: never uploaded
    (state / "latents").mkdir()
    assert store.store("k", state) == 211
    stored = sorted(p.name for p in (tmp_path / "cache/states/k").iterdir())
    assert stored == ["network-00000005.safetensors", "optim-00000005.safetensors", "state.json"]
    other = tmp_path / "b.state"
    assert store.fetch("k", other, "state.json")
    assert sorted(p.name for p in other.iterdir()) == stored and (other / "state.json").read_text() == '{"step": 5}'
    # a damaged file: nothing of it is used
    (tmp_path / "cache/states/k/optim-00000005.safetensors").write_bytes(b"x" * 100)
    third = tmp_path / "c.state"
    assert not store.fetch("k", third, "state.json") and not (third / "state.json").exists()
    assert "corrupt" in runs.problems[-1]
    # a manifest naming a path outside the folder is refused
    (tmp_path / "cache/states/k.json").write_text('{"files": {"../../evil.json": {"sha256": "0", "size": 1}}}')
    assert not store.fetch("k", third, "state.json") and "refusing" in runs.problems[-1]
    store.drop("k")
    assert not (tmp_path / "cache/states/k").exists() and not (tmp_path / "cache/states/k.json").exists()
    assert not store.fetch("k", third, "state.json")


def test_the_url_comes_from_the_environment_or_the_workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("CHARFW_RUN_CACHE", raising=False)
    assert cache_url(None, tmp_path) is None
    assert cache_url("team-cache", tmp_path) == str(tmp_path / "team-cache")
    assert cache_url("s3://bucket/charfw", tmp_path) == "s3://bucket/charfw"
    monkeypatch.setenv("CHARFW_RUN_CACHE", "file:///mnt/x")
    assert cache_url("team-cache", tmp_path) == "file:///mnt/x"


def sharing(tmp_path, cache, n: int, steps: str) -> list:
    """`n` copies of the example sharing the run cache `cache`, their training steps set by `steps`."""
    spaces = []
    for i in range(n):
        (tmp_path / f"w{i}").mkdir()
        ws = copy_example(tmp_path / f"w{i}")
        text = (ws / "charfw.yaml").read_text()
        assert "\n  steps: 100 " in text
        (ws / "charfw.yaml").write_text(text.replace("\n  steps: 100 ", steps) + f"cache: {cache}\n")
        spaces.append(ws)
    return spaces


@pytest.mark.slow
def test_a_second_workspace_trains_nothing_and_a_corrupt_entry_is_retrained(tmp_path):
    cache = tmp_path / "shared-cache"
    spaces = sharing(tmp_path, cache, 3, "\n  steps: 12 ")
    first = run_doit(spaces[0], "compress:krnk")
    assert "taken from the run cache" not in first.stderr
    lora = spaces[0] / "build/train/krnk.safetensors"
    assert len(list((cache / "loras").glob("*.json"))) == 1

    run_doit(spaces[1], "dataset:krnk")
    plan = run_charfw(spaces[1], "plan", "krnk")
    assert "krnk: 12 steps" in plan.stdout and "served by the run cache, not trained" in plan.stdout
    second = run_doit(spaces[1], "compress:krnk")
    assert "krnk: taken from the run cache" in second.stderr
    assert (spaces[1] / "dist/krnk.safetensors").read_bytes() == (spaces[0] / "dist/krnk.safetensors").read_bytes()
    assert (spaces[1] / "build/train/krnk.safetensors").read_bytes() == lora.read_bytes()
    assert not (spaces[1] / "build/logs/krnk").exists()                     # no training ran
    assert run_doit(spaces[1], "train:krnk").stdout.count(".  train:krnk") == 0   # and it is up to date

    entry = next((cache / "loras").glob("*.safetensors"))
    data = bytearray(entry.read_bytes())
    data[-1] ^= 0xFF
    entry.write_bytes(bytes(data))
    third = run_doit(spaces[2], "train:krnk")
    assert "is corrupt" in third.stderr and "taken from the run cache" not in third.stderr
    assert (spaces[2] / "build/logs/krnk").exists()                         # trained again
    assert entry.read_bytes() == (spaces[2] / "build/train/krnk.safetensors").read_bytes()   # entry replaced
    shutil.rmtree(cache)


@pytest.mark.slow
def test_a_run_stopped_on_one_machine_resumes_on_another_through_the_cache(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    cache = tmp_path / "shared-cache"
    spaces = sharing(tmp_path, cache, 2, "\n  steps: 30\n  save_every_n_steps: 5\n  #")
    for ws in spaces:
        run_doit(ws, "dataset:krnk")
    state = spaces[0] / "build/train/krnk.state/state.json"
    build = subprocess.Popen([sys.executable, "-m", "doit", "train:krnk"], cwd=spaces[0], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not state.exists() and time.monotonic() < deadline and build.poll() is None:
        time.sleep(0.2)
    build.send_signal(signal.SIGTERM)
    _, err = build.communicate(timeout=300)
    assert "krnk: state stored in the run cache" in err, err[-2000:]
    step = int(err.split("saved at step ")[1].split(";")[0])
    assert len(list((cache / "states").glob("*.json"))) == 1 and not list((cache / "loras").glob("*"))

    second = run_doit(spaces[1], "train:krnk")
    assert f"krnk: resuming from the state saved in the run cache at step {step}" in second.stderr
    assert (spaces[1] / "build/train/krnk.safetensors").exists()
    assert not list((cache / "states").glob("*.json"))          # finished: the state is gone, the LoRA stored
    assert len(list((cache / "loras").glob("*.json"))) == 1
    assert os.path.exists(spaces[1] / "build/train/krnk.safetensors.key")
