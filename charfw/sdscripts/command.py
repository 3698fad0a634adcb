"""The kohya sd-scripts command line, as the original LoRA.bat built it (docs/rules.md §6).

Pure functions: no file system, no processes. Tests and `charfw plan` call them directly.

Logic names
-----------
The seed's LoRA.bat takes a *logic* ``(Lora3x3|Lora1x1|Locon|Loha)(A1|A50p)-(AdamW8|AdaFactor)``
(16 combinations). `logic_name` produces exactly those for the seed's settings and extends the
scheme for what the seed did not have:

* network ``lokr`` -> ``Lokr`` (LyCORIS ``algo=lokr``);
* optimizer ``adamw`` (plain, not 8-bit) -> ``AdamW``;
* a numeric alpha other than 1 -> ``A<value>`` with ``.`` written as ``p`` (``A16``, ``A0p5``);
  alpha ``1.0`` is ``A1`` like ``one``.

Argument order and rules
------------------------
`train_args` emits the options in the order of the docs/rules.md §6 line. Differences from that line
only appear for non-default settings:

* Adafactor: ``--optimizer_type=Adafactor --optimizer_args relative_step=True
  scale_parameter=True warmup_init=False`` and ``--lr_scheduler=adafactor``; no
  ``--learning_rate`` / ``--text_encoder_lr``. With ``relative_step=True`` sd-scripts
  computes the step size itself, drops per-group (U-Net / text encoder) learning rates and
  switches to its ``adafactor`` schedule whatever ``--lr_scheduler`` says; we pass that
  schedule explicitly so the command says what happens. Warm-up and restarts do not apply.
* ``--lr_scheduler_num_cycles`` (restarts != 1) and ``--lr_warmup_steps`` (warm-up > 0)
  follow ``--lr_scheduler``.
* ``--noise_offset`` / ``--min_snr_gamma`` (when set) follow ``--seed``.
* Latents: sd-scripts refuses to cache latents with colour augmentation. With
  ``color_aug: false`` latents are cached as the embedded trainer caches them
  (``--cache_latents``, or ``--cache_latents_to_disk`` for ``cache_latents: disk``), after
  ``--gradient_checkpointing``. With colour augmentation on (the seed's default) nothing is
  cached, unless ``extra_args`` asks for it: the dataset config then says ``color_aug = false``
  (charfw.rules.training.dataset_color_aug) and the runner says so.
* Resumability: ``--save_every_n_steps=<save_every_n_steps> --save_state
  --save_last_n_steps_state=<the same>`` after ``--seed``, so sd-scripts keeps its newest
  training state in the output folder; the runner adds ``--resume=<that state>`` when one is
  there (charfw.sdscripts.runner).
* ``extra_args`` come last, unchanged. When an extra argument names an option the generated
  command already has (same ``--name``, compared before any ``=``), the generated option
  (with its values, e.g. all of ``--network_args``) is dropped and the extra one wins.
  Only exact names are compared: ``--sdpa`` in extra_args does not remove ``--xformers``
  (set ``attention`` instead).

Numbers use the seed's notation: learning rates in units of 1e-6 (``100e-6``), the
text-encoder rate ``floor(lr_in_1e-6 * 44 / 100)`` (100 -> 44, 50 -> 22, 1 -> 0, i.e. the
text encoder is then not trained), integral floats without ``.0``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

from charfw.families import Family
from charfw.recipe import Recipe, network_spec
from charfw.request import TrainRequest
from charfw.rules.training import decimal_text, in_e6, number_text

if TYPE_CHECKING:
    from charfw.config.models import TrainSettings

NETWORK_LOGIC = {"c3lier": "Lora3x3", "lora": "Lora1x1", "locon": "Locon", "loha": "Loha", "lokr": "Lokr"}
LYCORIS_ALGO = {"locon": "lora", "loha": "loha", "lokr": "lokr"}
OPTIMIZER_LOGIC = {"adamw8bit": "AdamW8", "adamw": "AdamW", "adafactor": "AdaFactor"}
OPTIMIZER_TYPE = {"adamw8bit": "AdamW8bit", "adamw": "AdamW", "adafactor": "Adafactor"}
ATTENTION_SWITCH = {"xformers": "--xformers", "sdpa": "--sdpa", "none": None}

Launcher = Literal["accelerate", "python"]


# --------------------------------------------------------------------------- numbers

def _lr_text(value: float) -> str:
    """The seed's notation for a learning rate: ``100e-6``."""
    return f"{decimal_text(in_e6(value))}e-6"


