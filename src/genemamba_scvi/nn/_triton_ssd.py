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
def _head_params(A_ptr, dt_bias_ptr, D_ptr, h, HAS_DT_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """``A``, ``dt_bias`` and ``D`` (fp32) of head(s) ``h`` (a scalar or a vector of heads); 0 where absent."""
    A = tl.load(A_ptr + h).to(tl.float32)
    dt_bias = A * 0.0
    if HAS_DT_BIAS:
        dt_bias = tl.load(dt_bias_ptr + h).to(tl.float32)
    D = A * 0.0
    if HAS_D:
        D = tl.load(D_ptr + h).to(tl.float32)
    return A, dt_bias, D


@triton.jit
def _dt_of(dt_ptr, tok, stride_dt, h, rm, dt_bias, DT_SOFTPLUS: tl.constexpr):
    """``dt`` of head(s) ``h`` at rows ``tok`` after bias and softplus (fp32), 0 on masked rows (shapes broadcast)."""
    dt = tl.load(dt_ptr + tok * stride_dt + h, mask=rm, other=0.0).to(tl.float32) + dt_bias
    if DT_SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    return tl.where(rm, dt, 0.0)


@triton.jit
def _silu_gate(y, z_ptrs, mask):
    """``y * silu(z)`` in fp32 (inference epilogue of the one-pass SSD, ``GATE``).

    Mamba-2's gated RMSNorm (``norm_before_gate=False``, one group) is ``g * rsqrt(mean(g^2) + eps) * weight`` of
    ``g = y * silu(z)``: its weight folds into ``out_proj`` and the per-row scale commutes with the GEMMs after it,
    so with ``g`` and the row's sum of squares written here the norm's own pass over ``[2T, d_inner]`` goes
    (``gate_merge_both`` applies the scale).
    """
    zv = tl.load(z_ptrs, mask=mask, other=0.0).to(tl.float32)
    return y * zv * tl.sigmoid(zv)


@triton.jit
def _gate_map(start, end, T_half):
    """Token of row ``r`` of a sequence ``[start, end)`` of the two-direction row: ``zbase + zsgn * r``."""
    is_rev = start >= T_half
    return tl.where(is_rev, -1, 1), tl.where(is_rev, start + end - 1 - T_half, 0)


@triton.jit
def _ssd_step(state, xm, bm, cm, dt, A, D, Q: tl.constexpr, HAS_D: tl.constexpr):
    """One chunk of ``Q`` rows: outputs (fp32 ``[Q, P]``) and the state after the chunk.

    ``xm``, ``bm``, ``cm`` in the input dtype (0 on masked rows); ``dt`` fp32 after softplus, 0 on masked rows.
    """
    q = tl.arange(0, Q)
    dA = dt * A
    cs = tl.cumsum(dA, axis=0)
    total = tl.sum(dA, axis=0)  # cs at the chunk's last row (padded rows add 0)
    cb = tl.dot(cm, tl.trans(bm))  # [Q, Q] fp32
    seg = tl.where(q[:, None] >= q[None, :], cs[:, None] - cs[None, :], float("-inf"))
    w = cb * tl.exp(seg) * dt[None, :]
    y = tl.dot(w.to(xm.dtype), xm)
    y += tl.dot(cm, state.to(cm.dtype)) * tl.exp(cs)[:, None]
    if HAS_D:
        y += D * xm.to(tl.float32)
    bw = (bm.to(tl.float32) * (tl.exp(total - cs) * dt)[:, None]).to(xm.dtype)
    return y, state * tl.exp(total) + tl.dot(tl.trans(bw), xm)


@triton.jit
def _ssd_chunk(state, c0, end, h, g, A, dt_bias, D, x_ptr, dt_ptr, B_ptr, C_ptr, y_ptr, stride_x, stride_dt, stride_b,
    stride_c, stride_y, z_ptr, ssq_ptr, stride_z, zbase, zsgn, NP, P: tl.constexpr, N: tl.constexpr, Q: tl.constexpr,
    HAS_D: tl.constexpr, DT_SOFTPLUS: tl.constexpr, GATE: tl.constexpr, DT_TOKEN: tl.constexpr
):
    """Outputs of rows ``c0 .. c0+Q-1`` (those before ``end``) from ``state``; returns the state after them.

    ``DT_TOKEN``: read ``dt`` at the row's token ``zbase + zsgn * row``; ``GATE``: also ``z`` there, and write
    ``y * silu(z)`` and its sum of squares per row.
    """
    q = tl.arange(0, Q)
    p = tl.arange(0, P)
    n = tl.arange(0, N)
    rows = c0 + q
    rm = rows < end
    r64 = rows.to(tl.int64)
    ztok = (zbase + zsgn * rows).to(tl.int64)
    dt = _dt_of(dt_ptr, ztok if DT_TOKEN else r64, stride_dt, h, rm, dt_bias, DT_SOFTPLUS)
    xm = tl.load(x_ptr + r64[:, None] * stride_x + (h * P + p)[None, :], mask=rm[:, None], other=0.0)
    bm = tl.load(B_ptr + r64[:, None] * stride_b + (g * N + n)[None, :], mask=rm[:, None], other=0.0)
    cm = tl.load(C_ptr + r64[:, None] * stride_c + (g * N + n)[None, :], mask=rm[:, None], other=0.0)
    y, state = _ssd_step(state, xm, bm, cm, dt, A, D, Q, HAS_D)
    if GATE:
        y = _silu_gate(y, z_ptr + ztok[:, None] * stride_z + (h * P + p)[None, :], rm[:, None])
        tl.store(ssq_ptr + r64 * NP + h, tl.sum(y * y, axis=1), mask=rm)
    tl.store(y_ptr + r64[:, None] * stride_y + (h * P + p)[None, :], y.to(y_ptr.dtype.element_ty), mask=rm[:, None])
    return state


@triton.jit
def ssd_varlen_fwd_kernel(x_ptr, dt_ptr, dt_bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr, cu_ptr, order_ptr,
    stride_x, stride_dt, stride_b, stride_c, stride_y, heads_per_group, n_heads, z_ptr, ssq_ptr, stride_z, T_half,
    P: tl.constexpr, N: tl.constexpr, Q: tl.constexpr, HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr, NUM_STAGES: tl.constexpr, INTERPRET: tl.constexpr, GATE: tl.constexpr,
    DT_TOKEN: tl.constexpr
):
    """Grid ``(n_heads * n_sequences,)``: program ``i`` runs head ``i % n_heads`` of sequence ``order[i // n_heads]``.

    Sequences are ordered longest first; the heads of one sequence are neighbouring programs (they share B and C
    in L2). A 1-D grid, as a 2-D one would cap the sequences at 65,535.

    ``INTERPRET``: walk the chunks with a ``while`` loop (Triton's CPU interpreter cannot take a loaded bound in
    ``tl.range``); compiled, ``tl.range`` lets Triton prefetch the next chunk (``NUM_STAGES``).

    ``DT_TOKEN`` (inference on the two-direction row of ``T_half`` tokens): ``dt`` is ``[T_half, n_heads]`` and read
    at the row's token (a sequence starting at or after ``T_half`` is a cell reversed in place, its row ``r`` is token
    ``start + end - 1 - T_half - r``). ``GATE`` (with ``DT_TOKEN``): the output is ``y * silu(z)`` with the gate
    ``z`` ``[T_half, n_heads * P]`` of that token, and ``ssq[r, head block]`` the sum of squares of the program's
    channels (see ``_silu_gate``).
    """
    pid = tl.program_id(0)
    h = pid % n_heads
    s = tl.load(order_ptr + pid // n_heads)
    g = h // heads_per_group
    start = tl.load(cu_ptr + s)
    end = tl.load(cu_ptr + s + 1)
    A, dt_bias, D = _head_params(A_ptr, dt_bias_ptr, D_ptr, h, HAS_DT_BIAS, HAS_D)
    zsgn, zbase = _gate_map(start, end, T_half)
    state = tl.zeros((N, P), dtype=tl.float32)
    if INTERPRET:
        c0 = start
        while c0 < end:
            state = _ssd_chunk(state, c0, end, h, g, A, dt_bias, D, x_ptr, dt_ptr, B_ptr, C_ptr, y_ptr, stride_x,
                stride_dt, stride_b, stride_c, stride_y, z_ptr, ssq_ptr, stride_z, zbase, zsgn, n_heads, P, N, Q, HAS_D,
                DT_SOFTPLUS, GATE, DT_TOKEN)
            c0 += Q
    else:
        for c0 in tl.range(start, end, Q, num_stages=NUM_STAGES):
            state = _ssd_chunk(state, c0, end, h, g, A, dt_bias, D, x_ptr, dt_ptr, B_ptr, C_ptr, y_ptr, stride_x,
                stride_dt, stride_b, stride_c, stride_y, z_ptr, ssq_ptr, stride_z, zbase, zsgn, n_heads, P, N, Q, HAS_D,
                DT_SOFTPLUS, GATE, DT_TOKEN)


# ----------------------------------------------------------------------------------------------------
# Several heads of one group per program
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _heads_rows(c0, end, hh, g, A, dt_bias, x_ptr, dt_ptr, B_ptr, stride_x, stride_dt, stride_b, zbase, zsgn,
    P: tl.constexpr, N: tl.constexpr, Q: tl.constexpr, DT_SOFTPLUS: tl.constexpr, DT_TOKEN: tl.constexpr
):
    """The inputs of one chunk step of heads ``hh``.

    Rows, their mask, int64 rows and tokens, ``dt`` ``[HB, Q]``, its cumulative log-decay and total, ``x``
    ``[HB, Q, P]`` and ``B`` ``[Q, N]`` (0 on masked rows).
    """
    q = tl.arange(0, Q)
    p = tl.arange(0, P)
    n = tl.arange(0, N)
    rows = c0 + q
    rm = rows < end
    r64 = rows.to(tl.int64)
    ztok = (zbase + zsgn * rows).to(tl.int64)
    dtok = ztok if DT_TOKEN else r64
    dt = _dt_of(dt_ptr, dtok[None, :], stride_dt, hh[:, None], rm[None, :], dt_bias[:, None], DT_SOFTPLUS)  # [HB, Q]
    dA = dt * A[:, None]
    cs = tl.cumsum(dA, axis=1)
    total = tl.sum(dA, axis=1)  # [HB]
    xoff = r64[None, :, None] * stride_x + (hh[:, None, None] * P + p[None, None, :])
    xm = tl.load(x_ptr + xoff, mask=rm[None, :, None], other=0.0)  # [HB, Q, P]
    bm = tl.load(B_ptr + r64[:, None] * stride_b + (g * N + n)[None, :], mask=rm[:, None], other=0.0)
    return rows, rm, r64, ztok, dt, cs, total, xm, bm


@triton.jit
def _heads_state(state, bm, xm, dt, cs, total):
    """The state ``[HB, N, P]`` after a chunk step: ``exp(total) S + sum_j exp(total - cs_j) dt_j B_j x_j^T``."""
    bw = (bm.to(tl.float32)[None, :, :] * (tl.exp(total[:, None] - cs) * dt)[:, :, None]).to(xm.dtype)  # [HB, Q, N]
    return state * tl.exp(total)[:, None, None] + tl.dot(tl.permute(bw, (0, 2, 1)), xm)


@triton.jit
def _ssd_heads_chunk(state, c0, end, hh, g, A, dt_bias, D, x_ptr, dt_ptr, B_ptr, C_ptr, y_ptr, stride_x, stride_dt,
    stride_b, stride_c, stride_y, z_ptr, ssq_ptr, stride_z, zbase, zsgn, NP, blk, P: tl.constexpr, N: tl.constexpr,
    Q: tl.constexpr, HB: tl.constexpr, HAS_D: tl.constexpr, DT_SOFTPLUS: tl.constexpr, GATE: tl.constexpr,
    DT_TOKEN: tl.constexpr
):
    """``_ssd_chunk`` for the ``HB`` heads ``hh`` of group ``g`` at once: ``state`` ``[HB, N, P]``.

    The heads share the loads of B and C and the product ``C B^T``; their chains of chunk steps are independent,
    so one program interleaves ``HB`` of them (batched dots over the head axis).
    """
    q = tl.arange(0, Q)
    p = tl.arange(0, P)
    n = tl.arange(0, N)
    _rows, rm, r64, ztok, dt, cs, total, xm, bm = _heads_rows(c0, end, hh, g, A, dt_bias, x_ptr, dt_ptr, B_ptr,
        stride_x, stride_dt, stride_b, zbase, zsgn, P, N, Q, DT_SOFTPLUS, DT_TOKEN)
    cm = tl.load(C_ptr + r64[:, None] * stride_c + (g * N + n)[None, :], mask=rm[:, None], other=0.0)
    cb = tl.dot(cm, tl.trans(bm))  # [Q, Q] fp32, shared by the heads
    causal = q[:, None] >= q[None, :]
    seg = tl.where(causal[None, :, :], cs[:, :, None] - cs[:, None, :], float("-inf"))
    w = cb[None, :, :] * tl.exp(seg) * dt[:, None, :]  # [HB, Q, Q]
    y = tl.dot(w.to(xm.dtype), xm)
    cmh = tl.broadcast_to(cm[None, :, :], (HB, Q, N))
    y += tl.dot(cmh, state.to(cm.dtype)) * tl.exp(cs)[:, :, None]
    if HAS_D:
        y += D[:, None, None] * xm.to(tl.float32)
    state = _heads_state(state, bm, xm, dt, cs, total)
    cols = hh[:, None, None] * P + p[None, None, :]
    if GATE:  # off the state's chain: the next chunk does not wait for the gate
        y = _silu_gate(y, z_ptr + ztok[None, :, None] * stride_z + cols, rm[None, :, None])
        tl.store(ssq_ptr + r64 * NP + blk, tl.sum(tl.sum(y * y, axis=2), axis=0), mask=rm)
    tl.store(y_ptr + r64[None, :, None] * stride_y + cols, y.to(y_ptr.dtype.element_ty), mask=rm[None, :, None])
    return state


@triton.jit
def ssd_varlen_heads_fwd_kernel(x_ptr, dt_ptr, dt_bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr, cu_ptr, order_ptr,
    stride_x, stride_dt, stride_b, stride_c, stride_y, heads_per_group, n_heads, z_ptr, ssq_ptr, stride_z, T_half,
    items_ptr, states_ptr, decay_ptr,
    P: tl.constexpr, N: tl.constexpr, Q: tl.constexpr, HB: tl.constexpr, HAS_D: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, NUM_STAGES: tl.constexpr, INTERPRET: tl.constexpr,
    GATE: tl.constexpr, DT_TOKEN: tl.constexpr, SPLIT: tl.constexpr = False
):
    """``ssd_varlen_fwd_kernel`` with ``HB`` heads per program (``HB`` divides the heads of a group).

    Grid ``(n_heads // HB * n_sequences,)``: program ``i`` runs heads ``HB * (i % (n_heads // HB)) + [0, HB)`` of
    sequence ``order[i // (n_heads // HB)]``; with ``GATE`` its sums of squares go to column ``i % (n_heads // HB)``
    of ``ssq``.

    ``SPLIT``: grid ``(n_heads // HB * n_items,)`` over the work items of ``items`` (``fused_ssd.ssd_split_plan``)
    instead of the sequences: program ``i`` walks segment ``i // (n_heads // HB)`` of a sequence, from the state
    that the sequence's earlier segments leave (folded from ``ssd_split_states_kernel``'s ``states`` and ``decay``).
    """
    pid = tl.program_id(0)
    n_blocks = n_heads // HB
    hh = (pid % n_blocks) * HB + tl.arange(0, HB)
    g = ((pid % n_blocks) * HB) // heads_per_group
    if SPLIT:
        seq_start, seq_end, start, end, first = _split_item(items_ptr, pid // n_blocks)
        state = _split_initial_state(states_ptr, decay_ptr, first, pid // n_blocks, hh, n_heads, P, N, HB)
    else:
        s = tl.load(order_ptr + pid // n_blocks)
        start = tl.load(cu_ptr + s)
        end = tl.load(cu_ptr + s + 1)
        seq_start, seq_end = start, end
        state = tl.zeros((HB, N, P), dtype=tl.float32)
    A, dt_bias, D = _head_params(A_ptr, dt_bias_ptr, D_ptr, hh, HAS_DT_BIAS, HAS_D)
    zsgn, zbase = _gate_map(seq_start, seq_end, T_half)
    if INTERPRET:
        c0 = start
        while c0 < end:
            state = _ssd_heads_chunk(state, c0, end, hh, g, A, dt_bias, D, x_ptr, dt_ptr, B_ptr, C_ptr, y_ptr,
                stride_x, stride_dt, stride_b, stride_c, stride_y, z_ptr, ssq_ptr, stride_z, zbase, zsgn, n_blocks,
                pid % n_blocks, P, N, Q, HB, HAS_D, DT_SOFTPLUS, GATE, DT_TOKEN)
            c0 += Q
    else:
        for c0 in tl.range(start, end, Q, num_stages=NUM_STAGES):
            state = _ssd_heads_chunk(state, c0, end, hh, g, A, dt_bias, D, x_ptr, dt_ptr, B_ptr, C_ptr, y_ptr,
                stride_x, stride_dt, stride_b, stride_c, stride_y, z_ptr, ssq_ptr, stride_z, zbase, zsgn, n_blocks,
                pid % n_blocks, P, N, Q, HB, HAS_D, DT_SOFTPLUS, GATE, DT_TOKEN)


# ----------------------------------------------------------------------------------------------------
# Long sequences split over several programs (few cells a batch: the longest walk sets the kernel's time)
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _split_item(items_ptr, w):
    """Work item ``w`` of ``fused_ssd.ssd_split_plan``.

    Its sequence's bounds, its segment's bounds, and the item of the sequence's first segment (the items of one
    sequence are neighbours, in order).
    """
    base = items_ptr + w.to(tl.int64) * 5
    return tl.load(base), tl.load(base + 1), tl.load(base + 2), tl.load(base + 3), tl.load(base + 4)


@triton.jit
def _split_initial_state(states_ptr, decay_ptr, first, w, hh, n_heads, P: tl.constexpr, N: tl.constexpr,
    HB: tl.constexpr
):
    """The state ``[HB, N, P]`` entering item ``w``.

    Its sequence's segments ``first .. w-1`` folded in order, ``S <- exp(decay_m) S + S_m`` (each ``S_m`` computed
    from a zero state by ``ssd_split_states_kernel``).
    """
    n = tl.arange(0, N)
    p = tl.arange(0, P)
    off = hh[:, None, None] * (N * P) + n[None, :, None] * P + p[None, None, :]
    state = tl.zeros((HB, N, P), dtype=tl.float32)
    m = first
    while m < w:
        dec = tl.load(decay_ptr + m * n_heads + hh)
        state = state * tl.exp(dec)[:, None, None] + tl.load(states_ptr + m * (n_heads * N * P) + off)
        m += 1
    return state


@triton.jit
def ssd_split_states_kernel(x_ptr, dt_ptr, dt_bias_ptr, A_ptr, B_ptr, items_ptr, states_ptr, decay_ptr, stride_x,
    stride_dt, stride_b, heads_per_group, n_heads, T_half, P: tl.constexpr, N: tl.constexpr, Q: tl.constexpr,
    HB: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, NUM_STAGES: tl.constexpr,
    INTERPRET: tl.constexpr, DT_TOKEN: tl.constexpr
):
    """First pass of a split scan.

    Grid ``(n_heads // HB * n_items,)``: for every segment but a sequence's last, the state its rows leave from a
    zero state, ``states[w, h] = sum_j exp(cs_end - cs_j) dt_j B_j x_j^T`` ``[N, P]`` fp32, and its total log-decay
    ``decay[w, h] = sum_j dt_j A_h``. Only ``x``, ``B`` and ``dt`` are read (no ``C B^T``, no output): the walk of
    the second pass without its outputs.
    """
    pid = tl.program_id(0)
    n_blocks = n_heads // HB
    hh = (pid % n_blocks) * HB + tl.arange(0, HB)
    g = ((pid % n_blocks) * HB) // heads_per_group
    w = pid // n_blocks
    seq_start, seq_end, start, end, _first = _split_item(items_ptr, w)
    if end < seq_end:  # a sequence's last segment leaves no state that another segment needs
        A, dt_bias, _no_d = _head_params(A_ptr, dt_bias_ptr, A_ptr, hh, HAS_DT_BIAS, False)
        zsgn, zbase = _gate_map(seq_start, seq_end, T_half)
        state = tl.zeros((HB, N, P), dtype=tl.float32)
        dec = tl.zeros((HB,), dtype=tl.float32)
        if INTERPRET:
            c0 = start
            while c0 < end:
                _rows, _rm, _r64, _tok, dt, cs, total, xm, bm = _heads_rows(c0, end, hh, g, A, dt_bias, x_ptr, dt_ptr,
                    B_ptr, stride_x, stride_dt, stride_b, zbase, zsgn, P, N, Q, DT_SOFTPLUS, DT_TOKEN)
                state = _heads_state(state, bm, xm, dt, cs, total)
                dec += total
                c0 += Q
        else:
            for c0 in tl.range(start, end, Q, num_stages=NUM_STAGES):
                _rows, _rm, _r64, _tok, dt, cs, total, xm, bm = _heads_rows(c0, end, hh, g, A, dt_bias, x_ptr, dt_ptr,
                    B_ptr, stride_x, stride_dt, stride_b, zbase, zsgn, P, N, Q, DT_SOFTPLUS, DT_TOKEN)
                state = _heads_state(state, bm, xm, dt, cs, total)
                dec += total
        n = tl.arange(0, N)
        p = tl.arange(0, P)
        w64 = w.to(tl.int64)
        tl.store(states_ptr + w64 * (n_heads * N * P) + hh[:, None, None] * (N * P) + n[None, :, None] * P
                 + p[None, None, :], state)
        tl.store(decay_ptr + w64 * n_heads + hh, dec)


# ----------------------------------------------------------------------------------------------------
# Inference: the causal convolution of both directions inside the scan
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _conv_cols(xbc_ptr, w_ptr, cbias_ptr, base, sgn, pos, rm, cols, stride_xbc, stride_w, K: tl.constexpr,
    HAS_CONV_BIAS: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr
):
    """SiLU(causal conv) of the columns ``cols`` at positions ``pos`` of one direction of a cell (fp32).

    Position ``i`` is token ``base + sgn * i`` (``sgn`` -1 walks the cell backwards); tap ``k`` reads position
    ``i - (K-1) + k`` (0 before the cell's first position) with weight ``w[:, k]``.
    """
    acc = tl.zeros((BR, BC), dtype=tl.float32)
    if HAS_CONV_BIAS:
        acc += tl.load(cbias_ptr + cols).to(tl.float32)[None, :]
    for k in tl.static_range(K):
        j = pos - (K - 1) + k
        ok = rm & (j >= 0)
        tok = (base + sgn * j).to(tl.int64)
        xv = tl.load(xbc_ptr + tok[:, None] * stride_xbc + cols[None, :], mask=ok[:, None], other=0.0)
        acc += xv.to(tl.float32) * tl.load(w_ptr + cols * stride_w + k).to(tl.float32)[None, :]
    acc = acc * tl.sigmoid(acc)
    return tl.where(rm[:, None], acc, 0.0).to(xbc_ptr.dtype.element_ty)


@triton.jit
def _ssd_conv_chunk(state, i0, length, base, sgn, out0, h, xcols, bcols, gn, A, dt_bias, D, xbc_ptr, dt_ptr, w_ptr,
    cbias_ptr, y_ptr, stride_xbc, stride_dt, stride_w, stride_y, P: tl.constexpr, N: tl.constexpr, Q: tl.constexpr,
    K: tl.constexpr, HAS_D: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr
):
    """Positions ``i0 .. i0+Q-1`` (those before ``length``) of one direction of a cell; returns the next state."""
    pos = i0 + tl.arange(0, Q)
    rm = pos < length
    tok = (base + sgn * pos).to(tl.int64)
    dt = _dt_of(dt_ptr, tok, stride_dt, h, rm, dt_bias, DT_SOFTPLUS)
    xm = _conv_cols(xbc_ptr, w_ptr, cbias_ptr, base, sgn, pos, rm, xcols, stride_xbc, stride_w, K, HAS_CONV_BIAS, Q, P)
    bm = _conv_cols(xbc_ptr, w_ptr, cbias_ptr, base, sgn, pos, rm, bcols, stride_xbc, stride_w, K, HAS_CONV_BIAS, Q, N)
    cm = _conv_cols(xbc_ptr, w_ptr, cbias_ptr, base, sgn, pos, rm, bcols + gn, stride_xbc, stride_w, K, HAS_CONV_BIAS,
                    Q, N)
    y, state = _ssd_step(state, xm, bm, cm, dt, A, D, Q, HAS_D)
    r64 = (out0 + pos).to(tl.int64)
    tl.store(y_ptr + r64[:, None] * stride_y + xcols[None, :], y.to(y_ptr.dtype.element_ty), mask=rm[:, None])
    return state


@triton.jit(do_not_specialize=["T", "n_cells"])
def ssd_conv_varlen_fwd_kernel(xbc_ptr, dt_ptr, dt_bias_ptr, A_ptr, D_ptr, w_ptr, cbias_ptr, y_ptr, cu_ptr, order_ptr,
    T, n_cells, stride_xbc, stride_dt, stride_w, stride_y, heads_per_group, n_heads, d_inner, gn,
    P: tl.constexpr, N: tl.constexpr, Q: tl.constexpr, K: tl.constexpr, HAS_D: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, NUM_STAGES: tl.constexpr,
    INTERPRET: tl.constexpr
):
    """Conv + SiLU + SSD of both directions read from the ``T``-token projection (inference; no ``[2T]`` input).

    Grid ``(n_heads * 2 * n_cells,)``: program ``i`` runs head ``i % n_heads`` of sequence ``s = order[i // n_heads]``
    of the two-direction row: cell ``s`` forward (``s < n_cells``) or cell ``s - n_cells`` reversed. The convolved
    ``x``, ``B``, ``C`` of each chunk are computed from the taps of the projection's ``xBC`` columns (B and C are
    recomputed by every head of the group: a few FMAs against a ``[2T, C]`` write and read), ``dt`` is read at the
    token, and the outputs go to row ``t`` (forward) or ``T + rev[t]`` (reversed) of ``y`` ``[2T, H*P]``.
    """
    pid = tl.program_id(0)
    h = pid % n_heads
    s = tl.load(order_ptr + pid // n_heads)
    is_rev = s >= n_cells
    c = tl.where(is_rev, s - n_cells, s)
    g = h // heads_per_group
    start = tl.load(cu_ptr + c)
    end = tl.load(cu_ptr + c + 1)
    base = tl.where(is_rev, end - 1, start)
    sgn = tl.where(is_rev, -1, 1)
    out0 = tl.where(is_rev, T, 0) + start  # output row of position 0
    A, dt_bias, D = _head_params(A_ptr, dt_bias_ptr, D_ptr, h, HAS_DT_BIAS, HAS_D)
    xcols = h * P + tl.arange(0, P)
    bcols = d_inner + g * N + tl.arange(0, N)
    state = tl.zeros((N, P), dtype=tl.float32)
    n_chunks = tl.cdiv(end - start, Q)
    if INTERPRET:
        ci = 0
        while ci < n_chunks:
            state = _ssd_conv_chunk(state, ci * Q, end - start, base, sgn, out0, h, xcols, bcols, gn, A, dt_bias, D,
                xbc_ptr, dt_ptr, w_ptr, cbias_ptr, y_ptr, stride_xbc, stride_dt, stride_w, stride_y, P, N, Q, K, HAS_D,
                HAS_CONV_BIAS, DT_SOFTPLUS)
            ci += 1
    else:
        for ci in tl.range(0, n_chunks, num_stages=NUM_STAGES):
            state = _ssd_conv_chunk(state, ci * Q, end - start, base, sgn, out0, h, xcols, bcols, gn, A, dt_bias, D,
                xbc_ptr, dt_ptr, w_ptr, cbias_ptr, y_ptr, stride_xbc, stride_dt, stride_w, stride_y, P, N, Q, K, HAS_D,
                HAS_CONV_BIAS, DT_SOFTPLUS)
