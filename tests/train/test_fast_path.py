"""The fast training path (fused AdamW, losses read back in groups, compiled transformer blocks,
checkpointing chosen from free memory) trains what the plain eager path trains."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from charfw.config.models import TrainSettings
from charfw.request import TrainRequest
from charfw.train import loop

pytestmark = pytest.mark.slow

FAST = dict(network="c3lier", dim=4, lr=3e-3, save_every_n_steps=1000)


def train(toml, tmp, steps=8, **settings):
    losses = []
    req = TrainRequest(name="krnk", settings=TrainSettings(**{**FAST, **settings}), steps=steps, dataset_toml=toml,
                       model="builtin:tiny-sd15", output=tmp / "out.safetensors", state_dir=tmp / "state",
                       progress=False)
    loop.reset_accelerate()
    loop.run(req, on_step=lambda step, loss: losses.append((step, loss)))
    return losses, load_file(str(req.output))


def test_losses_read_in_groups_change_nothing(dataset_toml, tmp_path, monkeypatch):
    """On a GPU losses are read back every LOSS_READ_EVERY steps: every step is still reported, in order,
    and the weights are the same bits."""
    plain = train(dataset_toml, tmp_path / "a", compile="off", gradient_checkpointing=False)
    monkeypatch.setattr(loop, "loss_read_every", lambda device: 3)
    grouped = train(dataset_toml, tmp_path / "b", compile="off", gradient_checkpointing=False)
    assert [s for s, _ in grouped[0]] == list(range(1, 9))
    assert grouped[0] == plain[0]
    assert grouped[1].keys() == plain[1].keys() and all(torch.equal(grouped[1][k], plain[1][k]) for k in plain[1])


def test_checkpointing_auto_trains_as_explicit_checkpointing(dataset_toml, tmp_path):
    auto = train(dataset_toml, tmp_path / "a", compile="off")          # plenty of RAM: auto turns it off
    explicit = train(dataset_toml, tmp_path / "b", compile="off", gradient_checkpointing=True)
    for (_, a), (_, b) in zip(auto[0], explicit[0]):
        assert a == pytest.approx(b, rel=1e-5)
    for k in auto[1]:
        torch.testing.assert_close(auto[1][k].float(), explicit[1][k].float(), rtol=1e-3, atol=1e-5)


def test_compiled_and_eager_paths_agree(dataset_toml, tmp_path):
    """20 steps with torch.compile'd transformer blocks against plain eager: the same loss curve within
    float tolerance, the same key set and dtypes."""
    eager = train(dataset_toml, tmp_path / "a", steps=20, compile="off", gradient_checkpointing=False)
    fast = train(dataset_toml, tmp_path / "b", steps=20, compile="on", gradient_checkpointing=False)
    assert [s for s, _ in fast[0]] == [s for s, _ in eager[0]]
    for (_, a), (_, b) in zip(eager[0], fast[0]):
        assert b == pytest.approx(a, rel=2e-3, abs=1e-4)
    assert fast[1].keys() == eager[1].keys()
    assert all(fast[1][k].dtype == eager[1][k].dtype for k in eager[1])
    for k in eager[1]:
        torch.testing.assert_close(fast[1][k].float(), eager[1][k].float(), rtol=2e-2, atol=2e-3)


def test_fused_adamw_takes_the_steps_plain_adamw_takes():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 32)) for _ in range(3)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fused = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, fused=True)
    plain = torch.optim.AdamW(twins, lr=1e-3, weight_decay=0.01, foreach=False)
    for step in range(20):
        grads = [torch.randn(64, 32, generator=torch.Generator().manual_seed(step * 3 + i)) for i in range(3)]
        for p, q, g in zip(params, twins, grads):
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