def _name_number(text: str) -> str:
    """A number for a file name: ``.`` -> ``p`` so nothing mistakes it for an extension."""
    return text.replace(".", "p")


def _alpha_code(settings: TrainSettings) -> str:
    if settings.alpha == "half":
        return "A50p"
    return "A" + _name_number(number_text(network_spec(settings).alpha))


def logic_name(settings: TrainSettings) -> str:
    """The seed's logic name, e.g. ``Lora3x3A50p-AdamW8`` (see the module doc for extensions)."""
    return f"{NETWORK_LOGIC[settings.network]}{_alpha_code(settings)}-{OPTIMIZER_LOGIC[settings.optimizer]}"


def output_name(name: str, settings: TrainSettings, steps: int) -> str:
    """``<name>-<logic>-<dim>-<lr in 1e-6>-<steps>``, e.g. ``krnk-Lora3x3A50p-AdamW8-128-100-1000``.

    The learning rate is an integer in 1e-6 as in the seed; a fractional one keeps its
    decimals with ``p`` for the point (2.5e-6 -> ``2p5``).
    """
    lr = _name_number(decimal_text(in_e6(settings.lr)))
    return f"{name}-{logic_name(settings)}-{network_spec(settings).dim}-{lr}-{steps}"


# --------------------------------------------------------------------------- arguments

def _option_name(token: str) -> str | None:
    return token.split("=", 1)[0] if token.startswith("--") and len(token) > 2 else None


def train_args(req: TrainRequest) -> list[str]:
    """The arguments to ``train_network.py`` for `req`, in the order of docs/rules.md §6, then ``extra_args``.

    The family decides the script and what differs between them (charfw.families): SDXL's
    ``sdxl_train_network.py`` gets no ``--clip_skip`` (SDXL always uses the penultimate layers),
    ``--no_half_vae``, and, when the text encoders are not trained (SDXL's default),
    ``--network_train_unet_only --cache_text_encoder_outputs`` after ``--gradient_checkpointing``
    (SD1.5's train_network.py has only the first).

    sd-scripts writes into ``req.state_dir`` under `output_name`; paths are passed through
    as the request has them (the runner makes them absolute).
    """
    s, r = req.settings, req.recipe
    out = output_name(req.name, s, req.steps)
    groups = [*_network_and_optimizer(r), *_io(req, r, out), *_precision_and_memory(req, r),
              *_noise_and_loss(r), *_saving(s), *_validation(r)]
    overridden = {n for n in map(_option_name, s.extra_args) if n}
    args = [tok for group in groups if _option_name(group[0]) not in overridden for tok in group]
    return args + list(s.extra_args)


Groups = list[list[str]]   # each option with its values, so extra_args can replace one whole


def _network_and_optimizer(r: Recipe) -> Groups:
    """The network, the optimizer and the learning-rate schedule (the seed's order)."""
    net = r.network
    groups: Groups = [[f"--network_module={net.module}"]]
    network_args = {**net.args, **({"algo": LYCORIS_ALGO[net.algo]} if net.algo in LYCORIS_ALGO else {})}
    if network_args:   # in the seed's order: conv_dim, conv_alpha, algo, then LoRA+
        groups.append(["--network_args", *(f"{k}={v}" for k, v in network_args.items())])
    groups.append([f"--optimizer_type={OPTIMIZER_TYPE[r.optimizer]}"])
    if r.optimizer_args:
        groups.append(["--optimizer_args", *(f"{k}={v}" for k, v in r.optimizer_args)])
    if r.own_schedule:
        groups.append([f"--lr_scheduler={r.scheduler}"])
    else:
        groups += [[f"--learning_rate={_lr_text(r.lr)}"], [f"--text_encoder_lr={_lr_text(r.text_encoder_lr)}"],
                   [f"--lr_scheduler={r.scheduler}"]]
        if r.restarts != 1:
            groups.append([f"--lr_scheduler_num_cycles={r.restarts}"])
        if r.warmup_steps:
            groups.append([f"--lr_warmup_steps={r.warmup_steps}"])
    return groups + [[f"--network_dim={net.dim}"], [f"--network_alpha={number_text(net.alpha)}"]]


