"""End-to-end training on builtin:tiny-sd15 with a tiny drawn dataset (CPU, offline)."""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from safetensors.torch import load_file

from charfw.config.models import TrainSettings
from charfw.errors import CharfwError
from charfw.families import SD15
from charfw.lora.keys import lora_module_specs
from charfw.models.text import encode_text, tokenize
from charfw.recipe import network_spec
from charfw.request import TrainRequest
from charfw.train import loop, train_lora
from charfw.train.dataset import load_datasets
from charfw.train.latents import LatentCache
from charfw.train.network import Network
from charfw.train.objective import diffusion_loss
from charfw.train.sampling import Sample

pytestmark = pytest.mark.slow  # trains the tiny model

FAST = dict(dim=4, save_every_n_steps=1000, gradient_checkpointing=False)


def job(toml, tmp, settings, steps, **kw) -> TrainRequest:
    defaults = dict(output=tmp / "out.safetensors", state_dir=tmp / "state", name="krnk",
                    trigger_words=("krnk",), progress=False, family=SD15)
    defaults.update(kw)
    return TrainRequest(settings=settings, steps=steps, dataset_toml=toml, model="builtin:tiny-sd15", **defaults)


def run(req: TrainRequest, **kw) -> Path:
    """The loop, as an entry point runs it (accelerate's process state reset first)."""
    loop.reset_accelerate()
    return loop.run(req, **kw)


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safetensors.safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def modules(tensors) -> dict[str, set[str]]:
    out = collections.defaultdict(set)
    for key in tensors:
        name, _, suffix = key.partition(".")
        out[name].add(suffix)
    return out


@pytest.fixture(scope="module")
def trained(dataset_toml, tmp_path_factory):
    """C3Lier dim 8, 30 steps at a high learning rate: enough to overfit four images measurably."""
    tmp = tmp_path_factory.mktemp("c3lier")
    settings = TrainSettings(network="c3lier", dim=8, lr=3e-3, save_every_n_steps=1000, gradient_checkpointing=True)
    losses = []
    j = job(dataset_toml, tmp, settings, 30, log_dir=tmp / "logs")
    run(j, on_step=lambda step, loss: losses.append(loss))
    return j, settings, losses


def eval_loss(tiny, network: Network | None, toml: Path) -> float:
    """Mean loss over every image at fixed timesteps and noise: comparable before/after training."""
    [ds] = load_datasets(toml)
    cache = LatentCache(tiny.vae, [ds], seed=0, device="cpu", disk_dir=None, vae_id="eval")
    gen = torch.Generator().manual_seed(1)
    total = 0.0
    if network is not None:
        network.apply_to()
    try:
        with torch.no_grad():
            for i, image in enumerate(ds.images):
                x0 = cache.batch((Sample(0, i, False, 0),)).repeat(8, 1, 1, 1)
                context = encode_text(tiny.text_encoder, tokenize(tiny.tokenizer, [image.caption] * 8), 2)
                noise = torch.randn(x0.shape, generator=gen)
                t = torch.linspace(50, 950, 8).long()
                total += diffusion_loss(tiny.unet, tiny.noise_scheduler, x0, context, noise, t).item()
    finally:
        if network is not None:
            network.restore()
    return total / len(ds.images)


def test_loss_falls_when_overfitting(trained, tiny, dataset_toml):
    j, settings, losses = trained
    assert len(losses) == 30 and all(l == l for l in losses)
    before = eval_loss(tiny, None, dataset_toml)
    net = Network(network_spec(settings), tiny)
    net.load_kohya(load_file(str(j.output)), j.output)
    after = eval_loss(tiny, net, dataset_toml)
    assert after < 0.85 * before, (before, after)


def test_c3lier_file_has_the_sd15_c3lier_key_set(trained):
    j, settings, _ = trained
    tensors, _ = read(j.output)
    mods = modules(tensors)
    assert set(mods) == set(list(lora_module_specs(SD15, conv3x3=True))) and len(mods) == 350
    assert all(s == {"lora_down.weight", "lora_up.weight", "alpha"} for s in mods.values())
    assert all(t.dtype == torch.float16 for t in tensors.values())   # save_precision fp16
    assert tensors["lora_unet_mid_block_attentions_0_proj_in.alpha"].dim() == 0
    assert float(tensors["lora_unet_mid_block_attentions_0_proj_in.alpha"]) == 4.0
    assert tensors["lora_unet_up_blocks_1_resnets_0_conv1.lora_down.weight"].shape[2:] == (3, 3)
    assert tensors["lora_unet_up_blocks_1_resnets_0_conv1.lora_up.weight"].abs().sum() > 0   # trained
    assert not any(j.state_dir.glob("*.json")) and not any(j.state_dir.glob("network-*"))     # state removed


