"""Manifest loading: YAML line tracking and field-by-field settings layering."""


import pytest
from wsutil import replace_example_training

from charfw.config.yamlfile import load_yaml
from charfw.errors import CharfwError
from charfw.workspace import load_project


def test_yaml_lines_and_numbers(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("a: 1\nb:\n  - x\n  - 1e-4\n  - '1e-4'\n")
    data, lines = load_yaml(p)
    assert data == {"a": 1, "b": ["x", 1e-4, "1e-4"]}
    assert lines[("b", 1)] == 4 and lines[("a",)] == 1


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(CharfwError, match=r"a\.yaml:\d+: invalid YAML"):
        load_yaml(p)


def test_duplicate_key(tmp_path):
    p = tmp_path / "a.yaml"
    p.write_text("a: 1\na: 2\n")
    with pytest.raises(CharfwError, match=r"a\.yaml:2: duplicate key 'a'"):
        load_yaml(p)


def test_compress_values_checked_on_the_merged_settings(workspace):
    (workspace / "charfw.yaml").write_text((workspace / "charfw.yaml").read_text()
                                           + "compress:\n  method: sv_fro\n  value: 0.9\n")
    m = workspace / "characters/krnk/character.yaml"
    m.write_text(m.read_text() + "compress:\n  value: 0.8\n")  # one level may set only the value
    assert load_project(workspace).targets["krnk"].compress.value == 0.8
    m.write_text(m.read_text().replace("value: 0.8", "value: 16"))
    line = len(m.read_text().splitlines()) - 1
    with pytest.raises(CharfwError, match=rf"character\.yaml:{line}: compress: .*fraction in \(0, 1\]"):
        load_project(workspace)


def test_settings_layer_field_by_field(workspace):
    replace_example_training(workspace, "lr: 2.0e-4\ndim: 64")
    (workspace / "charfw.yaml").write_text((workspace / "charfw.yaml").read_text()
                                           + "outfit:\n  train:\n    steps: 900\n")
    m = workspace / "characters/krnk/character.yaml"
    m.write_text(m.read_text().replace("    keyword: krnksf\n", "    keyword: krnksf\n    train:\n      dim: 32\n"))
    t = load_project(workspace).targets
    assert t["krnk"].train.lr == 2e-4 and t["krnk"].train.dim == 64 and t["krnk"].steps == 1000
    assert t["krnksf"].train.dim == 32 and t["krnksf"].train.lr == 2e-4 and t["krnksf"].steps == 900
    assert t["tyankps"].train.dim == 64 and t["tyankps"].steps == 900
    assert t["krnksf_tyankps"].steps == 1600
    assert t["krnk"].merge.weights == "FACE" and t["krnksf"].merge.weights == "BODY"
    assert t["krnksf"].init == "krnk" and t["krnksf"].trigger_words == ["krnksf", "krnk"]
    assert t["krnksf_tyankps"].trigger_words == ["krnksf", "krnk", "tyankps", "tyank"]


def test_target_name_collision(workspace):
    m = workspace / "characters/tyank/character.yaml"
    m.write_text(m.read_text().replace("keyword: tyankps", "keyword: krnksf"))
    with pytest.raises(CharfwError, match="'krnksf' is already used"):
        load_project(workspace)


def test_lora_file_declared(workspace):
    m = workspace / "characters/krnk/character.yaml"
    m.write_text(m.read_text() + "face:\n  lora: missing.safetensors\n")
    with pytest.raises(CharfwError, match=r"character\.yaml:\d+: face\.lora: LoRA file not found"):
        load_project(workspace)


def test_yaml_on_off_switches_and_batch_scale(workspace):
    """YAML reads a bare `off` as false: `compile: off` still means off; batch_scale is auto or a positive integer."""
    replace_example_training(workspace, "compile: off\nbatch_scale: 4")
    t = load_project(workspace).targets["krnk"].train
    assert t.compile == "off" and t.batch_scale == 4
    replace_example_training(workspace, "compile: on")
    t = load_project(workspace).targets["krnk"].train
    assert t.compile == "on" and t.batch_scale == "auto"
    replace_example_training(workspace, "batch_scale: 0")
    with pytest.raises(CharfwError, match=r"charfw\.yaml:\d+: train\.batch_scale"):
        load_project(workspace)


def test_the_merge_default_is_what_applies(workspace):
    """The schema says what an unset `merge.weights` means, and that is what the targets get."""
    from charfw.config.models import MergeSettings

    field = MergeSettings.model_fields["weights"]
    assert field.default is None and "FACE for faces" in field.description and "BODY for outfits" in field.description
    targets = load_project(workspace).targets
    assert {name: t.merge.weights for name, t in targets.items()} == {
        "krnk": "FACE", "tyank": "FACE", "krnksf": "BODY", "tyankps": "BODY", "krnksf_tyankps": "BODY"}
