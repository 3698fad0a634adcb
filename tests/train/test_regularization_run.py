"""The embedded trainer with regularization subsets (tests/test_regularization.py has the rules)."""

import shutil

import pytest

from charfw.config.models import TrainSettings
from charfw.families import SD15


@pytest.mark.slow
def test_an_embedded_run_trains_on_reg_images_at_their_weight(tmp_path, monkeypatch):
    """The tiny model trains on a TOML with an is_reg subset: reg images reach the batches and their samples
    carry prior_loss_weight into the loss."""
    from train_data import make_dataset

    from charfw.request import TrainRequest
    from charfw.train import loop

    toml = make_dataset(tmp_path / "data")
    reg = tmp_path / "data/girl_f0064"
    reg.mkdir()
    for png in sorted((tmp_path / "data/krnk girl_f0064").glob("*.png"))[:2]:
        shutil.copy(png, reg / png.name)
    toml.write_text(toml.read_text() + "\n[[datasets.subsets]]\nimage_dir = 'girl_f0064'\nclass_tokens = 'girl'\n"
                    "is_reg = true\n")
    req = TrainRequest(name="krnk", settings=TrainSettings(dim=4, prior_loss_weight=0.5, save_every_n_steps=1000,
                                                           gradient_checkpointing=False),
                       steps=4, dataset_toml=toml, model="builtin:tiny-sd15", output=tmp_path / "o.safetensors",
                       state_dir=tmp_path / "state", family=SD15, progress=False)
    seen = []
    real = loop.prior_weights
    monkeypatch.setattr(loop, "prior_weights", lambda *a: seen.append(real(*a)) or seen[-1])
    loop.reset_accelerate()
    loop.run(req)
    weights = [w for w in seen if w is not None]
    assert len(seen) == 4 and weights and all(set(w.tolist()) <= {1.0, 0.5} and 0.5 in w.tolist() for w in weights)
    from safetensors import safe_open
    with safe_open(str(req.output), "pt") as f:
        meta = f.metadata()
    assert meta["ss_prior_loss_weight"] == "0.5" and meta["ss_num_reg_images"] == "4"   # 2 images x 2 repeats
