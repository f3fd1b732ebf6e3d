"""Builders of tiny on-disk data sets for the data tests (all generated, nothing downloaded)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import signal
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    f = io.BytesIO()
    img.save(f, fmt, **kw)
    return f.getvalue()


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def png_bomb(width: int, height: int) -> bytes:
    """A valid tiny PNG whose IHDR (with a correct CRC) declares ``width`` x ``height``."""
    data = bytearray(encode(Image.new("1", (8, 8)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def ramp16() -> np.ndarray:
    """A 64 x 64 16-bit ramp covering 0..65535."""
    return np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)


def exif_rotated_jpeg() -> bytes:
    """40 x 20 stored image, red left half, with EXIF orientation 6 (rotate 90 CW to show):
    displayed it is 20 x 40 with red on top."""
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def write_pair(root: Path, name: str, image: bytes | None, caption: bytes | str | None) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if image is not None:
        path.write_bytes(image)
    if caption is not None:
        data = caption.encode() if isinstance(caption, str) else caption
        path.with_suffix(".txt").write_bytes(data)


def build_bad_folder(root: Path) -> dict:
    """One folder with every kind of bad / odd example plus good ones.

    Returns the expected ``skipped``, ``filtered`` and ``repaired`` counts and the keys that
    must come through.
    """
    root.mkdir(parents=True, exist_ok=True)
    good_jpg = encode(noise_image(48, 40, 1), "JPEG", quality=90)
    # good, plain
    write_pair(root, "good_a.jpg", good_jpg, "a noisy picture\n\n  another caption  \n")
    write_pair(root, "good_b.png", encode(noise_image(32, 32, 2), "PNG"), "a png")
    write_pair(root, "good_c.webp", encode(noise_image(32, 48, 3), "WEBP", lossless=True), "a webp")
    write_pair(root, "sub/deeper/nested.png", encode(noise_image(16, 16, 4), "PNG"), "nested")
    write_pair(root, "bmp.bmp", encode(noise_image(16, 16, 5), "BMP"), "a bitmap")
    # repairable
    write_pair(
        root,
        "cmyk.jpg",
        encode(Image.new("RGB", (32, 32), RED).convert("CMYK"), "JPEG", quality=95),
        "cmyk",
    )
    write_pair(root, "gray.png", encode(Image.new("L", (16, 16), 77), "PNG"), "gray")
    write_pair(root, "mono.png", encode(Image.new("1", (16, 16), 1), "PNG"), "one bit")
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([*RED, *BLUE] + [0, 0, 0] * 254)
    write_pair(root, "palette.png", encode(pal, "PNG"), "palette")
    pal_t = pal.copy()
    pal_t.paste(0, (0, 0, 8, 16))  # left half: index 0 = transparent
    write_pair(root, "palette_t.png", encode(pal_t, "PNG", transparency=0), "palette transparent")
    write_pair(root, "la.png", encode(Image.new("LA", (16, 16), (0, 128)), "PNG"), "gray alpha")
    rgba = Image.new("RGBA", (16, 16), (*RED, 0))
    rgba.paste((*BLUE, 255), (8, 0, 16, 16))
    write_pair(root, "rgba.png", encode(rgba, "PNG"), "rgba")
    write_pair(root, "deep16.png", encode(Image.fromarray(ramp16()), "PNG"), "sixteen bit ramp")
    write_pair(root, "exif.jpg", exif_rotated_jpeg(), "rotated")
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, BLUE)]
    write_pair(
        root, "anim.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), "gif"
    )
    write_pair(
        root,
        "long_and_short.png",
        encode(noise_image(16, 16, 6), "PNG"),
        "x" * 300 + "\nok caption",
    )
    # bad image
    write_pair(root, "corrupt.jpg", b"this is not an image at all" * 10, "corrupt")
    write_pair(root, "truncated.jpg", good_jpg[: len(good_jpg) * 2 // 3], "truncated")
    write_pair(root, "zero.png", b"", "zero bytes")
    write_pair(root, "bomb.png", png_bomb(20_000, 10_000), "200 M pixels")
    write_pair(root, "bomb_warn.png", png_bomb(10_000, 10_000), "100 M pixels")
    write_pair(root, "tiff.png", encode(noise_image(16, 16, 7), "TIFF"), "a tiff in disguise")
    write_pair(root, "tiny.png", encode(noise_image(4, 4, 8), "PNG"), "too small")
    (root / "broken_link.png").symlink_to(root / "does_not_exist.png")
    (root / "broken_link.txt").write_text("link")
    # bad caption
    write_pair(root, "no_caption.png", encode(noise_image(16, 16, 9), "PNG"), None)
    write_pair(root, "empty_caption.png", encode(noise_image(16, 16, 10), "PNG"), b"")
    write_pair(root, "space_caption.png", encode(noise_image(16, 16, 11), "PNG"), b"  \n\t \n")
    write_pair(
        root, "latin1_caption.png", encode(noise_image(16, 16, 12), "PNG"), "café".encode("latin-1")
    )
    # filtered
    write_pair(root, "wide.png", encode(noise_image(100, 20, 13), "PNG"), "very wide")
    write_pair(root, "only_long.png", encode(noise_image(16, 16, 14), "PNG"), "y" * 300)
    # not images: ignored
    (root / "notes.md").write_text("# not data")
    (root / "orphan.txt").write_text("caption without image")
    skipped = {
        "corrupt_image": 1,
        "truncated_image": 1,
        "zero_byte": 1,
        "decompression_bomb": 2,
        "unsupported_format": 1,
        "too_small": 1,
        "image_missing": 1,
        "caption_missing": 1,
        "caption_empty": 2,
        "caption_not_utf8": 1,
    }
    if os.geteuid() != 0:  # root reads through chmod 000, so only check it as a normal user
        write_pair(root, "locked.png", encode(noise_image(16, 16, 15), "PNG"), "locked")
        (root / "locked.png").chmod(0)
        skipped["unreadable_path"] = 1
    good = [
        "good_a.jpg", "good_b.png", "good_c.webp", "sub/deeper/nested.png", "bmp.bmp",
        "cmyk.jpg", "gray.png", "mono.png", "palette.png", "palette_t.png", "la.png",
        "rgba.png", "deep16.png", "exif.jpg", "anim.gif", "long_and_short.png",
    ]  # fmt: skip
    return {
        "skipped": skipped,
        "filtered": {"aspect_ratio": 1, "caption_length": 1},
        "repaired": {
            "cmyk_converted": 1,
            "alpha_composited": 3,  # palette_t, la, rgba
            "16bit_rescaled": 1,
            "exif_rotated": 1,
            "first_frame": 1,
            "caption_dropped_too_long": 2,  # long_and_short, only_long
        },
        "good": sorted(good),
    }


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return path


def shard_members(shard: int, count: int, size: int = 16) -> list[tuple[str, bytes]]:
    """img2dataset-style members: ``{shard:05d}{i:04d}.jpg/.txt/.json``."""
    out = []
    for i in range(count):
        key = f"{shard:05d}{i:04d}"
        img = encode(noise_image(size, size, shard * 1000 + i), "JPEG", quality=90)
        meta = {"key": key, "caption": f"caption {key}", "status": "success"}
        out += [
            (f"{key}.jpg", img),
            (f"{key}.txt", f"caption {key}".encode()),
            (f"{key}.json", json.dumps(meta).encode()),
        ]
    return out


def build_shards(root: Path, counts: list[int]) -> list[Path]:
    """Shards ``00000.tar`` ... with ``counts[i]`` samples each."""
    return [write_tar(root / f"{s:05d}.tar", shard_members(s, c)) for s, c in enumerate(counts)]


def build_img2dataset(root: Path, counts: list[int], failed: list[tuple[int, int]]) -> list[Path]:
    """An img2dataset output folder: tars, ``_stats.json`` and (with pyarrow) ``.parquet``.

    ``failed[i] = (failed_to_download, failed_to_resize)`` for shard i.
    """
    shards = build_shards(root, counts)
    for s, (count, (fd, fr)) in enumerate(zip(counts, failed)):
        stats = {
            "count": count + fd + fr,
            "successes": count,
            "failed_to_download": fd,
            "failed_to_resize": fr,
            "duration": 0.5,
            "status_dict": {"success": count, "failed_to_download": fd},
        }
        (root / f"{s:05d}_stats.json").write_text(json.dumps(stats))
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            continue
        status = ["success"] * count + ["failed_to_download"] * fd + ["failed_to_resize"] * fr
        pq.write_table(pa.table({"status": status}), root / f"{s:05d}.parquet")
    return shards


class PickleBomb:
    """Unpickling this creates ``marker`` (it must never happen)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps(PickleBomb(marker))


