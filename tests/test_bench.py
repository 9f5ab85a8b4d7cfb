"""The speed benchmark measures the full Denoiser path and reports skips instead of failing."""

from __future__ import annotations

from bluesky_tomogan.bench import measure, table


def test_measure_reports_latency_throughput_and_memory():
    r = measure("tomogan-projection", "onnxruntime", "fp32", 64, repeats=3, threads=1)
    assert r["backend"] == "onnxruntime" and r["size"] == 64
    assert 0 < r["min_ms"] <= r["median_ms"] <= r["p99_ms"]
    assert r["frames_per_s"] > 0 and r["peak_rss_mb"] > 10


def test_unavailable_backend_is_reported_as_skipped():
    r = measure("tomogan-projection", "edgetpu", "int8", 64, repeats=1, threads=1)
    assert "libedgetpu" in r["skipped"]
    text = table([r, measure("tomogan-projection", "onnxruntime", "fp32", 64, 2, 1)], {64: 10.0})
    assert "| 64 | onnxruntime | fp32 |" in text and "skipped edgetpu/int8" in text


ZEN5_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16

processor\t: 1
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu avx2
"""


def test_the_cpu_name_carries_the_family_and_model_that_a_virtual_machine_name_hides(monkeypatch):
    from bluesky_tomogan import cpu

    monkeypatch.setattr(cpu, "_cpuinfo", lambda: ZEN5_CPUINFO)
    assert cpu.cpu_name() == "AMD EPYC (family 26, model 2)"
    assert cpu.cpu_flags() == {"fpu", "avx2", "avx512f", "avx512_vnni", "avx512_bf16"}  # the first CPU's
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: "processor\t: 0\nmodel name\t: Neoverse\n")
    assert cpu.cpu_name() == "Neoverse"


def test_a_cap_on_onednns_instruction_sets_is_what_the_kernels_use_and_is_named_beside_the_cpu(monkeypatch, caplog):
    from bluesky_tomogan import cpu

    monkeypatch.setattr(cpu, "_cpuinfo", lambda: ZEN5_CPUINFO)
    for variable in cpu.ISA_CAP_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    assert cpu.isa_cap() is None and cpu.dispatch_cpu_flags() == cpu.cpu_flags()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")  # oneDNN reads it in any case
    assert cpu.isa_cap() == "AVX2"
    assert cpu.dispatch_cpu_flags() == {"fpu", "avx2"}  # no AVX-512, no VNNI, no bf16
    assert cpu.cpu_name() == "AMD EPYC (family 26, model 2), ONEDNN_MAX_CPU_ISA=AVX2"
    assert cpu.cpu_flags() == {"fpu", "avx2", "avx512f", "avx512_vnni", "avx512_bf16"}  # what the CPU has
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # AVX-512 without VNNI: a Skylake-SP Xeon
    assert cpu.dispatch_cpu_flags() == {"fpu", "avx2", "avx512f"}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    assert cpu.dispatch_cpu_flags() == {"fpu", "avx2", "avx512f", "avx512_vnni"}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")  # caps nothing
    assert cpu.isa_cap() is None and cpu.cpu_name() == "AMD EPYC (family 26, model 2)"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")  # the older spelling
    assert cpu.isa_cap() == "AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # the newer one wins, as in oneDNN
    assert cpu.isa_cap() == "AVX512_CORE_BF16" and "avx512_bf16" in cpu.dispatch_cpu_flags()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX3")  # not a value oneDNN knows: no cap, and the user is told once
    monkeypatch.setattr(cpu, "_UNKNOWN_CAPS_TOLD", set())
    with caplog.at_level("WARNING"):
        assert cpu.isa_cap() is None and cpu.isa_cap() is None
    assert caplog.text.count("ONEDNN_MAX_CPU_ISA=AVX3 is not an instruction set oneDNN knows") == 1
