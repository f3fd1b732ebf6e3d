"""The unCLIP priors (Ramesh et al. 2022 §2.2): caption y and CLIP text embedding z_t -> CLIP
image embedding z_i. Sampling lives in :mod:`tessera.sampling.prior`.

"For both the AR and diffusion priors ... we condition on the caption and CLIP text
embedding ... randomly dropping this text conditioning information 10% of the time during
training." -- a dropped caption becomes all padding (learned per position) and z_t a learned
null embedding, together.

**Embedding scale.** z_i and z_t are unit vectors, so their entries are ~ +-1/sqrt(D) (for
D = 512, about +-0.04: DALLE2-pytorch #60 found such inputs badly scaled for a diffusion
model whose noise has unit variance). The paper multiplies its embedding inputs by 17.2
"to match the empirical variance of RGB pixels scaled to [-1, 1]"; here every embedding is
L2-normalised and multiplied by sqrt(D), so its entries have unit mean square (the same
idea, with a scale that follows D: sqrt(1024) = 32 for ViT-H/16). The diffusion prior noises,
predicts and is trained on z_i in that space; samples are mapped back to unit norm.

**Diffusion prior.** "a decoder-only Transformer with a causal attention mask on a sequence
consisting of, in order: the encoded text, the CLIP text embedding, an embedding for the
diffusion timestep, the noised CLIP image embedding, and a final embedding whose output from
the Transformer is used to predict the unnoised CLIP image embedding."

**AR prior.** "we reduce the dimensionality of the CLIP image embeddings z_i by applying PCA
... we can preserve nearly all of the information by retaining only a subset of 319
principal components ... we order the principal components by decreasing eigenvalue
magnitude, quantize each of the 319 dimensions into 1,024 discrete buckets, and predict the
resulting sequence using a Transformer model with a causal attention mask ... we prepend a
token indicating the (quantized) dot product between the text embedding and image
embedding, z_i . z_t." The PCA, the bucket edges and the dot-product buckets are fitted once
(:meth:`ARPrior.fit`) and live in the state dict as buffers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tessera.config.prior import ARPriorConfig, PriorConfig
from tessera.models.clip import CLIPTextEncoder, empty_text_ids, text_mask
from tessera.nn import count_parameters
from tessera.nn.masks import causal_mask
from tessera.nn.transformer import Transformer
from tessera.nn.unet import timestep_embedding

PAD_ID = 0  # tessera's tokenizer pads with <pad> = 0, which never occurs inside a caption

__all__ = [
    "PAD_ID",
    "PAPER_PARAMETERS",
    "ARPrior",
    "DiffusionPrior",
    "blocked_mask",
    "dequantise",
    "fit_pca",
    "parameter_counts",
    "pca_component_count",
    "quantile_bins",
    "quantise",
    "scale_embedding",
    "unscale_embedding",
]


# -- pure functions ----------------------------------------------------------------------------


def blocked_mask(n: int, *, device: torch.device | None = None) -> torch.Tensor:
    """(n, n) bool, True where query i may NOT attend to key j (j > i): the priors' causal
    mask in ``nn.MultiheadAttention``'s convention. The last position (the query) sees all."""
    return ~causal_mask(n, device=device)


def scale_embedding(z: torch.Tensor) -> torch.Tensor:
    """CLIP embeddings (B, D), any norm -> L2-normalised x sqrt(D): entries of unit mean
    square (float32)."""
    return F.normalize(z.float(), dim=-1) * math.sqrt(z.shape[-1])


def unscale_embedding(x: torch.Tensor) -> torch.Tensor:
    """The prior's space (B, D) -> unit-norm embeddings (the inverse of
    :func:`scale_embedding` on its image)."""
    return F.normalize(x.float(), dim=-1)


def pca_component_count(eigenvalues: torch.Tensor, max_error: float) -> tuple[int, float]:
    """The fewest k leading components (eigenvalues in decreasing order) whose PCA
    reconstruction loses less than ``max_error`` of the variance: the relative squared error
    sum_{j>k} lambda_j / sum_j lambda_j (= sum_n ||z_n - recon_k(z_n)||^2 /
    sum_n ||z_n - mean||^2 on the fit set). Returns (k, its relative error)."""
    lam = eigenvalues.double().clamp(min=0)
    total = float(lam.sum())
    if total <= 0:
        return 1, 0.0
    lost = (total - lam.cumsum(0)) / total  # lost[k-1]: error keeping k components
    below = torch.nonzero(lost < max_error)
    k = int(below[0]) + 1 if below.numel() else lam.numel()
    return k, float(lost[k - 1].clamp(min=0))


