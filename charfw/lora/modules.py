"""One LoRA module: its tensors, its algorithm, and the ΔW it stands for.

A module is the group of tensors sharing a name prefix (`lora_unet_..._to_q.*`). Kinds,
with ΔW as loaders (LyCORIS, A1111, ComfyUI) compute it, `scale = alpha / rank`
(alpha absent -> 1):

- "lora" (kohya LoRA, C3Lier, LyCORIS LoCon): ΔW = up · down · scale; down is (r, in[, k, k]),
  up (out, r[, 1, 1]). With a Tucker core `lora_mid` (r, r, k, k) and 1x1 down:
  ΔW = up ×₁ mid ×₂ downᵀ, i.e. an ordinary conv LoRA whose down is mid contracted with down.
- "loha": ΔW = (w1a · w1b) ⊙ (w2a · w2b) · scale; Tucker form (hada_t1/t2, w*_a (r, out),
  w*_b (r, in)) rebuilds each factor as t ×₁ w_a ×₂ w_b first.
- "lokr": ΔW = kron(W1, W2) · scale with W1 = lokr_w1 or w1_a · w1_b, W2 = lokr_w2,
  w2_a · w2_b, or Tucker t2 ×₁ w2_a ×₂ w2_b; scale = alpha / rank of the factored half,
  1 when neither half is factored.

Any kind may carry DoRA's `dora_scale`. Conv ΔW is handled as the matrix
(out, in·k·k), which is what every algorithm's factors multiply out to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from charfw.errors import CharfwError

LORA_KEYS = ("lora_down.weight", "lora_up.weight", "lora_mid.weight")
LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
COMMON_KEYS = ("alpha", "dora_scale")
KNOWN_SUFFIXES = frozenset(LORA_KEYS + LOHA_KEYS + LOKR_KEYS + COMMON_KEYS)


@dataclass
class Module:
    """A named group of tensors of one algorithm; `tensors` maps key suffix -> tensor."""

    name: str
    tensors: dict[str, torch.Tensor]
    kind: str

    def get(self, suffix: str) -> torch.Tensor | None:
        return self.tensors.get(suffix)

    @property
    def alpha(self) -> float | None:
        a = self.tensors.get("alpha")
        return None if a is None else float(a.float().item())

    @property
    def rank(self) -> int | None:
        """The low rank r that alpha is divided by (None: LoKr with no factored half)."""
        t = self.tensors
        if self.kind == "lora":
            return t["lora_down.weight"].shape[0]
        if self.kind == "loha":
            return t["hada_w1_b"].shape[0]
        b = t.get("lokr_w1_b", t.get("lokr_w2_b"))
        return None if b is None else b.shape[0]

    @property
    def scale(self) -> float:
        alpha, rank = self.alpha, self.rank
        return 1.0 if alpha is None or not rank else alpha / rank

    @property
    def dora(self) -> bool:
        return "dora_scale" in self.tensors

    @property
    def conv3x3(self) -> bool:
        """Whether this is a spatial (k > 1) conv module: compression caps it separately."""
        return any(t.dim() == 4 and t.shape[-1] > 1 for k, t in self.tensors.items() if k != "dora_scale")

    @property
    def merge_key(self) -> str:
        """The one factor ΔW is linear in: scaling it by w scales ΔW by exactly w."""
        if self.kind == "lora":
            return "lora_up.weight"
        if self.kind == "loha":
            return "hada_w1_a"
        return "lokr_w1" if "lokr_w1" in self.tensors else "lokr_w1_a"


def make_module(name: str, tensors: dict[str, torch.Tensor]) -> Module:
    """Classify and validate a tensor group; incomplete or mixed groups are errors."""
    keys = set(tensors)
    kinds = [kind for kind, own in (("lora", LORA_KEYS), ("loha", LOHA_KEYS), ("lokr", LOKR_KEYS))
             if keys & set(own)]
    if len(kinds) != 1:
        what = "mixes " + " and ".join(kinds) if kinds else "has no weight tensors"
        raise CharfwError(f"module {what} (keys: {', '.join(sorted(keys))})", field=name)
    kind = kinds[0]
    required = {"lora": [("lora_down.weight",), ("lora_up.weight",)],
                "loha": [("hada_w1_a",), ("hada_w1_b",), ("hada_w2_a",), ("hada_w2_b",)],
                "lokr": [("lokr_w1", "lokr_w1_a"), ("lokr_w2", "lokr_w2_a")]}[kind]
    if kind == "lokr":
        for full, a, b in (("lokr_w1", "lokr_w1_a", "lokr_w1_b"), ("lokr_w2", "lokr_w2_a", "lokr_w2_b")):
            if (a in keys) != (b in keys) or (full in keys) == (a in keys):
                raise CharfwError(f"LoKr module needs {full} or both {a} and {b}", field=name)
    if kind == "loha" and ("hada_t1" in keys) != ("hada_t2" in keys):
        raise CharfwError("LoHa module has only one of hada_t1/hada_t2", field=name)
    for options in required:
        if not keys & set(options):
            raise CharfwError(f"{kind} module lacks {' or '.join(options)}", field=name)
    return Module(name, dict(tensors), kind)


# ---- ΔW ----------------------------------------------------------------------------------

def _f(t: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    return t.to(device=device, dtype=dtype)


def _tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """core (r, r, k, k) ×₁ wa (r, out) ×₂ wb (r, in) -> (out, in·k·k)."""
    full = torch.einsum("ij...,ip,jq->pq...", t, wa, wb)
    return full.reshape(full.shape[0], -1)


def lora_factors(m: Module, dtype=torch.float32, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(up (out, r), down (r, in·k·k)) of a "lora" module, the Tucker core folded into down."""
    up = _f(m.tensors["lora_up.weight"], dtype, device)
    down = _f(m.tensors["lora_down.weight"], dtype, device)
    mid = m.get("lora_mid.weight")
    if mid is not None:
        down = torch.einsum("ij...,jc->ic...", _f(mid, dtype, device), down.reshape(down.shape[0], -1))
    return up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1)


