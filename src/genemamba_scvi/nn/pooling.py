"""Poolings of token states into cell embeddings, packed <-> padded conversions, and input checks.

This module owns the poolings (:data:`POOLINGS`: :func:`pool_hidden` on right-padded states, :func:`pool_packed`
on packed ones), the conversions between the padded ``[batch, L]`` and the packed ``[T]`` forms (:func:`pack_tokens`,
:func:`unpack_hidden`) and the input checks of the encoder's public functions (:func:`check_lengths`,
:func:`check_tokens`, :func:`check_max_seqlen`). :mod:`genemamba_scvi.nn.encoder` re-exports them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "POOLINGS",
    "check_lengths",
    "check_max_seqlen",
    "check_tokens",
    "pack_tokens",
    "pool_hidden",
    "pool_packed",
    "unpack_hidden",
]

POOLINGS = ("mean", "cls")


def check_lengths(lengths: torch.Tensor, seq_len: int, batch: int | None = None) -> None:
    """Refuse real lengths outside ``[0, seq_len]`` (a silently wrong mean pooling otherwise), or not ``[batch]``.

    Checked for lengths on the CPU only: on a GPU the check would make the host wait for the device every step.
    """
    _need_tensors(lengths=lengths)
    if batch is not None and tuple(lengths.shape) != (batch,):
        raise ValueError(
            f"lengths must be [batch] = [{batch}] (one real length a cell), got shape {tuple(lengths.shape)}"
        )
    if lengths.is_floating_point() or lengths.is_complex():  # (cast to integers later: 40.5 would become 40)
        raise ValueError(f"lengths must be integers (a count of tokens per cell), got dtype {lengths.dtype}")
    if lengths.device.type != "cpu" or lengths.numel() == 0 or torch.compiler.is_compiling():
        return
    if bool(((lengths < 0) | (lengths > seq_len)).any()):
        raise ValueError(
            f"lengths must be between 0 and the sequence length {seq_len}, got values from {int(lengths.min())} to "
            f"{int(lengths.max())}"
        )


def check_tokens(tokens: torch.Tensor, vocab_size: int, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """Refuse token ids outside ``[0, vocab_size)`` and malformed ``cu_seqlens``, naming them (values: CPU only).

    Returns ``tokens``, as int64 when another integer type than int32 / int64 (a corpus shard's uint16): the
    embedding takes those two only. Floating-point, complex and boolean tokens are refused.
    """
    _need_tensors(tokens=tokens, cu_seqlens=cu_seqlens)
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be integer token ids, got dtype {tokens.dtype}")
    if tokens.dtype not in (torch.int64, torch.int32):
        tokens = tokens.long()
    if cu_seqlens is not None and (cu_seqlens.dim() != 1 or cu_seqlens.is_floating_point()):
        raise ValueError(f"cu_seqlens must be a 1-D integer tensor [n_cells + 1], got shape "
                         f"{tuple(cu_seqlens.shape)} and dtype {cu_seqlens.dtype}")  # fmt: skip
    if tokens.device.type != "cpu" or torch.compiler.is_compiling():
        return tokens
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(
            f"token ids must be in [0, vocab_size={vocab_size}), got values from {int(tokens.min())} to "
            f"{int(tokens.max())}"
        )
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, tokens.numel())
    return tokens


def check_cu_seqlens(cu_seqlens: torch.Tensor, n_tokens: int) -> None:
    """Refuse ``cu_seqlens`` that do not rise from 0 to ``n_tokens`` (values on the CPU only: no host sync)."""
    if cu_seqlens.device.type != "cpu" or torch.compiler.is_compiling():
        return
    cu = cu_seqlens.reshape(-1)
    if cu.numel() == 0 or int(cu[0]) != 0 or int(cu[-1]) != n_tokens or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(
            f"cu_seqlens must rise from 0 to the number of packed tokens ({n_tokens}), got {cu.tolist()[:8]}"
            + (" ..." if cu.numel() > 8 else "")
        )


def check_max_seqlen(max_seqlen: Any, cu_seqlens: torch.Tensor) -> int | None:
    """``max_seqlen`` as an int (or None), refused unless a whole number >= 0 and, on the CPU, >= the longest cell."""
    try:
        ok = max_seqlen is None or (not isinstance(max_seqlen, bool) and int(max_seqlen) == max_seqlen >= 0)
    except (TypeError, ValueError, OverflowError, RuntimeError):  # nan, inf, a tensor of several values
        ok = False
    if not ok:
        raise ValueError(f"max_seqlen must be a whole number >= 0 (the longest cell's length), not {max_seqlen!r}")
    # (a bound below the longest cell is refused where it costs no synchronisation: on the CPU, and not while
    # torch.compile traces, where reading the lengths back would break the graph)
    cpu = cu_seqlens.device.type == "cpu" and not torch.compiler.is_compiling()
    if max_seqlen is not None and cpu and cu_seqlens.numel() > 1:
        longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
        if longest > max_seqlen:
            raise ValueError(f"max_seqlen={max_seqlen} is below the longest cell ({longest} tokens)")
    return None if max_seqlen is None else int(max_seqlen)


def _need_tensors(**named: Any) -> None:
    """Refuse inputs that are not torch tensors (None passes), naming them: numpy arrays fail deep inside otherwise."""
    for name, value in named.items():
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, not {type(value).__name__} (torch.from_numpy converts "
                            "a numpy array)")  # fmt: skip


def pool_hidden(hidden: torch.Tensor, lengths: torch.Tensor | None = None, pooling: str = "mean") -> torch.Tensor:
    """Cell embedding from token states.

    Parameters
    ----------
    hidden
        ``[batch, L, d]``.
    lengths
        ``[batch]`` real lengths (default: all ``L``).
    pooling
        ``"mean"`` over real tokens (pads excluded; a cell of length 0 gives zeros) or ``"cls"``
        (position 0; zeros for a cell of length 0).

    Returns
    -------
    torch.Tensor
        ``[batch, d]``.
    """
    _need_tensors(hidden=hidden, lengths=lengths)
    if hidden.dim() != 3 or (lengths is not None and tuple(lengths.shape) != (hidden.shape[0],)):
        got = None if lengths is None else tuple(lengths.shape)
        raise ValueError(f"pooling takes hidden [batch, L, d] and lengths [batch], got {tuple(hidden.shape)} and {got}")
    if pooling == "cls":  # position 0; a cell without tokens (its position 0 is a pad) gives zeros
        if hidden.shape[1] == 0:
            return hidden.new_zeros(hidden.shape[0], hidden.shape[-1])
        first = hidden[:, 0]
        return first if lengths is None else first * (lengths.to(hidden.device) > 0).to(first.dtype).unsqueeze(-1)
    if pooling != "mean":
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    L = hidden.shape[1]
    if lengths is None:
        return hidden.mean(dim=1)
    check_lengths(lengths, L)
    mask = torch.arange(L, device=hidden.device).unsqueeze(0) < lengths.to(hidden.device).unsqueeze(1)
    summed = (hidden * mask.unsqueeze(-1).to(hidden.dtype)).sum(dim=1)
    return summed / lengths.clamp(min=1).to(summed.dtype).unsqueeze(-1)


def pack_tokens(tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[batch, L]`` tokens to the packed form of :meth:`GeneMambaEncoder.forward_packed`.

    Returns
    -------
    tuple
        ``tokens_packed`` ``[T]`` (the real tokens of every cell, in order) and ``cu_seqlens``
        ``[batch + 1]`` int64 on the device of ``tokens``.
    """
    batch, L = tokens.shape
    if lengths is None:
        lengths = torch.full((batch,), L, dtype=torch.long, device=tokens.device)
    check_lengths(lengths, L)
    lengths = lengths.to(device=tokens.device, dtype=torch.long).clamp(0, L)
    mask = torch.arange(L, device=tokens.device).unsqueeze(0) < lengths.unsqueeze(1)
    cu = F.pad(torch.cumsum(lengths, 0), (1, 0))
    return tokens[mask], cu


def unpack_hidden(hidden: torch.Tensor, lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Packed ``[T, d]`` states back to right-padded ``[batch, seq_len, d]`` (zeros at pads)."""
    _need_tensors(hidden=hidden, lengths=lengths)
    bad = hidden.dim() != 2 or lengths.dim() != 1
    if not bad and lengths.device.type == "cpu" and lengths.numel():  # (values: CPU only, as check_lengths)
        bad = int(lengths.sum()) != hidden.shape[0] or int(lengths.min()) < 0 or int(lengths.max()) > seq_len
    if bad:  # a row of one cell would land in another's otherwise
        raise ValueError(f"unpack_hidden takes packed states [T, d] and lengths [batch] that sum to T, each <= seq_len "
                         f"({seq_len}); got {tuple(hidden.shape)} and lengths {lengths.tolist()[:8]}")  # fmt: skip
    lengths = lengths.to(device=hidden.device, dtype=torch.long).clamp(0, seq_len)
    mask = torch.arange(seq_len, device=hidden.device).unsqueeze(0) < lengths.unsqueeze(1)
    out = hidden.new_zeros(lengths.shape[0], seq_len, hidden.shape[-1])
    return out.masked_scatter(mask.unsqueeze(-1), hidden)


def pool_packed(hidden: torch.Tensor, cu_seqlens: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """Cell embeddings ``[n_cells, d]`` from packed states ``[T, d]`` (mean over each cell, or its first token)."""
    _need_tensors(hidden=hidden, cu_seqlens=cu_seqlens)
    check_cu_seqlens(cu_seqlens, hidden.shape[0])  # (a malformed one failed deep in repeat_interleave; nn probe)
    cu = cu_seqlens.to(device=hidden.device, dtype=torch.long)
    n_cells = cu.numel() - 1
    if pooling == "cls":  # a cell without tokens has no first token: zeros, as on the padded path
        if hidden.shape[0] == 0:
            return hidden.new_zeros(n_cells, hidden.shape[-1])
        first = hidden.index_select(0, cu[:-1].clamp(max=hidden.shape[0] - 1))
        return first * (cu[1:] > cu[:-1]).to(first.dtype).unsqueeze(-1)
    if pooling != "mean":
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    lengths = cu[1:] - cu[:-1]
    seq = torch.repeat_interleave(torch.arange(n_cells, device=hidden.device), lengths, output_size=hidden.shape[0])
    summed = hidden.new_zeros(n_cells, hidden.shape[-1]).index_add_(0, seq, hidden)
    return summed / lengths.clamp(min=1).to(summed.dtype).unsqueeze(-1)
