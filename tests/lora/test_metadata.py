"""Hashes are recomputed as sd-scripts defines them; input metadata survives every edit."""

import hashlib
import json

import pytest
import safetensors.torch
import torch
from lora_factory import lora_tensors, write

from charfw.families import SD15
from charfw.lora import compress_file, load_lora, merge_file
from charfw.lora.keys import lora_module_specs
from charfw.lora.options import CompressOptions

INPUT_META = {"ss_network_dim": "8", "ss_network_alpha": "4.0", "ss_training_comment": "krnk face",
              "ss_tag_frequency": json.dumps({"krnk": {"krnk": 12}}), "modelspec.title": "krnk",
              "sshs_model_hash": "stale", "sshs_legacy_hash": "stale"}


@pytest.fixture(scope="module")
def big_lora(tmp_path_factory):
    """> 1.1 MB, so the legacy hash window (bytes 0x100000..0x10FFFF) holds tensor data."""
    specs = lora_module_specs(SD15, True)
    names = ["lora_unet_down_blocks_2_resnets_0_conv1", "lora_unet_down_blocks_2_resnets_0_conv2",
             "lora_unet_up_blocks_1_resnets_0_conv1", "lora_te_text_model_encoder_layers_0_mlp_fc1"]
    gen = torch.Generator().manual_seed(11)
    modules = {n: lora_tensors(specs[n], 8, gen, decay=0.7) for n in names}
    path = write(tmp_path_factory.mktemp("m") / "krnk.safetensors", modules, INPUT_META)
    assert path.stat().st_size > 0x110000
    return path


def independent_hashes(path):
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    model = hashlib.sha256(raw[8 + header_len:]).hexdigest()
    with safetensors.safe_open(str(path), "pt") as f:
        meta = f.metadata()
    ss_only = {k: v for k, v in meta.items() if k.startswith("ss_")}
    legacy_bytes = safetensors.torch.save(safetensors.torch.load_file(str(path)), ss_only)
    legacy = hashlib.sha256(legacy_bytes[0x100000:0x110000]).hexdigest()[:8]
    return model, legacy, meta


@pytest.mark.parametrize("edit", ["merge", "compress"])
def test_hashes_recomputed_and_metadata_kept(big_lora, tmp_path, edit):
    out = tmp_path / "out.safetensors"
    if edit == "merge":
        merge_file(big_lora, out, "OUT04=0.5,IN07=-1")
    else:
        compress_file(big_lora, out, CompressOptions.of(method="sv_fro", value=0.9))
    model, legacy, meta = independent_hashes(out)
    assert (meta["sshs_model_hash"], meta["sshs_legacy_hash"]) == (model, legacy)
    assert model != "stale" and len(model) == 64 and len(legacy) == 8
    for key, value in INPUT_META.items():
        if key.startswith("sshs_"):
            continue
        if key == "ss_training_comment":
            assert meta[key].endswith("; krnk face")
        elif key in ("ss_network_dim", "ss_network_alpha"):   # the scale is folded in: alpha = rank
            assert meta[key] in ("Dynamic",) or meta[key].replace(".", "").isdigit()
        else:
            assert meta[key] == value, key
    if edit == "merge":
        assert meta["charfw_block_weights"].split(",")[8] == "-1"      # BASE, IN00.. -> IN07 is 8th
        assert meta["charfw_block_weights_spec"] == "OUT04=0.5,IN07=-1"
        assert "block weights OUT04=0.5,IN07=-1 applied" in meta["ss_training_comment"]
    else:
        assert json.loads(meta["charfw_compress"])["method"] == "sv_fro"


def test_uniform_ranks_are_numbers(big_lora, tmp_path):
    out = tmp_path / "r4.safetensors"
    compress_file(big_lora, out, CompressOptions.of(method="rank", value=4))
    meta = load_lora(out).metadata
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "4"   # scale folded in: alpha = rank


@pytest.mark.parametrize("metadata", [{}, {"ss_a": "x"}, {"ss_comment": "くろねこ \"q\" \\ \n\t\x01 é", "other": "y"}])
@pytest.mark.parametrize("mb", [0.2, 1.3])
def test_streamed_hashes_equal_the_serialized_definition(metadata, mb):
    """sd-scripts' definition serializes the file (tensors + ss_* metadata) and hashes it; charfw hashes the
    tensors' memory in safetensors' layout order instead: the same digests, for mixed dtypes and sizes
    whose legacy window falls inside, across and past tensors."""
    import safetensors.torch
    import torch

    from charfw.lora.metadata import safetensors_hashes

    gen = torch.Generator().manual_seed(0)
    n = int(mb * 2**20 / 4)
    tensors = {"b.lora_up.weight": torch.randn(n // 2, generator=gen), "a.lora_down.weight": torch.randn(n // 3,
               generator=gen).half(), "a.alpha": torch.tensor(4.0).bfloat16(), "c.idx": torch.arange(7),
               "d.mask": torch.tensor([True, False]), "e.w": torch.randn(3, 5, generator=gen).double()}
    training = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    data = safetensors.torch.save(tensors, training)
    start = 8 + int.from_bytes(data[:8], "little")
    expected = (hashlib.sha256(data[start:]).hexdigest(), hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8])
    assert safetensors_hashes(tensors, metadata) == expected
