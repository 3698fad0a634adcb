"""View-coded regularization: a folder of generic figures named by view code; each target trains with the
images of its own view codes as sd-scripts `is_reg` subsets, captioned with the class tokens only, filled
and weighted (prior_loss_weight) as sd-scripts does it."""

import shutil
import tomllib
from pathlib import Path

import pytest
import torch
import yaml
from wsutil import run_doit

from charfw.config.models import TrainSettings
from charfw.dataset.schema import SD_SCRIPTS_KEYS
from charfw.errors import CharfwError
from charfw.families import SD15
from charfw.fingerprint import run_key
from charfw.layout import Layout
from charfw.rules.regularization import paired_codes, reg_repeats
from charfw.workspace import load_project

REG_CODES = ("f00", "f05", "f22", "b00", "b07")   # f05/b07: only tyank's sets have them; f22: only krnk's


def add_regularization(ws: Path, codes=REG_CODES, **entry) -> Path:
    """A regularization folder of generic figures (here: copies of tyank's images under other names)."""
    folder = ws / "reg" / "girls"
    folder.mkdir(parents=True, exist_ok=True)
    source = sorted((ws / "characters/tyank/face").glob("*.png"))[0]
    body = sorted((ws / "characters/tyank/ps").glob("*.png"))[0]
    for code in codes:
        shutil.copy(source if code[0] == "f" else body, folder / f"{code}.png")
    path = ws / "charfw.yaml"
    data = yaml.safe_load(path.read_text())
    data["regularization"] = {"girls": {"folder": "reg/girls", "class": "woman", **entry}}
    path.write_text(yaml.safe_dump(data))
    return folder


def toml_of(layout: Layout, name: str) -> dict:
    from charfw.dataset.toml import dataset_config, render_toml

    target = layout.project.targets[name]
    return tomllib.loads(render_toml(dataset_config(target, layout.plans, layout.images_root,
                                                    layout.toml_path(name).parent, layout.project.batch_table,
                                                    layout.project.family)))


def own_codes(ws: Path, folders) -> set[str]:
    return {p.stem[:3] for f in folders for p in (ws / "characters" / f).glob("*.png")}


def test_reg_subsets_are_exactly_the_targets_own_view_codes(workspace):
    add_regularization(workspace)
    layout = Layout(load_project(workspace))
    expected = {"krnk": own_codes(workspace, ["krnk/face"]), "tyank": own_codes(workspace, ["tyank/face"]),
                "krnksf": own_codes(workspace, ["krnk/face", "krnk/sf"]),
                "tyankps": own_codes(workspace, ["tyank/face", "tyank/ps"])}
    for name, codes in expected.items():
        config = toml_of(layout, name)
        subsets = [sub for ds in config["datasets"] for sub in ds["subsets"]]
        reg = [sub for sub in subsets if sub.get("is_reg")]
        got = {Path(sub["image_dir"]).parent.name for sub in reg}
        assert got == codes & set(REG_CODES), name
        assert all(sub["class_tokens"] == "woman" and sub["num_repeats"] == 1 for sub in reg)
        assert all(set(sub) <= SD_SCRIPTS_KEYS["subsets"] for sub in subsets)
        first_reg = next(i for i, sub in enumerate(subsets) if sub.get("is_reg"))
        assert not any(sub.get("is_reg") for sub in subsets[:first_reg]) and all(
            sub.get("is_reg") for sub in subsets[first_reg:])      # after the target's own subsets
    assert "f05" in {Path(s["image_dir"]).parent.name for ds in toml_of(layout, "tyank")["datasets"]
                     for s in ds["subsets"]} - own_codes(workspace, ["krnk/face"])


def test_reg_captions_carry_no_character_keyword(workspace):
    add_regularization(workspace)
    run_doit(workspace, "captions")
    captions = list((workspace / "build/images/_reg/girls").rglob("*.txt"))
    assert captions
    for path in captions:
        text = path.read_text(encoding="utf-8")
        tags = [t.strip() for t in text.split(",")]
        assert tags[0] == "woman" and not {"krnk", "tyank", "krnksf", "tyankps", "girl"} & set(tags), path
        assert ("upper body" in tags) == (path.stem[0] == "f")     # the same template as the characters'


