"""Block-weight merge scales ΔW by exactly w per block, for every algorithm."""

import pytest
import torch
from lora_factory import VARIANTS, make_tensors, write
from safetensors import safe_open

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
    """Every module's ΔW times its block's weight. The file's LoRA modules share one rank and all have
    an alpha, so each keeps it: a power-of-two weight scales one factor exactly, weight 1 leaves a
    module as it was, another weight is split over both factors."""
    src = build(tmp_path, torch.Generator().manual_seed(3))
    dst = tmp_path / "out.safetensors"
    report = merge_file(src, dst, f"IN04={w},OUT03={w},BASE={w}")
    before, after = load_lora(src).modules, load_lora(dst).modules
    assert report["modules_in"] == len(before) and report["modules_out"] == len(after)
    exact = w in (0.5, -1.0)
    for variant in VARIANTS:
        for name in (n.format(variant) for n in WEIGHTED.values()):
            if w == 0:
                assert name not in after, name
                continue
            expected = w * delta_matrix(before[name], torch.float64)
            error = torch.linalg.norm(delta_matrix(after[name], torch.float64) - expected)
            changed = {k for k in before[name].tensors if k not in after[name].tensors
                       or not torch.equal(before[name].tensors[k], after[name].tensors[k])}
            assert error <= 1e-6 * torch.linalg.norm(expected), name  # at most float32 rounding of the factors
            assert after[name].alpha == before[name].alpha, name   # one rank, all with alpha: every loader agrees
            if exact:
                assert error == 0 and len(changed) == 1, (name, changed)
            elif folds(before[name]):   # w split over both factors
                assert changed == {"lora_up.weight", "lora_down.weight"}, (name, changed)
            else:
                assert changed == {before[name].merge_key}, (name, changed)
        for name in (n.format(variant) for n in CONTROL.values()):    # weight 1: as it was
            for k, t in before[name].tensors.items():
                assert torch.equal(after[name].tensors[k], t), (name, k)
    if w == 0:
        assert not any(k.startswith(tuple(n.format("") for n in WEIGHTED.values())) for k in after)


def test_a_full_merge_leaves_every_tensor_as_it_was(tmp_path):
    """FULL (every block 1) on a trained-like fp16 file: tensor for tensor identical, alphas included."""
    gen = torch.Generator().manual_seed(8)
    modules = {name.format(v): {k: t.half() for k, t in make_tensors(v, gen=gen).items()}
               for v in VARIANTS for name in (*WEIGHTED.values(), *CONTROL.values())}
    src = write(tmp_path / "in.safetensors", modules)
    merge_file(src, tmp_path / "full.safetensors", "FULL")
    with safe_open(str(src), "pt") as a, safe_open(str(tmp_path / "full.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())


@pytest.mark.parametrize("w", [-1.0, 0.5, 2.0, -0.25])
def test_power_of_two_weights_scale_delta_exactly(tmp_path, w):
    """fp32 products of the factors: exactly w times those of the input, for LoRA, C3Lier and LoCon."""
    gen = torch.Generator().manual_seed(9)
    modules = {WEIGHTED["IN04"].format(v): {k: t.half() for k, t in make_tensors(v, gen=gen).items()}
               for v in ("lora_linear", "c3lier_conv3x3", "locon_mid")}
    src = write(tmp_path / "in.safetensors", modules)
    merge_file(src, tmp_path / "out.safetensors", f"IN04={w}", family=SD15)
    before, after = load_lora(src).modules, load_lora(tmp_path / "out.safetensors").modules
    for name, m in before.items():
        assert torch.equal(delta_matrix(after[name], torch.float32), w * delta_matrix(m, torch.float32)), name
        assert after[name].alpha == m.alpha


def test_ranks_that_differ_per_module_are_folded(tmp_path):
    """diffusers would let PEFT ignore such alphas: alpha/rank is folded in, even at weight 1."""
    gen = torch.Generator().manual_seed(10)
    src = write(tmp_path / "in.safetensors", {WEIGHTED["IN04"].format("a"): make_tensors("lora_linear", rank=4, gen=gen),
                                             WEIGHTED["OUT03"].format("b"): make_tensors("c3lier_conv3x3", rank=8,
                                                                                         gen=gen)})
    merge_file(src, tmp_path / "out.safetensors", "FULL", family=SD15)
    before, after = load_lora(src).modules, load_lora(tmp_path / "out.safetensors").modules
    for name, m in before.items():
        assert after[name].alpha is None
        expected = delta_matrix(m, torch.float64)
        assert torch.linalg.norm(delta_matrix(after[name], torch.float64) - expected) <= 1e-6 * torch.linalg.norm(expected)


def test_a_power_of_two_that_would_lose_bits_is_split_over_both_factors(tmp_path):
    """A factor whose scaled values would lose a bit in fp16 is not scaled in place."""
    tensors = {k: t.half() for k, t in make_tensors("lora_linear", gen=torch.Generator().manual_seed(11)).items()}
    tiny = 2 ** -14 * (1 + 2 ** -10)   # just above fp16's smallest normal: halved, its last bit is lost
    tensors["lora_down.weight"] = torch.full_like(tensors["lora_down.weight"], tiny)
    tensors["lora_up.weight"] = torch.full_like(tensors["lora_up.weight"], tiny)
    src = write(tmp_path / "in.safetensors", {WEIGHTED["IN04"].format("a"): tensors})
    merge_file(src, tmp_path / "out.safetensors", "IN04=0.5", family=SD15)
    out = load_lora(tmp_path / "out.safetensors").modules[WEIGHTED["IN04"].format("a")]
    assert out.alpha == 2.0 and not torch.equal(out.tensors["lora_down.weight"], tensors["lora_down.weight"] * 0.5)
    expected = 0.5 * delta_matrix(load_lora(src).modules[WEIGHTED["IN04"].format("a")], torch.float64)
    assert torch.linalg.norm(delta_matrix(out, torch.float64) - expected) <= 1e-3 * torch.linalg.norm(expected)


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