# What sd-scripts' train_network.py writes for a dataset-config SD1.5 run (its metadata dict, the
# dataset summaries, the network args and the base-model name and hashes, the end-of-run keys).
SD_SCRIPTS_SS_KEYS = """session_id training_started_at output_name learning_rate text_encoder_lr unet_lr num_train_images
num_validation_images num_reg_images num_batches_per_epoch num_epochs gradient_checkpointing
gradient_accumulation_steps max_train_steps lr_warmup_steps lr_scheduler network_module network_dim network_alpha
network_dropout mixed_precision full_fp16 v2 base_model_version clip_skip max_token_length cache_latents seed lowram
noise_offset multires_noise_iterations multires_noise_discount adaptive_noise_scale zero_terminal_snr
training_comment sd_scripts_commit_hash optimizer max_grad_norm caption_dropout_rate caption_dropout_every_n_epochs
caption_tag_dropout_rate face_crop_aug_range prior_loss_weight min_snr_gamma scale_weight_norms ip_noise_gamma
debiased_estimation noise_offset_random_strength ip_noise_gamma_random_strength loss_type huber_schedule huber_scale
huber_c fp8_base fp8_base_unet validation_seed validation_split max_validation_steps validate_every_n_epochs
validate_every_n_steps resize_interpolation datasets tag_frequency dataset_dirs network_args sd_model_hash
new_sd_model_hash sd_model_name training_finished_at steps epoch""".split()
DATASET_KEYS = {"is_dreambooth", "batch_size_per_device", "num_train_images", "num_reg_images", "resolution",
                "enable_bucket", "min_bucket_reso", "max_bucket_reso", "tag_frequency", "bucket_info",
                "resize_interpolation", "subsets"}
SUBSET_KEYS = {"img_count", "num_repeats", "color_aug", "flip_aug", "random_crop", "shuffle_caption", "keep_tokens",
               "keep_tokens_separator", "secondary_separator", "enable_wildcard", "caption_prefix", "caption_suffix",
               "resize_interpolation", "image_dir", "class_tokens", "is_reg"}


def test_metadata_has_every_key_sd_scripts_writes(trained):
    _, meta = read(trained[0].output)
    assert sorted(k for k in SD_SCRIPTS_SS_KEYS if "ss_" + k not in meta) == []
    [ds] = json.loads(meta["ss_datasets"])
    assert set(ds) >= DATASET_KEYS and set(ds["subsets"][0]) >= SUBSET_KEYS
    assert meta["ss_loss_type"] == "l2" and meta["ss_validation_split"] == "0.0" and meta["ss_lowram"] == "False"
    assert meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["modelspec.implementation_version"] == meta["ss_sd_scripts_commit_hash"] == "charfw/0.1.0"


