"""Every training setting says once whether it changes the weights; both consumers derive from that."""

import pytest

from charfw.config.models import TrainSettings, resume_fields, run_key_fields, setting_class

RUN_ONLY = {"save_every_n_steps", "cache_latents", "gradient_checkpointing", "python"}
SD_SCRIPTS_ONLY = {"sd_scripts", "python", "extra_args", "attention"}


@pytest.mark.parametrize("name", list(TrainSettings.model_fields))
def test_every_field_is_classified(name):
    effect, backend = setting_class(name)
    assert effect in ("weights", "file", "run") and backend in ("both", "embedded", "sd-scripts")


def test_run_keys_and_resume_derive_from_the_classes():
    embedded, sd_scripts = run_key_fields("embedded"), run_key_fields("sd-scripts")
    assert not (RUN_ONLY & (embedded | sd_scripts))                  # never retrain for these
    assert not (SD_SCRIPTS_ONLY & embedded)                          # the other backend's options
    assert {"extra_args", "sd_scripts", "lr", "save_precision"} <= sd_scripts
    assert {"lr", "network", "seed", "save_precision"} <= embedded and "save_every_n_steps" not in sd_scripts
    resume = resume_fields()
    assert resume < embedded and "save_precision" not in resume     # writing fp16 or fp32 trains the same
