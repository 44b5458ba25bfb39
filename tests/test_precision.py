"""Arithmetic precision of Deep-STORM: float32 by default, ``auto`` = bfloat16 exactly where
the device has native bf16 (speeds: benchmarks/deepstorm.py)."""
from __future__ import annotations

import pytest
import torch

from stormfold import device as dev
from stormfold.deepstorm.engine import DeepStormEngine
from stormfold.deepstorm.model import DeepSTORM
from stormfold.deepstorm.normalization import Normalization
from stormfold.errors import UserError


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = dev.cpu_flags()
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        assert flags == set()
        return
    line = next(li for li in text.splitlines() if li.startswith("flags"))
    assert flags == set(line.split(":", 1)[1].split())


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "fma"}, "float32"),  # AVX2 only: bf16 is emulated, several times slower
    ({"avx512f", "avx512bw"}, "float32"),  # AVX-512 without BF16 is still emulation
    ({"avx512f", "avx512_bf16"}, "bfloat16"),  # e.g. AMD Zen 4, Intel Cooper Lake
    ({"amx_bf16", "amx_tile"}, "bfloat16"),  # Intel Sapphire Rapids
])
def test_auto_picks_bfloat16_only_with_native_support(monkeypatch, flags, expected):
    monkeypatch.setattr(dev, "cpu_flags", lambda: flags)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert dev.resolve_precision("auto", "cpu") == expected
    assert dev.resolve_precision("float32", "cpu") == "float32"
    assert dev.resolve_precision("bfloat16", "cpu") == "bfloat16"
    engine = DeepStormEngine(DeepSTORM([4, 4, 8, 8]).eval(), 8, 100.0, Normalization(),
                             threshold=0.1, precision="auto")
    assert engine.precision == expected
    described = engine.describe()
    assert described["precision"] == expected and described["precision_requested"] == "auto"


def test_a_onednn_cap_below_bf16_means_float32(monkeypatch):
    monkeypatch.setattr(dev, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert dev.resolve_precision("auto", "cpu") == "float32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert dev.resolve_precision("auto", "cpu") == "bfloat16"


def test_default_precision_is_float32():
    engine = DeepStormEngine(DeepSTORM([4, 4, 8, 8]).eval(), 8, 100.0, Normalization(),
                             threshold=0.1)
    assert engine.precision == "float32"
    with pytest.raises(UserError, match="precision"):
        DeepStormEngine(DeepSTORM([4, 4, 8, 8]).eval(), 8, 100.0, Normalization(),
                        threshold=0.1, precision="float16")


def test_bfloat16_output_is_close_to_float32():
    torch.manual_seed(0)
    model = DeepSTORM([4, 4, 8, 8]).eval()
    frames = torch.rand(2, 16, 16) * 500
    out = {p: DeepStormEngine(model, 8, 100.0, Normalization(scale_photons=500.0), threshold=0.1,
                              precision=p).predict(frames) for p in ("float32", "bfloat16")}
    scale = out["float32"].abs().max()
    assert (out["bfloat16"] - out["float32"]).abs().max() < 0.05 * scale
