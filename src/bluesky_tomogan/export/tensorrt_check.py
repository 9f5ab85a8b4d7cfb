"""Will TensorRT's ONNX parser import every node of an ``.onnx``? A check without TensorRT or a GPU.

TensorRT builds its engines on the GPU host (:mod:`.tensorrt`), so a model that its ONNX
parser refuses is found out only there, on the Jetson, at the beamline. This check reads
the ONNX graph against what the parser (onnx-tensorrt, the one inside TensorRT) documents
and enforces, for the two lines in use at beamlines: TensorRT 8.6 (JetPack 5) and 10.x
(JetPack 6, x86). Sources: onnx-tensorrt's ``docs/operators.md`` (support matrix and
restrictions, releases 8.6-GA and 10.1) and its op importers:

- operator types in the support matrix, all in the default ONNX domain (another domain
  needs a TensorRT plugin);
- opset 9-20 (TensorRT 10; TensorRT 8.6 documents up to 17 and parses newer files with
  the operators it knows, so the opset-18 features below are refused to keep both);
- ``Conv`` and ``ConvTranspose``: 1-D to 3-D (weights of rank 3 to 5);
- ``MaxPool`` and ``AveragePool``: 2-D or 3-D, no ``Indices`` output, dilations of 1;
- ``Pad``: mode ``constant``, ``reflect`` or ``edge`` (``wrap`` is TensorRT 10 only),
  ``pads`` an initializer, no ``axes`` input (opset 18, which TensorRT 8.6 ignores);
- ``Resize``: modes ``nearest`` or ``linear``, a coordinate transformation mode and a
  nearest mode from the matrix, no antialiasing, aspect-ratio policy ``stretch``, no
  ``axes`` attribute (the three are opset 18);
- graph inputs in float32 or float16 of rank 4, with a static channel count (the engine's
  one optimisation profile fixes batch, height and width; :func:`.tensorrt.build_engine`).

A passing check is necessary, not sufficient: the builder can still fail for lack of
memory or a tactic, which only a build on the device shows (docs/backends.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SUPPORTED_OPS", "MIN_OPSET", "MAX_OPSET", "TensorRTReport", "check_tensorrt_parsable"]

#: Operator types with "Y" in onnx-tensorrt's support matrix (release 10.1).
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike
Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf
IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot
Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
MIN_OPSET, MAX_OPSET = 9, 20
PAD_MODES = ("constant", "reflect", "edge")
RESIZE_MODES = ("nearest", "linear")
RESIZE_COORDINATES = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
RESIZE_NEAREST = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")


@dataclass
class TensorRTReport:
    """What :func:`check_tensorrt_parsable` found: problems (empty when parsable), op census, opset."""

    path: Path
    problems: list[str]
    ops: dict[str, int] = field(default_factory=dict)
    opset: int = 0

    @property
    def compatible(self) -> bool:
        """True when the parser would import every node."""
        return not self.problems


def _attributes(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def check_tensorrt_parsable(path: str | Path) -> TensorRTReport:
    """Check an ``.onnx`` file against TensorRT's ONNX parser (see the module docstring).

    Parameters
    ----------
    path : str or pathlib.Path
        The ONNX model (weights inside the file).

    Returns
    -------
    TensorRTReport
        ``problems`` names each node the parser would refuse, and why; empty when it parses.
    """
    import onnx

    p = Path(path)
    model = onnx.load(str(p), load_external_data=False)
    graph = model.graph
    problems: list[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        problems.append(f"opset {opset}; TensorRT's parser takes opset {MIN_OPSET}-{MAX_OPSET}")
    constants = {i.name: list(i.dims) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = _attributes(node).get("value")
            constants[node.output[0]] = list(value.dims) if value is not None else []
    for value_info in graph.input:
        if value_info.name in constants:
            continue  # an initializer listed as an input (older exporters)
        tensor = value_info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
        if tensor.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            kind = onnx.TensorProto.DataType.Name(tensor.elem_type)
            problems.append(f"input {value_info.name!r} is {kind}; "
                            "the engine takes float32 or float16 frames")
        if len(dims) != 4 or not isinstance(dims[1], int) or dims[1] < 1:
            problems.append(f"input {value_info.name!r} of shape {dims}; the engine's profile needs "
                            "(batch, channels, height, width) with a fixed channel count")
    ops: dict[str, int] = {}
    for node in graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
        label = f"{node.op_type} {node.name or node.output[0]!r}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{label} is in domain {node.domain!r}; TensorRT needs a plugin for it")
            continue
        if node.op_type not in SUPPORTED_OPS:
            problems.append(f"{label}: operator {node.op_type} is not supported by TensorRT's ONNX parser")
            continue
        problems.extend(f"{label}: {why}" for why in _node_problems(node, _attributes(node), constants))
    return TensorRTReport(p, problems, ops, opset)


def _node_problems(node: Any, attrs: dict[str, Any], constants: dict[str, list[int]]) -> list[str]:
    inputs = list(node.input)
    why: list[str] = []
    if node.op_type in ("Conv", "ConvTranspose"):
        weights = inputs[1] if len(inputs) > 1 else ""
        if weights in constants and len(constants[weights]) not in (3, 4, 5):
            why.append(f"weights of shape {constants[weights]}; TensorRT convolves in 1-D to 3-D only")
    elif node.op_type in ("MaxPool", "AveragePool"):
        if len(attrs.get("kernel_shape", [])) not in (2, 3):
            why.append(f"kernel {attrs.get('kernel_shape')}; TensorRT pools in 2-D or 3-D only")
        if len([o for o in node.output if o]) > 1:
            why.append("an Indices output, which TensorRT does not produce")
        if any(d != 1 for d in attrs.get("dilations", [])):
            why.append(f"dilations {attrs['dilations']}; TensorRT pools without dilation")
    elif node.op_type == "Pad":
        mode = _text(attrs.get("mode", "constant"))
        if mode == "wrap":
            why.append("mode 'wrap', which only TensorRT 10 parses")
        elif mode not in PAD_MODES:
            why.append(f"mode {mode!r}; TensorRT pads in modes {', '.join(PAD_MODES)}")
        if len(inputs) > 1 and inputs[1] not in constants:
            why.append("pads computed at run time; a fixed engine needs them as an initializer")
        if len(inputs) > 3 and inputs[3]:
            why.append("an axes input (opset 18), which TensorRT 8.6 does not read")
    elif node.op_type == "Resize":
        mode = _text(attrs.get("mode", "nearest"))
        coordinates = _text(attrs.get("coordinate_transformation_mode", "half_pixel"))
        nearest = _text(attrs.get("nearest_mode", "round_prefer_floor"))
        if mode not in RESIZE_MODES:
            why.append(f"mode {mode!r}; TensorRT resizes in modes {', '.join(RESIZE_MODES)}")
        if coordinates not in RESIZE_COORDINATES:
            why.append(f"coordinate transformation {coordinates!r}, not one TensorRT supports")
        if mode == "nearest" and nearest not in RESIZE_NEAREST:
            why.append(f"nearest mode {nearest!r}, not one TensorRT supports")
        if attrs.get("antialias", 0):
            why.append("antialiasing, which TensorRT does not support")
        if _text(attrs.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
            why.append(f"aspect-ratio policy {_text(attrs['keep_aspect_ratio_policy'])!r}; TensorRT supports 'stretch'")
        if attrs.get("axes"):
            why.append("an axes attribute (opset 18), which TensorRT 8.6 does not read")
    return why
