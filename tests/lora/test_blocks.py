"""Block assignment, architecture detection, presets and the weight-spec parser."""

from collections import Counter

import pytest

from charfw.errors import CharfwError
from charfw.families import SD15, SDXL, from_lora
from charfw.lora.blocks import block_of, builtin_presets, expand, parse_preset_lines, parse_weights
from charfw.lora.keys import lora_module_specs

# Expected module counts per block, written out by hand from the SD1.5 U-Net layout:
# attention = 12 modules (proj_in/out + 8 attention + 2 ff); resnet = conv1, conv2,
# time_emb_proj (+ conv_shortcut where channels change); samplers are one conv each.
SD15_C3LIER = {
    "BASE": 72,
    "IN01": 3 + 12, "IN02": 3 + 12, "IN03": 1,
    "IN04": 4 + 12, "IN05": 3 + 12, "IN06": 1,
    "IN07": 4 + 12, "IN08": 3 + 12, "IN09": 1,
    "IN10": 3, "IN11": 3,
    "M00": 2 * 3 + 12,
    "OUT00": 4, "OUT01": 4, "OUT02": 4 + 1,
    "OUT03": 4 + 12, "OUT04": 4 + 12, "OUT05": 4 + 12 + 1,
    "OUT06": 4 + 12, "OUT07": 4 + 12, "OUT08": 4 + 12 + 1,
    "OUT09": 4 + 12, "OUT10": 4 + 12, "OUT11": 4 + 12,
}
# SDXL: transformer of depth d = 10*d + 2 modules; levels 320 (no attention), 640 (d=2), 1280 (d=10).
SDXL_C3LIER = {
    "BASE": 72 + 32 * 6,
    "IN01": 3, "IN02": 3, "IN03": 1,
    "IN04": 4 + 22, "IN05": 3 + 22, "IN06": 1,
    "IN07": 4 + 102, "IN08": 3 + 102,
    "M00": 2 * 3 + 102,
    "OUT00": 4 + 102, "OUT01": 4 + 102, "OUT02": 4 + 102 + 1,
    "OUT03": 4 + 22, "OUT04": 4 + 22, "OUT05": 4 + 22 + 1,
    "OUT06": 4, "OUT07": 4, "OUT08": 4,
}


def test_sd15_c3lier_blocks():
    names = list(lora_module_specs(SD15, conv3x3=True))
    assert len(names) == 350 and sum(SD15_C3LIER.values()) == 350
    assert Counter(block_of(n, SD15) for n in names) == SD15_C3LIER


def test_sd15_plain_blocks_are_the_17_lbw_blocks():
    names = list(lora_module_specs(SD15, conv3x3=False))
    counts = Counter(block_of(n, SD15) for n in names)
    assert counts == {"BASE": 72, **{b: 12 for b in ("IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00")},
                      **{f"OUT{i:02d}": 12 for i in range(3, 12)}}


def test_sdxl_ldm_blocks():
    names = list(lora_module_specs(SDXL, conv3x3=True))
    assert Counter(block_of(n, SDXL) for n in names) == SDXL_C3LIER
    assert block_of("lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k", SDXL) == "IN04"
    assert block_of("lora_unet_output_blocks_5_2_conv", SDXL) == "OUT05"
    assert block_of("lora_unet_middle_block_1_proj_in", SDXL) == "M00"


@pytest.mark.parametrize("name, block", [
    ("lora_unet_down_blocks_1_downsamplers_0_conv", "IN06"),
    ("lora_unet_up_blocks_2_upsamplers_0_conv", "OUT08"),
    ("lora_unet_up_blocks_3_attentions_2_proj_out", "OUT11"),
    ("lora_unet_conv_in", "IN00"),
    ("lora_unet_conv_out", None),
    ("lora_unet_time_embedding_linear_1", None),
    ("lora_unet_conv_norm_out", None),
    ("lora_te2_text_model_encoder_layers_31_mlp_fc2", "BASE"),
])
def test_single_names(name, block):
    assert block_of(name) == block


def test_block_outside_architecture_is_an_error():
    with pytest.raises(CharfwError, match="IN11"):
        block_of("lora_unet_input_blocks_11_0_in_layers_2", SDXL)


def test_from_lora():
    assert from_lora(list(lora_module_specs(SD15, False))) is SD15
    assert from_lora(list(lora_module_specs(SDXL, False))) is SDXL
    assert from_lora(["lora_unet_input_blocks_4_1_proj_in"], SD15) is SD15
    assert from_lora(["lora_unet_input_blocks_4_1_proj_in"], "sd15") is SD15
    with pytest.raises(CharfwError, match="--arch"):
        from_lora(["lora_unet_down_blocks_1_attentions_0_proj_in"])