def fit_pca(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA of rows z (N, D): (mean (D,), components (D, D) as rows in decreasing-eigenvalue
    order, eigenvalues (D,) decreasing), in float64 then float32."""
    z64 = z.double()
    mean = z64.mean(0)
    cov = (z64 - mean).T @ (z64 - mean) / max(z64.shape[0] - 1, 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    order = torch.argsort(evals, descending=True)
    comps = evecs[:, order].T
    # a deterministic sign per component: its largest-magnitude entry positive
    sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    comps = comps * torch.where(sign == 0, 1.0, sign)
    return mean.float(), comps.float(), evals[order].float()


def quantile_bins(x: torch.Tensor, buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantile bins of each column of x (N, K): (edges (K, buckets - 1) at the quantiles
    i / buckets, centres (K, buckets) at the quantiles (i + 1/2) / buckets: each bucket's
    median), so every bucket holds ~N / buckets training values."""
    x = x.double()
    q_edges = torch.arange(1, buckets, dtype=torch.float64) / buckets
    q_centres = (torch.arange(buckets, dtype=torch.float64) + 0.5) / buckets
    edges = torch.quantile(x, q_edges.to(x.device), dim=0).T.contiguous()
    centres = torch.quantile(x, q_centres.to(x.device), dim=0).T.contiguous()
    return edges.float(), centres.float()


def quantise(x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Values x (B, K) -> bucket ids (B, K) int64 in [0, buckets) given edges (K, buckets-1)."""
    k = x.shape[-1]
    ids = torch.searchsorted(edges[:k].contiguous(), x.T.contiguous().float(), right=True)
    return ids.T.contiguous()  # (B, K)


def dequantise(ids: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Bucket ids (B, K) -> the buckets' centre values (B, K) given centres (K, buckets)."""
    k = ids.shape[-1]
    return centres[:k].gather(1, ids.T).T


# -- shared parts --------------------------------------------------------------------------------


class CaptionTokens(nn.Module):
    """Caption ids (B, L <= text_length) -> token + position embeddings (B, text_length, w),
    padding (``<pad>`` = 0, also every dropped caption) replaced by a learned embedding per
    position (GLIDE)."""

    def __init__(self, vocab_size: int, length: int, width: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(length, width) * 0.01)
        self.padding_embedding = nn.Parameter(torch.randn(length, width) * 0.01)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, ids: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        n = self.positional_embedding.shape[0]
        if ids.shape[1] > n:
            raise ValueError(f"captions of {ids.shape[1]} tokens exceed the prior's {n}")
        ids = F.pad(ids, (0, n - ids.shape[1]), value=PAD_ID)  # (B, n)
        if drop is not None:
            ids = torch.where(drop.to(ids.device)[:, None], PAD_ID, ids)
        h = self.token_embedding(ids)
        pad = (ids == PAD_ID)[..., None]
        return torch.where(pad, self.padding_embedding.to(h.dtype), h) + self.positional_embedding


def _text_condition(
    z_t: torch.Tensor, null: torch.Tensor, drop: torch.Tensor | None
) -> torch.Tensor:
    """z_t (B, D) scaled; dropped rows replaced by the learned null (scaled space)."""
    z = scale_embedding(z_t)
    if drop is not None:
        z = torch.where(drop.to(z.device)[:, None], null[None].float(), z)
    return z


# -- the diffusion prior -------------------------------------------------------------------------


class DiffusionPrior(nn.Module):
    """``forward(z_noisy, t, text=..., z_t=..., drop=None)`` -> the predicted unnoised z_i
    (B, D) in the sqrt(D)-scaled space. Sequence (B, L + 4, width): [caption tokens (L), z_t,
    timestep, noised z_i, query], causal."""

    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        self.config = cfg
        w, d = cfg.width, cfg.clip_dim
        if cfg.text_encoder == "clip":  # Karlo: CLIP's text hidden states (see the config)
            assert cfg.clip_text is not None
            self.text = CLIPTextEncoder(cfg.clip_text)
            self.text.requires_grad_(False)  # frozen, as CLIP is
            self.text_hidden_proj = nn.Linear(cfg.clip_text.text_width, w)
            self.text_positional = nn.Parameter(torch.randn(cfg.text_length, w) * 0.01)
        else:
            self.text = CaptionTokens(cfg.vocab_size, cfg.text_length, w)
            self.null_text_embed = nn.Parameter(torch.zeros(d))  # the dropped z_t, scaled space
        if cfg.embedding_space == "standardized":  # Karlo's CLIP statistics, stored with it
            self.register_buffer("clip_mean", torch.zeros(d))
            self.register_buffer("clip_std", torch.ones(d))
        self.text_embed_proj = nn.Linear(d, w)
        self.time_embed = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.noisy_proj = nn.Linear(d, w)
        self.query = nn.Parameter(torch.randn(w) * 0.02)
        self.slot_embedding = nn.Parameter(torch.randn(4, w) * 0.01)  # z_t, t, z_i^(t), query
        self.transformer = Transformer(w, cfg.layers, cfg.heads, 4, "gelu")
        self.ln_out = nn.LayerNorm(w)
        self.out_proj = nn.Linear(w, d)
        n = cfg.text_length + 4
        self.register_buffer("attn_mask", blocked_mask(n), persistent=False)

    def no_weight_decay(self) -> list[str]:
        if self.config.text_encoder == "clip":
            return ["text_positional", "slot_embedding", "query"]
        return [
            "text.positional_embedding",
            "text.padding_embedding",
            "slot_embedding",
            "query",
            "null_text_embed",
        ]

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """A sample of the diffusion (B, D) -> the CLIP image embedding it stands for: unit norm
        (``sqrt_dim``), or CLIP's unnormalised embedding x * std + mean (``standardized``)."""
        if self.config.embedding_space == "standardized":
            return x.float() * self.clip_std + self.clip_mean
        return unscale_embedding(x)

    def forward(
        self,
        z_noisy: torch.Tensor,
        t: torch.Tensor,
        *,
        text: torch.Tensor,
        z_t: torch.Tensor,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z_noisy: (B, D) the diffusion state (scaled space); t: (B,) training timesteps;
        text: (B, L) caption ids; z_t: (B, D) CLIP text embeddings (any norm; scaled here;
        with ``text_encoder="clip"`` the prior computes z_t from ``text`` itself);
        drop: (B,) bool, True drops caption and z_t (guidance's unconditional half)."""
        if self.config.text_encoder == "clip":
            return self._forward_clip_text(z_noisy, t, text, drop)
        b = z_noisy.shape[0]
        dtype = self.noisy_proj.weight.dtype
        cap = self.text(text.to(z_noisy.device), drop)  # (B, L, w)
        zt = _text_condition(z_t.to(z_noisy.device), self.null_text_embed, drop)
        temb = timestep_embedding(t, self.config.width).to(dtype)
        tail = torch.stack(
            [
                self.text_embed_proj(zt.to(dtype)),
                self.time_embed(temb),
                self.noisy_proj(z_noisy.to(dtype)),
                self.query.to(dtype).expand(b, -1),
            ],
            dim=1,
        ) + self.slot_embedding.to(dtype)  # (B, 4, w)
        h = torch.cat([cap.to(tail.dtype), tail], dim=1)  # (B, L + 4, w)
        h = self.transformer(h, self.attn_mask)
        return self.out_proj(self.ln_out(h[:, -1]))  # (B, D)

    def _forward_clip_text(
        self,
        z_noisy: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        drop: torch.Tensor | None,
    ) -> torch.Tensor:
        """Karlo's prior (diffusers' ``PriorTransformer``): [projected CLIP hidden states (L),
        z_t, timestep, noised z_i, query] + one learned position table, causal, the caption's
        padding masked as keys; a dropped row reads CLIP's encoding of the empty text."""
        cfg = self.config
        ct = cfg.clip_text
        assert ct is not None
        b, device = z_noisy.shape[0], z_noisy.device
        dtype = self.noisy_proj.weight.dtype
        ids = F.pad(text.to(device), (0, ct.context_length - text.shape[1]), value=ct.eos_id)
        if drop is not None:
            empty = empty_text_ids(ct, b, ct.context_length, device)
            ids = torch.where(drop.to(device)[:, None], empty, ids)
        hidden, z_t = self.text(ids)  # (B, L, width), (B, D) unnormalised
        cap = self.text_hidden_proj(hidden.to(dtype)) + self.text_positional.to(dtype)
        temb = timestep_embedding(t, cfg.width).to(dtype)
        tail = torch.stack(
            [
                self.text_embed_proj(z_t.to(dtype)),
                self.time_embed(temb),
                self.noisy_proj(z_noisy.to(dtype)),
                self.query.to(dtype).expand(b, -1),
            ],
            dim=1,
        ) + self.slot_embedding.to(dtype)  # (B, 4, w)
        h = torch.cat([cap, tail], dim=1)  # (B, L + 4, w)
        tail_keys = torch.ones(b, 4, dtype=torch.bool, device=device)
        keys = torch.cat([text_mask(ids, ct.eos_id), tail_keys], dim=1)  # (B, n), True = key
        blocked = self.attn_mask[None] | ~keys[:, None, :]  # (B, n, n), True = blocked
        blocked = blocked.repeat_interleave(cfg.heads, dim=0)  # (B * heads, n, n)
        h = self.transformer(h, blocked)
        return self.out_proj(self.ln_out(h[:, -1]))  # (B, D)


# -- the autoregressive prior ------------------------------------------------------------------


class ARPrior(nn.Module):
    """``forward(text, z_t, dot=None, comps=None, drop=None)`` -> (dot-product logits
    (B, dot_buckets) read at z_t's position, component logits (B, k + 1, buckets) read at the
    dot token's and each component's position, or None without ``dot``). Sequence: [caption
    tokens (L), z_t, dot token, component tokens c_1..c_k], causal.

    Buffers (in the state dict): ``pca_mean`` (D,), ``pca_components`` (max_components, D),
    ``bucket_edges`` (max_components, buckets - 1), ``bucket_centres`` (max_components,
    buckets), ``dot_edges`` (dot_buckets - 1,), ``n_components`` (the fitted count, 0 before
    :meth:`fit`) and ``pca_error`` (its relative squared reconstruction error on the fit set).
    """

    def __init__(self, cfg: ARPriorConfig) -> None:
        super().__init__()
        self.config = cfg
        w, d, k = cfg.width, cfg.clip_dim, cfg.max_components
        self.text = CaptionTokens(cfg.vocab_size, cfg.text_length, w)
        self.null_text_embed = nn.Parameter(torch.zeros(d))
        self.text_embed_proj = nn.Linear(d, w)
        self.dot_embedding = nn.Embedding(cfg.dot_buckets, w)
        self.component_embedding = nn.Embedding(cfg.buckets, w)
        self.component_position = nn.Parameter(torch.randn(k, w) * 0.01)
        self.slot_embedding = nn.Parameter(torch.randn(2, w) * 0.01)  # z_t, dot
        self.transformer = Transformer(w, cfg.layers, cfg.heads, 4, "gelu")
        self.ln_out = nn.LayerNorm(w)
        self.dot_head = nn.Linear(w, cfg.dot_buckets)
        self.component_head = nn.Linear(w, cfg.buckets)
        nn.init.normal_(self.dot_embedding.weight, std=0.02)
        nn.init.normal_(self.component_embedding.weight, std=0.02)
        self.register_buffer("pca_mean", torch.zeros(d))
        self.register_buffer("pca_components", torch.zeros(k, d))
        self.register_buffer("bucket_edges", torch.zeros(k, cfg.buckets - 1))
        self.register_buffer("bucket_centres", torch.zeros(k, cfg.buckets))
        self.register_buffer("dot_edges", torch.zeros(cfg.dot_buckets - 1))
        self.register_buffer("n_components", torch.zeros((), dtype=torch.long))
        self.register_buffer("pca_error", torch.zeros(()))
        n = cfg.text_length + 2 + k
        self.register_buffer("attn_mask", blocked_mask(n), persistent=False)

    def no_weight_decay(self) -> list[str]:
        return [
            "text.positional_embedding",
            "text.padding_embedding",
            "slot_embedding",
            "component_position",
            "null_text_embed",
        ]

    # -- the fitted codebook ---------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return int(self.n_components) > 0

    @property
    def components(self) -> int:
        """The number of component tokens (the fitted count)."""
        if not self.fitted:
            raise RuntimeError("the AR prior's PCA is not fitted (ARPrior.fit)")
        return int(self.n_components)

    @torch.no_grad()
    def fit(self, z_i: torch.Tensor, z_t: torch.Tensor) -> dict[str, float]:
        """Fit the PCA, the component buckets and the dot-product buckets on training
        embeddings z_i, z_t (N, D) (unit norm). Returns the fitted count and error."""
        cfg = self.config
        z_i, z_t = F.normalize(z_i.float(), dim=-1), F.normalize(z_t.float(), dim=-1)
        mean, comps, evals = fit_pca(z_i.cpu())
        k, err = pca_component_count(evals, cfg.pca_error)
        k = min(k, cfg.max_components)
        err = float(evals[k:].clamp(min=0).sum() / evals.clamp(min=0).sum())
        proj = (z_i.cpu() - mean) @ comps[:k].T  # (N, k)
        edges, centres = quantile_bins(proj, cfg.buckets)
        dot_edges, _ = quantile_bins((z_i * z_t).sum(-1, keepdim=True).cpu(), cfg.dot_buckets)
        dev = self.pca_mean.device
        self.pca_mean.copy_(mean.to(dev))
        self.pca_components.zero_()
        self.pca_components[:k].copy_(comps[:k].to(dev))
        self.bucket_edges.zero_()
        self.bucket_edges[:k].copy_(edges.to(dev))
        self.bucket_centres.zero_()
        self.bucket_centres[:k].copy_(centres.to(dev))
        self.dot_edges.copy_(dot_edges[0].to(dev))
        self.n_components.fill_(k)
        self.pca_error.fill_(err)
        return {"components": k, "pca_error": err}

    def encode(self, z_i: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, D) -> component tokens (B, k) int64 (unit-normalised first)."""
        k = self.components
        z = F.normalize(z_i.float(), dim=-1)
        proj = (z - self.pca_mean) @ self.pca_components[:k].T
        return quantise(proj, self.bucket_edges[:k])

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Component tokens (B, k) -> unit-norm image embeddings (B, D): bucket centres ->
        PCA inverse -> L2 normalisation."""
        k = tokens.shape[1]
        proj = dequantise(tokens, self.bucket_centres[:k])
        return F.normalize(self.pca_mean + proj @ self.pca_components[:k], dim=-1)

    def dot_token(self, z_i: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        """The quantised z_i . z_t (B,) int64 in [0, dot_buckets) (both unit-normalised)."""
        dot = (F.normalize(z_i.float(), dim=-1) * F.normalize(z_t.float(), dim=-1)).sum(-1)
        return torch.searchsorted(self.dot_edges, dot.contiguous(), right=True)

    # -- the network -----------------------------------------------------------------------------
    def forward(
        self,
        text: torch.Tensor,
        z_t: torch.Tensor,
        dot: torch.Tensor | None = None,
        comps: torch.Tensor | None = None,
        *,
        drop: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """text: (B, L) caption ids; z_t: (B, D); dot: (B,) dot token or None; comps:
        (B, k) component tokens so far (k >= 0) or None; drop: (B,) bool drops caption and
        z_t. Teacher forcing passes c_1..c_{K-1} and gets the logits of c_1..c_K."""
        device = z_t.device
        dtype = self.text_embed_proj.weight.dtype
        cap = self.text(text.to(device), drop)  # (B, L, w)
        zt = _text_condition(z_t, self.null_text_embed, drop)
        parts = [
            cap.to(dtype),
            (self.text_embed_proj(zt.to(dtype)) + self.slot_embedding[0])[:, None],
        ]
        if dot is not None:
            parts.append((self.dot_embedding(dot.to(device)) + self.slot_embedding[1])[:, None])
            if comps is not None and comps.shape[1]:
                k = comps.shape[1]
                if k >= self.config.max_components:
                    raise ValueError(
                        f"{k} component tokens: the prior predicts at most "
                        f"{self.config.max_components}"
                    )
                parts.append(
                    self.component_embedding(comps.to(device)) + self.component_position[:k]
                )
        h = torch.cat(parts, dim=1)  # (B, n, w)
        n = h.shape[1]
        h = self.ln_out(self.transformer(h, self.attn_mask[:n, :n]))
        length = self.config.text_length
        dot_logits = self.dot_head(h[:, length])
        comp_logits = self.component_head(h[:, length + 1 :]) if dot is not None else None
        return dot_logits, comp_logits


# Table 3 of the paper: both priors are "1B" (by preset name).
PAPER_PARAMETERS: dict[str, int] = {"unclip": 1_000_000_000}


def parameter_counts(cfg: PriorConfig | ARPriorConfig) -> dict[str, int]:
    """Parameters by part: ``transformer`` (the blocks), ``caption_embeddings`` (token,
    position and padding embeddings), ``other`` (projections, null embedding, query / token
    embeddings, heads, final norm) and ``total``; buffers are not parameters. Built on the
    meta device, so the paper's ~1B sizes allocate nothing."""
    with torch.device("meta"):
        model = DiffusionPrior(cfg) if isinstance(cfg, PriorConfig) else ARPrior(cfg)
    blocks = count_parameters(model.transformer)
    caption = count_parameters(model.text)
    total = count_parameters(model)
    return {
        "transformer": blocks,
        "caption_embeddings": caption,
        "other": total - blocks - caption,
        "total": total,
    }
