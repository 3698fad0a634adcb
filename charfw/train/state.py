"""Resumable training state in the state folder.

Layout: `network-<step>.safetensors` (adapter weights, fp32), `optim-<step>.safetensors`
(optimizer, LR schedule and grad-scaler state: its tensors, and the structure around them
as JSON in the file's metadata, so a state holds no pickle anywhere and can travel through a
cluster or a shared cache), and `state.json` naming the run and the step, written last.
States written by earlier versions (`optim-<step>.pt`) are still read, with
`torch.load(weights_only=True)`. A crash at any point leaves
either the previous complete state or the new one.

The run id is a hash of everything that decides the training result (settings,
steps, base model, dataset contents, init weights); a state of another run is
discarded, never resumed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from charfw.fsutil import atomic_path, write_text

log = logging.getLogger("charfw.train")

STATE_FILE = "state.json"


@dataclass
class SavedState:
    step: int
    network: dict[str, torch.Tensor]
    optim: dict


def _files(state_dir: Path) -> list[Path]:
    return [*state_dir.glob("network-*.safetensors"), *state_dir.glob("optim-*.safetensors"),
            *state_dir.glob("optim-*.pt")]


def flatten(value, tensors: dict[str, torch.Tensor], path: str = "s"):
    """A nested state (dicts with int or str keys, lists, tuples, tensors, plain values) as JSON types,
    each tensor replaced by {"t": its name in `tensors`}."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().contiguous()
        return {"t": path}
    if isinstance(value, dict):
        return {"d": [[k, flatten(v, tensors, f"{path}.{k}")] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
        return {"l" if isinstance(value, list) else "u": items}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"v": value}
    raise TypeError(f"cannot store a {type(value).__name__} in a training state ({path})")


def unflatten(node, tensors: dict[str, torch.Tensor]):
    """`flatten`'s inverse."""
    (kind, value), = node.items()
    if kind == "t":
        return tensors[value]
    if kind == "d":
        return {k: unflatten(v, tensors) for k, v in value}
    if kind in ("l", "u"):
        items = [unflatten(v, tensors) for v in value]
        return items if kind == "l" else tuple(items)
    return value


def save_state(state_dir: Path, run: str, step: int, network: dict[str, torch.Tensor], optim: dict,
               batch_scale: int = 1) -> None:
    from safetensors.torch import save_file

    state_dir.mkdir(parents=True, exist_ok=True)
    old = _files(state_dir)
    net_path, opt_path = (state_dir / f"{part}-{step:08d}.safetensors" for part in ("network", "optim"))
    with atomic_path(net_path) as tmp:
        save_file(network, str(tmp), {"run": run, "step": str(step)})
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(flatten(optim, tensors))
    with atomic_path(opt_path) as tmp:
        save_file(tensors, str(tmp), {"run": run, "step": str(step), "structure": structure})
    write_text(state_dir / STATE_FILE, json.dumps({"run": run, "step": step, "network": net_path.name,
                                                   "optim": opt_path.name, "batch_scale": batch_scale}, indent=1))
    for path in old:
        if path not in (net_path, opt_path):
            path.unlink(missing_ok=True)


def saved_state_info(state_dir: Path) -> dict:
    """state.json of the saved state (run, step, batch_scale, ...), or {} when there is none."""
    try:
        info = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def load_state(state_dir: Path, run: str) -> SavedState | None:
    """The saved state of this run, or None (a state of another run, or a damaged one, is removed)."""
    index = state_dir / STATE_FILE
    if not index.is_file():
        return None
    try:
        info = json.loads(index.read_text(encoding="utf-8"))
        if info.get("run") != run:
            log.info("discarding saved training state of a different run (settings or data changed)")
            clear_state(state_dir)
            return None
        from safetensors.torch import load_file
        network = load_file(str(state_dir / info["network"]))
        optim = _load_optim(state_dir / info["optim"])
        if optim.get("run") != run or optim.get("step") != info["step"]:
            raise ValueError("optimizer state does not match state.json")
        return SavedState(int(info["step"]), network, optim)
    except Exception as exc:
        log.warning("discarding unreadable training state in %s (%s)", state_dir, exc)
        clear_state(state_dir)
        return None


def clear_state(state_dir: Path) -> None:
    """Remove the resumable state (the latent cache, if any, stays); the folder goes when nothing is left."""
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    for path in _files(state_dir):
        path.unlink(missing_ok=True)
    try:
        state_dir.rmdir()
    except OSError:
        pass  # not there, or it still holds the disk latent cache


def _load_optim(path: Path) -> dict:
    if path.suffix == ".pt":   # an earlier version's state
        return torch.load(path, map_location="cpu", weights_only=True)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return {"run": meta["run"], "step": int(meta["step"]), **unflatten(json.loads(meta["structure"]), tensors)}
