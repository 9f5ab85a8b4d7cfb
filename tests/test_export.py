"""Export fidelity: ONNX (and, with TensorFlow, Keras/TFLite) reproduce the PyTorch network."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs the train extra (torch)")
ort = pytest.importorskip("onnxruntime")

from pathlib import Path  # noqa: E402

from bluesky_tomogan.model.network import GeneratorConfig, TomoGANGenerator  # noqa: E402

from .conftest import copy_of_shipped_model  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("options", [{}, {"upsample": "transposed"}, {"input_downscale": 2, "width": 0.5},
                                     {"input_downscale": 2, "downscale": "space-to-depth"}])
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
    from bluesky_tomogan.export.copies import offset_activation_copies

    wide = offset_activation_copies(gen, calib, {"stem.0": 4, "enc1.0": 2, "dec1.2": 2, "head.0": 4})
    with torch.no_grad():
        wide_ref = wide(torch.from_numpy(x)).numpy()
    wide_keras = keras_from_torch(wide).predict_on_batch(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(wide_keras, wide_ref, atol=1e-5)  # the widened layers rebuilt in Keras
    path = export_tflite_int8(gen, tmp_path / "m.tflite", calib, 32)
    it = Interpreter(str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8 and list(inp["shape"]) == [1, 32, 32, 3]
    assert list(out["shape"]) == [1, 32, 32, 4]  # offset copies of the output, averaged by the session
    from bluesky_tomogan.inference.backends.litert import LiteRTSession

    int8 = LiteRTSession(path).run(x)
    assert int8.shape == ref.shape
    assert np.abs(int8 - ref).mean() < 0.01 * np.ptp(ref)


def _small_network_and_calibration() -> tuple[TomoGANGenerator, np.ndarray]:
    """A seeded 3-frame network and 16 calibration tiles of 32x32 for the TFLite export's tests."""
    pytest.importorskip("tensorflow", reason="TFLite export needs the export extra")
    torch.manual_seed(0)
    return TomoGANGenerator(GeneratorConfig()).eval(), np.random.default_rng(1).random((16, 3, 32, 32), np.float32)


@pytest.mark.slow
def test_the_full_int8_models_mean_output_error_is_measured_and_taken_off_its_bias(tmp_path):
    gen, calib = _small_network_and_calibration()
    from bluesky_tomogan.export.tflite import export_tflite_int8, int8_output_bias, shift_output_bias

    plain: dict[str, float] = {}
    model = export_tflite_int8(gen, tmp_path / "plain.tflite", calib, 32, bias_correction=False, info=plain)
    assert set(plain) == {"output_bias_before"}
    # the measure: int8 minus float, so a float network 0.01 higher is 0.01 less below it
    before = int8_output_bias(model, gen, calib)
    assert int8_output_bias(model, shift_output_bias(gen, 0.01), calib) == pytest.approx(before - 0.01, abs=1e-5)
    assert before == pytest.approx(plain["output_bias_before"], abs=1e-6)
    corrected: dict[str, float] = {}
    export_tflite_int8(gen, tmp_path / "m.tflite", calib, 32, info=corrected)
    assert corrected["output_bias_before"] == pytest.approx(before, abs=1e-6)  # the same first conversion
    assert abs(corrected["output_bias_after"]) < 0.5 * abs(before)


@pytest.mark.slow
def test_int8_input_range_ignores_rare_calibration_outliers(tmp_path):
    gen, calib = _small_network_and_calibration()
    from ai_edge_litert.interpreter import Interpreter

    from bluesky_tomogan.export.tflite import export_tflite_int8

    calib[0, 1, 5, 5] = 5.0  # one streak pixel, as reconstructed slices have

    def input_step(**options):
        it = Interpreter(str(export_tflite_int8(gen, tmp_path / "m.tflite", calib, 32, **options)))
        return it.get_input_details()[0]["quantization"][0]

    assert input_step() < 1.2 / 255  # the range of the values, not of the outlier
    assert input_step(input_percentiles=None) > 4.9 / 255


def _int8_weight_extremes(xml) -> list[int]:
    """The largest |int8 weight| of each int8 convolution of an IR, in graph order."""
    from bluesky_tomogan.inference.backends.openvino import openvino_core

    out = []
    for op in openvino_core().read_model(str(xml)).get_ordered_ops():
        if op.get_type_name() != "Convolution":
            continue
        node = op.input(1).get_source_output().get_node()
        while node.get_type_name() != "Constant":  # NNCF: int8 Constant -> Convert -> (Subtract) -> Multiply
            node = node.input(0).get_source_output().get_node()
        if node.get_element_type().get_type_name() == "i8":
            out.append(int(np.abs(node.get_data().astype(int)).max()))
    return out


def test_openvino_int8_ir_is_all_int8_with_an_input_range_that_ignores_zingers(tmp_path):
    pytest.importorskip("nncf", reason="the OpenVINO int8 export needs the export extra")
    from bluesky_tomogan.export.pipeline import _export_openvino_int8
    from bluesky_tomogan.inference.backends.openvino import OpenVINOSession

    torch.manual_seed(0)
    gen = TomoGANGenerator(GeneratorConfig(width=0.25)).eval()
    calib = np.random.default_rng(1).random((16, 3, 32, 32), np.float32)
    calib[0, 1, 5, 5] = 50.0  # one zinger in the calibration frames
    xml, info = _export_openvino_int8(gen.correction_network(), tmp_path / "m.int8.xml", calib, isolated_spikes=True)
    lo, hi = info["input_range"]
    assert hi < 1.1 and info["equalised"] and info["activation_copies"] == {"stem.0": 4}
    assert info["convolutions_in_float"] == 1 and info["output_layer_in_float"]  # the output layer only
    assert info["activation_ranges"] == "min-max"  # as TFLite calibrates; the hardest frames overflow the mean
    # the first layer's weights use the whole int8 range (NNCF's overflow fix would halve it)
    assert info["overflow_fix"] == "disable" and _int8_weight_extremes(xml)[0] == 127
    session = OpenVINOSession(xml, "int8", threads=1, isolated_spikes=True)
    grid = session.input_grid
    assert grid is not None and grid.quantise(np.float32(hi)) == 255 and grid.scale < 1.2 / 255
    # equalisation and the offset copies keep the network's function: int8 follows torch
    x = np.random.default_rng(2).random((1, 3, 32, 32), np.float32)
    with torch.no_grad():
        expected = gen.correction_network()(torch.from_numpy(x)).numpy()
    out = session.run(x)
    assert np.abs(out - expected).max() < 0.1 * np.abs(expected).max()


def test_openvino_int8_ir_takes_the_copies_it_is_given(tmp_path):
    """``openvino_copies``: a wider stem needs fewer copies; the reading layer gets stem x copies inputs."""
    pytest.importorskip("nncf", reason="the OpenVINO int8 export needs the export extra")
    import openvino as ov

    from bluesky_tomogan.export.pipeline import _export_openvino_int8

    torch.manual_seed(0)
    gen = TomoGANGenerator(GeneratorConfig(width=0.25, in_channels=5)).eval()
    stem = gen.stem[0].out_channels
    calib = np.random.default_rng(1).random((8, 5, 32, 32), np.float32)
    xml, info = _export_openvino_int8(gen.correction_network(), tmp_path / "m.int8.xml", calib,
                                      copies={"stem.0": 2})
    assert info["activation_copies"] == {"stem.0": 2}
    weights = [op.input_value(1).get_partial_shape() for op in ov.Core().read_model(str(xml)).get_ordered_ops()
               if op.get_type_name() == "Convolution"]
    assert weights[0][1].get_length() == 5 and weights[1][1].get_length() == 2 * stem


