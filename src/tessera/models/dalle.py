"""DALL·E's stage-2 prior: a decoder-only sparse transformer over [text; image] tokens.

The stream (paper §2.2, App. B.1) is ``text_len`` text positions -- ``<bos>``, up to
``text_len - 1`` BPE tokens, then one padding token unique to each remaining position -- and
the ``grid_size**2`` dVAE tokens of the image in raster order. Position ``p`` predicts the
token at ``p + 1``: text positions ``0 .. text_len - 2`` predict text (BPE ids or padding
tokens), position ``text_len - 1`` and the image positions predict image tokens. The output
layer is tied to the two input embeddings, so text positions can only emit text tokens and
image positions only image tokens.

Released models that depart from the paper are options of :class:`DalleConfig` (an end-of-caption
token, CogView's sandwich norm, ruDALL-E's mask schedule, an untied output layer); the paper's
choices are the defaults, with the same parameters, initialisation and numbers.

Blocks are pre-norm (LayerNorm -> attention / MLP -> residual add); residual output projections
start at ``0.02 / sqrt(2 * n_layers)`` (GPT-2's scaling, needed at 64 layers); every residual
branch is routed through a :class:`~tessera.nn.gradscale.ResblockGradScale` so fp16 training
can use the paper's per-resblock gradient scaling (App. D).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from tessera.config.dalle import DalleConfig
from tessera.nn.attention import Backend, KVCache, MaskSpec, SelfAttention
from tessera.nn.gradscale import ResblockGradScale
from tessera.nn.masks import layer_kinds


def prepare_text(ids: torch.Tensor, lengths: torch.Tensor, cfg: DalleConfig) -> torch.Tensor:
    """BPE ids ``(B, n)`` with real lengths ``(B,)`` -> the text stream ``(B, text_len)``.

    Position 0 holds ``<bos>``, positions ``1 .. len`` the caption (cut to ``text_len - 1``
    tokens), every later position ``p`` the padding token ``text_vocab + p``. With
    ``cfg.eos_id`` the caption is followed by ``<eos>`` when there is room for it (ruDALL-E:
    ``[bos] caption [eos]`` cut to ``text_len``).
    """
    b = ids.shape[0]
    room = cfg.text_len - 1
    lengths = lengths.to(ids.device).clamp(max=min(room, ids.shape[1]))
    ids = ids[:, :room]
    if ids.shape[1] < room:
        ids = F.pad(ids, (0, room - ids.shape[1]))
    if ids.numel() and (ids.min() < 0 or ids.max() >= cfg.text_vocab):
        raise ValueError(f"text ids must be in [0, {cfg.text_vocab}) for this model")
    if cfg.eos_id is not None:
        fits = lengths < room  # a caption that fills the context loses its <eos>, as ruDALL-E's
        at = lengths.clamp(max=room - 1)[:, None]
        ids = ids.scatter(1, at, torch.where(fits[:, None], cfg.eos_id, ids.gather(1, at)))
        lengths = lengths + fits.long()
    pos = torch.arange(1, cfg.text_len, device=ids.device)
    pad = cfg.text_vocab + pos  # (text_len - 1,)
    body = torch.where(pos[None, :] <= lengths[:, None], ids, pad[None, :])
    bos = torch.full((b, 1), cfg.bos_id, dtype=ids.dtype, device=ids.device)
    return torch.cat([bos, body], dim=1)


def warn_truncated(lengths: torch.Tensor, cfg: DalleConfig, *, what: str = "prompt") -> int:
    """Log (logger ``tessera.text``) how many captions exceed the model's ``text_len - 1``
    tokens and are cut by :func:`prepare_text`; return that count."""
    room = cfg.text_len - 1
    over = lengths > room
    n = int(over.sum())
    if n:
        logging.getLogger("tessera.text").warning(
            "%d %s(s) longer than the model's %d text tokens were cut (longest: %d tokens)",
            n,
            what,
            room,
            int(lengths.max()),
        )
    return n


def empty_text(batch: int, cfg: DalleConfig, device: torch.device | None = None) -> torch.Tensor:
    """The empty caption's stream ``(B, text_len)``: ``<bos>`` then padding tokens only."""
    ids = torch.zeros(batch, 0, dtype=torch.long, device=device)
    return prepare_text(ids, torch.zeros(batch, dtype=torch.long, device=device), cfg)


