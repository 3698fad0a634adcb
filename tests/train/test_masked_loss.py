"""Alpha-masked loss: the character is learned, not the background. The images stage keeps the
sources' alpha, the dataset TOML marks those subsets `alpha_mask`, sd-scripts gets `--masked_loss`,
and the embedded trainer weights each latent pixel's error by the alpha as sd-scripts does."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from PIL import Image

from charfw.config.models import TrainSettings
from charfw.families import SD15
from charfw.fingerprint import run_config
from charfw.request import TrainRequest
from charfw.rules.buckets import Placement
from charfw.train.augment import load_mask
from charfw.train.objective import diffusion_loss


class Pointwise(torch.nn.Module):
    """A stand-in U-Net whose output at a pixel depends only on the input at that pixel."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 1)

    def forward(self, x, t, context, **_):
        return SimpleNamespace(sample=self.conv(x) * context.mean())


def test_the_loss_ignores_what_the_mask_hides():
    """With a mask that is zero on half the latents, changing only those pixels (image and noise) changes
    neither the loss nor the gradients."""
    from diffusers import DDPMScheduler

    from charfw.models.configs import scheduler_config

    torch.manual_seed(0)
    unet, sched = Pointwise(), DDPMScheduler.from_config(scheduler_config(SD15))
    x0, noise, context = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.ones(2, 3, 5)
    mask = torch.ones(2, 1, 8, 8)
    mask[..., :4] = 0
    t = torch.tensor([100, 700])

    def loss_and_grads(x0, noise):
        unet.zero_grad()
        loss = diffusion_loss(unet, sched, x0, context, noise, t, mask=mask)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in unet.parameters()]

    loss, grads = loss_and_grads(x0, noise)
    other_x0, other_noise = x0.clone(), noise.clone()
    other_x0[..., :4] += 5
    other_noise[..., :4] = torch.randn(2, 4, 8, 4)
    loss2, grads2 = loss_and_grads(other_x0, other_noise)
    assert torch.equal(loss, loss2) and all(torch.equal(a, b) for a, b in zip(grads, grads2))
    other_x0[..., 4:] += 1                          # the visible half does count
    assert not torch.equal(loss_and_grads(other_x0, other_noise)[0], loss)
    unmasked = diffusion_loss(unet, sched, x0, context, noise, t)
    assert float(loss) < float(unmasked.detach())   # sd-scripts does not renormalise by the mask's area


def test_the_mask_follows_the_pixels(tmp_path):
    """Alpha resized, centre-cropped and flipped as the image is, then averaged down to the latents."""
    rgba = Image.new("RGBA", (64, 32), (10, 20, 30, 0))
    rgba.paste((10, 20, 30, 255), (0, 0, 16, 32))      # the left quarter opaque
    path = tmp_path / "a.png"
    rgba.save(path)
    placement = Placement((64, 32), (64, 32))
    mask = load_mask(path, placement, flip=False, latent_size=(4, 8))
    assert mask.shape == (1, 4, 8) and torch.equal(mask[0, :, :2], torch.ones(4, 2)) and float(mask[0, :, 2:].max()) == 0
    flipped = load_mask(path, placement, flip=True, latent_size=(4, 8))
    assert torch.equal(flipped, mask.flip(-1))
    Image.new("RGB", (64, 32)).save(tmp_path / "b.png")
    assert torch.equal(load_mask(tmp_path / "b.png", placement, False, (4, 8)), torch.ones(1, 4, 8))


def test_prepared_images_keep_the_alpha_beside_the_same_colours(tmp_path):
    from charfw.dataset.images import write_set
    from charfw.dataset.plan import Prepared

    src = tmp_path / "f00.png"
    im = Image.new("RGBA", (100, 80), (0, 0, 0, 0))
    im.paste((200, 100, 50, 255), (20, 10, 60, 70))
    im.save(src)
    item = Prepared(SimpleNamespace(path=src, stem="f00"), "krnk girl_f0050", 50, 50, 40)
    write_set(tmp_path / "plain", [item], (255, 255, 255))
    write_set(tmp_path / "masked", [item], (255, 255, 255), keep_alpha=True)
    plain = Image.open(tmp_path / "plain/krnk girl_f0050/f00.png")
    masked = Image.open(tmp_path / "masked/krnk girl_f0050/f00.png")
    assert plain.mode == "RGB" and masked.mode == "RGBA"
    assert masked.convert("RGB").tobytes() == plain.tobytes()    # what an unmasked reader sees is unchanged
    alpha = masked.getchannel("A")
    assert alpha.getpixel((0, 0)) == 0 and alpha.getpixel((20, 20)) == 255


