"""Run keys: what retrains, and file digests read once per (size, mtime)."""

import os
from pathlib import Path

from charfw.families import SD15
from charfw.config.models import TrainSettings
from charfw.request import TrainRequest
from charfw.runkey import DigestCache, digest_cache, run_key


def request(tmp_path: Path, **settings) -> TrainRequest:
    return TrainRequest(name="krnk", settings=TrainSettings(**settings), steps=10, dataset_toml=tmp_path / "a.toml",
                        model="builtin:tiny-sd15", output=tmp_path / "krnk.safetensors", state_dir=tmp_path / "s", family=SD15,
                        root=tmp_path, inputs=(tmp_path / "a.toml", tmp_path / "f00.png"))


def test_digest_is_read_once_per_size_and_mtime(tmp_path):
    f = tmp_path / "f00.png"
    f.write_bytes(b"aaaa")
    cache = DigestCache(tmp_path / "digests.json")
    first = cache.digest(f)
    st = os.stat(f)
    f.write_bytes(b"bbbb")                                  # same size, mtime put back: not read again
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.digest(f) == first
    cache.save()
    assert DigestCache(tmp_path / "digests.json").digest(f) == first   # persisted for the next process
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cache.digest(f) != first                          # touched: read again
    assert cache.digest(tmp_path / "missing.png") is None


def test_run_key_changes_only_with_what_changes_the_weights(tmp_path):
    (tmp_path / "a.toml").write_text("x")
    (tmp_path / "f00.png").write_bytes(b"png")
    cache = digest_cache(tmp_path / "build")
    base = run_key(request(tmp_path), cache)
    assert base is not None
    for same in (dict(save_every_n_steps=7), dict(gradient_checkpointing=False), dict(cache_latents="disk"),
                 dict(extra_args=["--sdpa"]), dict(python="python3")):
        assert run_key(request(tmp_path, **same), cache) == base, same
    assert run_key(request(tmp_path, lr=2e-4), cache) != base
    assert run_key(request(tmp_path, save_precision="float"), cache) != base
    sd = run_key(request(tmp_path, trainer="sd-scripts"), cache)
    assert run_key(request(tmp_path, trainer="sd-scripts", extra_args=["--sdpa"]), cache) != sd
    (tmp_path / "f00.png").write_bytes(b"png2")
    assert run_key(request(tmp_path), cache) != base
    (tmp_path / "f00.png").unlink()
    assert run_key(request(tmp_path), cache) is None        # an input not built yet


def test_a_cpu_trained_lora_ignores_mixed_precision(tmp_path):
    from charfw.runkey import is_trained, record

    (tmp_path / "a.toml").write_text("x")
    (tmp_path / "f00.png").write_bytes(b"png")
    req = request(tmp_path)
    req.output.write_bytes(b"lora")
    record(req, run_key(req, cpu=True), cpu=True)
    assert is_trained(req) and is_trained(request(tmp_path, mixed_precision="bf16"))
    assert not is_trained(request(tmp_path, lr=3e-4))
    record(req, run_key(req))                                # trained on a GPU: mixed precision mattered
    assert is_trained(req) and not is_trained(request(tmp_path, mixed_precision="bf16"))
