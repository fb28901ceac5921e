"""A supervised worker process for decoding, embedding and verification.

Image decoders are C code fed with files from anywhere; a hostile file can crash or hang them or
make them allocate gigabytes. They run here, in a child process with an address-space limit, and
the parent waits with a timeout: a crash or a hang costs one file, and the worker is restarted.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import resource
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from numpy.typing import NDArray

from dupwatch import errors
from dupwatch.alignment import Features
from dupwatch.config import DecodeConfig, LogConfig, ModelConfig
from dupwatch.errors import DecoderCrashed, DecoderTimeout, FileRejected, ModelError
from dupwatch.glance import Glance
from dupwatch.images import DecodedImage, FileBytes, PhotoMeta
from dupwatch.maththreads import limit_math_threads
from dupwatch.phash import DIHEDRAL
from dupwatch.verify import Verification

log = structlog.get_logger(__name__)

# The working size handed to the embedder and to verification (long side, pixels).
WORKING_SIZE = 512
_START_TIMEOUT = 300.0
# Workers yield a shared core to the daemon's deciding thread, which every file passes
# through in turn (and to other services on the machine). Measured on the daemon benchmark:
# 53-58 files/s at equal priority, 60-62 with the workers at niceness 5.
WORKER_NICENESS = 5


@dataclass(frozen=True, slots=True)
class HeldPixels:
    """Names a file's decoded pixels that the worker which fingerprinted it still holds.

    The pixels stay in the worker (0.6 MB that would cross the pipe twice a file); requests
    that need them go to that worker, and fall back to the file's bytes when they are gone.
    """

    worker: int  # the pool's number of the worker
    process: int  # its process id: a restarted worker holds nothing
    serial: int


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """Everything computed from a file's pixels."""

    format: str
    width: int
    height: int
    meta: PhotoMeta
    phash: int
    dihedral_hashes: tuple[int, ...]
    vector: NDArray[np.float32]
    pixels: HeldPixels  # RGB at working size, kept in the worker for verification
    # The vector of the photo inside a frame (framing.photo_inside), when there is one.
    framed_vector: NDArray[np.float32] | None = None
    glance: Glance | None = None  # None when verification is off (see WorkerSettings)
    # The glance's features of the image mirrored (Glance.with_mirrored), for comparing
    # glances with a mirrored copy; None without a glance or for a framed photo.
    mirrored_features: Features | None = None


class _PixelsGone(Exception):
    """The worker no longer holds the pixels a request names (evicted, or it restarted)."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    decode: DecodeConfig
    model: ModelConfig
    cache_dir: Path
    log: LogConfig = field(default_factory=LogConfig)
    log_to_stderr: bool = False  # when stdout carries a report (scan --json)
    # Glances are verification's first step; off only to measure what verification costs.
    glances: bool = True


# --- child side ---------------------------------------------------------------------------


def _address_space() -> int | None:
    """This process's current virtual size in bytes (VmSize), or None where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _limit_memory(mib: int) -> None:
    """Cap what decoding may add to the address space the loaded model already uses.

    Set after the model is loaded: runtimes reserve very different amounts of virtual memory
    up front (TensorFlow several GB), and what must be bounded is what one file can make the
    decoder allocate on top.
    """
    base = _address_space() or 0
    limit = base + mib * 2**20
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError) as exc:  # some kernels or containers refuse; not fatal
        log.warning("worker_memory_limit_unset", error=str(exc))
        return
    log.debug("worker_memory_limited", base_mib=base >> 20, budget_mib=mib)


# Pixels of the files fingerprinted last, newest last, by serial. A file is decided at most
# workerpool.MAX_PREFETCHED files after its look-ahead fingerprint; 24 images at 512 px take
# about 14 MB.
_HELD: OrderedDict[int, NDArray[np.uint8]] = OrderedDict()
_HELD_SIZE = 24
_serials = itertools.count()


def _hold(pixels: NDArray[np.uint8], worker: int) -> HeldPixels:
    serial = next(_serials)
    _HELD[serial] = pixels
    while len(_HELD) > _HELD_SIZE:
        _HELD.popitem(last=False)
    return HeldPixels(worker, os.getpid(), serial)


