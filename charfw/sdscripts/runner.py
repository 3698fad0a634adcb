"""Run kohya sd-scripts' ``train_network.py`` for one target and collect the LoRA it writes.

Before anything long starts, the configured install is checked: the ``train.sd_scripts``
folder holds ``train_network.py``, and the Python that will run it can import what the
command needs (``accelerate``, ``library.train_util``, the network module, ``xformers``
when ``--xformers`` is used). ``library.train_util`` is the real check: it imports torch,
diffusers and transformers as training will, so a wrong interpreter fails here in seconds
with a clear message instead of minutes later inside accelerate. When ``bitsandbytes`` is
missing, AdamW 8-bit falls back to plain AdamW (docs/rules.md §6) with a note.

sd-scripts runs with the working directory = the dataset TOML's folder, because the TOML's
``image_dir`` entries are relative to it and sd-scripts resolves them against the working
directory. Every other path is made absolute; the script is given by absolute path so its
own folder is on ``sys.path`` for ``from library import ...``.

Its output is streamed live to stdout and saved to ``<work_dir>/<output name>.log``.
"""

from __future__ import annotations

import codecs
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from charfw import interrupt
from charfw.errors import CharfwError
from charfw.families import Family
from charfw.fsutil import atomic_path
from charfw.interrupt import Interrupted
from charfw.request import TrainRequest
from charfw.rules.modelref import is_builtin
from charfw.rules.training import extra_caches_latents
from charfw.sdscripts.command import Launcher, _option_name, launch_command, output_name, train_args

if TYPE_CHECKING:
    from charfw.config.models import TrainSettings

TAIL_LINES = 20
_TAIL_CHARS = 64 * 1024
_PROBE_MARK = "@@charfw-probe@@"
_PROBE = f"""
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
result = {{}}
for name in sys.argv[2:]:
    try:
        importlib.import_module(name)
        result[name] = None
    except BaseException as exc:
        result[name] = (type(exc).__name__ + ": " + str(exc)).strip()
print()
print({_PROBE_MARK!r} + json.dumps(result))
"""
PROBE_TIMEOUT = 600
CHECKPOINT_SUFFIXES = {".safetensors", ".ckpt", ".pt", ".pth", ".bin"}


# --------------------------------------------------------------------------- locating

