"""Image -> embedding: the Embedder protocol, the model id, and choosing a runtime.

The embedding is EfficientNet-Lite0's 1280-d globally pooled feature vector, L2-normalised.
Every image is squashed whole to 224x224 with INTER_AREA (one geometry for every photo; a
centre crop of the same photo only reaches cosine ~0.84 to the squash) and scaled as
(x - 127) / 128.

Backends, all produced from ``architecture.LAYERS``:

- ``onnxruntime``: the ONNX graph on onnxruntime (fastest here, no TensorFlow, runs on CPUs
  without AVX);
- ``opencv``: the same graph on OpenCV's DNN module (no extra dependency; a fallback);
- ``tensorflow``: the Keras reference, traced once with ``tf.function``; it needs AVX on x86-64
  and costs seconds and hundreds of MB to import, so ``auto`` only uses it when nothing else
  loads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import structlog
from numpy.typing import NDArray

from dupwatch.architecture import FEATURE_DIM, INPUT_SIZE, ModelParams, architecture_digest, bind
from dupwatch.cpu import detect_cpu
from dupwatch.errors import ModelError, UnsupportedCPUError
from dupwatch.weights import default_weights_path, file_sha256, read_weights

log = structlog.get_logger(__name__)

# Bump whenever preprocessing changes (size, interpolation, scaling, colour order): vectors made
# before and after must never be compared.
PREPROCESSING_VERSION = 1

BACKENDS = ("onnxruntime", "opencv", "tensorflow")
# The order "auto" tries, fastest first as measured in bench/RESULTS.md ("Embedding").
AUTO_ORDER = BACKENDS

# Images per runtime call: large enough to amortise the call, small enough to bound memory
# (16 x 224 x 224 x 3 float32 = 9.6 MB).
_CHUNK = 16

FeatureFn = Callable[[NDArray[np.float32]], NDArray[np.float32]]


class Embedder(Protocol):
    """Turns decoded RGB images into L2-normalised vectors of one model's vector space."""

    model_id: str
    dim: int

    def embed(self, images: Sequence[NDArray[np.uint8]]) -> NDArray[np.float32]: ...


def model_id(
    weights_sha256: str,
    *,
    preprocessing_version: int = PREPROCESSING_VERSION,
    architecture: str | None = None,
) -> str:
    """The identity of a vector space: architecture, exact weights and preprocessing."""
    arch = architecture if architecture is not None else architecture_digest()
    return f"efficientnet-lite0-a{arch}-w{weights_sha256[:16]}-p{preprocessing_version}"


def preprocess(images: Sequence[NDArray[np.uint8]]) -> NDArray[np.float32]:
    """Squash each RGB uint8 image to 224x224 (INTER_AREA) and scale to (x - 127) / 128."""
    batch = np.empty((len(images), INPUT_SIZE, INPUT_SIZE, 3), dtype=np.float32)
    for i, image in enumerate(images):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"image {i}: expected RGB uint8 HxWx3, got {image.dtype} {image.shape}"
            )
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"image {i} is empty: {image.shape}")
        small: NDArray[np.uint8]
        if image.shape[:2] == (INPUT_SIZE, INPUT_SIZE):
            small = image
        else:
            small = np.asarray(
                cv2.resize(image, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA),
                dtype=np.uint8,
            )
        np.subtract(small, np.float32(127.0), out=batch[i], dtype=np.float32)
    batch /= np.float32(128.0)
    return batch


