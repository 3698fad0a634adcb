"""A run's fingerprints: what retrains (run key), what resumes (state key), a model file's identity,
and file digests read once per (size, mtime)."""

import os
from pathlib import Path

import pytest

from charfw.config.models import TrainSettings
from charfw.families import SD15
from charfw.fingerprint import (TRAINER_VERSION, DigestCache, digest_cache, file_identity, fingerprint, model_identity,
                                resume_parts, run_key)
from charfw.request import TrainRequest


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
    from charfw.fingerprint import is_trained, record

    (tmp_path / "a.toml").write_text("x")
    (tmp_path / "f00.png").write_bytes(b"png")
    req = request(tmp_path)
    req.output.write_bytes(b"lora")
    record(req, run_key(req, cpu=True), cpu=True)
    assert is_trained(req) and is_trained(request(tmp_path, mixed_precision="bf16"))
    assert not is_trained(request(tmp_path, lr=3e-4))
    record(req, run_key(req))                                # trained on a GPU: mixed precision mattered
    assert is_trained(req) and not is_trained(request(tmp_path, mixed_precision="bf16"))


WEIGHTS = [dict(lr=2e-4), dict(seed=1), dict(network="lora"), dict(dim=8), dict(alpha="one"), dict(noise_offset=0.05)]
RUN_ONLY = [dict(save_every_n_steps=7), dict(gradient_checkpointing=False), dict(cache_latents="disk"),
            dict(python="python3"), dict(sample_every_n_steps=5)]


@pytest.mark.parametrize("trainer", ["embedded", "sd-scripts"])
def test_both_keys_follow_the_classification_of_settings(tmp_path, trainer):
    """A setting that changes the weights changes the run key and the state key; a run-only one
    changes neither, for both trainers."""
    (tmp_path / "a.toml").write_text("x")
    (tmp_path / "f00.png").write_bytes(b"png")
    cache = DigestCache()

    def keys(**settings):
        req = request(tmp_path, trainer=trainer, **settings)
        return run_key(req, cache), fingerprint(resume_parts(req, [], None, None, 1))

    base = keys()
    for changed in WEIGHTS:
        run, state = keys(**changed)
        assert run != base[0], changed
        if trainer == "embedded":
            assert state != base[1], changed
    for same in RUN_ONLY:
        assert keys(**same) == base, same


def test_the_state_key_holds_the_trainer_version_and_the_run_key_does_not(tmp_path):
    req = request(tmp_path)
    parts = resume_parts(req, [], None, None, 1)
    assert parts["trainer"] == TRAINER_VERSION
    assert fingerprint({**parts, "trainer": TRAINER_VERSION + 1}) != fingerprint(parts)
    assert fingerprint(resume_parts(req, [], None, None, 2)) != fingerprint(parts)     # another world size


def test_one_identity_of_a_model_file(tmp_path):
    from charfw.models.hashing import model_hash

    path = tmp_path / "model.safetensors"
    path.write_bytes(bytes(range(256)) * 8192)   # 2 MiB: the legacy hash reads 64 KiB at 1 MiB
    ident = file_identity(path)
    assert ident.text == f"model.safetensors:{2 * 2**20}:{model_hash(path)}" == model_identity(str(path))
    assert ident.record == {"name": "model.safetensors", "size": 2 * 2**20, "hash": model_hash(path)}
    assert model_identity("builtin:tiny-sd15") == "builtin:tiny-sd15"
    assert model_identity(str(tmp_path / "gone.safetensors")) == "gone.safetensors:missing"
