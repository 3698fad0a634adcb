"""Bad input files give one CharfwError naming the file (and the key where there is one)."""

import pytest
import torch
from safetensors.torch import save_file

from charfw.errors import CharfwError
from charfw.lora import compress_file, inspect_file, load_lora, merge_file
from charfw.lora.io import group_keys

from lora_factory import make_tensors, write

GOOD = "lora_te_text_model_encoder_layers_0_mlp_fc1"


def everything(path, tmp_path):
    """Every entry point a user reaches must fail the same way."""
    for call in (lambda: load_lora(path), lambda: inspect_file(path),
                 lambda: merge_file(path, tmp_path / "m.safetensors", "ALL"),
                 lambda: compress_file(path, tmp_path / "c.safetensors")):
        with pytest.raises(CharfwError) as err:
            call()
        yield err.value
    assert not list(tmp_path.glob("[mc].safetensors")) and not list(tmp_path.glob(".*tmp*"))


def test_non_safetensors_file(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("this is a text file, not a LoRA\n")
    for err in everything(path, tmp_path):
        assert err.file == str(path) and "safetensors" in err.message


def test_truncated_file(tmp_path):
    path = write(tmp_path / "cut.safetensors", {GOOD: make_tensors("lora_linear", out=64, inp=64)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    for err in everything(path, tmp_path):
        assert err.file == str(path)


def test_unknown_key_suffix(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file({f"{GOOD}.lora_down.weight": torch.zeros(2, 3), f"{GOOD}.lora_up.weight": torch.zeros(3, 2),
               f"{GOOD}.lora_side.weight": torch.zeros(1)}, str(path))
    for err in everything(path, tmp_path):
        assert err.file == str(path) and err.field == f"{GOOD}.lora_side.weight"
        assert "lora_side.weight" in str(err)


def test_missing_file_and_group_keys(tmp_path):
    with pytest.raises(CharfwError, match="no such LoRA file"):
        load_lora(tmp_path / "absent.safetensors")
    assert group_keys(["a.alpha", "a.lora_up.weight", "b.hada_w1_a"]) == {
        "a": {"alpha": "a.alpha", "lora_up.weight": "a.lora_up.weight"}, "b": {"hada_w1_a": "b.hada_w1_a"}}
    with pytest.raises(CharfwError, match="none"):
        group_keys(["no_dot_key"])


def test_incomplete_module_names_file_and_module(tmp_path):
    path = tmp_path / "half.safetensors"
    save_file({f"{GOOD}.lora_down.weight": torch.zeros(2, 3)}, str(path))
    with pytest.raises(CharfwError, match="lacks lora_up") as err:
        load_lora(path)
    assert err.value.file == str(path) and err.value.field == GOOD
