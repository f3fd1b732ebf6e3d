"""The unCLIP decoder (Ramesh et al. 2022 §2.1): a diffusion UNet conditioned on a CLIP image
embedding z_i and, optionally, the caption.

"We enable classifier-free guidance by randomly setting the CLIP embeddings to zero (or a
learned embedding) 10% of the time, and randomly dropping the text caption 50% of the time
during training." -- here z_i becomes a learned null embedding and a dropped caption becomes
all padding (whose per-position embeddings are learned, as in GLIDE).

"We ... projecting and adding CLIP embeddings to the existing timestep embedding, and by
projecting CLIP embeddings into four extra tokens of context that are concatenated to the
sequence of outputs from the GLIDE text encoder." -- ``clip_to_time`` and ``clip_to_tokens``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tessera.config.decoder import DecoderConfig
from tessera.models.clip import CLIPTextEncoder, empty_text_ids, text_mask
from tessera.models.unet import UNet
from tessera.nn import count_parameters
from tessera.nn.transformer import Transformer

PAD_ID = 0  # tessera's tokenizer pads with <pad> = 0, which never occurs inside a caption


class CaptionEncoder(nn.Module):
    """GLIDE's text path: token + position embeddings, padding replaced by a learned
    embedding per position, a bidirectional transformer, a final LayerNorm.

    Returns the sequence (B, L, width) and its last position (B, width), which sees the whole
    caption (GLIDE adds a projection of it to the timestep embedding)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        w, n = cfg.text_width, cfg.text_length
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.randn(n, w) * 0.01)
        self.padding_embedding = nn.Parameter(torch.randn(n, w) * 0.01)
        self.transformer = Transformer(w, cfg.text_layers, cfg.text_heads, 4, "gelu")
        self.ln_final = nn.LayerNorm(w)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.positional_embedding.shape[0]
        if ids.shape[1] > n:
            raise ValueError(f"captions of {ids.shape[1]} tokens exceed the decoder's {n}")
        ids = F.pad(ids, (0, n - ids.shape[1]), value=PAD_ID)  # (B, L)
        h = self.token_embedding(ids)
        pad = (ids == PAD_ID)[..., None]
        h = torch.where(pad, self.padding_embedding.to(h.dtype), h) + self.positional_embedding
        h = self.ln_final(self.transformer(h))
        return h, h[:, -1]


