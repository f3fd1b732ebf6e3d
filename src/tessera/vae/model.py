"""The discrete VAE (paper §2.1, App. A.1), layer for layer as OpenAI's released ``dall-e``.

Encoder: 7x7 input conv, ``group_count`` groups of ``n_blk_per_group`` residual blocks (widths
``n_hid * 2**i``) with 2x max-pooling between groups, then ReLU + 1x1 conv to ``vocab_size``
logits. Decoder: 1x1 conv from the (relaxed) one-hot codes to ``n_init`` channels, groups of
residual blocks (widths mirrored) with 2x nearest upsampling between them, then ReLU + 1x1 conv
to 6 channels: the logit-Laplace location and log-scale of each RGB channel.

Each block is ``id_path(x) + post_gain * res_path(x)`` with ``post_gain = 1 / n_layers**2``
(``n_layers = group_count * n_blk_per_group``); the residual path is ReLU-conv x 4 with
kernels 3,3,3,1 (encoder) or 1,3,3,3 (decoder) and a bottleneck of ``n_out // 4``. Module
names match the ``dall-e`` package so its weights convert by renaming ``w/b`` to
``weight/bias`` (:mod:`tessera.vae.convert`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from tessera.config.vae import VAEConfig
from tessera.nn.gradscale import ResblockGradScale
from tessera.vae import gain_shape
from tessera.vae.pixels import map_pixels, unmap_pixels


def _code_width(cfg: VAEConfig) -> int:
    """Channels between encoder and decoder: the codebook's logits / one-hot codes (gumbel) or
    one codebook vector (vq)."""
    return cfg.vocab_size if cfg.quantizer == "gumbel" else cfg.codebook_dim


def _conv(n_in: int, n_out: int, kw: int) -> nn.Conv2d:
    """Conv with the ``dall-e`` initialisation: N(0, 1/fan_in) weights, zero bias, same padding."""
    conv = nn.Conv2d(n_in, n_out, kw, padding=(kw - 1) // 2)
    nn.init.normal_(conv.weight, std=1.0 / math.sqrt(n_in * kw**2))
    nn.init.zeros_(conv.bias)
    return conv


class ResBlock(nn.Module):
    """``id_path(x) + post_gain * res_path(x)``; opts into per-resblock gradient scaling."""

    def __init__(
        self,
        n_in: int,
        n_out: int,
        n_layers: int,
        kernels: tuple[int, ...],
        post_gain_power: float = 2.0,
    ) -> None:
        super().__init__()
        n_hid = n_out // 4
        self.post_gain = 1.0 / n_layers**post_gain_power
        self.id_path = _conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = [n_in, n_hid, n_hid, n_hid, n_out]
        layers: list[tuple[str, nn.Module]] = []
        for i, kw in enumerate(kernels):
            layers += [
                (f"relu_{i + 1}", nn.ReLU()),
                (f"conv_{i + 1}", _conv(widths[i], widths[i + 1], kw)),
            ]
        self.res_path = nn.Sequential(OrderedDict(layers))
        self.grad_scale = ResblockGradScale(self.res_path)
        self.checkpointing = False

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.post_gain * self.res_path(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gs = self.grad_scale
        h = gs.enter(x) if gs.enabled else x
        if self.checkpointing and torch.is_grad_enabled():
            y = torch.utils.checkpoint.checkpoint(self._branch, h, use_reentrant=False)
        else:
            y = self._branch(h)
        if gs.enabled:
            y = gs.exit(y, torch.promote_types(x.dtype, y.dtype))
        return self.id_path(x) + y


def _group(blocks: list[ResBlock], resample: nn.Module | None, resample_name: str) -> nn.Sequential:
    items: list[tuple[str, nn.Module]] = [(f"block_{i + 1}", b) for i, b in enumerate(blocks)]
    if resample is not None:
        items.append((resample_name, resample))
    return nn.Sequential(OrderedDict(items))


class Encoder(nn.Module):
    """(B, 3, H, W) mapped pixels -> (B, vocab_size, H/2**(g-1), W/2**(g-1)) logits."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        g, nb, n_layers = (
            cfg.group_count,
            cfg.n_blk_per_group,
            cfg.group_count * cfg.n_blk_per_group,
        )
        widths = [cfg.n_hid * 2**i for i in range(g)]
        items: list[tuple[str, nn.Module]] = [("input", _conv(cfg.input_channels, cfg.n_hid, 7))]
        n_in = cfg.n_hid
        for i, w in enumerate(widths):
            blocks = []
            for _ in range(nb):
                blocks.append(ResBlock(n_in, w, n_layers, (3, 3, 3, 1), cfg.post_gain_power))
                n_in = w
            pool = nn.MaxPool2d(kernel_size=2) if i < g - 1 else None
            items.append((f"group_{i + 1}", _group(blocks, pool, "pool")))
        items.append(
            (
                "output",
                nn.Sequential(
                    OrderedDict(
                        [("relu", nn.ReLU()), ("conv", _conv(widths[-1], _code_width(cfg), 1))]
                    )
                ),
            )
        )
        self.blocks = nn.Sequential(OrderedDict(items))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Decoder(nn.Module):
    """(B, vocab_size, h, w) codes (one-hot or relaxed) -> (B, 6, H, W) logit-Laplace params."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        g, nb, n_layers = (
            cfg.group_count,
            cfg.n_blk_per_group,
            cfg.group_count * cfg.n_blk_per_group,
        )
        widths = [cfg.n_hid * 2 ** (g - 1 - i) for i in range(g)]
        items: list[tuple[str, nn.Module]] = [("input", _conv(_code_width(cfg), cfg.n_init, 1))]
        n_in = cfg.n_init
        for i, w in enumerate(widths):
            blocks = []
            for _ in range(nb):
                blocks.append(ResBlock(n_in, w, n_layers, (1, 3, 3, 3), cfg.post_gain_power))
                n_in = w
            up = nn.Upsample(scale_factor=2, mode="nearest") if i < g - 1 else None
            items.append((f"group_{i + 1}", _group(blocks, up, "upsample")))
        items.append(
            (
                "output",
                nn.Sequential(
                    OrderedDict(
                        [("relu", nn.ReLU()), ("conv", _conv(cfg.n_hid, 2 * cfg.input_channels, 1))]
                    )
                ),
            )
        )
        self.blocks = nn.Sequential(OrderedDict(items))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(z)


class Codebook(nn.Module):
    """The ``vq`` quantizer: ``vocab_size`` vectors of ``codebook_dim``, kept as an exponential
    moving average of the encoder outputs assigned to them (no gradient), with dead codes
    re-seeded from the batch (beyond the paper; see ``VAEConfig.quantizer``)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.decay, self.commitment = cfg.codebook_decay, cfg.commitment
        self.threshold = cfg.restart_threshold
        k, d = cfg.vocab_size, cfg.codebook_dim
        self.register_buffer("embed", torch.randn(k, d))
        self.register_buffer("embed_sum", self.embed.clone())
        self.register_buffer("cluster_size", torch.ones(k))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.commit_loss = torch.zeros(())  # of the last training forward (read by the loss)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, D) -> squared distances to every code (N, K), float32."""
        z, e = z.float(), self.embed.float()
        return (z * z).sum(1, keepdim=True) - 2 * z @ e.t() + (e * e).sum(1)[None]

    @torch.no_grad()
    def nearest(self, h: torch.Tensor) -> torch.Tensor:
        """Encoder outputs (B, D, h, w) -> (B, h, w) int64 indices of the nearest codes."""
        b, d, hh, ww = h.shape
        flat = h.permute(0, 2, 3, 1).reshape(-1, d)
        return self.distances(flat).argmin(1).view(b, hh, ww)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits = -distances (B, K, h, w), straight-through codes (B, D, h, w))."""
        b, d, hh, ww = h.shape
        flat = h.permute(0, 2, 3, 1).reshape(-1, d).float()  # (N, D)
        if self.training:
            self._update(flat)
        dist = self.distances(flat)  # (N, K)
        idx = dist.argmin(1)
        z_q = self.embed[idx].float()
        self.commit_loss = self.commitment * F.mse_loss(flat, z_q)
        z = flat + (z_q - flat).detach()  # straight-through: the decoder's gradient reaches h
        logits = -dist.view(b, hh, ww, -1).permute(0, 3, 1, 2)
        z = z.view(b, hh, ww, d).permute(0, 3, 1, 2).to(h.dtype)
        return logits, z.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor) -> None:
        k = self.embed.shape[0]
        z = flat.detach()
        if not bool(self.initialized):  # seed the book with encoder outputs of the first batch
            pick = torch.randint(0, z.shape[0], (k,), device=z.device)
            self.embed.copy_(z[pick])
            self.embed_sum.copy_(z[pick])
            self.cluster_size.fill_(1.0)
            self.initialized.fill_(True)
        idx = self.distances(z).argmin(1)
        counts = torch.bincount(idx, minlength=k).float()
        sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, z)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        size = (self.cluster_size + 1e-5) / (n + k * 1e-5) * n  # Laplace smoothing
        self.embed.copy_(self.embed_sum / size[:, None])
        dead = self.cluster_size < self.threshold
        if bool(dead.any()):
            # re-seeded from this rank's batch; under DDP rank 0's choice is broadcast
            pick = torch.randint(0, z.shape[0], (int(dead.sum()),), device=z.device)
            self.embed[dead] = z[pick]
            self.embed_sum[dead] = z[pick]
            self.cluster_size[dead] = 1.0
            if distributed:
                torch.distributed.broadcast(self.embed, 0)
                torch.distributed.broadcast(self.embed_sum, 0)
                torch.distributed.broadcast(self.cluster_size, 0)


class DiscreteVAE(nn.Module):
    """Encoder + decoder. ``forward`` is the training pass (gumbel-softmax relaxation);
    :meth:`encode` / :meth:`decode` are the inference maps images <-> token grids."""

    # kept float32 in a float16 release (tessera.checkpoint.save): rounding a
    # codebook changes which code is nearest, and a released tokenizer must encode as in training
    FULL_PRECISION = ("codebook.", "colour_book.")

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.config = cfg
        # a factorised tokenizer's network codes the one-channel coverage map
        self.pixel_channels = 1 if cfg.colour_codes else cfg.input_channels
        net = dataclasses.replace(cfg, input_channels=self.pixel_channels, colour_codes=0)
        self.encoder = Encoder(net)
        self.decoder = Decoder(net)
        self.codebook = Codebook(cfg) if cfg.quantizer == "vq" else None
        self.colour_book = (
            Codebook(
                dataclasses.replace(
                    cfg, vocab_size=cfg.colour_codes, codebook_dim=3, colour_codes=0
                )
            )
            if cfg.colour_codes
            else None
        )
        # NHWC convolutions are ~1.5x faster on CPU (oneDNN) and preferred by cuDNN under AMP.
        self.to(memory_format=torch.channels_last)

    def forward(
        self, x: torch.Tensor, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Relaxed pass on mapped pixels ``x`` (B, 3, H, W) in [eps, 1-eps].

        Returns (logits (B, K, h, w), mu (B, 3, H, W), ln_b (B, 3, H, W)). The codes fed to the
        decoder are gumbel-softmax samples at ``temperature`` (the paper's relaxation, used in
        both the forward and backward passes; one-hot in the forward pass with
        ``config.straight_through``).
        """
        h = self.encoder(x.contiguous(memory_format=torch.channels_last))
        if self.codebook is not None:  # vq: logits are negative squared distances
            logits, z = self.codebook(h)
        else:
            logits = h
            z = F.gumbel_softmax(
                logits.float(), tau=temperature, hard=self.config.straight_through, dim=1
            )
        out = self.decoder(z)
        c = self.pixel_channels
        return logits, out[:, :c], out[:, c:]

    # -- a factorised (gain-shape) tokenizer: VAEConfig.colour_codes -------------------------

    def split(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, H, W) in [0, 1] -> (coverage (B, 1, H, W), colours (B, 3, h, w)),
        :func:`tessera.vae.gain_shape.split` at this tokenizer's cell size."""
        return gain_shape.split(images, self.config.downsample, self.config.colour_window)

    @torch.no_grad()
    def observe_colours(self, colours: torch.Tensor) -> None:
        """One EMA update of the colour book from a batch's cell colours (training). The
        book starts from the first batch's farthest-point sample (k-means++'s greedy form):
        colours are few and far apart, and a random start would seed most codes on white
        cells and leave rare colours to the slow dead-code restarts."""
        book = self.colour_book
        assert book is not None
        flat = colours.permute(0, 2, 3, 1).reshape(-1, 3).float()
        if not bool(book.initialized):
            pick = [int(flat.norm(dim=1).argmax())]
            dist = (flat - flat[pick[0]]).pow(2).sum(1)
            for _ in range(book.embed.shape[0] - 1):
                pick.append(int(dist.argmax()))
                dist = dist.minimum((flat - flat[pick[-1]]).pow(2).sum(1))
            book.embed.copy_(flat[pick])
            book.embed_sum.copy_(flat[pick])
            book.cluster_size.fill_(1.0)
            book.initialized.fill_(True)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                for t in (book.embed, book.embed_sum):  # every rank starts from rank 0's
                    torch.distributed.broadcast(t, 0)
        book._update(flat)

    @torch.no_grad()
    def colour_ids(self, colours: torch.Tensor) -> torch.Tensor:
        """Cell colours (B, 3, h, w) -> (B, h, w) colour code ids: the nearest code, found in
        float64 (no TF32, no cancellation: the same id on every device), then its
        :meth:`canonical_colours` id. The book has more codes than the data has colours, and
        the EMA drives several codes onto one colour; without the canonical id, which of
        those a cell gets would be float noise, and a transformer trained on one machine's
        choice would misread another's (an image prompt encoded in a float16 copy drew wrong
        colours)."""
        book = self.colour_book
        assert book is not None
        b, _, h, w = colours.shape
        flat = colours.permute(0, 2, 3, 1).reshape(-1, 3).double()
        idx = torch.cdist(flat, book.embed.double()).argmin(1)
        return self.canonical_colours()[idx].view(b, h, w)

    def canonical_colours(self) -> torch.Tensor:
        """(K,) for each colour code, the lowest code id with the same colour at 8 bits per
        channel (codes that decode to one colour are one token)."""
        book = self.colour_book
        assert book is not None
        q = (book.embed.double() * 255).round()
        same = (q[:, None, :] == q[None, :, :]).all(-1)  # (K, K), true on the diagonal
        return same.int().argmax(1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] -> (B, h, w) int64 tokens (argmax, no noise); a
        factorised tokenizer gives (B, h, 2w): each cell's structure token, then its colour
        token (offset by ``vocab_size``)."""
        if self.colour_book is not None:
            cover, colours = self.split(images)
            structure = self._encode(cover)
            colour = self.colour_ids(colours) + self.config.vocab_size
            return torch.stack([structure, colour], dim=-1).flatten(-2)
        return self._encode(images)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        x = map_pixels(images.float(), self.config.logit_laplace_eps)
        h = self.encoder(x.contiguous(memory_format=torch.channels_last))
        if self.codebook is not None:
            return self.codebook.nearest(h)
        return h.argmax(1)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 tokens -> (B, 3, H, W) images in [0, 1]: ``sigmoid(mu)`` unmapped,
        the logit-Laplace's median (its location pushed through the sigmoid; the mean has no
        closed form), as OpenAI's ``dall-e`` decodes too. Always computed in float32. A
        factorised tokenizer reads (B, h, 2w) tokens (:meth:`encode`) and composes its decoded
        coverage with the colour codes' vectors."""
        if self.colour_book is not None:
            v, k = self.config.vocab_size, self.config.colour_codes
            structure, colour = tokens[..., 0::2], tokens[..., 1::2] - v
            if structure.numel() and (
                int(structure.min()) < 0
                or int(structure.max()) >= v
                or int(colour.min()) < 0
                or int(colour.max()) >= k
            ):
                raise ValueError(
                    f"factorised tokens must alternate structure ids [0, {v}) and colour ids "
                    f"[{v}, {v + k})"
                )
            colours = self.colour_book.embed.float()[colour].permute(0, 3, 1, 2)
            return gain_shape.compose(self._decode(structure), colours, self.config.downsample)
        return self._decode(tokens)

    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        # The input 1x1 conv of a one-hot code is a column lookup: same numbers, without the
        # (B, K, h, w) one-hot tensor (1 GiB at batch 32 for K = 8192 at 32x32).
        conv = self.decoder.blocks.input
        table = conv.weight[:, :, 0, 0].t()  # (K or codebook_dim, n_init)
        if self.codebook is not None:  # each code's vector through the 1x1 conv
            table = self.codebook.embed.float() @ table  # (K, n_init)
        h = F.embedding(tokens, table) + conv.bias  # (B, h, w, n_init)
        h = h.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        for name, module in self.decoder.blocks.named_children():
            if name != "input":
                h = module(h)
        mu = h[:, : self.pixel_channels].float()
        return unmap_pixels(torch.sigmoid(mu), self.config.logit_laplace_eps)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        for m in self.modules():
            if isinstance(m, ResBlock):
                m.checkpointing = enabled
