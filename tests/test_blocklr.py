"""Block-wise learning rates and dims, checked against sd-scripts' networks.lora as its source defines them:
the blocks each module falls in, the curves, the filling and the zero threshold, and what both trainers get."""

import math
import re

import pytest
import yaml

from charfw.config.models import TrainSettings
from charfw.errors import CharfwError
from charfw.families import SD15, SDXL, SDXL_VPRED
from charfw.lora.keys import lora_module_specs
from charfw.recipe import network_spec
from charfw.rules.blocklr import BlockError, block_index, block_ranks, curve, lr_weights

RE_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")


def sd_scripts_block(name: str, sdxl: bool) -> int:
    """sd-scripts' get_block_index, restated: SD1.5 by diffusers names (down 1+3i+j, samplers 3i+2, mid 12,
    up 13+3i+j), SDXL by its LDM names (input 1+N, middle 10+N, output 13+N)."""
    if not sdxl:
        m = RE_UPDOWN.search(name)
        if m:
            i, kind, j = int(m[2]), m[3], int(m[4])
            idx = 3 * i + (2 if kind in ("upsamplers", "downsamplers") else j)
            return 1 + idx if m[1] == "down" else 12 + 1 + idx
        return 12 if "mid_block_" in name else -1
    rest = name[len("lora_unet_"):]
    for prefix, base in (("input_blocks_", 1), ("middle_block_", 10), ("output_blocks_", 13)):
        if rest.startswith(prefix):
            return base + int(rest.split("_")[2])
    return -1


@pytest.mark.parametrize("family", [SD15, SDXL], ids=lambda f: f.name)
def test_every_module_is_in_sd_scripts_block(family):
    names = [n for n in lora_module_specs(family, conv3x3=True) if n.startswith("lora_unet_")]
    assert names
    for name in names:
        assert block_index(name, family) == sd_scripts_block(name, family is SDXL), name
    assert {block_index(n, family) for n in names} <= set(range(family.lr_blocks.total))
    assert block_index("lora_te1_text_model_encoder_layers_0_mlp_fc1", family) is None


def test_curves_fills_and_threshold_are_sd_scripts():
    n = 12
    assert curve("sine", n) == [math.sin(math.pi * (i / (n - 1)) / 2) for i in range(n)]
    assert curve("cosine", n) == [math.sin(math.pi * (i / (n - 1)) / 2) for i in reversed(range(n))]
    assert curve("linear+0.5", 3) == [0.5, 1.0, 1.5] and curve("reverse_linear", 3) == [1.0, 0.5, 0.0]
    assert curve("zeros+0.25", 2) == [0.25, 0.25]
    weights = lr_weights(SD15, down=[0.5, 0.2], up="zeros", threshold=0.3)
    assert weights[:3] == (0.5, 0.0, 1.0) and weights[12] == 1.0 and weights[13:] == (0.0,) * 12
    sdxl = lr_weights(SDXL, mid=[0, 1])
    assert len(sdxl) == 23 and sdxl[0] == sdxl[-1] == 1.0 and sdxl[10:13] == (0.0, 1.0, 1.0)
    assert lr_weights(SD15) is None
    with pytest.raises(BlockError, match="down_lr_weight has 13 values"):
        lr_weights(SD15, down=[1.0] * 13)
    with pytest.raises(BlockError, match="is not a list or one of"):
        lr_weights(SD15, up="sinus")


def test_ranks_follow_sd_scripts_defaults_and_drop_blocks_at_zero():
    ranks = block_ranks(SD15, 8, 4, 8, 4, dims=list(range(25)), weights=lr_weights(SD15, mid=0))
    assert ranks.dims[12] == 0 and ranks.dims[5] == 5 and ranks.alphas == (4.0,) * 25
    assert ranks.conv_dims[12] == 0 and ranks.conv_dims[5] == 8     # 3x3 convs keep conv_dim
    assert ranks.of(5, spatial=False) == (5, 4.0) and ranks.of(5, spatial=True) == (8, 4.0)
    assert block_ranks(SD15, 8, 4, 8, 4) is None
    with pytest.raises(BlockError, match="block_dims has 25 values; SDXL v-prediction has 23 blocks") as exc:
        block_ranks(SDXL_VPRED, 8, 4, 8, 4, dims=[1] * 25)
    assert exc.value.field == "block_dims"


def test_sd_scripts_gets_the_resolved_lists():
    spec = network_spec(TrainSettings(dim=8, down_lr_weight="sine", mid_lr_weight=0.5, up_lr_weight=[0, 1],
                                      block_alphas=[2] * 23), SDXL)
    args = spec.args
    assert args["down_lr_weight"].split(",")[:2] == ["0", repr(math.sin(math.pi / 8 / 2))]
    assert args["mid_lr_weight"] == "0.5,1,1" and args["up_lr_weight"] == "0,1,1,1,1,1,1,1,1"
    dims = args["block_dims"].split(",")
    assert len(dims) == 23 and dims[1] == "0" and dims[13] == "0" and dims[2] == "8"   # lr 0: rank 0
    assert args["block_alphas"] == ",".join(["2"] * 23) and "conv_block_dims" in args
    assert "block_dims" not in network_spec(TrainSettings(dim=8), SDXL).args


def test_options_are_checked_per_network_and_family(workspace):
    with pytest.raises(ValueError, match="block_dims .* applies to the lora and c3lier networks"):
        TrainSettings(network="locon", block_dims=[4] * 25)
    with pytest.raises(ValueError, match="conv_block_dims .* need 3x3 conv modules"):
        TrainSettings(network="lora", conv_block_dims=[4] * 25)
    from charfw.workspace import load_project

    path = workspace / "characters/krnk/character.yaml"
    data = yaml.safe_load(path.read_text())
    data["train"] = {"block_dims": [4] * 23}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CharfwError) as exc:
        load_project(workspace)
    assert exc.value.field == "train.block_dims" and "SD1.5 has 25 blocks" in exc.value.message
    assert exc.value.file.endswith("character.yaml")


def test_options_at_default_keep_the_run_key():
    from charfw.config.models import keyed, run_key_fields

    assert not set(keyed(TrainSettings(), run_key_fields("embedded"))) & {"block_dims", "down_lr_weight"}
