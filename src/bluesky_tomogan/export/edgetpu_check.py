"""Will ``edgetpu_compiler`` map every op of a ``.tflite`` onto the Edge TPU? A check without the compiler.

The compiler runs on x86 Debian only with Coral's package and is not on PyPI, so
tests and users without it check a model against the compiler's documented
requirements (coral.ai/docs/edgetpu/models-intro, "Model requirements" and
"Supported operations"), read from the flatbuffer itself:

- every tensor is 8-bit (int8 or uint8), except 32-bit biases and shape constants;
- every shape is static: no ``-1`` in any tensor's shape signature (a dynamic batch
  dimension, which the TensorFlow 2 converter writes by default, makes the compiler
  refuse the whole model);
- only the three innermost dimensions may be larger than 1;
- one subgraph; only operator types in the compiler's supported list, and ``PAD`` only
  on height and width;
- no operator *version* that compilers up to 16.0 report as "Operation version not
  supported": ``RESIZE_BILINEAR`` and ``RESIZE_NEAREST_NEIGHBOR`` with half-pixel
  centres (version 3+), which TensorFlow 2 writes for Keras ``UpSampling2D`` (reported in
  google-coral/edgetpu issues 45, 187 and 420); the export replaces the resize by a
  transposed convolution (:func:`~.keras_model.build_keras_generator`, ``edgetpu=True``).

A passing check is necessary, not sufficient: the compiler may still keep a large op on
the CPU for precision or memory reasons. docs/backends.md has the compiler command and
the output to expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SUPPORTED_OPS", "EdgeTPUReport", "check_edgetpu_compatible"]

#: Operator types the Edge TPU compiler maps (coral.ai's "Supported operations" table).
SUPPORTED_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM", "MAXIMUM",
    "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX",
    "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE",
    "STRIDED_SLICE", "SUB", "SUM", "SQUARED_DIFFERENCE", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
})
#: Highest operator version known to compile, where newer converters write versions it rejects.
MAX_VERSION = {"RESIZE_BILINEAR": 2, "RESIZE_NEAREST_NEIGHBOR": 2}
_EIGHT_BIT = {"INT8", "UINT8"}


@dataclass
class EdgeTPUReport:
    """What :func:`check_edgetpu_compatible` found: problems (empty when compatible) and the op census."""

    path: Path
    problems: list[str]
    ops: dict[str, int]
    versions: dict[str, int]

    @property
    def compatible(self) -> bool:
        return not self.problems


def _shape(tensor: Any) -> list[int]:
    return [tensor.Shape(k) for k in range(tensor.ShapeLength())]


def check_edgetpu_compatible(path: str | Path) -> EdgeTPUReport:
    """Check a ``.tflite`` file against the Edge TPU compiler's requirements (see the module docstring)."""
    from ai_edge_litert import schema_py_generated as schema

    p = Path(path)
    model = schema.Model.GetRootAsModel(p.read_bytes(), 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    problems: list[str] = []
    if model.SubgraphsLength() != 1:
        problems.append(f"{model.SubgraphsLength()} subgraphs; the compiler maps one")
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        codes.append((op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM"),
                      code.Version()))
    graph = model.Subgraphs(0)
    ops: dict[str, int] = {}
    versions: dict[str, int] = {}
    bias_like: set[int] = set()  # inputs of weighted ops: their int32 biases are allowed
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        name, version = codes[op.OpcodeIndex()]
        ops[name] = ops.get(name, 0) + 1
        versions[name] = max(versions.get(name, 0), version)
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"):
            bias_like.update(op.Inputs(k) for k in range(op.InputsLength()))
        if name == "PAD":  # Coral's operator table: "supports padding only on height and width"
            before, after = (_shape(graph.Tensors(t)) for t in (op.Inputs(0), op.Outputs(0)))
            if len(before) != 4 or len(after) != 4 or before[0] != after[0] or before[3] != after[3]:
                problems.append(f"PAD from {before} to {after}: the Edge TPU pads only height and width")
    for name in sorted(set(ops) - SUPPORTED_OPS):
        problems.append(f"operator {name} is not supported by the Edge TPU")
    for name, version in sorted(versions.items()):
        if version > MAX_VERSION.get(name, version):
            problems.append(f"operator {name} version {version} (half-pixel centres) is one the compiler "
                            f"rejects (\"Operation version not supported\"); at most version {MAX_VERSION[name]}")
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        tname = t.Name().decode()
        ttype = type_names.get(t.Type(), str(t.Type()))
        shape = _shape(t)
        signature = [t.ShapeSignature(k) for k in range(t.ShapeSignatureLength())] or shape
        constant = t.Buffer() > 0 and model.Buffers(t.Buffer()).DataLength() > 0
        if ttype not in _EIGHT_BIT and not (ttype == "INT32" and (constant or i in bias_like)):
            problems.append(f"tensor {tname!r} is {ttype}; the Edge TPU needs 8-bit tensors")
        if any(d < 0 for d in signature):
            problems.append(f"tensor {tname!r} has a dynamic shape {signature}; the compiler needs static shapes")
        if not constant and any(d > 1 for d in shape[:-3]):
            problems.append(f"tensor {tname!r} of shape {shape} has a dimension > 1 outside the innermost three")
    return EdgeTPUReport(p, problems, ops, versions)
