"""Mamba-2 mixer: mamba_ssm.Mamba2 parameter names/shapes, backends, norms, packing."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from genemamba_scvi.nn import GeneMambaEncoder, Mamba2Mixer, RMSNorm, RMSNormGated, resolve_backend
from genemamba_scvi.nn import ssd as ssd_mod

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error path")


def test_state_dict_matches_mamba2_layout():
    d_model, d_state, expand, headdim, ngroups = 512, 64, 2, 64, 1
    mixer = Mamba2Mixer(d_model, backend="torch")
    d_inner = expand * d_model
    nheads = d_inner // headdim
    expected = {
        "dt_bias": (nheads,),
        "A_log": (nheads,),
        "D": (nheads,),
        "in_proj.weight": (2 * d_inner + 2 * ngroups * d_state + nheads, d_model),
        "conv1d.weight": (d_inner + 2 * ngroups * d_state, 1, 4),
        "conv1d.bias": (d_inner + 2 * ngroups * d_state,),
        "norm.weight": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }
    got = {k: tuple(v.shape) for k, v in mixer.state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)  # same order as mamba_ssm.Mamba2 (own params, then submodules)
    assert mixer.in_proj.bias is None and mixer.out_proj.bias is None


def test_mamba2_initialisation():
    mixer = Mamba2Mixer(256, headdim=32, backend="torch")
    dt = torch.nn.functional.softplus(mixer.dt_bias.detach())
    assert float(dt.min()) >= 1e-4 - 1e-7 and float(dt.max()) <= 0.1 + 1e-6
    A = torch.exp(mixer.A_log.detach())
    assert float(A.min()) >= 1.0 - 1e-5 and float(A.max()) <= 16.0 + 1e-4
    assert torch.all(mixer.D == 1) and torch.all(mixer.norm.weight == 1)
    assert mixer.norm.eps == 1e-5 and mixer.norm.group_size == 512


def test_state_dict_round_trip_and_same_function():
    torch.manual_seed(0)
    a = Mamba2Mixer(32, d_state=8, headdim=16, backend="torch")
    b = Mamba2Mixer(32, d_state=8, headdim=16, backend="torch")
    b.load_state_dict(a.state_dict(), strict=True)
    u = torch.randn(2, 21, 32)
    torch.testing.assert_close(a(u), b(u))


def test_mixer_seq_idx_equals_separate_runs():
    torch.manual_seed(1)
    mixer = Mamba2Mixer(32, d_state=8, headdim=16, chunk_size=8, backend="torch")
    lens = [6, 11, 3]
    u = torch.randn(1, sum(lens), 32)
    seq_idx = torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(lens)]).unsqueeze(0)
    packed = mixer(u, seq_idx=seq_idx)
    start = 0
    for n in lens:
        torch.testing.assert_close(packed[:, start : start + n], mixer(u[:, start : start + n]), atol=1e-5, rtol=1e-5)
        start += n


def test_gated_rmsnorm_reference():
    torch.manual_seed(0)
    norm = RMSNormGated(8, eps=1e-5, group_size=4)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x, z = torch.randn(3, 8), torch.randn(3, 8)
    g = (x * torch.nn.functional.silu(z)).view(3, 2, 4)
    ref = (g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + 1e-5)).view(3, 8) * norm.weight
    torch.testing.assert_close(norm(x, z), ref)


def test_rmsnorm_runs_in_float32_under_autocast():
    norm = RMSNorm(16)
    x = torch.randn(4, 16).to(torch.bfloat16) * 100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    ref = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref.to(torch.bfloat16))


def test_bf16_autocast_forward_backward_cpu():
    torch.manual_seed(0)
    enc = GeneMambaEncoder(50, d_model=32, n_layers=2, d_state=8, headdim=16, backend="torch")
    tokens = torch.randint(3, 50, (2, 24))
    lengths = torch.tensor([24, 10])
    ref = enc(tokens, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(tokens, lengths)
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all()
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 5e-2
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in enc.parameters())


@no_cuda
def test_mamba_ssm_backend_on_cpu_raises_clear_error():
    with pytest.raises(RuntimeError, match=r'pip install "genemamba-scvi\[cuda\]"'):
        Mamba2Mixer(32, headdim=16, backend="mamba_ssm")
    with pytest.raises(RuntimeError, match=r'pip install "genemamba-scvi\[cuda\]"'):
        GeneMambaEncoder(20, d_model=32, n_layers=1, headdim=16, backend="mamba_ssm")


def test_resolve_backend_rules(caplog):
    with pytest.raises(RuntimeError, match=r"genemamba-scvi\[cuda\]"):
        resolve_backend("mamba_ssm", "cpu")
    with pytest.raises(ValueError):
        resolve_backend("triton", "cpu")
    assert resolve_backend("torch", "cpu") == "torch"
    ssd_mod._LOGGED.clear()
    with caplog.at_level(logging.INFO, logger="genemamba_scvi"):
        assert resolve_backend("auto", "cpu") == "torch"
    assert any("backend='auto' -> 'torch'" in r.getMessage() for r in caplog.records)


def test_invalid_shapes_raise():
    with pytest.raises(ValueError):
        Mamba2Mixer(30, headdim=16, backend="torch")
    assert math.isclose(Mamba2Mixer(32, headdim=16, backend="torch").nheads, 4)


def test_cpu_scan_uses_short_chunks_and_the_same_function(monkeypatch):
    """On a CPU the torch backend scans in chunks of at most CPU_CHUNK_SIZE (64), whatever chunk_size says."""
    import genemamba_scvi.nn.mamba2 as mamba2

    torch.manual_seed(0)
    mixer = Mamba2Mixer(32, d_state=16, headdim=16, chunk_size=256, backend="torch").eval()
    u = torch.randn(2, 300, 32)
    seen = []
    real_scan = mamba2.ssd_chunked
    monkeypatch.setattr(mamba2, "ssd_chunked", lambda *a, **k: seen.append(a[5]) or real_scan(*a, **k))
    with torch.no_grad():
        short = mixer(u)
        monkeypatch.setattr(mamba2, "CPU_CHUNK_SIZE", 256)
        long = mixer(u)
    assert seen == [64, 256]
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)
