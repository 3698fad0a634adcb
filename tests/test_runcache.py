"""The shared run cache: a LoRA trained once under its run key is taken from the cache by every other
workspace with the same inputs; a half-written or corrupt entry is never used."""

import shutil

import pytest
from wsutil import copy_example, run_charfw, run_doit

from charfw.runcache import RunCache, cache_url


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


def test_the_url_comes_from_the_environment_or_the_workspace(tmp_path, monkeypatch):
    monkeypatch.delenv("CHARFW_RUN_CACHE", raising=False)
    assert cache_url(None, tmp_path) is None
    assert cache_url("team-cache", tmp_path) == str(tmp_path / "team-cache")
    assert cache_url("s3://bucket/charfw", tmp_path) == "s3://bucket/charfw"
    monkeypatch.setenv("CHARFW_RUN_CACHE", "file:///mnt/x")
    assert cache_url("team-cache", tmp_path) == "file:///mnt/x"


@pytest.mark.slow
def test_a_second_workspace_trains_nothing_and_a_corrupt_entry_is_retrained(tmp_path):
    cache = tmp_path / "shared-cache"
    spaces = []
    for i in range(3):
        (tmp_path / f"w{i}").mkdir()
        ws = copy_example(tmp_path / f"w{i}")
        text = (ws / "charfw.yaml").read_text()
        assert "\n  steps: 100 " in text
        (ws / "charfw.yaml").write_text(text.replace("\n  steps: 100 ", "\n  steps: 12 ") + f"cache: {cache}\n")
        spaces.append(ws)
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
