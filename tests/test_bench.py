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
