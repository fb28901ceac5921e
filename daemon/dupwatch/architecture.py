"""The one description of EfficientNet-Lite0, and its binding to the weights file.

Every runtime graph (the Keras reference, the ONNX graph) is produced from ``LAYERS``, so the
backends cannot drift apart. Each layer also carries the TensorFlow 'same' padding for the
fixed 224x224 input, because runtimes with explicit padding must reproduce TensorFlow's
asymmetric split on stride-2 convolutions (PyTorch-style symmetric padding drops feature
agreement to 0.85-0.90).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dupwatch.errors import ModelError
from dupwatch.weights import WeightStore

INPUT_SIZE = 224
FEATURE_DIM = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3  # TensorFlow's, not PyTorch's 1e-5: the weights come from TensorFlow

# EfficientNet-B0's block table: (repeats, kernel, first stride, expand ratio, out channels).
# Lite0 keeps it unscaled and drops squeeze-excite; the stem (32) and head (1280) are fixed.
_BLOCK_TABLE = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_STEM_CHANNELS = 32


@dataclass(frozen=True, slots=True)
class ConvBN:
    """A bias-free convolution followed by BatchNorm and, optionally, ReLU6."""

    name: str
    source: str
    conv_key: str  # weights key of the convolution kernel
    bn_key: str  # weights key prefix of its BatchNorm
    kernel: int
    stride: int
    cin: int
    cout: int
    depthwise: bool
    relu6: bool
    size_in: int  # spatial size of the (square) input
    pads: tuple[int, int]  # TensorFlow 'same': (before, after) on each spatial axis

    @property
    def size_out(self) -> int:
        return -(-self.size_in // self.stride)


@dataclass(frozen=True, slots=True)
class Add:
    """The residual connection of an MBConv block."""

    name: str
    sources: tuple[str, str]


@dataclass(frozen=True, slots=True)
class GlobalPool:
    """Global average pooling to the feature vector."""

    name: str
    source: str


Layer = ConvBN | Add | GlobalPool

INPUT_NAME = "image"
OUTPUT_NAME = "features"


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same' padding: the odd pixel goes after (bottom/right), never before."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv(
    name: str,
    source: str,
    conv_key: str,
    bn_key: str,
    *,
    kernel: int,
    stride: int,
    cin: int,
    cout: int,
    size: int,
    depthwise: bool = False,
    relu6: bool = True,
) -> ConvBN:
    return ConvBN(
        name,
        source,
        conv_key,
        bn_key,
        kernel,
        stride,
        cin,
        cout,
        depthwise,
        relu6,
        size,
        same_pads(size, kernel, stride),
    )


def _describe() -> tuple[Layer, ...]:
    layers: list[Layer] = []
    size = INPUT_SIZE
    stem = _conv(
        "stem", INPUT_NAME, "_conv_stem.weight", "_bn0", kernel=3, stride=2, cin=3,
        cout=_STEM_CHANNELS, size=size,
    )  # fmt: skip
    layers.append(stem)
    x, cin, size = stem.name, _STEM_CHANNELS, stem.size_out
    index = 0
    for repeats, kernel, first_stride, expand, cout in _BLOCK_TABLE:
        for r in range(repeats):
            stride = first_stride if r == 0 else 1
            block_in, p = x, f"_blocks.{index}"
            mid = cin * expand
            if expand != 1:
                e = _conv(
                    f"b{index}_expand", x, f"{p}._expand_conv.weight", f"{p}._bn0",
                    kernel=1, stride=1, cin=cin, cout=mid, size=size,
                )  # fmt: skip
                layers.append(e)
                x = e.name
            d = _conv(
                f"b{index}_depthwise", x, f"{p}._depthwise_conv.weight", f"{p}._bn1",
                kernel=kernel, stride=stride, cin=mid, cout=mid, size=size, depthwise=True,
            )  # fmt: skip
            layers.append(d)
            size = d.size_out
            proj = _conv(
                f"b{index}_project", d.name, f"{p}._project_conv.weight", f"{p}._bn2",
                kernel=1, stride=1, cin=mid, cout=cout, size=size, relu6=False,
            )  # fmt: skip
            layers.append(proj)
            x = proj.name
            if stride == 1 and cin == cout:
                layers.append(Add(f"b{index}_add", (block_in, x)))
                x = f"b{index}_add"
            cin = cout
            index += 1
    head = _conv(
        "head", x, "_conv_head.weight", "_bn1", kernel=1, stride=1, cin=cin, cout=FEATURE_DIM,
        size=size,
    )  # fmt: skip
    layers.append(head)
    layers.append(GlobalPool(OUTPUT_NAME, head.name))
    return tuple(layers)


LAYERS: tuple[Layer, ...] = _describe()
ARCHITECTURE_NAME = "efficientnet-lite0"


def architecture_digest() -> str:
    """A short digest of the description, so any change to it changes the model id."""
    text = repr((ARCHITECTURE_NAME, BN_EPSILON, INPUT_SIZE, LAYERS))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class ConvParams:
    """One ConvBN's parameters in TensorFlow layout.

    ``kernel`` is HWIO for a plain convolution and (kh, kw, C, 1) for a depthwise one.
    """

    kernel: NDArray[np.float32]
    gamma: NDArray[np.float32]
    beta: NDArray[np.float32]
    mean: NDArray[np.float32]
    var: NDArray[np.float32]
    depthwise: bool

    def folded(self) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """BatchNorm folded into the kernel: (kernel scaled per output channel, bias)."""
        scale = self.gamma / np.sqrt(self.var + np.float32(BN_EPSILON))
        bias = self.beta - self.mean * scale
        # The output channel is the last axis of HWIO and the third of (kh, kw, C, 1).
        axis = 2 if self.depthwise else 3
        shape = [1, 1, 1, 1]
        shape[axis] = -1
        kernel = self.kernel * scale.reshape(shape)
        return kernel.astype(np.float32), bias.astype(np.float32)


@dataclass(frozen=True, slots=True)
class ModelParams:
    """Every parameter of the model, keyed by layer name, plus the ImageNet classifier."""

    weights_sha256: str
    convs: dict[str, ConvParams]
    classifier_weight: NDArray[np.float32]  # (1000, 1280)
    classifier_bias: NDArray[np.float32]  # (1000,)


def _f32(store: WeightStore, key: str, shape: tuple[int, ...]) -> NDArray[np.float32]:
    tensor: NDArray[Any] = store.take(key)
    if tensor.shape != shape or tensor.dtype != np.float32:
        raise ModelError(f"weights tensor {key} has shape {tensor.shape}, expected {shape}")
    return tensor.astype(np.float32, copy=False)


def bind(store: WeightStore) -> ModelParams:
    """Take every tensor the description names, in TensorFlow layout; all must be used."""
    convs: dict[str, ConvParams] = {}
    for layer in LAYERS:
        if not isinstance(layer, ConvBN):
            continue
        k, ci, co = layer.kernel, layer.cin, layer.cout
        if layer.depthwise:
            # PyTorch depthwise (C, 1, kh, kw) -> TensorFlow (kh, kw, C, 1).
            kernel = _f32(store, layer.conv_key, (co, 1, k, k)).transpose(2, 3, 0, 1)
        else:
            # PyTorch OIHW -> TensorFlow HWIO.
            kernel = _f32(store, layer.conv_key, (co, ci, k, k)).transpose(2, 3, 1, 0)
        b = layer.bn_key
        convs[layer.name] = ConvParams(
            np.ascontiguousarray(kernel),
            _f32(store, f"{b}.weight", (co,)),
            _f32(store, f"{b}.bias", (co,)),
            _f32(store, f"{b}.running_mean", (co,)),
            _f32(store, f"{b}.running_var", (co,)),
            layer.depthwise,
        )
        # A training counter: accounted for, not needed for inference.
        store.take(f"{b}.num_batches_tracked")
    fc_w = _f32(store, "_fc.weight", (NUM_CLASSES, FEATURE_DIM))
    fc_b = _f32(store, "_fc.bias", (NUM_CLASSES,))
    store.assert_all_used()
    return ModelParams(store.sha256, convs, fc_w, fc_b)
