"""The FID Inception-v3 network (the TF 2015-12-05 graph), written for tessera.

FID, and the Inception Score, are only comparable across papers when computed with one exact
network: the TensorFlow ``2015-12-05`` Inception-v3 graph of the original FID code (Heusel et
al., 2017), ported to PyTorch by pytorch-fid (``FIDInceptionA/C/E_1/E_2``) and torch-fidelity
(``FeatureExtractorInceptionV3``). It differs from torchvision's Inception-v3 in three places,
all reproduced here:

* the average pools of the 35x35, 17x17 and first 8x8 blocks exclude the zero padding from the
  mean (TF's ``avg_pool``), i.e. ``count_include_pad=False``;
* the last block (``Mixed_7c``) pools its pool branch with a 3x3 *max* pool;
* the input is resized to 299x299 with TF1's ``resize_bilinear(align_corners=False)``, whose
  sampling grid has no half-pixel offset (source coordinate = ``dst * in / out``), then
  mapped to [-1, 1) by ``(x - 128) / 128``. :func:`tf1_resize_bilinear` implements that
  resize from its definition; it is not ``F.interpolate``'s (half-pixel) bilinear mode.

The output holds the 2048-d pool features (FID, KID, precision/recall), the 1008-way logits
without the fc bias (torch-fidelity's Inception Score input) and with it. With the same weights
and float32 (or float64) on CPU the features are bit-identical to torch-fidelity's.

Weights are not bundled: the user downloads pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth`` once and points :func:`load_inception` at it (argument
or ``TESSERA_INCEPTION_WEIGHTS``). ``.pth`` files are read with ``weights_only=True``;
:func:`convert_inception` rewrites one as ``.safetensors``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tessera.errors import CheckpointError
from tessera.io import atomic_file

WEIGHTS_ENV = "TESSERA_INCEPTION_WEIGHTS"
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INPUT_SIZE = 299

_BN_EPS = 1e-3
# torch.hub's convention: ``name-<first hex digits of the file's SHA-256>.ext``
_HASH_SUFFIX = re.compile(r"-([0-9a-f]{8,})\.[^.]+$")
_MIXED_BLOCKS = tuple(
    f"Mixed_{b}" for b in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c")
)


def tf1_resize_bilinear(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize float NCHW ``x`` to ``size`` like TF1 ``resize_bilinear(align_corners=False)``.

    Output pixel ``i`` samples source coordinate ``i * in / out`` (the scale rounded to float32,
    as TF computes it; no half-pixel offset), between the neighbours ``floor`` and
    ``min(floor + 1, in - 1)``: each row is interpolated horizontally, then the two rows
    vertically, ``a + (b - a) * t``. Coordinates are float32 (float64 for float64 ``x``).
    Returns ``x`` itself when it already has the requested size.
    """
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"expected a float NCHW tensor, got {x.dtype} {tuple(x.shape)}")
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if (out_h, out_w) == tuple(x.shape[2:]):
        return x
    coord_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32

    def grid(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(n_in / n_out, dtype=torch.float32)
        src = torch.arange(n_out, dtype=coord_dtype, device=x.device) * scale
        lo = src.long()  # src >= 0, so truncation is floor
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, (src - lo).to(x.dtype)

    y_lo, y_hi, dy = grid(x.shape[2], out_h)
    x_lo, x_hi, dx = grid(x.shape[3], out_w)
    left, right = x.index_select(3, x_lo), x.index_select(3, x_hi)
    rows = left + (right - left) * dx  # N, C, H_in, out_w
    top, bottom = rows.index_select(2, y_lo), rows.index_select(2, y_hi)
    return top + (bottom - top) * dy[:, None]


class _FrozenBatchNorm(nn.Module):
    """Inference batch norm (eps 1e-3): ``weight``, ``bias``, ``running_mean``, ``running_var``
    and no ``num_batches_tracked``, matching the published weights' keys."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, _BN_EPS
        )


class _ConvBN(nn.Module):
    """Bias-free convolution, batch norm, ReLU (keys ``conv.weight``, ``bn.*``)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False)
        self.bn = _FrozenBatchNorm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool3(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _Block(nn.Module):
    """A mixed block: branches of named layers applied in sequence, concatenated on channels."""

    def chain(self, x: torch.Tensor, *names: str) -> torch.Tensor:
        for name in names:
            x = getattr(self, name)(x)
        return x


class _Block35(_Block):
    """35x35 block (Mixed_5b/c/d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _ConvBN(c_in, 64, 1)
        self.branch5x5_1 = _ConvBN(c_in, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.chain(x, "branch5x5_1", "branch5x5_2"),
                self.chain(x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                self.branch_pool(_avg_pool3(x)),
            ],
            1,
        )


class _Reduce35(_Block):
    """35x35 -> 17x17 (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = _ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.chain(x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class _Block17(_Block):
    """17x17 block (Mixed_6b..e): factorised 7x7 convolutions, avg-pool branch."""

    def __init__(self, c_in: int, c7: int) -> None:
        super().__init__()
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding)
        self.branch1x1 = _ConvBN(c_in, 192, 1)
        self.branch7x7_1 = _ConvBN(c_in, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, row[0], padding=row[1])
        self.branch7x7_3 = _ConvBN(c7, 192, col[0], padding=col[1])
        self.branch7x7dbl_1 = _ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_3 = _ConvBN(c7, c7, row[0], padding=row[1])
        self.branch7x7dbl_4 = _ConvBN(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_5 = _ConvBN(c7, 192, row[0], padding=row[1])
        self.branch_pool = _ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = [f"branch7x7dbl_{i}" for i in range(1, 6)]
        return torch.cat(
            [
                self.branch1x1(x),
                self.chain(x, "branch7x7_1", "branch7x7_2", "branch7x7_3"),
                self.chain(x, *dbl),
                self.branch_pool(_avg_pool3(x)),
            ],
            1,
        )


class _Reduce17(_Block):
    """17x17 -> 8x8 (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = _ConvBN(c_in, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = [f"branch7x7x3_{i}" for i in range(1, 5)]
        return torch.cat(
            [
                self.chain(x, "branch3x3_1", "branch3x3_2"),
                self.chain(x, *seven),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class _Block8(_Block):
    """8x8 block (Mixed_7b: avg-pool branch; Mixed_7c: max-pool branch, the TF graph's quirk),
    with the 3x3 convolutions split into parallel 1x3 and 3x1 halves."""

    def __init__(self, c_in: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _ConvBN(c_in, 320, 1)
        self.branch3x3_1 = _ConvBN(c_in, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        bd = self.chain(x, "branch3x3dbl_1", "branch3x3dbl_2")
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool3(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(bd),
                self.branch3x3dbl_3b(bd),
                self.branch_pool(pooled),
            ],
            1,
        )


@dataclasses.dataclass(frozen=True)
class InceptionFeatures:
    """Float32 outputs of :class:`FIDInceptionV3` for a batch of N images.

    pool: (N, 2048) global-average-pooled features (FID, KID, precision/recall).
    logits_unbiased: (N, 1008) ``pool @ fc.weight.T`` (torch-fidelity's Inception Score input).
    logits: (N, 1008) ``logits_unbiased + fc.bias``.
    """

    pool: torch.Tensor
    logits_unbiased: torch.Tensor
    logits: torch.Tensor


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 graph; state-dict keys as in ``pt_inception-2015-12-05-*.pth``.

    ``forward`` takes uint8 images (N, 3, H, W) of any size and runs in the dtype of the
    weights (float32, or float64 after ``.double()``); under ``torch.autocast`` the
    convolutions run in the autocast dtype. Features come back as float32. Built with random
    weights; :func:`load_inception` gives the real ones. Frozen: eval mode, no gradients.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _Block35(192, pool_features=32)
        self.Mixed_5c = _Block35(256, pool_features=64)
        self.Mixed_5d = _Block35(288, pool_features=64)
        self.Mixed_6a = _Reduce35(288)
        self.Mixed_6b = _Block17(768, c7=128)
        self.Mixed_6c = _Block17(768, c7=160)
        self.Mixed_6d = _Block17(768, c7=160)
        self.Mixed_6e = _Block17(768, c7=192)
        self.Mixed_7a = _Reduce17(768)
        self.Mixed_7b = _Block8(1280, max_pool=False)
        self.Mixed_7c = _Block8(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        self.weights_sha256: str | None = None
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> InceptionFeatures:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        w = self.fc.weight
        x = tf1_resize_bilinear(images.to(device=w.device, dtype=w.dtype), INPUT_SIZE)
        x = (x - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in _MIXED_BLOCKS:
            x = getattr(self, name)(x)
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
        unbiased = pool.mm(w.T)
        logits = unbiased + self.fc.bias.unsqueeze(0)
        return InceptionFeatures(pool.float(), unbiased.float(), logits.float())


def weights_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _resolve(path: str | os.PathLike[str] | None) -> Path:
    if path is None:
        path = os.environ.get(WEIGHTS_ENV) or None
    if path is None or not Path(path).is_file():
        where = path if path is not None else f"<no path given and {WEIGHTS_ENV} unset>"
        raise CheckpointError(
            f"FID Inception weights not found at {where}; download pytorch-fid's "
            f"{WEIGHTS_FILENAME} once and pass --inception PATH or set {WEIGHTS_ENV}=PATH, "
            "or use --features clip:DIR for FID in a tessera CLIP image encoder's feature space"
        )
    return Path(path)


def _read_checked(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The file's state dict (``num_batches_tracked`` dropped), validated against the graph,
    and its SHA-256 (checked against a torch.hub-style ``-<hex>`` filename suffix)."""
    sha = weights_sha256(path)
    m = _HASH_SUFFIX.search(path.name)
    if m and not sha.startswith(m.group(1)):
        raise CheckpointError(
            f"hash mismatch for {path}: the name says SHA-256 {m.group(1)}..., "
            f"the file has {sha[: len(m.group(1))]}... (corrupt or truncated download?)"
        )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"corrupt or truncated weights file {path}: {e}") from None
    elif path.suffix in (".pth", ".pt"):
        from tessera.checkpoint import load_legacy_state_dict

        sd = load_legacy_state_dict(path, allow_legacy_pt=True)
    else:
        raise CheckpointError(
            f"unsupported Inception weights format {path.suffix!r} ({path}); "
            "expected .pth, .pt or .safetensors"
        )
    sd = {k: v for k, v in sd.items() if not k.endswith(".bn.num_batches_tracked")}
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    bad = [
        k
        for k in expected
        if k in sd
        and (
            not isinstance(sd[k], torch.Tensor)
            or not sd[k].is_floating_point()
            or tuple(sd[k].shape) != expected[k]
        )
    ]
    if missing or unexpected or bad:
        parts = []
        if bad:
            v = sd[bad[0]]
            got = f"{v.dtype} {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
            parts.append(
                f"{len(bad)} wrong tensor(s), e.g. {bad[0]!r}: {got} vs float {expected[bad[0]]}"
            )
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]!r}")
        raise CheckpointError(f"{path} is not FID Inception-v3 weights: " + "; ".join(parts))
    return sd, sha


def load_inception(
    path: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> FIDInceptionV3:
    """Load the FID Inception-v3 from ``path`` (else ``$TESSERA_INCEPTION_WEIGHTS``).

    ``.safetensors``, or ``.pth``/``.pt`` read weights-only (never fully unpickled). A
    torch.hub-style ``-<hex>`` suffix in the name must prefix the file's SHA-256. Raises
    :class:`~tessera.errors.CheckpointError` when the file is missing, fails that check or
    does not hold exactly this graph's tensors. ``model.weights_sha256`` records the file's hash.
    """
    file = _resolve(path)
    sd, sha = _read_checked(file)
    with torch.device("meta"):
        model = FIDInceptionV3()
    # Fresh (aligned) storage for every tensor: safetensors' buffers may sit at offsets that
    # steer oneDNN to other convolution kernels, so the same weights read from .safetensors
    # and from .pth would give features differing in the last bits.
    sd = {k: v.clone() for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    model.to(device=device, dtype=dtype).requires_grad_(False)
    model.weights_sha256 = sha
    return model


def convert_inception(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Rewrite Inception weights ``src`` (``.pth``/``.pt``/``.safetensors``) as ``.safetensors``
    ``dst``, validated, with ``source_file`` and ``source_sha256`` in its metadata.

    ``dst`` must not carry a ``-<hex>`` hash suffix: the new file's hash differs from the
    source's, so the name would fail the check on load.
    """
    from safetensors.torch import save_file

    src_path, dst_path = _resolve(src), Path(dst)
    if dst_path.suffix != ".safetensors":
        raise CheckpointError(f"convert_inception writes .safetensors, not {dst_path.name}")
    if _HASH_SUFFIX.search(dst_path.name):
        raise CheckpointError(
            f"{dst_path.name} has a -<hash> suffix the converted file would not match; "
            "choose a name without it"
        )
    sd, sha = _read_checked(src_path)
    with atomic_file(dst_path) as tmp:
        save_file(
            {k: v.contiguous() for k, v in sd.items()},
            str(tmp),
            metadata={"format": "pt", "source_file": src_path.name, "source_sha256": sha},
        )
    return dst_path
