"""`charfw lora inspect|merge|compress` from the command line."""

import json

import pytest
import torch
from lora_factory import lora_tensors, make_tensors, write
from PIL import Image

from charfw.cli import main
from charfw.families import SD15
from charfw.lora import load_lora
from charfw.lora.keys import lora_module_specs


@pytest.fixture
def files(tmp_path):
    specs = lora_module_specs(SD15, True)
    gen = torch.Generator().manual_seed(2)
    names = ["lora_te_text_model_encoder_layers_0_self_attn_q_proj",
             "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
             "lora_unet_down_blocks_0_downsamplers_0_conv",
             "lora_unet_up_blocks_3_attentions_2_proj_out"]
    a = write(tmp_path / "a.safetensors", {n: lora_tensors(specs[n], 8, gen, decay=0.5) for n in names},
              {"ss_network_dim": "8"})
    b = write(tmp_path / "b.safetensors", {names[1]: lora_tensors(specs[names[1]], 8, gen, decay=0.5),
                                           "lora_unet_up_blocks_3_attentions_0_proj_in":
                                               make_tensors("loha", out=320, inp=320, gen=gen)})
    return a, b


def test_inspect_json_and_plot(files, tmp_path, capsys):
    a, _ = files
    assert main(["lora", "inspect", str(a), "--json", "--plot", str(tmp_path / "p.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["arch"] == "sd15" and report["modules"] == 4
    blocks = {row["block"]: row for row in report["blocks"]}
    assert set(blocks) == {"BASE", "IN01", "IN03", "OUT11"}
    assert blocks["IN03"]["ranks"] == [8] and blocks["BASE"]["norm"] > 0
    with Image.open(tmp_path / "p.png") as img:
        assert img.format == "PNG" and img.width > 100
    assert main(["lora", "inspect", str(a)]) == 0
    assert "OUT11" in capsys.readouterr().out


def test_merge_default_name(files, capsys):
    a, _ = files
    assert main(["lora", "merge", str(a), "--weights", "OUTALL"]) == 0
    out = a.with_name("a-OUTALL.safetensors")
    assert set(load_lora(out).modules) == {"lora_te_text_model_encoder_layers_0_self_attn_q_proj",
                                           "lora_unet_up_blocks_3_attentions_2_proj_out"}
    assert main(["lora", "merge", str(a), "-w", "IN01=0.5"]) == 0
    assert a.with_name("a-BW.safetensors").exists()


def test_merge_user_presets(files, tmp_path):
    a, _ = files
    presets = tmp_path / "lbwpresets.txt"
    presets.write_text("# mine\nKEEPTE:BASE=1,IN01=0,IN03=0,OUT11=0\n")
    out = tmp_path / "k.safetensors"
    assert main(["lora", "merge", str(a), "-w", "KEEPTE", "--presets", str(presets), "-o", str(out)]) == 0
    assert list(load_lora(out).modules) == ["lora_te_text_model_encoder_layers_0_self_attn_q_proj"]


def test_compress_several_inputs(files, tmp_path, capsys):
    a, b = files
    assert main(["lora", "compress", str(a), str(b), "--sv-fro", "0.9", "-q"]) == 0
    assert a.with_name("a-SvF0.9.safetensors").exists() and b.with_name("b-SvF0.9.safetensors").exists()
    outdir = tmp_path / "out"
    outdir.mkdir()
    assert main(["lora", "compress", str(a), str(b), "-o", str(outdir), "--rank", "4", "--to-lora"]) == 0
    assert {p.name for p in outdir.iterdir()} == {"a-R4.safetensors", "b-R4.safetensors"}
    assert {m.kind for m in load_lora(outdir / "b-R4.safetensors").modules.values()} == {"lora"}
    assert main(["lora", "compress", str(a)]) == 0
    assert a.with_name("a-SvR16.safetensors").exists()


def test_errors_exit_2_with_the_file(files, tmp_path, capsys):
    a, b = files
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    assert main(["lora", "inspect", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
    assert main(["lora", "compress", str(a), str(b), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "folder" in capsys.readouterr().err
    assert main(["lora", "merge", str(a), "-w", "FACE", "-o", str(a)]) == 2
    assert "overwrite" in capsys.readouterr().err