def _smooth_pairs(n: int, size: int, seed: int):
    """Piecewise-smooth clean frames and their noisy versions, three frames per scan."""
    from bluesky_tomogan.simulate.datasets import PairSet

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    gt = np.stack([0.5 + 0.3 * np.sin(6 * xx + k) * np.cos(4 * yy) for k in range(n)]).astype(np.float32)
    ns = (gt + rng.normal(0, 0.05, gt.shape)).astype(np.float32)
    return PairSet(ns=ns, gt=gt, group=np.arange(n) // 3)


def test_quantisation_aware_ir_is_int8_follows_the_fine_tuned_network_and_says_how_it_was_made(tmp_path):
    pytest.importorskip("nncf", reason="the OpenVINO int8 export needs the export extra")
    from bluesky_tomogan.export.openvino_int8 import ir_record, quantisation_aware_ir
    from bluesky_tomogan.inference.backends.openvino import OpenVINOSession

    torch.manual_seed(0)
    gen = TomoGANGenerator(GeneratorConfig(width=0.25)).eval()
    net = gen.correction_network()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pairs = _smooth_pairs(6, 32, 0)
    calib = np.stack([pairs.ns[i:i + 3] for i in range(4)])
    calib[0, 1, 5, 5] = 50.0  # a zinger: the input range ignores it, as the post-training IR's does
    xml, info = quantisation_aware_ir(net, tmp_path / "m.int8.xml", calib, pairs, 8, patch=32, batch=4,
                                      validation=pairs, keep_float=["head"])
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the float network is untouched
    assert info["method"] == "nncf quantization-aware training" and info["steps"] == 8
    assert info["overflow_fix"] == "disable" and info["input_range_calibrated"][1] < 1.2
    assert info["kept_in_float"] == ["head.0", "head.2"]
    assert 0 <= info["val_ssim_int8_simulated_after"] <= 1
    assert info["convolutions_in_float"] == 2 and info["convolutions"] > 2  # the rest runs in int8
    from bluesky_tomogan.inference.backends.openvino import openvino_core

    saved = ir_record(openvino_core().read_model(str(xml)))  # the record describes the IR as written
    assert {k: info[k] for k in saved} == saved
    assert _int8_weight_extremes(xml)[0] == 127  # 8-bit first layer, as the post-training IR
    session = OpenVINOSession(xml, "int8", threads=1)
    grid = session.input_grid  # the session saturates the input at the trained range, which the card records
    assert grid is not None
    assert np.allclose(info["input_range"], [(q - grid.zero) * grid.scale for q in (grid.qmin, grid.qmax)], atol=1e-6)
    x = pairs.ns[None, :3]
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    assert np.abs(session.run(x) - expected).max() < 0.2 * np.abs(expected).max() + 0.05


def _small_edge_network():
    """A narrow ``"edge"`` correction network (fused decoders at export), smooth pairs and 4 calibration contexts."""
    torch.manual_seed(0)
    net = TomoGANGenerator(GeneratorConfig(width=0.25, upsampled_padding="edge")).eval().correction_network()
    pairs = _smooth_pairs(6, 32, 0)
    return net, pairs, np.stack([pairs.ns[i:i + 3] for i in range(4)])


def test_quantisation_aware_ir_of_an_edge_network_is_fused_with_its_sums_in_float(tmp_path):
    pytest.importorskip("nncf", reason="the OpenVINO int8 export needs the export extra")
    from bluesky_tomogan.export.openvino_int8 import convolutions_in_float, quantisation_aware_ir
    from bluesky_tomogan.inference.backends.openvino import OpenVINOSession, openvino_core

    net, pairs, calib = _small_edge_network()
    xml, info = quantisation_aware_ir(net, tmp_path / "m.int8.xml", calib, pairs, 4, patch=32, batch=4,
                                      keep_float=["head", "dec2.0"])
    model = openvino_core().read_model(str(xml))
    ops = [op.get_type_name() for op in model.get_ordered_ops()]
    # the form the ONNX export writes: no resize, no concatenation
    assert ops.count("ConvolutionBackpropData") == 3 and "Interpolate" not in ops and "Concat" not in ops
    sums = [op for op in model.get_ops() if op.get_type_name() == "Add"
            and any(i.get_source_output().get_node().get_type_name() == "ConvolutionBackpropData" for i in op.inputs())]
    assert len(sums) == 3  # none of their inputs rounded to int8 (each a signed map before the ReLU)
    assert all(i.get_source_output().get_node().get_type_name() != "FakeQuantize" for op in sums for i in op.inputs())
    assert "fused" in info["decoders"]
    # a trained module's name still keeps its convolutions in float: dec2.0's two halves, and the head's
    assert info["kept_in_float"] == ["dec2.0.skip", "dec2.0.up", "head.0", "head.2"]
    assert info["convolutions_in_float"] == 4
    # one half can be named alone: the full-resolution skip convolution, not the transposed one
    assert convolutions_in_float(net, ["dec1.0.skip"]) == ["dec1.0.skip", "head.2"]
    x = pairs.ns[None, :3]
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    assert np.abs(OpenVINOSession(xml, "int8", threads=1).run(x) - expected).max() < 0.2 * np.abs(expected).max() + 0.05


def test_quantisation_aware_ir_rounds_the_fused_sums_it_is_not_told_to_keep_in_float(tmp_path):
    """Only the full-resolution decoder's sum in float: the deeper two sums read int8 inputs (faster;
    the light projection model lost nothing by it), and the card says which stayed in float."""
    pytest.importorskip("nncf", reason="the OpenVINO int8 export needs the export extra")
    from bluesky_tomogan.export.openvino_int8 import quantisation_aware_ir
    from bluesky_tomogan.inference.backends.openvino import openvino_core

    net, pairs, calib = _small_edge_network()
    xml, info = quantisation_aware_ir(net, tmp_path / "m.int8.xml", calib, pairs, 2, patch=32, batch=4,
                                      float_sums=(1,))
    model = openvino_core().read_model(str(xml))
    sums = {op.get_friendly_name().split(".")[1]: op for op in model.get_ops()
            if op.get_type_name() == "Add" and op.get_friendly_name().endswith(".0/aten::add/Add")}
    rounded = {name: all(i.get_source_output().get_node().get_type_name() == "FakeQuantize" for i in op.inputs())
               for name, op in sums.items()}
    assert rounded == {"dec1": False, "dec2": True, "dec3": True}
    assert info["decoder_sums_in_float"] == [1] and "decoders [1] in float" in info["decoders"]


@pytest.mark.parametrize(("copies", "stem_outputs"), [(None, 4), ({}, 1)])
def test_quantisation_aware_ir_copies_the_stem_only_as_told(tmp_path, copies, stem_outputs):
    pytest.importorskip("nncf", reason="the OpenVINO int8 export needs the export extra")
    from bluesky_tomogan.export.openvino_int8 import quantisation_aware_ir
    from bluesky_tomogan.inference.backends.openvino import openvino_core

    torch.manual_seed(0)
    net = TomoGANGenerator(GeneratorConfig(width=0.25)).eval().correction_network()
    pairs = _smooth_pairs(3, 32, 0)
    xml, info = quantisation_aware_ir(net, tmp_path / "m.int8.xml", pairs.ns[None, :3], pairs, 1, patch=32, batch=2,
                                      copies=copies)
    assert info["activation_copies"] == ({"stem.0": 4} if copies is None else copies)
    convs = [op for op in openvino_core().read_model(str(xml)).get_ordered_ops() if op.get_type_name() == "Convolution"]
    stem = net.stem[0].out_channels
    # each copy is more int8 input channels of the layer after the stem: its weights say how many
    assert convs[0].get_output_partial_shape(0)[1].get_length() == stem * stem_outputs
    assert convs[1].get_input_partial_shape(1)[1].get_length() == stem * stem_outputs


def test_quantisation_aware_ir_distilled_follows_the_float_network_not_the_targets(tmp_path):
    pytest.importorskip("nncf", reason="the OpenVINO int8 export needs the export extra")
    from bluesky_tomogan.export.openvino_int8 import quantisation_aware_ir
    from bluesky_tomogan.inference.backends.openvino import OpenVINOSession
    from bluesky_tomogan.simulate.datasets import PairSet

    torch.manual_seed(0)
    net = TomoGANGenerator(GeneratorConfig(width=0.25)).eval().correction_network()
    pairs = _smooth_pairs(6, 32, 0)
    wrong = PairSet(ns=pairs.ns, gt=np.zeros_like(pairs.gt), group=pairs.group)  # targets nothing should learn
    x = pairs.ns[None, :3]
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    errors = {}
    for distill in (0.0, 1.0):
        xml, info = quantisation_aware_ir(net, tmp_path / f"d{distill}.int8.xml", x, wrong, 12, lr=3e-3, patch=32,
                                          batch=4, distill=distill)
        assert info["distill"] == distill
        errors[distill] = np.abs(OpenVINOSession(xml, "int8", threads=1).run(x) - expected).mean()
    assert errors[1.0] < 0.5 * errors[0.0]
    with pytest.raises(ValueError, match="share of the loss"):
        quantisation_aware_ir(net, tmp_path / "m.int8.xml", x, wrong, 1, distill=2.0)


def test_quantisation_aware_ir_with_7_bit_weights_cannot_saturate_without_vnni_and_says_so(tmp_path):
    """``weight_bits=7``: every int8 convolution's weights on the 7-bit grid (|w| <= 64, so no 16-bit
    pair sum of ``vpmaddubsw`` can saturate), recorded as NNCF's overflow fix, which tells the
    registry not to halve its first layer again on a CPU without VNNI."""
    pytest.importorskip("nncf", reason="the OpenVINO int8 export needs the export extra")
    from bluesky_tomogan.export.openvino_int8 import quantisation_aware_ir
    from bluesky_tomogan.inference.backends import openvino as ov_backend

    torch.manual_seed(0)
    net = TomoGANGenerator(GeneratorConfig(width=0.25)).eval().correction_network()
    pairs = _smooth_pairs(6, 32, 0)
    calib = np.stack([pairs.ns[i:i + 3] for i in range(4)])
    xml, info = quantisation_aware_ir(net, tmp_path / "m.int8.xml", calib, pairs, 4, patch=32, batch=4,
                                      weight_bits=7)
    assert info["overflow_fix"] == "enable" and info["weight_bits"] == 7
    extremes = _int8_weight_extremes(xml)
    assert len(extremes) == info["convolutions"] - info["convolutions_in_float"]
    assert max(extremes) <= ov_backend.SEVEN_BIT_WEIGHT_MAX + 1 and max(extremes) > 32  # the 7-bit grid, used
    x = pairs.ns[None, :3]
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    session = ov_backend.OpenVINOSession(xml, "int8", threads=1)  # as the registry opens it: overflow_fix set
    assert np.abs(session.run(x) - expected).max() < 0.2 * np.abs(expected).max() + 0.05
    with pytest.raises(ValueError, match="8 or 7"):
        quantisation_aware_ir(net, tmp_path / "n.int8.xml", calib, pairs, 1, weight_bits=4)


def test_float_activations_let_the_named_layers_outputs_be_read_in_float(tmp_path, caplog):
    """The convolutions reading those outputs read them unrounded (clamped to the grid's range) with
    float kernels; the max-pool into the next level keeps the int8 grid; nothing else changes."""
    pytest.importorskip("nncf", reason="the OpenVINO int8 export needs the export extra")
    from bluesky_tomogan.export.openvino_int8 import float_activations, quantisation_aware_ir
    from bluesky_tomogan.inference.backends.openvino import float_convolutions, openvino_core

    net, pairs, calib = _small_edge_network()
    plain, _ = quantisation_aware_ir(net, tmp_path / "plain.int8.xml", calib, pairs, 2, patch=32, batch=4)
    model = openvino_core().read_model(str(plain))
    floats = float_convolutions(model)
    readers = float_activations(model, ["stem.0", "enc1.2"])
    assert sorted(r.split("/")[0] for r in readers) == ["__module.dec1.0.skip", "__module.enc1.0"]
    assert float_convolutions(model) == floats + 2
    for op in model.get_ops():
        if op.get_friendly_name() in readers:
            assert op.input(0).get_source_output().get_node().get_type_name() == "Maximum"  # clamped, not rounded
            assert op.input(1).get_source_output().get_node().get_type_name() == "Constant"  # a float kernel
        if op.get_type_name() == "MaxPool":
            assert op.input(0).get_source_output().get_node().get_type_name() == "FakeQuantize"
    x = pairs.ns[None, :3]

    def run(m):
        return openvino_core().compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({0: x})[0]

    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    out = run(model)
    assert np.abs(out - expected).max() < 0.2 * np.abs(expected).max() + 0.05
    assert not np.array_equal(out, run(openvino_core().read_model(str(plain))))  # the rounding left out
    # applied twice, nothing is left to change, and the log says so
    with caplog.at_level("WARNING", logger="bluesky_tomogan.export.openvino_int8"):
        assert float_activations(model, ["stem.0", "enc1.2"]) == []
    assert "reads ['stem.0', 'enc1.2'] through an int8 grid; nothing to change" in caplog.text


def test_quantisation_aware_ir_names_a_module_it_cannot_keep_in_float(tmp_path):
    pytest.importorskip("nncf", reason="the OpenVINO int8 export needs the export extra")
    from bluesky_tomogan.export.openvino_int8 import quantisation_aware_ir

    pairs = _smooth_pairs(3, 32, 0)
    net = TomoGANGenerator(GeneratorConfig(width=0.25)).eval().correction_network()
    with pytest.raises(ValueError, match="no convolution named .'decoder9'."):
        quantisation_aware_ir(net, tmp_path / "m.int8.xml", pairs.ns[None, :3], pairs, 1, keep_float=["decoder9"])


@pytest.mark.parametrize(("options", "message"), [
    ({"openvino_qat_steps": -1}, "0 or positive"),
    ({"openvino_qat_steps": 10, "formats": ("onnx",)}, "add the 'openvino' format"),
    ({"qat_copies": {}}, "give openvino_qat_steps too"),
    ({"qat_distill": 0.5}, "give openvino_qat_steps too"),
    ({"openvino_qat_steps": 10, "openvino_copies": {"stem.0": 2}}, "the quantisation-aware IR's are qat_copies"),
    ({"openvino_qat_steps": 10, "qat_distill": 1.5}, r"share of the loss, in \[0, 1\]"),
    ({"qat_float_sums": (1,)}, "give openvino_qat_steps too"),
    ({"openvino_qat_steps": 10, "qat_float_sums": (1, 4)}, r"qat_float_sums: no decoder level \[4\]"),
    ({"qat_weight_bits": 7}, "give openvino_qat_steps too"),
    ({"openvino_qat_steps": 10, "qat_weight_bits": 4}, "8 or 7"),
])
def test_export_refuses_quantisation_aware_options_it_cannot_honour_before_any_work(tmp_path, options, message):
    from bluesky_tomogan.errors import ExportOptionError
    from bluesky_tomogan.export.pipeline import export_model

    with pytest.raises(ExportOptionError, match=message):
        export_model(tmp_path / "nothing-here", tmp_path / "out", tmp_path / "no.h5", **options)


def test_export_names_a_module_it_cannot_keep_in_float_before_any_work(tmp_path):
    import shutil

    from bluesky_tomogan.errors import ExportOptionError
    from bluesky_tomogan.export.pipeline import export_model
    from bluesky_tomogan.inference import load_card

    src = tmp_path / "model"
    src.mkdir()
    for suffix in (".json", ".pt"):
        shutil.copy2(load_card("tomogan-slice-light").directory / f"tomogan-slice-light{suffix}", src)
    with pytest.raises(ExportOptionError, match=r"qat_float: no convolution named \['decoder9'\].*'head.2'"):
        export_model(src, tmp_path / "out", tmp_path / "no.h5", openvino_qat_steps=10, qat_float=["decoder9"])
    with pytest.raises(ExportOptionError, match=r"cannot copy 'decoder9'"):
        export_model(src, tmp_path / "out", tmp_path / "no.h5", openvino_qat_steps=10, qat_copies={"decoder9": 2})
    with pytest.raises(ExportOptionError, match=r"cannot copy 'decoder9'"):
        export_model(src, tmp_path / "out", tmp_path / "no.h5", openvino_copies={"decoder9": 2})
    assert not (tmp_path / "out" / "tomogan-slice-light.onnx").exists()


def test_an_export_into_another_directory_lists_only_the_files_it_wrote_there(tmp_path, tiny_dataset):
    """A source card that lists every format, one format exported elsewhere: the new card does not
    name the formats left behind (``auto`` would have looked for their files and not found them)."""
    from bluesky_tomogan.export.pipeline import export_model
    from bluesky_tomogan.inference import load_card

    src = copy_of_shipped_model("tomogan-slice-light", tmp_path / "src")
    card = load_card(export_model(src, tmp_path / "out", tiny_dataset, formats=("onnx",), measure=False))
    assert set(card.files) == {"pytorch", "onnx", "onnx_resize"}
    assert all(entry.path.is_file() for entry in card.files.values())
    assert "tflite_int8" in load_card(src / "tomogan-slice-light.json").files  # the source's card as it was
    # exported in place, the other formats' files stay, and so do their entries and measured losses
    before = load_card(src / "tomogan-slice-light.json").quantization
    card = load_card(export_model(src, src, tiny_dataset, formats=("onnx",), measure=False))
    assert {"tflite_int8", "openvino_int8"} <= set(card.files)
    assert card.quantization["litert/int8"] == before["litert/int8"]  # auto still reads them
    assert card.quantization["openvino/int8"] == before["openvino/int8"]


def test_exporting_one_format_again_keeps_the_card_entries_of_the_others(tmp_path):
    import json

    from bluesky_tomogan.export.pipeline import _files_kept

    files = {"pytorch": {"path": "m.pt"}, "onnx": {"path": "m.onnx"}, "tflite_int8": {"path": "m.int8.tflite"},
             "openvino_int8": {"path": "m.int8.xml"}}
    for entry in files.values():
        (tmp_path / entry["path"]).write_bytes(b"x")
    card = tmp_path / "m.json"
    card.write_text(json.dumps({"name": "m", "files": files}))
    assert _files_kept(card, ("openvino",)) == {"tflite_int8": {"path": "m.int8.tflite"}}  # the IR needs a new ONNX
    assert set(_files_kept(card, ("tflite",))) == {"onnx", "openvino_int8"}
    (tmp_path / "m.int8.tflite").unlink()
    assert _files_kept(card, ("openvino",)) == {}  # an entry whose file is gone is not kept
    assert _files_kept(tmp_path / "none.json", ("onnx",)) == {}  # a first export


@pytest.mark.parametrize("options", [{}, {"upsample": "transposed"}, {"input_downscale": 2, "width": 0.5},
                                     {"input_downscale": 2, "downscale": "space-to-depth"}])
def test_equalised_network_computes_the_same_function_with_balanced_channels(options):
    from bluesky_tomogan.export.equalise import channel_maxima, equalise_activations

    torch.manual_seed(0)
    gen = TomoGANGenerator(GeneratorConfig(**options)).eval()
    with torch.no_grad():  # unbalance the channels, as training does
        for producer, _ in gen.activation_links():
            axis = 1 if isinstance(producer, torch.nn.ConvTranspose2d) else 0
            gain = torch.logspace(-1, 1, producer.weight.shape[axis])
            shape = [1] * producer.weight.ndim
            shape[axis] = -1
            producer.weight.mul_(gain.view(shape))
            producer.bias.mul_(gain)
    frames = np.random.default_rng(0).random((6, 3, 64, 64), np.float32)
    before = channel_maxima(gen, frames)
    eq = equalise_activations(gen, frames, max_gain=1e6)
    x = torch.from_numpy(np.random.default_rng(1).random((1, 3, 64, 64), np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(eq(x).numpy(), gen(x).numpy(), rtol=1e-4, atol=1e-4)
    after = channel_maxima(eq, frames)
    for (p_before, _), (p_after, _) in zip(gen.activation_links(), eq.activation_links(), strict=True):
        live = before[p_before] > 0
        spread_before = before[p_before][live].max() / before[p_before][live].min()
        spread_after = after[p_after][live].max() / after[p_after][live].min()
        assert spread_after < 1.001 < spread_before


def test_offset_output_copies_average_to_the_output_with_a_finer_step():
    from bluesky_tomogan.export.tflite import offset_output_copies

    torch.manual_seed(0)
    gen = TomoGANGenerator().correction_network()
    frames = np.random.default_rng(0).random((4, 3, 32, 32), np.float32)
    wide = offset_output_copies(gen, frames, 4)
    x = torch.from_numpy(frames[:1])
    with torch.no_grad():
        ref, copies = gen(x), wide(x)
    assert copies.shape == (1, 4, 32, 32)
    np.testing.assert_allclose(copies.mean(dim=1, keepdim=True).numpy(), ref.numpy(), atol=1e-6)
    offsets = (copies - ref)[0, :, 0, 0].numpy()
    with torch.no_grad():
        outputs = torch.cat([gen(torch.from_numpy(frames[k : k + 1])) for k in range(4)])
    step = (max(float(outputs.max()), 0) - min(float(outputs.min()), 0)) / 255
    np.testing.assert_allclose(np.diff(offsets), step / 4, rtol=0.02)  # a quarter step apart


@pytest.mark.parametrize("options", [{}, {"upsample": "transposed"}, {"input_downscale": 2, "width": 0.5},
                                     {"input_downscale": 2, "downscale": "space-to-depth"}])
def test_offset_activation_copies_keep_the_function_and_grow_the_named_layers(options):
    from bluesky_tomogan.export.copies import int8_steps, offset_activation_copies

    torch.manual_seed(0)
    gen = TomoGANGenerator(GeneratorConfig(**options)).eval()
    frames = np.random.default_rng(0).random((4, 3, 32, 32), np.float32)
    copies = {"stem.0": 4, "enc1.2": 2, "dec1.0": 2, "head.0": 4}
    wide = offset_activation_copies(gen, frames, copies)
    x = torch.from_numpy(frames[:2])
    with torch.no_grad():
        ref, out = gen(x), wide(x)
    # offsets sum to zero, so only ReLU's kink (within a fraction of one int8 step) can differ
    step = max(int8_steps(gen, frames).values())
    assert float((out - ref).abs().max()) < step
    assert wide.stem[0].out_channels == 4 * gen.stem[0].out_channels
    assert wide.enc1[0].in_channels == 4 * gen.enc1[0].in_channels
    assert wide.dec1[0].in_channels == gen.dec1[0].in_channels + gen.enc1[2].out_channels  # the skip, twice
    assert wide.head[2].in_channels == 4 * gen.head[2].in_channels
    assert wide.macs_per_pixel() > gen.macs_per_pixel()
    assert gen.stem[0].out_channels == TomoGANGenerator(gen.config).stem[0].out_channels  # the original is untouched


def test_offset_activation_copies_spread_over_a_fraction_of_one_int8_step():
    from bluesky_tomogan.export.copies import int8_steps, offset_activation_copies

    torch.manual_seed(0)
    gen = TomoGANGenerator().eval()
    frames = np.random.default_rng(0).random((4, 3, 32, 32), np.float32)
    wide = offset_activation_copies(gen, frames, {"stem.0": 4})
    n, step = gen.stem[0].out_channels, int8_steps(gen, frames)["stem.0"]
    offsets = (wide.stem[0].bias.detach().view(4, n) - gen.stem[0].bias.detach()).mean(1)
    np.testing.assert_allclose(offsets.numpy(), np.array([-3, -1, 1, 3]) * step / 8, rtol=1e-4)


@pytest.mark.parametrize(("card", "expected"), [
    ({"domain": "projection"}, {"stem.0": 4, "head.0": 4}),
    # a slice model's detail also runs through enc1 and dec1: what every shipped slice model needed
    ({"domain": "slice"}, {"stem.0": 4, "head.0": 4, "enc1.0": 2, "dec1.0": 2, "dec1.2": 2}),
    # exported before: its card's own copies, whatever the domain
    ({"domain": "slice", "files": {"tflite_int8": {"activation_copies": {"stem.0": 4}}}}, {"stem.0": 4}),
])
def test_an_export_not_told_which_copies_takes_the_cards_else_its_domains(card, expected):
    from bluesky_tomogan.export.copies import default_activation_copies

    assert default_activation_copies(card) == expected


@pytest.mark.slow
def test_a_freshly_trained_slice_model_is_exported_with_the_slice_copies(tmp_path, tiny_dataset):
    """The shipped slice models' full-int8 form, not the projection default, without being told."""
    import shutil

    from bluesky_tomogan.export.pipeline import export_model
    from bluesky_tomogan.inference import load_card
    from bluesky_tomogan.int8 import SLICE_ACTIVATION_COPIES
    from bluesky_tomogan.modelcard import read_card, write_card

    src = tmp_path / "run"
    src.mkdir()
    shipped = load_card("tomogan-slice-light").directory
    shutil.copy2(shipped / "tomogan-slice-light.pt", src)
    card = read_card(shipped / "tomogan-slice-light.json")
    card["files"] = {"pytorch": card["files"]["pytorch"]}  # as `train` leaves it: nothing exported yet
    write_card(src / "tomogan-slice-light.json", card)
    out = load_card(export_model(src, src, tiny_dataset, formats=("tflite",), tile=32, n_calibration=8,
                                 measure=False))
    assert out.files["tflite_int8"].info["activation_copies"] == SLICE_ACTIVATION_COPIES
    assert out.files["tflite_int8"].path.is_file()


def test_int8_steps_share_one_range_across_a_concatenation():
    from bluesky_tomogan.export.copies import int8_steps

    torch.manual_seed(0)
    steps = int8_steps(TomoGANGenerator().eval(), np.random.default_rng(0).random((4, 3, 32, 32), np.float32))
    assert steps["enc1.2"] == steps["dec2.2"]  # both go into dec1's concatenation


@pytest.mark.parametrize("bad", [{"enc1.1": 2}, {"nonexistent": 2}, {"stem.0": 0}])
def test_offset_activation_copies_reject_layers_that_are_not_relu_producers(bad):
    from bluesky_tomogan.errors import ExportOptionError
    from bluesky_tomogan.export.copies import offset_activation_copies

    gen = TomoGANGenerator().eval()
    with pytest.raises(ExportOptionError, match="cannot copy|copies must be"):
        offset_activation_copies(gen, np.zeros((1, 3, 32, 32), np.float32), bad)


def test_equalisation_fills_the_range_a_concatenation_shares():
    from bluesky_tomogan.export.equalise import channel_maxima, equalise_activations, shared_maxima

    torch.manual_seed(0)
    gen = TomoGANGenerator().eval()
    with torch.no_grad():
        gen.dec2[2].weight.mul_(4.0)  # the decoder path now sets the range of dec1's concatenation
        gen.dec2[2].bias.mul_(4.0)
    frames = np.random.default_rng(0).random((4, 3, 32, 32), np.float32)
    eq = equalise_activations(gen, frames, max_gain=1e6)
    maxima = channel_maxima(eq, frames)
    tops = shared_maxima(eq, maxima)
    skip, path = eq.enc1[2], eq.dec2[2]
    assert tops[skip] == tops[path] == pytest.approx(float(maxima[path].max()), rel=1e-4)
    live = maxima[skip] > 0
    np.testing.assert_allclose(maxima[skip][live].numpy(), tops[skip], rtol=1e-4)


@pytest.mark.slow
def test_resize_network_deployed_with_transposed_convolutions_matches_the_trained_one(tmp_path):
    """The Edge TPU form replaces every bilinear resize by a transposed convolution: same function."""
    pytest.importorskip("tensorflow", reason="the Keras form needs the export extra")
    from bluesky_tomogan.export.edgetpu_check import check_edgetpu_compatible
    from bluesky_tomogan.export.keras_model import keras_from_torch
    from bluesky_tomogan.export.tflite import export_tflite_int8

    torch.manual_seed(0)
    gen = TomoGANGenerator(GeneratorConfig(upsample="bilinear")).eval()
    x = np.random.default_rng(0).normal(size=(1, 3, 48, 64)).astype(np.float32)
    with torch.no_grad():
        ref = gen(torch.from_numpy(x)).numpy()
    deployed = keras_from_torch(gen, 48, 64, edgetpu=True)
    assert not any("UpSampling" in type(layer).__name__ for layer in deployed.layers)
    out = deployed.predict_on_batch(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert np.abs(out - ref).max() <= 1e-4
    calib = np.random.default_rng(1).random((8, 3, 32, 32), np.float32)
    report = check_edgetpu_compatible(export_tflite_int8(gen, tmp_path / "m.tflite", calib, 32))
    assert report.compatible, report.problems
    assert "RESIZE_BILINEAR" not in report.ops and report.ops["TRANSPOSE_CONV"] == 3


def _edge_network() -> TomoGANGenerator:
    """The shipped light projection network's weights, its upsampled maps padded by replication."""
    from bluesky_tomogan.model.train import load_generator, resolve_weights

    trained = load_generator(resolve_weights("tomogan-projection-light"))
    gen = TomoGANGenerator(GeneratorConfig.from_dict(trained.config.to_dict() | {"upsampled_padding": "edge"}))
    gen.load_state_dict(trained.state_dict())
    return gen.eval()


def test_an_edge_network_is_exported_with_each_resize_and_convolution_as_one_transposed_convolution(tmp_path):
    import onnx

    from bluesky_tomogan.export.equalise import channel_maxima
    from bluesky_tomogan.export.onnx import export_onnx
    from bluesky_tomogan.export.openvino_int8 import prepared_for_int8

    gen = _edge_network()
    path = export_onnx(gen.correction_network(), tmp_path / "m.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("ConvTranspose") == 3 and "Resize" not in ops and "Concat" not in ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    depth = gen.config.in_channels
    for shape in [(1, depth, 64, 96), (2, depth, 40, 24)]:  # edges everywhere: the frame is mostly edge band here
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = gen.correction_network()(x).numpy()
        assert np.abs(session.run(None, {"frames": x.numpy()})[0] - ref).max() <= 1e-4
    # the int8 export's equalisation and copies still see every decoder's first convolution, and the
    # network they make (wider than its config says) is written fused too
    calib = np.random.default_rng(0).random((2, depth, 32, 32), np.float32)
    maxima = channel_maxima(gen, calib)
    assert {gen.dec3[0], gen.dec2[0], gen.dec1[0]} <= set(maxima)
    net, calib, _, _ = prepared_for_int8(gen.correction_network(), calib, {"stem.0": 4, "dec3.2": 2})
    path = export_onnx(net, tmp_path / "int8-source.onnx")
    x = torch.from_numpy(calib[:1])
    with torch.no_grad():
        ref = net(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"frames": x.numpy()})[0] - ref).max() <= 1e-4


def test_an_edge_network_can_be_written_as_trained_and_a_plain_one_cannot_be_fused(tmp_path):
    import onnx

    from bluesky_tomogan.errors import ExportOptionError
    from bluesky_tomogan.export.fused_decoder import fuse_decoders
    from bluesky_tomogan.export.onnx import export_onnx

    net = _edge_network().correction_network()
    path = export_onnx(net, tmp_path / "m.resize.onnx", fused=False)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Resize") == 3 and ops.count("Concat") == 3 and "ConvTranspose" not in ops
    x = torch.rand(1, net.config.in_channels, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = net(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"frames": x.numpy()})[0] - ref).max() <= 1e-4
    with pytest.raises(ExportOptionError, match="only a network trained with upsampled_padding='edge'"):
        export_onnx(TomoGANGenerator(GeneratorConfig(width=0.25)), tmp_path / "x.onnx", fused=True)
    with pytest.raises(ExportOptionError, match="already fused"):
        export_onnx(fuse_decoders(net), tmp_path / "y.onnx", fused=False)


def test_a_fused_form_that_does_not_match_the_network_is_refused(monkeypatch):
    from bluesky_tomogan.errors import ExportOptionError
    from bluesky_tomogan.export import fused_decoder
    from bluesky_tomogan.export.onnx import fused_form

    with pytest.raises(ValueError, match="only a network with upsampled_padding='edge'"):
        fused_decoder.fuse_decoders(TomoGANGenerator())
    monkeypatch.setattr(fused_decoder, "fused_kernel", lambda w: torch.zeros(w.shape[1], w.shape[0], 6, 6))
    with pytest.raises(ExportOptionError, match="fused decoders differ from the network"):
        fused_form(_edge_network())


@pytest.mark.slow
def test_an_edge_network_in_keras_and_full_int8_tflite_follows_torch(tmp_path):
    pytest.importorskip("tensorflow", reason="the Keras form needs the export extra")
    from bluesky_tomogan.export.edgetpu_check import check_edgetpu_compatible
    from bluesky_tomogan.export.keras_model import keras_from_torch
    from bluesky_tomogan.export.tflite import export_tflite_int8

    gen = _edge_network()
    frames = gen.config.in_channels  # the light projection model's context (5 since session 31)
    x = np.random.default_rng(0).random((1, frames, 48, 64), np.float32)
    with torch.no_grad():
        ref = gen(torch.from_numpy(x)).numpy()
    for edgetpu in (False, True):
        out = keras_from_torch(gen, 48, 64, edgetpu=edgetpu).predict_on_batch(x.transpose(0, 2, 3, 1))
        assert np.abs(out.transpose(0, 3, 1, 2) - ref).max() <= 1e-4
    calib = np.random.default_rng(1).random((8, frames, 32, 32), np.float32)
    report = check_edgetpu_compatible(export_tflite_int8(gen, tmp_path / "m.tflite", calib, 32))
    assert report.compatible, report.problems


def test_the_edge_tpu_check_names_what_the_compiler_would_refuse(tmp_path):
    """A model written the TensorFlow 2 default way: dynamic batch, resize with half-pixel centres."""
    from bluesky_tomogan.export.edgetpu_check import check_edgetpu_compatible

    # a tiny network converted as the shipped models were before 0.4 (tests/fixtures): what not to ship
    report = check_edgetpu_compatible(FIXTURES / "dynamic_batch_resize_v3.tflite")
    assert not report.compatible
    text = "\n".join(report.problems)
    assert "dynamic shape [-1," in text and "RESIZE_BILINEAR version 3" in text


def _shipped_tflite() -> list[str]:
    from bluesky_tomogan.inference.load import shipped_weights_dir

    root = shipped_weights_dir()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.tflite"))  # the pruning ratios' too


@pytest.mark.parametrize("model", _shipped_tflite())
def test_every_shipped_tflite_model_maps_onto_the_edge_tpu(model):
    from bluesky_tomogan.export.edgetpu_check import check_edgetpu_compatible
    from bluesky_tomogan.inference.load import shipped_weights_dir

    report = check_edgetpu_compatible(shipped_weights_dir() / model)
    assert report.compatible, report.problems
    # PAD: the zero-padded skip input of a network whose upsampled maps are padded by replication
    assert set(report.ops) <= {"CONV_2D", "MAX_POOL_2D", "CONCATENATION", "TRANSPOSE_CONV", "STRIDED_SLICE", "PAD"}


def _shipped_onnx() -> list[str]:
    from bluesky_tomogan.inference.load import shipped_weights_dir

    root = shipped_weights_dir()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.onnx"))  # both forms, every ratio


@pytest.mark.parametrize("model", _shipped_onnx())
def test_every_shipped_onnx_model_parses_in_tensorrt(model):
    from bluesky_tomogan.export.tensorrt_check import check_tensorrt_parsable
    from bluesky_tomogan.inference.load import shipped_weights_dir

    report = check_tensorrt_parsable(shipped_weights_dir() / model)
    assert report.compatible, report.problems
    assert set(report.ops) <= {"Conv", "ConvTranspose", "Relu", "MaxPool", "Resize", "Concat", "Pad", "Add"}


def test_the_tensorrt_check_names_each_node_the_parser_would_refuse(tmp_path):
    """One node of each kind TensorRT 8.6 or 10 refuses, in a graph ONNX itself accepts."""
    import onnx
    from onnx import TensorProto, helper

    from bluesky_tomogan.export.tensorrt_check import check_tensorrt_parsable

    def const(name: str, values: list, kind=TensorProto.INT64) -> onnx.TensorProto:
        return helper.make_tensor(name, kind, [len(values)], values)

    nodes = [
        helper.make_node("Pad", ["x", "pads", "", "axes"], ["p"], mode="wrap", name="pad_wrap_axes"),
        helper.make_node("Resize", ["p", "", "scales"], ["r"], mode="cubic", antialias=1, name="resize_cubic"),
        helper.make_node("Conv", ["r", "w4d"], ["c"], name="conv_4d"),
        helper.make_node("MaxPool", ["c"], ["m", "idx"], kernel_shape=[2, 2], name="pool_indices"),
        helper.make_node("Unique", ["m"], ["u"], name="unique"),
        helper.make_node("MyOp", ["u"], ["y"], domain="beamline.custom", name="custom"),
    ]
    graph = helper.make_graph(
        nodes, "refused",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", 3, "h", "w"]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 3, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [const("pads", [0, 0, 1, 1, 0, 0, 1, 1]), const("axes", [2, 3]),
         const("scales", [1.0, 1.0, 2.0, 2.0], TensorProto.FLOAT),
         helper.make_tensor("w4d", TensorProto.FLOAT, [1, 3, 1, 1, 1, 1], [1.0, 1.0, 1.0])])
    path = tmp_path / "refused.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)

    report = check_tensorrt_parsable(path)
    assert not report.compatible
    text = "\n".join(report.problems)
    for expected in ("opset 21", "input 'x' is INT64", "pad_wrap_axes': mode 'wrap', which only TensorRT 10",
                     "pad_wrap_axes': an axes input (opset 18)", "resize_cubic': mode 'cubic'",
                     "resize_cubic': antialiasing", "conv_4d': weights of shape [1, 3, 1, 1, 1, 1]",
                     "pool_indices': an Indices output", "unique': operator Unique is not supported",
                     "custom' is in domain 'beamline.custom'"):
        assert expected in text, (expected, report.problems)
    assert "input 'w'" not in text  # a float input of rank 4 with fixed channels


def test_a_cpu_without_vnni_records_its_own_int8_loss_and_keeps_what_it_cannot_measure(tmp_path, monkeypatch):
    import json

    from bluesky_tomogan.export.pipeline import record_quality
    from bluesky_tomogan.inference.backends import openvino
    from bluesky_tomogan.simulate.datasets import Recipe, simulate_pairs

    copy_of_shipped_model("tomogan-projection", tmp_path)
    card_path = tmp_path / "tomogan-projection.json"
    before = json.loads(card_path.read_text())
    before["quantization"].pop("openvino/int8@no-vnni", None)
    card_path.write_text(json.dumps(before))
    pairs = simulate_pairs(Recipe(domain="projection", size=64, frames_per_scan=6, photons=(300.0, 600.0)), 1, seed=5)
    monkeypatch.setattr(openvino, "int8_sums_exact", lambda *a, **k: False)  # a Skylake-SP Xeon, an AMD Zen 3
    record_quality(card_path, pairs, n_frames=3, only=["openvino/int8"])
    after = json.loads(card_path.read_text())
    entry = after["quantization"]["openvino/int8@no-vnni"]
    assert entry["frames"] == 3 and {"ssim_drop", "ssim_drop_worst", "cpu"} <= set(entry)
    # what the IR's float parts computed in (this CPU's choice): the loss holds for that
    from bluesky_tomogan.inference.load import load_unchecked

    assert entry["float_precision"] == load_unchecked(card_path, "openvino", "int8").session.float_precision
    # what a CPU without VNNI cannot measure stays, naming the CPU it was measured on
    assert after["quantization"]["openvino/int8"]["ssim_drop"] == before["quantization"]["openvino/int8"]["ssim_drop"]
    measured_on = before["quantization"]["openvino/int8"].get("cpu", before["quantization_measured_on"]["cpu"])
    assert after["quantization"]["openvino/int8"]["cpu"] == measured_on
    assert after["metrics"] == before["metrics"]  # only the named entries were measured
    record_quality(card_path, pairs, n_frames=3, source="five frames")  # a full re-measure keeps them too
    again = json.loads(card_path.read_text())
    assert {"openvino/int8", "openvino/int8@no-vnni", "onnxruntime/fp32"} <= set(again["quantization"])
    assert again["quantization"]["openvino/int8@no-vnni"]["frames"] == 3
    assert again["metrics"]["frames_source"] == "five frames"


def test_frames_larger_than_the_measure_edge_are_measured_on_their_centre(tmp_path):
    """What an export measures takes as long for a 2048-wide detector as for a 256-wide one."""
    import json

    from scipy.ndimage import gaussian_filter

    from bluesky_tomogan.export.pipeline import MEASURE_EDGE, centre_crop, record_quality
    from bluesky_tomogan.frames import context_indices
    from bluesky_tomogan.inference import load_denoiser
    from bluesky_tomogan.metrics import ssim
    from bluesky_tomogan.simulate.datasets import PairSet

    rng = np.random.default_rng(3)
    gt = gaussian_filter(rng.random((3, 300, 333)), (0, 6, 6)).astype(np.float32)
    pairs = PairSet((gt + rng.normal(0, 0.02, gt.shape)).astype(np.float32), gt, np.zeros(3, np.int64))
    crop = centre_crop(pairs)
    assert crop.ns.shape == (3, MEASURE_EDGE, MEASURE_EDGE) and np.shares_memory(crop.ns, pairs.ns)
    np.testing.assert_array_equal(crop.gt[1], gt[1, 22:278, 38:294])
    assert centre_crop(PairSet(gt[:, :100], gt[:, :100], pairs.group)).ns.shape == (3, 100, MEASURE_EDGE)

    copy_of_shipped_model("tomogan-slice-fast", tmp_path)
    card_path = tmp_path / "tomogan-slice-fast.json"
    record_quality(card_path, pairs, n_frames=2)
    metrics = json.loads(card_path.read_text())["metrics"]
    assert metrics["val_frame_shape"] == [MEASURE_EDGE, MEASURE_EDGE] and metrics["val_frames"] == 2
    den = load_denoiser(card_path, backend="onnxruntime", precision="fp32")
    by_hand = [ssim(crop.gt[i], den.denoise_context(crop.ns[context_indices(crop.group, i, den.depth)]))
               for i in (0, 2)]
    assert metrics["val_ssim"] == pytest.approx(np.mean(by_hand), abs=1e-6)


def test_measured_losses_outlive_an_export_only_for_unchanged_weights_and_files(tmp_path):
    import json

    from bluesky_tomogan.export.pipeline import _quantization_kept

    then = {"pytorch": {"path": "m.pt", "sha256": "w1"}, "onnx": {"path": "m.onnx", "sha256": "o1"},
            "openvino_int8": {"path": "m.int8.xml", "sha256": "i1"},
            "tflite_int8": {"path": "m.tflite", "sha256": "t1"}}
    entry = {"ssim_drop": 0.001, "ssim_drop_worst": 0.003}
    keys = ("onnxruntime/fp32", "openvino/fp32", "openvino/bf16", "openvino/int8", "openvino/int8@no-vnni",
            "litert/int8", "nosuch/int8")
    quantization = dict.fromkeys(keys, entry)
    card = tmp_path / "m.json"
    card.write_text(json.dumps({"name": "m", "files": then, "quantization": quantization}))
    tflite_again = {**then, "tflite_int8": {"path": "m.tflite", "sha256": "t2"}}
    assert set(_quantization_kept(card, tflite_again)) == {"onnxruntime/fp32", "openvino/fp32", "openvino/bf16",
                                                           "openvino/int8", "openvino/int8@no-vnni"}
    ir_again = {**then, "onnx": {"path": "m.onnx", "sha256": "o2"}, "openvino_int8": {"path": "m.int8.xml",
                                                                                       "sha256": "i2"}}
    assert set(_quantization_kept(card, ir_again)) == {"litert/int8"}
    assert _quantization_kept(card, {**then, "pytorch": {"path": "m.pt", "sha256": "w2"}}) == {}  # other weights
    assert _quantization_kept(tmp_path / "none.json", then) == {}


def test_an_int8_ir_that_bf16_float_parts_put_beyond_tolerance_is_recorded_with_fp32_ones(tmp_path, monkeypatch):
    """On a CPU that runs an int8 IR's float parts in bf16 (AMX, or a Zen 4 where bf16 is measured
    faster) the light slice IR's full-resolution float layers lose there what its int8 layers do not
    (session 48: 0.0105 / 0.0564 against 0.0004 / 0.0034 with fp32 float parts). The measurement
    then records the fp32 float parts, and ``auto`` runs the IR so on every CPU."""
    import json

    from bluesky_tomogan.export.pipeline import record_quality
    from bluesky_tomogan.inference import load as load_module
    from bluesky_tomogan.inference.backends import openvino
    from bluesky_tomogan.simulate.datasets import Recipe, simulate_pairs

    copy_of_shipped_model("tomogan-slice-light", tmp_path)
    card_path = tmp_path / "tomogan-slice-light.json"
    card = json.loads(card_path.read_text())
    del card["quantization"]["openvino/int8"]["float_precision"]  # as a fresh export leaves it
    card["quantization_measured_on"]["openvino_int8_float_precision"] = "bf16"
    card_path.write_text(json.dumps(card))
    monkeypatch.setattr(openvino, "int8_float_precision", lambda *a, **k: "bf16")  # this CPU's choice
    real = load_module.load_unchecked
    harmed = {"bf16"}

    def load_unchecked(*args, **kwargs):  # bf16 float parts lose (deterministically, on any CPU)
        den = real(*args, **kwargs)
        if getattr(den.session, "float_precision", None) in harmed:
            clean = den.denoise_context
            den.denoise_context = lambda ctx, **kw: clean(ctx, **kw) + 0.3 * ctx[len(ctx) // 2].std()
        return den

    monkeypatch.setattr(load_module, "load_unchecked", load_unchecked)
    pairs = simulate_pairs(Recipe(domain="slice", size=64, frames_per_scan=6), 1, seed=5)
    record_quality(card_path, pairs, n_frames=3, only=["openvino/int8"])
    measured = json.loads(card_path.read_text())
    entry = measured["quantization"]["openvino/int8"]
    assert entry["float_precision"] == "f32" and entry["ssim_drop_worst"] <= 0.01
    assert measured["quantization_measured_on"]["openvino_int8_float_precision"] == "f32"
    den = load_module.load_denoiser(card_path, backend="openvino", precision="auto")
    assert den.precision == "int8" and den.session.float_precision == "f32"

    harmed.add("f32")  # both lose: the CPU's own choice is what the entry records, beyond tolerance
    card = json.loads(card_path.read_text())
    del card["quantization"]["openvino/int8"]["float_precision"]
    card_path.write_text(json.dumps(card))
    record_quality(card_path, pairs, n_frames=3, only=["openvino/int8"])
    entry = json.loads(card_path.read_text())["quantization"]["openvino/int8"]
    assert entry["float_precision"] == "bf16" and entry["ssim_drop_worst"] > 0.01
    assert load_module.load_denoiser(card_path, backend="openvino", precision="auto").precision != "int8"



def test_frames_whose_size_is_not_the_networks_multiple_are_exported_to_openvino_int8(tmp_path):
    """A fine-tune of a 135x160 detector trains on 67x80 pairs; NNCF's accuracy control runs the IR on
    whole test frames, which the network's graph cannot take (it failed after the whole fine-tune)."""
    pytest.importorskip("nncf", reason="the OpenVINO int8 export needs the export extra")
    from bluesky_tomogan.export.pipeline import export_model
    from bluesky_tomogan.inference import load_card, load_denoiser
    from bluesky_tomogan.model.train import TrainConfig, train
    from bluesky_tomogan.simulate.datasets import PairSet, write_dataset

    def odd(pairs: PairSet) -> PairSet:  # 37x45 frames
        return PairSet(pairs.ns[:, :37, :45].copy(), pairs.gt[:, :37, :45].copy(), pairs.group)

    data = write_dataset(tmp_path / "odd.h5", odd(_smooth_pairs(6, 48, 0)), odd(_smooth_pairs(6, 48, 1)),
                         {"domain": "projection"})
    config = TrainConfig(data=str(data), out_dir=str(tmp_path / "run"), name="odd", patch=32, batch=4,
                         steps_per_epoch=2, max_epochs=1, adv_weight=0.0, feat_weight=0.0, precision="fp32",
                         threads=1, val_frames=2, arch=GeneratorConfig(width=0.25))
    run = train(config, progress=False)
    card_path = export_model(run.weights.parent, tmp_path / "out", data, formats=("openvino",))
    card = load_card(card_path)
    assert card.quantization["openvino/int8"]["frames"] == 6  # measured on every test frame
    assert card.metrics["val_frame_shape"] == [32, 40]  # the frames NNCF validated on: their centre, cut to 8s
    den = load_denoiser(card_path, backend="openvino", precision="int8")
    assert np.isfinite(den.denoise_context(np.ones((3, 37, 45), np.float32) * 0.5 + 0.01)).all()