def test_a_character_replaces_or_drops_the_workspace_folders(workspace):
    add_regularization(workspace)
    path = workspace / "characters/krnk/character.yaml"
    data = yaml.safe_load(path.read_text())
    data["regularization"] = {}
    path.write_text(yaml.safe_dump(data))
    project = load_project(workspace)
    assert not project.targets["krnk"].reg_subsets and not project.targets["krnksf"].reg_subsets
    assert project.targets["tyank"].reg_subsets
    own = workspace / "characters/krnk/reg"
    own.mkdir()
    shutil.copy(workspace / "characters/krnk/face/f00.png", own / "f00.png")
    data["regularization"] = {"mine": {"folder": "reg", "class": "cat girl", "repeats": 3}}
    path.write_text(yaml.safe_dump(data))
    project = load_project(workspace)
    [sub] = project.targets["krnk"].reg_subsets
    assert sub.set.id == "_reg/mine@krnk/f00" and sub.repeats == 3 and sub.set.class_tokens == "cat girl"
    assert set(project.reg_sets) >= {"_reg/mine@krnk/f00"}


def test_bad_regularization_folders_name_file_line_and_field(workspace):
    folder = add_regularization(workspace)
    shutil.copy(folder / "f00.png", folder / "portrait.png")
    with pytest.raises(CharfwError) as exc:
        load_project(workspace)
    assert "portrait.png" in str(exc.value) and "not a view code" in str(exc.value)
    shutil.rmtree(folder)
    folder.mkdir()
    with pytest.raises(CharfwError) as exc:
        load_project(workspace)
    assert exc.value.field == "regularization.girls.folder" and exc.value.line and "empty" in exc.value.message
    shutil.rmtree(folder)
    with pytest.raises(CharfwError) as exc:
        load_project(workspace)
    assert "not found" in exc.value.message and exc.value.field == "regularization.girls.folder"


def test_the_fill_is_sd_scripts_rule():
    """Hand-counted against sd-scripts' DreamBoothDataset: first pass with the subsets' repeats, then one more
    each, stopping as soon as the images x repeats of the training subsets are matched."""
    assert reg_repeats(10, [1, 1, 1]) == [4, 3, 3]
    assert reg_repeats(3, [2, 2, 2]) == [2, 2, 0]      # the third is never used
    assert reg_repeats(5, [2]) == [5]
    assert reg_repeats(0, [1, 1]) == [0, 0] and reg_repeats(4, []) == []
    assert paired_codes({"f00", "f01", "b00"}, {"f01": 1, "b00": 1, "b22": 1}) == ["b00", "f01"]


def test_the_trainer_reads_reg_subsets_as_sd_scripts_counts_them(workspace):
    """Reg images join the epoch as often as the fill says; num_train_images leaves them out; the report's
    numbers are what the trainer plans."""
    from charfw.report.numbers import target_numbers
    from charfw.train.dataset import load_datasets
    from charfw.train.sampling import BatchPlan

    add_regularization(workspace)
    run_doit(workspace, "dataset")
    layout = Layout(load_project(workspace))
    for name in ("krnk", "tyankps"):
        datasets = load_datasets(layout.toml_path(name))
        for ds in datasets:
            reg = [i for i in ds.images if ds.subsets[i.subset].is_reg]
            own = sum(i.repeats for i in ds.images if not ds.subsets[i.subset].is_reg)
            assert reg and own == ds.num_train_images
            assert sum(i.repeats for i in reg) == ds.num_train_images   # filled to the training images
        numbers = target_numbers(layout, layout.project.targets[name])
        assert numbers.samples == sum(i.repeats for d in datasets for i in d.images)
        assert numbers.batches_per_epoch == BatchPlan(datasets, 0).per_epoch


