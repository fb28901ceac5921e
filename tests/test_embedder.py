"""The embedder: weights reading, the verified model facts, backends, model identity, caching."""

from __future__ import annotations

import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from numpy.typing import NDArray

from dupwatch import architecture, onnx_backends
from dupwatch.architecture import BN_EPSILON, LAYERS, Add, ConvBN, bind, same_pads
from dupwatch.cpu import detect_cpu
from dupwatch.embedder import (
    PREPROCESSING_VERSION,
    ModelEmbedder,
    load_embedder,
    model_id,
    preprocess,
)
from dupwatch.errors import ModelError, UnsupportedCPUError
from dupwatch.weights import WeightStore, default_weights_path, read_weights

Image = NDArray[np.uint8]
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry")
REPO = Path(__file__).resolve().parents[1]


def _write_and_read(image: Image, path: Path, *params: int) -> Image:
    """Write an RGB image with OpenCV and read it back as RGB, as a file on disk would be."""
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), list(params))
    loaded = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert loaded is not None
    return np.ascontiguousarray(cv2.cvtColor(loaded, cv2.COLOR_BGR2RGB))


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Image]:
    """scikit-image's real photographs, written losslessly to PNG and read back."""
    folder = tmp_path_factory.mktemp("photos")
    return {
        name: _write_and_read(getattr(skimage.data, name)(), folder / f"{name}.png")
        for name in PHOTOS
    }


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def reference() -> ModelEmbedder:
    """The Keras/TensorFlow model, against which every other backend is checked."""
    if not detect_cpu().tensorflow_ok:
        pytest.skip("this CPU cannot run TensorFlow, so the reference model cannot be built")
    return load_embedder("tensorflow")


@pytest.fixture(scope="session")
def runtime(cache_dir: Path) -> ModelEmbedder:
    return load_embedder("onnxruntime", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def backends(runtime: ModelEmbedder, cache_dir: Path) -> dict[str, ModelEmbedder]:
    return {"onnxruntime": runtime, "opencv": load_embedder("opencv", cache_dir=cache_dir)}


def _cos(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- the weights file ---


def test_every_weights_tensor_is_used_by_the_architecture() -> None:
    store = read_weights(default_weights_path())
    params = bind(store)  # raises if a tensor is left over
    assert len(params.convs) == sum(isinstance(layer, ConvBN) for layer in LAYERS)


def test_an_unused_weights_tensor_is_reported() -> None:
    store = read_weights(default_weights_path())
    tensors = {key: store.take(key) for key in list(store.keys())}
    tensors["_blocks.16._project_conv.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(ModelError, match="left unused"):
        bind(WeightStore(store.sha256, tensors))


def test_missing_weights_file_raises_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        load_embedder("onnxruntime", weights_path=tmp_path / "absent.pth")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_weights_file_raises_model_error(tmp_path: Path, damage: str) -> None:
    data = default_weights_path().read_bytes()
    bad = tmp_path / "weights.pth"
    damaged = {
        "truncated": data[: len(data) // 2],
        "garbage": bytes(range(256)) * 64,
        "empty": b"",
    }[damage]
    bad.write_bytes(damaged)
    cache = tmp_path / "cache"
    with pytest.raises(ModelError, match="weights"):
        load_embedder("auto", weights_path=bad, cache_dir=cache)
    assert not cache.exists() or not any(cache.iterdir())


def test_weights_pickle_cannot_call_arbitrary_globals(tmp_path: Path) -> None:
    # A tampered file whose state dict would run os.system when unpickled.
    head = b"".join(
        pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True})
    )
    evil = b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR."
    path = tmp_path / "evil.pth"
    path.write_bytes(head + evil)
    with pytest.raises(ModelError, match=r"os\.system is not allowed"):
        read_weights(path)
    assert not (tmp_path / "pwned").exists()


# --- the verified model facts ---


def test_architecture_matches_efficientnet_lite0() -> None:
    convs = [layer for layer in LAYERS if isinstance(layer, ConvBN)]
    blocks = {layer.name.split("_")[0] for layer in convs if layer.name.startswith("b")}
    assert len(blocks) == 16
    assert (convs[0].kernel, convs[0].stride, convs[0].cout) == (3, 2, 32)
    assert (convs[-1].kernel, convs[-1].cout, convs[-1].relu6) == (1, 1280, True)
    assert sum(isinstance(layer, Add) for layer in LAYERS) == 9
    assert all(layer.relu6 for layer in convs if not layer.name.endswith("_project"))
    assert BN_EPSILON == 1e-3


def test_same_padding_puts_the_odd_pixel_after_on_stride_2() -> None:
    assert same_pads(224, 3, 2) == (0, 1)
    assert same_pads(56, 5, 2) == (1, 2)
    assert same_pads(28, 3, 1) == (1, 1)
    stem = LAYERS[0]
    assert isinstance(stem, ConvBN) and stem.pads == (0, 1)


def test_preprocessing_squashes_whole_image_with_area_averaging() -> None:
    # A one-pixel checkerboard at twice the input size: area averaging gives uniform grey,
    # while nearest or bilinear sampling would keep black and white pixels.
    board = (np.indices((448, 600)).sum(axis=0) % 2 * 255).astype(np.uint8)
    x = preprocess([np.dstack([board] * 3)])
    assert x.shape == (1, 224, 224, 3)
    assert np.all(np.abs(x * 128 + 127 - 127.5) < 40)
    flat = preprocess([np.full((10, 30, 3), 255, np.uint8), np.full((5, 5, 3), 127, np.uint8)])
    assert np.allclose(flat[0], (255 - 127) / 128) and np.allclose(flat[1], 0.0)


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32)])
def test_embed_rejects_images_that_are_not_rgb_uint8(runtime: ModelEmbedder, bad: Image) -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        runtime.embed([bad])


