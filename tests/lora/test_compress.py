"""Compression equals a dense-SVD reference; ranks follow each method's definition."""

import pytest
import torch
from lora_factory import lora_tensors, make_tensors, write

from charfw.errors import CharfwError
from charfw.families import SD15
from charfw.lora import compress_file, load_lora
from charfw.lora.compress import choose_rank, rank_sv_cumulative, rank_sv_fro, rank_sv_ratio, sd_scripts_rank
from charfw.lora.keys import ModuleSpec, lora_module_specs
from charfw.lora.modules import delta_matrix
from charfw.lora.options import CompressOptions

# ---- rank rules on chosen singular values -------------------------------------------------

def S(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_sv_ratio_keeps_values_within_factor_p():
    s = S(8, 4, 2, 1, 0.5)
    assert [rank_sv_ratio(s, p) for p in (1, 1.9, 2, 7.9, 8, 16, 100)] == [1, 1, 2, 3, 4, 5, 5]


def test_sv_fro_smallest_rank_keeping_fraction_of_norm():
    s = S(4, 3)                      # norm 5; the first value alone keeps 4/5
    assert [rank_sv_fro(s, p) for p in (0.5, 0.8, 0.81, 1.0)] == [1, 1, 2, 2]


def test_sv_cumulative_smallest_rank_keeping_fraction_of_sum():
    s = S(5, 3, 2)                   # sum 10: prefixes 0.5, 0.8, 1.0
    assert [rank_sv_cumulative(s, p) for p in (0.3, 0.5, 0.51, 0.8, 0.81, 1.0)] == [1, 1, 2, 2, 3, 3]


def test_choose_rank_caps_and_zero():
    s = S(8, 4, 2, 1, 0.5)
    assert choose_rank(s, "sv_ratio", 100, max_rank=3) == 3
    assert choose_rank(s, "rank", 4, max_rank=128) == 4
    assert choose_rank(s, "rank", 9, max_rank=128) == 5   # never more values than there are
    assert choose_rank(S(0, 0), "sv_fro", 0.9, 128) == 1


def test_sd_scripts_rule_never_exceeds_the_input_rank(lora_file, tmp_path):
    """resize_lora.py's +1 may ask for rank 13 of a rank-12 module (33 of 32): capped at the input."""
    for compat in (False, True):
        compress_file(lora_file, tmp_path / "o.safetensors",
                      CompressOptions.of(method="sv_ratio", value=1e6, sd_scripts_compat=compat))
        assert {m.rank for m in load_lora(tmp_path / "o.safetensors").modules.values()} == {12}


def test_sd_scripts_compat_keeps_one_more():
    full = S(8, 4, 2, 1, 0.5, 0, 0, 0)            # dense spectrum: zeros past the LoRA rank
    assert rank_sv_ratio(full, 10) == 4 and sd_scripts_rank(full, "sv_ratio", 10, 128) == 5
    assert rank_sv_fro(full, 0.9) == 2 and sd_scripts_rank(full, "sv_fro", 0.9, 128) == 3
    assert rank_sv_cumulative(full, 0.6) == 2 and sd_scripts_rank(full, "sv_cumulative", 0.6, 128) == 3
    assert sd_scripts_rank(full, "sv_ratio", 10, max_rank=4) == 4
    assert sd_scripts_rank(S(1e-7, 0, 0), "sv_fro", 0.9, 128) == 1   # zero ΔW
    assert sd_scripts_rank(full, "rank", 6, 128) == 6


# ---- whole files against a dense SVD ---------------------------------------------------------

SPECS = [ModuleSpec("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", 40, 48),
         ModuleSpec("lora_unet_down_blocks_1_resnets_0_conv1", 16, 8, 3, True),
         ModuleSpec("lora_unet_down_blocks_1_attentions_0_proj_in", 24, 24, 1, True),
         ModuleSpec("lora_te_text_model_encoder_layers_0_mlp_fc1", 36, 20)]
MID = "lora_unet_down_blocks_1_resnets_1_conv2"


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    gen = torch.Generator().manual_seed(7)
    modules = {s.name: lora_tensors(s, 12, gen, decay=0.6, alpha=6) for s in SPECS}
    mid = make_tensors("locon_mid", out=16, inp=16, rank=12, alpha=3, gen=gen)
    mid["lora_up.weight"] *= (0.6 ** torch.arange(12.0)).reshape(1, 12, 1, 1)
    modules[MID] = mid
    return write(tmp_path_factory.mktemp("c") / "in.safetensors", modules,
                 {"ss_network_dim": "12", "ss_training_comment": "trained", "ss_tag_frequency": "{}"})


def sd_scripts_reference(s: torch.Tensor, method: str, p: float) -> int:
    """sd-scripts' documented rule on the dense spectrum: count (or first index reaching p, + 1),
    clamped to [1, len - 1], plus one."""
    if method == "sv_ratio":
        k = int((s > s[0] / p).sum())
    else:
        v = s ** 2 if method == "sv_fro" else s
        frac = torch.cumsum(v, 0) / v.sum()
        k = next(i for i, f in enumerate(frac) if f >= (p ** 2 if method == "sv_fro" else p)) + 1
    return max(1, min(k, len(s) - 1)) + 1


def reference_rank(s: torch.Tensor, method: str, p: float) -> int:
    """The definitions of docs/rules.md §9, written independently of the implementation."""
    if method == "sv_ratio":
        return int((s >= s[0] / p).sum())
    if method == "rank":
        return int(p)
    v = s ** 2 if method == "sv_fro" else s
    frac = torch.cumsum(v, 0) / v.sum()
    target = p ** 2 if method == "sv_fro" else p
    return next(i + 1 for i, f in enumerate(frac) if f >= target)


@pytest.mark.parametrize("method, param", [("sv_ratio", 8.0), ("sv_fro", 0.95), ("sv_cumulative", 0.7),
                                           ("rank", 5)])
@pytest.mark.parametrize("rule, compat", [("sd-scripts", False), ("exact", False), ("sd-scripts", True)])
def test_compression_equals_dense_svd(lora_file, tmp_path, method, param, rule, compat):
    dst = tmp_path / "out.safetensors"
    report = compress_file(lora_file, dst, CompressOptions.of(method=method, value=param, dtype="fp32",
                                                             rank_rule=rule, sd_scripts_compat=compat))
    before, after = load_lora(lora_file).modules, load_lora(dst).modules
    assert report["compressed"] == len(before) == len(after)
    for name, m in before.items():
        dense = delta_matrix(m, torch.float64)
        u, s, vh = torch.linalg.svd(dense, full_matrices=False)
        k = reference_rank(s[: m.rank], method, param)
        if rule == "sd-scripts" and method != "rank":   # resize_lora.py keeps one more, within the input's rank
            k = min(sd_scripts_reference(s, method, param), m.rank)
        new = after[name]
        assert new.rank == k, name
        assert new.alpha is None and new.scale == 1             # strength folded into the factors
        assert "lora_mid.weight" not in new.tensors
        assert new.tensors["lora_down.weight"].shape[1:] == (
            m.tensors["lora_down.weight"].shape[1:] if name != MID else (16, 3, 3))
        ref = (u[:, :k] * s[:k]) @ vh[:k]
        got = delta_matrix(new, torch.float64)
        assert torch.linalg.norm(got - ref) <= 1e-4 * torch.linalg.norm(ref), name
    meta = load_lora(dst).metadata
    assert meta["ss_tag_frequency"] == "{}"                       # input metadata kept
    if method == "rank":
        assert meta["ss_training_comment"] == "dimension is resized from 12 to 5; trained"
        assert meta["ss_network_dim"] == "5"
    else:
        assert meta["ss_training_comment"] == f"Dynamic resize with {method}: {param} from 12; trained"


def test_caps_dtype_and_split(lora_file, tmp_path):
    dst = tmp_path / "capped.safetensors"
    compress_file(lora_file, dst, CompressOptions.of(method="sv_ratio", value=1000, max_rank=4, max_conv_rank=2))
    out = load_lora(dst)
    for name, m in out.modules.items():
        assert m.rank == (2 if m.conv3x3 else 4), name
        assert m.tensors["lora_up.weight"].dtype == torch.float16
        assert "alpha" not in m.tensors                          # alpha = rank for every loader
        down = m.tensors["lora_down.weight"].float().reshape(m.rank, -1)
        up = m.tensors["lora_up.weight"].float().reshape(-1, m.rank)
        # default split: √S on each side, so both factors carry the same column/row norms
        torch.testing.assert_close(down.norm(dim=1), up.norm(dim=0), rtol=2e-3, atol=1e-6)
    assert out.metadata["ss_network_dim"] == "Dynamic"
    compress_file(lora_file, tmp_path / "bf.safetensors",
                  CompressOptions.of(method="rank", value=3, dtype="bf16", sd_scripts_compat=True))
    for m in load_lora(tmp_path / "bf.safetensors").modules.values():
        assert m.tensors["lora_down.weight"].dtype == torch.bfloat16
        down = m.tensors["lora_down.weight"].float().reshape(m.rank, -1)
        torch.testing.assert_close(down.norm(dim=1), torch.ones(m.rank), rtol=1e-2, atol=1e-2)  # S on up


def test_lora_modules_never_form_dense_delta(lora_file, tmp_path, monkeypatch):
    import charfw.lora.compress as compress

    def forbidden(*args, **kwargs):
        raise AssertionError("dense ΔW formed for a LoRA module")

    real_svd = torch.linalg.svd

    def core_only_svd(a, *args, **kwargs):
        assert max(a.shape) <= 12, f"SVD of a {tuple(a.shape)} matrix: only the r x r core is allowed"
        return real_svd(a, *args, **kwargs)

    monkeypatch.setattr(compress, "delta_matrix", forbidden)
    monkeypatch.setattr(torch.linalg, "svd", core_only_svd)
    report = compress_file(lora_file, tmp_path / "o.safetensors", CompressOptions.of(method="sv_fro", value=0.9))
    assert report["compressed"] == 5


def test_loha_lokr_unchanged_unless_to_lora(tmp_path):
    specs = lora_module_specs(SD15, True)
    q = specs["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]   # 320 x 320 Linear
    conv = specs["lora_unet_down_blocks_0_resnets_0_conv1"]                              # 320 x 320 x 3 x 3
    gen = torch.Generator().manual_seed(9)
    loha = make_tensors("loha", out=q.out_dim, inp=q.in_dim, rank=4, gen=gen)
    tucker = make_tensors("loha_tucker", out=conv.out_dim, inp=conv.in_dim, rank=4, gen=gen)
    lokr = make_tensors("lokr_full", out=q.out_dim, inp=q.in_dim, gen=gen)
    lokr_name = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"     # 768 x 768
    lokr_te = make_tensors("lokr_factored", out=768, inp=768, rank=4, gen=gen)
    src = write(tmp_path / "ly.safetensors", {q.name: loha, conv.name: tucker, lokr_name: lokr_te,
                                              q.name.replace("to_q", "to_k"): lokr})
    before = load_lora(src).modules

    compress_file(src, tmp_path / "same.safetensors", CompressOptions.of(dtype="fp32"))
    same = load_lora(tmp_path / "same.safetensors").modules
    for name, m in before.items():
        assert same[name].kind == m.kind
        assert all(torch.equal(same[name].tensors[k], t) for k, t in m.tensors.items())

    report = compress_file(src, tmp_path / "lora.safetensors",
                           CompressOptions.of(method="sv_fro", value=0.999, dtype="fp32", to_lora=True))
    assert report["compressed"] == 4
    after = load_lora(tmp_path / "lora.safetensors").modules
    for name, m in before.items():
        new = after[name]
        assert new.kind == "lora"
        dense = delta_matrix(m, torch.float64)
        u, s, vh = torch.linalg.svd(dense, full_matrices=False)
        k = sd_scripts_reference(s, "sv_fro", 0.999)    # the default rule, on the dense spectrum
        assert new.rank == min(k, 128)
        ref = (u[:, :new.rank] * s[:new.rank]) @ vh[:new.rank]
        assert torch.linalg.norm(delta_matrix(new, torch.float64) - ref) <= 1e-4 * torch.linalg.norm(ref)
    assert after[conv.name].tensors["lora_down.weight"].shape[1:] == (320, 3, 3)
    assert after[q.name].tensors["lora_down.weight"].dim() == 2


def test_to_lora_needs_a_known_layer_shape(tmp_path):
    src = write(tmp_path / "odd.safetensors", {"lora_unet_custom_layer": make_tensors("loha")})
    with pytest.raises(CharfwError, match="conv or a linear") as err:
        compress_file(src, tmp_path / "o.safetensors", CompressOptions.of(to_lora=True))
    assert "lora_unet_custom_layer" in str(err.value) and str(src) in str(err.value)


@pytest.mark.parametrize("kwargs, message", [(dict(method="sv_fro", value=1.5), "fraction"),
                                             (dict(method="sv_ratio", value=0.5), "≥ 1"),
                                             (dict(method="rank", value=2.5), "positive integer"),
                                             (dict(method="svd", value=1), "unknown compression"),
                                             (dict(dtype="fp8"), "unknown dtype"),
                                             (dict(max_rank=0), "max-rank")])
def test_bad_settings(lora_file, tmp_path, kwargs, message):
    with pytest.raises(CharfwError, match=message):
        compress_file(lora_file, tmp_path / "o.safetensors", CompressOptions.of(**kwargs))


def test_zero_module_and_device(tmp_path):
    zero = make_tensors("c3lier_conv3x3", gen=torch.Generator().manual_seed(3))
    zero["lora_up.weight"].zero_()                    # an untrained module: ΔW = 0
    src = write(tmp_path / "z.safetensors", {"lora_unet_down_blocks_0_resnets_0_conv1": zero})
    for compat in (False, True):
        compress_file(src, tmp_path / "o.safetensors", CompressOptions.of(method="sv_fro", value=0.9, sd_scripts_compat=compat))
        (m,) = load_lora(tmp_path / "o.safetensors").modules.values()
        assert m.rank == 1 and torch.count_nonzero(delta_matrix(m)) == 0
    with pytest.raises(CharfwError, match="device"):
        compress_file(src, tmp_path / "o.safetensors", device="tpu")


def test_threads_give_the_same_file(lora_file, tmp_path):
    """Modules factorized side by side come out in file order, byte for byte as on one thread."""
    one, many = tmp_path / "one.safetensors", tmp_path / "many.safetensors"
    compress_file(lora_file, one, CompressOptions.of(method="sv_fro", value=0.9), threads=1)
    compress_file(lora_file, many, CompressOptions.of(method="sv_fro", value=0.9), threads=4)
    assert one.read_bytes() == many.read_bytes()


@pytest.mark.parametrize("rank_deficient", [False, True])
def test_r_factor_matches_qr(rank_deficient):
    """RᵀR = aᵀa from the Gram matrix's Cholesky factor; a rank-deficient a (a zero column: an
    untrained direction) falls back to QR, and both give the singular values of a to float32 precision."""
    from charfw.lora.compress import r_factor

    a = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    if rank_deficient:
        a[:, 3] = 0
    r = r_factor(a).double()
    exact = torch.linalg.svdvals(a.double())
    assert torch.allclose(r.T @ r, a.double().T @ a.double(), rtol=1e-5, atol=1e-4)   # a float32 Gram matrix
    assert torch.allclose(torch.linalg.svdvals(r), exact, atol=1e-5 * float(exact[0]))


def test_streamed_file_equals_the_one_shot_modules(lora_file, tmp_path):
    """compress_file hashes the new factors as they are made and streams them into the file; the same
    modules made one at a time (compress_module) and saved whole give the same bytes."""
    from charfw.lora.compress import compress_module
    from charfw.lora.io import LoraReader, save_lora
    from charfw.lora.metadata import record_compress

    options = CompressOptions.of(method="sv_fro", value=0.9)
    streamed = tmp_path / "streamed.safetensors"
    compress_file(lora_file, streamed, options, threads=2)
    with LoraReader(lora_file) as reader:
        made = [compress_module(m, options) for m in reader]
        metadata = dict(reader.metadata)
    modules = [m for m, _ in made]
    record_compress(metadata, method="sv_fro", param=0.9, old_dim=12, modules=[m for m in modules if m.kind == "lora"],
                    options={"rank_rule": options.rank_rule, "max_rank": options.max_rank,
                             "max_conv_rank": options.max_conv_rank, "dtype": options.dtype,
                             "sd_scripts_compat": options.sd_scripts_compat, "to_lora": options.to_lora})
    save_lora(tmp_path / "whole.safetensors", modules, metadata)
    assert streamed.read_bytes() == (tmp_path / "whole.safetensors").read_bytes()


@pytest.mark.parametrize("out, rank, magnitude", [(64, 128, 3e-3), (320, 32, 1e-4), (40, 40, 1.0)])
def test_small_and_wide_modules_stay_finite(tmp_path, out, rank, magnitude):
    """A module whose up has fewer rows than the rank (SDXL's 64-wide emb layers at dim 128: R comes from
    QR, not square) and the small values of a freshly trained LoRA: ΔW matches a dense SVD at every
    output dtype."""
    from charfw.lora.compress import compress_module
    from charfw.lora.modules import Module

    gen = torch.Generator().manual_seed(5)
    decay = 0.9 ** torch.arange(rank, dtype=torch.float32)
    up = torch.randn(out, rank, generator=gen) * magnitude * decay
    down = torch.randn(rank, 96, generator=gen) * magnitude
    m = Module("lora_unet_input_blocks_4_0_emb_layers_1", {"lora_up.weight": up.half(), "lora_down.weight": down.half(),
                                                         "alpha": torch.tensor(rank / 2)}, "lora")
    dense = delta_matrix(m, torch.float64)
    u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    for dtype, tolerance in (("fp32", 1e-4), ("fp16", 3e-3)):
        new, k = compress_module(m, CompressOptions.of(method="sv_ratio", value=16, dtype=dtype))
        got = delta_matrix(new, torch.float64)
        assert torch.isfinite(got).all(), dtype
        ref = (u[:, :k] * s[:k]) @ vh[:k]
        assert torch.linalg.norm(got - ref) <= tolerance * torch.linalg.norm(ref), dtype


@pytest.mark.parametrize("failing", [("float32", "nan"), ("float32", "raise"), ("float32+float64", "raise")])
def test_core_svd_survives_a_lapack_failure(monkeypatch, failing):
    """float32 eigh has failed on real modules of the example's tiny SDXL build: first NaN (eigenvalues
    spanning 3e-5 down to 1e-36, before the core was scaled to O(1)), later "failed to converge" on an
    ordinary 64x64 matrix. A failed float32 eigh is redone in float64, a failed float64 one by an SVD:
    simulated here by an eigh that returns NaN or raises for the dtypes named."""
    from charfw.lora import compress as C

    real = torch.linalg.eigh
    dtypes, how = failing

    def flaky(a):
        if str(a.dtype).removeprefix("torch.") in dtypes.split("+"):
            if how == "raise":
                raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
            w, v = real(a)
            return w * float("nan"), v
        return real(a)

    gen = torch.Generator().manual_seed(0)
    core = (torch.randn(64, 128, generator=gen) * 1e-3).float()
    monkeypatch.setattr(C.torch.linalg, "eigh", flaky)
    u, s, vh = C.core_svd(core)
    assert u.dtype == s.dtype == vh.dtype == torch.float32
    assert torch.isfinite(u).all() and torch.isfinite(s).all() and torch.isfinite(vh).all()
    torch.testing.assert_close(s.double(), torch.linalg.svdvals(core.double()), rtol=1e-4, atol=1e-9)
    torch.testing.assert_close((u * s) @ vh, core, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("r", [16, 64, 127, 128])
def test_blocked_gram_is_the_gram(r):
    """The two-block Gram (its off-diagonal block made once) is aᵀa, exactly symmetric off the diagonal
    blocks, for ranks on both sides of the blocking threshold and an odd one."""
    from charfw.lora.compress import gram

    a = torch.randn(3000, r, generator=torch.Generator().manual_seed(r), dtype=torch.float64).float()
    g = gram(a)
    assert g.shape == (r, r)
    torch.testing.assert_close(g.double(), a.double().T @ a.double(), rtol=1e-5, atol=1e-3)
    h = r // 2
    if r >= 64:
        assert torch.equal(g[:h, h:], g[h:, :h].T)
