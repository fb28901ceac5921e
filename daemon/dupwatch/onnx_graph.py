"""Write the architecture description as an ONNX graph, with the ``onnx`` package alone.

No TensorFlow is involved, so the graph can be produced on a CPU that cannot run TensorFlow.
BatchNorm is folded into each convolution (exact up to float rounding), and the TensorFlow
'same' padding is written out explicitly per layer, so every ONNX runtime computes what the
Keras reference computes. The graph takes NHWC float32 input (already scaled) and returns the
un-normalised pooled features.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dupwatch.architecture import (
    FEATURE_DIM,
    INPUT_NAME,
    INPUT_SIZE,
    LAYERS,
    OUTPUT_NAME,
    Add,
    ConvBN,
    GlobalPool,
    ModelParams,
)

# Opset 13 is old enough for every runtime we use (OpenCV's ONNX importer included) and has
# Clip with tensor bounds, which is how ONNX spells ReLU6.
OPSET = 13


def build_onnx(params: ModelParams) -> bytes:
    """Return the serialised ONNX model for ``params``."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = [
        numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"),
        numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max"),
    ]
    nchw = "image_nchw"
    nodes.append(helper.make_node("Transpose", [INPUT_NAME], [nchw], perm=[0, 3, 1, 2]))
    names = {INPUT_NAME: nchw}

    for layer in LAYERS:
        if isinstance(layer, ConvBN):
            kernel, bias = params.convs[layer.name].folded()
            if layer.depthwise:
                weight = kernel.transpose(2, 3, 0, 1)  # (kh, kw, C, 1) -> (C, 1, kh, kw)
            else:
                weight = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            w_name, b_name = f"{layer.name}_w", f"{layer.name}_b"
            inits.append(numpy_helper.from_array(weight.copy(), w_name))
            inits.append(numpy_helper.from_array(bias, b_name))
            before, after = layer.pads
            conv_out = layer.name if not layer.relu6 else f"{layer.name}_conv"
            nodes.append(
                helper.make_node(
                    "Conv",
                    [names[layer.source], w_name, b_name],
                    [conv_out],
                    kernel_shape=[layer.kernel, layer.kernel],
                    strides=[layer.stride, layer.stride],
                    pads=[before, before, after, after],
                    group=layer.cin if layer.depthwise else 1,
                )
            )
            if layer.relu6:
                nodes.append(
                    helper.make_node("Clip", [conv_out, "relu6_min", "relu6_max"], [layer.name])
                )
            names[layer.name] = layer.name
        elif isinstance(layer, Add):
            a, b = (names[s] for s in layer.sources)
            nodes.append(helper.make_node("Add", [a, b], [layer.name]))
            names[layer.name] = layer.name
        elif isinstance(layer, GlobalPool):
            pooled = f"{layer.name}_pooled"
            nodes.append(helper.make_node("GlobalAveragePool", [names[layer.source]], [pooled]))
            nodes.append(helper.make_node("Flatten", [pooled], [layer.name], axis=1))
            names[layer.name] = layer.name

    graph = helper.make_graph(
        nodes,
        "efficientnet_lite0_features",
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, ["n", INPUT_SIZE, INPUT_SIZE, 3]
            )
        ],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["n", FEATURE_DIM])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="dupwatch",
    )
    # IR version 8 keeps the file loadable by older onnxruntime and OpenCV builds.
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
