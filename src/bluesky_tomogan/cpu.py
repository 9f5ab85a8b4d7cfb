"""What this machine's CPU is and can do, read once from ``/proc/cpuinfo`` (Linux).

Runtime choices depend on it (the precision of an OpenVINO int8 graph's float parts)
and every speed figure names it. What the kernels use can be less than what the CPU has:
oneDNN (OpenVINO's CPU plugin, PyTorch) dispatches to no instruction set above the cap
in ``ONEDNN_MAX_CPU_ISA`` (:func:`isa_cap`), and :func:`dispatch_cpu_flags` leaves out what
that cap rules out.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from pathlib import Path

__all__ = ["cpu_flags", "cpu_name", "dispatch_cpu_flags", "is_x86", "isa_cap", "ISA_CAP_VARIABLES", "SPEED_FLAGS"]

log = logging.getLogger(__name__)

#: The instruction sets that decide CPU inference speed, in the order benchmarks print them.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


#: The environment variables that cap the instruction sets oneDNN dispatches to, in the order
#: oneDNN reads them (``DNNL_`` is its older spelling).
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")

_AMX = "amx"  # amx_tile, amx_int8, amx_bf16, amx_fp16
#: For each cap value oneDNN documents, the prefixes of the ``/proc/cpuinfo`` flags whose
#: instructions its kernels then leave unused. oneDNN's AVX-512 caps leave out the VEX-encoded
#: AVX-VNNI too (its ISAs are feature sets, not a ladder). Under ``AVX2`` or ``AVX512_CORE``
#: int8 convolutions sum through saturating 16-bit pairs, as on a CPU without VNNI: with the
#: cap set on an AMD Zen 4 (which has VNNI) the light projection model's 8-bit IR lost the same
#: SSIM, to six digits, as on a Zen 3 without VNNI (docs/backends.md).
_CAP_RULES_OUT: dict[str, tuple[str, ...]] = {
    "SSE41": ("avx", "f16c", "fma", _AMX),
    "AVX": ("avx2", "avx512", "avx_vnni", "fma", _AMX),
    "AVX2": ("avx512", "avx_vnni", _AMX),
    "AVX2_VNNI": ("avx512", _AMX),
    "AVX2_VNNI_2": ("avx512", _AMX),
    "AVX512_CORE": ("avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", _AMX),
    "AVX512_CORE_VNNI": ("avx512_bf16", "avx512_fp16", "avx_vnni", _AMX),
    "AVX512_CORE_BF16": ("avx512_fp16", "avx_vnni", _AMX),
    "AVX512_CORE_FP16": ("avx_vnni", _AMX),
    "AVX10_1_512": ("avx_vnni", _AMX),
    "AVX512_CORE_AMX": ("avx_vnni",),
    "AVX10_1_512_AMX": ("avx_vnni",),
    "AVX512_CORE_AMX_FP16": ("avx_vnni",),
    "AVX10_1_512_AMX_FP16": ("avx_vnni",),
    "ALL": (),
    "DEFAULT": (),
}
_UNKNOWN_CAPS_TOLD: set[tuple[str, str]] = set()


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
    A cap on oneDNN's instruction sets (:func:`isa_cap`) follows too: what was measured under
    it is not what the CPU does without it.
    """
    fields = _first_cpu_fields()
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name = f"{name} (family {fields['cpu family']}, model {fields['model']})"
    cap = isa_cap()  # a figure measured under a cap is that cap's, not the CPU's
    return f"{name}, ONEDNN_MAX_CPU_ISA={cap}" if cap else name


def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags (``amx_bf16``, ``avx512_vnni``, ...); empty where unknown."""
    return frozenset(_first_cpu_fields().get("flags", "").split())


def isa_cap() -> str | None:
    """The cap on oneDNN's instruction sets set in the environment (``ONEDNN_MAX_CPU_ISA``), or ``None``.

    ``None`` also where the value caps nothing (``ALL``, ``DEFAULT``) or is not one oneDNN
    knows (it then dispatches as without a cap; logged). Read when called: oneDNN itself reads
    the variable once, at its first kernel, so set it before the process starts.
    """
    for variable in ISA_CAP_VARIABLES:
        value = os.environ.get(variable, "").strip().upper()  # oneDNN reads it in any case
        if not value:
            continue
        if value not in _CAP_RULES_OUT:
            if (variable, value) not in _UNKNOWN_CAPS_TOLD:  # once: this is asked at every card entry
                _UNKNOWN_CAPS_TOLD.add((variable, value))
                log.warning("%s=%s is not an instruction set oneDNN knows; its kernels are not capped",
                            variable, value)
            return None
        return value if _CAP_RULES_OUT[value] else None
    return None


def dispatch_cpu_flags() -> frozenset[str]:
    """:func:`cpu_flags` that oneDNN's kernels use: the CPU's, less those above :func:`isa_cap`.

    The runtime's choices that depend on the instruction set (int8 numerics with or without
    VNNI, bf16 float parts) follow what its kernels run, not what the CPU could run.
    """
    flags, cap = cpu_flags(), isa_cap()
    if cap is None:
        return flags
    ruled_out = _CAP_RULES_OUT[cap]
    return frozenset(f for f in flags if not f.startswith(ruled_out))


def is_x86(machine: str | None = None) -> bool:
    """Whether ``machine`` (default: this one, ``platform.machine()``) is an x86 CPU, whose int8
    kernels depend on its instruction sets (VNNI, AVX-512)."""
    return (machine or platform.machine()).lower() in ("x86_64", "amd64", "i386", "i686", "x86")