def _pixels_of(source: HeldPixels | FileBytes, decode: DecodeConfig) -> NDArray[np.uint8]:
    """The pixels a request names: held here, or decoded again from the file's bytes."""
    if isinstance(source, FileBytes):
        return _decode(source, decode).pixels
    pixels = _HELD.get(source.serial) if source.process == os.getpid() else None
    if pixels is None:
        raise _PixelsGone()
    return pixels


def _decode(file: FileBytes, decode: DecodeConfig) -> DecodedImage:
    from dupwatch.images import decode_image

    return decode_image(file, max_megapixels=decode.max_megapixels, working_size=WORKING_SIZE)


def _fingerprint(
    embedder: Any, file: FileBytes, decode: DecodeConfig, glances: bool, worker: int
) -> Fingerprint:
    from dupwatch.framing import photo_inside
    from dupwatch.images import dihedral_hashes

    image = _decode(file, decode)
    # A photo shown inside a frame (a screenshot, a letterbox) is searched for as itself too.
    inner = photo_inside(image.pixels)
    vectors = embedder.embed([image.pixels] if inner is None else [image.pixels, inner])
    vector = vectors[0]
    hashes = tuple(dihedral_hashes(image.pixels))  # the first is the image's own
    # The mirrored features are made here, where the pixels are: most files meet a look-alike
    # whose thumbnail looks more like it mirrored than not, and the daemon then compares their
    # glances that way too. A framed photo's glance is never compared (always verified).
    glance: Glance | None = None
    mirrored: Features | None = None
    if glances and inner is None:
        glance, mirrored = Glance.with_mirrored(image.pixels, framed=False)
    elif glances:
        glance = Glance.of(image.pixels, framed=True)
    return Fingerprint(
        format=image.format,
        width=image.width,
        height=image.height,
        meta=image.meta,
        phash=hashes[0],
        dihedral_hashes=hashes,
        vector=np.asarray(vector, dtype=np.float32),
        pixels=_hold(image.pixels, worker),
        framed_vector=None if inner is None else np.asarray(vectors[1], dtype=np.float32),
        glance=glance,
        mirrored_features=mirrored,
    )


# Known files decoded for verification, newest last: a burst or an album arriving together
# keeps asking about the same few originals. 32 images at 512 px take about 25 MB.
_KNOWN_CACHE: OrderedDict[tuple[str, int, int, int], tuple[NDArray[np.uint8], PhotoMeta]] = (
    OrderedDict()
)
_KNOWN_CACHE_SIZE = 32


def _read(path: Path, decode: DecodeConfig) -> FileBytes:
    from dupwatch.images import read_file

    return read_file(path, max_file_bytes=decode.max_file_bytes)