def mask_workspace(workspace: Path) -> None:
    path = workspace / "characters/krnk/character.yaml"
    data = yaml.safe_load(path.read_text())
    data.setdefault("train", {})["masked_loss"] = True
    path.write_text(yaml.safe_dump(data))


def test_masked_targets_mark_their_transparent_subsets(workspace):
    """krnk's and krnksf's sets (RGBA sources) get alpha_mask = true and their images keep the alpha;
    tyank's do not; sd-scripts' schema takes the key, and its command line gets --masked_loss."""
    import tomllib

    from charfw.dataset.schema import SD_SCRIPTS_KEYS
    from charfw.dataset.toml import dataset_config, render_toml
    from charfw.layout import Layout
    from charfw.sdscripts.command import train_args
    from charfw.workspace import load_project

    mask_workspace(workspace)
    layout = Layout(load_project(workspace))
    assert layout.masked_sets == {"krnk/face", "krnk/sf"}
    for name in ("krnk", "tyank"):
        target = layout.project.targets[name]
        masked = layout.masked_sets if target.train.masked_loss else frozenset()
        config = tomllib.loads(render_toml(dataset_config(target, layout.plans, layout.images_root,
                                                          layout.toml_path(name).parent, layout.project.batch_table,
                                                          layout.project.family, masked)))
        flags = {sub.get("alpha_mask", False) for ds in config["datasets"] for sub in ds["subsets"]}
        assert flags == {name == "krnk"}
        assert all(set(sub) <= SD_SCRIPTS_KEYS["subsets"] for ds in config["datasets"] for sub in ds["subsets"])
        assert ("--masked_loss" in train_args(layout.train_request(target))) == (name == "krnk")


def test_a_masked_set_without_transparency_is_a_warning(workspace):
    from charfw.check import check_project

    mask_workspace(workspace)
    for src in (workspace / "characters/krnk/face").glob("*.png"):
        Image.open(src).convert("RGB").save(src)
    _, warnings = check_project(workspace)
    assert any("face: masked_loss is set for krnk, but no image of the set has transparency" in w for w in warnings)


def test_adding_the_option_retrains_nothing_that_does_not_use_it(tmp_path):
    """`masked_loss` came after LoRAs were trained: at its default it is not in the run key."""
    def request(**settings):
        return TrainRequest(name="krnk", settings=TrainSettings(**settings), steps=10, family=SD15,
                            dataset_toml=tmp_path / "a.toml", model="builtin:tiny-sd15",
                            output=tmp_path / "o.safetensors", state_dir=tmp_path / "s")

    assert "masked_loss" not in run_config(request())["settings"]
    assert run_config(request(masked_loss=True))["settings"]["masked_loss"] is True
    assert json.dumps(run_config(request()), sort_keys=True) != json.dumps(run_config(request(masked_loss=True)),
                                                                          sort_keys=True)


@pytest.mark.slow
def test_a_masked_run_trains_on_the_alpha(tmp_path, monkeypatch):
    """The embedded trainer reads alpha_mask subsets and trains with the masks."""
    from safetensors import safe_open
    from train_data import make_dataset

    import charfw.train.latents as latents
    from charfw.train import loop

    toml = make_dataset(tmp_path / "data")
    folder = tmp_path / "data/krnk girl_f0064"
    for png in folder.glob("*.png"):
        rgba = Image.open(png).convert("RGBA")
        alpha = Image.new("L", rgba.size, 0)
        alpha.paste(255, (0, 0, rgba.size[0] // 2, rgba.size[1]))
        rgba.putalpha(alpha)
        rgba.save(png)
    toml.write_text(toml.read_text().replace("flip_aug = true", "flip_aug = true\nalpha_mask = true"))
    req = TrainRequest(name="krnk", settings=TrainSettings(dim=4, masked_loss=True, save_every_n_steps=1000,
                                                           gradient_checkpointing=False),
                       steps=3, dataset_toml=toml, model="builtin:tiny-sd15", output=tmp_path / "o.safetensors",
                       state_dir=tmp_path / "state", family=SD15, progress=False)
    masks = []
    monkeypatch.setattr(latents, "load_mask", lambda *a: masks.append(load_mask(*a)) or masks[-1])
    losses = []
    loop.reset_accelerate()
    loop.run(req, on_step=lambda step, loss: losses.append(loss))
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert masks and all(0 < float(m.mean()) < 1 for m in masks)     # half of each image counts
    with safe_open(str(req.output), "pt") as f:
        assert f.metadata()["ss_network_dim"] == "4"
