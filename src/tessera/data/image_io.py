"""The one image decoder used for training, evaluation and serving.

Every path that turns user bytes into pixels goes through :func:`load_image`: a decoder
allowlist, a pixel cap checked from the header before any decoding, truncated and corrupt
files turned into a typed error, and the odd modes repaired (EXIF rotation, first frame of
animations, 16-bit rescaling, CMYK, alpha composited on white).
"""

from __future__ import annotations

import io
import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps

from tessera.config.data import DataConfig
from tessera.errors import DataError

__all__ = [
    "BadSampleError",
    "ImageDecodeError",
    "load_image",
    "load_image_with_repairs",
    "read_file_capped",
    "sniff_format",
]

_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

# Leading bytes of image formats, to tell "a real image in a refused format" from garbage.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WEBP"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"8BPS", 0, "PSD"),
    (b"SIMPLE  =", 0, "FITS"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"icns", 0, "ICNS"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG2000"),
    (b"ftypavif", 4, "AVIF"),
    (b"ftypheic", 4, "HEIF"),
    (b"qoif", 0, "QOI"),
)


class BadSampleError(DataError):
    """One example cannot be used; ``reason`` is a short tag that reports count by.

    Sources catch it, count it under ``reason`` and skip the example; serving code turns it
    into a user-facing error.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ImageDecodeError(BadSampleError):
    """An image could not be decoded. Reasons: ``corrupt_image``, ``truncated_image``,
    ``decompression_bomb``, ``unsupported_format``, ``too_small``, ``image_missing`` (no such
    file, or a broken link), ``unreadable_path`` (permissions, a directory, a FIFO or device
    file, ...), ``file_too_large`` (over ``DataConfig.max_image_bytes``), ``zero_byte``.
    """


def sniff_format(head: bytes) -> str | None:
    """The image format named by a file's first bytes (>= 16 of them), or None if unknown."""
    for magic, offset, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            if name == "WEBP" and head[:4] != b"RIFF":
                continue
            return name
    return None


def load_image(
    src: str | os.PathLike[str] | bytes, config: DataConfig | None = None
) -> Image.Image:
    """Decode an image file or byte string into an 8-bit RGB ``PIL.Image``.

    Only the decoders in ``config.image_formats`` are tried; images with more than
    ``config.max_image_pixels`` pixels (width * height, read from the header) are refused
    before decoding; images whose shorter side is below ``config.min_image_side`` pixels are
    refused. Raises :class:`ImageDecodeError` (a :class:`~tessera.errors.DataError`) whose
    ``reason`` says why.
    """
    return load_image_with_repairs(src, config)[0]


def load_image_with_repairs(
    src: str | os.PathLike[str] | bytes, config: DataConfig | None = None
) -> tuple[Image.Image, tuple[str, ...]]:
    """Like :func:`load_image`, also returning the repairs applied, in order.

    Repair tags: ``exif_rotated``, ``first_frame`` (animated image), ``16bit_rescaled``,
    ``float_rescaled``, ``cmyk_converted``, ``alpha_composited`` (on white).
    """
    config = config or DataConfig()
    name = "<bytes>" if isinstance(src, bytes | bytearray) else os.fspath(src)
    data = _read_bytes(src, name, config)
    if not data:
        raise ImageDecodeError("zero_byte", f"empty image file: {name}")
    with warnings.catch_warnings():
        # Pillow warns above its own MAX_IMAGE_PIXELS and raises above twice that. Make the
        # warning an error unless our own (authoritative) cap is set higher than Pillow's.
        action = "error" if config.max_image_pixels <= (Image.MAX_IMAGE_PIXELS or 0) else "ignore"
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        try:
            return _decode(data, name, config)
        except BadSampleError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageDecodeError("decompression_bomb", f"{name}: {_one_line(e)}") from None
        except Image.UnidentifiedImageError:
            found = sniff_format(data[:32])
            if found is not None and found not in {f.upper() for f in config.image_formats}:
                raise ImageDecodeError(
                    "unsupported_format",
                    f"{name}: {found} images are not accepted (allowed: "
                    f"{', '.join(config.image_formats)})",
                ) from None
            raise ImageDecodeError("corrupt_image", f"{name}: not a readable image") from None
        except MemoryError:
            raise ImageDecodeError(
                "decompression_bomb", f"{name}: out of memory decoding"
            ) from None
        except Exception as e:  # Pillow plugins raise OSError, SyntaxError, ValueError, ...
            msg = _one_line(e)
            reason = "truncated_image" if "truncated" in msg.lower() else "corrupt_image"
            raise ImageDecodeError(reason, f"{name}: {msg}") from None