def test_prior_loss_weight_weighs_the_reg_samples():
    """The per-sample weights multiply each sample's mean error, as sd-scripts' loss_weights do."""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    from charfw.models.configs import scheduler_config
    from charfw.train.loop import prior_weights
    from charfw.train.objective import diffusion_loss
    from charfw.train.sampling import Sample

    subsets = (SimpleNamespace(is_reg=False), SimpleNamespace(is_reg=True))
    images = (SimpleNamespace(subset=0), SimpleNamespace(subset=1))
    datasets = [SimpleNamespace(subsets=subsets, images=images)]
    samples = (Sample(0, 0, False, 0), Sample(0, 1, False, 0))
    weights = prior_weights(datasets, samples, 0.25)
    assert weights.tolist() == [1.0, 0.25]
    assert prior_weights(datasets, samples, 1.0) is None and prior_weights(datasets, samples[:1], 0.25) is None

    torch.manual_seed(0)
    unet = torch.nn.Conv2d(4, 4, 1)
    model = lambda x, t, c, **_: SimpleNamespace(sample=unet(x))  # noqa: E731
    sched = DDPMScheduler.from_config(scheduler_config(SD15))
    x0, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([100, 500])
    per_sample = [float(diffusion_loss(model, sched, x0[i:i + 1], None, noise[i:i + 1], t[i:i + 1]).detach())
                  for i in range(2)]
    weighted = float(diffusion_loss(model, sched, x0, None, noise, t, sample_weights=weights).detach())
    assert weighted == pytest.approx((per_sample[0] + 0.25 * per_sample[1]) / 2, rel=1e-6)


def test_sd_scripts_gets_the_prior_loss_weight_and_only_users_of_it_retrain(workspace):
    from charfw.sdscripts.command import train_args

    add_regularization(workspace)
    path = workspace / "characters/tyank/character.yaml"
    data = yaml.safe_load(path.read_text())
    data["train"] = {"prior_loss_weight": 0.5}
    path.write_text(yaml.safe_dump(data))
    layout = Layout(load_project(workspace))
    targets = layout.project.targets
    assert "--prior_loss_weight=0.5" in train_args(layout.train_request(targets["tyank"]))
    assert not any(a.startswith("--prior_loss_weight") for a in train_args(layout.train_request(targets["krnk"])))
    assert TrainSettings().prior_loss_weight == 1.0
    # at its default the option is not in the run key: LoRAs trained before it existed stay valid
    from charfw.fingerprint import run_config
    assert "prior_loss_weight" not in run_config(layout.train_request(targets["krnk"]))["settings"]
    assert run_config(layout.train_request(targets["tyank"]))["settings"]["prior_loss_weight"] == 0.5


def test_a_reg_folder_of_body_codes_changes_only_the_targets_with_those_codes(workspace):
    """Adding regularization rewrites the datasets (so the run keys) of the targets whose view codes it has,
    and nothing of the others."""
    from wsutil import executed

    run_doit(workspace, "dataset")
    before = Layout(load_project(workspace))
    keys = {n: run_key(before.train_request(before.project.targets[n])) for n in ("krnk", "tyank")}
    add_regularization(workspace, codes=("b07",))             # of the characters' sets only tyank/ps has b07
    ran = executed(run_doit(workspace, "dataset"))
    assert {t for t in ran if t.startswith("dataset:")} == {"dataset:tyankps", "dataset:krnksf_tyankps"}
    after = Layout(load_project(workspace))
    assert keys == {n: run_key(after.train_request(after.project.targets[n])) for n in keys}


def test_the_report_pairs_reg_images_with_views(workspace):
    from html.parser import HTMLParser

    add_regularization(workspace)
    run_doit(workspace, "images", "report")
    page = workspace / "build/report/targets/tyank.html"
    rows: dict[str, list[str]] = {}

    class Rows(HTMLParser):
        code = None

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "tr" and "data-code" in attrs:
                self.code = attrs["data-code"]
                rows[self.code] = []
            if tag == "img" and self.code:
                rows[self.code].append(attrs["src"])

        def handle_endtag(self, tag):
            if tag == "tr":
                self.code = None

    Rows().feed(page.read_text(encoding="utf-8"))
    reg_rows = {code: srcs for code, srcs in rows.items() if srcs}
    assert set(reg_rows) == {"f00", "f05"}
    for srcs in reg_rows.values():
        assert all((page.parent / src).is_file() for src in srcs)

