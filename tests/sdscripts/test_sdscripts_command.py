"""The sd-scripts command line equals the original LoRA.bat / docs/rules.md §6 invocation."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from charfw.config.models import TrainSettings
from charfw.families import SD15, SDXL
from charfw.request import TrainRequest
from charfw.rules.training import text_encoder_lr
from charfw.sdscripts.command import format_bat, format_shell, launch_command, logic_name, output_name, train_args

PATHS = dict(dataset_toml=Path("/ws/build/krnk/dataset.toml"), state_dir=Path("/ws/build/krnk/sd-scripts"),
             model="/models/Defmix-v2.0.safetensors", vae="/models/kl-f8-anime2.ckpt",
             log_dir=Path("/ws/build/logs"), output=Path("/ws/build/train/krnk.safetensors"))

# The docs/rules.md §6 line for the defaults (Lora3x3A50p-AdamW8, dim 128, lr 100e-6, 1000 steps), written
# out literally with the "…" filled in.
SPEC_LINE = (
    'accelerate launch train_network.py --network_module=networks.lora --network_args "conv_dim=128" '
    '"conv_alpha=64" --optimizer_type=AdamW8bit --learning_rate=100e-6 --text_encoder_lr=44e-6 '
    "--lr_scheduler=cosine_with_restarts --network_dim=128 --network_alpha=64 "
    "--dataset_config=/ws/build/krnk/dataset.toml --max_train_steps=1000 "
    "--output_dir=/ws/build/krnk/sd-scripts --output_name=krnk-Lora3x3A50p-AdamW8-128-100-1000 "
    "--pretrained_model_name_or_path=/models/Defmix-v2.0.safetensors --vae=/models/kl-f8-anime2.ckpt "
    "--clip_skip=2 --logging_dir=/ws/build/logs --log_prefix=krnk-Lora3x3A50p-AdamW8-128-100-1000 "
    "--xformers --save_model_as=safetensors --mixed_precision=fp16 --save_precision=fp16 "
    "--gradient_checkpointing --persistent_data_loader_workers --seed=31337"
)


def request(settings: TrainSettings, steps: int = 1000, name: str = "krnk", **over) -> TrainRequest:
    kw = dict(PATHS)
    kw.update(over)
    if kw.get("init_weights") is not None:
        kw["init_weights"] = Path(kw["init_weights"])
    kw.setdefault("family", SD15)
    return TrainRequest(name=name, settings=settings, steps=steps, **kw)


# What charfw adds after the seed's line so sd-scripts runs resume (README: resumability).
RESUME = ["--save_every_n_steps=200", "--save_state", "--save_last_n_steps_state=200"]


def args_for(settings: TrainSettings, steps: int = 1000, name: str = "krnk", **over) -> list[str]:
    return train_args(request(settings, steps, name, **over))


def test_default_is_the_spec_line():
    expected = shlex.split(SPEC_LINE)[3:] + RESUME
    assert args_for(TrainSettings()) == expected
    assert logic_name(TrainSettings()) == "Lora3x3A50p-AdamW8"


# --- the 16 logics of LoRA.bat ------------------------------------------------------------

NETWORK = {  # logic prefix + alpha code -> (settings, network part of the seed command, dim, alpha)
    "Lora3x3A50p": (dict(network="c3lier", alpha="half"),
                    '--network_module=networks.lora --network_args "conv_dim=128" "conv_alpha=64"', "128", "64"),
    "Lora3x3A1": (dict(network="c3lier", alpha="one"),
                  '--network_module=networks.lora --network_args "conv_dim=128" "conv_alpha=1"', "128", "1"),
    "Lora1x1A50p": (dict(network="lora", alpha="half"), "--network_module=networks.lora", "128", "64"),
    "Lora1x1A1": (dict(network="lora", alpha="one"), "--network_module=networks.lora", "128", "1"),
    "LoconA50p": (dict(network="locon", alpha="half"),
                  '--network_module=lycoris.kohya --network_args "conv_dim=128" "conv_alpha=64" "algo=lora"',
                  "128", "64"),
    "LoconA1": (dict(network="locon", alpha="one"),
                '--network_module=lycoris.kohya --network_args "conv_dim=128" "conv_alpha=1" "algo=lora"',
                "128", "1"),
    "LohaA50p": (dict(network="loha", alpha="half"),
                 '--network_module=lycoris.kohya --network_args "conv_dim=32" "conv_alpha=16" "algo=loha"',
                 "32", "16"),
    "LohaA1": (dict(network="loha", alpha="one"),
               '--network_module=lycoris.kohya --network_args "conv_dim=32" "conv_alpha=1" "algo=loha"',
               "32", "1"),
}
OPTIMIZER = {
    "AdamW8": (dict(optimizer="adamw8bit"),
               "--optimizer_type=AdamW8bit --learning_rate=100e-6 --text_encoder_lr=44e-6 "
               "--lr_scheduler=cosine_with_restarts"),
    "AdaFactor": (dict(optimizer="adafactor"),
                  '--optimizer_type=Adafactor --optimizer_args "relative_step=True" "scale_parameter=True" '
                  '"warmup_init=False" --lr_scheduler=adafactor'),
}
LOGICS = [f"{n}-{o}" for n in NETWORK for o in OPTIMIZER]


@pytest.mark.parametrize("logic", LOGICS)
def test_seed_logic_command(logic):
    net, opt = logic.split("-")
    net_settings, net_part, dim, alpha = NETWORK[net]
    opt_settings, opt_part = OPTIMIZER[opt]
    settings = TrainSettings(**net_settings, **opt_settings)
    assert logic_name(settings) == logic
    name = f"krnk-{logic}-{dim}-100-1000"
    assert output_name("krnk", settings, 1000) == name
    expected = (
        f"{net_part} {opt_part} --network_dim={dim} --network_alpha={alpha} "
        f"--dataset_config=/ws/build/krnk/dataset.toml --max_train_steps=1000 "
        f"--output_dir=/ws/build/krnk/sd-scripts --output_name={name} "
        f"--pretrained_model_name_or_path=/models/Defmix-v2.0.safetensors --vae=/models/kl-f8-anime2.ckpt "
        f"--clip_skip=2 --logging_dir=/ws/build/logs --log_prefix={name} --xformers "
        f"--save_model_as=safetensors --mixed_precision=fp16 --save_precision=fp16 "
        f"--gradient_checkpointing --persistent_data_loader_workers --seed=31337"
    )
    assert args_for(settings) == shlex.split(expected) + RESUME


def test_seed_example_names():
    # call LoRA Lora3x3A50p-AdamW8 128 100 1000 ... -> krnk-Lora3x3A50p-AdamW8-128-100-1200 at 1200 steps
    s = TrainSettings(network="c3lier", alpha="half", optimizer="adamw8bit", dim=128, lr=100e-6)
    assert output_name("krnk", s, 1200) == "krnk-Lora3x3A50p-AdamW8-128-100-1200"
    loha = TrainSettings(network="loha", dim=32)
    assert output_name("krnk", loha, 1000) == "krnk-LohaA50p-AdamW8-32-100-1000"


def test_extended_logic_names():
    assert logic_name(TrainSettings(network="lokr")) == "LokrA50p-AdamW8"
    assert logic_name(TrainSettings(optimizer="adamw")) == "Lora3x3A50p-AdamW"
    assert logic_name(TrainSettings(alpha=16)) == "Lora3x3A16-AdamW8"
    assert logic_name(TrainSettings(alpha=1.0)) == "Lora3x3A1-AdamW8"
    assert logic_name(TrainSettings(alpha=0.5, network="lora")) == "Lora1x1A0p5-AdamW8"
    assert output_name("k", TrainSettings(lr=2.5e-6), 10) == "k-Lora3x3A50p-AdamW8-128-2p5-10"
    assert output_name("k", TrainSettings(lr=3e-5, dim=64), 10) == "k-Lora3x3A50p-AdamW8-64-30-10"


# --- numbers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("lr, te", [
    (100e-6, "44"), (1e-4, "44"), (50e-6, "22"), (1e-6, "0"), (2e-4, "88"), (3e-5, "13"), (99e-6, "43"),
    (10e-6, "4"), (25e-6, "11"),
])
def test_text_encoder_lr_rule(lr, te):
    args = args_for(TrainSettings(lr=lr))
    assert f"--text_encoder_lr={te}e-6" in args
    assert text_encoder_lr(lr, None) == float(f"{te}e-6")


def test_explicit_text_encoder_lr_and_lr_notation():
    args = args_for(TrainSettings(lr=3e-5, text_encoder_lr=1e-5))
    assert "--learning_rate=30e-6" in args and "--text_encoder_lr=10e-6" in args
    assert "--learning_rate=2.5e-6" in args_for(TrainSettings(lr=2.5e-6))


def test_alpha_forms():
    assert "--network_alpha=64" in args_for(TrainSettings(alpha="half"))
    assert "--network_alpha=1" in args_for(TrainSettings(alpha="one"))
    a = args_for(TrainSettings(alpha=8, dim=16))
    assert "--network_alpha=8" in a and "conv_alpha=8" in a and "conv_dim=16" in a
    assert "--network_alpha=2.5" in args_for(TrainSettings(dim=5, network="lora"))


def test_lycoris_module_and_algo():
    for network, algo in [("locon", "lora"), ("loha", "loha"), ("lokr", "lokr")]:
        a = args_for(TrainSettings(network=network))
        assert a[0] == "--network_module=lycoris.kohya"
        i = a.index("--network_args")
        assert a[i + 1].startswith("conv_dim=") and a[i + 2].startswith("conv_alpha=")
        assert a[i + 3] == f"algo={algo}"
    assert "--network_dim=128" in args_for(TrainSettings(network="lokr"))
    assert "--network_dim=64" in args_for(TrainSettings(network="loha", dim=64))


def test_adafactor():
    a = args_for(TrainSettings(optimizer="adafactor", restarts=3, warmup_steps=100))
    i = a.index("--optimizer_type=Adafactor")
    assert a[i + 1:i + 6] == ["--optimizer_args", "relative_step=True", "scale_parameter=True",
                              "warmup_init=False", "--lr_scheduler=adafactor"]
    assert not any(x.startswith(("--learning_rate", "--text_encoder_lr", "--lr_scheduler_num_cycles",
                                 "--lr_warmup_steps")) for x in a)
    assert "--optimizer_type=AdamW" in args_for(TrainSettings(optimizer="adamw"))


def test_optional_switches():
    s = TrainSettings(restarts=3, warmup_steps=50, noise_offset=0.05, min_snr_gamma=5, attention="sdpa",
                      gradient_checkpointing=False, mixed_precision="bf16", save_precision="float",
                      scheduler="cosine", clip_skip=1, seed=7)
    a = args_for(s, vae=None, init_weights="/ws/face.safetensors")
    i = a.index("--lr_scheduler=cosine")
    assert a[i + 1:i + 3] == ["--lr_scheduler_num_cycles=3", "--lr_warmup_steps=50"]
    assert not any(x.startswith("--vae") for x in a)
    assert "--xformers" not in a and "--sdpa" in a
    assert "--gradient_checkpointing" not in a
    assert a.index("--clip_skip=1") + 1 == a.index("--network_weights=/ws/face.safetensors")
    assert a.index("--network_weights=/ws/face.safetensors") + 1 == a.index("--logging_dir=/ws/build/logs")
    assert "--mixed_precision=bf16" in a and "--save_precision=float" in a
    assert a[-6:-3] == ["--seed=7", "--noise_offset=0.05", "--min_snr_gamma=5"] and a[-3:] == RESUME
    assert not any("cache_latents" in x for x in a)  # incompatible with the dataset's color_aug
    cached = args_for(s.model_copy(update={"color_aug": False}))
    assert cached[cached.index("--persistent_data_loader_workers") - 1] == "--cache_latents"
    none = args_for(TrainSettings(attention="none"))
    assert "--xformers" not in none and "--sdpa" not in none


def test_extra_args_pass_through_and_override():
    base = args_for(TrainSettings())
    extra = ["--max_grad_norm=0", "--caption_extension", ".txt"]
    assert args_for(TrainSettings(extra_args=extra)) == base + extra
    over = ["--seed=1", "--network_args", "conv_dim=64", "conv_alpha=32", "--xformers"]
    a = args_for(TrainSettings(extra_args=over))
    assert a[-len(over):] == over
    assert "--seed=31337" not in a and "conv_dim=128" not in a
    assert a.count("--network_args") == 1 and a.count("--xformers") == 1
    assert a[:-len(over)] == [x for x in base if x not in
                              ("--seed=31337", "--network_args", "conv_dim=128", "conv_alpha=64", "--xformers")]


def test_launch_command():
    cmd = launch_command("/venv/bin/python", "/opt/sd-scripts", ["--a=1"], family=SD15)
    assert cmd == ["/venv/bin/python", "-m", "accelerate.commands.launch", "--num_cpu_threads_per_process=1",
                   "/opt/sd-scripts/train_network.py", "--a=1"]
    assert launch_command("py", "/sd", ["--b"], launcher="python", family=SD15) == ["py", "/sd/train_network.py", "--b"]
    with pytest.raises(ValueError):
        launch_command("py", "/sd", [], launcher="nope", family=SD15)


def test_format_shell_round_trips():
    args = args_for(TrainSettings(extra_args=["--x=it's", "a b", "$HOME", "ü*", ""]),
                    model="/my models/Defmix v2.safetensors")
    cmd = launch_command("/venv/bin/python", "/opt/sd scripts", args, family=SD15)
    line = format_shell(cmd)
    assert "\n" not in line
    assert shlex.split(line) == cmd


def test_format_bat_form():
    s = TrainSettings()
    args = train_args(request(s, 1200, dataset_toml=Path(r"..\LoRAInput\4_krnk\4_krnk.toml"),
                              state_dir=Path(r"..\LoRAOutput\krnk"),
                              model=r"C:\SD Models\Defmix-v2.0.safetensors", vae=r"..\LoRAInput\kl-f8-anime2.ckpt",
                              log_dir=Path(r"..\LoRALog"))) + ["--caption_prefix=100%"]
    text = format_bat(launch_command("python", "/sd", args, family=SD15))
    lines = text.split("\n")
    assert lines[0] == "python -m accelerate.commands.launch --num_cpu_threads_per_process=1 /sd/train_network.py^"
    assert lines[1] == " --network_module=networks.lora^"
    assert lines[2] == ' --network_args "conv_dim=128" "conv_alpha=64"^'
    assert lines[3] == " --optimizer_type=AdamW8bit^"
    assert r' --dataset_config=..\LoRAInput\4_krnk\4_krnk.toml^' in lines
    assert r' --pretrained_model_name_or_path="C:\SD Models\Defmix-v2.0.safetensors"^' in lines
    assert " --output_name=krnk-Lora3x3A50p-AdamW8-128-100-1200^" in lines
    assert lines[-1] == ' --caption_prefix="100%%"'
    assert all(line.endswith("^") for line in lines[:-1])
    assert all(line.startswith(" --") for line in lines[1:])
    assert len(lines) == 1 + len([a for a in args if a.startswith("--")])
    crlf = format_bat(["a.py", "--x"], newline="\r\n")
    assert crlf == "a.py^\r\n --x"


def test_format_bat_quoting_edge_cases():
    text = format_bat(["python", "t.py", "--output_dir=C:\\out dir\\", "--note=say \"hi\"", "--flag"])
    assert text.split("\n")[1] == ' --output_dir="C:\\out dir\\\\"^'
    assert text.split("\n")[2] == ' --note="say \\"hi\\""^'
    assert format_bat(["python", "t.py"]) == "python t.py"


def test_sdxl_is_the_spec_line_for_sdxl_train_network():
    """SDXL: no --clip_skip, the VAE kept in fp32, U-Net only with cached text-encoder outputs (the
    SDXL default), all in the seed line's order; the script is sdxl_train_network.py."""
    base = shlex.split(SPEC_LINE)[3:]
    gc = base.index("--gradient_checkpointing") + 1
    expected = [a for a in base[:gc] if a != "--clip_skip=2"] + [
        "--network_train_unet_only", "--cache_text_encoder_outputs", "--no_half_vae"] + base[gc:] + RESUME
    assert args_for(TrainSettings(), family=SDXL) == expected
    with_te = args_for(TrainSettings(train_text_encoder=True), family=SDXL)
    assert "--network_train_unet_only" not in with_te and "--cache_text_encoder_outputs" not in with_te
    assert "--no_half_vae" in with_te
    sd15_unet_only = args_for(TrainSettings(train_text_encoder=False))
    assert "--network_train_unet_only" in sd15_unet_only and "--cache_text_encoder_outputs" not in sd15_unet_only
    assert launch_command("py", "/sd", ["--b"], launcher="python", family=SDXL) == [
        "py", "/sd/sdxl_train_network.py", "--b"]
