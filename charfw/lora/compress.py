"""SVD compression ("resize") of LoRA files without ever forming ΔW (docs/rules.md §9).

ΔW = up · down has rank ≤ r, so its SVD comes from the factors: up (out × r) = Q_up R_up and
downᵀ (in·k·k × r) = Q_down R_down (R from the r × r Gram matrix, see r_factor), take the SVD of
the r × r core R_up · R_downᵀ, and rotate the kept singular vectors back (see LowRankSVD: the Q
factors are never formed). That costs O((out + in·k·k) · r²) instead of the
O(out · (in·k·k) · min(out, in·k·k)) of a dense SVD. The r × r work is float64 for an fp32 output
(ΔW within ~3e-6 of a dense SVD) and float32 for fp16/bf16 outputs (~1e-4: under their own
rounding, 13% faster). LoCon's Tucker `lora_mid` is folded into down first, so such a module
comes out as an ordinary conv LoRA (loaders all read that).

A file is compressed in one pass over its modules (compress_file): each is read once and its
new factors kept, and hashed as they come while the next modules are factorized; the ranks then
fix the output's header and the factors are written into place (lora.io.StreamedLora). An earlier
two-pass design (ranks first, then each module read again) held only one module per thread, but
converting every input to float32 twice and hashing after the compute cost more than the memory
it saved: the output held is at most the input's size (bench/compress.py, SD1.5 dims 32-128:
peak memory 1.35-1.5x, time 1.04-1.3x of a process that merely reads and writes the file).

Rank rules, on the singular values S (descending). The default, `rank_rule: sd-scripts`,
is sd-scripts' networks/resize_lora.py choice (unchanged on its main branch since 2023):
on the dense spectrum (min(out, in·k·k) values) it counts S_i > S_0/p (sv_ratio) or finds
the first index whose cumulative share reaches p, plus one (sv_fro, sv_cumulative), clamps
that to [1, len − 1], keeps one more, and gives 1 for a zero ΔW; so a user comparing files
gets the same ranks and sizes. `rank_rule: exact` keeps the smallest rank meeting the
criterion instead:
  sv_ratio p       keep S_i ≥ S_0 / p
  sv_fro p         smallest k with ‖S_:k‖₂ ≥ p · ‖S‖₂
  sv_cumulative p  smallest k with Σ S_:k ≥ p · Σ S
  rank R           k = R
Either way the rank is capped at max rank (max conv rank for 3x3 convs) and at the input's
rank: sd-scripts' rule may ask for one more than the module has. `sd_scripts_compat` also
puts S wholly on up as sd-scripts does, where charfw by default splits √S between up and
down, which keeps both factors in fp16's comfortable range.

The module's alpha/rank scale is folded into the new factors and the alpha tensor left out
(loaders then use alpha = rank), so the strength is unchanged and every loader applies the
same ΔW (diffusers' kohya converter lets PEFT ignore some alphas when ranks differ). LoHa/LoKr
modules are copied unless `to_lora`, which turns each into a LoRA module through a dense
ΔW and its SVD (one module at a time). Output tensors are cast to the output dtype;


The work is hundreds of small independent factorizations, so the entry points (the CLI, the build)
run torch on one CPU thread (charfw.process.cpu_threads) and compress_file spreads the modules
over `threads` Python threads (torch's kernels release the GIL): two OpenMP threads on a CPU
shared with other work made a tall QR 7x and an r×r SVD 80x slower (measured: 168 vs 25 ms,
194 vs 2.4 ms), while single-threaded kernels side by side never wait for each other.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from charfw.errors import CharfwError
from charfw.families import Family, from_lora
from charfw.fsutil import atomic_path
from charfw.lora.io import LoraReader, StreamedLora
from charfw.lora.keys import lora_module_specs
from charfw.lora.metadata import HashStream, record_compress, tensor_bytes
from charfw.lora.modules import Module, delta_matrix, layer_shape, lora_factors
from charfw.lora.options import CompressOptions

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_EPS = 1e-9      # relative slack so a criterion met exactly on paper is met in floats
_MIN_SV = 1e-6   # sd-scripts treats a ΔW whose largest singular value is below this as zero


# ---- rank rules (pure) ---------------------------------------------------------------

def _fraction_rank(values: torch.Tensor, p: float) -> int:
    """Smallest k whose prefix sum reaches fraction p of the total (≥ 1)."""
    cum = torch.cumsum(values.double(), 0)
    total = float(cum[-1])
    if total <= 0:
        return 1
    return min(int((cum < p * total * (1 - _EPS)).sum()) + 1, len(values))


def rank_sv_ratio(S: torch.Tensor, p: float) -> int:
    S = S.double()
    return max(1, int((S >= S[0] / p * (1 - _EPS)).sum())) if S[0] > 0 else 1


def rank_sv_fro(S: torch.Tensor, p: float) -> int:
    return _fraction_rank(S.double() ** 2, p * p)


def rank_sv_cumulative(S: torch.Tensor, p: float) -> int:
    return _fraction_rank(S.double(), p)


_RULES = {"sv_ratio": rank_sv_ratio, "sv_fro": rank_sv_fro, "sv_cumulative": rank_sv_cumulative}


def choose_rank(S: torch.Tensor, method: str, param: float, max_rank: int) -> int:
    """The rank charfw keeps for singular values S under `method`."""
    k = int(param) if method == "rank" else _RULES[method](S, param)
    return max(1, min(k, max_rank, len(S)))


def sd_scripts_rank(S_full: torch.Tensor, method: str, param: float, max_rank: int) -> int:
    """sd-scripts' resize_lora.py rank choice on the full dense spectrum S_full."""
    S = S_full.double()
    n = len(S)
    if method == "rank":
        k = int(param)
    elif method == "sv_ratio":
        k = int((S > S[0] / param).sum())
    else:
        values, target = (S, param) if method == "sv_cumulative" else (S ** 2, param ** 2)
        cum = torch.cumsum(values, 0) / values.sum()
        k = int(torch.searchsorted(cum, torch.tensor(target, dtype=cum.dtype))) + 1
    if method != "rank":
        k = max(1, min(k, n - 1)) + 1
    if float(S[0]) <= _MIN_SV:
        return 1
    return min(k, max_rank, n)


