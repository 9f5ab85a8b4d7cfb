"""Export trained generators for the inference backends.

``onnx``     fp32, dynamic H and W: ONNX Runtime, OpenVINO, TensorRT all read it.
``tflite``   full-integer int8 at a fixed tile shape: LiteRT on CPU, and the input
             of ``edgetpu_compiler``.
``openvino`` int8 IR quantised with NNCF: the fastest CPU path.

Each needs the ``export`` extra (torch, TensorFlow, NNCF); inference never does.
"""