def _io(req: TrainRequest, r: Recipe, out: str) -> Groups:
    """Data, steps, where it writes, the model files, clip skip, the initial weights, the logs."""
    groups: Groups = [[f"--dataset_config={req.dataset_toml}"], [f"--max_train_steps={r.steps}"],
                      [f"--output_dir={req.state_dir}"], [f"--output_name={out}"],
                      [f"--pretrained_model_name_or_path={req.model}"]]
    if req.vae:
        groups.append([f"--vae={req.vae}"])
    if r.clip_skip is not None:  # sdxl_train_network.py warns that clip_skip "will be unexpected"
        groups.append([f"--clip_skip={r.clip_skip}"])
    if req.init_weights:
        groups.append([f"--network_weights={req.init_weights}"])
    if req.log_dir is not None:
        groups += [[f"--logging_dir={req.log_dir}"], [f"--log_prefix={out}"]]
    return groups


def _precision_and_memory(req: TrainRequest, r: Recipe) -> Groups:
    """Attention, precision, checkpointing, frozen text encoders, the family's flags, latent caching."""
    s = req.settings
    groups: Groups = [[ATTENTION_SWITCH[s.attention]]] if ATTENTION_SWITCH[s.attention] else []
    groups += [["--save_model_as=safetensors"], [f"--mixed_precision={s.mixed_precision}"],
               [f"--save_precision={s.save_precision}"]]
    if s.gradient_checkpointing:
        groups.append(["--gradient_checkpointing"])
    if not r.train_text_encoder:
        groups.append(["--network_train_unet_only"])
        if r.family.sd_scripts_caches_te_outputs:  # only sdxl_train_network.py has the option
            groups.append(["--cache_text_encoder_outputs"])
    groups += [[flag] for flag in r.family.sd_scripts_flags]
    if not s.color_aug:
        groups.append(["--cache_latents_to_disk" if s.cache_latents == "disk" else "--cache_latents"])
    return groups + [["--persistent_data_loader_workers"], [f"--seed={r.seed}"]]


def _noise_and_loss(r: Recipe) -> Groups:
    """The noise and loss options, where set (at their defaults sd-scripts' own defaults apply)."""
    groups: Groups = []
    if r.noise_offset is not None:
        groups.append([f"--noise_offset={number_text(r.noise_offset)}"])
    if r.min_snr_gamma is not None:
        groups.append([f"--min_snr_gamma={number_text(r.min_snr_gamma)}"])
    if r.masked_loss:
        groups.append(["--masked_loss"])
    if r.loss_type != "l2":
        groups += [[f"--loss_type={r.loss_type}"], [f"--huber_c={number_text(r.huber_c)}"],
                   [f"--huber_schedule={r.huber_schedule}"], [f"--huber_scale={number_text(r.huber_scale)}"]]
    if r.debiased_estimation:
        groups.append(["--debiased_estimation_loss"])
    if r.ip_noise_gamma is not None:
        groups.append([f"--ip_noise_gamma={number_text(r.ip_noise_gamma)}"])
    if r.scale_weight_norms is not None:
        groups.append([f"--scale_weight_norms={number_text(r.scale_weight_norms)}"])
    if r.multires_noise_iterations is not None:
        groups += [[f"--multires_noise_iterations={r.multires_noise_iterations}"],
                   [f"--multires_noise_discount={number_text(r.multires_noise_discount)}"]]
    if r.prior_loss_weight != 1.0:
        groups.append([f"--prior_loss_weight={number_text(r.prior_loss_weight)}"])
    return groups


