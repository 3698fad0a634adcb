"""The train stage with the sd-scripts backend (a fake train_network.py), and `charfw plan`."""

import json
import re

import pytest
from fake_sd_scripts import make_sd_scripts
from safetensors import safe_open
from wsutil import executed, replace_example_training, run_charfw, run_doit


@pytest.fixture
def sd_ws(workspace, tmp_path):
    """The example set to train with sd-scripts (a fake one) on a checkpoint file."""
    make_sd_scripts(tmp_path / "sd-scripts")
    (workspace / "models").mkdir()
    (workspace / "models/base.safetensors").write_bytes(b"stands for a checkpoint")
    text = (workspace / "charfw.yaml").read_text().replace("model: builtin:tiny-sd15", "model: models/base.safetensors")
    (workspace / "charfw.yaml").write_text(text)
    replace_example_training(workspace, f"trainer: sd-scripts\nsd_scripts: {tmp_path / 'sd-scripts'}\nattention: sdpa")
    with open(workspace / "charfw.yaml", "a") as f:  # the fake trains text-encoder modules only: FACE/BODY drop BASE
        f.write("merge:\n  weights: ALL\n")
        f.write("sample:\n  enabled: false\n")   # samples need a real checkpoint, not the stand-in file
    return workspace


@pytest.mark.slow
def test_fake_sd_scripts_output_flows_through_merge_and_compress(sd_ws):
    proc = run_doit(sd_ws, "compress:krnk")
    assert {"train:krnk", "merge:krnk", "compress:krnk"} <= executed(proc)
    argv = json.loads((sd_ws / "build/train/krnk.state/argv.json").read_text())["argv"]
    assert "--max_train_steps=1000" in argv and "--sdpa" in argv
    assert any(a.startswith("--dataset_config=") and a.endswith("build/datasets/krnk.toml") for a in argv)
    with safe_open(sd_ws / "dist/krnk.safetensors", "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight" in keys
    assert "sshs_model_hash" in meta
    # finished: nothing reruns, even when doit's database is lost
    assert executed(run_doit(sd_ws, "compress:krnk")) == set()
    for db in (sd_ws / "build").glob(".doit.db*"):
        db.unlink()
    assert "train:krnk" not in executed(run_doit(sd_ws, "compress:krnk"))


@pytest.mark.slow
def test_outfit_starts_from_the_face_lora(sd_ws):
    run_doit(sd_ws, "train:krnksf")
    argv = json.loads((sd_ws / "build/train/krnksf.state/argv.json").read_text())["argv"]
    assert f"--network_weights={sd_ws / 'build/train/krnk.safetensors'}" in argv
    assert "--output_name=krnksf-Lora3x3A50p-AdamW8-128-100-1200" in argv


@pytest.mark.slow
def test_training_setting_change_retrains_only_that_target_and_its_dependents(sd_ws):
    run_doit(sd_ws, "train")
    path = sd_ws / "characters/krnk/character.yaml"
    path.write_text(path.read_text() + "face:\n  train:\n    steps: 500\n")
    ran = executed(run_doit(sd_ws, "train"))
    assert ran == {"train:krnk", "train:krnksf"}
    # a merge-weight change never retrains
    path.write_text(path.read_text() + "  merge:\n    weights: ALL0.5\n")
    assert not {t for t in executed(run_doit(sd_ws)) if t.startswith("train:")}


@pytest.mark.slow
def test_failing_sd_scripts_fails_the_task_with_its_message(sd_ws, monkeypatch):
    monkeypatch.setenv("FAKE_SD_FAIL", "1")
    proc = run_doit(sd_ws, "train:krnk", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "TaskFailed - taskid:train:krnk" in out
    assert re.search(r"sd-scripts failed \(exit code [1-9]\d*\)", out) and "CUDA out of memory (fake)" in out
    assert not (sd_ws / "build/train/krnk.safetensors").exists()


@pytest.mark.slow
def test_plan_prints_the_commands(sd_ws):
    proc = run_charfw(sd_ws, "plan")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.index("images:krnk/face") < out.index("train:krnk") < out.index("merge:krnk")
    assert "train_network.py" in out and "--output_name=krnk-Lora3x3A50p-AdamW8-128-100-1000" in out
    assert "^" in out  # the .bat form with continuations
    run_doit(sd_ws, "compress:krnk", "charts:krnk")
    out = run_charfw(sd_ws, "plan", "krnk").stdout
    assert out.strip() == "nothing to do: everything is up to date"


def test_plan_embedded_and_unknown_target(workspace):
    out = run_charfw(workspace, "plan", "tyank").stdout
    assert "charfw train tyank -C" in out and "train:krnk" not in out
    assert "steps in all:" in out and "Ray cluster" not in out
    with open(workspace / "charfw.yaml", "a") as f:
        f.write("cluster:\n  address: head.example:6379\n")
    out = run_charfw(workspace, "plan", "tyank").stdout      # says where it will train, without connecting
    assert "steps in all on the Ray cluster at head.example:6379:" in out
    proc = run_charfw(workspace, "plan", "nobody")
    assert proc.returncode == 2 and "unknown target 'nobody'" in proc.stderr