def _abs(path: str | Path, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def sd_scripts_dir(settings: TrainSettings, family: Family, *, root: Path | None = None) -> Path:
    """The configured sd-scripts checkout (relative paths from `root`, default the cwd)."""
    root = Path.cwd() if root is None else Path(root)
    if not settings.sd_scripts:
        raise CharfwError("the sd-scripts trainer needs the path of a kohya sd-scripts checkout "
                          "(git clone https://github.com/kohya-ss/sd-scripts)", field="train.sd_scripts")
    folder = _abs(settings.sd_scripts, root)
    if not folder.is_dir():
        raise CharfwError(f"sd-scripts folder {folder} does not exist", field="train.sd_scripts")
    script = family.sd_scripts_script
    if not (folder / script).is_file():
        raise CharfwError(f"no {script} in {folder}: this is not a kohya sd-scripts checkout",
                          field="train.sd_scripts")
    return folder.absolute()


def _venv_python(folder: Path) -> Path | None:
    for candidate in (folder / "bin" / "python", folder / "bin" / "python3", folder / "Scripts" / "python.exe"):
        if candidate.is_file():
            return candidate
    return None


def resolve_python(settings: TrainSettings, sd_scripts: Path, *, root: Path | None = None) -> str:
    """The interpreter that runs sd-scripts.

    ``train.python`` may be an executable, a command on PATH (``python3``) or a venv folder.
    Unset: a ``venv`` / ``.venv`` inside the sd-scripts folder if there is one, else the
    interpreter running charfw.
    """
    root = Path.cwd() if root is None else Path(root)
    configured = settings.python
    if configured:
        if os.sep not in configured and (os.altsep is None or os.altsep not in configured) \
                and not _abs(configured, root).exists():
            found = shutil.which(configured)
            if found:
                return found
            raise CharfwError(f"python {configured!r} is not a file and not a command on PATH",
                              field="train.python")
        path = _abs(configured, root).absolute()
        if path.is_dir():
            venv = _venv_python(path)
            if venv is None:
                raise CharfwError(f"{path} is a folder but not a virtual environment "
                                  "(no bin/python or Scripts/python.exe)", field="train.python")
            return str(venv)
        if not path.is_file():
            raise CharfwError(f"python {path} does not exist", field="train.python")
        return str(path)
    for name in ("venv", ".venv"):
        venv = _venv_python(sd_scripts / name)
        if venv is not None:
            return str(venv.absolute())
    return sys.executable


# --------------------------------------------------------------------------- checking

def _probe(python: str, sd_scripts: Path, modules: list[str]) -> dict[str, str | None]:
    """Try importing `modules` with `python` in the sd-scripts folder; name -> error or None."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    try:
        proc = subprocess.run([python, "-c", _PROBE, str(sd_scripts), *modules], cwd=sd_scripts,
                              capture_output=True, text=True, encoding="utf-8", errors="replace",
                              env=env, timeout=PROBE_TIMEOUT)
    except OSError as exc:
        raise CharfwError(f"cannot run python {python}: {exc}", field="train.python") from None
    except subprocess.TimeoutExpired:
        raise CharfwError(f"python {python} took more than {PROBE_TIMEOUT} s to import "
                          f"{', '.join(modules)}", field="train.python") from None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_PROBE_MARK):
            return json.loads(line[len(_PROBE_MARK):])
    detail = _last_lines(proc.stderr or proc.stdout, 8)
    raise CharfwError(f"python {python} could not run the import check "
                      f"(exit code {proc.returncode}):\n{detail}", field="train.python")


def _check_imports(python: str, sd_scripts: Path, args: list[str], launcher: Launcher,
                   want_bnb: bool) -> bool:
    """Raise a CharfwError for anything the command needs that `python` cannot import.

    Returns whether bitsandbytes (AdamW 8-bit) is available, when `want_bnb`.
    """
    network_module = next((a.split("=", 1)[1] for a in args if a.startswith("--network_module=")), None)
    required: list[tuple[str, str, str]] = []  # module, field, advice
    if launcher == "accelerate":
        required.append(("accelerate", "train.python", "sd-scripts is launched with accelerate"))
    required.append(("library.train_util", "train.python",
                     f"install sd-scripts' requirements into this python "
                     f"(cd {sd_scripts} && {python} -m pip install -r requirements.txt), "
                     "or set train.python to the python / venv that has them"))
    if network_module:
        advice = ("install LyCORIS into this python (pip install lycoris-lora) or use train.network: c3lier / lora"
                  if network_module.startswith("lycoris") else "the network module must be importable")
        required.append((network_module, "train.network", advice))
    if "--xformers" in args:
        required.append(("xformers", "train.attention",
                         "install xformers, or set train.attention: sdpa (or none)"))
    modules = [m for m, _, _ in required] + (["bitsandbytes"] if want_bnb else [])
    result = _probe(python, sd_scripts, modules)
    failed = [(m, field, advice) for m, field, advice in required if result.get(m)]
    if failed:
        lines = [f"python {python} cannot run sd-scripts in {sd_scripts}:"]
        lines += [f"  import {m} failed: {result[m]}\n    -> {advice}" for m, _, advice in failed]
        raise CharfwError("\n".join(lines), field=failed[0][1])
    return want_bnb and not result.get("bitsandbytes")


# --------------------------------------------------------------------------- running

def _last_lines(text: str, n: int = TAIL_LINES) -> str:
    """The last `n` non-empty lines; of a line rewritten with ``\\r`` (progress bars) the final state."""
    lines = [line.split("\r")[-1].rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    lines = [line for line in lines if line.strip()]
    return "\n".join(lines[-n:])


def _echo(text: str) -> None:
    """Write to stdout now; characters the console cannot show (sd-scripts logs Japanese) become '?'."""
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:
        encoding = getattr(sys.stdout, "encoding", None) or "ascii"
        sys.stdout.write(text.encode(encoding, errors="replace").decode(encoding, errors="replace"))
    sys.stdout.flush()


def _stream(cmd: list[str], cwd: Path, log_path: Path) -> tuple[int, str]:
    """Run `cmd`, copying its output live to stdout and to `log_path`; (exit code, output tail)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = ""
    with atomic_path(log_path) as tmp, open(tmp, "wb") as log:
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                    **_dies_with_us())
        except OSError as exc:
            raise CharfwError(f"cannot start {cmd[0]}: {exc}", field="train.python") from None
        try:
            while chunk := proc.stdout.read1(65536):
                log.write(chunk)
                text = decoder.decode(chunk)
                _echo(text)
                tail = (tail + text)[-_TAIL_CHARS:]
                if interrupt.requested():
                    proc.terminate()
                    proc.wait()
                    raise Interrupted("interrupted: sd-scripts stopped; its newest saved state resumes on the "
                                      "next doit")
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
    return code, tail + decoder.decode(b"", final=True)


def _dies_with_us() -> dict:
    """Popen options so sd-scripts never outlives charfw (Linux: SIGTERM when we die; preexec_fn is POSIX-only)."""
    return {"preexec_fn": interrupt.die_with_parent} if os.name == "posix" else {}


def _check_lora(path: Path) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            if not list(f.keys()):
                raise ValueError("it holds no tensors")
    except Exception as exc:
        raise CharfwError(f"sd-scripts wrote {path}, but it is not a usable LoRA file: {exc}") from None