class Decoder(nn.Module):
    """``forward(x_t, t, clip_emb=..., text=...)`` -> the UNet's raw output (the diffusion
    config says how to read it). ``drop_clip`` / ``drop_text`` (B,) bool replace z_i by the
    null embedding / the caption by padding: the unconditional half of guidance."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.config = cfg
        ctx, emb_dim = cfg.unet.context_dim, cfg.unet.time_embed_dim
        self.unet = UNet(cfg.unet)
        self.null_clip = nn.Parameter(torch.zeros(cfg.clip_dim))
        self.clip_to_time = nn.Linear(cfg.clip_dim, emb_dim)
        self.clip_to_tokens = nn.Linear(cfg.clip_dim, cfg.clip_tokens * ctx)
        if cfg.text_encoder == "clip":  # Karlo: CLIP's text hidden states (see the config)
            assert cfg.clip_text is not None
            self.text = CLIPTextEncoder(cfg.clip_text)
            self.text.requires_grad_(False)  # frozen, as CLIP is
            self.text_to_time = nn.Linear(cfg.clip_text.embed_dim, emb_dim)
            self.text_to_context = nn.Linear(cfg.clip_text.text_width, ctx)
            self.text_norm = nn.LayerNorm(ctx)
        elif cfg.has_text:
            self.text = CaptionEncoder(cfg)
            self.text_to_time = nn.Linear(cfg.text_width, emb_dim)
            self.text_to_context = (
                nn.Identity() if cfg.text_width == ctx else nn.Linear(cfg.text_width, ctx)
            )

    def condition(
        self,
        clip_emb: torch.Tensor,
        text: torch.Tensor | None = None,
        *,
        drop_clip: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(timestep-embedding addition (B, emb_dim), context tokens (B, 4 + L, ctx)).

        clip_emb: (B, clip_dim), L2-normalised here and scaled by sqrt(clip_dim) so its
        entries have unit variance (a unit vector's entries are ~1/sqrt(d): the scale trap of
        DALLE2-pytorch #60). text: (B, L) caption ids or None (= dropped).
        With ``text_encoder="clip"`` see :meth:`condition_masked` (this drops its mask)."""
        emb, context, _ = self.condition_masked(
            clip_emb, text, drop_clip=drop_clip, drop_text=drop_text
        )
        return emb, context

    def condition_masked(
        self,
        clip_emb: torch.Tensor,
        text: torch.Tensor | None = None,
        *,
        drop_clip: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`condition` and the context's mask (B, 4 + L) bool, True = attend (None: every
        token is attended: the paper's decoder, whose padding has learned embeddings)."""
        cfg = self.config
        b = clip_emb.shape[0]
        if cfg.clip_input == "raw":  # Karlo reads CLIP's projection as it comes
            z = clip_emb.float()
        else:
            z = F.normalize(clip_emb.float(), dim=-1) * math.sqrt(cfg.clip_dim)
        if drop_clip is not None:
            z = torch.where(drop_clip.to(z.device)[:, None], self.null_clip[None].float(), z)
        z = z.to(self.clip_to_time.weight.dtype)
        emb = self.clip_to_time(z)
        context = self.clip_to_tokens(z).view(b, cfg.clip_tokens, -1)
        if cfg.text_encoder == "clip":
            return self._clip_text_condition(emb, context, text, drop_text)
        if cfg.has_text:
            if text is None:
                text = torch.zeros(b, 1, dtype=torch.long, device=z.device)
            elif drop_text is not None:
                text = torch.where(drop_text.to(text.device)[:, None], PAD_ID, text)
            seq, last = self.text(text.to(z.device))
            emb = emb + self.text_to_time(last)
            context = torch.cat([context, self.text_to_context(seq)], dim=1)
        return emb, context, None

    def _clip_text_condition(
        self,
        emb: torch.Tensor,
        context: torch.Tensor,
        text: torch.Tensor | None,
        drop_text: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Karlo's text path (diffusers' ``UnCLIPTextProjModel``): z_t projected into the
        timestep embedding; CLIP's final hidden states projected, layer-normed and appended to
        the image tokens, masked after the first ``<eos>``. No caption, or a dropped one, is
        CLIP's encoding of the empty text (Karlo's unconditional branch)."""
        ct = self.config.clip_text
        assert ct is not None
        b, device = emb.shape[0], emb.device
        empty = empty_text_ids(ct, b, ct.context_length, device)
        if text is None:
            ids = empty
        else:
            ids = F.pad(text.to(device), (0, ct.context_length - text.shape[1]), value=ct.eos_id)
            if drop_text is not None:
                ids = torch.where(drop_text.to(device)[:, None], empty, ids)
        hidden, z_t = self.text(ids)  # (B, L, width), (B, embed_dim)
        emb = emb + self.text_to_time(z_t.to(emb.dtype))
        seq = self.text_norm(self.text_to_context(hidden.to(emb.dtype)))  # (B, L, ctx)
        image_tokens = torch.ones(b, context.shape[1], dtype=torch.bool, device=device)
        mask = torch.cat([image_tokens, text_mask(ids, ct.eos_id)], dim=1)  # (B, 4 + L)
        return emb, torch.cat([context, seq], dim=1), mask

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        *,
        clip_emb: torch.Tensor,
        text: torch.Tensor | None = None,
        drop_clip: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_t: (B, 3, S, S) in the diffusion's [-1, 1] space; t: (B,) training timesteps."""
        emb, context, mask = self.condition_masked(
            clip_emb, text, drop_clip=drop_clip, drop_text=drop_text
        )
        return self.unet(x_t, t, emb=emb, context=context, context_mask=mask)


# Table 3 of the paper: the decoder's size (GLIDE's 3.5B model: its ~2.3B UNet and 1.2B text
# transformer), by preset name.
PAPER_PARAMETERS: dict[str, int] = {"unclip": 3_500_000_000}


def parameter_counts(cfg: DecoderConfig) -> dict[str, int]:
    """Parameters by part: ``unet``, ``caption_transformer`` (the whole caption path: token,
    position and padding embeddings, transformer, final norm; 0 without text),
    ``projections`` (the null embedding and the projections of z_i and of the caption into
    the timestep embedding and the context) and ``total``. Built on the meta device, so the
    paper's 3.5B size allocates nothing."""
    with torch.device("meta"):
        model = Decoder(cfg)
    unet = count_parameters(model.unet)
    text = count_parameters(model.text) if cfg.has_text else 0  # Karlo: CLIP's text tower
    total = count_parameters(model)
    return {
        "unet": unet,
        "caption_transformer": text,
        "projections": total - unet - text,
        "total": total,
    }