def test_lbw_presets_match_the_extension():
    # LoRA Block Weight's default presets (17 values: BASE,IN01,IN02,IN04,IN05,IN07,IN08,MID,OUT03..OUT11)
    lbw = {"INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0", "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
           "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0", "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
           "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0", "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
           "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1", "NONE": "0," * 16 + "0", "ALL": "1," * 16 + "1",
           "ALL0.5": "0.5," * 16 + "0.5"}
    for name, values in lbw.items():
        assert builtin_presets(SD15)[name] == [float(v) for v in values.split(",")], name
    # SDXL 12-value lists: BASE, IN04, IN05, IN07, IN08, M00, OUT00..OUT05
    assert builtin_presets(SDXL)["INALL"] == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert builtin_presets(SDXL)["OUTALL"] == [1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    for family in (SD15, SDXL):
        for name, values in builtin_presets(family).items():
            table = parse_weights(name, family)
            assert len(table) == len(family.blocks.blocks)
        assert set(parse_weights("FULL", family).values()) == {1.0}         # charfw's identity
    lbw_all = parse_weights("ALL", SD15)   # LBW's ALL: the blocks its 17-value list lacks are 0
    assert {b for b, w in lbw_all.items() if w == 0} == {"IN00", "IN03", "IN06", "IN09", "IN10", "IN11",
                                                         "OUT00", "OUT01", "OUT02"}


def test_face_preset_is_the_seed_list():
    w = parse_weights("FACE", SD15)
    assert [w[b] for b in SD15.blocks.blocks] == [float(v) for v in "0,1,1,1,1,1,0,0,0,1,0,0,0,0,1,0,1,1,1,0,1,1,1,0,0,1".split(",")]
    # SDXL: the same blocks at the same resolution levels; SD1.5's lowest level (IN09-11, OUT00-02) has no
    # SDXL counterpart, and SDXL's OUT00-08 are SD1.5's OUT03-11
    xl = parse_weights("FACE", SDXL)
    assert [xl[b] for b in SDXL.blocks.blocks] == [float(v) for v in "0,1,1,1,1,1,0,0,0,1,0,1,1,0,1,1,1,0,0,1".split(",")]
    body = parse_weights("BODY", SDXL)
    assert [body[b] for b in SDXL.blocks.blocks] == [float(v) for v in "0,1,1,1,0,1,0,0,0,1,0,1,1,1,1,1,1,0,0,1".split(",")]


def test_short_lists_expand_with_zero():
    w = parse_weights(",".join(["1"] * 17), SD15)
    assert w["IN00"] == w["IN03"] == w["IN10"] == w["OUT00"] == w["OUT02"] == 0 and w["OUT03"] == 1
    w = expand([2.0] * 12, SDXL)
    assert w["IN01"] == w["IN06"] == w["OUT08"] == 0 and w["IN04"] == w["OUT05"] == 2
    with pytest.raises(CharfwError, match="takes 26 or 17"):
        parse_weights("1,2,3", SD15)


def test_named_weights_default_to_one():
    w = parse_weights("IN04=0.5, out03=0,MID=-1", SD15)
    assert (w["IN04"], w["OUT03"], w["M00"], w["IN05"], w["BASE"]) == (0.5, 0, -1, 1, 1)
    w = parse_weights("FACE,OUT03=0.25", SD15)
    assert w["OUT03"] == 0.25 and w["BASE"] == 0 and w["IN01"] == 1
    assert parse_weights({"IN04": 0}, SDXL)["IN04"] == 0
    with pytest.raises(CharfwError, match="unknown block"):
        parse_weights("IN12=1", SD15)
    with pytest.raises(CharfwError, match="not a number"):
        parse_weights("IN04=x", SD15)
    with pytest.raises(CharfwError, match="unknown preset"):
        parse_weights("NOPE", SD15)


def test_user_presets_shadow_and_nest():
    presets = {"MINE": "FACE,IN04=0.5", "FACE": "HALF", "LOOP": "LOOP"}
    assert set(parse_weights("FACE", SD15, presets).values()) == {0.5}
    assert parse_weights("MINE", SD15, presets)["IN04"] == 0.5
    with pytest.raises(CharfwError, match="itself"):
        parse_weights("LOOP", SD15, presets)


def test_preset_file_lines():
    assert parse_preset_lines("# mine\nA:1,0\n\nB: IN04=0 # note\n") == {"A": "1,0", "B": "IN04=0"}
    with pytest.raises(CharfwError) as err:
        parse_preset_lines("ok:1\nbroken line\n", "p.txt")
    assert err.value.line == 2 and err.value.file == "p.txt"