def balanced_factors(up: torch.Tensor, down: torch.Tensor, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of c · up · down with equal norms (fp32 in, fp32 out).

    Trained LoRAs have a tiny `up` (it starts at zero): scaled alone it falls into fp16's
    subnormal range and loses most of its bits. Balanced, both factors sit near √‖ΔW‖,
    so casting them to fp16 keeps ΔW to fp16's own rounding.
    """
    nu, nd = float(up.norm()), float(down.norm())
    if c == 0 or nu == 0 or nd == 0:
        return up * c, down
    s_up = math.sqrt(abs(c) * nd / nu)
    return up * (math.copysign(s_up, c)), down * (abs(c) / s_up)


def folded(m: Module, w: float = 1.0, keep_alpha: bool = False) -> Module:
    """A "lora" module with ΔW times w and its alpha/rank scale folded into the factors, no alpha.

    Every loader then applies the same ΔW. Without an `alpha` tensor kohya's loaders
    (sd-scripts, A1111/Forge, ComfyUI, LyCORIS) use alpha = rank, i.e. scale 1, and so does
    diffusers, which otherwise names some alphas so that PEFT ignores them when ranks differ
    per module (sd-scripts' own resize outputs hit this). `keep_alpha`: only w goes into the
    factors and the alpha stays, for a file whose other modules keep theirs (diffusers gives a
    module without alpha the file's common one). Tucker (lora_mid) modules are left in their own
    form with w on `up`.
    """
    up_t, down_t = m.tensors["lora_up.weight"], m.tensors["lora_down.weight"]
    if "lora_mid.weight" in m.tensors:
        return Module(m.name, {**m.tensors, "lora_up.weight": (up_t.float() * w).to(up_t.dtype)}, m.kind)
    up, down = up_t.float().reshape(up_t.shape[0], -1), down_t.float().reshape(down_t.shape[0], -1)
    up, down = balanced_factors(up, down, w if keep_alpha else w * m.scale)
    tensors = {k: v for k, v in m.tensors.items() if keep_alpha or k != "alpha"}
    tensors["lora_up.weight"] = up.reshape(up_t.shape).to(up_t.dtype).contiguous()
    tensors["lora_down.weight"] = down.reshape(down_t.shape).to(down_t.dtype).contiguous()
    return Module(m.name, tensors, m.kind)


def delta_matrix(m: Module, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Dense ΔW (out, in·k·k), scale included. For tests, inspection and LoHa/LoKr -> LoRA."""
    t = {k: _f(v, dtype, device) for k, v in m.tensors.items()}
    if m.kind == "lora":
        up, down = lora_factors(m, dtype, device)
        return up @ down * m.scale
    if m.kind == "loha":
        if "hada_t1" in t:
            w1 = _tucker(t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"])
            w2 = _tucker(t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"])
        else:
            flat = {k: v.reshape(v.shape[0], -1) for k, v in t.items() if k.startswith("hada_w")}
            w1 = flat["hada_w1_a"] @ flat["hada_w1_b"]
            w2 = flat["hada_w2_a"] @ flat["hada_w2_b"]
        return w1 * w2 * m.scale
    w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
    if "lokr_w2" in t:
        w2 = t["lokr_w2"].reshape(t["lokr_w2"].shape[0], -1)
    elif "lokr_t2" in t:
        w2 = _tucker(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
    else:
        w2 = t["lokr_w2_a"] @ t["lokr_w2_b"].reshape(t["lokr_w2_b"].shape[0], -1)
    return torch.kron(w1, w2) * m.scale


def conv_kernel(m: Module) -> int | None:
    """Kernel size if the tensors show the layer is a Conv2d, 0 if they show a Linear,
    None if they cannot tell (LyCORIS stores non-Tucker LoHa/LoKr conv factors flattened)."""
    t = m.tensors
    for core in ("lora_mid.weight", "hada_t1", "lokr_t2"):
        if core in t:
            return t[core].shape[-1]
    for key in ("lora_down.weight", "hada_w1_b", "lokr_w2", "lokr_w2_b"):
        if key in t and t[key].dim() == 4:
            return t[key].shape[-1]
    return 0 if m.kind == "lora" else None


def layer_shape(m: Module, out: int, n: int, spec_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The layer weight shape (out, in[, k, k]) for a ΔW matrix of shape (out, n).

    `spec_shape` (from the architecture's module table) settles what the tensors leave open.
    """
    if spec_shape is not None:
        k2 = spec_shape[2] * spec_shape[3] if len(spec_shape) == 4 else 1
        if spec_shape[0] != out or spec_shape[1] * k2 != n:
            raise CharfwError(f"tensors give a {out}x{n} weight, the architecture {spec_shape}", field=m.name)
        return tuple(spec_shape)
    k = conv_kernel(m)
    if k is None:
        raise CharfwError("cannot tell whether this LyCORIS module is a conv or a linear layer; "
                          "pass the architecture (--arch)", field=m.name)
    return (out, n) if k == 0 else (out, n // (k * k), k, k)
