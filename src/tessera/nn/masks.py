"""Attention masks of DALL·E's sparse transformer (paper App. B.1, Fig. 11) as pure functions.

The stream is ``text_len`` text positions followed by ``h * w`` image positions in raster
order. Every mask is a ``(T, T)`` bool tensor, ``True`` where query ``i`` may attend to key
``j``; all kinds share:

- text -> text: causal (``j <= i``);
- text -> image: never (a text position precedes every image position);
- image -> text: always (every image token sees the whole caption);
- image -> image: causal (``j <= i``) AND the layer kind's pattern, in image indices
  ``a = i - text_len``, ``b = j - text_len`` with ``(r, c) = divmod(a, w)``:

  ``row``     the last ``w`` image tokens and itself, ``0 <= a - b <= w`` (the current row up
              to itself plus the previous row from the same column on: Fig. 11a);
  ``column``  the same column, ``(a - b) % w == 0`` (Fig. 11b);
  ``conv``    an ``k x k`` window centred on the token, restricted to the past:
              ``|c_b - c_a| <= k // 2`` and ``0 <= r_a - r_b <= k // 2`` (Fig. 11d; k=11);
  ``full``    every earlier image token (dense causal; for ablations).

Layer schedule (App. B.1): layer ``i`` in ``1..L-1`` is ``column`` if ``(i - 2) % 4 == 0``,
else ``row``; layer ``L`` is ``conv``. ruDALL-E's schedule (``DalleTransformer._get_layer_mask``)
is the same except that its column test comes first: when ``(L - 2) % 4 == 0`` its last layer
is ``column`` and it has no ``conv`` layer (Malevich, ``L = 24``, has one). Its three masks
(``rudalle/dalle/image_attention.py``) equal these element for element (tested).
"""

from __future__ import annotations

from typing import Literal

import torch

MaskKind = Literal["row", "column", "conv", "full"]
MASK_KINDS: tuple[str, ...] = ("row", "column", "conv", "full")


def layer_kinds(n_layers: int, schedule: str = "paper") -> list[str]:
    """The mask kind of each layer (index 0 is layer 1): the paper's schedule, or ruDALL-E's
    (``schedule="rudalle"``, see the module docstring)."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    kinds = ["column" if (i - 2) % 4 == 0 else "row" for i in range(1, n_layers)]
    if schedule == "rudalle":
        return [*kinds, "column" if (n_layers - 2) % 4 == 0 else "conv"]
    if schedule != "paper":
        raise ValueError(f"unknown mask schedule {schedule!r} (paper or rudalle)")
    return [*kinds, "conv"]


def causal_mask(n: int, *, device: torch.device | None = None) -> torch.Tensor:
    """``(n, n)`` bool mask, ``True`` where query ``i`` may attend to key ``j <= i``."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def image_mask(
    kind: str,
    h: int,
    w: int,
    *,
    conv_kernel: int = 11,
    factors: int = 1,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``(h*w*factors, h*w*factors)`` bool image-to-image mask of ``kind`` (causal included).

    factors: tokens per grid position (a factorised image tokenizer's structure and colour
    codes, interleaved); the kind's pattern is applied to the positions' grid cells
    ``index // factors``, causality to the token indices.
    """
    n = h * w * factors
    ta = torch.arange(n, device=device)[:, None]  # query image token index
    tb = torch.arange(n, device=device)[None, :]  # key image token index
    causal = tb <= ta
    a, b = ta // factors, tb // factors  # grid cells
    if kind == "full":
        return causal
    if kind == "row":
        return causal & (a - b <= w)
    if kind == "column":
        return causal & ((a - b) % w == 0)
    if kind == "conv":
        if conv_kernel < 1 or conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be a positive odd number, got {conv_kernel}")
        r = conv_kernel // 2
        ra, ca = a // w, a % w
        rb, cb = b // w, b % w
        return causal & ((cb - ca).abs() <= r) & (ra - rb <= r)
    raise ValueError(f"unknown mask kind {kind!r} (expected one of {', '.join(MASK_KINDS)})")


def attention_mask(
    kind: str,
    text_len: int,
    h: int,
    w: int,
    *,
    conv_kernel: int = 11,
    factors: int = 1,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``(T, T)`` bool mask over ``[text_len text; h*w*factors image]`` positions (see module
    doc and :func:`image_mask`)."""
    t = text_len + h * w * factors
    mask = torch.zeros(t, t, dtype=torch.bool, device=device)
    mask[:text_len, :text_len] = torch.ones(text_len, text_len, device=device).tril().bool()
    mask[text_len:, :text_len] = True
    mask[text_len:, text_len:] = image_mask(
        kind, h, w, conv_kernel=conv_kernel, factors=factors, device=device
    )
    return mask


def mask_mod(  # noqa: ANN201
    kind: str, text_len: int, w: int, *, conv_kernel: int = 11, factors: int = 1
):
    """The same mask as a FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor``.

    Pure tensor arithmetic (no data-dependent control flow), so ``create_block_mask`` can trace
    it; equals :func:`attention_mask` element for element (tested).
    """
    r = conv_kernel // 2

    def mod(b, h, q, k):  # noqa: ANN001
        causal = k <= q
        q_img = q >= text_len
        k_img = k >= text_len
        a = (q - text_len) // factors  # grid cells (factors tokens per cell)
        bb = (k - text_len) // factors
        if kind == "full":
            img = causal
        elif kind == "row":
            img = causal & (a - bb <= w)
        elif kind == "column":
            img = causal & ((a - bb) % w == 0)
        elif kind == "conv":
            img = causal & ((bb % w - a % w).abs() <= r) & (a // w - bb // w <= r)
        else:
            raise ValueError(f"unknown mask kind {kind!r}")
        text_q = ~q_img & ~k_img & causal
        img_text = q_img & ~k_img
        return text_q | img_text | (q_img & k_img & img)

    return mod
