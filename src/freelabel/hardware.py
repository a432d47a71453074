"""Which device and precision to use."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")  # the flags CPU speed figures depend on


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX) that torch's kernels use, where bf16
    autocast pays off. Kernels held below AVX-512 (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``)
    emulate bf16, many times slower than fp32, so there it is False."""
    flags = _cpuinfo()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL")).upper()
    onednn_avx512 = isa in ("ALL", "DEFAULT") or "AVX512" in isa or "AMX" in isa
    kernels_use_it = torch.backends.cpu.get_cpu_capability() == "AVX512" and onednn_avx512
    return kernels_use_it and ("avx512_bf16" in flags or "amx_bf16" in flags)


def cpu_description() -> str:
    """The CPU as every speed figure should name it: model, threads torch uses, vector flags, the level of
    torch's kernels, and whether bf16 autocast is the default here."""
    info = _cpuinfo()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    line = next((line for line in info.splitlines() if line.startswith("flags")), ":")
    flags = [f for f in VECTOR_FLAGS if f in line.split(":", 1)[1].split()]
    return (
        f"{name or platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, flags: "
        f"{' '.join(flags) or 'none'}, torch kernels: {torch.backends.cpu.get_cpu_capability()}, "
        f"bf16 autocast: {'yes' if cpu_has_bf16() else 'no (fp32)'}"
    )


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """``auto``: bf16 mixed precision where the hardware computes in bf16, else full fp32."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("auto", "cpu") and cpu_has_bf16():
        return "bf16-mixed"
    return "32-true"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def loader_workers(asked: int, processes: int = 1) -> int:
    """``asked`` loader workers, cut so that those of the ``processes`` on this machine fit its cores."""
    return max(0, min(asked, cpu_cores() // max(1, processes)))