def _read_bytes(src: str | os.PathLike[str] | bytes, name: str, config: DataConfig) -> bytes:
    if isinstance(src, bytes | bytearray):
        if len(src) > config.max_image_bytes:
            raise ImageDecodeError(
                "file_too_large",
                f"{name}: {len(src)} bytes exceeds max_image_bytes {config.max_image_bytes}",
            )
        return bytes(src)
    try:
        return read_file_capped(src, config.max_image_bytes, missing="image_missing")
    except BadSampleError as e:
        raise ImageDecodeError(e.reason, str(e)) from None


def read_file_capped(
    path: str | os.PathLike[str],
    max_bytes: int,
    *,
    missing: str,
    unreadable: str = "unreadable_path",
) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` bytes, never blocking or reading
    without end.

    The path is ``stat``-ed (following links) before it is opened, so a FIFO, a socket or a
    device (``/dev/zero``, a link to one) is refused without being opened: reason
    ``unreadable_path``. A larger file is ``file_too_large`` (checked from its size, and again
    while reading, as a file can grow). A missing file (or a broken link) raises with reason
    ``missing``; another ``OSError`` (permissions, ...) with reason ``unreadable``. All
    raise :class:`BadSampleError`.
    """
    name = os.fspath(path)
    try:
        _check_regular(os.stat(name), name, max_bytes)
        # O_NONBLOCK: if the path was swapped for a FIFO after the stat, open() still returns
        # at once (and fstat below refuses it); it changes nothing for regular files.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        with open(os.open(name, flags), "rb") as f:  # buffered: read() loops on short reads
            _check_regular(os.fstat(f.fileno()), name, max_bytes)
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise BadSampleError(missing, f"file not found: {name}") from None
    except OSError as e:
        raise BadSampleError(
            unreadable, f"cannot read {name}: {e.strerror or type(e).__name__}"
        ) from None
    if len(data) > max_bytes:  # it grew after the stat
        raise BadSampleError("file_too_large", f"{name}: more than {max_bytes} bytes")
    return data


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_regular(st: os.stat_result, name: str, max_bytes: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _FILE_KINDS if test(st.st_mode)), "not a regular file")
        raise BadSampleError("unreadable_path", f"{name}: {kind}, not a regular file")
    if st.st_size > max_bytes:
        raise BadSampleError(
            "file_too_large", f"{name}: {st.st_size} bytes exceeds the cap of {max_bytes}"
        )


def _decode(data: bytes, name: str, config: DataConfig) -> tuple[Image.Image, tuple[str, ...]]:
    repairs: list[str] = []
    im = Image.open(io.BytesIO(data), formats=list(config.image_formats))
    w, h = im.size  # from the header; nothing decoded yet
    if w * h > config.max_image_pixels:
        raise ImageDecodeError(
            "decompression_bomb",
            f"{name}: {w}x{h} = {w * h} pixels exceeds the cap of {config.max_image_pixels}",
        )
    _check_min_side(w, h, name, config)
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
        repairs.append("first_frame")
    im.load()  # truncated data raises OSError here, not at open()
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block must not cost an otherwise good image
        orientation = 1
    if orientation in range(2, 9):
        im = ImageOps.exif_transpose(im)
        repairs.append("exif_rotated")
    im = _to_rgb(im, repairs)
    _check_min_side(*im.size, name, config)
    return im, tuple(repairs)


def _check_min_side(w: int, h: int, name: str, config: DataConfig) -> None:
    if min(w, h) < config.min_image_side:
        raise ImageDecodeError(
            "too_small", f"{name}: {w}x{h} is below the minimum side of {config.min_image_side}"
        )


def _to_rgb(im: Image.Image, repairs: list[str]) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (rescaling deep modes, compositing alpha on white)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _SIXTEEN_BIT_MODES:
        repairs.append("16bit_rescaled")
        return Image.fromarray(_rescale_16bit(np.asarray(im))).convert("RGB")
    if mode == "F":
        repairs.append("float_rescaled")
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0)
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0  # [0, 1] floats vs. 0..255 floats
        return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "CMYK":
        repairs.append("cmyk_converted")
        return im.convert("RGB")
    if (mode == "P" and "transparency" in im.info) or mode == "PA":
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        repairs.append("alpha_composited")
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, P, YCbCr, LAB, HSV


def _rescale_16bit(a: np.ndarray) -> np.ndarray:
    """Map 16-bit samples 0..65535 linearly onto 0..255 (Pillow's convert would clip at 255)."""
    a = np.clip(a.astype(np.float64), 0, 65535)
    return np.rint(a * (255.0 / 65535.0)).astype(np.uint8)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
