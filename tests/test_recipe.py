"""One recipe, three renderings: the embedded trainer's numbers, the sd-scripts command line and the
LoRA's ss_* metadata all come from TrainRequest.recipe and agree, for every network/alpha/optimizer
logic of the seed's LoRA.bat, on both families."""

import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from charfw.config.models import TrainSettings
from charfw.families import SD15, SDXL
from charfw.recipe import recipe_of
from charfw.request import TrainRequest
from charfw.rules.buckets import Placement
from charfw.sdscripts.command import LYCORIS_ALGO, train_args
from charfw.train.dataset import Dataset, Subset, TrainImage
from charfw.train.metadata import training_metadata

NETWORKS = [dict(network=n, alpha=a) for n in ("c3lier", "lora", "locon", "loha") for a in ("half", "one")]
OPTIMIZERS = [dict(optimizer="adamw8bit"), dict(optimizer="adafactor")]
COMBOS = [{**n, **o} for n in NETWORKS for o in OPTIMIZERS]


def request(family, **settings) -> TrainRequest:
    return TrainRequest(name="krnk", settings=TrainSettings(**settings), steps=1000, family=family,
                        dataset_toml=Path("/ws/d.toml"), model="/m.safetensors", output=Path("/ws/o.safetensors"),
                        state_dir=Path("/ws/state"))


def options(argv: list[str]) -> dict[str, object]:
    """--name=value and --name v1 v2 ... as {name: value or [values]}; a bare switch as True."""
    out, last = {}, None
    for token in argv:
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            out[name], last = (value if eq else True), name
        else:
            out[last] = [*(out[last] if isinstance(out[last], list) else []), token]
    return out


def metadata(recipe) -> dict[str, str]:
    image = TrainImage(Path("a.png"), "krnk", (512, 512), Placement((512, 512), (512, 512)), 0, "0" * 64)
    subset = Subset(Path("img"), "img", "krnk", 1, False, False, ".txt")
    data = Dataset((512, 512), 1, True, True, 64, 256, 1024, (subset,), (image,))
    return training_metadata(recipe=recipe, datasets=[data], optimizer_name="x", mixed_precision="fp16",
                             checkpointing=True, model_name="m", model_hashes=None, vae_name=None, vae_hashes=None,
                             name="krnk", trigger_words=["krnk"], started_at=0.0, batches_per_epoch=1, epochs=1,
                             session_id=1)


@pytest.mark.parametrize("family", [SD15, SDXL], ids=lambda f: f.name)
@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(c.values()))
def test_command_and_metadata_render_the_same_recipe(family, combo):
    req = request(family, **combo)
    recipe, args, meta = req.recipe, options(train_args(req)), metadata(req.recipe)
    net = recipe.network
    assert args["network_module"] == meta["ss_network_module"] == net.module
    assert args["network_dim"] == meta["ss_network_dim"] == str(net.dim)
    assert float(args["network_alpha"]) == float(meta["ss_network_alpha"]) == net.alpha
    recorded = json.loads(meta.get("ss_network_args", "{}"))
    passed = dict(a.split("=", 1) for a in args.get("network_args", []))
    if "algo" in passed:   # LyCORIS takes LoCon as algo=lora; the metadata keeps charfw's name
        assert passed.pop("algo") == LYCORIS_ALGO[recorded.pop("algo")]
    assert passed == recorded == {k: v for k, v in net.args.items() if k != "algo"}
    assert args["max_train_steps"] == meta["ss_max_train_steps"] == str(recipe.steps) == "1000"
    assert args["lr_scheduler"] == meta["ss_lr_scheduler"] == recipe.scheduler
    assert args["seed"] == meta["ss_seed"] == str(recipe.seed)
    assert meta["ss_max_grad_norm"] == str(recipe.max_grad_norm)
    assert args.get("clip_skip") == (None if recipe.clip_skip is None else str(recipe.clip_skip))
    assert meta["ss_clip_skip"] == str(recipe.clip_skip)
    assert ("network_train_unet_only" not in args) == recipe.train_text_encoder
    if recipe.own_schedule:
        assert meta["ss_learning_rate"] == meta["ss_text_encoder_lr"] == "None" and "learning_rate" not in args
        assert [f"{k}={v}" for k, v in recipe.optimizer_args] == args["optimizer_args"]
    else:
        assert float(args["learning_rate"]) == float(meta["ss_learning_rate"]) == recipe.lr
        assert float(args["text_encoder_lr"]) == float(meta["ss_text_encoder_lr"]) == recipe.text_encoder_lr


def test_the_recipe_follows_the_request():
    """A request with other settings or steps (batch_scale's grown request) has its own recipe."""
    req = request(SD15, lr=1e-4)
    grown = replace(req, steps=500, settings=req.settings.model_copy(update={"lr": 2e-4}))
    assert (req.recipe.steps, req.recipe.lr) == (1000, 1e-4)
    assert (grown.recipe.steps, grown.recipe.lr, grown.recipe.text_encoder_lr) == (500, 2e-4, 88e-6)


def test_family_decides_text_encoder_and_clip_skip():
    assert recipe_of(TrainSettings(), SD15, 1).train_text_encoder and recipe_of(TrainSettings(), SD15, 1).clip_skip == 2
    xl = recipe_of(TrainSettings(), SDXL, 1)
    assert not xl.train_text_encoder and xl.clip_skip is None
    assert recipe_of(TrainSettings(train_text_encoder=True), SDXL, 1).train_text_encoder
    line = shlex.join(train_args(request(SDXL)))
    assert "--clip_skip" not in line and "--cache_text_encoder_outputs" in line and "--no_half_vae" in line
