"""Which image format a file's bytes are in, and whether its container is complete.

The format comes from the leading bytes, never from the file name, so a text file called
``.jpg`` is refused and a PNG called ``.jpg`` is decoded as a PNG. The completeness checks read
only container structure (chunk and box lengths, trailers), so they cost microseconds and catch
files that are still being written before any decoder sees them: some decoders (libwebp, libheif)
happily decode the zero bytes that a copy in progress has reserved but not yet written.
"""

from __future__ import annotations

import struct

# ISO base media (HEIF, AVIF) brands, from the "ftyp" box.
_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)
_AVIF_BRANDS = frozenset({b"avif", b"avis"})

# A copy in progress (Samba, Windows Explorer and some sync tools preallocate the full size)
# leaves the unwritten tail as zeros; entropy-coded data never holds a run this long.
ZERO_RUN = 256

_BMP_HEADER_SIZES = frozenset(struct.pack("<I", n) for n in (12, 40, 52, 56, 64, 108, 124))
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# Walking more chunks or boxes than this means a crafted file; the decoder judges it instead.
_MAX_WALK = 100_000

_TIFF_STRIP_PAIRS = ((273, 279), (324, 325))  # (Strip|Tile)Offsets, (Strip|Tile)ByteCounts
_TIFF_STRIP_TAGS = frozenset(tag for pair in _TIFF_STRIP_PAIRS for tag in pair)
_TIFF_TYPE_SIZES = {3: 2, 4: 4, 16: 8}  # SHORT, LONG, LONG8


def identify(data: bytes) -> str | None:
    """Return "jpeg", "png", "gif", "webp", "bmp", "tiff", "heif" or "avif", or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data[4:8] == b"ftyp":
        return _iso_brand(data)
    # "BM" alone is too weak (any text starting "BM..."): require a known DIB header size.
    if data[:2] == b"BM" and len(data) >= 26 and data[14:18] in _BMP_HEADER_SIZES:
        return "bmp"
    return None


def _iso_brand(data: bytes) -> str | None:
    size = struct.unpack_from(">I", data, 0)[0] if len(data) >= 16 else 0
    if size < 16:
        return None
    major = data[8:12]
    compatible = {data[i : i + 4] for i in range(16, min(size, len(data)) - 3, 4)}
    if major in _AVIF_BRANDS:
        return "avif"
    if major in _HEIF_BRANDS or compatible & (_HEIF_BRANDS - {b"mif1", b"msf1"}):
        return "heif"
    if compatible & _AVIF_BRANDS:
        return "avif"
    if compatible & _HEIF_BRANDS:
        return "heif"
    return None


def ends_in_zeros(data: bytes, run: int = ZERO_RUN) -> bool:
    """True if the last ``run`` bytes are all zero (space reserved but not yet written)."""
    return len(data) >= run and data[-run:] == bytes(run)


def starts_with_zeros(data: bytes, run: int = ZERO_RUN) -> bool:
    """True if the file so far holds only zeros at its start (nothing written yet)."""
    head = data[:run]
    return len(head) > 0 and head == bytes(len(head))


def incomplete(fmt: str, data: bytes) -> str | None:
    """Say why the container of ``data`` (already identified as ``fmt``) is cut short, or None.

    JPEG needs no check here: Pillow's decoder fails unless it reaches the end-of-image marker.
    """
    if fmt == "png":
        return _png_incomplete(data)
    if fmt == "webp":
        declared = struct.unpack_from("<I", data, 4)[0] + 8
        if declared > len(data):
            return f"RIFF header declares {declared} bytes, file has {len(data)}"
    elif fmt == "gif":
        if data[-1] != 0x3B:
            return "GIF trailer byte missing"
    elif fmt == "bmp":
        declared = struct.unpack_from("<I", data, 2)[0]
        if declared > len(data):
            return f"BMP header declares {declared} bytes, file has {len(data)}"
    elif fmt == "tiff":
        return _tiff_incomplete(data)
    elif fmt in ("heif", "avif"):
        problem = _boxes_incomplete(data)
        if problem:
            return problem
    if fmt in ("webp", "heif", "avif") and ends_in_zeros(data):
        return f"ends in {ZERO_RUN}+ zero bytes: a copy still in progress"
    return None


def _png_incomplete(data: bytes) -> str | None:
    if data.endswith(_IEND):
        return None
    pos, size = 8, len(data)
    for _ in range(_MAX_WALK):
        if pos + 8 > size:
            break
        length, kind = struct.unpack_from(">I4s", data, pos)
        if not kind.isalpha():
            return None  # damaged or zero-filled: the decoder and its caller judge which
        end = pos + 12 + length  # length, type, data, CRC
        if end > size:
            return f"PNG chunk {kind!r} ends past the end of the file"
        if kind == b"IEND":
            return None
        pos = end
    else:
        return None
    return "PNG has no IEND chunk"


def _boxes_incomplete(data: bytes) -> str | None:
    pos, size = 0, len(data)
    for _ in range(_MAX_WALK):
        if pos + 8 > size:
            break
        box_size, kind = struct.unpack_from(">I4s", data, pos)
        if box_size == 1:
            if pos + 16 > size:
                return "box header cut short"
            box_size = struct.unpack_from(">Q", data, pos + 8)[0]
        elif box_size == 0:  # "extends to the end of the file"
            return None
        if box_size < 8:
            return None  # malformed rather than short: the decoder reports it
        if pos + box_size > size:
            return f"box {kind!r} ends past the end of the file"
        pos += box_size
    else:
        return None
    return "box header cut short" if pos != size else None


def _tiff_incomplete(data: bytes) -> str | None:
    if data[2:4] in (b"+\x00", b"\x00+"):
        return None  # BigTIFF: left to the decoder
    order = "<" if data[:2] == b"II" else ">"
    size = len(data)
    if size < 8:
        return "TIFF header cut short"
    ifd = struct.unpack_from(order + "I", data, 4)[0]
    if ifd + 2 > size:
        return "first TIFF directory lies past the end of the file"
    count = struct.unpack_from(order + "H", data, ifd)[0]
    if ifd + 2 + 12 * count > size:
        return "first TIFF directory cut short"
    entries: dict[int, list[int]] = {}
    for i in range(count):
        tag, kind, n, value = struct.unpack_from(order + "HHI4s", data, ifd + 2 + 12 * i)
        width = _TIFF_TYPE_SIZES.get(kind)
        if tag not in _TIFF_STRIP_TAGS or width is None or n == 0:
            continue
        if n * width <= 4:
            raw = value[: n * width]
        else:
            offset = struct.unpack(order + "I", value)[0]
            if offset + n * width > size:
                return f"TIFF tag {tag} values lie past the end of the file"
            raw = data[offset : offset + n * width]
        code = {2: "H", 4: "I", 8: "Q"}[width]
        entries[tag] = list(struct.unpack(f"{order}{n}{code}", raw))
    for offsets_tag, counts_tag in _TIFF_STRIP_PAIRS:
        offsets, counts = entries.get(offsets_tag), entries.get(counts_tag)
        # Mismatched lengths are malformed rather than short; the decoder reports those.
        pairs = zip(offsets or (), counts or (), strict=False)
        if max((o + c for o, c in pairs), default=0) > size:
            return "TIFF image data lies past the end of the file"
    return None
