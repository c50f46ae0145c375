"""``nn._launch.launch``: the cache of compiled Triton kernels that skips Triton's per-launch Python path.

The GPU runs it on every kernel of the fused path (``tests/test_nn_training_kernels.py`` and the others, compiled);
here a recording stand-in for a Triton kernel checks which launches go through Triton and which through the cached
launcher, with which arguments.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from genemamba_scvi.nn import _launch

triton = pytest.importorskip("triton")


class _Param(SimpleNamespace):
    pass


class _Compiled:
    function, packed_metadata = "fn", "meta"

    def __init__(self):
        self.calls = []

    def run(self, *a):
        self.calls.append(a)


class _Kernel:
    """``k(x_ptr, n, flag=3, BLOCK: constexpr, NW: constexpr = 4)``: records ``kernel[grid](...)`` launches."""

    def __init__(self):
        self.params = [
            _Param(name="x_ptr", is_constexpr=False, has_default=False, default=None),
            _Param(name="n", is_constexpr=False, has_default=False, default=None),
            _Param(name="BLOCK", is_constexpr=True, has_default=False, default=None),
            _Param(name="NW", is_constexpr=True, has_default=True, default=4),
        ]
        self.triton_launches = []
        self.compiled = []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.triton_launches.append((grid, args, kwargs))
            self.compiled.append(_Compiled())
            return self.compiled[-1]

        return run


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(_launch, "_interpreting", lambda: False)
    monkeypatch.setattr(_launch, "_current_device", lambda: 0)
    monkeypatch.setattr(_launch, "_current_stream", lambda device: 77)
    monkeypatch.setattr(_launch, "FAST_LAUNCH", True)
    monkeypatch.setattr(_launch, "_LAUNCHERS", {})


def test_second_launch_of_one_specialisation_skips_triton_and_passes_every_parameter(fast):
    k, x = _Kernel(), torch.zeros(64)
    _launch.launch(k, (3, 2), x, 100, BLOCK=32, num_warps=4)
    assert len(k.triton_launches) == 1
    _launch.launch(k, (5,), x, 200, BLOCK=32, num_warps=4)  # same alignment, int range and divisibility
    assert len(k.triton_launches) == 1
    (call,) = k.compiled[0].calls
    # grid padded to 3-D, the current stream, the compiled function, no hooks; then x, n, BLOCK, NW's default
    assert call == (5, 1, 1, 77, "fn", "meta", None, None, None, x, 200, 32, 4)


@pytest.mark.parametrize(
    "change",
    [
        lambda x: ((x[1:], 96), {"BLOCK": 32}),  # 4-byte offset: no longer 16-byte aligned
        lambda x: ((x, 1), {"BLOCK": 32}),  # an int equal to 1
        lambda x: ((x, 97), {"BLOCK": 32}),  # not divisible by 16
        lambda x: ((x, 2**40), {"BLOCK": 32}),  # past 32 bits
        lambda x: ((x.double(), 96), {"BLOCK": 32}),  # another dtype
        lambda x: ((x, 96), {"BLOCK": 64}),  # another constexpr
        lambda x: ((x, 96), {"BLOCK": 32, "num_warps": 8}),  # another launch option
    ],
)
def test_any_change_triton_specialises_on_goes_back_through_triton(fast, change):
    k, x = _Kernel(), torch.zeros(64)
    _launch.launch(k, (1,), x, 96, BLOCK=32)
    args, kwargs = change(x)
    _launch.launch(k, (1,), *args, **kwargs)
    assert len(k.triton_launches) == 2 and not k.compiled[0].calls


def test_positional_constexpr_or_switch_off_is_never_cached(fast, monkeypatch):
    k, x = _Kernel(), torch.zeros(64)
    for _ in range(2):
        _launch.launch(k, (1,), x, 96, 32)  # BLOCK by position: its value is not in the key
    assert len(k.triton_launches) == 2
    monkeypatch.setattr(_launch, "FAST_LAUNCH", False)
    for _ in range(2):
        _launch.launch(k, (1,), x, 96, BLOCK=32)
    assert len(k.triton_launches) == 4


def test_triton_jit_functions_expose_what_the_cache_reads():
    """The attributes :func:`~genemamba_scvi.nn._launch._cached_launch` reads exist on a real ``triton.jit``."""
    from triton.runtime.jit import JITFunction

    from genemamba_scvi.nn import _triton_conv

    k = _triton_conv.conv_both_bwd_dx_bounds_kernel
    params = (k if isinstance(k, JITFunction) else JITFunction(k.fn)).params  # (interpreted on a CPU)
    names = [p.name for p in params]
    assert names[:2] == ["w_ptr", "seq_ptr"] and names[-3:] == ["K", "BLOCK_R", "BLOCK_C"]
    assert [p.is_constexpr for p in params[-3:]] == [True, True, True] and not params[0].is_constexpr
    assert all(hasattr(p, "has_default") and hasattr(p, "default") for p in params)


def test_a_triton_launch_hook_sends_every_launch_through_triton(fast):
    from triton import knobs

    k, x = _Kernel(), torch.zeros(64)
    _launch.launch(k, (1,), x, 96, BLOCK=32)
    hook = lambda metadata: None  # a profiler's hook
    knobs.runtime.launch_enter_hook.add(hook)
    try:
        _launch.launch(k, (1,), x, 96, BLOCK=32)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert len(k.triton_launches) == 2
    _launch.launch(k, (1,), x, 96, BLOCK=32)
    assert len(k.triton_launches) == 2 and len(k.compiled[0].calls) == 1
