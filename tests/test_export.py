"""Export fidelity: ONNX (and, with TensorFlow, Keras/TFLite) reproduce the PyTorch network."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs the train extra (torch)")
ort = pytest.importorskip("onnxruntime")

from bluesky_tomogan.model.network import GeneratorConfig, TomoGANGenerator  # noqa: E402


@pytest.mark.parametrize("options", [{}, {"upsample": "transposed"}, {"input_downscale": 2, "width": 0.5}])
def test_onnx_matches_torch_at_several_shapes(tmp_path, options):
    from bluesky_tomogan.export.onnx import export_onnx

    torch.manual_seed(0)
    gen = TomoGANGenerator(GeneratorConfig(**options)).eval()
    path = export_onnx(gen, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 64, 96), (1, 3, 128, 48)]:
        x = torch.rand(*shape)
        with torch.no_grad():
            ref = gen(x).numpy()
        np.testing.assert_allclose(session.run(None, {"frames": x.numpy()})[0], ref, atol=1e-5)


def test_correction_network_is_the_residual_network_minus_the_centre_frame():
    torch.manual_seed(0)
    gen = TomoGANGenerator().eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose((gen(x) - x[:, 1:2]).numpy(), gen.correction_network()(x).numpy(), atol=1e-6)


@pytest.mark.slow
def test_keras_replica_and_full_int8_tflite_follow_torch(tmp_path):
    pytest.importorskip("tensorflow", reason="TFLite export needs the export extra")
    from ai_edge_litert.interpreter import Interpreter

    from bluesky_tomogan.export.keras_model import keras_from_torch
    from bluesky_tomogan.export.tflite import export_tflite_int8

    torch.manual_seed(0)
    gen = TomoGANGenerator(GeneratorConfig(upsample="transposed")).eval()
    x = np.random.default_rng(0).random((1, 3, 32, 32), np.float32)
    with torch.no_grad():
        ref = gen(torch.from_numpy(x)).numpy()
    keras_out = keras_from_torch(gen).predict_on_batch(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(keras_out, ref, atol=1e-5)
    calib = np.random.default_rng(1).random((16, 3, 32, 32), np.float32)
    path = export_tflite_int8(gen, tmp_path / "m.tflite", calib, 32)
    it = Interpreter(str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8 and list(inp["shape"]) == [1, 32, 32, 3]


@pytest.mark.slow
def test_int8_input_range_ignores_rare_calibration_outliers(tmp_path):
    pytest.importorskip("tensorflow", reason="TFLite export needs the export extra")
    from ai_edge_litert.interpreter import Interpreter

    from bluesky_tomogan.export.tflite import export_tflite_int8

    torch.manual_seed(0)
    gen = TomoGANGenerator(GeneratorConfig()).eval()
    calib = np.random.default_rng(1).random((16, 3, 32, 32), np.float32)
    calib[0, 1, 5, 5] = 5.0  # one streak pixel, as reconstructed slices have

    def input_step(**options):
        it = Interpreter(str(export_tflite_int8(gen, tmp_path / "m.tflite", calib, 32, **options)))
        return it.get_input_details()[0]["quantization"][0]

    assert input_step() < 1.2 / 255  # the range of the values, not of the outlier
    assert input_step(input_percentiles=None) > 4.9 / 255
