"""Which trainer runs a request: the embedded one or kohya sd-scripts (`train.trainer`)."""

from __future__ import annotations

from charfw.fingerprint import DigestCache, record, run_key
from charfw.request import TrainRequest
from charfw.sdscripts.runner import run_sd_scripts, sd_scripts_command


def train(req: TrainRequest, cache: DigestCache | None = None) -> None:
    """Train with the configured backend, then record the run key (after the LoRA is in place)."""
    cpu = False
    if req.settings.trainer == "sd-scripts":
        key = run_key(req, cache)

        run_sd_scripts(req)
    else:
        from charfw.train import train_lora, training_device

        cpu = training_device(req) == "cpu"
        key = run_key(req, cache, cpu)
        train_lora(req)
    record(req, key, cpu)


def command_line(req: TrainRequest) -> list[str]:
    """The exact command that trains this target outside doit (what `charfw plan` prints)."""
    if req.settings.trainer == "sd-scripts":

        return sd_scripts_command(req)[1]
    return ["charfw", "train", req.name, "-C", str(req.root)]
