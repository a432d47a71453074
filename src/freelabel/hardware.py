"""Which device and precision to use."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
