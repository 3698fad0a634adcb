"""Validation loss: which images are held out (validation_views, validation_split as sd-scripts splits),
how both trainers and the report learn of it, and when the loss is measured."""

import random
import tomllib

import pytest
import yaml
from wsutil import run_doit

from charfw.config.models import TrainSettings
from charfw.dataset.schema import SD_SCRIPTS_KEYS
from charfw.errors import CharfwError
from charfw.layout import Layout
from charfw.rules.validation import split_train_val, validation_every, validation_timesteps
from charfw.workspace import load_project


def sd_scripts_split(paths, split, seed):
    """sd-scripts' split_train_val, step for step: the global `random` seeded, shuffled, then cut."""
    import math

    dataset = list(zip(paths, [None] * len(paths)))
    state = random.getstate()
    random.seed(seed)
    random.shuffle(dataset)
    random.setstate(state)
    shuffled = [p for p, _ in dataset]
    return shuffled[:math.ceil(len(shuffled) * (1 - split))], shuffled[len(shuffled) - round(len(shuffled) * split):]


@pytest.mark.parametrize("n,split,seed", [(10, 0.2, 1), (15, 0.1, 31337), (3, 0.5, 7), (1, 0.3, 2), (12, 0.25, 0)])
def test_the_split_is_sd_scripts_own(n, split, seed):
    names = [f"f{i:02d}.png" for i in range(n)]
    assert split_train_val(names, split, seed) == sd_scripts_split(names, split, seed)
    assert split_train_val(names, 0.0, seed) == (names, [])


def test_validation_timesteps_and_interval():
    assert validation_timesteps(1000) == [200, 400, 600, 800]
    assert validation_every(None, 1000) == 100 and validation_every(None, 5) == 1 and validation_every(7, 1000) == 7


def set_train(ws, where: str, **train):
    path = ws / where
    data = yaml.safe_load(path.read_text())
    data.setdefault("train", {}).update(train)
    path.write_text(yaml.safe_dump(data))


def test_views_hold_out_every_image_of_those_codes(workspace):
    from charfw.train.dataset import load_datasets

    set_train(workspace, "characters/krnk/character.yaml", validation_views=["f11", "f02"])
    run_doit(workspace, "dataset")
    layout = Layout(load_project(workspace))
    req = layout.train_request(layout.project.targets["krnk"])
    datasets = load_datasets(req.dataset_toml, req.recipe.validation_views)
    trained = {im.path.stem for d in datasets for im in d.images}
    held = [im.path for d in datasets for im in d.held_out]
    assert {p.stem for p in held} == {"f11", "f02"} and not trained & {"f11", "f02"}
    assert len(held) == 2 * 2        # two views x the example's two sizes
    assert all(d.num_train_images == sum(im.repeats for im in d.images) for d in datasets)


def test_split_goes_into_the_toml_for_both_trainers(workspace):
    from charfw.sdscripts.command import train_args
    from charfw.train.dataset import load_datasets

    set_train(workspace, "charfw.yaml", validation_split=0.2, validate_every_n_steps=25)
    run_doit(workspace, "dataset")
    layout = Layout(load_project(workspace))
    target = layout.project.targets["krnk"]
    config = tomllib.loads(layout.toml_path("krnk").read_text())
    assert config["general"]["validation_split"] == 0.2 and config["general"]["validation_seed"] == 31337
    assert set(config["general"]) <= SD_SCRIPTS_KEYS["general"]
    assert "--validate_every_n_steps=25" in train_args(layout.train_request(target))
    datasets = load_datasets(layout.toml_path("krnk"))
    for d in datasets:
        for folder in {im.path.parent for im in (*d.images, *d.held_out)}:
            names = sorted(p.name for p in folder.glob("*.png"))
            train, val = sd_scripts_split(names, 0.2, 31337)
            assert sorted(im.path.name for im in d.images if im.path.parent == folder) == sorted(train)
            assert sorted(im.path.name for im in d.held_out if im.path.parent == folder) == sorted(val)


def test_the_report_counts_only_what_is_trained(workspace):
    from charfw.report.numbers import target_numbers
    from charfw.train.dataset import load_datasets
    from charfw.train.sampling import BatchPlan

    set_train(workspace, "charfw.yaml", validation_split=0.3)
    set_train(workspace, "characters/tyank/character.yaml", validation_views=["f01", "b03"])
    run_doit(workspace, "dataset")
    layout = Layout(load_project(workspace))
    for name in ("krnk", "tyank", "tyankps"):
        req = layout.train_request(layout.project.targets[name])
        datasets = load_datasets(req.dataset_toml, req.recipe.validation_views)
        numbers = target_numbers(layout, layout.project.targets[name])
        assert numbers.samples == sum(d.num_train_images for d in datasets), name
        assert numbers.batches_per_epoch == BatchPlan(datasets, 0).per_epoch, name


def test_views_need_the_embedded_trainer_and_valid_codes(workspace):
    set_train(workspace, "characters/krnk/character.yaml", validation_views=["f11"], trainer="sd-scripts")
    with pytest.raises(CharfwError) as exc:
        load_project(workspace)
    assert "validation_views needs the embedded trainer" in str(exc.value) and "character.yaml" in str(exc.value)
    with pytest.raises(ValueError):
        TrainSettings(validation_views=["f1"])
    with pytest.raises(ValueError):
        TrainSettings(validation_split=1.0)


def test_a_held_out_view_takes_its_regularization_images_with_it(workspace):
    from test_regularization import add_regularization

    add_regularization(workspace, codes=("f00", "f11"))
    set_train(workspace, "characters/krnk/character.yaml", validation_views=["f11"])
    project = load_project(workspace)
    assert [s.set.id for s in project.targets["krnk"].reg_subsets] == ["_reg/girls/f00"]


def test_options_at_default_keep_the_run_key():
    from charfw.config.models import keyed, run_key_fields

    fields = run_key_fields("embedded")
    assert not {"validation_split", "validation_seed", "validation_views"} & set(keyed(TrainSettings(), fields))
    assert keyed(TrainSettings(validation_views=["f11"]), fields)["validation_views"] == ["f11"]
