"""Every sd-scripts command charfw can print for the documented settings passes sd-scripts' checks."""

from __future__ import annotations

import re
import sys
import tomllib

import pytest
import yaml
from fake_sd_scripts import make_sd_scripts
from sd_scripts_rules import OPTIONS, parse, problems
from wsutil import ROOT, replace_example_training

from charfw.backends import command_line
from charfw.dataset.toml import dataset_config, render_toml
from charfw.layout import Layout
from charfw.workspace import load_project


def readme_sd_scripts_example() -> dict:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"#### Training with kohya sd-scripts\s+```yaml\n(.*?)```", readme, re.S).group(1)
    return yaml.safe_load(block)["train"]


VARIANTS = [{}, {"color_aug": False}, {"color_aug": False, "cache_latents": "disk"},
            {"extra_args": ["--cache_latents"]}, {"extra_args": []},
            *({"network": n, "alpha": a, "optimizer": o} for n in ("c3lier", "lora", "locon", "loha", "lokr")
              for a in ("half", "one") for o in ("adamw8bit", "adafactor")),
            {"noise_offset": 0.05, "min_snr_gamma": 5, "restarts": 3, "warmup_steps": 10},
            {"loss_type": "huber", "debiased_estimation_loss": True, "ip_noise_gamma": 0.1, "scale_weight_norms": 1.0,
             "multires_noise_iterations": 6, "masked_loss": True, "prior_loss_weight": 0.5, "validation_split": 0.1,
             "network": "c3lier", "dora_wd": True},
            {"down_lr_weight": "sine", "mid_lr_weight": 0.5, "up_lr_weight": [1, 0], "block_alphas": [8] * 25}]


SDXL_VARIANTS = [{"family": "sdxl"}, {"family": "sdxl", "train_text_encoder": True},
                 {"family": "sdxl", "color_aug": False}, {"family": "sdxl", "network": "loha", "optimizer": "adafactor"},
                 {"train_text_encoder": False}, {"family": "sdxl-vpred"}]


@pytest.mark.parametrize("variant", VARIANTS + SDXL_VARIANTS,
                         ids=lambda v: ",".join(f"{k}={v[k]}" for k in v) or "as documented")
def test_documented_sd_scripts_commands_pass_its_checks(workspace, tmp_path, variant):
    variant = dict(variant)
    family = variant.pop("family", "sd15")
    make_sd_scripts(tmp_path / "sd-scripts")
    (workspace / "models").mkdir()
    (workspace / "models/base.safetensors").write_bytes(b"stands for a checkpoint")
    text = (workspace / "charfw.yaml").read_text().replace("model: builtin:tiny-sd15",
                                                           f"model: models/base.safetensors\nfamily: {family}")
    (workspace / "charfw.yaml").write_text(text)
    settings = {**readme_sd_scripts_example(), **variant,
                "sd_scripts": str(tmp_path / "sd-scripts"), "python": sys.executable}
    replace_example_training(workspace, yaml.safe_dump(settings))
    layout = Layout(load_project(workspace))
    trained = layout.project.trained_targets()
    assert trained
    for target in trained:
        argv = command_line(layout.train_request(target))
        script = next(i for i, a in enumerate(argv) if a.endswith("train_network.py"))
        assert argv[script].endswith("/sdxl_train_network.py" if family != "sd15" else "/train_network.py")
        toml_path = layout.toml_path(target.name)
        dataset = tomllib.loads(render_toml(dataset_config(target, layout.plans, layout.images_root,
                                                           toml_path.parent, layout.project.batch_table,
                                                           layout.project.family)))
        assert problems(argv[script + 1:], dataset, sdxl=family != "sd15") == [], (target.name, argv)
        args = parse(argv[script + 1:])
        if "cache_latents" in args or "cache_latents_to_disk" in args:
            assert dataset["general"]["color_aug"] is False


def test_the_checker_catches_what_sd_scripts_refuses():
    dataset = {"general": {"color_aug": True}, "datasets": [{"subsets": [{"image_dir": "x"}]}]}
    assert problems(["--cache_latents_to_disk"], dataset) == [
        "datasets[0].subsets[0]: color_aug cannot be used when caching latents"]
    assert problems(["--cache_latents"], {"datasets": [{"subsets": [{"random_crop": True}]}]})
    assert problems(["--adaptive_noise_scale=1"], {}) == ["adaptive_noise_scale requires noise_offset"]
    assert problems(["--no_such_option"], {}) == ["unknown option --no_such_option"]
    assert "max_data_loader_n_workers" in OPTIONS
    assert problems(["--cache_text_encoder_outputs"], {}) == ["unknown option --cache_text_encoder_outputs"]
    assert problems(["--cache_text_encoder_outputs", "--clip_skip=2"], {}, sdxl=True) == [
        "clip_skip will be unexpected in SDXL training",
        "network for Text Encoder cannot be trained with caching Text Encoder outputs"]
    assert problems([], {"datasets": [{"bucket_reso_steps": 48}]}, sdxl=True) == [
        "datasets[0]: bucket_reso_steps 48 is not divisible by 32"]