def _validation(r: Recipe) -> Groups:
    """How often sd-scripts measures the held-out images (validation_split and its seed are in the TOML)."""
    return [[f"--validate_every_n_steps={r.validation_every}"]] if r.validation_split else []


def _saving(s: TrainSettings) -> Groups:
    """Resumable state every save_every_n_steps steps (sd-scripts resumes with --resume)."""
    return [[f"--save_every_n_steps={s.save_every_n_steps}"], ["--save_state"],
            [f"--save_last_n_steps_state={s.save_every_n_steps}"]]


def launch_command(python: str | Path, sd_scripts_dir: str | Path, args: Sequence[str],
                   *, family: Family, launcher: Launcher = "accelerate") -> list[str]:
    """The full command line running ``train_network.py`` (``sdxl_train_network.py``) with `args`.

    ``launcher="accelerate"`` (default): ``<python> -m accelerate.commands.launch
    --num_cpu_threads_per_process=1 <sd_scripts>/train_network.py ...``. Running the
    launcher as a module of the configured interpreter rather than the ``accelerate``
    console script means the same Python that passed the import check runs the training:
    no dependence on PATH, on an activated venv, or on a launcher .exe that breaks when a
    venv is moved. ``launcher="python"`` runs the script directly (single process; what
    accelerate does on one device anyway, minus its config handling).
    The script is given by path, so its folder is on ``sys.path`` and sd-scripts finds
    its ``library`` / ``networks`` packages whatever the working directory.
    """
    script = str(Path(sd_scripts_dir) / family.sd_scripts_script)
    if launcher == "accelerate":
        prefix = [str(python), "-m", "accelerate.commands.launch", "--num_cpu_threads_per_process=1", script]
    elif launcher == "python":
        prefix = [str(python), script]
    else:
        raise ValueError(f"unknown launcher {launcher!r}")
    return prefix + list(args)


# --------------------------------------------------------------------------- formatting

def format_shell(cmd: Sequence[str]) -> str:
    """One copy-pasteable POSIX shell line; `shlex.split` gives `cmd` back."""
    return shlex.join(cmd)


_BAT_SAFE = re.compile(r"[A-Za-z0-9_\-.:\\/=+@,~#$]+")


def _bat_quote(token: str, force: bool = False) -> str:
    """Quote for a .bat line: ``%`` doubled; double quotes when needed (or forced).

    Inside quotes the C runtime's rules apply: backslashes before a quote (and at the very
    end) are doubled, embedded quotes become ``\\"``.
    """
    token = token.replace("%", "%%")
    if not force and _BAT_SAFE.fullmatch(token):
        return token
    body = re.sub(r'(\\*)"', lambda m: m.group(1) * 2 + '\\"', token)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return f'"{body}"'


def _bat_token(token: str, force: bool = False) -> str:
    if token.startswith("--") and "=" in token:
        name, value = token.split("=", 1)
        return f"{name}={_bat_quote(value)}" if value else token
    return _bat_quote(token, force)


def format_bat(cmd: Sequence[str], *, newline: str = "\n") -> str:
    """A Windows batch command in LoRA.bat's layout: one option per line, ``^`` continuations.

    The launcher and script share the first line; every ``--option`` starts a new line with
    its values (quoted, like the seed's ``"conv_dim=128"``). ``--name=value`` quotes only the
    value and only when needed (spaces, shell characters). ``%`` is doubled as batch files
    require. Write the result with CRLF line ends (``newline="\\r\\n"``) for cmd.exe.
    """
    cmd = list(cmd)
    split = next((i + 1 for i, t in enumerate(cmd) if t.lower().endswith(".py")), None)
    if split is None:
        split = next((i for i, t in enumerate(cmd) if i and t.startswith("--")), len(cmd))
    lines = [[_bat_token(t) for t in cmd[:split]]]
    for token in cmd[split:]:
        if token.startswith("--"):
            lines.append([_bat_token(token)])
        else:
            lines[-1].append(_bat_token(token, force=len(lines) > 1))
    text = [" ".join(parts) for parts in lines]
    text = text[:1] + [" " + line for line in text[1:]]
    return newline.join([line + "^" for line in text[:-1]] + text[-1:])
