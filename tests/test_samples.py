"""Sample rendering: deterministic at a fixed seed, the LoRA's ΔW applied at a strength and removed after."""

from __future__ import annotations

import pytest
import torch

from charfw.config.models import SampleSettings
from charfw.families import SD15
from charfw.lora.keys import lora_module_specs
from charfw.lora.modules import Module, delta_matrix
from charfw.rules.captions import caption
from charfw.rules.viewcode import parse_view_code
from charfw.sample import render
from charfw.sample.prompts import sample_prompts
from charfw.workspace import load_project

pytestmark = pytest.mark.slow   # renders with the tiny model

SETTINGS = SampleSettings(width=64, height=64, steps=3, seeds=[5])


@pytest.fixture(scope="module")
def tiny():
    return render.load("builtin:tiny-sd15", None, SD15)


def lora(seed: int, scale: float = 1.0) -> list[Module]:
    """A random rank-2 LoRA for every SD1.5 module (the tiny model has SD1.5's names, tiny widths)."""
    gen = torch.Generator().manual_seed(seed)
    layers = render.lora_layers(render.load("builtin:tiny-sd15", None, SD15))
    modules = []
    for name in list(lora_module_specs(SD15, conv3x3=False))[::7]:
        w = layers[name].weight
        down = torch.randn(2, w[0].numel(), generator=gen) * scale
        up = torch.randn(w.shape[0], 2, generator=gen) * 0.1
        if w.dim() == 4:
            down, up = down.reshape(2, *w.shape[1:]), up.reshape(w.shape[0], 2, 1, 1)
        modules.append(Module(name, {"lora_down.weight": down, "lora_up.weight": up,
                                     "alpha": torch.tensor(2.0)}, "lora"))
    return modules


def test_samples_are_deterministic_and_the_lora_changes_them(tiny):
    base = render.render(tiny, ["krnk, from front"], [5], SETTINGS)[0]
    again = render.render(tiny, ["krnk, from front"], [5], SETTINGS)[0]
    assert base.size == (64, 64) and base.tobytes() == again.tobytes()      # same seed: same pixels
    other_seed = render.render(tiny, ["krnk, from front"], [6], SETTINGS)[0]
    assert other_seed.tobytes() != base.tobytes()
    layers = render.lora_layers(tiny)
    before = {n: l.weight.detach().clone() for n, l in layers.items()}
    modules = lora(1)
    with render.applied(layers, modules, 0.8):
        for m in modules:
            want = before[m.name].flatten(1) + 0.8 * delta_matrix(m)
            torch.testing.assert_close(layers[m.name].weight.detach().flatten(1), want)
        with_lora = render.render(tiny, ["krnk, from front"], [5], SETTINGS)[0]
    assert with_lora.tobytes() != base.tobytes()
    assert all(torch.equal(layers[n].weight, w) for n, w in before.items())   # put back exactly
    with render.applied(layers, modules, 0.0):
        assert render.render(tiny, ["krnk, from front"], [5], SETTINGS)[0].tobytes() == base.tobytes()


def test_default_prompts_are_the_targets_captions_at_a_few_views(workspace):
    project = load_project(workspace)
    template = project.config.captions.template
    face = sample_prompts(project.targets["krnk"], SampleSettings(), template)
    outfit = sample_prompts(project.targets["krnksf"], SampleSettings(), template)
    views = [parse_view_code(c) for c in ("f00", "f02", "f04", "b00", "b02")]
    assert face == [caption(["krnk"], v, template) for v in views[:3]]
    assert outfit == [caption(["krnksf", "krnk"], v, template) for v in views]     # face and body sets
    assert "from front" in face[0] and "full body" in outfit[3]
    assert sample_prompts(project.targets["krnk"], SampleSettings(prompts=["x"]), template) == ["x"]


def test_grid_image_lays_out_rows_and_columns(tiny):
    from PIL import Image

    cells = [[Image.new("RGB", (8, 8), (r * 50, c * 50, 0)) for c in range(3)] for r in range(2)]
    grid = render.grid_image(cells, ["target", "ALL"], ["0.5", "0.8", "1"])
    assert grid.size == (110 + 3 * 8, 20 + 2 * 8)
    assert grid.getpixel((110 + 2 * 8 + 4, 20 + 8 + 4)) == (50, 100, 0)


def test_training_renders_progress_samples_every_n_steps(tmp_path):
    """sample_every_n_steps: the first prompt rendered with the adapters as they are at that step; the
    same run again gives the same pixels, and the weights are those of a run without samples."""
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    from charfw.config.models import TrainSettings
    from charfw.request import ProgressSamples, TrainRequest
    from charfw.train import loop

    sys.path.insert(0, str(Path(__file__).parent / "train"))
    from train_data import make_dataset

    toml = make_dataset(tmp_path / "data")
    outs = {}
    for run, every in (("a", 2), ("b", 2), ("plain", None)):
        settings = TrainSettings(network="lora", dim=4, lr=1e-2, sample_every_n_steps=every, compile="off",
                                 save_every_n_steps=1000)
        samples = ProgressSamples("krnk, from front", SETTINGS, tmp_path / run / "progress") if every else None
        req = TrainRequest(name="krnk", settings=settings, steps=4, dataset_toml=toml, model="builtin:tiny-sd15",
                           output=tmp_path / run / "out.safetensors", state_dir=tmp_path / run / "state",
                           progress=False, progress_samples=samples, family=SD15)
        loop.reset_accelerate()
        loop.run(req)
        outs[run] = req
    a, b = (sorted(p.name for p in (tmp_path / r / "progress").iterdir()) for r in ("a", "b"))
    assert a == b == ["step-000002.png", "step-000004.png"]
    for name in a:
        assert (tmp_path / "a/progress" / name).read_bytes() == (tmp_path / "b/progress" / name).read_bytes()
    assert (tmp_path / "a/progress/step-000002.png").read_bytes() != (tmp_path / "a/progress/step-000004.png").read_bytes()
    with_samples, plain = load_file(str(outs["a"].output)), load_file(str(outs["plain"].output))
    assert all(torch.equal(with_samples[k], plain[k]) for k in plain)   # rendering does not disturb training