def build_coco(root: Path, split: str = "val2017", n: int = 4, missing: int = 1) -> Path:
    """``root/annotations/captions_{split}.json`` + ``root/{split}/``; the last ``missing``
    images are listed but not on disk; image 2 has no captions; others have 5."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(1, n + missing + 1):
        name = f"{i:012d}.jpg"
        images.append({"id": i, "file_name": name, "width": 24, "height": 24})
        if i <= n:
            (root / split / name).write_bytes(encode(noise_image(24, 24, 100 + i), "JPEG"))
        if i == 2:
            continue
        for j in range(5):
            anns.append(
                {"id": i * 10 + (4 - j), "image_id": i, "caption": f" image {i} caption {4 - j} "}
            )
    data = {"info": {}, "images": images[::-1], "annotations": anns}
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(data))
    return root


CUB_CLASSES = ("001.Black_footed_Albatross", "002.Laysan_Albatross")  # test / train class


def build_cub(root: Path, text_inside: bool = False) -> Path:
    """A 6-image CUB-200-2011 tree with ``text_c10`` next to ``CUB_200_2011`` (or inside it).

    Two real CUB classes: ids 1-3 in ``CUB_CLASSES[0]`` (a test class of the class-disjoint
    split), ids 4-6 in ``CUB_CLASSES[1]`` (a train class); ``train_test_split.txt`` puts ids
    1 and 4 in CUB's own test set."""
    cub = root / "CUB_200_2011"
    text = (cub if text_inside else root) / "text_c10"
    rows, split = [], []
    for i in range(1, 7):
        cls = CUB_CLASSES[(i - 1) // 3]
        rel = f"{cls}/Bird_{i:04d}.jpg"
        rows.append(f"{i} {rel}")
        split.append(f"{i} {0 if i in (1, 4) else 1}")
        (cub / "images" / cls).mkdir(parents=True, exist_ok=True)
        (cub / "images" / rel).write_bytes(encode(noise_image(20, 20, 200 + i), "JPEG"))
        (text / cls).mkdir(parents=True, exist_ok=True)
        lines = [f"bird {i} description {k}" for k in range(10)]
        (text / cls / f"Bird_{i:04d}.txt").write_text("\n".join(lines) + "\n")
    (cub / "images.txt").write_text("\n".join(rows) + "\n")
    (cub / "train_test_split.txt").write_text("\n".join(split) + "\n")
    return root


class Hang(BaseException):
    """Raised by :func:`time_limit`; a BaseException, so no ``except Exception`` (or
    ``except OSError``, which catches the builtin TimeoutError) in the code under test can
    swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Fail with :class:`Hang` instead of hanging (SIGALRM; main thread only). A blocking
    ``open()`` of a FIFO is interrupted too: the handler's exception propagates (PEP 475).
    The alarm repeats every second until the block ends, in case one is swallowed."""

    def expire(signum, frame):
        raise Hang(f"still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def build_special_files(root: Path) -> dict:
    """A folder with a good pair plus paths that are not regular files, named like data:
    a FIFO image, an image that links to ``/dev/zero``, and good images whose caption is a
    FIFO or a link to ``/dev/zero``. Returns the expected skip counts and good keys."""
    root.mkdir(parents=True, exist_ok=True)
    png = encode(noise_image(16, 16, 1), "PNG")
    write_pair(root, "good.png", png, "a good one")
    os.mkfifo(root / "pipe.jpg")
    (root / "pipe.txt").write_text("caption of a fifo")
    (root / "zero.png").symlink_to("/dev/zero")
    (root / "zero.txt").write_text("caption of /dev/zero")
    write_pair(root, "fifo_caption.png", png, None)
    os.mkfifo(root / "fifo_caption.txt")
    write_pair(root, "zero_caption.png", png, None)
    (root / "zero_caption.txt").symlink_to("/dev/zero")
    return {"skipped": {"unreadable_path": 4}, "good": ["good.png"]}