def _decode_known(path: Path, decode: DecodeConfig) -> tuple[NDArray[np.uint8], PhotoMeta]:
    try:
        st = path.lstat()
        key = (os.fsdecode(path), st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _KNOWN_CACHE:
        _KNOWN_CACHE.move_to_end(key)
        return _KNOWN_CACHE[key]
    file = _read(path, decode)
    known = _decode(file, decode)
    if key is not None:
        _KNOWN_CACHE[key] = (known.pixels, known.meta)
        while len(_KNOWN_CACHE) > _KNOWN_CACHE_SIZE:
            _KNOWN_CACHE.popitem(last=False)
    return known.pixels, known.meta


@dataclass(frozen=True, slots=True)
class Verified:
    """A verification of a new image against a known file."""

    verification: Verification
    meta: PhotoMeta | None  # the known file's (for the camera-time veto)
    # The known file's glance, when one was asked for (it had none, or one of an old format).
    known_glance: Glance | None = None


def _verify_known(
    pixels: NDArray[np.uint8],
    path: Path,
    decode: DecodeConfig,
    framed: bool,
    glance_known: bool,
) -> Verified:
    from dupwatch.framing import photo_inside
    from dupwatch.verify import verify

    known_pixels, meta = _decode_known(path, decode)
    known_glance = None
    if glance_known:
        framed_known = photo_inside(known_pixels) is not None
        known_glance = Glance.of(known_pixels, framed=framed_known)
    # A photo inside a frame (a screenshot) is compared as itself first: a whole-frame match
    # is cheaper and surer than finding it within its frame by features. Whether there is a
    # frame was found when the new file was fingerprinted.
    inner = photo_inside(pixels) if framed else None
    if inner is not None:
        verified = verify(inner, known_pixels)
        if verified.same:
            return Verified(verified, meta, known_glance)
    return Verified(verify(pixels, known_pixels), meta, known_glance)


def _serve(conn: Connection, settings: WorkerSettings, number: int) -> None:
    """The child's main loop: one request in, one reply out, until the pipe closes.

    ``number`` is the pool's number for this worker, written into the ``HeldPixels`` it gives.
    """
    from dupwatch.logs import configure_logging

    stream = sys.stderr if settings.log_to_stderr else sys.stdout
    configure_logging(settings.log.level, settings.log.format, stream=stream)
    structlog.contextvars.bind_contextvars(process="worker")
    try:
        from dupwatch.embedder import load_embedder

        embedder = load_embedder(
            settings.model.backend,
            threads=settings.model.threads,
            cache_dir=settings.cache_dir,
        )
    except Exception as exc:  # reported to the parent, which stops the service
        conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
        return
    _limit_memory(settings.decode.worker_memory_mib)
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    conn.send(("ready", embedder.model_id))
    # A file read here for a look-ahead fingerprint, between its "read" and "fingerprint_read"
    # requests: reading it here spares the daemon reading it twice and sending it over.
    read_ahead: FileBytes | None = None
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        kind = request[0]
        try:
            if kind == "read":
                read_ahead = None
                read_ahead = _read(request[1], settings.decode)
                reply: Any = read_ahead.sha256
            elif kind == "fingerprint_read":
                file, read_ahead = read_ahead, None
                if file is None or file.path != request[1]:
                    raise ValueError("fingerprint_read without a read of that file before it")
                reply = _fingerprint(embedder, file, settings.decode, settings.glances, number)
            elif kind == "fingerprint":
                file = request[1]
                reply = _fingerprint(embedder, file, settings.decode, settings.glances, number)
            elif kind == "verify":
                _, source, known_path, framed, glance_known = request
                pixels = _pixels_of(source, settings.decode)
                reply = _verify_known(pixels, known_path, settings.decode, framed, glance_known)
            elif kind == "embed_variant":
                _, source, variant = request
                turn = DIHEDRAL[variant][1]
                pixels = np.ascontiguousarray(turn(_pixels_of(source, settings.decode)))
                reply = embedder.embed([pixels])[0]
            else:
                raise ValueError(f"unknown request {kind!r}")
            conn.send(("ok", reply))
        except _PixelsGone:
            conn.send(("gone",))
        except FileRejected as exc:
            conn.send(("rejected", type(exc).__name__, str(exc.path), exc.detail))
        except MemoryError:
            conn.send(("rejected", "ImageTooLarge", "", "ran out of memory while decoding"))
        except Exception as exc:  # a decoder bug: costs this file only
            conn.send(("rejected", "CorruptImage", "", f"{type(exc).__name__}: {exc}"))


# --- parent side --------------------------------------------------------------------------


def _rebuild_rejection(name: str, path: Path, detail: str) -> FileRejected:
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, FileRejected)):
        cls = errors.CorruptImage
    return cls(path, detail)


