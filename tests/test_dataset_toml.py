"""The example's dataset TOML is what sd-scripts accepts: expected datasets, subsets, keys only from its schema."""

import tomllib
from pathlib import Path

import pytest
from wsutil import run_doit, use_spec_sizes

from charfw.dataset.plan import folder_name, plan_set, scaled_size
from charfw.dataset.schema import SD_SCRIPTS_KEYS
from charfw.dataset.toml import dataset_config, render_toml
from charfw.families import SD15
from charfw.rules.sizeclass import batch_size, class_pair
from charfw.workspace import load_project


def configs(ws: Path, table=SD15.size_classes.batch_profiles["default"]):
    project = load_project(ws)
    plans = {sid: plan_set(s, project.family) for sid, s in project.sets.items()}
    out = {}
    for name, target in project.targets.items():
        toml_dir = project.build_dir / "datasets"
        text = render_toml(dataset_config(target, plans, project.build_dir / "images", toml_dir, table,
                                                 project.family))
        out[name] = tomllib.loads(text)
    return project, out


def assert_sd_scripts_keys(cfg):
    assert set(cfg) == {"general", "datasets"}
    assert set(cfg["general"]) <= SD_SCRIPTS_KEYS["general"]
    for ds in cfg["datasets"]:
        assert set(ds) <= SD_SCRIPTS_KEYS["datasets"]
        for sub in ds["subsets"]:
            assert set(sub) <= SD_SCRIPTS_KEYS["subsets"]
            assert "image_dir" in sub


def test_example_toml(workspace):
    use_spec_sizes(workspace)
    project, cfgs = configs(workspace)
    assert set(cfgs) == {"krnk", "krnksf", "tyank", "tyankps", "krnksf_tyankps"}
    for name, cfg in cfgs.items():
        assert_sd_scripts_keys(cfg)
        g = cfg["general"]
        assert g == {"color_aug": True, "enable_bucket": True, "bucket_no_upscale": True,
                     "caption_extension": ".txt", "num_repeats": {"krnk": 4, "tyank": 4}.get(name, 1 if "_" in name else 2)}
    krnk = cfgs["krnk"]
    subsets = [s for ds in krnk["datasets"] for s in ds["subsets"]]
    assert [Path(s["image_dir"]).name for s in subsets] == [f"krnk girl_f{n:04d}" for n in (128, 192, 256, 384, 512, 768)]
    assert all(s["class_tokens"] == "krnk girl" and s["flip_aug"] is True for s in subsets)
    assert [ds["resolution"] for ds in krnk["datasets"]] == [[512, 512], [768, 768]]
    assert [ds["batch_size"] for ds in krnk["datasets"]] == [2, 1]
    # asymmetric character never flips
    assert all(s["flip_aug"] is False for ds in cfgs["tyankps"]["datasets"] for s in ds["subsets"])
    # outfit = body subsets + face subsets, face keeping its own class tokens and repeats
    tokens = {s["class_tokens"] for ds in cfgs["krnksf"]["datasets"] for s in ds["subsets"]}
    assert tokens == {"krnksf girl", "krnk girl"}
    # group = both outfits' data
    group_tokens = {s["class_tokens"] for ds in cfgs["krnksf_tyankps"]["datasets"] for s in ds["subsets"]}
    assert group_tokens == {"krnksf girl", "krnk girl", "tyankps girl", "tyank girl"}


@pytest.mark.slow
def test_written_toml_paths_resolve_relative_to_the_toml(workspace):
    use_spec_sizes(workspace)
    run_doit(workspace, "dataset")
    toml = workspace / "build/datasets/krnksf_tyankps.toml"
    cfg = tomllib.loads(toml.read_text())
    for ds in cfg["datasets"]:
        for sub in ds["subsets"]:
            folder = toml.parent / sub["image_dir"]
            pngs = sorted(folder.glob("*.png"))
            assert pngs, folder
            assert all(p.with_suffix(".txt").exists() for p in pngs)
            for p in pngs:  # every image really is in the dataset's size class
                from PIL import Image
                with Image.open(p) as im:
                    assert im.mode == "RGB"
                    assert class_pair(*im.size, SD15) == {(512, 512): "LOW_LOW", (512, 768): "LOW_MID",
                                                    (768, 512): "MID_LOW", (768, 768): "MID_MID"}[tuple(ds["resolution"])]


def test_12gb_profile(workspace):
    use_spec_sizes(workspace)
    _, cfgs = configs(workspace, SD15.size_classes.batch_profiles["12gb"])
    assert [ds["batch_size"] for ds in cfgs["krnk"]["datasets"]] == [4, 2]


@pytest.mark.parametrize("w,h,cls", [(512, 512, "LOW_LOW"), (513, 512, "MID_LOW"), (512, 769, "LOW_HIGH"),
                                     (768, 768, "MID_MID"), (1024, 640, "HIGH_MID")])
def test_class_pair(w, h, cls):
    assert class_pair(w, h, SD15) == cls


def test_batch_tables():
    assert batch_size("LOW_LOW", SD15.size_classes.batch_profiles["default"]) == 2
    assert batch_size("MID_MID", SD15.size_classes.batch_profiles["default"]) == 1
    assert {p: batch_size(p, SD15.size_classes.batch_profiles["12gb"]) for p in ("LOW_LOW", "MID_LOW", "LOW_MID", "MID_MID",
                                                                "HIGH_LOW", "LOW_HIGH", "HIGH_HIGH")} == {
        "LOW_LOW": 4, "MID_LOW": 3, "LOW_MID": 3, "MID_MID": 2, "HIGH_LOW": 2, "LOW_HIGH": 2, "HIGH_HIGH": 1}


def test_scaling_never_upscales():
    assert scaled_size(768, 768, 512) == (512, 512)
    assert scaled_size(512, 768, 384) == (256, 384)
    assert scaled_size(600, 600, 768) is None
    assert scaled_size(600, 600, 600) == (600, 600)
    assert folder_name("krnk girl", "f", 512) == "krnk girl_f0512"


def test_toml_string_quoting():
    text = render_toml({"general": {"caption_extension": ".txt"},
                        "datasets": [{"resolution": [512, 512], "subsets": [{"image_dir": "C:\\data\\it's"}]}]})
    assert tomllib.loads(text)["datasets"][0]["subsets"][0]["image_dir"] == "C:\\data\\it's"
