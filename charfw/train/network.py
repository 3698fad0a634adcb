"""The trainable network: low-rank adapters injected into the frozen U-Net and text encoder.

Which layers get an adapter, and under which kohya name, comes from charfw.lora.keys
(derived from the SD1.5 / SDXL architecture), not from the module paths of whatever
diffusers/transformers version is installed: each expected name is looked up among
the model's Linear/Conv2d layers, and a model that lacks one is refused.

- 'lora':   kohya LoRA, attention blocks (Linear + 1x1 conv) and text encoder: 264 modules on SD1.5.
- 'c3lier': plus every resnet conv/time_emb_proj/shortcut and down/upsampler: 350 modules on SD1.5.
- 'locon', 'loha', 'lokr': LyCORIS modules (its own classes) on the same 350 layers,
  saved in the LyCORIS/kohya key forms (`lora_down`/`hada_w1_a`/`lokr_w1`...).

Adapters hook the original layer's forward (output = W x + scale * up(down(x))), so
the base model's code, checkpointing and attention backend stay untouched.

For training, `Network.pack()` moves every LoRA factor of one learning-rate group into one
flat fp32 parameter (the modules' weights become views of it). Each step then casts the
whole group to the compute dtype once and splits it into the modules' factors once
(`refresh`), instead of autocast re-casting each of ~700 small weights on every call (and
again in checkpoint recomputation); the backward gathers their gradients in one
concatenation; the optimizer, clipping and loss scaling see one tensor per group, so
AdamW 8-bit and fused AdamW each take one kernel per group. The maths is unchanged.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from charfw.errors import CharfwError
from charfw.models.targets import target_layers
from charfw.recipe import LYCORIS_ALGOS, NetworkSpec
from charfw.rules.blocklr import block_index


class LoRAModule(nn.Module):
    """kohya LoRA for one Linear/Conv2d: down kaiming-uniform, up zero, scale alpha/dim."""

    def __init__(self, name: str, org: nn.Module, dim: int, alpha: float):
        super().__init__()
        self.lora_name = name
        if isinstance(org, nn.Conv2d):
            self.lora_down = nn.Conv2d(org.in_channels, dim, org.kernel_size, org.stride, org.padding, bias=False)
            self.lora_up = nn.Conv2d(dim, org.out_channels, 1, bias=False)
        else:
            self.lora_down = nn.Linear(org.in_features, dim, bias=False)
            self.lora_up = nn.Linear(dim, org.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.scale = float(alpha) / dim
        self.multiplier = 1.0
        self.org_module = [org]  # a list: not registered as a sub-module (its weights are not ours)
        # this step's (down, up, scale still to apply): Network.refresh
        self.factors: tuple[torch.Tensor, torch.Tensor, float] | None = None

    def apply_to(self) -> None:
        org = self.org_module[0]
        self.org_forward = org.forward
        org.forward = self.forward

    def restore(self) -> None:
        org = self.org_module[0]
        if org.__dict__.get("forward") == self.forward:
            del org.forward

    def forward(self, x, *args, **kwargs):
        out = self.org_forward(x, *args, **kwargs)
        down, up, scale = self.factors or (self.lora_down.weight, self.lora_up.weight, self.multiplier * self.scale)
        if x.dtype != down.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(down.dtype)  # low-precision activations meeting fp32 adapters outside autocast
        if isinstance(self.lora_down, nn.Conv2d):
            c = self.lora_down
            h = F.conv2d(x, down, None, c.stride, c.padding, c.dilation, c.groups)
            delta = F.conv2d(h, up)
        else:
            delta = F.linear(F.linear(x, down), up)
        if scale != 1.0:
            delta = delta * scale
        return out + delta.to(out.dtype)


class PackedGroup:
    """The LoRA factors of one learning-rate group as one flat fp32 parameter: every `down`, then
    every `up`.

    The modules keep `lora_down.weight`/`lora_up.weight` as buffers that are views of it, so
    state_dict, loading and saving read and write the packed values.
    """

    def __init__(self, modules: list[LoRAModule], split_ups: bool = False):
        self.modules = modules
        weights = [m.lora_down.weight for m in modules] + [m.lora_up.weight for m in modules]
        self.shapes = [w.shape for w in weights]
        self.sizes = [w.numel() for w in weights]
        self.split_at = sum(self.sizes[:len(modules)])   # where the ups begin
        scales = {m.multiplier * m.scale for m in modules}
        self.scale = scales.pop() if len(scales) == 1 else None   # folded into the ups once per step
        flat = torch.cat([w.detach().reshape(-1) for w in weights])
        n = len(modules)
        if split_ups:   # LoRA+: the downs and the ups as two parameters, which learn at different rates
            self.params = [nn.Parameter(flat[:self.split_at].clone()), nn.Parameter(flat[self.split_at:].clone())]
            views = [*self.params[0].detach().split(self.sizes[:n]), *self.params[1].detach().split(self.sizes[n:])]
        else:
            self.params = [nn.Parameter(flat)]
            views = self.params[0].detach().split(self.sizes)
        layers = [m.lora_down for m in modules] + [m.lora_up for m in modules]
        for layer, view, shape in zip(layers, views, self.shapes):
            del layer._parameters["weight"]
            layer.register_buffer("weight", view.view(shape))

    @property
    def flat(self) -> nn.Parameter:
        """The group's one parameter (without LoRA+)."""
        return self.params[0]

    def refresh(self, dtype: torch.dtype | None) -> None:
        """This step's factors: one cast of the group (when training in a lower precision), the scale
        applied to all ups in one multiplication (instead of one per module and call), one split."""
        cast = [p if dtype is None or dtype == p.dtype else p.to(dtype) for p in self.params]
        if len(cast) == 1:
            downs, ups = cast[0].split([self.split_at, cast[0].numel() - self.split_at])
        else:
            downs, ups = cast
        if self.scale is not None and self.scale != 1.0:
            ups = ups * self.scale
        n = len(self.modules)
        parts = downs.split(self.sizes[:n]) + ups.split(self.sizes[n:])
        for i, m in enumerate(self.modules):
            left = 1.0 if self.scale is not None else m.multiplier * m.scale
            m.factors = (parts[i].view(self.shapes[i]), parts[n + i].view(self.shapes[n + i]), left)

    def release(self) -> None:
        for m in self.modules:
            m.factors = None


