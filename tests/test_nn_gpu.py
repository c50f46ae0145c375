"""GPU tests: mamba-ssm kernels vs the torch backend vs ``mamba_ssm.Mamba2`` (run through the device tool).

Skipped cleanly without CUDA or mamba-ssm. Run with ``pytest -m gpu tests/test_nn_gpu.py``.
"""

from __future__ import annotations

import logging

import pytest
import torch

from genemamba_scvi.nn import GeneMambaEncoder, Mamba2Mixer, mamba_ssm_available
from genemamba_scvi.nn import ssd as ssd_mod

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(not (torch.cuda.is_available() and mamba_ssm_available()), reason="needs mamba-ssm kernels"),
]

DEV = "cuda"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _run(module, u, dout, seq_idx=None, autocast=False):
    u = u.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        y = module(u, seq_idx=seq_idx)
    (y.float() * dout).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()}
    return y.detach().float(), u.grad.detach().clone(), grads


def _modules(d_model=128, chunk_size=64, seed=0):
    from mamba_ssm import Mamba2

    torch.manual_seed(seed)
    ref = Mamba2(d_model, d_state=64, d_conv=4, expand=2, headdim=64, chunk_size=chunk_size, device=DEV)
    kw = dict(d_state=64, d_conv=4, expand=2, headdim=64, chunk_size=chunk_size)
    kernel = Mamba2Mixer(d_model, backend="mamba_ssm", **kw).to(DEV)
    torch_b = Mamba2Mixer(d_model, backend="torch", **kw).to(DEV)
    ref64 = Mamba2Mixer(d_model, backend="torch", **kw).to(DEV).double()
    for m in (kernel, torch_b):
        m.load_state_dict(ref.state_dict(), strict=True)
    ref64.load_state_dict({k: v.double() for k, v in ref.state_dict().items()}, strict=True)
    return ref, kernel, torch_b, ref64


def test_state_dict_moves_both_ways_with_mamba2():
    from mamba_ssm import Mamba2

    ref, kernel, torch_b, _ = _modules()
    assert {k: v.shape for k, v in ref.state_dict().items()} == {k: v.shape for k, v in kernel.state_dict().items()}
    back = Mamba2(128, d_state=64, d_conv=4, expand=2, headdim=64, chunk_size=64, device=DEV)
    back.load_state_dict(torch_b.state_dict(), strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


@pytest.mark.parametrize("packed", [False, True])
def test_fp32_parity_forward_and_gradients(packed):
    torch.backends.cudnn.allow_tf32 = False
    ref, kernel, torch_b, ref64 = _modules()
    B, L = 2, 300  # not a multiple of the chunk size (64)
    g = torch.Generator(device=DEV).manual_seed(1)
    u = torch.randn(B, L, 128, device=DEV, generator=g)
    dout = torch.randn(B, L, 128, device=DEV, generator=g)
    seq_idx = None
    if packed:
        seq_idx = torch.zeros(B, L, dtype=torch.int32, device=DEV)
        seq_idx[:, 70:] = 1
        seq_idx[:, 200:] = 2
    y64, gu64, gp64 = _run(ref64, u.double(), dout.double(), seq_idx)
    for name, mod in (("Mamba2", ref), ("mamba_ssm", kernel), ("torch", torch_b)):
        y, gu, gp = _run(mod, u, dout, seq_idx)
        # Triton dots on float32 default to TF32 (~1e-3 relative); the torch backend is full float32.
        # Loose bounds that catch any wrong formula (those give O(1)); benchmarks/parity_gpu.py measures.
        tol = 1e-4 if name == "torch" else 1e-2
        assert _rel(y, y64) < tol, name
        assert _rel(gu, gu64) < tol, name
        for n in gp64:
            assert _rel(gp[n], gp64[n]) < tol, (name, n)
    # our kernel backend is the same computation as Mamba2 itself
    y_ref, gu_ref, _ = _run(ref, u, dout, seq_idx)
    y_k, gu_k, _ = _run(kernel, u, dout, seq_idx)
    assert _rel(y_k, y_ref) < 1e-5 and _rel(gu_k, gu_ref) < 1e-5  # atomics in the bwd kernels


def test_bf16_autocast_parity():
    ref, kernel, torch_b, ref64 = _modules(seed=2)
    g = torch.Generator(device=DEV).manual_seed(3)
    u = torch.randn(2, 257, 128, device=DEV, generator=g)
    dout = torch.randn(2, 257, 128, device=DEV, generator=g)
    y64, gu64, gp64 = _run(ref64, u.double(), dout.double())
    for mod in (ref, kernel, torch_b):
        y, gu, gp = _run(mod, u, dout, autocast=True)
        assert _rel(y, y64) < 5e-2 and _rel(gu, gu64) < 5e-2
        for n in gp64:
            assert _rel(gp[n], gp64[n]) < 1e-1, n


def test_unfused_kernel_path_matches():
    _, kernel, torch_b, _ = _modules(seed=4)
    kernel.use_mem_eff_path = False
    u = torch.randn(2, 100, 128, device=DEV)
    seq_idx = torch.zeros(2, 100, dtype=torch.int32, device=DEV)
    seq_idx[:, 40:] = 1
    with torch.no_grad():
        assert _rel(kernel(u, seq_idx=seq_idx), torch_b(u, seq_idx=seq_idx)) < 1e-2


def test_encoder_kernels_pad_invariance_split_and_auto(caplog):
    torch.manual_seed(0)
    ssd_mod._LOGGED.clear()
    with caplog.at_level(logging.INFO, logger="genemamba_scvi"):
        enc = GeneMambaEncoder(100, d_model=128, n_layers=2, chunk_size=64, backend="auto").to(DEV)
        assert enc.resolved_backend() == "mamba_ssm"
    assert any("'mamba_ssm'" in r.getMessage() for r in caplog.records)
    enc_t = GeneMambaEncoder(100, d_model=128, n_layers=2, chunk_size=64, backend="torch").to(DEV)
    enc_t.load_state_dict(enc.state_dict())
    L = 150
    lengths = torch.tensor([150, 77, 9, 1], device=DEV)
    tokens = torch.randint(3, 100, (4, L), device=DEV)
    pad = torch.arange(L, device=DEV).unsqueeze(0) >= lengths.unsqueeze(1)
    tokens[pad] = 0
    real = ~pad
    with torch.no_grad():
        h = enc(tokens, lengths)
        other = tokens.clone()
        other[pad] = 5
        torch.testing.assert_close(enc(other, lengths)[real], h[real], atol=1e-5, rtol=1e-5)
        assert _rel(h[real], enc_t(tokens, lengths)[real]) < 1e-2
        # default limit: 2^30 elements per mixer call -> sub-batches for a large batch
        big = GeneMambaEncoder(100, d_model=512, n_layers=1, backend="mamba_ssm").to(DEV)
        per_seq = 2 * 2048 * big.d_in_proj
        assert big._sub_batch_size(512, 2048, torch.device(DEV)) == 2**30 // per_seq
        enc.max_call_elements = 2 * L * enc.d_in_proj  # one cell per call
        torch.testing.assert_close(enc(tokens, lengths), h, atol=1e-5, rtol=1e-5)
        assert enc.last_n_sub_batches == 4
