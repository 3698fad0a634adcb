"""The training state's file format: safetensors and JSON only (no pickle), resuming exactly."""

import json

import pytest
import torch

from charfw.train.state import _load_optim, flatten, load_state, save_state, unflatten


def _trained(steps):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.AdamW([w, torch.nn.Parameter(torch.ones(2))], lr=0.1, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))
    for _ in range(steps):
        opt.zero_grad()
        _loss(opt).backward()
        opt.step()
        sched.step()
    return w, opt, sched


def _loss(opt):
    a, b = opt.param_groups[0]["params"]
    return (a ** 2).sum() + (b ** 3).sum()


def test_an_optimizer_state_goes_through_json_and_tensors_and_resumes_exactly(tmp_path):
    w, opt, sched = _trained(3)
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": None}
    tensors = {}
    structure = json.loads(json.dumps(flatten(state, tensors)))     # JSON types only
    assert tensors and all(isinstance(t, torch.Tensor) for t in tensors.values())
    back = unflatten(structure, tensors)
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)          # a tuple stays a tuple
    assert set(back["optimizer"]["state"]) == {0, 1}                             # int keys stay ints

    save_state(tmp_path, "run1", 3, {"w": w.detach().clone()}, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "network-00000003.safetensors", "optim-00000003.safetensors", "state.json"]
    saved = load_state(tmp_path, "run1")
    w2 = torch.nn.Parameter(saved.network["w"].clone())
    b2 = torch.nn.Parameter(opt.param_groups[0]["params"][1].detach().clone())
    opt2 = torch.optim.AdamW([w2, b2], lr=0.1, betas=(0.9, 0.99))
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1 / (1 + s))
    opt2.load_state_dict(saved.optim["optimizer"])
    sched2.load_state_dict(saved.optim["scheduler"])
    for a, o, s in ((w, opt, sched), (w2, opt2, sched2)):
        for _ in range(2):
            o.zero_grad()
            _loss(o).backward()
            o.step()
            s.step()
    assert torch.equal(w, w2) and torch.equal(opt.param_groups[0]["params"][1], b2)


def test_what_a_state_cannot_hold_is_named():
    with pytest.raises(TypeError, match=r"cannot store a set in a training state \(s\.optimizer\.bad\)"):
        flatten({"optimizer": {"bad": {1, 2}}}, {})


def test_a_state_of_an_earlier_version_is_still_read(tmp_path):
    torch.save({"run": "r", "step": 5, "optimizer": {"state": {0: {"step": torch.tensor(5.0)}}}}, tmp_path / "o.pt")
    assert _load_optim(tmp_path / "o.pt")["optimizer"]["state"][0]["step"] == 5.0
