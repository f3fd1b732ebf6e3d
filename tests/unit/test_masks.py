"""Attention masks vs hand-written matrices (4x4 image, 3 text tokens), schedule, flex parity."""

from __future__ import annotations

import pytest
import torch

from tessera.nn.masks import attention_mask, image_mask, layer_kinds, mask_mod


def _m(rows: str) -> torch.Tensor:
    lines = [ln.replace(" ", "") for ln in rows.strip().splitlines()]
    return torch.tensor([[c == "1" for c in ln] for ln in lines])


# Image-to-image parts for a 4x4 grid, rows = queries 0..15 in raster order.
ROW = _m("""
1000 0000 0000 0000
1100 0000 0000 0000
1110 0000 0000 0000
1111 0000 0000 0000
1111 1000 0000 0000
0111 1100 0000 0000
0011 1110 0000 0000
0001 1111 0000 0000
0000 1111 1000 0000
0000 0111 1100 0000
0000 0011 1110 0000
0000 0001 1111 0000
0000 0000 1111 1000
0000 0000 0111 1100
0000 0000 0011 1110
0000 0000 0001 1111
""")
COLUMN = _m("""
1000 0000 0000 0000
0100 0000 0000 0000
0010 0000 0000 0000
0001 0000 0000 0000
1000 1000 0000 0000
0100 0100 0000 0000
0010 0010 0000 0000
0001 0001 0000 0000
1000 1000 1000 0000
0100 0100 0100 0000
0010 0010 0010 0000
0001 0001 0001 0000
1000 1000 1000 1000
0100 0100 0100 0100
0010 0010 0010 0010
0001 0001 0001 0001
""")
# 3x3 causal window: the row above (columns c-1..c+1) and the current row up to c-1..c.
CONV3 = _m("""
1000 0000 0000 0000
1100 0000 0000 0000
0110 0000 0000 0000
0011 0000 0000 0000
1100 1000 0000 0000
1110 1100 0000 0000
0111 0110 0000 0000
0011 0011 0000 0000
0000 1100 1000 0000
0000 1110 1100 0000
0000 0111 0110 0000
0000 0011 0011 0000
0000 0000 1100 1000
0000 0000 1110 1100
0000 0000 0111 0110
0000 0000 0011 0011
""")


@pytest.mark.parametrize(
    ("kind", "expected", "kernel"),
    [("row", ROW, 11), ("column", COLUMN, 11), ("conv", CONV3, 3), ("full", None, 11)],
)
def test_masks_match_hand_written(kind: str, expected: torch.Tensor | None, kernel: int) -> None:
    if expected is None:
        expected = torch.ones(16, 16).tril().bool()
    assert torch.equal(image_mask(kind, 4, 4, conv_kernel=kernel), expected)
    full = attention_mask(kind, 3, 4, 4, conv_kernel=kernel)
    assert full.shape == (19, 19)
    text = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]]).bool()
    assert torch.equal(full[:3, :3], text)  # text causal
    assert not full[:3, 3:].any()  # text never sees the image
    assert full[3:, :3].all()  # every image token sees all text
    assert torch.equal(full[3:, 3:], expected)


def test_conv_11_on_a_small_grid_is_dense_causal_within_reach() -> None:
    # An 11x11 window covers 5 rows up and 5 columns either side: all of a 4x4 grid's past.
    assert torch.equal(image_mask("conv", 4, 4), image_mask("full", 4, 4))
    m = image_mask("conv", 8, 8)
    assert m[63, 63 - 8 * 5].item() and not m[63, 63 - 8 * 6].item()


def test_layer_schedule_is_the_papers() -> None:
    kinds = layer_kinds(64)
    assert kinds[-1] == "conv" and kinds.count("conv") == 1
    for i in range(1, 64):
        assert kinds[i - 1] == ("column" if (i - 2) % 4 == 0 else "row")
    assert layer_kinds(4) == ["row", "column", "row", "conv"]
    assert layer_kinds(1) == ["conv"]


def test_bad_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown mask kind 'diagonal'"):
        image_mask("diagonal", 2, 2)


@pytest.mark.parametrize("kind", ["row", "column", "conv", "full"])
def test_mask_mod_equals_dense_mask(kind: str) -> None:
    t = 5 + 6 * 6
    q = torch.arange(t)[:, None]
    k = torch.arange(t)[None, :]
    got = mask_mod(kind, 5, 6, conv_kernel=3)(0, 0, q, k)
    assert torch.equal(got, attention_mask(kind, 5, 6, 6, conv_kernel=3))
