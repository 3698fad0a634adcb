"""The embedded trainer with held-out views (tests/test_validation.py has the rules)."""

import json

import pytest

from charfw.config.models import TrainSettings
from charfw.families import SD15


@pytest.mark.slow
def test_held_out_views_never_reach_the_optimizer_and_their_loss_is_logged(tmp_path, monkeypatch):
    from safetensors import safe_open
    from train_data import make_dataset

    from charfw.report.charts import read_scalars
    from charfw.request import TrainRequest
    from charfw.train import loop
    from charfw.train.validation import Validator

    toml = make_dataset(tmp_path / "data")          # f00..f03
    req = TrainRequest(name="krnk", settings=TrainSettings(dim=4, validation_views=["f01"], validate_every_n_steps=2,
                                                           save_every_n_steps=1000, gradient_checkpointing=False),
                       steps=4, dataset_toml=toml, model="builtin:tiny-sd15", output=tmp_path / "o.safetensors",
                       state_dir=tmp_path / "state", log_dir=tmp_path / "logs", family=SD15, progress=False)
    trained = []
    real_weights = loop.prior_weights

    def record(datasets, samples, weight):
        trained.extend(datasets[s.dataset].images[s.image].path.stem for s in samples)
        return real_weights(datasets, samples, weight)

    monkeypatch.setattr(loop, "prior_weights", record)
    repeated = []
    real_loss = Validator.loss
    monkeypatch.setattr(Validator, "loss", lambda self: repeated.append(real_loss(self)) or real_loss(self))
    loop.reset_accelerate()
    loop.run(req)
    assert trained and "f01" not in trained and {"f00", "f02", "f03"} <= set(trained)
    scalars = read_scalars(tmp_path / "logs" / "krnk")
    steps = [s for s, _ in scalars["loss/validation/step_average"]]
    assert steps == [2, 4] and len(scalars["loss/validation/step_divergence"]) == 2
    assert [v for _, v in scalars["loss/validation/step_average"]] == pytest.approx(repeated, rel=1e-6)
    with safe_open(str(req.output), "pt") as f:
        meta = f.metadata()
    assert meta["ss_num_validation_images"] == "1" and json.loads(meta["charfw_validation_views"]) == ["f01"]
    assert meta["ss_validate_every_n_steps"] == "2"
