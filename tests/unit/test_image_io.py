"""load_image: one decoder, typed errors by reason, odd modes repaired with correct pixels."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datafixtures import (
    BLUE,
    RED,
    encode,
    exif_rotated_jpeg,
    noise_image,
    png_bomb,
    ramp16,
    time_limit,
)
from tessera.config import DataConfig
from tessera.data.image_io import (
    ImageDecodeError,
    load_image,
    load_image_with_repairs,
    sniff_format,
)
from tessera.errors import ConfigError, DataError

CFG = DataConfig()


def reason_of(src, config=CFG):
    with pytest.raises(ImageDecodeError) as e:
        load_image(src, config)
    assert isinstance(e.value, DataError)
    assert "\n" not in str(e.value)
    return e.value.reason


def test_plain_rgb_roundtrip_is_exact():
    img = noise_image(24, 16, 0)
    out, repairs = load_image_with_repairs(encode(img, "PNG"), CFG)
    assert out.mode == "RGB" and out.size == (24, 16) and repairs == ()
    assert np.array_equal(np.asarray(out), np.asarray(img))


def test_path_and_bytes_give_the_same_image(tmp_path):
    data = encode(noise_image(16, 16, 1), "WEBP", lossless=True)
    (tmp_path / "x.webp").write_bytes(data)
    assert np.array_equal(np.asarray(load_image(tmp_path / "x.webp")), np.asarray(load_image(data)))
    assert np.array_equal(
        np.asarray(load_image(str(tmp_path / "x.webp"))), np.asarray(load_image(data))
    )


def test_16bit_is_rescaled_not_clipped():
    ramp = ramp16()
    out, repairs = load_image_with_repairs(encode(Image.fromarray(ramp), "PNG"), CFG)
    assert repairs == ("16bit_rescaled",)
    a = np.asarray(out)
    assert np.array_equal(a[..., 0], a[..., 2])
    expected = np.rint(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(a[..., 0], expected)
    assert (a[..., 0] == 255).mean() < 0.01  # Pillow's convert("RGB") leaves ~99.6 % white
    assert a.min() == 0 and a.max() == 255


def test_32bit_integer_mode_is_rescaled_as_16bit():
    from tessera.data.image_io import _to_rgb

    img = Image.fromarray(np.array([[0, 257 * 100, 65535, 70000, -5]], dtype=np.int32), "I")
    repairs = []
    out = np.asarray(_to_rgb(img, repairs))
    assert repairs == ["16bit_rescaled"]
    assert out[0, :, 0].tolist() == [0, 100, 255, 255, 0]


def test_cmyk_jpeg_colours_are_right():
    data = encode(Image.new("RGB", (16, 16), RED).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(__import__("io").BytesIO(data)).mode == "CMYK"
    out, repairs = load_image_with_repairs(data, CFG)
    assert repairs == ("cmyk_converted",)
    assert np.abs(np.asarray(out).astype(int) - RED).max() <= 3


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (16, 16), (*RED, 0))
    img.paste((*BLUE, 255), (8, 0, 16, 16))
    img.paste((0, 0, 0, 128), (0, 8, 8, 16))
    out, repairs = load_image_with_repairs(encode(img, "PNG"), CFG)
    a = np.asarray(out)
    assert repairs == ("alpha_composited",)
    assert tuple(a[0, 0]) == (255, 255, 255)  # transparent red -> white, not red or black
    assert tuple(a[0, 15]) == BLUE
    assert np.abs(a[12, 2].astype(int) - 127).max() <= 1  # half black over white


@pytest.mark.parametrize(
    ("img", "kw", "expect"),
    [
        (Image.new("LA", (16, 16), (0, 128)), {}, (127, 127, 127)),
        (Image.new("PA", (16, 16), (0, 0)), {}, (255, 255, 255)),
    ],
    ids=["LA", "PA"],
)
def test_other_alpha_modes_on_white(img, kw, expect):
    if img.mode == "PA":
        img.putpalette([*RED] * 256)
        img = img.convert("RGBA")  # PNG stores PA as RGBA; test the mode directly below too
    out, repairs = load_image_with_repairs(encode(img, "PNG", **kw), CFG)
    assert repairs == ("alpha_composited",)
    assert np.abs(np.asarray(out)[0, 0].astype(int) - expect).max() <= 1


def test_pa_mode_in_memory_is_composited():
    from tessera.data.image_io import _to_rgb

    img = Image.new("PA", (4, 4), (0, 0))
    img.putpalette([*RED] * 256)
    repairs = []
    out = _to_rgb(img, repairs)
    assert repairs == ["alpha_composited"] and tuple(np.asarray(out)[0, 0]) == (255, 255, 255)


def test_palette_with_transparency_on_white_and_without_as_is():
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([*RED, *BLUE] + [0, 0, 0] * 254)
    plain, r1 = load_image_with_repairs(encode(pal, "PNG"), CFG)
    assert r1 == () and tuple(np.asarray(plain)[0, 0]) == BLUE
    pal.paste(0, (0, 0, 8, 16))
    out, r2 = load_image_with_repairs(encode(pal, "PNG", transparency=0), CFG)
    a = np.asarray(out)
    assert r2 == ("alpha_composited",)
    assert tuple(a[0, 0]) == (255, 255, 255) and tuple(a[0, 15]) == BLUE


@pytest.mark.parametrize("mode", ["L", "1"])
def test_gray_and_bilevel_become_rgb(mode):
    img = Image.new(mode, (16, 16), 1 if mode == "1" else 77)
    out, repairs = load_image_with_repairs(encode(img, "PNG"), CFG)
    assert out.mode == "RGB" and repairs == ()
    assert tuple(np.asarray(out)[0, 0]) == ((255,) * 3 if mode == "1" else (77,) * 3)


def test_exif_orientation_applied():
    out, repairs = load_image_with_repairs(exif_rotated_jpeg(), CFG)
    assert repairs == ("exif_rotated",)
    assert out.size == (20, 40)
    a = np.asarray(out).astype(int)
    assert np.abs(a[5, 10] - RED).max() < 20 and a[35, 10].max() < 20  # red on top


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(__import__("io").BytesIO(data)).n_frames == 2
    out, repairs = load_image_with_repairs(data, CFG)
    assert repairs == ("first_frame",) and tuple(np.asarray(out)[0, 0]) == RED


def test_truncated_jpeg_and_png():
    for fmt in ("JPEG", "PNG"):
        data = encode(noise_image(64, 64, 2), fmt)
        assert reason_of(data[: len(data) * 2 // 3]) == "truncated_image"


def test_garbage_is_corrupt():
    assert reason_of(b"GIF89a but not really" * 4) in {"corrupt_image", "truncated_image"}
    assert reason_of(b"\x00\x01garbage" * 20) == "corrupt_image"


def test_zero_byte_missing_and_unreadable(tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    assert reason_of(tmp_path / "z.png") == "zero_byte"
    assert reason_of(b"") == "zero_byte"
    assert reason_of(tmp_path / "nope.png") == "image_missing"
    (tmp_path / "dir.png").mkdir()
    assert reason_of(tmp_path / "dir.png") == "unreadable_path"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_permission_denied_is_unreadable(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(encode(noise_image(16, 16), "PNG"))
    p.chmod(0)
    assert reason_of(p) == "unreadable_path"


def test_decompression_bomb_error_and_warning_are_refused_before_decoding():
    assert reason_of(png_bomb(20_000, 10_000)) == "decompression_bomb"  # 200 M: Pillow's error
    assert reason_of(png_bomb(10_000, 10_000)) == "decompression_bomb"  # 100 M: Pillow's warning


def test_own_pixel_cap_from_config():
    data = encode(noise_image(64, 64), "PNG")
    assert reason_of(data, DataConfig(max_image_pixels=64 * 63)) == "decompression_bomb"
    assert load_image(data, DataConfig(max_image_pixels=64 * 64)).size == (64, 64)


def test_a_cap_above_pillows_is_authoritative():
    # 100 M pixels passes Pillow's warning threshold, so it is allowed when we allow it (and
    # refused later only for being an unloadable fake, not as a bomb).
    cfg = DataConfig(max_image_pixels=150_000_000)
    assert reason_of(png_bomb(10_000, 10_000), cfg) != "decompression_bomb"


def test_format_allowlist():
    tiff = encode(noise_image(16, 16), "TIFF")
    assert reason_of(tiff) == "unsupported_format"
    assert reason_of(encode(noise_image(16, 16), "PNG"), DataConfig(image_formats=("JPEG",))) == (
        "unsupported_format"
    )
    assert load_image(tiff, DataConfig(image_formats=("TIFF",))).size == (16, 16)


def test_min_side():
    assert reason_of(encode(noise_image(7, 40), "PNG")) == "too_small"
    assert load_image(encode(noise_image(8, 40), "PNG")).size == (8, 40)


def test_sniff_format():
    assert sniff_format(encode(noise_image(8, 8), "PNG")[:32]) == "PNG"
    assert sniff_format(encode(noise_image(8, 8), "WEBP")[:32]) == "WEBP"
    assert sniff_format(encode(noise_image(8, 8), "TIFF")[:32]) == "TIFF"
    assert sniff_format(b"hello world, nothing here") is None


def test_fifo_is_refused_without_blocking(tmp_path):
    """open() of a FIFO blocks until a writer comes; it must never be opened."""
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "link.png").symlink_to(tmp_path / "pipe.jpg")
    with time_limit(10):
        assert reason_of(tmp_path / "pipe.jpg") == "unreadable_path"
        assert reason_of(tmp_path / "link.png") == "unreadable_path"


def test_device_file_is_refused_without_reading():
    # a character device reports size 0 and never ends: stat() refuses it before open()
    assert reason_of(Path("/dev/null")) == "unreadable_path"


def test_file_size_cap(tmp_path):
    data = encode(noise_image(32, 32), "PNG")
    (tmp_path / "a.png").write_bytes(data)
    cfg = DataConfig(max_image_bytes=len(data) - 1)
    assert reason_of(tmp_path / "a.png", cfg) == "file_too_large"
    assert reason_of(data, cfg) == "file_too_large"
    assert load_image(tmp_path / "a.png", DataConfig(max_image_bytes=len(data))).size == (32, 32)
    with pytest.raises(ConfigError, match="max_image_bytes"):
        DataConfig(max_image_bytes=0)


def test_image_formats_are_validated():
    """{"image_formats": ["JPG"]} used to make every image corrupt_image, silently."""
    with pytest.raises(ConfigError) as e:
        DataConfig.from_dict({"image_formats": ["JPG"]})
    msg = str(e.value)
    assert "\n" not in msg and "'JPG' is not a Pillow image format" in msg
    assert "did you mean 'JPEG'" in msg and "valid: " in msg and "PNG" in msg
    with pytest.raises(ConfigError, match="at least one"):
        DataConfig(image_formats=())
    with pytest.raises(ConfigError, match="'NOPE'"):
        DataConfig(image_formats=("PNG", "NOPE"))
    cfg = DataConfig(image_formats=("jpeg", "png"))  # Pillow names, any case
    assert cfg.image_formats == ("JPEG", "PNG")
    assert DataConfig.from_json(cfg.to_json()) == cfg
    assert load_image(encode(noise_image(16, 16), "PNG"), cfg).size == (16, 16)
