"""The one place where the compute device is chosen, and what it can do fast."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from stormfold.errors import UserError


def get_device(name: str | None = None) -> torch.device:
    """Return the torch device to run on.

    Parameters
    ----------
    name : {None, "auto", "cpu", "cuda", "cuda:N"}
        ``None`` or ``"auto"`` picks CUDA when it is available, else the CPU.
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} requested but CUDA is not available on this machine")
        return torch.device(name)
    raise UserError(f"unknown device {name!r}: use cpu, cuda or auto")


#: CPU flags (Linux ``/proc/cpuinfo``) of native bfloat16 arithmetic: AVX-512 BF16 (Intel
#: Cooper Lake and later, AMD Zen 4 and later) and AMX (Intel Sapphire Rapids and later).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
#: oneDNN instruction-set caps (``ONEDNN_MAX_CPU_ISA``) below AVX-512 BF16: with one of them
#: set, bf16 is emulated even on a CPU that has the flags.
NO_BF16_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                "AVX512_CORE_VNNI")


def _cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` of ``/proc/cpuinfo`` (None where it does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name):
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags() -> set[str]:
    """Feature flags of the CPU (empty where ``/proc/cpuinfo`` does not exist)."""
    return set((_cpuinfo_field("flags") or "").split())


def cpu_model() -> str:
    """The CPU's model name, for benchmark records (``platform.processor()`` as a fallback)."""
    import platform

    return _cpuinfo_field("model name") or platform.processor() or "unknown"


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes in bfloat16 natively (so bf16 autocast is faster).

    CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and later). CPU: one of
    :data:`BF16_CPU_FLAGS`, unless oneDNN is capped below it (``ONEDNN_MAX_CPU_ISA`` in
    :data:`NO_BF16_ISAS`). Without them bf16 is emulated and several times slower than
    float32 on a CPU (benchmarks/deepstorm.py --isa AVX2).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
               or "").strip().upper()
        return bool(cpu_flags() & set(BF16_CPU_FLAGS)) and cap not in NO_BF16_ISAS
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"auto"`` → ``"bfloat16"`` where :func:`native_bf16`, else ``"float32"``; other
    values are returned unchanged."""
    if precision != "auto":
        return precision
    return "bfloat16" if native_bf16(device) else "float32"