def sd_scripts_command(req: TrainRequest, *, launcher: Launcher = "accelerate",
                       python: str | None = None) -> tuple[str, list[str]]:
    """(output name, full command line) for one training, without running or probing anything.

    This is what `charfw plan` prints and what `run_sd_scripts` runs (after its import check).
    Relative paths in the request and in `train.sd_scripts`/`train.python` are taken from `req.root`.
    """
    if is_builtin(req.model):
        raise CharfwError(f"{req.model!r} is charfw's built-in test model; the sd-scripts backend needs a "
                          "checkpoint file (.safetensors / .ckpt) or a diffusers model", field="model")
    root = req.root
    sd_dir = sd_scripts_dir(req.settings, req.family, root=root)
    python = python or resolve_python(req.settings, sd_dir, root=root)
    absolute = replace(
        req, model=_model_path(req.model, root, "model"),
        vae=_model_path(req.vae, root, "vae") if req.vae else None,
        dataset_toml=_abs(req.dataset_toml, root).absolute(), state_dir=_abs(req.state_dir, root).absolute(),
        log_dir=_abs(req.log_dir, root).absolute() if req.log_dir is not None else None,
        init_weights=_abs(req.init_weights, root).absolute() if req.init_weights is not None else None)
    return output_name(req.name, req.settings, req.steps), launch_command(python, sd_dir, train_args(absolute),
                                                                          launcher=launcher, family=req.family)


def run_sd_scripts(req: TrainRequest, *, launcher: Launcher = "accelerate") -> Path:
    """Train one LoRA with sd-scripts and copy it atomically to `req.output`; returns that path.

    sd-scripts writes ``<state_dir>/<name>-<logic>-<dim>-<lr>-<steps>.safetensors`` (the seed's
    name); its TensorBoard logs go to `req.log_dir`.
    """
    root = req.root
    dataset_toml = _abs(req.dataset_toml, root).absolute()
    if not dataset_toml.is_file():
        raise CharfwError(f"dataset config {dataset_toml} does not exist")
    if req.init_weights is not None and not _abs(req.init_weights, root).is_file():
        raise CharfwError(f"initial LoRA {_abs(req.init_weights, root).absolute()} does not exist")
    sd_dir = sd_scripts_dir(req.settings, req.family, root=root)
    python = resolve_python(req.settings, sd_dir, root=root)
    work_dir = _abs(req.state_dir, root).absolute()

    out_name, cmd = sd_scripts_command(req, launcher=launcher, python=python)
    extra_names = {n for n in map(_option_name, req.settings.extra_args) if n}
    want_bnb = req.settings.optimizer == "adamw8bit" and "--optimizer_type" not in extra_names
    has_bnb = _check_imports(python, sd_dir, cmd, launcher, want_bnb)
    if want_bnb and not has_bnb:
        print("charfw: bitsandbytes is not importable in that python: training with plain AdamW "
              "instead of AdamW 8-bit", flush=True)
        out_name, cmd = sd_scripts_command(req.with_settings(optimizer="adamw"), launcher=launcher, python=python)
    state = latest_state(work_dir, out_name)
    if state is not None:
        print(f"charfw: resuming sd-scripts from {state.name}", flush=True)
        cmd = [*cmd, f"--resume={state}"]

    work_dir.mkdir(parents=True, exist_ok=True)
    if req.log_dir is not None:
        _abs(req.log_dir, root).mkdir(parents=True, exist_ok=True)
    produced = work_dir / f"{out_name}.safetensors"
    produced.unlink(missing_ok=True)  # never mistake a previous run's file for this one's
    log_path = work_dir / f"{out_name}.log"

    flag = extra_caches_latents(req.settings.extra_args)
    if flag and req.settings.color_aug:
        print(f"charfw: sd-scripts caches latents ({flag} in extra_args), so the dataset config has "
              "color_aug = false (sd-scripts refuses colour augmentation with cached latents)", flush=True)
    print(f"charfw: running sd-scripts in {dataset_toml.parent}", flush=True)
    code, tail = _stream(cmd, dataset_toml.parent, log_path)
    if code != 0:
        raise CharfwError(f"sd-scripts failed (exit code {code}); full output in {log_path}; last lines:\n"
                          f"{_last_lines(tail)}")
    if not produced.is_file():
        found = sorted(p.name for p in work_dir.glob("*.safetensors"))
        raise CharfwError(f"sd-scripts finished but did not write {produced}"
                          + (f" (found: {', '.join(found)})" if found else "")
                          + f"; full output in {log_path}")
    _check_lora(produced)
    output = _abs(req.output, root)
    with atomic_path(output) as tmp:
        shutil.copyfile(produced, tmp)
    return output


def latest_state(work_dir: Path, out_name: str) -> Path | None:
    """sd-scripts' newest saved training state for this output name (`<name>-step00000200-state`)."""
    states = sorted(p for p in work_dir.glob(f"{out_name}-step*-state") if p.is_dir())
    return states[-1] if states else None


def _model_path(value: str, root: Path, field: str) -> str:
    """An absolute path for a local file; a diffusers folder or a Hugging Face id as given."""
    path = _abs(value, root)
    if path.exists():
        return str(path.absolute())
    if Path(value).suffix.lower() in CHECKPOINT_SUFFIXES:
        raise CharfwError(f"{path} does not exist", field=field)
    return value
