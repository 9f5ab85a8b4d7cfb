"""What this machine's CPU is and can do, read once from ``/proc/cpuinfo`` (Linux).

Runtime choices depend on it (the precision of an OpenVINO int8 graph's float parts)
and every speed figure names it.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_flags", "cpu_name", "is_x86", "SPEED_FLAGS"]

#: The instruction sets that decide CPU inference speed, in the order benchmarks print them.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


@functools.cache
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _first_cpu_fields() -> dict[str, str]:
    """``key: value`` lines of the first processor in ``/proc/cpuinfo``."""
    fields: dict[str, str] = {}
    for line in _cpuinfo().splitlines():
        if not line.strip():
            break  # the first processor's block ends at the first blank line
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_name() -> str:
    """The CPU's model name, to print beside every speed figure.

    Where ``/proc/cpuinfo`` gives the x86 family and model, they follow the name: a
    virtual machine often shows only "AMD EPYC", which hides a generation that changes
    the speed figures (on two such machines Keras fp32 of the full network took 1000 ms
    on family 25 model 17, a Zen 4 core, and 530 ms on family 26 model 2, a Zen 5 one).
    """
    fields = _first_cpu_fields()
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags (``amx_bf16``, ``avx512_vnni``, ...); empty where unknown."""
    return frozenset(_first_cpu_fields().get("flags", "").split())


def is_x86(machine: str | None = None) -> bool:
    """Whether ``machine`` (default: this one, ``platform.machine()``) is an x86 CPU, whose int8
    kernels depend on its instruction sets (VNNI, AVX-512)."""
    return (machine or platform.machine()).lower() in ("x86_64", "amd64", "i386", "i686", "x86")
