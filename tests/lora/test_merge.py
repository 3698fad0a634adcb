"""Block-weight merge scales ΔW by exactly w per block, for every algorithm."""

import pytest
import torch
from lora_factory import VARIANTS, make_tensors, write

from charfw.errors import CharfwError
from charfw.families import SD15
from charfw.lora import load_lora, merge_file
from charfw.lora.modules import delta_matrix

# one real module name per block used, with the variant's name folded in to keep names unique
WEIGHTED = {"IN04": "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_{}",
            "OUT03": "lora_unet_up_blocks_1_resnets_0_conv1_{}",
            "BASE": "lora_te_text_model_encoder_layers_3_mlp_fc{}"}
CONTROL = {"IN05": "lora_unet_down_blocks_1_attentions_1_proj_in_{}", "outside": "lora_unet_conv_out_{}"}


def folds(m) -> bool:
    """LoRA modules (not Tucker LoCon) are written with their scale folded in."""
    return m.kind == "lora" and "lora_mid.weight" not in m.tensors


def build(tmp_path, gen):
    modules = {}
    for variant in VARIANTS:
        for name in (*WEIGHTED.values(), *CONTROL.values()):
            modules[name.format(variant)] = make_tensors(variant, gen=gen)
    return write(tmp_path / "in.safetensors", modules, {"ss_network_dim": "4", "ss_output_name": "x"})


@pytest.mark.parametrize("w", [0.0, 0.5, -1.0, 1.7])
def test_merged_delta_is_w_times_delta(tmp_path, w):
    src = build(tmp_path, torch.Generator().manual_seed(3))
    dst = tmp_path / "out.safetensors"
    report = merge_file(src, dst, f"IN04={w},OUT03={w},BASE={w}")
    before, after = load_lora(src).modules, load_lora(dst).modules
    assert report["modules_in"] == len(before) and report["modules_out"] == len(after)
    for variant in VARIANTS:
        for name in (n.format(variant) for n in WEIGHTED.values()):
            if w == 0:
                assert name not in after, name
                continue
            expected = w * delta_matrix(before[name], torch.float64)
            error = torch.linalg.norm(delta_matrix(after[name], torch.float64) - expected)
            assert error <= 1e-6 * torch.linalg.norm(expected), name  # float32 rounding of the factors
            changed = {k for k in before[name].tensors if k not in after[name].tensors
                       or not torch.equal(before[name].tensors[k], after[name].tensors[k])}
            if folds(before[name]):   # scale folded into both factors, no alpha: every loader agrees
                assert after[name].alpha is None and changed <= {"lora_up.weight", "lora_down.weight", "alpha"}
            else:
                assert after[name].alpha == before[name].alpha
                assert changed <= {before[name].merge_key}, (name, changed)
        for name in (n.format(variant) for n in CONTROL.values()):
            if folds(before[name]):
                expected = delta_matrix(before[name], torch.float64)
                error = torch.linalg.norm(delta_matrix(after[name], torch.float64) - expected)
                assert error <= 1e-6 * torch.linalg.norm(expected) and after[name].alpha is None, name
                continue
            for k, t in before[name].tensors.items():
                assert torch.equal(after[name].tensors[k], t), (name, k)
    if w == 0:
        assert not any(k.startswith(tuple(n.format("") for n in WEIGHTED.values())) for k in after)


def test_dora_only_zero_or_one(tmp_path):
    gen = torch.Generator().manual_seed(4)
    name = "lora_unet_down_blocks_1_attentions_0_proj_out"
    src = write(tmp_path / "d.safetensors", {
        name: make_tensors("lora_linear", dora=True, gen=gen),
        "lora_te_text_model_encoder_layers_0_mlp_fc1": make_tensors("loha", gen=gen)})
    with pytest.raises(CharfwError, match="DoRA") as err:
        merge_file(src, tmp_path / "o.safetensors", "IN04=0.5")
    assert name in str(err.value) and str(src) in str(err.value)
    assert not (tmp_path / "o.safetensors").exists()
    merge_file(src, tmp_path / "one.safetensors", "IN04=1,BASE=0.5")
    assert "dora_scale" in load_lora(tmp_path / "one.safetensors").modules[name].tensors
    merge_file(src, tmp_path / "zero.safetensors", "IN04=0")
    out = load_lora(tmp_path / "zero.safetensors")
    assert name not in out.modules and not any(k.startswith(name) for k in out.modules)


def test_presets_and_all_zero(tmp_path):
    src = build(tmp_path, torch.Generator().manual_seed(5))
    merge_file(src, tmp_path / "all.safetensors", "FULL")
    before, after = load_lora(src), load_lora(tmp_path / "all.safetensors")
    assert set(after.modules) == set(before.modules)
    sampler, attn = "lora_unet_down_blocks_0_downsamplers_0_conv", WEIGHTED["IN04"].format("a")   # IN03, IN04
    both = write(tmp_path / "both.safetensors", {sampler: make_tensors("c3lier_conv3x3"),
                                                  attn: make_tensors("lora_linear")})
    merge_file(both, tmp_path / "lbw.safetensors", "ALL", family=SD15)    # LBW's ALL: blocks its 17 values lack are 0
    assert set(load_lora(tmp_path / "lbw.safetensors").modules) == {attn}
    merge_file(both, tmp_path / "full.safetensors", "FULL", family=SD15)
    assert set(load_lora(tmp_path / "full.safetensors").modules) == {sampler, attn}
    merge_file(src, tmp_path / "none.safetensors", "NONE")  # outside-block modules keep weight 1
    assert {n.split("_conv_out_")[0] for n in load_lora(tmp_path / "none.safetensors").modules} == {"lora_unet"}
    inside = write(tmp_path / "inside.safetensors", {WEIGHTED["BASE"].format(1): make_tensors("loha")})
    with pytest.raises(CharfwError, match="drop every module of this LoRA"):
        merge_file(inside, tmp_path / "empty.safetensors", "NONE")
    assert not (tmp_path / "empty.safetensors").exists()


def test_weights_that_drop_everything_say_so(tmp_path):
    import safetensors.torch
    import torch as _torch

    src = tmp_path / "te.safetensors"
    name = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    safetensors.torch.save_file({f"{name}.lora_down.weight": _torch.ones(2, 8), f"{name}.lora_up.weight": _torch.ones(8, 2),
                                 f"{name}.alpha": _torch.tensor(1.0)}, str(src))
    with pytest.raises(CharfwError, match=r"te\.safetensors: block weights 0,1,.* drop every module .*blocks BASE"):
        merge_file(src, tmp_path / "out.safetensors", "FACE")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("spec, recorded", [("FACE", "FACE"), ("MINE", "MINE"), ("face,OUT03=0", "face,OUT03=0"),
                                            ([1.0] * 26, None)])
def test_the_build_records_the_weights_as_written(tmp_path, spec, recorded):
    """The merge stage passes the manifest's value: a preset's name is what the file says was applied."""
    from safetensors import safe_open

    from charfw.lora.blocks import format_weights, parse_weights
    from charfw.pipeline.actions import merge

    src = build(tmp_path, torch.Generator().manual_seed(6))
    presets = {"MINE": "FACE,IN04=0.5"}
    assert merge(str(src), str(tmp_path / "out.safetensors"), spec, presets) is None    # no failure reported
    with safe_open(str(tmp_path / "out.safetensors"), "pt") as f:
        meta = f.metadata()
    numbers = format_weights(parse_weights(spec, SD15, presets), SD15)
    assert meta["charfw_block_weights"] == numbers
    assert meta["charfw_block_weights_spec"] == (recorded or numbers)
