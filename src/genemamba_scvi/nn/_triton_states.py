"""Triton kernels: the inter-chunk state passing of a packed SSD, one program per run of chunks of one sequence.

The chunked SSD (Dao & Gu 2024, "Transformers are SSMs", section 6) carries each head's state across chunks by
``R_c = s_c R_{c-1} + S_c`` (``S_c`` the chunk's own state, ``s_c = exp(sum of dt*A over the chunk)``). With many
sequences packed into one row of ``L`` tokens (``seq_idx``), mamba-ssm's ``_state_passing_fwd/_bwd`` walk all
chunks of the row in one program per block of the state: at 48 cells x 2 directions (~576 chunks of 256) that
walk is serial and latency-bound (18.5 ms of a 271 ms training step on an H200, ``benchmarks/NOTES_throughput.md``
section 10). The recurrence resets where a chunk ends in another sequence than the chunk before it (``s_c = 0``),
so the runs of chunks between resets are independent: here one program per run walks only its own chunks
(about 6). The values written are those of mamba-ssm's kernels, in the same layouts:

- forward: ``out[0] = 0`` and ``out[c + 1] = R_c`` (the state entering chunk ``c + 1``; ``[nchunks, H, dim]``
  fp32);
- backward, given ``dout[c]`` (the gradient of the state entering chunk ``c``): ``G_{c-1} = s_c G_c + dout[c]``
  (``G_{nchunks-1} = 0``), written to ``dstates[c - 1]``; ``ddA[c] = s_c <out[c], G_c>`` (per block of the state,
  summed by the caller); and ``out`` converted to the dtype of ``states_lo``.

A chunk starts a run when it is chunk 0 or its last token lies in another sequence than the previous chunk's last
token: mamba-ssm's reset rule. A program of a chunk that does not start (forward) or end (backward) a run returns
at once. Written for this package.
"""

from __future__ import annotations

import triton
import triton.language as tl

# fmt: off


@triton.jit
def _last_seq(seq_ptr, c, L, Q):
    """Sequence id of the last token of chunk ``c``."""
    return tl.load(seq_ptr + tl.minimum((c + 1) * Q, L) - 1)


@triton.jit(do_not_specialize=["nchunks", "L"])
def state_passing_runs_fwd_kernel(states_ptr, dA_ptr, seq_ptr, out_ptr, dim, nchunks, L, Q, stride_s_c, stride_s_h,
    stride_dA_h, stride_dA_c, stride_o_c, stride_o_h, BLOCK: tl.constexpr
):
    c0 = tl.program_id(1)
    h = tl.program_id(2)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < dim
    seq = _last_seq(seq_ptr, c0, L, Q)
    prev = _last_seq(seq_ptr, tl.maximum(c0 - 1, 0), L, Q)
    if (c0 == 0) | (seq != prev):
        s_base = states_ptr + h * stride_s_h + offs
        o_base = out_ptr + h * stride_o_h + offs
        if c0 == 0:
            tl.store(o_base, tl.zeros((BLOCK,), dtype=tl.float32), mask=m)
        r = tl.load(s_base + c0 * stride_s_c, mask=m, other=0.0).to(tl.float32)  # reset: R = S
        tl.store(o_base + (c0 + 1) * stride_o_c, r, mask=m & (c0 + 1 < nchunks))
        c = c0 + 1
        same = _last_seq(seq_ptr, tl.minimum(c, nchunks - 1), L, Q) == seq
        while (c < nchunks) & same:
            scale = tl.exp(tl.load(dA_ptr + h * stride_dA_h + c * stride_dA_c).to(tl.float32))
            r = scale * r + tl.load(s_base + c * stride_s_c, mask=m, other=0.0).to(tl.float32)
            tl.store(o_base + (c + 1) * stride_o_c, r, mask=m & (c + 1 < nchunks))
            c += 1
            same = _last_seq(seq_ptr, tl.minimum(c, nchunks - 1), L, Q) == seq


@triton.jit(do_not_specialize=["nchunks", "L"])
def state_passing_runs_bwd_kernel(out_ptr, dA_ptr, dout_ptr, seq_ptr, dstates_ptr, ddA_ptr, states_lo_ptr, dim, nchunks,
    L, Q, stride_o_c, stride_o_h, stride_dA_h, stride_dA_c, stride_g_c, stride_g_h, stride_d_c, stride_d_h,
    stride_ddA_h, stride_ddA_c, BLOCK: tl.constexpr
):
    """``out`` / ``states_lo`` share strides (``stride_o_*``); ``dout`` / ``dstates`` too (``stride_g_*``)."""
    c1 = tl.program_id(1)  # the run's last chunk
    h = tl.program_id(2)
    pid_m = tl.program_id(0)
    offs = pid_m * BLOCK + tl.arange(0, BLOCK)
    m = offs < dim
    seq = _last_seq(seq_ptr, c1, L, Q)
    nxt = _last_seq(seq_ptr, tl.minimum(c1 + 1, nchunks - 1), L, Q)
    if (c1 == nchunks - 1) | (seq != nxt):
        o_base = out_ptr + h * stride_o_h + offs
        lo_base = states_lo_ptr + h * stride_o_h + offs
        g_base = dout_ptr + h * stride_g_h + offs
        d_base = dstates_ptr + h * stride_d_h + offs
        dd_base = ddA_ptr + h * stride_ddA_h + pid_m
        g = tl.zeros((BLOCK,), dtype=tl.float32)
        if c1 == nchunks - 1:
            tl.store(d_base + c1 * stride_d_c, g.to(dstates_ptr.dtype.element_ty), mask=m)
        else:  # G of the run's last chunk: the next chunk resets, so only its own dout feeds it
            g = tl.load(g_base + (c1 + 1) * stride_g_c, mask=m, other=0.0).to(tl.float32)
        k = c1
        go = c1 >= 0
        while go:
            o = tl.load(o_base + k * stride_o_c, mask=m, other=0.0).to(tl.float32)
            tl.store(lo_base + k * stride_o_c, o.to(states_lo_ptr.dtype.element_ty), mask=m)
            starts = (k == 0) | (_last_seq(seq_ptr, tl.maximum(k - 1, 0), L, Q) != seq)
            scale = tl.where(starts, 0.0, tl.exp(tl.load(dA_ptr + h * stride_dA_h + k * stride_dA_c).to(tl.float32)))
            tl.store(dd_base + k * stride_ddA_c, tl.where(starts, 0.0, tl.sum(o * g) * scale))
            g = tl.where(starts, 0.0, scale * g) + tl.load(g_base + k * stride_g_c, mask=m, other=0.0).to(tl.float32)
            tl.store(d_base + (k - 1) * stride_d_c, g.to(dstates_ptr.dtype.element_ty), mask=m & (k > 0))
            go = starts == 0
            k -= 1