# logit given to the other factors' ids at a factorised image position (finite: guidance
# subtracts two logits); exp(-1e4) is 0 in float32 and bfloat16
FACTOR_MASK = -1.0e4


class MLP(nn.Module):
    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, hidden)
        self.proj = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm transformer block with one attention mask kind."""

    def __init__(self, cfg: DalleConfig, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.spec = MaskSpec(
            kind, cfg.text_len, cfg.grid_size, cfg.grid_size, cfg.conv_kernel, cfg.factors
        )
        self.attn_norm = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg.d_model, cfg.n_heads, dropout=cfg.dropout)
        self.mlp_norm = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        # CogView's sandwich norm (ruDALL-E): one more LayerNorm on each branch's output
        sandwich = cfg.norm_placement == "sandwich"
        self.attn_out_norm = nn.LayerNorm(cfg.d_model) if sandwich else nn.Identity()
        self.mlp_out_norm = nn.LayerNorm(cfg.d_model) if sandwich else nn.Identity()
        self.attn_gs = ResblockGradScale(self.attn_norm, self.attn, self.attn_out_norm)
        self.mlp_gs = ResblockGradScale(self.mlp_norm, self.mlp, self.mlp_out_norm)
        self.drop = nn.Dropout(cfg.dropout)
        self.checkpointing = False

    def _attn(
        self, h: torch.Tensor, cache: KVCache | None, layer: int, start: int, backend: Backend
    ) -> torch.Tensor:
        y = self.attn(
            self.attn_norm(h), self.spec, cache=cache, layer=layer, start=start, backend=backend
        )
        return self.drop(self.attn_out_norm(y))

    def _mlp(self, h: torch.Tensor) -> torch.Tensor:
        return self.drop(self.mlp_out_norm(self.mlp(self.mlp_norm(h))))

    def forward(
        self,
        x: torch.Tensor,
        *,
        cache: KVCache | None = None,
        layer: int = 0,
        start: int = 0,
        backend: Backend = "sdpa",
    ) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled() and cache is None:
            return torch.utils.checkpoint.checkpoint(
                self._forward, x, cache, layer, start, backend, use_reentrant=False
            )
        return self._forward(x, cache, layer, start, backend)

    def _forward(
        self, x: torch.Tensor, cache: KVCache | None, layer: int, start: int, backend: Backend
    ) -> torch.Tensor:
        x = self.attn_gs.residual(x, self._attn, cache, layer, start, backend)
        return self.mlp_gs.residual(x, self._mlp)

    def step(
        self,
        x: torch.Tensor,
        bias_row: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        pos: torch.Tensor,
    ) -> torch.Tensor:
        """One decoding position, static shapes (:meth:`SelfAttention.step`); inference only."""
        x = x + self.attn_out_norm(
            self.attn.step(self.attn_norm(x), bias_row, k_cache, v_cache, pos)
        )
        return x + self.mlp_out_norm(self.mlp(self.mlp_norm(x)))


class DALLE(nn.Module):
    """The transformer prior. :meth:`forward` returns the training loss pieces; sampling uses
    :meth:`hidden` with a :class:`~tessera.nn.attention.KVCache` (see
    :mod:`tessera.sampling.sample`)."""

    def __init__(self, cfg: DalleConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.text_emb = nn.Embedding(cfg.text_table, d)
        self.image_emb = nn.Embedding(cfg.image_vocab, d)
        self.text_pos = nn.Parameter(torch.zeros(cfg.text_len, d))
        self.row_pos = nn.Parameter(torch.zeros(cfg.grid_size, d))
        self.col_pos = nn.Parameter(torch.zeros(cfg.grid_size, d))
        if cfg.factors > 1:  # a factorised image tokenizer: which factor a token is
            self.factor_pos = nn.Parameter(torch.zeros(cfg.factors, d))
            # (factors, image_vocab) additive logit bias: 0 on the factor's own ids
            bias = torch.full((cfg.factors, cfg.image_vocab), FACTOR_MASK)
            offset = 0
            for f, size in enumerate(cfg.image_factors):
                bias[f, offset : offset + size] = 0.0
                offset += size
            self.register_buffer("factor_bias", bias, persistent=False)
        kinds = (
            layer_kinds(cfg.n_layers, cfg.mask_schedule)
            if cfg.attention == "sparse"
            else [cfg.attention] * cfg.n_layers
        )
        self.blocks = nn.ModuleList(Block(cfg, k) for k in kinds)
        self.norm = nn.LayerNorm(d)
        if cfg.output_head == "separate":  # ruDALL-E's ``to_logits``: LayerNorm + Linear
            self.head_norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, cfg.text_table + cfg.image_vocab)
        self.backend: Backend = "auto"  # flex on CUDA, SDPA + dense mask elsewhere
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 0.02
        resid_std = std / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if p.device.type == "meta":
                continue
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(".bias") or name.endswith("norm.bias"):
                nn.init.zeros_(p)
            elif name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, std=resid_std)
            else:
                nn.init.normal_(p, std=std)

    def no_weight_decay(self) -> list[str]:
        """The learned position embeddings are embeddings (paper App. B.2: no decay on
        embeddings); they are plain parameters here, so the optimizer is told by name."""
        return ["text_pos", "row_pos", "col_pos", "factor_pos"]

    # -- pieces -----------------------------------------------------------------------------

    def image_positions(self) -> torch.Tensor:
        """``(image_len, d)`` row + column embeddings in raster order (plus the factor
        embedding, each position's factors in turn, with a factorised image tokenizer)."""
        g = self.config.grid_size
        pos = (self.row_pos[:, None, :] + self.col_pos[None, :, :]).reshape(g * g, -1)
        if self.config.factors == 1:
            return pos
        return (pos[:, None, :] + self.factor_pos[None, :, :]).flatten(0, 1)

    def embed(
        self, text: torch.Tensor | None, image: torch.Tensor | None, image_start: int = 0
    ) -> torch.Tensor:
        """Embeddings of a stream piece: text ``(B, text_len)`` (whole) and/or image tokens
        ``(B, n)`` at image indices ``image_start .. image_start + n``."""
        parts = []
        if text is not None:
            parts.append(self.text_emb(text) + self.text_pos[: text.shape[1]])
        if image is not None:
            n = image.shape[1]
            pos = self.image_positions()[image_start : image_start + n]
            parts.append(self.image_emb(image) + pos)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def hidden(
        self, x: torch.Tensor, *, cache: KVCache | None = None, start: int = 0
    ) -> torch.Tensor:
        """Run the blocks + final norm on embeddings ``x`` (B, t, d) at positions ``start..``."""
        for i, block in enumerate(self.blocks):
            x = block(x, cache=cache, layer=i, start=start, backend=self.backend)
        return self.norm(x)

    # F.linear (not ``h @ W.t()``): autocast caches the low-precision copy of a weight passed
    # to linear, so sampling does not re-cast the whole table at every token.
    def text_logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.config.output_head == "separate":
            n = self.config.text_table
            return F.linear(self.head_norm(h), self.head.weight[:n], self.head.bias[:n])
        return F.linear(h, self.text_emb.weight)

    def image_logits(
        self, h: torch.Tensor, index: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Image-token logits of hidden states ``h`` (..., d). With a factorised image
        tokenizer, ``index`` is the image index the (first) position of ``h`` predicts (an int
        or a 1-element tensor; ``h`` (B, d) or (B, n, d) for indices ``index .. index + n``):
        the other factors' ids get a large negative logit (finite, so guidance's difference
        of two masked logits stays finite)."""
        if self.config.output_head == "separate":
            n = self.config.text_table
            logits = F.linear(self.head_norm(h), self.head.weight[n:], self.head.bias[n:])
        else:
            logits = F.linear(h, self.image_emb.weight)
        if self.config.factors == 1:
            return logits
        if index is None:
            raise ValueError("a factorised model's image logits need the image index")
        f = self.config.factors
        if h.dim() == 3:
            idx = (
                torch.as_tensor(index, device=h.device).reshape(-1)[:1]
                + torch.arange(h.shape[1], device=h.device)
            ) % f
            return logits + self.factor_bias.index_select(0, idx).to(logits.dtype)
        idx = torch.as_tensor(index, device=h.device).reshape(-1)[:1] % f
        return logits + self.factor_bias.index_select(0, idx).to(logits.dtype)

    def new_cache(self, batch: int, *, dtype: torch.dtype | None = None) -> KVCache:
        cfg = self.config
        p = self.text_emb.weight
        if dtype is None and torch.is_autocast_enabled(p.device.type):
            dtype = torch.get_autocast_dtype(p.device.type)  # keys/values come out in it
        return KVCache.empty(
            n_layers=cfg.n_layers,
            batch=batch,
            n_heads=cfg.n_heads,
            max_len=cfg.seq_len,
            d_head=cfg.d_model // cfg.n_heads,
            dtype=dtype or p.dtype,
            device=p.device,
        )

    def decode_step(
        self,
        token: torch.Tensor,
        index: torch.Tensor,
        cache: KVCache,
        biases: torch.Tensor,
    ) -> torch.Tensor:
        """Image-token logits after feeding ``token`` (B,) at image index ``index`` (a
        1-element int64 tensor), with static shapes, so one compiled graph serves every index.

        The keys/values of stream position ``text_len + index`` are written into ``cache`` in
        place. biases: ``(n_layers, seq_len, seq_len)`` additive mask biases
        (:meth:`mask_biases`). Returns float32 ``(B, image_vocab)`` logits for index + 1.
        """
        pos = index + self.config.text_len
        x = self.image_emb(token) + self.image_positions().index_select(0, index)
        x = x[:, None]  # (B, 1, d)
        for i, block in enumerate(self.blocks):
            x = block.step(x, biases[i].index_select(0, pos), cache.k[i], cache.v[i], pos)
        return self.image_logits(self.norm(x[:, 0]), index + 1).float()

    def mask_biases(self, device: torch.device | None = None) -> torch.Tensor:
        """Every layer's additive mask bias, stacked: ``(n_layers, seq_len, seq_len)``."""
        device = device or self.text_emb.weight.device
        return torch.stack([block.spec.bias(device) for block in self.blocks])

    # -- training ---------------------------------------------------------------------------

    def forward(
        self, text: torch.Tensor, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced pass. text: (B, text_len) stream ids (:func:`prepare_text`);
        image: (B, grid**2) dVAE tokens. Returns (weighted loss, text CE, image CE), the CEs
        as means over their positions in nats."""
        cfg = self.config
        if text.shape[1] != cfg.text_len or image.shape[1] != cfg.image_len:
            raise ValueError(
                f"expected text (B, {cfg.text_len}) and image (B, {cfg.image_len}), got "
                f"{tuple(text.shape)} and {tuple(image.shape)}"
            )
        # The whole stream (seq_len positions) goes through the blocks although the last
        # position predicts nothing: every mask is causal, so it changes no other position,
        # and an even length (320 rather than 319) lets the CPU kernels vectorise whole rows
        # (compiled bf16 attention forward + backward, B 8, H 8, d_head 32: 31.2 -> 24.4 ms a
        # layer on 2 cores).
        x = self.embed(text, image)  # (B, text_len + image_len, d)
        h = self.hidden(x)[:, :-1]
        n_text = cfg.text_len - 1
        text_ce = F.cross_entropy(
            self.text_logits(h[:, :n_text]).float().flatten(0, 1), text[:, 1:].flatten()
        )
        image_ce = F.cross_entropy(
            self.image_logits(h[:, n_text:], 0).float().flatten(0, 1), image.flatten()
        )
        loss = cfg.loss_text_weight * text_ce + cfg.loss_image_weight * image_ce
        return loss, text_ce, image_ce

    def set_activation_checkpointing(self, enabled: bool) -> None:
        for block in self.blocks:
            block.checkpointing = enabled

    def fsdp_units(self) -> list[nn.Module]:
        """The modules a sharded data-parallel wrapper shards one at a time: each block. The
        rest (embeddings and the tied output tables, positions, final norm) is the root's."""
        return list(self.blocks)


def count_parameters(cfg: DalleConfig) -> int:
    """Parameters of a model of ``cfg``, counted on the meta device (no memory allocated)."""
    with torch.device("meta"):
        model = DALLE(cfg)
    return sum(p.numel() for p in model.parameters())