def normalise(features: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    # A zero vector cannot occur for a real image (ReLU6 features of a live network), but if
    # it did, dividing by zero would poison the index with NaN.
    out: NDArray[np.float32] = (features / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


@dataclass(slots=True)
class ModelEmbedder:
    """An Embedder bound to one backend; not thread-safe (one per worker process)."""

    model_id: str
    backend: str
    threads: int
    _features: FeatureFn = field(repr=False)
    from_cache: bool = False  # the runtime graph came from the cache directory
    dim: int = FEATURE_DIM

    def features(self, images: Sequence[NDArray[np.uint8]]) -> NDArray[np.float32]:
        """The raw pooled features (before normalisation), e.g. for the ImageNet classifier."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self._features(preprocess(images[i : i + _CHUNK]))
            for i in range(0, len(images), _CHUNK)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def embed(self, images: Sequence[NDArray[np.uint8]]) -> NDArray[np.float32]:
        """(n, 1280) L2-normalised float32 vectors; the same input always gives the same output."""
        return normalise(self.features(images))


@dataclass(slots=True)
class _ParamsLoader:
    """Reads the weights at most once per load, remembering a failure so no backend retries."""

    path: Path
    params: ModelParams | None = None
    error: ModelError | None = None

    def __call__(self) -> ModelParams:
        if self.error is not None:
            raise self.error
        if self.params is None:
            try:
                self.params = bind(read_weights(self.path))
            except ModelError as exc:
                self.error = exc
                raise
        return self.params


def _tensorflow_features(params: ModelParams, threads: int) -> FeatureFn:
    cpu = detect_cpu()
    if not cpu.tensorflow_ok:
        raise UnsupportedCPUError(
            "TensorFlow cannot run on this CPU (" + "; ".join(cpu.reasons) + "); "
            "use the onnxruntime or opencv backend"
        )
    from dupwatch import keras_model  # imports TensorFlow: only after the CPU check

    keras_model.set_threads(threads)
    return keras_model.compile_features(keras_model.build_keras(params))


def _load_backend(
    backend: str, mid: str, threads: int, cache_dir: Path | None, load_params: _ParamsLoader
) -> tuple[FeatureFn, bool]:
    if backend == "tensorflow":
        return _tensorflow_features(load_params(), threads), False
    from dupwatch import onnx_backends

    runner = (
        onnx_backends.onnxruntime_features
        if backend == "onnxruntime"
        else onnx_backends.opencv_features
    )
    data, cached = onnx_backends.onnx_model_bytes(mid, cache_dir, load_params)
    try:
        return runner(data, threads), cached
    except ModelError:
        if not cached:
            raise
        log.warning("model_cache_invalid", model_id=mid, backend=backend)
        data, _ = onnx_backends.onnx_model_bytes(mid, cache_dir, load_params, rebuild=True)
        return runner(data, threads), False


def load_embedder(
    backend: str = "auto",
    *,
    threads: int = 1,
    cache_dir: Path | None = None,
    weights_path: Path | None = None,
) -> ModelEmbedder:
    """Load the model on ``backend`` ("auto" tries ``AUTO_ORDER`` and keeps the first that works).

    ``cache_dir`` holds derived model files keyed by the model id (the state directory);
    without it they are rebuilt in memory on every start. Raises ModelError when the weights are
    missing or malformed or no backend loads, UnsupportedCPUError when the requested backend
    cannot run on this CPU. TensorFlow is never imported unless the CPU has been checked.
    """
    if backend != "auto" and backend not in BACKENDS:
        raise ModelError(f"unknown model backend {backend!r}; choose auto or one of {BACKENDS}")
    if threads < 1:
        raise ModelError(f"threads must be at least 1, got {threads}")
    started = time.perf_counter()
    path = weights_path if weights_path is not None else default_weights_path()
    mid = model_id(file_sha256(path))
    candidates = AUTO_ORDER if backend == "auto" else (backend,)
    load_params = _ParamsLoader(path)
    failures: list[str] = []
    for name in candidates:
        try:
            features, cached = _load_backend(name, mid, threads, cache_dir, load_params)
        except ImportError as exc:
            failures.append(f"{name}: not installed ({exc.name or exc})")
            log.warning("model_backend_unavailable", backend=name, error=str(exc))
            continue
        except UnsupportedCPUError as exc:
            if backend != "auto":
                raise
            failures.append(f"{name}: {exc}")
            continue
        except ModelError as exc:
            if backend != "auto" or exc is load_params.error:
                raise
            failures.append(f"{name}: {exc}")
            log.warning("model_backend_failed", backend=name, error=str(exc))
            continue
        log.info(
            "embedder_loaded",
            backend=name,
            model_id=mid,
            threads=threads,
            from_cache=cached,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return ModelEmbedder(mid, name, threads, features, from_cache=cached)
    raise ModelError("no model backend could be loaded: " + "; ".join(failures))
