"""Block-wise learning rates and dims in the embedded trainer (tests/test_blocklr.py has the rules)."""

import pytest
from test_train import FAST, job, modules, read, run

from charfw.config.models import TrainSettings
from charfw.families import SD15
from charfw.lora.blocks import block_of
from charfw.recipe import recipe_of
from charfw.rules.blocklr import block_index

SETTINGS = dict(network="c3lier", down_lr_weight="zeros+0.5", mid_lr_weight=0, up_lr_weight=[1] * 11 + [0],
                block_dims=[4] * 5 + [2] + [4] * 19)


def test_each_block_trains_at_its_rate(tiny):
    """One optimizer group per rate: a module's parameters train at lr times its block's factor (the text
    encoder at its own rate), and the logged rates are the parts' own."""
    from charfw.train.network import Network
    from charfw.train.optim import build_optimizer, logged_rates

    recipe = recipe_of(TrainSettings(**SETTINGS, **FAST), SD15, 10)
    net = Network(recipe.network, tiny)
    try:
        net.pack()
        unet, te = net.param_groups()
        opt, _ = build_optimizer(recipe, unet, te, "cpu", net.up_params(), net.param_factors())
        by_param = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        for group in net.packed:
            names = [m.lora_name for m in group.modules]
            expected = {recipe.text_encoder_lr if n.startswith("lora_te") else
                        recipe.lr * recipe.network.lr_factor(block_index(n, SD15)) for n in names}
            assert len(expected) == 1 and all(by_param[id(p)] == expected.pop() for p in group.params)
        assert sorted({g["lr"] for g in opt.param_groups}) == sorted({recipe.lr * 0.5, recipe.lr,
                                                                     recipe.text_encoder_lr})
        assert logged_rates(opt, [g["lr"] for g in opt.param_groups]) == [recipe.lr, recipe.text_encoder_lr]
    finally:
        net.restore()


@pytest.mark.slow
def test_a_block_at_zero_gets_no_modules_and_block_dims_set_ranks(dataset_toml, tmp_path):
    out = run(job(dataset_toml, tmp_path, TrainSettings(**SETTINGS, lr=1e-2, **FAST), 2))
    tensors, meta = read(out)
    blocks = {name: block_of(name) for name in modules(tensors)}
    assert "M00" not in blocks.values() and "OUT11" not in blocks.values()     # lr 0: left out, unchanged
    assert {"IN01", "OUT10", "BASE"} <= set(blocks.values())
    for name, block in blocks.items():
        down = tensors[f"{name}.lora_down.weight"]
        spatial = down.dim() == 4 and down.shape[-1] > 1
        assert down.shape[0] == (2 if block == "IN05" and not spatial else 4), name
    assert "down_lr_weight" in meta["ss_network_args"] and '"block_dims": "4,4,4,4,4,2,' in meta["ss_network_args"]
