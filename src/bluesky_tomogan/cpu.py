"""What this machine's CPU is and can do, read once from ``/proc/cpuinfo`` (Linux).

Runtime choices depend on it (the precision of an OpenVINO int8 graph's float parts)
and every speed figure names it.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_flags", "cpu_name", "SPEED_FLAGS"]

#: The instruction sets that decide CPU inference speed, in the order benchmarks print them.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


@functools.cache
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    """The CPU's model name, to print beside every speed figure."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags (``amx_bf16``, ``avx512_vnni``, ...); empty where unknown."""
    line = next((ln for ln in _cpuinfo().splitlines() if ln.startswith("flags")), "")
    return frozenset(line.split(":", 1)[-1].split())
