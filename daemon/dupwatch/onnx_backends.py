"""The TensorFlow-free backends: the ONNX graph, cached on disk, run by onnxruntime or OpenCV.

The graph file is derived data: it is keyed by the model id (architecture + weights SHA-256 +
preprocessing version), written atomically (temporary file, fsync, ``os.replace``), and rebuilt
from the weights whenever it is missing or cannot be loaded.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import structlog
from numpy.typing import NDArray

from dupwatch.architecture import INPUT_NAME, ModelParams
from dupwatch.errors import ModelError

log = structlog.get_logger(__name__)

FeatureFn = Callable[[NDArray[np.float32]], NDArray[np.float32]]


def cache_path(cache_dir: Path, model_id: str) -> Path:
    return cache_dir / f"{model_id}.onnx"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` is either absent, the old file, or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)  # os.replace: atomic within one filesystem
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # Make the rename itself durable, so a power cut cannot bring back a missing file.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def onnx_model_bytes(
    model_id: str,
    cache_dir: Path | None,
    load_params: Callable[[], ModelParams],
    *,
    rebuild: bool = False,
) -> tuple[bytes, bool]:
    """Return (ONNX bytes, whether they came from the cache), building and caching if needed."""
    path = cache_path(cache_dir, model_id) if cache_dir is not None else None
    if path is not None and not rebuild:
        try:
            return path.read_bytes(), True
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("model_cache_unreadable", path=str(path), error=str(exc))
    from dupwatch.onnx_graph import build_onnx  # the onnx package is only needed to build

    data = build_onnx(load_params())
    if path is not None:
        try:
            write_atomically(path, data)
            log.info("model_cache_written", path=str(path), bytes=len(data))
        except OSError as exc:
            # The embedder still works from memory; the next start simply rebuilds.
            log.warning("model_cache_write_failed", path=str(path), error=str(exc))
    return data, False


def onnxruntime_features(model: bytes, threads: int) -> FeatureFn:
    """A feature function running the graph on onnxruntime's CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning worker threads burn a core of a small NAS while waiting for the next image.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped exceptions on a bad graph
        raise ModelError(f"onnxruntime cannot load the model graph: {exc}") from exc

    def run(batch: NDArray[np.float32]) -> NDArray[np.float32]:
        out = session.run(None, {INPUT_NAME: batch})[0]
        return np.asarray(out, dtype=np.float32)

    return run


def opencv_features(model: bytes, threads: int) -> FeatureFn:
    """A feature function running the graph on OpenCV's DNN module (already a dependency)."""
    import cv2

    # OpenCV's thread pool is process-wide; the daemon runs one embedder per process.
    cv2.setNumThreads(threads)
    try:
        net = cv2.dnn.readNetFromONNX(np.frombuffer(model, dtype=np.uint8))
    except cv2.error as exc:
        raise ModelError(f"OpenCV cannot load the model graph: {exc}") from exc

    def run(batch: NDArray[np.float32]) -> NDArray[np.float32]:
        net.setInput(np.ascontiguousarray(batch))
        return np.asarray(net.forward(), dtype=np.float32).reshape(len(batch), -1)

    return run