# ---- the low-rank SVD -------------------------------------------------------------------

@dataclass
class LowRankSVD:
    """SVD of ΔW = up · down known through r×r pieces only.

    With up = Q_u R_u, downᵀ = Q_d R_d and the core R_u R_dᵀ = Uc S Vcᵀ, the singular vectors
    are U = Q_u Uc, V = Q_d Vc. Q is never formed: U_k = ΔW V_k / S_k = up (R_dᵀ Vc_k) / S_k
    and V_kᵀ = (Uc_kᵀ R_u) down / S_k, so the new factors are two GEMMs with r×k matrices.
    """

    up: torch.Tensor      # (out, r)
    down: torch.Tensor    # (r, n)
    r_up: torch.Tensor    # R factors and core SVD (core_dtype)
    r_down: torch.Tensor
    uc: torch.Tensor
    S: torch.Tensor
    vhc: torch.Tensor

    @classmethod
    def of(cls, up: torch.Tensor, down: torch.Tensor, core_dtype: torch.dtype = torch.float64) -> "LowRankSVD":
        """`core_dtype`: the r×r work's precision. float64 gives ΔW to ~3e-6 of a dense SVD (bench/compress.py);
        float32, 13% faster over a whole file, to ~1e-4: still under the rounding of an fp16 or bf16 file."""
        r_up, r_down = r_factor(up).to(core_dtype), r_factor(down.T).to(core_dtype)
        uc, s, vhc = core_svd(r_up @ r_down.T)
        return cls(up, down, r_up, r_down, uc, s, vhc)

    def rotations(self, k: int, s_on_up: bool = False, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(to_up (r, k), to_down (k, r)): the new factors of scale · ΔW's top k triplets are up · to_up
        and to_down · down, i.e. U√S and √S Vᵀ (or US, Vᵀ), the scale split as √|scale| on each (on
        up alone with s_on_up). U√S and √S Vᵀ have equal norms (both √ΣS), so the factors come out
        balanced for fp16 (modules.balanced_factors) with no further pass over them; the scales ride
        on these r×k matrices, not on the tall results.

        Directions past the available values or with S = 0 come out as zeros.
        """
        avail = min(k, len(self.S))
        s = self.S[:avail]
        inv = torch.where(s > 0, 1 / s, torch.zeros_like(s))
        if s_on_up:
            up_scale, down_scale = torch.full_like(s, scale), inv
        else:
            root = math.sqrt(abs(scale))
            up_scale, down_scale = inv.sqrt() * math.copysign(root, scale), inv.sqrt() * root
        to_up = (self.r_down.T @ self.vhc[:avail].T) * up_scale            # (r, avail)
        to_down = down_scale[:, None] * (self.uc[:, :avail].T @ self.r_up)  # (avail, r)
        dtype = self.up.dtype
        to_up, to_down = _pad(to_up.to(dtype).T, to_down.to(dtype).T, k)   # padded as (k, r) and (r, k)
        return to_up.T.contiguous(), to_down.T.contiguous()

    def factors(self, k: int, s_on_up: bool = False, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """New (up (out, k), down (k, n)): see rotations."""
        to_up, to_down = self.rotations(k, s_on_up, scale)
        return self.up @ to_up, to_down @ self.down


def r_factor(a: torch.Tensor) -> torch.Tensor:
    """An upper-triangular R with RᵀR = aᵀa for a tall (m, r) matrix, in a's dtype: the Cholesky factor of
    the Gram matrix, one GEMM (in float32 2.7x faster than in float64, and 7x faster than Householder
    QR of the tall matrix). A rank-deficient `a` (a LoRA whose up is still all zeros, say) has no
    Cholesky factor: QR then."""
    chol, info = torch.linalg.cholesky_ex(gram(a))
    if int(info) == 0:
        return chol.T
    return torch.linalg.qr(a, mode="r").R


def gram(a: torch.Tensor) -> torch.Tensor:
    """aᵀa. One GEMM computes both triangles of the symmetric result, and torch has no SYRK; in two column
    blocks the off-diagonal block is made once and mirrored: 3/4 of the flops, 15-17% faster at r = 128
    (measured on the down factors of an SD1.5 LoRA), the largest GEMM of a compression."""
    r = a.shape[1]
    if r < 64:
        return a.T @ a
    left, right = a[:, :r // 2], a[:, r // 2:]
    cross = left.T @ right
    return torch.cat([torch.cat([left.T @ left, cross], 1), torch.cat([cross.T, right.T @ right], 1)])


def core_svd(core: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD (U, S descending, Vᵀ) of a small square matrix through the symmetric eigenproblem of
    core·coreᵀ (1.7x faster than an SVD at r = 128); singular values below √eps of the largest (1e-8
    in float64, 3e-4 in float32), far under any rank rule's cut, come out as zeros with zero right
    vectors."""
    peak = float(core.abs().max()) if core.numel() else 0.0
    if peak == 0.0:
        n = core.shape[0]
        return torch.eye(n, dtype=core.dtype), core.new_zeros(n), core.new_zeros(core.shape)
    unit = core / peak   # O(1) entries: a trained LoRA's tiny values would underflow in float32 (NaN from LAPACK)
    eigenvalues, u = _eigh_descending(unit @ unit.T)
    s = eigenvalues.clamp_min(0).sqrt() * peak
    floor = torch.finfo(core.dtype).eps ** 0.5
    s = torch.where(s > s[0] * floor, s, torch.zeros_like(s)) if len(s) else s
    inv = torch.where(s > 0, 1 / s, torch.zeros_like(s))
    return u, s, inv[:, None] * (u.T @ core)


def _eigh_descending(sym: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and vectors of a symmetric PSD matrix, in its dtype. float32 LAPACK now and
    then fails on an ordinary matrix (NaN, or "failed to converge": a trained 64x128 SDXL module in CI):
    that is redone in float64, and an SVD (for a PSD matrix the same decomposition) is the last resort."""
    for attempt in (sym, sym.double()):
        try:
            values, vectors = torch.linalg.eigh(attempt)
        except torch.linalg.LinAlgError:
            continue
        if torch.isfinite(values).all() and torch.isfinite(vectors).all():
            return values.flip(0).to(sym.dtype), vectors.flip(1).to(sym.dtype)
    u, values, _ = torch.linalg.svd(sym.double())
    return values.to(sym.dtype), u.to(sym.dtype)


def _dense_factors(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, k: int,
                   s_on_up: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The same factors from a dense SVD (LoHa/LoKr conversion)."""
    avail = min(k, len(S))
    if s_on_up:
        return _pad(U[:, :avail] * S[:avail], Vh[:avail], k)
    root = S[:avail].sqrt()
    return _pad(U[:, :avail] * root, root[:, None] * Vh[:avail], k)


def _pad(up: torch.Tensor, down: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero directions up to rank k: sd-scripts' rule may keep more values than ΔW has."""
    missing = k - up.shape[1]
    if missing > 0:
        up = torch.cat([up, up.new_zeros(up.shape[0], missing)], 1)
        down = torch.cat([down, down.new_zeros(missing, down.shape[1])], 0)
    return up, down


def _check_device(device: str) -> None:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise CharfwError(f"unknown device {device!r}; use cpu or cuda")
    if device != "cpu" and not torch.cuda.is_available():
        raise CharfwError(f"--device {device} asked for, but no CUDA device is available")


def module_rank(o: CompressOptions, S: torch.Tensor, full_len: int, conv3x3: bool) -> int:
    """The rank kept for a module with singular values S (of a ΔW whose full spectrum has full_len values)."""
    cap = min(o.rank_cap(conv3x3), len(S))  # never more than the input has
    if o.rank_rule == "sd-scripts" or o.sd_scripts_compat:  # counted on the dense spectrum: zeros past r
        tail = torch.zeros(max(0, full_len - len(S)), dtype=torch.float64)
        return sd_scripts_rank(torch.cat([S.double().cpu(), tail]), o.method, o.param, cap)
    return choose_rank(S, o.method, o.param, cap)


def compress_module(m: Module, s: CompressOptions, device: str = "cpu",
                    spec_shape: tuple[int, ...] | None = None) -> tuple[Module, int | None]:
    """(new module, new rank or None if left unchanged) for one module, its tensors on the CPU in the
    output dtype. A LoRA module goes through the r×r work (LowRankSVD); a LoHa/LoKr module is kept, or
    with `to_lora` converted through its dense ΔW."""
    out_dtype, dev = DTYPES[s.dtype], torch.device(device)
    extra = {"dora_scale": m.tensors["dora_scale"]} if m.dora else {}
    if m.kind == "lora":
        up, down = lora_factors(m, torch.float32, dev)
        svd = LowRankSVD.of(up, down, torch.float64 if out_dtype == torch.float32 else torch.float32)
        k = module_rank(s, svd.S, min(up.shape[0], down.shape[1]), m.conv3x3)
        new_up, new_down = svd.factors(k, s_on_up=s.sd_scripts_compat, scale=m.scale)
        shape = layer_shape(m, up.shape[0], down.shape[1])
    elif not s.to_lora:
        return Module(m.name, {k_: v if k_ == "alpha" else v.to(out_dtype) for k_, v in m.tensors.items()},
                      m.kind), None
    else:
        delta = delta_matrix(m, torch.float32, dev)
        shape = layer_shape(m, *delta.shape, spec_shape)
        U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
        k = module_rank(s, S, len(S), len(shape) == 4 and shape[-1] > 1)
        new_up, new_down = _dense_factors(U, S, Vh, k, s.sd_scripts_compat)
    # no alpha: alpha = rank for every loader, so all apply the same ΔW (see modules.folded)
    conv = len(shape) == 4
    tensors = {"lora_down.weight": new_down.reshape((k, *shape[1:]) if conv else (k, shape[1])),
               "lora_up.weight": new_up.reshape((shape[0], k, 1, 1) if conv else (shape[0], k)), **extra}
    return Module(m.name, {suffix: t.to("cpu", out_dtype).contiguous() for suffix, t in tensors.items()}, "lora"), k


def compress_file(src: str | Path, dst: str | Path, options: CompressOptions | None = None, *,
                  device: str = "cpu", progress: bool = False, family: Family | str | None = None,
                  threads: int = 1) -> dict:
    """Compress `src` into `dst` (written atomically), `threads` modules at a time on the CPU (each on
    one torch thread: the caller sets torch's own count to 1, see the module docstring).

    Every module is read once and its new tensors kept: their ranks fix the output's header, so
    nothing can be written before the last module is done. The main thread hashes each module's
    tensors as it comes, while the threads compute the next ones (sd-scripts' hash runs over the data
    in the file's order: modules arrive in it, as a rule); then the threads write the tensors to their
    places in the file (lora.io.StreamedLora). The input is never held whole: peak memory is the
    output plus one module per thread. Returns a report: modules compressed/unchanged and
    {name: (old rank, new rank)}.
    """
    s = options or CompressOptions()
    _check_device(device)
    workers = max(1, threads if device == "cpu" else 1)
    with LoraReader(src) as reader, _pool(workers) as map_:
        specs = _specs_for(reader.names, family) if s.to_lora else {}

        @torch.no_grad()
        def one(name: str) -> tuple[int | None, Module, int | None]:
            try:
                spec = specs.get(name)
                m = reader.read(name)
                new, rank = compress_module(m, s, device, spec.weight_shape if spec else None)
            except CharfwError as exc:
                raise CharfwError(exc.message, file=src, field=exc.field) from None
            return m.rank, new, rank

        tensors, ranks, compressed, stream, modules = {}, {}, [], HashStream(), 0
        done = map_(one, reader.names)
        for old, new, rank in tqdm(done, total=len(reader.names), desc=f"compress {Path(src).name}", unit="module",
                                   disable=not progress, leave=False):
            for suffix in sorted(new.tensors):
                tensors[f"{new.name}.{suffix}"] = new.tensors[suffix]
                stream.update(tensor_bytes(new.tensors[suffix]))
            modules += 1
            if rank is not None:
                ranks[new.name] = (old, rank)
                compressed.append(new)
        if not tensors:
            raise CharfwError("nothing to write: no module left", file=dst)
        metadata = dict(reader.metadata)
        record_compress(metadata, method=s.method, param=s.param,
                        old_dim=max((old for old, _ in ranks.values() if old), default=None),
                        modules=compressed, options={k: v for k, v in asdict(s).items() if k not in ("method", "value")})
        with atomic_path(dst) as tmp:
            out = StreamedLora(tmp, {key: (t.dtype, tuple(t.shape)) for key, t in tensors.items()}, metadata)
            try:
                out.adopt(stream, list(tensors))
                writes = map_(lambda key: out.put(key, tensors[key]), list(tensors))
                if not out.hashed_all:              # the modules came out of the file's order
                    for key in out.order:
                        out.hash_in_order(key, tensors[key])
                for _ in writes:                    # (one thread's plain map writes here)
                    pass
                out.finish(metadata)
            finally:
                out.close()
    return {"modules": modules, "compressed": len(ranks), "unchanged": modules - len(ranks), "ranks": ranks}


@contextmanager
def _pool(workers: int):
    """An order-keeping map over `workers` threads (the plain map for one)."""
    if workers == 1:
        yield map
        return
    with ThreadPoolExecutor(workers) as pool:
        yield pool.map


def _specs_for(names: list[str], family: Family | str | None):
    """The family's module table, for LyCORIS factors that hide the conv kernel."""
    try:
        return lora_module_specs(from_lora(names, family))
    except CharfwError:
        if family:
            raise
        return {}


def compress_suffix(method: str, param: float) -> str:
    """File-name suffix for a compression, as the seed named its outputs: -SvR16, -SvF0.9, -R32."""
    tag = {"sv_ratio": "SvR", "sv_fro": "SvF", "sv_cumulative": "SvC", "rank": "R"}[method]
    return f"-{tag}{param:g}"
