"""run_sd_scripts against a fake sd-scripts checkout (a test double of train_network.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from fake_sd_scripts import make_sd_scripts
from safetensors.numpy import load_file

from charfw.config.models import TrainSettings
from charfw.errors import CharfwError
from charfw.families import SD15
from charfw.request import TrainRequest
from charfw.sdscripts.runner import resolve_python, run_sd_scripts


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    toml_dir = ws / "build" / "krnk" / "face"
    (toml_dir / "krnk girl_f0128").mkdir(parents=True)
    (toml_dir / "dataset.toml").write_text(textwrap.dedent("""\
        [general]
        color_aug = true

        [[datasets]]
        resolution = [512, 512]
        batch_size = 2

        [[datasets.subsets]]
        image_dir = 'krnk girl_f0128'
        class_tokens = 'krnk girl'
        """))
    (ws / "models").mkdir()
    (ws / "models" / "base model.safetensors").write_bytes(b"not really a checkpoint")
    make_sd_scripts(tmp_path / "sd-scripts")
    return ws


def run(ws: Path, settings: TrainSettings, launcher: str = "python", **over) -> Path:
    kw = dict(dataset_toml=ws / "build/krnk/face/dataset.toml", settings=settings, steps=1000,
              model="models/base model.safetensors", output=ws / "dist/krnk.safetensors",
              state_dir=ws / "build/krnk/face/sd-scripts", log_dir=ws / "build/logs", name="krnk", root=ws,
              family=SD15)
    kw.update(over)
    return run_sd_scripts(TrainRequest(**kw), launcher=launcher)


def settings(**kw) -> TrainSettings:
    kw.setdefault("sd_scripts", "../sd-scripts")
    return TrainSettings(**kw)


def recorded(ws: Path) -> dict:
    return json.loads((ws / "build/krnk/face/sd-scripts/argv.json").read_text())


def expected_argv(ws: Path, name: str, optimizer: str = "AdamW8bit", extra=()) -> list[str]:
    work = ws / "build/krnk/face/sd-scripts"
    return [
        "--network_module=networks.lora", "--network_args", "conv_dim=128", "conv_alpha=64",
        f"--optimizer_type={optimizer}", "--learning_rate=100e-6", "--text_encoder_lr=44e-6",
        "--lr_scheduler=cosine_with_restarts", "--network_dim=128", "--network_alpha=64",
        f"--dataset_config={ws / 'build/krnk/face/dataset.toml'}", "--max_train_steps=1000",
        f"--output_dir={work}", f"--output_name={name}",
        f"--pretrained_model_name_or_path={ws / 'models/base model.safetensors'}", "--clip_skip=2",
        *extra, f"--logging_dir={ws / 'build/logs'}", f"--log_prefix={name}", "--xformers",
        "--save_model_as=safetensors", "--mixed_precision=fp16", "--save_precision=fp16",
        "--gradient_checkpointing", "--persistent_data_loader_workers", "--seed=31337",
        "--save_every_n_steps=200", "--save_state", "--save_last_n_steps_state=200",
    ]


@pytest.mark.slow
def test_runs_through_accelerate_and_collects_the_lora(ws, capsys):
    out = run(ws, settings(), launcher="accelerate")
    assert out == ws / "dist/krnk.safetensors"
    rec = recorded(ws)
    assert rec["argv"] == expected_argv(ws, "krnk-Lora3x3A50p-AdamW8-128-100-1000")
    assert Path(rec["cwd"]) == ws / "build/krnk/face"  # image_dir is relative to the TOML
    assert rec["marker"] == "fake sd-scripts"
    tensors = load_file(out)
    assert tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"].shape == ()
    assert len(tensors) == 6
    assert "fake training done" in capsys.readouterr().out  # streamed live
    log = ws / "build/krnk/face/sd-scripts/krnk-Lora3x3A50p-AdamW8-128-100-1000.log"
    assert "fake training done" in log.read_text()
    assert (ws / "build/logs").is_dir()
    assert not list((ws / "dist").glob(".*tmp*"))


def test_plain_python_launcher_vae_and_init_weights(ws):
    (ws / "models" / "vae.ckpt").write_bytes(b"vae")
    face = ws / "build" / "face.safetensors"
    face.write_bytes(b"x")
    run(ws, settings(), vae="models/vae.ckpt", init_weights=face, steps=1200)
    argv = recorded(ws)["argv"]
    name = "krnk-Lora3x3A50p-AdamW8-128-100-1200"
    assert f"--output_name={name}" in argv
    i = argv.index("--clip_skip=2")
    assert argv[i - 1] == f"--vae={ws / 'models/vae.ckpt'}"
    assert argv[i + 1] == f"--network_weights={face}"


def test_lycoris_adafactor_and_extra_args(ws):
    run(ws, settings(network="loha", optimizer="adafactor", attention="sdpa",
                     extra_args=["--seed=5", "--max_grad_norm=0"]))
    argv = recorded(ws)["argv"]
    assert argv[:9] == ["--network_module=lycoris.kohya", "--network_args", "conv_dim=32", "conv_alpha=16",
                        "algo=loha", "--optimizer_type=Adafactor", "--optimizer_args", "relative_step=True",
                        "scale_parameter=True"]
    assert "--output_name=krnk-LohaA50p-AdaFactor-32-100-1000" in argv
    assert "--sdpa" in argv and "--seed=31337" not in argv
    assert argv[-2:] == ["--seed=5", "--max_grad_norm=0"]


def test_adamw8bit_falls_back_to_adamw_without_bitsandbytes(tmp_path, ws, capsys):
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    make_sd_scripts(tmp_path / "sd-nobnb", fake_modules=("xformers",))
    run(ws, settings(sd_scripts=str(tmp_path / "sd-nobnb")))
    argv = recorded(ws)["argv"]
    assert argv == expected_argv(ws, "krnk-Lora3x3A50p-AdamW-128-100-1000", optimizer="AdamW")
    assert "plain AdamW" in capsys.readouterr().out


def test_a_saved_sd_scripts_state_is_resumed(ws):
    name = "krnk-Lora3x3A50p-AdamW-128-100-1000"
    work = ws / "build/krnk/face/sd-scripts"
    for step in (200, 400):
        (work / f"{name}-step{step:08d}-state").mkdir(parents=True)
    run(ws, settings(optimizer="adamw"))
    assert recorded(ws)["argv"][-1] == f"--resume={work / f'{name}-step00000400-state'}"


def test_failure_reports_last_lines(ws, monkeypatch):
    monkeypatch.setenv("FAKE_SD_FAIL", "1")
    with pytest.raises(CharfwError) as err:
        run(ws, settings())
    msg = str(err.value)
    assert "exit code 3" in msg
    assert "RuntimeError: CUDA out of memory (fake)" in msg
    assert "step 29/30" in msg and "step 11/30" in msg and "step 10/30" not in msg  # last 20 lines
    assert not (ws / "dist/krnk.safetensors").exists()


def test_missing_output_is_an_error_even_with_a_stale_file(ws, monkeypatch):
    work = ws / "build/krnk/face/sd-scripts"
    work.mkdir(parents=True)
    (work / "krnk-Lora3x3A50p-AdamW8-128-100-1000.safetensors").write_bytes(b"stale")
    monkeypatch.setenv("FAKE_SD_NO_OUTPUT", "1")
    with pytest.raises(CharfwError, match="did not write"):
        run(ws, settings())
    assert not (ws / "dist/krnk.safetensors").exists()


def test_builtin_model_is_refused(ws):
    with pytest.raises(CharfwError, match="needs a checkpoint file") as err:
        run(ws, settings(), model="builtin:tiny-sd15")
    assert err.value.field == "model"


def test_missing_model_file(ws):
    with pytest.raises(CharfwError, match="does not exist") as err:
        run(ws, settings(), model="models/nope.safetensors")
    assert err.value.field == "model"


@pytest.mark.parametrize("value, text", [
    (None, "needs the path of a kohya sd-scripts checkout"),
    ("../no-such-folder", "does not exist"),
    ("models", "no train_network.py"),
])
def test_sd_scripts_folder_errors(ws, value, text):
    with pytest.raises(CharfwError, match=text) as err:
        run(ws, TrainSettings(sd_scripts=value))
    assert err.value.field == "train.sd_scripts"
    assert "train.sd_scripts" in str(err.value)


def test_unimportable_sd_scripts(tmp_path, ws):
    make_sd_scripts(tmp_path / "sd-broken",
                    train_util="raise ModuleNotFoundError(\"No module named 'diffusers'\")\n")
    with pytest.raises(CharfwError) as err:
        run(ws, settings(sd_scripts=str(tmp_path / "sd-broken")))
    msg = str(err.value)
    assert sys.executable in msg
    assert "library.train_util" in msg and "No module named 'diffusers'" in msg
    assert err.value.field == "train.python"


def test_missing_xformers_names_the_attention_setting(tmp_path, ws):
    if importlib.util.find_spec("xformers") is not None:
        pytest.skip("xformers is installed here")
    make_sd_scripts(tmp_path / "sd-nox", fake_modules=("bitsandbytes",))
    with pytest.raises(CharfwError, match="xformers") as err:
        run(ws, settings(sd_scripts=str(tmp_path / "sd-nox")))
    assert err.value.field == "train.attention"
    run(ws, settings(sd_scripts=str(tmp_path / "sd-nox"), attention="none"))
    assert "--xformers" not in recorded(ws)["argv"]


def test_missing_python(ws):
    with pytest.raises(CharfwError, match="does not exist") as err:
        run(ws, settings(python="venvs/py/bin/python"))
    assert err.value.field == "train.python"
    with pytest.raises(CharfwError, match="not a command on PATH"):
        run(ws, settings(python="no-such-python-xyz"))


@pytest.mark.skipif(os.name == "nt", reason="POSIX shell script as a fake interpreter")
def test_python_that_cannot_run(tmp_path, ws):
    bad = tmp_path / "badpython"
    bad.write_text("#!/bin/sh\necho 'error while loading shared libraries: libpython3.10.so' >&2\nexit 127\n")
    bad.chmod(0o755)
    with pytest.raises(CharfwError) as err:
        run(ws, settings(python=str(bad)))
    assert str(bad) in str(err.value) and "libpython3.10.so" in str(err.value)
    assert err.value.field == "train.python"


def test_resolve_python(tmp_path):
    sd = tmp_path / "sd"
    sd.mkdir()
    assert resolve_python(TrainSettings(), sd) == sys.executable
    venv_py = sd / "venv" / "bin" / "python"
    venv_py.parent.mkdir(parents=True)
    venv_py.write_text("")
    assert resolve_python(TrainSettings(), sd) == str(venv_py)
    other = tmp_path / "other-venv"
    (other / "Scripts").mkdir(parents=True)
    (other / "Scripts" / "python.exe").write_text("")
    assert resolve_python(TrainSettings(python="other-venv"), sd, root=tmp_path) == \
        str(other / "Scripts" / "python.exe")
    assert resolve_python(TrainSettings(python=sys.executable), sd) == sys.executable
    with pytest.raises(CharfwError, match="not a virtual environment"):
        resolve_python(TrainSettings(python=str(tmp_path)), sd)
    assert Path(resolve_python(TrainSettings(python="sh"), sd)).name == "sh"