@pytest.mark.parametrize(
    ("photo", "classes"),
    [
        ("chelsea", {281, 282, 285}),  # tabby, tiger cat, Egyptian cat
        ("coffee", {967}),  # espresso
        ("rocket", {657, 744}),  # missile, projectile
    ],
)
def test_imagenet_top5_includes_the_true_class(
    photos: dict[str, Image], runtime: ModelEmbedder, photo: str, classes: set[int]
) -> None:
    params = bind(read_weights(default_weights_path()))
    features = runtime.features([photos[photo]])
    logits = features @ params.classifier_weight.T + params.classifier_bias
    top5 = set(np.argsort(-logits[0])[:5].tolist())
    assert top5 & classes, f"{photo}: top-5 {sorted(top5)} misses {classes}"


def test_embeddings_are_unit_length_and_deterministic(
    photos: dict[str, Image], runtime: ModelEmbedder
) -> None:
    images = list(photos.values())
    first = runtime.embed(images)
    assert first.shape == (len(images), 1280) and first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first, runtime.embed(images))
    one_by_one = np.concatenate([runtime.embed([image]) for image in images])
    assert np.all(np.sum(first * one_by_one, axis=1) > 0.99999)
    assert runtime.embed([]).shape == (0, 1280)


def test_jpeg_resave_and_half_size_copy_stay_close(
    photos: dict[str, Image], runtime: ModelEmbedder, tmp_path: Path
) -> None:
    for name, image in photos.items():
        jpeg = _write_and_read(image, tmp_path / f"{name}.jpg", cv2.IMWRITE_JPEG_QUALITY, 75)
        h, w = image.shape[:2]
        half = cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        half = _write_and_read(half, tmp_path / f"{name}-half.png")
        v = runtime.embed([image, jpeg, half])
        assert _cos(v[0], v[1]) >= 0.95, f"{name}: JPEG q=75 re-save"
        assert _cos(v[0], v[2]) >= 0.95, f"{name}: 50% resize"


def test_different_photos_stay_apart(photos: dict[str, Image], runtime: ModelEmbedder) -> None:
    v = runtime.embed(list(photos.values()))
    similarity = v @ v.T
    off_diagonal = similarity[~np.eye(len(v), dtype=bool)]
    assert off_diagonal.max() < 0.7


def test_every_backend_agrees_with_the_reference(
    photos: dict[str, Image],
    reference: ModelEmbedder,
    backends: dict[str, ModelEmbedder],
) -> None:
    images = list(photos.values())
    expected = reference.embed(images)
    for name, embedder in backends.items():
        assert embedder.model_id == reference.model_id
        agreement = np.sum(embedder.embed(images) * expected, axis=1)
        assert agreement.min() >= 0.9999, f"{name}: {agreement}"


# --- model identity and the derived-model cache ---


def test_model_id_changes_with_preprocessing_and_weights(tmp_path: Path) -> None:
    weights = default_weights_path()
    same = tmp_path / "same.pth"
    shutil.copyfile(weights, same)
    changed = tmp_path / "changed.pth"
    data = bytearray(weights.read_bytes())
    data[-4:] = np.float32(0.125).tobytes()  # last float of the last storage
    changed.write_bytes(bytes(data))
    base = load_embedder("onnxruntime").model_id
    assert load_embedder("onnxruntime", weights_path=same).model_id == base
    other = load_embedder("onnxruntime", weights_path=changed)
    assert other.model_id != base
    sha = read_weights(weights).sha256
    assert model_id(sha) == base
    assert model_id(sha, preprocessing_version=PREPROCESSING_VERSION + 1) != base
    assert model_id(sha, architecture="another") != base


