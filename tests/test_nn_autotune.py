"""``nn._launch.fast_autotuner_run``: mamba-ssm's autotuned kernels launched without ``Autotuner.run``'s per-call
overhead, with the very same key, config, pre-hook and kernel call (a recording stand-in for the kernel)."""

from __future__ import annotations

import types

import pytest
import torch

from genemamba_scvi.nn import _launch

triton = pytest.importorskip("triton")
from triton.runtime.autotuner import Autotuner  # noqa: E402


class _Fn:
    """Stands in for the ``triton.jit`` function under the autotuner: records ``run`` calls."""

    def __init__(self):
        self.calls = []
        self.fn = lambda x_ptr, n, y_ptr, m: None  # what Autotuner walks down to (``base_fn``)

    def run(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return "launched"


def _autotuner(hooks):
    configs = [
        triton.Config({"BLOCK": 16}, num_warps=4),
        triton.Config({"BLOCK": 32}, num_warps=8, pre_hook=lambda nargs: hooks.append(sorted(nargs))),
    ]
    at = Autotuner(_Fn(), ["x_ptr", "n", "y_ptr", "m"], configs, key=["n", "m"], reset_to_zero=None, restore_value=None)
    at._bench = lambda *a, config, **k: [1.0 if config.kwargs["BLOCK"] == 32 else 2.0]  # BLOCK=32 wins
    return at


@pytest.fixture
def on(monkeypatch):
    monkeypatch.setattr(_launch, "FAST_AUTOTUNER", True)


def test_a_tuned_key_launches_what_autotuner_run_launches(on):
    slow_hooks, fast_hooks = [], []
    slow, fast = _autotuner(slow_hooks), _autotuner(fast_hooks)
    assert _launch.speed_up_autotuners([types.SimpleNamespace(k=fast, other=1)]) == 1
    assert _launch.speed_up_autotuners([types.SimpleNamespace(k=fast)]) == 0  # already routed
    x, y = torch.zeros(4), torch.zeros(4, dtype=torch.float64)
    args, kwargs = (x, 100, y), {"m": 7, "grid": (1,), "warmup": False}
    assert slow.run(*args, **kwargs) == "launched"  # tunes: BLOCK=32, and caches the key
    fast.cache = dict(slow.cache)  # the same tuning result (the same config objects, so the same pre-hook)
    n_hooks = len(slow_hooks)
    assert fast.run(*args, **kwargs) == "launched"
    assert fast.fn.calls == slow.fn.calls[-1:]  # one launch, same arguments, same config kwargs
    assert fast.fn.calls[0][1]["BLOCK"] == 32 and fast.fn.calls[0][1]["num_warps"] == 8
    # the config's pre-hook ran once more, on the same named arguments
    assert len(slow_hooks) == n_hooks + 1 and slow_hooks[-1] == slow_hooks[-2] and "x_ptr" in slow_hooks[-1]
    assert not fast_hooks


@pytest.mark.parametrize(
    "change",
    [
        lambda x, y: ((x, 101, y), {"m": 7}),  # another key value
        lambda x, y: ((x.double(), 100, y), {"m": 7}),  # another dtype
        lambda x, y: ((x, 100, y), {"m": 8}),  # a key passed by keyword
    ],
)
def test_an_untuned_key_goes_to_autotuner_run(on, monkeypatch, change):
    at = _autotuner([])
    _launch.speed_up_autotuners([types.SimpleNamespace(k=at)])
    x, y = torch.zeros(4), torch.zeros(4)
    at.run(x, 100, y, m=7, grid=(1,), warmup=False)
    n_keys = len(at.cache)
    args, kwargs = change(x, y)
    at.run(*args, **kwargs, grid=(1,), warmup=False)
    assert len(at.cache) == n_keys + 1  # Autotuner.run tuned the new key
    at.run(*args, **kwargs, grid=(1,), warmup=False)
    assert len(at.cache) == n_keys + 1 and len(at.fn.calls) == 3


def test_switch_off_runs_autotuner_run_every_time(monkeypatch):
    at = _autotuner([])
    _launch.speed_up_autotuners([types.SimpleNamespace(k=at)])
    calls = []
    monkeypatch.setattr(Autotuner, "run", lambda self, *a, **k: calls.append(a))
    monkeypatch.setattr(_launch, "FAST_AUTOTUNER", False)
    at.run(torch.zeros(1), 3, torch.zeros(1), m=1, grid=(1,), warmup=False)
    assert len(calls) == 1
