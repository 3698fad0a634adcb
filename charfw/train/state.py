"""Resumable training state in the state folder.

Layout: `network-<step>.safetensors` (adapter weights, fp32), `optim-<step>.pt`
(optimizer, LR schedule and grad-scaler state: tensors and plain values only, read
back with `torch.load(weights_only=True)`, so nothing is ever unpickled), and
`state.json` naming the run and the step, written last. A crash at any point leaves
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

from charfw.fsutil import FullWriter, atomic_path, write_text

log = logging.getLogger("charfw.train")

STATE_FILE = "state.json"


@dataclass
class SavedState:
    step: int
    network: dict[str, torch.Tensor]
    optim: dict


def _files(state_dir: Path) -> list[Path]:
    return [*state_dir.glob("network-*.safetensors"), *state_dir.glob("optim-*.pt")]


def save_state(state_dir: Path, run: str, step: int, network: dict[str, torch.Tensor], optim: dict,
               batch_scale: int = 1) -> None:
    from safetensors.torch import save_file

    state_dir.mkdir(parents=True, exist_ok=True)
    old = _files(state_dir)
    net_path, opt_path = state_dir / f"network-{step:08d}.safetensors", state_dir / f"optim-{step:08d}.pt"
    with atomic_path(net_path) as tmp:
        save_file(network, str(tmp), {"run": run, "step": str(step)})
    with atomic_path(opt_path) as tmp, FullWriter(tmp) as f:
        torch.save({"run": run, "step": step, **optim}, f)
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
        optim = torch.load(state_dir / info["optim"], map_location="cpu", weights_only=True)
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
