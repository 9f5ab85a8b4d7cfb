"""A backend that an installed package adds (``bluesky_tomogan.backends`` entry points)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bluesky_tomogan import load_denoiser
from bluesky_tomogan.cli import build_parser
from bluesky_tomogan.errors import BackendUnavailableError, UnknownBackendError
from bluesky_tomogan.inference import registry

from .conftest import installed_package

#: A facility's package: its accelerator's runtime stands in here as ONNX Runtime under another name.
FACILITY_BACKEND = '''
from bluesky_tomogan.inference.registry import REGISTRY, BackendSpec

_ort = REGISTRY["onnxruntime"]


def _open(request):
    session = _ort.opener(request)
    session.backend = "facility-npu"
    return session


def spec():
    return BackendSpec("facility-npu", {"fp32": "onnx"}, "facility-npu", _ort.probe, _open, auto_before="openvino")


NOT_A_SPEC = "a string"
'''


@pytest.fixture
def facility_package(tmp_path, monkeypatch):
    """The package installed (on ``sys.path``), and the registry made to look for backends afresh before and
    after, as a new process would."""
    site = installed_package(tmp_path / "site", "facility-backends", {registry.ENTRY_POINT_GROUP: {
        "facility-npu": "facility_backend:spec",
        "broken-npu": "no_such_runtime_module:spec",
        "wrong-npu": "facility_backend:NOT_A_SPEC",
        "openvino": "facility_backend:spec",
    }}, {"facility_backend.py": FACILITY_BACKEND})
    monkeypatch.syspath_prepend(str(site))
    registry._plugins.cache_clear()
    registry._unloadable.clear()
    yield site
    registry._plugins.cache_clear()
    registry._unloadable.clear()


def test_a_packages_backend_loads_by_name_and_auto_tries_it_where_it_asks(facility_package, caplog):
    with caplog.at_level(logging.WARNING, logger="bluesky_tomogan.inference.registry"):
        names = registry.backend_names()
    assert "facility-npu" in names and list(registry.REGISTRY)[-1] == "facility-npu"  # after the built-ins
    assert registry.spec("openvino").auto_before is None  # the built-in one, not the package's
    assert "names a backend that exists already; not used" in caplog.text  # a package cannot replace a built-in
    order = registry.auto_order()
    assert order.index(("facility-npu", "fp32")) == order.index(("openvino", "int8")) - 1
    den = load_denoiser(backend="facility-npu")
    assert den.backend == "facility-npu" and den.provenance()["backend"] == "facility-npu"
    frames = np.random.default_rng(0).poisson(300, (5, 48, 48)).astype(np.float32)
    np.testing.assert_array_equal(den.denoise_context(frames),
                                  load_denoiser(backend="onnxruntime").denoise_context(frames))
    assert load_denoiser().backend == "facility-npu"  # auto: before the CPU's backends, as it asked
    args = build_parser().parse_args(["denoise", "a.h5", "b.h5", "--backend", "facility-npu"])  # a CLI choice
    assert args.backend == "facility-npu"


def test_a_package_whose_backend_cannot_be_had_says_why_and_costs_only_that_backend(facility_package, caplog):
    with caplog.at_level(logging.WARNING, logger="bluesky_tomogan.inference.registry"):
        assert "broken-npu" not in registry.backend_names()
    assert "backend 'broken-npu' cannot be used: its package failed to load" in caplog.text
    with pytest.raises(BackendUnavailableError, match="backend 'broken-npu', which an installed package announces, "
                                                      "cannot be used: its package failed to load .*ModuleNotFound"):
        load_denoiser(backend="broken-npu")
    with pytest.raises(BackendUnavailableError, match="gives str '', not a BackendSpec named 'wrong-npu'"):
        load_denoiser(backend="wrong-npu")
    with pytest.raises(UnknownBackendError, match="unknown backend 'nothing-npu'; choose from auto, cpu, tensorrt"):
        load_denoiser(backend="nothing-npu")
    assert load_denoiser(backend="onnxruntime").backend == "onnxruntime"  # the built-ins are untouched