class AnalysisWorker:
    """Parent-side handle of the worker process; restarts it after a crash or a timeout."""

    def __init__(self, settings: WorkerSettings, number: int = 0) -> None:
        self._settings = settings
        self.number = number  # in its pool
        self._ctx = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._conn: Connection | None = None
        self.model_id = ""
        self.restarts = 0
        self._closed = False

    def start(self) -> None:
        """Start the child and wait until its model is loaded; ModelError if it cannot load."""
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_serve,
            args=(child, self._settings, self.number),
            name="dupwatch-worker",
            daemon=True,
        )
        # Read when the child loads numpy, so they go in the environment it is spawned with.
        limit_math_threads(self._settings.model.threads)
        process.start()
        child.close()
        self._process, self._conn = process, parent
        if not parent.poll(_START_TIMEOUT):
            self._kill()
            raise ModelError(f"the model did not load within {_START_TIMEOUT:.0f} s")
        try:
            message = parent.recv()
        except EOFError:
            code = process.exitcode
            self._kill()
            raise ModelError(f"the model process died while loading (exit code {code})") from None
        if message[0] != "ready":
            self._kill()
            raise ModelError(f"the model could not be loaded: {message[1]}")
        self.model_id = message[1]

    def _kill(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None and self._process.is_alive():
            self._process.kill()
        if self._process is not None:
            self._process.join(timeout=10)
        self._process, self._conn = None, None

    def close(self) -> None:
        """Stop the child for good: a call waiting on it fails at once, none restarts it."""
        self._closed = True
        self._kill()

    def _call(self, request: tuple[Any, ...], path: Path) -> Any:
        if self._closed:
            raise ModelError("the model process has been stopped")
        if self._conn is None:
            self.start()
        conn = self._conn
        if conn is None:
            raise ModelError("the model process is not running")
        timeout = self._settings.decode.worker_timeout
        started = time.monotonic()
        try:
            conn.send(request)
            ready = conn.poll(timeout)
        except (BrokenPipeError, OSError, EOFError):
            ready = False
        if not ready:
            crashed = self._process is None or not self._process.is_alive()
            self._restart()
            if crashed:
                raise DecoderCrashed(path, "the decoder process died on this file")
            raise DecoderTimeout(path, f"no result within {timeout:.0f} s")
        try:
            reply = conn.recv()
        except EOFError:
            self._restart()
            raise DecoderCrashed(path, "the decoder process died on this file") from None
        log.debug("worker_call", kind=request[0], ms=round((time.monotonic() - started) * 1000))
        if reply[0] == "rejected":
            _, name, _reported, detail = reply
            raise _rebuild_rejection(name, path, detail)
        if reply[0] == "gone":
            raise _PixelsGone()
        return reply[1]

    def _restart(self) -> None:
        self._kill()
        if self._closed:
            raise ModelError("the model process has been stopped")
        self.restarts += 1
        log.warning("worker_restarted", restarts=self.restarts)
        self.start()

    def fingerprint(self, file: FileBytes) -> Fingerprint:
        result: Fingerprint = self._call(("fingerprint", file), file.path)
        return result

    def read(self, path: Path) -> str:
        """Have the worker read ``path`` and hold its bytes; their SHA-256.

        Raises what ``read_file`` raises. The bytes are held for ``fingerprint_read``, the
        next request: a look-ahead fingerprint needs its digest before its result.
        """
        result: str = self._call(("read", path), path)
        return result

    def fingerprint_read(self, path: Path) -> Fingerprint:
        """The fingerprint of the bytes of ``path`` that ``read`` just took."""
        result: Fingerprint = self._call(("fingerprint_read", path), path)
        return result

    def verify(
        self,
        pixels: HeldPixels,
        file: FileBytes,
        known_path: Path,
        *,
        framed: bool,
        glance_known: bool = False,
    ) -> Verified:
        """Verify the new image (``file``, whose ``pixels`` this worker holds) against the
        known file at ``known_path``.

        ``framed``: the new image holds a photo inside a frame (its fingerprint has a
        ``framed_vector``). ``glance_known``: also return a glance of the known file.
        """
        result: Verified = self._on_pixels(
            "verify", pixels, file, known_path, framed, glance_known, path=known_path
        )
        return result

    def embed_variant(
        self, pixels: HeldPixels, file: FileBytes, variant: int
    ) -> NDArray[np.float32]:
        """The vector of the new image (as for ``verify``) turned by
        ``phash.DIHEDRAL[variant]``."""
        result: NDArray[np.float32] = self._on_pixels(
            "embed_variant", pixels, file, variant, path=file.path
        )
        return result

    def _on_pixels(
        self, kind: str, pixels: HeldPixels, file: FileBytes, *rest: Any, path: Path
    ) -> Any:
        """A request on the new image: on the pixels this worker holds, or on its bytes,
        decoded again, when it no longer holds them (evicted, or restarted since)."""
        try:
            return self._call((kind, pixels, *rest), path)
        except _PixelsGone:
            return self._call((kind, file, *rest), path)