def test_cache_is_written_once_and_reused(tmp_path: Path) -> None:
    first = load_embedder("onnxruntime", cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [f"{first.model_id}.onnx"]
    before = files[0].stat()
    second = load_embedder("onnxruntime", cache_dir=tmp_path)
    assert (first.from_cache, second.from_cache) == (False, True)
    after = files[0].stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    image = skimage.data.coffee()
    assert np.array_equal(first.embed([image]), second.embed([image]))


def test_failed_cache_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", refuse)
    embedder = load_embedder("onnxruntime", cache_dir=tmp_path)
    assert embedder.embed([skimage.data.coffee()]).shape == (1, 1280)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cache_file_is_rebuilt(tmp_path: Path) -> None:
    mid = load_embedder("onnxruntime", cache_dir=tmp_path).model_id
    cached = onnx_backends.cache_path(tmp_path, mid)
    good = cached.read_bytes()
    cached.write_bytes(good[: len(good) // 3])
    embedder = load_embedder("onnxruntime", cache_dir=tmp_path)
    assert not embedder.from_cache
    assert cached.read_bytes() == good


# --- CPUs without AVX ---


def test_cpu_without_avx_flag_refuses_tensorflow(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Atom(TM) CPU C3538 @ 2.10GHz\n"
        "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt aes\n"
    )
    info = detect_cpu(cpuinfo)
    if info.machine not in {"x86_64", "amd64"}:
        pytest.skip("the AVX check applies to x86-64 only")
    assert not info.tensorflow_ok
    assert any("avx" in reason for reason in info.reasons)


def test_auto_backend_does_not_import_tensorflow(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from dupwatch.embedder import load_embedder
        e = load_embedder("auto", cache_dir=Path({str(tmp_path)!r}))
        print(e.backend, "tensorflow" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1].split() == ["onnxruntime", "False"]


_QEMU_SCRIPT = """
import json, sys
from pathlib import Path
import numpy as np
from dupwatch.cpu import detect_cpu
from dupwatch.embedder import load_embedder
from dupwatch.errors import UnsupportedCPUError
work = Path(sys.argv[1])
images = list(np.load(work / "images.npz").values())
try:
    load_embedder("tensorflow")
    refused = False
except UnsupportedCPUError:
    refused = True
embedder = load_embedder("auto", cache_dir=work / "cache")
np.save(work / "vectors.npy", embedder.embed(images))
print(json.dumps({
    "backend": embedder.backend,
    "model_id": embedder.model_id,
    "tensorflow_ok": detect_cpu().tensorflow_ok,
    "tensorflow_refused": refused,
    "tensorflow_imported": "tensorflow" in sys.modules,
}))
"""


@pytest.fixture
def qemu() -> Iterator[str]:
    path = shutil.which("qemu-x86_64")
    if platform.machine() != "x86_64":
        pytest.skip("the emulated NAS CPU runs this machine's x86-64 Python: x86-64 hosts only")
    if path is None:
        pytest.skip("qemu-x86_64 is absent: install the Debian package qemu-user to run this")
    yield path


def test_tf_free_path_runs_on_an_emulated_cpu_without_avx(
    qemu: str, photos: dict[str, Image], reference: ModelEmbedder, tmp_path: Path
) -> None:
    images = [photos["chelsea"], photos["coffee"], photos["rocket"]]
    np.savez(tmp_path / "images.npz", *images)
    env = dict(os.environ)
    # This machine pins OpenBLAS to its Haswell kernels; an Atom NAS would not, and those
    # kernels are illegal instructions on the emulated CPU, so let OpenBLAS detect it.
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    # Intel Atom C3000 (Denverton): SSE4.2, no AVX, like many Synology and QNAP units.
    out = subprocess.run(
        [qemu, "-cpu", "Denverton", sys.executable, "-c", _QEMU_SCRIPT, str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["tensorflow_ok"] is False
    assert report["tensorflow_refused"] is True
    assert report["tensorflow_imported"] is False
    assert report["backend"] == "onnxruntime"
    assert report["model_id"] == reference.model_id
    agreement = np.sum(np.load(tmp_path / "vectors.npy") * reference.embed(images), axis=1)
    assert agreement.min() >= 0.9999, agreement


def test_description_digest_is_part_of_the_model_id() -> None:
    assert architecture.architecture_digest() in load_embedder("onnxruntime").model_id


def test_tensorflow_backend_is_refused_on_a_cpu_without_avx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dupwatch import cpu, embedder

    no_avx = cpu.CpuInfo("x86_64", avx=False, reasons=("the processor reports no AVX (CPUID)",))
    monkeypatch.setattr(embedder, "detect_cpu", lambda: no_avx)
    with pytest.raises(UnsupportedCPUError, match="no AVX"):
        load_embedder("tensorflow")
    assert load_embedder("auto").backend == "onnxruntime"