def _lycoris_module(algo: str, name: str, org: nn.Module, dim: int, alpha: float, dora: bool = False) -> nn.Module:
    from lycoris.logging import logger as lycoris_log
    from lycoris.modules.locon import LoConModule
    from lycoris.modules.loha import LohaModule
    from lycoris.modules.lokr import LokrModule

    level = lycoris_log.level
    lycoris_log.setLevel(logging.ERROR)  # LoKr warns per layer when dim asks for a full-matrix factor
    try:
        if algo == "locon" and dora:   # DoRA rescales W + ΔW per input channel (the axis every WebUI reads)
            return LoConModule(name, org, 1.0, dim, alpha, weight_decompose=True, wd_on_out=False, bypass_mode=False)
        if algo == "locon":  # bypass: x -> down -> up, cheaper than rebuilding W every step; same result
            return LoConModule(name, org, 1.0, dim, alpha, bypass_mode=True)
        if algo == "loha":
            return LohaModule(name, org, 1.0, dim, alpha)
        return LokrModule(name, org, 1.0, dim, alpha, factor=-1)
    finally:
        lycoris_log.setLevel(level)


class Network(nn.Module):
    """All adapters, registered under their kohya names so state_dict() is the kohya file layout."""

    def __init__(self, spec: NetworkSpec, sd, text_encoders: bool = True):
        super().__init__()
        self.spec = spec
        self.names: list[str] = []
        self.packed: list[PackedGroup] = []
        self.lr_factors: dict[str, float] = {}   # module -> learning-rate factor, where block-wise rates set one
        for name, layer in target_layers(sd, spec.conv3x3, text_encoders).items():
            spatial = isinstance(layer, nn.Conv2d) and layer.kernel_size[0] > 1
            block = block_index(name, sd.family) if spec.blocks is not None else None
            dim, alpha = spec.module_rank(block, spatial)
            if dim == 0:   # a block at rank 0 or learning rate 0: no module, as sd-scripts leaves it out
                continue
            if spec.lr_factor(block) != 1.0:
                self.lr_factors[name] = spec.lr_factor(block)
            if spec.algo in LYCORIS_ALGOS:
                module = _lycoris_module(spec.algo, name, layer, dim, alpha, spec.dora)
            else:
                module = LoRAModule(name, layer, dim, alpha)
            self.add_module(name, module)
            self.names.append(name)
        self.to(next(sd.unet.parameters()).device)

    def apply_to(self) -> None:
        for name in self.names:
            getattr(self, name).apply_to()

    def restore(self) -> None:
        for name in reversed(self.names):
            getattr(self, name).restore()

    def pack(self) -> None:
        """Pack the LoRA factors of each learning-rate group into one parameter (module docstring; with
        LoRA+ the downs and the ups as two).

        Call once the network is on its device: moving it afterwards would copy the views.
        LyCORIS modules keep their own parameters.
        """
        if self.packed or self.spec.algo in LYCORIS_ALGOS:
            return
        groups: dict[tuple[bool, float], list[LoRAModule]] = {}   # (text encoder, block lr factor) -> modules
        for name in self.names:
            groups.setdefault((name.startswith("lora_te"), self.lr_factors.get(name, 1.0)), []).append(getattr(self, name))
        split = self.spec.plus_ratios is not None
        self.packed = [PackedGroup(groups[key], split) for key in sorted(groups)]
        for i, group in enumerate(self.packed):
            for j, param in enumerate(group.params):
                self.register_parameter(f"packed_{i}" + (f"_{j}" if split else ""), param)

    def refresh(self, dtype: torch.dtype | None = None) -> None:
        """Before a packed network's forward: this step's factors, in `dtype` (None: fp32)."""
        for group in self.packed:
            group.refresh(dtype)

    def release(self) -> None:
        """After the backward: drop the step's factors (and the graph they hold)."""
        for group in self.packed:
            group.release()

    @torch.no_grad()
    def scale_weight_norms(self, max_norm: float) -> tuple[int, float, float]:
        """sd-scripts' max-norm regularization: a module whose ΔW (alpha/dim included) has a Frobenius norm
        above `max_norm` gets both factors scaled by sqrt(max_norm / norm); LyCORIS modules apply their
        own. Returns (modules scaled, mean norm, largest norm), after scaling."""
        scaled, norms = 0, []
        for name in self.names:
            m = getattr(self, name)
            if isinstance(m, LoRAModule):
                up, down = m.lora_up.weight, m.lora_down.weight
                norm = float((up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).norm()) * m.scale
                ratio = min(max(norm, max_norm / 2), max_norm) / max(norm, max_norm / 2)
                if ratio != 1:
                    scaled += 1
                    up.mul_(ratio ** 0.5)
                    down.mul_(ratio ** 0.5)
                norms.append(norm * ratio)
            else:
                was_scaled, norm = m.apply_max_norm(max_norm, next(m.parameters()).device)
                scaled += bool(was_scaled)
                norms.append(float(norm))
        return scaled, sum(norms) / len(norms), max(norms)

    def param_factors(self) -> dict[nn.Parameter, float]:
        """Parameters whose learning rate is the U-Net's times a block factor other than 1 (block-wise rates)."""
        if self.packed:
            return {p: self.lr_factors.get(g.modules[0].lora_name, 1.0) for g in self.packed for p in g.params
                    if self.lr_factors.get(g.modules[0].lora_name, 1.0) != 1.0}
        return {p: self.lr_factors[n] for n in self.lr_factors for p in getattr(self, n).parameters()}

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(U-Net params, text-encoder params): they train at different learning rates."""
        if self.packed:
            te = [g.modules[0].lora_name.startswith("lora_te") for g in self.packed]
            return ([p for g, t in zip(self.packed, te) if not t for p in g.params],
                    [p for g, t in zip(self.packed, te) if t for p in g.params])
        unet, te = [], []
        for name in self.names:
            (te if name.startswith("lora_te") else unet).extend(getattr(self, name).parameters())
        return unet, te

    def up_params(self) -> set[nn.Parameter]:
        """The parameters that hold up factors alone (LoRA+ gives them a higher learning rate)."""
        if self.packed:
            return {g.params[1] for g in self.packed if len(g.params) == 2}
        return {getattr(self, n).lora_up.weight for n in self.names if isinstance(getattr(self, n), LoRAModule)}

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """state_dict() under the kohya keys alone (not the packed parameters they are views of)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("packed_")}

    def kohya_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The tensors of a kohya/LyCORIS LoRA file (CPU, contiguous, optionally cast)."""
        out = {}
        for key, value in self.adapter_state().items():
            value = value.detach().to("cpu")
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            out[key] = value.contiguous()
        return out

    def load_adapter_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Set every adapter tensor from `adapter_state()`'s keys (a saved training state)."""
        own = self.adapter_state()
        if own.keys() != tensors.keys():
            raise ValueError(f"saved state has {len(tensors)} tensors, this network {len(own)}")
        with torch.no_grad():
            for key, value in tensors.items():
                self._tensor(key).copy_(value)

    def load_kohya(self, tensors: dict[str, torch.Tensor], source) -> int:
        """Start from another LoRA's tensors (e.g. the face LoRA); returns how many modules were loaded.

        Modules absent from `tensors` keep their fresh init; anything that does not fit
        this network (unknown module, other algorithm, other dim, other alpha) is an error.
        """
        own = self.adapter_state()
        modules = {k.partition(".")[0] for k in tensors}
        for key in tensors:
            if key not in own:
                why = "unknown module" if key.partition(".")[0] not in self.names else "another algorithm's tensor"
                raise CharfwError(f"{why} {key} for this {self.spec.algo} network", file=source, field="init_weights")
        for key, value in tensors.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise CharfwError(f"{key} has shape {list(value.shape)}, this network (dim {self.spec.dim}) needs "
                                  f"{list(own[key].shape)}", file=source, field="init_weights")
        for key, value in tensors.items():
            if key.endswith(".alpha") and not math.isclose(float(value), float(own[key]), rel_tol=1e-3):
                raise CharfwError(f"{key} is {float(value):g}, this network's alpha is {float(own[key]):g}",
                                  file=source, field="init_weights")
        for name in modules:
            need = {k for k in own if k.startswith(name + ".")}
            lacking = sorted(need - set(tensors))
            if lacking:
                raise CharfwError(f"module {name} lacks {lacking[0]}", file=source, field="init_weights")
        with torch.no_grad():
            for key, value in tensors.items():
                target = self._tensor(key)
                target.copy_(value.to(target.dtype))
        return len(modules)

    def _tensor(self, key: str) -> torch.Tensor:
        module_path, _, attr = key.rpartition(".")
        module = self.get_submodule(module_path)
        return getattr(module, attr)