def test_metadata_and_hashes(trained):
    j, settings, _ = trained
    tensors, meta = read(j.output)
    expect = {
        "ss_network_module": "networks.lora", "ss_network_dim": "8", "ss_network_alpha": "4.0",
        "ss_max_train_steps": "30", "ss_steps": "30", "ss_clip_skip": "2", "ss_seed": "31337",
        "ss_optimizer": "torch.optim.adamw.AdamW", "ss_lr_scheduler": "cosine_with_restarts",
        "ss_mixed_precision": "no", "ss_v2": "False", "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": "builtin:tiny-sd15", "ss_output_name": "krnk", "ss_num_train_images": "8",
        "ss_resolution": "(512, 512)", "ss_gradient_checkpointing": "True",
        "modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.implementation": "diffusers",
        "modelspec.title": "krnk", "modelspec.trigger_phrase": "krnk", "modelspec.resolution": "512x512",
    }
    assert {k: meta.get(k) for k in expect} == expect
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "8", "conv_alpha": "4"}
    assert float(meta["ss_learning_rate"]) == 3e-3 and float(meta["ss_unet_lr"]) == 3e-3
    assert float(meta["ss_text_encoder_lr"]) == pytest.approx(1320e-6)
    assert float(meta["ss_training_started_at"]) <= float(meta["ss_training_finished_at"]) <= time.time()
    assert json.loads(meta["ss_tag_frequency"]) == {"krnk girl_f0064": {
        "krnk": 4, "white background": 4, "from front": 4, "c0": 1, "c1": 1, "c2": 1, "c3": 1}}
    [ds] = json.loads(meta["ss_datasets"])
    assert ds["num_train_images"] == 8 and ds["batch_size_per_device"] == 2 and ds["resolution"] == [512, 512]
    assert ds["subsets"][0]["image_dir"] == "krnk girl_f0064" and ds["subsets"][0]["flip_aug"] is True
    assert sorted(tuple(b["resolution"]) for b in ds["bucket_info"]["buckets"].values()) == [(64, 64), (64, 128)]
    assert "usage_hint" in " ".join(meta) and meta["modelspec.date"][:4].isdigit()

    # base model hashes: A1111 legacy hash and full SHA-256 of the checkpoint that was trained on
    from charfw.models import builtin_path
    model = builtin_path("tiny-sd15").read_bytes()
    assert meta["ss_sd_model_hash"] == hashlib.sha256(model[0x100000:0x110000]).hexdigest()[:8]
    assert meta["ss_new_sd_model_hash"] == hashlib.sha256(model).hexdigest()

    # sshs hashes, recomputed from their definition: serialise with only ss_* metadata,
    # model hash = SHA-256 after the header, legacy = SHA-256 of bytes 1 MiB .. 1 MiB + 64 KiB
    blob = safetensors.torch.save(tensors, {k: v for k, v in meta.items() if k.startswith("ss_")})
    header = int.from_bytes(blob[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(blob[8 + header:]).hexdigest()
    assert meta["sshs_legacy_hash"] == hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    raw = j.output.read_bytes()   # the tensor bytes of the file itself are the same bytes
    assert hashlib.sha256(raw[8 + int.from_bytes(raw[:8], "little"):]).hexdigest() == meta["sshs_model_hash"]


def test_diffusers_loads_the_lora(trained, tiny, caplog):
    j, _, _ = trained
    pipe = tiny.pipeline()  # diffusers' load_lora_weights needs peft (a test dependency)
    pipe.set_progress_bar_config(disable=True)

    def image():
        return pipe("krnk, white background", num_inference_steps=2, height=64, width=64, guidance_scale=1.0,
                    output_type="pt", generator=torch.Generator().manual_seed(0)).images

    before = image()
    with caplog.at_level(logging.WARNING):
        pipe.load_lora_weights(str(j.output), adapter_name="krnk")
    try:
        assert not [r for r in caplog.records if "unexpected" in r.getMessage().lower()]
        unet_layers = sum(1 for _, m in pipe.unet.named_modules() if hasattr(m, "lora_A") and "krnk" in m.lora_A)
        te_layers = sum(1 for _, m in pipe.text_encoder.named_modules() if hasattr(m, "lora_A") and "krnk" in m.lora_A)
        assert (unet_layers, te_layers) == (278, 72)
        assert (image() - before).abs().max() > 1e-3
    finally:
        pipe.unload_lora_weights()
    assert torch.allclose(image(), before, atol=1e-5)


def test_tensorboard_scalars(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    j, _, _ = trained
    [events] = list((j.log_dir / "krnk").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/current", "loss/average", "lr/unet", "lr/textencoder"} <= tags
    assert len(acc.Scalars("loss/current")) == 30


def test_plain_lora_key_set(dataset_toml, tmp_path):
    settings = TrainSettings(network="lora", **FAST)
    out = run(job(dataset_toml, tmp_path, settings, 2))
    tensors, meta = read(out)
    assert set(modules(tensors)) == set(list(lora_module_specs(SD15, conv3x3=False))) and len(modules(tensors)) == 264
    assert "ss_network_args" not in meta and meta["ss_network_module"] == "networks.lora"


@pytest.mark.parametrize("algo, marker", [("locon", "lora_down.weight"), ("loha", "hada_w1_a"), ("lokr", "lokr_w1")])
def test_lycoris_key_forms(dataset_toml, tmp_path, algo, marker):
    from charfw.lora.io import load_lora

    settings = TrainSettings(network=algo, lr=1e-2, **FAST)
    out = run(job(dataset_toml, tmp_path, settings, 2))
    tensors, meta = read(out)
    mods = modules(tensors)
    assert set(mods) == set(list(lora_module_specs(SD15, conv3x3=True)))
    assert all(marker in s and "alpha" in s for s in mods.values())
    assert meta["ss_network_module"] == "lycoris.kohya" and json.loads(meta["ss_network_args"])["algo"] == algo
    lora = load_lora(out)   # charfw's own reader understands what the trainer wrote
    kinds = {m.kind for m in lora.modules.values()}
    assert kinds == {"lora" if algo == "locon" else algo}
    from charfw.lora.modules import delta_matrix
    assert any(delta_matrix(m).abs().sum() > 0 for m in lora.modules.values())   # 2 steps moved it off zero


def test_init_weights_start_training_from_a_lora(trained, dataset_toml, tmp_path):
    j, settings, _ = trained
    start = load_file(str(j.output))
    tiny_lr = settings.model_copy(update={"lr": 1e-12, "text_encoder_lr": 1e-12, "save_precision": "float",
                                          "gradient_checkpointing": False})
    out = run(job(dataset_toml, tmp_path, tiny_lr, 1, init_weights=j.output))
    got = load_file(str(out))
    assert got.keys() == start.keys()
    for key, value in start.items():
        assert torch.allclose(got[key], value.float(), atol=1e-6), key
    with pytest.raises(CharfwError, match="safetensors"):
        train_lora(job(dataset_toml, tmp_path, settings, 1, output=tmp_path / "x.safetensors",
                       state_dir=tmp_path / "s", name="x", init_weights=tmp_path / "face.pt"))


def test_resume_continues_exactly(dataset_toml, tmp_path, caplog):
    settings = TrainSettings(network="c3lier", **{**FAST, "save_every_n_steps": 3})
    whole = run(job(dataset_toml, tmp_path / "a", settings, 6, output=tmp_path / "a.safetensors"))

    class Interrupt(Exception):
        pass

    def stop_at_5(step, loss):
        if step == 5:
            raise Interrupt

    b = job(dataset_toml, tmp_path / "b", settings, 6, output=tmp_path / "b.safetensors")
    with pytest.raises(Interrupt):
        run(b, on_step=stop_at_5)
    assert json.loads((b.state_dir / "state.json").read_text())["step"] == 3 and not b.output.exists()
    with caplog.at_level(logging.INFO, logger="charfw.train"):
        run(b)
    assert "resuming krnk from step 3" in caplog.text
    first, second = load_file(str(whole)), load_file(str(b.output))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)   # same batches, noise, optimizer state
    assert not b.state_dir.exists()                               # no empty state folder left behind


SCRIPT = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from charfw.config.models import TrainSettings
from charfw.families import SD15
from charfw.request import TrainRequest
from charfw.train import train_lora
tmp = Path(sys.argv[1])
train_lora(TrainRequest(name="krnk", settings=TrainSettings.model_validate_json(sys.argv[3]), steps=int(sys.argv[4]),
                        dataset_toml=Path(sys.argv[2]), model="builtin:tiny-sd15", output=tmp / "out.safetensors",
                        state_dir=tmp / "state", trigger_words=("krnk",), progress=False, family=SD15))
"""


def test_kill_and_resume(dataset_toml, tmp_path, caplog):
    settings = TrainSettings(network="c3lier", **{**FAST, "save_every_n_steps": 2})
    steps = 24
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path), str(dataset_toml),
                             settings.model_dump_json(), str(steps)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "state" / "state.json"
    deadline = time.time() + 180
    try:
        while not state.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "no state saved in time"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    saved = json.loads(state.read_text())["step"]
    assert 2 <= saved < steps and not (tmp_path / "out.safetensors").exists()

    other = tmp_path / "other"       # the same state, offered to a run with different settings
    shutil.copytree(tmp_path / "state", other / "state")
    with caplog.at_level(logging.INFO, logger="charfw.train"):
        train_lora(job(dataset_toml, tmp_path, settings, steps))
    assert f"resuming krnk from step {saved}" in caplog.text
    assert (tmp_path / "out.safetensors").is_file() and not state.exists()
    assert read(tmp_path / "out.safetensors")[1]["ss_steps"] == str(steps)

    caplog.clear()
    changed = settings.model_copy(update={"lr": 2e-4})
    with caplog.at_level(logging.INFO, logger="charfw.train"):
        run(job(dataset_toml, other, changed, 2))
    assert "discarding saved training state of a different run" in caplog.text and "resuming" not in caplog.text
    assert not (other / "state" / "state.json").exists() and (other / "out.safetensors").is_file()


def test_disk_latent_cache_is_reused(dataset_toml, tmp_path, caplog):
    settings = TrainSettings(network="lora", cache_latents="disk", **FAST)
    with caplog.at_level(logging.INFO, logger="charfw.train"):
        run(job(dataset_toml, tmp_path, settings, 2))
        first = sorted((tmp_path / "state" / "latents").glob("*.safetensors"))
        run(job(dataset_toml, tmp_path, settings.model_copy(update={"lr": 5e-5}), 2))
    assert first and "(0 VAE encodes)" in caplog.text   # same samples, read back from disk


@pytest.mark.parametrize("w", [0.5, 0.3, -0.7])
def test_block_weights_bake_exactly_into_trained_fp16_files(trained, dataset_toml, tmp_path, w):
    """A trained fp16 `lora_up` is tiny (it starts at zero); the bake keeps ΔW to fp16's own rounding."""
    from charfw.lora import load_lora, merge_file
    from charfw.lora.modules import delta_matrix

    j, _, _ = trained
    locon = run(job(dataset_toml, tmp_path, TrainSettings(network="locon", **FAST), 4,
                    output=tmp_path / "locon.safetensors"))
    for src in (j.output, locon):
        before = load_lora(src)
        assert {t.dtype for m in before.modules.values() for t in m.tensors.values()} == {torch.float16}
        merge_file(src, tmp_path / "baked.safetensors", [w] * 26)
        after = load_lora(tmp_path / "baked.safetensors")
        assert after.modules.keys() == before.modules.keys()
        for name, m in before.modules.items():
            want = w * delta_matrix(m, torch.float64)
            got = delta_matrix(after.modules[name], torch.float64)
            assert torch.linalg.norm(got - want) <= 2e-3 * torch.linalg.norm(want), (src.name, name)


def test_a_run_that_fails_before_training_leaves_no_empty_log(dataset_toml, tmp_path):
    bad = tmp_path / "face.safetensors"
    bad.write_bytes(b"not a lora")
    with pytest.raises(CharfwError):
        run(job(dataset_toml, tmp_path, TrainSettings(network="lora", **FAST), 2, log_dir=tmp_path / "logs",
                init_weights=bad))
    assert not list((tmp_path / "logs").rglob("events.out.tfevents.*"))


def test_a_full_disk_keeps_the_trained_steps(dataset_toml, tmp_path, caplog, monkeypatch):
    """Writing the LoRA fails with ENOSPC: one line naming the file, no partial file, the finished run's
    state saved; after space is freed a rerun writes the LoRA without training again, and leaves no
    state folder behind."""
    from charfw.pipeline.actions import reported

    settings = TrainSettings(network="c3lier", **FAST)
    req = job(dataset_toml, tmp_path, settings, 4)
    real_write = loop.write_safetensors

    def full_disk(path, tensors, metadata):
        from charfw.fsutil import atomic_path
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"\0" * 4096)   # some of it made it to the disk
            raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(loop, "write_safetensors", full_disk)
    loop.reset_accelerate()
    failure = reported(loop.run)(req)
    assert failure is not None, "the failed write was not reported"
    assert "\n" not in failure.message and str(req.output) in failure.message
    assert "No space left on device" in failure.message and "without training again" in failure.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]   # no partial or temporary LoRA file
    assert json.loads((req.state_dir / "state.json").read_text())["step"] == 4

    monkeypatch.setattr(loop, "write_safetensors", real_write)
    trained_steps = []
    with caplog.at_level(logging.INFO, logger="charfw.train"):
        run(req, on_step=lambda step, loss: trained_steps.append(step))
    assert "resuming krnk from step 4" in caplog.text and trained_steps == []
    assert read(req.output)[1]["ss_steps"] == "4"
    assert not req.state_dir.exists()
