"""Triton kernel of the one-pass varlen SSD forward (:func:`genemamba_scvi.nn.fused.ssd_varlen`); imported lazily.

Mamba-2's SSD (state-space duality, Dao & Gu 2024, "Transformers are SSMs", sec. 6) splits a sequence into
chunks: within a chunk the output is a masked attention-like product, across chunks a ``[N, P]`` state per
head carries the past. mamba-ssm computes this in five kernels (chunk cumsum, chunk states, state passing,
``C B^T``, chunk scan) that write the chunk states and ``C B^T`` to memory and read them back.

Here one program owns one (head, sequence) pair of a packed varlen row and walks its chunks in order with
the state in registers, so nothing but the inputs and the output touches memory. Per chunk of ``Q`` rows
(cumulative log-decay ``cs``, ``dt`` after bias and softplus):

- intra-chunk: ``y_i = sum_{j<=i} (C_i . B_j) exp(cs_i - cs_j) dt_j x_j``;
- from the state: ``y_i += exp(cs_i) C_i . S``;
- state update: ``S <- exp(cs_Q) S + sum_j exp(cs_Q - cs_j) dt_j B_j x_j^T``;
- skip: ``y_i += D x_i``.

A packed cell of a few thousand genes is a handful of chunks, and ``n_heads x n_sequences`` programs (16 x
1024 for a batch of 512 cells in both directions) fill the GPU. Matrix products take the input dtype
(bf16) with fp32 accumulation and the state stays fp32 between chunks, as in mamba-ssm's kernels.
"""

from __future__ import annotations

import triton
import triton.language as tl

# fmt: off


@triton.jit
def _ssd_chunk(state, c0, end, h, g, A, dt_bias, D, x_ptr, dt_ptr, B_ptr, C_ptr, y_ptr, stride_x, stride_dt, stride_b,
    stride_c, stride_y, P: tl.constexpr, N: tl.constexpr, Q: tl.constexpr, HAS_D: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr
):
    """Outputs of rows ``c0 .. c0+Q-1`` (those before ``end``) from ``state``; returns the state after them."""
    q = tl.arange(0, Q)
    p = tl.arange(0, P)
    n = tl.arange(0, N)
    rows = c0 + q
    rm = rows < end
    r64 = rows.to(tl.int64)
    dt = tl.load(dt_ptr + r64 * stride_dt + h, mask=rm, other=0.0).to(tl.float32) + dt_bias
    if DT_SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    dt = tl.where(rm, dt, 0.0)
    dA = dt * A
    cs = tl.cumsum(dA, axis=0)
    total = tl.sum(dA, axis=0)  # cs at the chunk's last row (padded rows add 0)
    xm = tl.load(x_ptr + r64[:, None] * stride_x + (h * P + p)[None, :], mask=rm[:, None], other=0.0)
    bm = tl.load(B_ptr + r64[:, None] * stride_b + (g * N + n)[None, :], mask=rm[:, None], other=0.0)
    cm = tl.load(C_ptr + r64[:, None] * stride_c + (g * N + n)[None, :], mask=rm[:, None], other=0.0)
    cb = tl.dot(cm, tl.trans(bm))  # [Q, Q] fp32
    seg = tl.where(q[:, None] >= q[None, :], cs[:, None] - cs[None, :], float("-inf"))
    w = cb * tl.exp(seg) * dt[None, :]
    y = tl.dot(w.to(xm.dtype), xm)
    y += tl.dot(cm, state.to(cm.dtype)) * tl.exp(cs)[:, None]
    if HAS_D:
        y += D * xm.to(tl.float32)
    tl.store(y_ptr + r64[:, None] * stride_y + (h * P + p)[None, :], y.to(y_ptr.dtype.element_ty), mask=rm[:, None])
    bw = (bm.to(tl.float32) * (tl.exp(total - cs) * dt)[:, None]).to(xm.dtype)
    return state * tl.exp(total) + tl.dot(tl.trans(bw), xm)


@triton.jit
def ssd_varlen_fwd_kernel(x_ptr, dt_ptr, dt_bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr, cu_ptr, order_ptr,
    stride_x, stride_dt, stride_b, stride_c, stride_y, heads_per_group, n_heads,
    P: tl.constexpr, N: tl.constexpr, Q: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr, NUM_STAGES: tl.constexpr, INTERPRET: tl.constexpr
):
    """Grid ``(n_heads * n_sequences,)``: program ``i`` runs head ``i % n_heads`` of sequence ``order[i // n_heads]``.

    Sequences are ordered longest first; the heads of one sequence are neighbouring programs (they share B and C
    in L2). A 1-D grid, as a 2-D one would cap the sequences at 65,535.

    ``INTERPRET``: walk the chunks with a ``while`` loop (Triton's CPU interpreter cannot take a loaded bound in
    ``tl.range``); compiled, ``tl.range`` lets Triton prefetch the next chunk (``NUM_STAGES``).
    """
    pid = tl.program_id(0)
    h = pid % n_heads
    s = tl.load(order_ptr + pid // n_heads)
    g = h // heads_per_group
    start = tl.load(cu_ptr + s)
    end = tl.load(cu_ptr + s + 1)
    A = tl.load(A_ptr + h).to(tl.float32)
    dt_bias = 0.0
    if HAS_DT_BIAS:
        dt_bias = tl.load(dt_bias_ptr + h).to(tl.float32)
    D = 0.0
    if HAS_D:
        D = tl.load(D_ptr + h).to(tl.float32)
    state = tl.zeros((N, P), dtype=tl.float32)
    if INTERPRET:
        c0 = start
        while c0 < end:
            state = _ssd_chunk(state, c0, end, h, g, A, dt_bias, D, x_ptr, dt_ptr, B_ptr, C_ptr, y_ptr, stride_x,
                stride_dt, stride_b, stride_c, stride_y, P, N, Q, HAS_D, DT_SOFTPLUS)
            c0 += Q
    else:
        for c0 in tl.range(start, end, Q, num_stages=NUM_STAGES):
            state = _ssd_chunk(state, c0, end, h, g, A, dt_bias, D, x_ptr, dt_ptr, B_ptr, C_ptr, y_ptr, stride_x,
                stride_dt, stride_b, stride_c, stride_y, P, N, Q, HAS_D, DT_SOFTPLUS)
