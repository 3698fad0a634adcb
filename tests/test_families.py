"""A model family is one object: every per-family fact lives in its module under charfw/families."""

import ast
import pickle
from pathlib import Path

import pytest

import charfw
from charfw.errors import CharfwError
from charfw.families import (DEFAULT, FAMILIES, SD15, SDXL, SDXL_VPRED, base, family, from_checkpoint, from_lora,
                             of_builtin, of_config)
from charfw.lora.blocks import builtin_presets, parse_weights
from charfw.lora.keys import lora_module_specs
from charfw.models.configs import DATA, label, parts, with_article

PACKAGE = Path(charfw.__file__).parent


def family_names_outside_the_families(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant in `source` that is a family's name (docstrings are whole
    sentences and never equal one)."""
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in FAMILIES]


def test_no_module_outside_the_families_names_a_family():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "families":
            continue
        for line, text in family_names_outside_the_families(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}")
    assert offenders == [], "branch on a Family's fields instead:\n" + "\n".join(offenders)


def test_the_check_sees_a_branch_on_a_name():
    assert family_names_outside_the_families('if family == "sdxl":\n    pass\n') == [(1, "sdxl")]
    assert family_names_outside_the_families('x = {"sd15": 1}\n') == [(1, "sd15")]
    assert family_names_outside_the_families('"""Runs on sd15 and sdxl."""\n') == []


def test_registry_and_lookups():
    assert family("sd15") is SD15 and family(SDXL) is SDXL and DEFAULT is SD15
    with pytest.raises(CharfwError, match="unknown model family 'sd3'; use one of sd15, sdxl, sdxl-vpred"):
        family("sd3")
    assert of_config("tiny-sdxl") is SDXL and of_config("sd15") is SD15
    with pytest.raises(CharfwError, match="unknown architecture"):
        of_config("sd3")
    assert of_builtin("tiny-sd15") is SD15 and of_builtin("tiny-sd16") is None


def test_a_family_pickles_as_the_one_object():
    """doit's workers receive families through pickle: the registry's object comes out."""
    assert pickle.loads(pickle.dumps(SDXL)) is SDXL
    assert pickle.loads(pickle.dumps({"f": SD15}))["f"] is SD15


def test_checkpoint_detection():
    unet = ["model.diffusion_model.input_blocks.0.0.weight"]
    assert from_checkpoint(unet + ["cond_stage_model.transformer.text_model.x"]) is SD15
    assert from_checkpoint(unet + ["conditioner.embedders.1.model.x"]) is SDXL
    assert from_checkpoint(unet + ["conditioner.embedders.1.model.x", "v_pred", "ztsnr"]) is SDXL_VPRED
    assert from_checkpoint(unet + ["cond_stage_model.transformer.text_model.x", "v_pred"]) is SD15   # no such variant
    assert from_checkpoint(unet + ["cond_stage_model.model.transformer.x"]) is None     # SD 2.x
    assert from_checkpoint(["first_stage_model.encoder.x"]) is None


def test_lora_detection():
    assert from_lora(list(lora_module_specs(SD15, conv3x3=False))) is SD15
    assert from_lora(list(lora_module_specs(SDXL, conv3x3=True))) is SDXL
    with pytest.raises(CharfwError, match=r"\(both SD1.5 and SDXL module names\); pass --arch sd15 or --arch sdxl"):
        from_lora(["lora_te_text_model_x", "lora_te1_text_model_x"])


@pytest.mark.parametrize("fam", FAMILIES.values(), ids=lambda f: f.name)
def test_every_family_is_complete(fam):
    """What the rest of charfw reads from a family holds together."""
    assert FAMILIES[fam.name] is fam
    for config in fam.configs:
        for part in parts(config):
            assert (DATA / config / f"{part}.json").is_file()
    owner = base(fam)
    assert fam.builtin_model in fam.configs or fam.variant_of    # a variant's builtin: the base's plus its flags
    assert label(fam.configs[0]) == owner.label and with_article(fam.configs[0]).endswith(owner.label)
    assert of_builtin(fam.builtin_model) is fam
    assert len(fam.text_encoders) == len(fam.text_encoder_parts)
    assert set(fam.blocks.short) <= set(fam.blocks.blocks) and fam.blocks.blocks[0] == "BASE"
    for name, values in builtin_presets(fam).items():
        assert len(values) in (len(fam.blocks.blocks), len(fam.blocks.short)), name
        parse_weights(name, fam)
    assert set(fam.size_classes.batch_profiles) == {"default", "12gb"}
    assert fam.size_classes.low < fam.size_classes.mid < fam.size_classes.high
    assert fam.sd_scripts_script.endswith("train_network.py") and fam.prediction_type in ("epsilon", "v")
    assert from_lora(list(lora_module_specs(fam))) is owner      # a variant's LoRA files are its base's


def test_the_families_differ_where_the_tools_do():
    """The facts sd-scripts and the loaders act on (their documented behaviour)."""
    assert (SD15.sd_scripts_script, SDXL.sd_scripts_script) == ("train_network.py", "sdxl_train_network.py")
    assert SD15.uses_clip_skip and not SDXL.uses_clip_skip
    assert SDXL.sd_scripts_flags == ("--no_half_vae",) and SDXL.sd_scripts_caches_te_outputs
    assert (SD15.base_model_version, SDXL.base_model_version) == ("sd_v1", "sdxl_base_v1-0")
    assert (len(SD15.blocks.blocks), len(SD15.blocks.short), len(SDXL.blocks.blocks), len(SDXL.blocks.short)) \
        == (26, 17, 20, 12)
    assert [t.prefix for t in SDXL.text_encoders] == ["lora_te1_", "lora_te2_"]
