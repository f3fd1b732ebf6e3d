"""The gain-shape split of a factorised image tokenizer (beyond the paper; issue 27).

An image's darkness ``d = 1 - pixel`` (white is 0) is written per grid cell as
``d = coverage * colour``: one colour (gain) vector per cell and one coverage (shape) value
per pixel in [0, 1]. For flat-coloured objects on white -- the ``shapes`` data, and drawings
generally -- this is exact: an anti-aliased edge pixel is its object's colour blended with
white, i.e. a fraction of the object's darkness. A tokenizer that codes the coverage map and
the colours with separate books gives the same structure tokens to a red circle and a blue
one, so a colour-shape pair held out of training is a new combination of codes the
transformer has emitted before (shape-gain vector quantisation, Sabin & Gray 1984, applied
per token).

Per cell the colour's hue is that of the cell's darkest pixel (exact even where an object
only grazes the cell); its strength is that of the darkest pixel of the same hue within
``window`` cells around it, so a grazed cell still gets the object's full colour and a
coverage below 1. The coverage of a pixel is its darkness projected on its cell's colour.
On images that are not flat colours the split is a per-cell rank-1 approximation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# darkness norm below which a pixel counts as white (8-bit rounding of white is 0)
WHITE_FLOOR = 0.02
# two darkness vectors share a hue when their cosine is at least this (orange and yellow,
# the closest pair of the shapes palette, are at 0.974; the 8-bit rounding of a faint edge
# pixel can cost a few thousandths)
SAME_HUE = 0.99


def split(images: torch.Tensor, cell: int, window: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(B, 3, H, W)`` in [0, 1] -> (coverage ``(B, 1, H, W)`` in [0, 1], colour
    darkness ``(B, 3, H/cell, W/cell)``, 0 for a white cell)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images (B, 3, H, W), got {tuple(images.shape)}")
    b, _, hh, ww = images.shape
    if hh % cell or ww % cell:
        raise ValueError(f"image side {hh}x{ww} is not a multiple of the cell {cell}")
    d = (1.0 - images.float()).clamp(0.0, 1.0)
    norm = d.norm(dim=1, keepdim=True)  # (B, 1, H, W)
    _, idx = F.max_pool2d(norm, cell, return_indices=True)  # the cell's darkest pixel
    h, w = hh // cell, ww // cell
    peak = d.flatten(2).gather(2, idx.flatten(2).expand(-1, 3, -1)).view(b, 3, h, w)
    peak_norm = peak.norm(dim=1, keepdim=True)
    hue = peak / peak_norm.clamp_min(1e-6)  # (B, 3, h, w) unit vectors
    k, pad = (2 * window + 1) * cell, window * cell
    patches = F.unfold(d, kernel_size=k, stride=cell, padding=pad)  # zero padding = white
    patches = patches.view(b, 3, k * k, h, w)
    proj = (patches * hue[:, :, None]).sum(1)  # (B, k*k, h, w)
    same = (proj >= SAME_HUE * patches.norm(dim=1)) & (proj > WHITE_FLOOR)
    pick = torch.where(same, proj, torch.zeros_like(proj)).argmax(1, keepdim=True)
    # the darkest pixel of the cell's hue in the window, as it is (its 8-bit rounding is
    # smallest); the cell's own peak when none is found (nothing of that hue reaches further)
    best = patches.gather(2, pick[:, None].expand(-1, 3, -1, -1, -1))[:, :, 0]
    best = torch.where(best.norm(dim=1, keepdim=True) >= peak_norm, best, peak)
    colour = best * (peak_norm > WHITE_FLOOR)
    return coverage(d, colour, cell), colour


def coverage(d: torch.Tensor, colour: torch.Tensor, cell: int) -> torch.Tensor:
    """Darkness ``(B, 3, H, W)`` projected on each pixel's cell colour ``(B, 3, h, w)``:
    ``(B, 1, H, W)`` in [0, 1] (0 in white cells)."""
    c = F.interpolate(colour, scale_factor=cell, mode="nearest")
    c2 = (c * c).sum(1, keepdim=True)
    a = (d * c).sum(1, keepdim=True) / c2.clamp_min(1e-6)
    return torch.where(c2 > WHITE_FLOOR**2, a.clamp(0.0, 1.0), torch.zeros_like(a))


def compose(cover: torch.Tensor, colour: torch.Tensor, cell: int) -> torch.Tensor:
    """The inverse of :func:`split`: ``1 - coverage * colour``, ``(B, 3, H, W)`` in [0, 1]."""
    c = F.interpolate(colour.float(), scale_factor=cell, mode="nearest")
    return (1.0 - cover.float() * c).clamp(0.0, 1.0)
