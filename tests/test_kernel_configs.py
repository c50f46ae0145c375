"""Shipped / remembered Triton launch configurations (CPU: with stand-in autotuners)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from genemamba_scvi.nn import kernel_configs as kc


def _config(bm: int, warps: int, stages: int, hook=None):
    return SimpleNamespace(
        kwargs={"BLOCK_SIZE_M": bm}, num_warps=warps, num_stages=stages, num_ctas=1, maxnreg=None, pre_hook=hook
    )


class _Tuner:
    def __init__(self, configs):
        self.configs = configs
        self.cache = {}


@pytest.fixture
def tuners(monkeypatch):
    hook = object()
    found = {
        "ssd_bmm._bmm_chunk_fwd_kernel": _Tuner([_config(64, 4, 3), _config(128, 8, 3, hook)]),
        "layer_norm._layer_norm_fwd_1pass_kernel": _Tuner([_config(1, 4, 1)]),
    }
    monkeypatch.setattr(kc, "autotuners", lambda: found)
    monkeypatch.setattr(kc, "_STATE", {"installed": False, "known": set(), "stats": None})
    return found


def test_the_shipped_hopper_file_is_well_formed():
    path = kc.SHIPPED_DIR / "sm90.json"
    doc = json.loads(path.read_text())
    assert doc["meta"]["capability"] == [9, 0]
    assert 512 in doc["meta"]["d_model"]
    n = 0
    for name, entries in doc["kernels"].items():
        assert "." in name
        for e in entries:
            assert isinstance(e["key"], list) and e["key"]
            assert set(e["config"]) == {"kwargs", "num_warps", "num_stages", "num_ctas", "maxnreg"}
            n += 1
    assert n >= 16  # every SSD / norm kernel of a bf16 training step and of fp32 inference


def test_installed_winner_is_the_kernels_own_config_object_with_its_pre_hook(tuners):
    bmm = tuners["ssd_bmm._bmm_chunk_fwd_kernel"]
    key = [256, 64, True, "torch.bfloat16", "torch.int32"]
    kernels = {
        "ssd_bmm._bmm_chunk_fwd_kernel": [{"key": key, "config": kc._describe(_config(128, 8, 3))}],
        "gone.kernel": [{"key": [1], "config": kc._describe(_config(1, 1, 1))}],
    }
    installed, skipped = kc._install(kernels, tuners)
    assert (installed, skipped) == (1, 1)
    assert bmm.cache[tuple(key)] is bmm.configs[1]  # the candidate itself, pre_hook included


def test_a_winner_that_is_not_a_current_candidate_is_left_to_autotuning(tuners):
    bmm = tuners["ssd_bmm._bmm_chunk_fwd_kernel"]
    kernels = {"ssd_bmm._bmm_chunk_fwd_kernel": [{"key": [1], "config": kc._describe(_config(32, 2, 5))}]}
    assert kc._install(kernels, tuners) == (0, 1)
    assert bmm.cache == {}


def test_export_then_install_round_trips_every_winner(tuners):
    bmm = tuners["ssd_bmm._bmm_chunk_fwd_kernel"]
    bmm.cache[(256, 64, False, "torch.float32")] = bmm.configs[0]
    bmm.cache[(256, 64, True, "torch.bfloat16")] = bmm.configs[1]
    exported = json.loads(json.dumps(kc.export_tuned_configs()))
    bmm.cache.clear()
    assert kc._install(exported, tuners) == (2, 0)
    assert bmm.cache[(256, 64, True, "torch.bfloat16")] is bmm.configs[1]
    assert bmm.cache[(256, 64, False, "torch.float32")] is bmm.configs[0]


def test_run_time_winners_are_saved_atomically_and_only_once(tuners, monkeypatch, tmp_path):
    monkeypatch.setenv("GENEMAMBA_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Test GPU")
    bmm = tuners["ssd_bmm._bmm_chunk_fwd_kernel"]
    bmm.cache[(256, 64, True, "torch.bfloat16")] = bmm.configs[1]
    path = kc.save_kernel_cache()
    assert path == tmp_path / "kernels" / "nvidia_test_gpu.json"
    saved = json.loads(path.read_text())["kernels"]
    assert saved["ssd_bmm._bmm_chunk_fwd_kernel"][0]["key"] == [256, 64, True, "torch.bfloat16"]
    assert kc.save_kernel_cache() is None  # nothing new
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_kernel_cache_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("GENEMAMBA_KERNEL_CACHE", "0")
    assert kc.kernel_cache_path() is None
    monkeypatch.setenv("GENEMAMBA_KERNEL_CACHE", "/tmp/x")
    monkeypatch.setenv("GENEMAMBA_TUNED_KERNELS", "0")
    assert kc.save_kernel_cache() is None


def test_without_triton_or_cuda_nothing_is_installed(monkeypatch):
    monkeypatch.setattr(kc, "_STATE", {"installed": False, "known": set(), "stats": None})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert kc.install_tuned_configs()["installed"] == 0
