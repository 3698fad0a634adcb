"""The fast training path (fused AdamW, losses read back in groups, compiled transformer blocks,
checkpointing chosen from free memory, packed LoRA factors, batch_scale) trains what the plain
eager path trains."""

from __future__ import annotations

from dataclasses import replace as dataclass_replace

import pytest
import torch
from safetensors.torch import load_file

from charfw.config.models import TrainSettings
from charfw.families import SD15
from charfw.request import TrainRequest
from charfw.train import loop

pytestmark = pytest.mark.slow

FAST = dict(network="c3lier", dim=4, lr=3e-3, save_every_n_steps=1000)


def train(toml, tmp, steps=8, **settings):
    losses = []
    req = TrainRequest(name="krnk", settings=TrainSettings(**{**FAST, **settings}), steps=steps, dataset_toml=toml,
                       model="builtin:tiny-sd15", output=tmp / "out.safetensors", state_dir=tmp / "state",
                       progress=False, family=SD15)
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


def test_batch_scale_trains_bigger_batches_for_the_same_epochs(dataset_toml, tmp_path):
    """4 images x 2 repeats in two buckets at batch 2: 4 batches per epoch. x2: batch 4, 2 batches per epoch,
    so 8 steps become 4 (the same 2 epochs) at lr x sqrt(2); the file says what was trained."""
    import json
    import math

    from safetensors import safe_open

    losses, _ = train(dataset_toml, tmp_path, steps=8, batch_scale=2, compile="off", gradient_checkpointing=False)
    assert [s for s, _ in losses] == [1, 2, 3, 4]
    with safe_open(str(tmp_path / "out.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["charfw_batch_scale"] == "2" and meta["ss_max_train_steps"] == "4" and meta["ss_epoch"] == "2"
    assert float(meta["ss_learning_rate"]) == pytest.approx(3e-3 * math.sqrt(2))
    assert json.loads(meta["ss_datasets"])[0]["batch_size_per_device"] == 4


def test_auto_batch_scale_grows_on_a_gpu_with_room(dataset_toml, tmp_path):
    from charfw.rules.memory import GIB
    from charfw.train.dataset import load_datasets

    datasets = load_datasets(dataset_toml)
    req = TrainRequest(name="krnk", settings=TrainSettings(**FAST), steps=100, dataset_toml=dataset_toml,
                       model="builtin:tiny-sd15", output=tmp_path / "o.safetensors", state_dir=tmp_path / "state",
                       family=SD15)
    footprint = dict(pixels=64 * 128, adapter_params=10**6, weight_bytes=10**8)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert loop._batch_scale(req, datasets, footprint, 80 * GIB, cpu) == 1
    assert loop._batch_scale(req, datasets, footprint, 1 * GIB, cuda) == 1
    scale = loop._batch_scale(req, datasets, footprint, 80 * GIB, cuda)
    assert scale == 2                                  # batch 4 = a whole bucket's 4 samples; 8 could not fill
    grown, grown_sets = loop._grow_batches(req, datasets, scale)
    assert [d.batch_size for d in grown_sets] == [4] and grown.steps == 50
    assert grown.settings.lr == pytest.approx(req.settings.lr * 2 ** 0.5)
    assert grown.settings.text_encoder_lr == pytest.approx(req.recipe.text_encoder_lr * 2 ** 0.5)
    assert loop._grow_batches(req, datasets, 1) == (req, datasets)


def test_an_auto_run_resumes_at_the_scale_it_began_with(dataset_toml, tmp_path, monkeypatch, caplog):
    """Interrupted at batch_scale 1 (little free memory), resumed where 2 would fit: it goes on at 1, exactly."""
    import json
    import logging

    whole = train(dataset_toml, tmp_path / "a", steps=6, compile="off", gradient_checkpointing=False)

    class Stop(Exception):
        pass

    def stop_at_4(step, loss):
        if step == 4:
            raise Stop

    req = TrainRequest(name="krnk", settings=TrainSettings(**{**FAST, "save_every_n_steps": 3, "compile": "off",
                                                              "gradient_checkpointing": False}),
                       steps=6, dataset_toml=dataset_toml, model="builtin:tiny-sd15",
                       output=tmp_path / "b/out.safetensors", state_dir=tmp_path / "b/state", progress=False,
                       family=SD15)
    loop.reset_accelerate()
    with pytest.raises(Stop):
        loop.run(req, on_step=stop_at_4)
    assert json.loads((req.state_dir / "state.json").read_text())["batch_scale"] == 1
    monkeypatch.setattr(loop, "_batch_scale", lambda *a: 2)      # now there is room for twice the batch
    loop.reset_accelerate()
    with caplog.at_level(logging.INFO, logger="charfw.train"):
        loop.run(req)
    assert "resuming krnk from step 3" in caplog.text and "batch_scale auto" not in caplog.text
    resumed = load_file(str(req.output))
    assert all(torch.equal(resumed[k], whole[1][k]) for k in whole[1])
    # without a state of this run, the same request trains at the scale that fits
    loop.reset_accelerate()
    with caplog.at_level(logging.INFO, logger="charfw.train"):
        loop.run(dataclass_replace(req, output=tmp_path / "c/out.safetensors", state_dir=tmp_path / "c/state"))
    assert "batch_scale auto: batches x2, 3 steps instead of 6" in caplog.text


def test_packed_factors_train_what_separate_parameters_train(dataset_toml, tmp_path, monkeypatch):
    """One flat parameter per learning-rate group (one cast, one split, one optimizer tensor per step) against
    a parameter per factor: the same losses and weights, up to float summation order in the clipping norm."""
    from charfw.train.network import Network

    packed = train(dataset_toml, tmp_path / "a", steps=10, compile="off", gradient_checkpointing=True)
    monkeypatch.setattr(Network, "pack", lambda self: None)
    separate = train(dataset_toml, tmp_path / "b", steps=10, compile="off", gradient_checkpointing=True)
    for (_, a), (_, b) in zip(packed[0], separate[0]):
        assert a == pytest.approx(b, rel=1e-5)
    assert packed[1].keys() == separate[1].keys()
    for k in packed[1]:
        assert packed[1][k].dtype == separate[1][k].dtype
        torch.testing.assert_close(packed[1][k].float(), separate[1][k].float(), rtol=1e-3, atol=1e-6)


def test_packed_network_is_one_parameter_per_group_and_its_views_follow_it(dataset_toml):
    from charfw.models import load_model
    from charfw.recipe import network_spec
    from charfw.train.network import Network

    sd = load_model("builtin:tiny-sd15")
    net = Network(network_spec(TrainSettings(network="c3lier", dim=4)), sd)
    before = net.kohya_state_dict()
    net.pack()
    unet, te = net.param_groups()
    assert len(unet) == 1 and len(te) == 1
    assert unet[0].numel() + te[0].numel() == sum(v.numel() for k, v in before.items() if not k.endswith("alpha"))
    assert all(torch.equal(before[k], v) for k, v in net.kohya_state_dict().items())
    with torch.no_grad():
        unet[0].add_(1.0)                       # an optimizer step on the flat parameter ...
    after = net.kohya_state_dict()
    name = "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"
    assert torch.equal(after[name], before[name] + 1)   # ... is what the file holds
    net.refresh(torch.float16)
    module = net.get_submodule("lora_unet_down_blocks_0_resnets_0_conv1")
    down, up, left = module.factors
    assert up.dtype == torch.float16 and up.shape == after[name].shape and left == 1.0
    torch.testing.assert_close(up.float(), after[name] * module.scale, rtol=1e-3, atol=1e-3)   # scale folded in
    net.release()
    assert module.factors is None


def test_sd15_unet_only_trains_on_cached_text_encoder_outputs(dataset_toml, tmp_path):
    """train_text_encoder: false on SD1.5 (sd-scripts' --network_train_unet_only): captions are encoded once,
    the cache gives what live encoding gives, and the file holds U-Net modules only."""
    import contextlib

    from charfw.models import load_model
    from charfw.train.conditioning import TextConditioner

    sd = load_model("builtin:tiny-sd15")
    caption = "krnk, white background, from front, c0"
    live = TextConditioner(sd, clip_skip=2, trained=True)([caption], "cpu").context.detach()
    frozen = TextConditioner(sd, clip_skip=2, trained=False)
    frozen.precompute([caption], "cpu", contextlib.nullcontext)
    torch.testing.assert_close(frozen([caption, caption], "cpu").context[1], live[0])
    with pytest.raises(KeyError, match="not precomputed"):
        frozen(["another caption"], "cpu")

    losses, tensors = train(dataset_toml, tmp_path, steps=3, train_text_encoder=False, compile="off")
    assert len(losses) == 3 and tensors
    assert all(k.startswith("lora_unet_") for k in tensors)


def test_a_failure_inside_cuda_graphs_reruns_the_step_without_them(dataset_toml, tmp_path, monkeypatch, caplog):
    """CUDA graphs exist only on a GPU, so the rules and torch.compile are stubbed to let a CPU run take the
    graph path; the third step fails after its backward has put gradients in place. The blocks are then
    compiled without graphs and the step is run again: the run trains exactly what a run without graphs
    trains, and says so."""
    import logging

    from charfw.train import compiled

    plain = train(dataset_toml, tmp_path / "a", compile="off", gradient_checkpointing=False)

    modes, marks, calls = [], [], [0]
    monkeypatch.setattr(loop, "use_compile", lambda *args: True)
    monkeypatch.setattr(loop, "cuda_graphs_blocker", lambda *args: None)
    monkeypatch.setattr(compiled.CompiledBlocks, "_compile", lambda self, **options: modes.append(options))
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(calls[0]))
    real_step = loop._step

    def failing_step(*args, **kwargs):
        calls[0] += 1
        loss = real_step(*args, **kwargs)
        if calls[0] == 3:
            raise RuntimeError("accessing tensor output of CUDAGraphs that has been overwritten")
        return loss

    monkeypatch.setattr(loop, "_step", failing_step)
    with caplog.at_level(logging.INFO, logger="charfw.train"):
        graphed = train(dataset_toml, tmp_path / "b", compile="on", cuda_graphs=True, gradient_checkpointing=False)
    assert modes == [{}, {"mode": "reduce-overhead"}, {}]   # compiled, graphed, then plain again
    assert marks == [0, 1, 2]                               # a step begins before each graphed step
    assert calls[0] == 9                                    # 8 steps, the third twice
    assert any("CUDA graphs failed" in r.getMessage() for r in caplog.records)
    assert graphed[0] == plain[0]
    assert all(torch.equal(graphed[1][k], plain[1][k]) for k in plain[1])


def test_cuda_graphs_left_off_where_they_cannot_apply(dataset_toml, tmp_path, caplog):
    """On a CPU `cuda_graphs: true` changes nothing and the log says why."""
    import logging

    with caplog.at_level(logging.WARNING, logger="charfw.train"):
        train(dataset_toml, tmp_path, steps=1, compile="off", cuda_graphs=True)
    assert any("cuda_graphs: true is not used: CUDA graphs exist only on a GPU" in r.getMessage()
               for r in caplog.records)


def test_blocks_run_uncompiled_for_sampling_under_cuda_graphs(monkeypatch):
    """Sampling between graphed steps runs the blocks eagerly (CUDA graph trees refuse blocks that feed each
    other outside a training step); outside that context the same call compiles; undo() forgets it all,
    the graphs' memory pool included."""
    from diffusers.models.attention import BasicTransformerBlock
    from torch._dynamo.utils import counters

    from charfw.train.compiled import CompiledBlocks

    torch._dynamo.reset()
    model = torch.nn.Sequential(BasicTransformerBlock(8, 1, 8), BasicTransformerBlock(8, 1, 8))
    blocks = CompiledBlocks(model)
    blocks.use_graphs()
    x = torch.randn(1, 4, 8)
    before = counters["stats"]["unique_graphs"]   # (counts every compile of the process so far)
    with torch.no_grad():
        with blocks.eager():
            eager = model(x)
        assert counters["stats"]["unique_graphs"] == before
        compiled = model(x)
        assert counters["stats"]["unique_graphs"] > before
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    resets, reset = [], torch._dynamo.reset
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(reset()))
    blocks.undo()
    assert all(b._compiled_call_impl is None for b in model) and len(resets) == 1 and not blocks.graphs
