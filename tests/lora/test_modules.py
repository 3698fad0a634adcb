"""ΔW definitions agree with LyCORIS' own reference implementation; groups are validated."""

import pytest
import torch
from lora_factory import VARIANTS, make_tensors

from charfw.errors import CharfwError
from charfw.lora.modules import delta_matrix, layer_shape, make_module


def lycoris_delta(variant: str, t: dict, scale: float) -> torch.Tensor:
    from lycoris.functional import locon, loha, lokr

    g = t.get
    if variant.startswith(("lora", "c3lier", "locon")):
        d = locon.diff_weight(g("lora_down.weight"), g("lora_up.weight"), g("lora_mid.weight"),
                              gamma=scale, backend="torch")
    elif variant.startswith("loha"):
        d = loha.diff_weight(g("hada_w1_b"), g("hada_w1_a"), g("hada_w2_b"), g("hada_w2_a"),
                             g("hada_t1"), g("hada_t2"), gamma=scale, backend="torch")
    else:
        d = lokr.kron_weight(g("lokr_w1"), g("lokr_w1_a"), g("lokr_w1_b"), g("lokr_w2"), g("lokr_w2_a"),
                             g("lokr_w2_b"), g("lokr_t2"), scale=scale, backend="torch")
    return d.reshape(d.shape[0], -1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_delta_matches_lycoris(variant):
    t = make_tensors(variant, gen=torch.Generator().manual_seed(1))
    m = make_module("lora_unet_x", t)
    expected_scale = 1.0 if variant == "lokr_full" else 2.0 / 4  # alpha / rank; unfactored LoKr: 1
    assert m.scale == pytest.approx(expected_scale)
    ours = delta_matrix(m, torch.float64)
    ref = lycoris_delta(variant, {k: v.double() for k, v in t.items()}, m.scale)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_layer_shape_from_tensors_and_spec():
    conv = make_module("c", make_tensors("locon_mid"))
    assert layer_shape(conv, 24, 20 * 9) == (24, 20, 3, 3)
    loha = make_module("h", make_tensors("loha"))
    with pytest.raises(CharfwError, match="conv or a linear"):
        layer_shape(loha, 24, 20)
    assert layer_shape(loha, 24, 20, (24, 20)) == (24, 20)
    with pytest.raises(CharfwError, match="architecture"):
        layer_shape(loha, 24, 20, (24, 10, 1, 1))


@pytest.mark.parametrize("tensors, message", [
    ({"lora_down.weight": torch.zeros(2, 3)}, "lacks lora_up"),
    ({"lora_down.weight": torch.zeros(2, 3), "lora_up.weight": torch.zeros(3, 2), "hada_w1_a": torch.zeros(1)},
     "mixes lora and loha"),
    ({"alpha": torch.tensor(1.0)}, "no weight tensors"),
    ({"lokr_w1": torch.zeros(2, 2), "lokr_w1_a": torch.zeros(2, 1), "lokr_w2": torch.zeros(2, 2)}, "lokr_w1 or both"),
    ({"hada_w1_a": torch.zeros(1), "hada_w1_b": torch.zeros(1), "hada_w2_a": torch.zeros(1),
      "hada_w2_b": torch.zeros(1), "hada_t1": torch.zeros(1)}, "only one of hada_t1"),
])
def test_incomplete_or_mixed_modules_are_named(tensors, message):
    with pytest.raises(CharfwError, match=message) as err:
        make_module("lora_unet_bad", tensors)
    assert err.value.field == "lora_unet_bad"
