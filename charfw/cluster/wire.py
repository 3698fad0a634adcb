"""A training request as plain data (JSON types only), its paths relative to the workspace, and back.

What crosses to a node is this and the files of `bundle`: no pickled objects of the build. The
node rebuilds the request under its own scratch folder, with the model files from its cache.
"""

from __future__ import annotations

from pathlib import Path

from charfw.cluster.bundle import relative
from charfw.config.models import SampleSettings, TrainSettings
from charfw.families import family
from charfw.request import ProgressSamples, TrainRequest
from charfw.rules.modelref import is_builtin

PATHS = ("dataset_toml", "output", "state_dir", "log_dir", "init_weights")


def to_wire(req: TrainRequest) -> dict:
    """The request as JSON types; `model`/`vae` as given (the node swaps in its cached copy of a file)."""
    root = req.root
    data = {
        "name": req.name, "steps": req.steps, "family": req.family.name,
        "settings": req.settings.model_dump(mode="json"),
        "model": req.model, "vae": req.vae, "trigger_words": list(req.trigger_words),
        "inputs": [relative(p, root) for p in req.inputs],
        **{k: None if getattr(req, k) is None else relative(getattr(req, k), root) for k in PATHS},
        "progress_samples": None,
    }
    if req.progress_samples is not None:
        s = req.progress_samples
        data["progress_samples"] = {"prompt": s.prompt, "settings": s.settings.model_dump(mode="json"),
                                    "folder": relative(s.folder, root)}
    return data


def from_wire(data: dict, root: Path, models: dict[str, str] | None = None, on_state_saved=None) -> TrainRequest:
    """The request under `root`; `models` maps the wire's model/vae file paths to the node's copies."""
    models = models or {}

    def local(value: str | None) -> str | None:
        if value is None or is_builtin(value):
            return value
        return models[value]

    paths = {k: None if data[k] is None else root / data[k] for k in PATHS}
    samples = data["progress_samples"]
    return TrainRequest(
        name=data["name"], settings=TrainSettings.model_validate(data["settings"]), steps=data["steps"],
        family=family(data["family"]), model=local(data["model"]), vae=local(data["vae"]),
        trigger_words=tuple(data["trigger_words"]), root=root, inputs=tuple(root / p for p in data["inputs"]),
        progress=False, on_state_saved=on_state_saved,
        progress_samples=None if samples is None else ProgressSamples(
            samples["prompt"], SampleSettings.model_validate(samples["settings"]), root / samples["folder"]),
        **paths)


def model_files(models: dict[str, str | None]) -> dict[str, Path]:
    """The model and VAE files (`role: value`) that must be on the node (built-ins need none)."""
    return {role: Path(value) for role, value in models.items() if value is not None and not is_builtin(value)}
