"""Build the Keras (TensorFlow) reference model from the architecture description.

This is the reference every other backend is checked against: it uses TensorFlow's own 'same'
padding and an unfolded BatchNorm with epsilon 1e-3. Importing this module imports TensorFlow,
which dies with SIGILL on a CPU without AVX: only ``embedder`` imports it, after checking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
from numpy.typing import NDArray

from dupwatch.architecture import (
    BN_EPSILON,
    INPUT_SIZE,
    LAYERS,
    OUTPUT_NAME,
    Add,
    ConvBN,
    GlobalPool,
    ModelParams,
)


def set_threads(threads: int) -> None:
    """Limit TensorFlow's thread pools; must run before TensorFlow executes anything."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        # TensorFlow is already initialised in this process; its pools cannot change.
        pass


def build_keras(params: ModelParams) -> Any:
    """Return a ``keras.Model`` mapping NHWC scaled images to un-normalised pooled features."""
    keras = tf.keras
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")
    tensors: dict[str, Any] = {"image": inputs}
    for layer in LAYERS:
        if isinstance(layer, ConvBN):
            p = params.convs[layer.name]
            if layer.depthwise:
                conv = keras.layers.DepthwiseConv2D(
                    layer.kernel, layer.stride, padding="same", use_bias=False,
                    name=f"{layer.name}_conv",
                )  # fmt: skip
            else:
                conv = keras.layers.Conv2D(
                    layer.cout, layer.kernel, layer.stride, padding="same", use_bias=False,
                    name=f"{layer.name}_conv",
                )  # fmt: skip
            x = conv(tensors[layer.source])
            conv.set_weights([p.kernel])
            bn = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{layer.name}_bn")
            x = bn(x)
            bn.set_weights([p.gamma, p.beta, p.mean, p.var])
            if layer.relu6:
                x = keras.layers.ReLU(max_value=6.0, name=f"{layer.name}_relu6")(x)
            tensors[layer.name] = x
        elif isinstance(layer, Add):
            tensors[layer.name] = keras.layers.Add(name=layer.name)(
                [tensors[s] for s in layer.sources]
            )
        elif isinstance(layer, GlobalPool):
            tensors[layer.name] = keras.layers.GlobalAveragePooling2D(name=layer.name)(
                tensors[layer.source]
            )
    return keras.Model(inputs, tensors[OUTPUT_NAME], name="efficientnet_lite0")


def compile_features(model: Any) -> Callable[[NDArray[np.float32]], NDArray[np.float32]]:
    """Wrap the model in one traced ``tf.function`` (``model.predict`` costs ~100 ms a call)."""
    spec = tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.float32)

    def call(x: Any) -> Any:
        return model(x, training=False)

    # XLA (jit_compile) measured 10-20x slower on this kind of CPU.
    features = tf.function(call, input_signature=[spec], jit_compile=False)

    def run(batch: NDArray[np.float32]) -> NDArray[np.float32]:
        out: NDArray[np.float32] = features(tf.constant(batch)).numpy()
        return out

    return run
