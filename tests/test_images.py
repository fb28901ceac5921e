"""Reading and decoding real photo files: formats, orientation, and every kind of bad file."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import resource
import socket
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pillow_heif
import pytest
import skimage.data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps, features

from dupwatch import images
from dupwatch.errors import (
    CorruptImage,
    EmptyFile,
    FileChanging,
    FileRejected,
    FileTooLarge,
    FileUnreadable,
    FileVanished,
    ImageTooLarge,
    NotAnImage,
    NotARegularFile,
    TruncatedImage,
)
from dupwatch.images import decode_image, read_file, reduction_factor
from dupwatch.records import StatKey

pillow_heif.register_heif_opener()  # so the tests can write HEIC files with Pillow

ORIENTATION = 0x0112
HAS_AVIF = features.check("avif")


def photo(name: str) -> np.ndarray:
    return np.asarray(getattr(skimage.data, name)())


def save(path: Path, pixels: np.ndarray | Image.Image, fmt: str, **options: object) -> Path:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    image.save(path, format=fmt, **options)
    return path


def decode(path: Path, **options: object) -> images.DecodedImage:
    return decode_image(read_file(path), **options)  # type: ignore[arg-type]


def area(pixels: np.ndarray, working_size: int) -> np.ndarray:
    """The reference reduction: full-resolution pixels, area-averaged to the working size."""
    h, w = pixels.shape[:2]
    scale = working_size / max(h, w)
    if scale >= 1:
        return pixels
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def big_photo(name: str, width: int, height: int) -> np.ndarray:
    """A real photo enlarged (with area-preserving cubic interpolation) to test reduced decoding."""
    return cv2.resize(photo(name), (width, height), interpolation=cv2.INTER_CUBIC)


# --- formats ------------------------------------------------------------------------------

FORMATS = [
    ("jpeg", "JPEG", {"quality": 95}, 4.0),
    ("jpeg", "JPEG", {"quality": 95, "progressive": True}, 4.0),
    ("png", "PNG", {}, 0.0),
    ("webp", "WEBP", {"quality": 95}, 4.0),
    ("webp", "WEBP", {"lossless": True}, 0.0),
    ("gif", "GIF", {}, 12.0),  # 256-colour palette
    ("bmp", "BMP", {}, 0.0),
    ("tiff", "TIFF", {}, 0.0),
    ("tiff", "TIFF", {"compression": "tiff_lzw"}, 0.0),
    ("heif", "HEIF", {"quality": 95}, 4.0),
    pytest.param(
        "avif",
        "AVIF",
        {"quality": 95},
        4.0,
        marks=pytest.mark.skipif(not HAS_AVIF, reason="Pillow built without AVIF"),
    ),
]


@pytest.mark.parametrize(("name", "fmt", "options", "tolerance"), FORMATS)
def test_every_supported_format_decodes_to_rgb_at_the_working_size(
    tmp_path: Path, name: str, fmt: str, options: dict[str, object], tolerance: float
) -> None:
    pixels = photo("coffee")  # 600 x 400
    path = save(tmp_path / "photo.bin", pixels, fmt, **options)
    image = decode(path, working_size=300)
    assert image.format == name
    assert (image.width, image.height) == (600, 400)
    assert image.pixels.shape == (200, 300, 3)
    assert image.pixels.dtype == np.uint8
    assert image.pixels.flags.c_contiguous
    assert mean_diff(image.pixels, area(pixels, 300)) <= tolerance


def test_small_images_are_not_enlarged(tmp_path: Path) -> None:
    path = save(tmp_path / "cat.png", photo("chelsea"), "PNG")
    image = decode(path, working_size=512)
    assert image.pixels.shape == (300, 451, 3)
    assert np.array_equal(image.pixels, photo("chelsea"))


def test_format_comes_from_the_bytes_not_the_name(tmp_path: Path) -> None:
    png_named_jpg = save(tmp_path / "really_a_png.jpg", photo("rocket"), "PNG")
    assert decode(png_named_jpg).format == "png"
    for name, content in [("notes.jpg", "shopping list: milk, eggs\n"), ("car.bmp", "BMW: oil\n")]:
        text = tmp_path / name
        text.write_text(content * 20)
        with pytest.raises(NotAnImage):
            decode(text)


def test_data_after_the_png_end_chunk_is_ignored(tmp_path: Path) -> None:
    whole = save(tmp_path / "cat.png", photo("chelsea"), "PNG").read_bytes()
    longer = tmp_path / "longer.png"
    longer.write_bytes(whole + b"appended by some editor\n")
    assert np.array_equal(decode(longer).pixels, photo("chelsea"))


def test_grayscale_jpeg_decodes_to_three_equal_channels(tmp_path: Path) -> None:
    path = save(tmp_path / "grey.jpg", photo("camera"), "JPEG", quality=95)
    image = decode(path, working_size=256)
    assert image.pixels.shape == (256, 256, 3)
    assert np.array_equal(image.pixels[..., 0], image.pixels[..., 2])
    assert mean_diff(image.pixels[..., 0], area(photo("camera"), 256)) < 3


def test_cmyk_jpeg_decodes_to_rgb(tmp_path: Path) -> None:
    pixels = photo("astronaut")
    path = save(tmp_path / "print.jpg", Image.fromarray(pixels).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(path).mode == "CMYK"
    image = decode(path)
    assert image.pixels.shape == (512, 512, 3)
    assert mean_diff(image.pixels, pixels) < 6


def test_sixteen_bit_png_with_alpha_is_composited_on_the_fixed_background(tmp_path: Path) -> None:
    rgb16 = photo("chelsea").astype(np.uint16) * 257
    alpha = np.full(rgb16.shape[:2], 65535, dtype=np.uint16)
    alpha[:, :100] = 0  # a transparent band
    bgra16 = np.dstack([rgb16[..., ::-1], alpha])
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), bgra16)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    image = decode(path)
    assert np.all(image.pixels[:, :100] == images.BACKGROUND)
    assert mean_diff(image.pixels[:, 100:], photo("chelsea")[:, 100:]) < 1


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    grey16 = photo("camera").astype(np.uint16) * 257
    path = tmp_path / "deep_grey.png"
    assert cv2.imwrite(str(path), grey16)
    image = decode(path)
    assert mean_diff(image.pixels[..., 1], photo("camera")) < 1


def test_palette_png_with_transparency_uses_the_background(tmp_path: Path) -> None:
    palette = Image.fromarray(photo("coffee")).quantize(64)
    palette.info["transparency"] = 0
    path = save(tmp_path / "logo.png", palette, "PNG", transparency=0)
    image = decode(path, working_size=600)
    transparent = np.asarray(palette) == 0
    assert transparent.any()
    assert np.all(image.pixels[transparent] == images.BACKGROUND)


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    first, second = Image.fromarray(photo("coffee")), Image.fromarray(photo("rocket")[:400, :600])
    path = tmp_path / "anim.gif"
    first.save(path, save_all=True, append_images=[second], duration=100)
    image = decode(path, working_size=600)
    assert mean_diff(image.pixels, photo("coffee")) < 12
    assert mean_diff(image.pixels, np.asarray(second)) > 30


def test_reduced_jpeg_decode_agrees_with_a_full_decode(tmp_path: Path) -> None:
    pixels = big_photo("astronaut", 4000, 3000)
    path = save(tmp_path / "camera.jpg", pixels, "JPEG", quality=92)
    assert reduction_factor(4000, 3000, 512) == 4
    image = decode(path)
    assert (image.width, image.height) == (4000, 3000)
    full = np.asarray(Image.open(path).convert("RGB"))
    assert mean_diff(image.pixels, area(full, 512)) < 2.5


@pytest.mark.parametrize(
    ("width", "height", "tolerance"),
    # With odd sizes the last box is partial, which shifts the grid by up to half a reduced
    # pixel at the far edge (the JPEG DCT path does the same): still well under 1 %.
    [(2000, 1334, 1.0), (2001, 1335, 2.5)],
)
@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_box_reduced_decode_of_other_formats_agrees_with_area_resize(
    tmp_path: Path, fmt: str, width: int, height: int, tolerance: float
) -> None:
    pixels = big_photo("coffee", width, height)
    path = save(tmp_path / "big", pixels, fmt, quality=90, compress_level=1)
    assert reduction_factor(width, height, 512) == 2
    image = decode(path)
    full = np.asarray(Image.open(path).convert("RGB"))
    assert mean_diff(image.pixels, area(full, 512)) < tolerance


def test_data_after_the_jpeg_end_marker_is_ignored(tmp_path: Path) -> None:
    # Motion photos append a video after the JPEG; some cameras pad with zeros.
    whole = save(tmp_path / "shot.jpg", photo("chelsea"), "JPEG").read_bytes()
    reference = decode(tmp_path / "shot.jpg").pixels
    for tail in (b"\x00\x00\x00\x18ftypmp42" + os.urandom(50000), bytes(50000)):
        longer = tmp_path / "longer.jpg"
        longer.write_bytes(whole + tail)
        assert np.array_equal(decode(longer).pixels, reference)


@settings(max_examples=300, deadline=None)
@given(width=st.integers(1, 20000), height=st.integers(1, 20000), working=st.integers(16, 2048))
def test_reduction_keeps_the_short_side_and_working_size(
    width: int, height: int, working: int
) -> None:
    factor = reduction_factor(width, height, working)
    assert factor in (1, 2, 4, 8)

    def fits(f: int) -> bool:
        return (
            min(width, height) // f >= images.MIN_REDUCED_SHORT_SIDE
            and max(width, height) // f >= working
        )

    assert factor == 1 or fits(factor)
    assert factor == 8 or not fits(factor * 2)


# --- orientation --------------------------------------------------------------------------


def tagged(pixels: np.ndarray, orientation: int) -> Image.Image:
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[ORIENTATION] = orientation
    image.info["exif"] = exif.tobytes()
    return image


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(
    ("fmt", "tolerance"), [("JPEG", 2.0), ("PNG", 0.05), ("WEBP", 2.0), ("TIFF", 0.05)]
)
def test_orientation_tag_gives_the_pixels_of_a_physically_rotated_copy(
    tmp_path: Path, orientation: int, fmt: str, tolerance: float
) -> None:
    # Large enough that JPEGs take the reduced (DCT-scaled) path, which must honour the tag.
    pixels = big_photo("rocket", 1400, 960)
    image = tagged(pixels, orientation)
    fast = {"quality": 95, "compress_level": 1}
    by_tag = save(tmp_path / "by_tag", image, fmt, exif=image.info["exif"], **fast)
    upright = ImageOps.exif_transpose(image)  # Pillow's own reading of the tag
    physical = save(tmp_path / "physical", upright, fmt, **fast)

    decoded_tag, decoded_physical = decode(by_tag), decode(physical)
    assert (decoded_tag.width, decoded_tag.height) == upright.size
    assert (decoded_physical.width, decoded_physical.height) == upright.size
    assert mean_diff(decoded_tag.pixels, decoded_physical.pixels) <= tolerance
    assert decoded_tag.pixels.flags.c_contiguous


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(
    "fmt",
    [
        "HEIF",
        pytest.param(
            "AVIF", marks=pytest.mark.skipif(not HAS_AVIF, reason="Pillow built without AVIF")
        ),
    ],
)
def test_heif_and_avif_orientation_matches_a_physically_rotated_copy(
    tmp_path: Path, orientation: int, fmt: str
) -> None:
    # The encoders turn the EXIF tag into irot/imir boxes; pillow-heif applies those itself,
    # Pillow's AVIF reader hands them back as an EXIF orientation. Either way: one rotation.
    image = tagged(photo("rocket")[:240, :320], orientation)  # small: HEVC encoding is slow
    by_tag = save(tmp_path / "by_tag", image, fmt, exif=image.info["exif"], quality=95)
    upright = ImageOps.exif_transpose(image)
    physical = save(tmp_path / "physical", upright, fmt, quality=95)
    decoded_tag, decoded_physical = decode(by_tag), decode(physical)
    assert (decoded_tag.width, decoded_tag.height) == upright.size
    assert (decoded_physical.width, decoded_physical.height) == upright.size
    assert mean_diff(decoded_tag.pixels, decoded_physical.pixels) < 2


# --- metadata -----------------------------------------------------------------------------


def test_camera_metadata_is_read_from_exif(tmp_path: Path) -> None:
    image = Image.fromarray(photo("chelsea"))
    exif = image.getexif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "EOS 5D\x00"
    exif.get_ifd(0x8769).update({0x9003: "2024:05:01 10:11:12", 0x9291: "042"})
    path = save(tmp_path / "shot.jpg", image, "JPEG", exif=exif.tobytes())
    meta = decode(path).meta
    assert (meta.make, meta.model) == ("Canon", "EOS 5D")
    assert (meta.datetime_original, meta.subsec) == ("2024:05:01 10:11:12", "042")
    assert meta.exif_tag_count >= 4


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_corrupt_exif_never_fails_the_decode(tmp_path: Path) -> None:
    path = save(tmp_path / "shot.jpg", photo("chelsea"), "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    image = decode(path)
    assert image.meta.exif_tag_count == 0
    assert image.meta.make is None


# --- truncated, empty, bombs --------------------------------------------------------------

TRUNCATABLE = [
    ("JPEG", {}),
    ("JPEG", {"progressive": True}),
    ("PNG", {}),
    ("WEBP", {}),
    ("WEBP", {"lossless": True}),
    ("HEIF", {}),
    ("GIF", {}),
    ("BMP", {}),
    ("TIFF", {"compression": "tiff_lzw"}),
]


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
@pytest.mark.parametrize(("fmt", "options"), TRUNCATABLE)
def test_truncated_files_are_rejected_not_decoded(
    tmp_path: Path, fmt: str, options: dict[str, object], fraction: float
) -> None:
    whole = save(tmp_path / "whole", photo("astronaut"), fmt, **options).read_bytes()
    part = tmp_path / "part"
    part.write_bytes(whole[: int(len(whole) * fraction)])
    with pytest.raises(TruncatedImage):
        decode(part)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "HEIF", "GIF"])
def test_space_reserved_by_a_copy_in_progress_is_not_decoded(tmp_path: Path, fmt: str) -> None:
    # Samba and Explorer preallocate the full size; the unwritten tail reads as zeros.
    whole = save(tmp_path / "whole", photo("astronaut"), fmt).read_bytes()
    half = len(whole) // 2
    partial = tmp_path / "partial"
    partial.write_bytes(whole[:half] + bytes(len(whole) - half))
    with pytest.raises(TruncatedImage):
        decode(partial)
    untouched = tmp_path / "untouched"
    untouched.write_bytes(bytes(len(whole)))
    with pytest.raises(TruncatedImage):
        decode(untouched)


def test_zero_byte_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "new.jpg"
    path.touch()
    with pytest.raises(EmptyFile):
        read_file(path)


def png_declaring(width: int, height: int, payload: int = 2**20) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = os.urandom(payload)  # a megabyte of "compressed data", like a real bomb's size
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_declaring(tmp_path: Path, width: int, height: int) -> bytes:
    data = bytearray(save(tmp_path / "small.jpg", photo("chelsea"), "JPEG").read_bytes())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


@contextlib.contextmanager
def rss_growth_below(limit_bytes: int) -> Iterator[None]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    yield
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert after - before < limit_bytes


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("width", "height"), [(20000, 20000), (12000, 12000)])
def test_png_bomb_is_refused_from_its_header(tmp_path: Path, width: int, height: int) -> None:
    # 12,000 x 12,000 (144 MP) only earns a warning from Pillow; the megapixel limit refuses it.
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(width, height))
    with rss_growth_below(64 * 2**20), pytest.raises(ImageTooLarge):
        decode(path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("width", "height"), [(65500, 65500), (12000, 12000)])
def test_jpeg_bomb_is_refused_from_its_header(tmp_path: Path, width: int, height: int) -> None:
    path = tmp_path / "bomb.jpg"
    path.write_bytes(jpeg_declaring(tmp_path, width, height))
    with rss_growth_below(64 * 2**20), pytest.raises(ImageTooLarge):
        decode(path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_header_check_names_the_declared_size(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(12000, 12000))
    with pytest.raises(ImageTooLarge, match=r"12000 x 12000 = 144\.0 megapixels"):
        decode(path)


def test_megapixel_limit_is_configurable(tmp_path: Path) -> None:
    path = save(tmp_path / "coffee.png", photo("coffee"), "PNG")  # 0.24 MP
    with pytest.raises(ImageTooLarge):
        decode(path, max_megapixels=0.2)
    assert decode(path, max_megapixels=0.25).width == 600


# --- files that are not regular photos ----------------------------------------------------


def test_directory_is_not_a_regular_file(tmp_path: Path) -> None:
    folder = tmp_path / "album.jpg"
    folder.mkdir()
    with pytest.raises(NotARegularFile, match="directory"):
        read_file(folder)


def test_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(NotARegularFile, match="FIFO"):
        read_file(fifo)  # opening a FIFO with no writer would block forever
    assert time.monotonic() - started < 5


def test_socket_and_device_are_not_regular_files(tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(tmp_path / "s.jpg"))
        with pytest.raises(NotARegularFile, match="socket"):
            read_file(tmp_path / "s.jpg")
    finally:
        server.close()
    with pytest.raises(NotARegularFile, match="device"):
        read_file(Path("/dev/null"))


def test_symlink_to_a_photo_is_not_followed(tmp_path: Path) -> None:
    target = save(tmp_path / "real.jpg", photo("chelsea"), "JPEG")
    link = tmp_path / "link.jpg"
    link.symlink_to(target)
    with pytest.raises(NotARegularFile, match="symbolic link"):
        read_file(link)


def test_symlink_swapped_in_after_lstat_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = save(tmp_path / "secret.jpg", photo("chelsea"), "JPEG")
    path = save(tmp_path / "photo.jpg", photo("coffee"), "JPEG")
    real_open = os.open

    def swap_then_open(file: os.PathLike[str], flags: int, *args: int) -> int:
        path.unlink()
        path.symlink_to(target)
        return real_open(file, flags, *args)

    monkeypatch.setattr(os, "open", swap_then_open)
    with pytest.raises(NotARegularFile, match="symbolic link"):
        read_file(path)


def test_sparse_terabyte_file_is_refused_from_its_size(tmp_path: Path) -> None:
    path = tmp_path / "huge.jpg"
    with path.open("wb") as f:
        f.write(b"\xff\xd8\xff")
        f.truncate(2**40)
    started = time.monotonic()
    with pytest.raises(FileTooLarge):
        read_file(path)
    assert time.monotonic() - started < 1


def test_size_limit_is_configurable(tmp_path: Path) -> None:
    path = save(tmp_path / "cat.png", photo("chelsea"), "PNG")
    size = path.stat().st_size
    with pytest.raises(FileTooLarge):
        read_file(path, max_file_bytes=size - 1)
    assert len(read_file(path, max_file_bytes=size).data) == size


def test_file_name_that_is_not_utf8_is_read(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9 \xff.jpg")  # Latin-1 name from an old camera or Samba share
    path = save(tmp_path / name, photo("chelsea"), "JPEG")
    assert read_file(path).data == path.read_bytes()


def test_missing_file_has_vanished(tmp_path: Path) -> None:
    with pytest.raises(FileVanished):
        read_file(tmp_path / "gone.jpg")
    with pytest.raises(FileVanished):
        read_file(tmp_path / "gone" / "deeper.jpg")


def test_file_growing_while_read_is_reported_as_changing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(tmp_path / "upload.jpg", photo("chelsea"), "JPEG")
    real_read = os.read

    def read_while_appending(fd: int, n: int) -> bytes:
        with path.open("ab") as writer:
            writer.write(b"more")
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", read_while_appending)
    with pytest.raises(FileChanging):
        read_file(path)


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        path = save(tmp_path / "private.jpg", photo("chelsea"), "JPEG")
        path.chmod(0)
        with pytest.raises(FileUnreadable, match="permission"):
            read_file(path)
        return
    # root reads mode-000 files, so read from a child process that has dropped to "nobody".
    with tempfile.TemporaryDirectory() as folder:
        Path(folder).chmod(0o755)
        path = save(Path(folder) / "private.jpg", photo("chelsea"), "JPEG")
        path.chmod(0)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            outcome = "unexpected"
            try:
                os.setgid(65534)
                os.setuid(65534)
                os.lstat(path)  # the folder is searchable: only the open can fail
                read_file(path)
                outcome = "read"
            except FileRejected as exc:
                outcome = f"{type(exc).__name__}:{exc.detail}"
            except BaseException as exc:
                outcome = f"error:{exc!r}"
            finally:
                os.write(write_end, outcome.encode())
                os._exit(0)
        os.close(write_end)
        try:
            outcome = os.read(read_end, 1000).decode()
        finally:
            os.close(read_end)
            os.waitpid(pid, 0)
    assert outcome == "FileUnreadable:permission denied"


def test_bytes_hash_and_stat_describe_the_file_read(tmp_path: Path) -> None:
    path = save(tmp_path / "cat.jpg", photo("chelsea"), "JPEG")
    file = read_file(path)
    assert file.data == path.read_bytes()
    assert file.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert file.stat == StatKey.of(path)
    assert "data" not in repr(file)  # megabytes of bytes never end up in a log line


# --- nothing crashes ----------------------------------------------------------------------


def encoded_samples() -> list[bytes]:
    samples = []
    pixels = photo("chelsea")[:64, :96]
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF"):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        samples.append(buffer.getvalue())
    return samples


SAMPLES = encoded_samples()


def decode_bytes(data: bytes) -> None:
    file = images.FileBytes(
        Path("fuzz"), data, hashlib.sha256(data).hexdigest(), StatKey(0, 0, 0, 0, 0)
    )
    try:
        image = decode_image(file)
    except FileRejected:
        return
    assert image.pixels.ndim == 3 and image.pixels.shape[2] == 3


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=4096))
def test_random_bytes_only_ever_raise_file_rejected(data: bytes) -> None:
    decode_bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sample=st.sampled_from(SAMPLES),
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.floats(0.05, 1.0),
)
def test_damaged_real_images_only_ever_raise_file_rejected(
    sample: bytes, edits: list[tuple[float, int]], cut: float
) -> None:
    data = bytearray(sample[: max(1, int(len(sample) * cut))])
    for where, value in edits:
        data[min(len(data) - 1, int(where * len(data)))] = value
    decode_bytes(bytes(data))


def test_corrupt_data_in_a_known_format_is_corrupt(tmp_path: Path) -> None:
    whole = bytearray(save(tmp_path / "cat.png", photo("chelsea"), "PNG").read_bytes())
    idat = whole.index(b"IDAT")
    whole[idat + 8 : idat + 200] = os.urandom(192)
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(bytes(whole))
    with pytest.raises(CorruptImage):
        decode(damaged)
