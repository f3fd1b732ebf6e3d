"""CLIP (Radford et al. 2021): a ViT image encoder and a causal text transformer trained with
a symmetric contrastive (InfoNCE) loss; DALL·E reranks its samples with it (paper §2.5).

Module and parameter names follow OpenAI's released ``clip/model.py`` (``visual.conv1``,
``visual.class_embedding``, ``transformer.resblocks.N.attn.in_proj_weight``, ``ln_final``,
``text_projection``, ``logit_scale``, ...), so a state dict in that layout loads with
``load_state_dict(strict=True)`` (see :func:`config_from_openai_state_dict`).

- Image: ``[0, 1]`` pixels -> normalised -> ``patch x patch`` convolution (no bias) -> a class
  token prepended -> learned positions -> ``ln_pre`` -> pre-norm blocks -> ``ln_post`` of the
  class token -> ``@ visual.proj``.
- Text: token + learned position embeddings -> causal pre-norm blocks -> ``ln_final`` -> the
  hidden state at the (first) ``<eos>`` -> ``@ text_projection``.
- Both embeddings are L2-normalised; logits are ``exp(logit_scale) * cos``, with
  ``exp(logit_scale)`` clamped at ``logit_scale_max`` (paper: 100).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tessera.config.clip import CLIPConfig
from tessera.errors import ConfigError
from tessera.nn.masks import causal_mask
from tessera.nn.transformer import Transformer


def eos_positions(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """``(B,)`` index of the first ``eos_id`` in each row of ``ids`` (B, T); every row needs one
    (``TextTokenizer.encode_batch(..., add_eos=True)`` keeps it even when truncating)."""
    is_eos = ids == eos_id
    if not bool(is_eos.any(dim=1).all()):
        raise ValueError(f"every text must contain the end-of-text id {eos_id} (add_eos=True)")
    return is_eos.int().argmax(dim=1)  # argmax returns the first maximal index


def clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching pairs (row i of each is one pair).

    image_emb, text_emb: (N, D), L2-normalised; scale: the inverse temperature (a scalar).
    Returns the mean of the image->text and text->image cross-entropies, in nats (float32).
    """
    logits = scale * image_emb.float() @ text_emb.float().t()  # (N images, N texts)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def clip_loss_with_negatives(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    negative_emb: torch.Tensor,
    negative_mask: torch.Tensor,
    scale: torch.Tensor | float,
) -> torch.Tensor:
    """:func:`clip_loss` with hard negative captions (beyond the CLIP paper).

    negative_emb: (N, M, D) L2-normalised embeddings of M captions that contradict caption i
    in one claim; negative_mask: (N, M) bool, False where a slot is empty. Image i's
    image->text softmax runs over the N batch captions plus its own M negatives; the
    text->image direction is unchanged (negatives have no image). With no negative this equals
    :func:`clip_loss`.
    """
    img, txt = image_emb.float(), text_emb.float()
    logits = scale * img @ txt.t()  # (N, N)
    neg = scale * torch.einsum("nd,nmd->nm", img, negative_emb.float())  # (N, M)
    neg = neg.masked_fill(~negative_mask, float("-inf"))
    labels = torch.arange(logits.shape[0], device=logits.device)
    i2t = F.cross_entropy(torch.cat([logits, neg], dim=1), labels)
    return (i2t + F.cross_entropy(logits.t(), labels)) / 2


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward returns this rank's slice of the gradient summed
    over ranks (each rank's loss depends on every rank's features)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``(n, D)`` features in rank order (equal ``n`` on every rank);
    the identity in a single process.

    The gradient reaching this rank's slice is the sum over ranks of their losses' gradients;
    DDP then averages parameter gradients over ranks, so each update equals one process's
    update on the concatenated global batch (every rank computes the same global loss).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        w = cfg.vision_width
        self.conv1 = nn.Conv2d(3, w, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.grid_size**2 + 1, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(
            w, cfg.vision_layers, cfg.vision_heads, cfg.mlp_ratio, cfg.activation
        )
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.zeros(w, cfg.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B, 3, S, S) -> unnormalised image features (B, embed_dim)."""
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (B, grid**2, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj  # (B, embed_dim)


class CLIP(nn.Module):
    """The contrastive model. :meth:`forward` returns what the loss needs; :meth:`encode_image`
    and :meth:`encode_text` return L2-normalised embeddings (B, embed_dim)."""

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        self.config = cfg
        self.visual = VisionTransformer(cfg)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.text_width))
        self.transformer = Transformer(
            cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.mlp_ratio, cfg.activation
        )
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.zeros(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))
        # not in the state dict (OpenAI's layout has neither)
        self.register_buffer("attn_mask", ~causal_mask(cfg.context_length), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """OpenAI's initialisation (``CLIP.initialize_parameters``), applied to both towers'
        blocks: attention in-projections ``width**-0.5``, output projections
        ``width**-0.5 * (2 * layers)**-0.5``, MLP input ``(2 * width)**-0.5``."""
        if self.logit_scale.device.type == "meta":
            return
        cfg = self.config
        vw = cfg.vision_width**-0.5
        nn.init.normal_(self.visual.class_embedding, std=vw)
        nn.init.normal_(self.visual.positional_embedding, std=vw)
        nn.init.normal_(self.visual.proj, std=vw)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=cfg.text_width**-0.5)
        for tower, width, layers in (
            (self.visual.transformer, cfg.vision_width, cfg.vision_layers),
            (self.transformer, cfg.text_width, cfg.text_layers),
        ):
            proj_std = width**-0.5 * (2 * layers) ** -0.5
            for block in tower.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        with torch.no_grad():
            self.logit_scale.fill_(cfg.logit_scale_init)

    def no_weight_decay(self) -> list[str]:
        """Learned positions and the class token are embeddings: no weight decay."""
        return ["visual.class_embedding", "visual.positional_embedding", "positional_embedding"]

    # -- encoders ---------------------------------------------------------------------------

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) in [0, 1] at ``image_size`` -> unnormalised features (B, D)."""
        s = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (3, s, s) or not images.is_floating_point():
            raise ValueError(f"expected images (B, 3, {s}, {s}), got {tuple(images.shape)}")
        cfg = self.config
        mean = torch.tensor(cfg.image_mean, dtype=images.dtype, device=images.device)
        std = torch.tensor(cfg.image_std, dtype=images.dtype, device=images.device)
        x = (images - mean[:, None, None]) / std[:, None, None]
        return self.visual(x.to(self.visual.conv1.weight.dtype))

    def text_hidden_states(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(every position's final hidden state (B, T, text_width), after ``ln_final``;
        unnormalised features (B, D)): what Karlo's prior and decoder read (transformers'
        ``last_hidden_state`` and ``text_embeds``)."""
        return encode_text_tower(self, ids)

    def text_features(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T <= context_length), each row with an ``<eos>`` -> features (B, D)."""
        _check_ids(ids, self.config.context_length)
        pool = eos_positions(ids, self.config.eos_id)
        # Under the causal mask nothing after a row's <eos> reaches its pooled state: run only
        # the columns up to the last <eos> of the batch (the same numbers, less work).
        t = int(pool.max()) + 1
        ids = ids[:, :t]
        x = self.token_embedding(ids) + self.positional_embedding[:t]  # (B, T, width)
        x = self.ln_final(self.transformer(x, self.attn_mask[:t, :t]))
        return x[torch.arange(x.shape[0], device=x.device), pool] @ self.text_projection

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) in [0, 1] -> L2-normalised embeddings (B, embed_dim)."""
        return F.normalize(self.image_features(images), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> L2-normalised embeddings (B, embed_dim)."""
        return F.normalize(self.text_features(ids), dim=-1)

    def scale(self) -> torch.Tensor:
        """The inverse temperature ``exp(logit_scale)``, clamped at ``logit_scale_max`` (no
        gradient reaches ``logit_scale`` while it is clamped)."""
        return self.logit_scale.clamp(max=math.log(self.config.logit_scale_max)).exp()

    def forward(
        self, images: torch.Tensor, ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image embeddings (B, D), text embeddings (B, D), scale) for :func:`clip_loss`."""
        return self.encode_image(images), self.encode_text(ids), self.scale()

    def logits(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``scale * cos`` of every image with every text: (B images, B' texts)."""
        img, txt, scale = self(images, ids)
        return scale * img @ txt.t()


def _check_ids(ids: torch.Tensor, context_length: int) -> None:
    if ids.ndim != 2 or ids.shape[1] > context_length:
        raise ValueError(f"expected text ids (B, T <= {context_length}), got {tuple(ids.shape)}")


def encode_text_tower(tower: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The text tower of :class:`CLIP` or :class:`CLIPTextEncoder` (same parameter names) on
    ids (B, T): (hidden states (B, T, text_width) after ``ln_final``, at every position;
    unnormalised features (B, D) read at the first ``<eos>``). Causal: a position never sees
    the padding after it."""
    cfg = tower.config
    _check_ids(ids, cfg.context_length)
    pool = eos_positions(ids, cfg.eos_id)
    t = ids.shape[1]
    x = tower.token_embedding(ids) + tower.positional_embedding[:t]  # (B, T, width)
    x = tower.ln_final(tower.transformer(x, tower.attn_mask[:t, :t]))
    return x, x[torch.arange(x.shape[0], device=x.device), pool] @ tower.text_projection


def text_mask(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, T) bool, True up to and including each row's first ``eos_id``: the tokens a model
    reading CLIP's hidden states attends to (transformers' tokenizer ``attention_mask``)."""
    pool = eos_positions(ids, eos_id)
    return torch.arange(ids.shape[1], device=ids.device)[None] <= pool[:, None]


def empty_text_ids(cfg: CLIPConfig, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """(batch, length) ids of the empty caption as CLIP's tokenizer writes it: ``[<bos>]``
    (when the vocabulary has one), ``<eos>``, then ``<eos>`` as padding (OpenAI's BPE pads with
    it; what follows the first ``<eos>`` never reaches a pooled or attended state)."""
    ids = torch.full((batch, length), cfg.eos_id, dtype=torch.long, device=device)
    if cfg.bos_id is not None:
        ids[:, 0] = cfg.bos_id
    return ids


class CLIPTextEncoder(nn.Module):
    """CLIP's text tower alone, with :class:`CLIP`'s parameter names (``token_embedding``,
    ``positional_embedding``, ``transformer``, ``ln_final``, ``text_projection``): what a
    model that reads CLIP's text hidden states instead of its own caption encoder owns (Karlo's
    prior and decoder). ``forward(ids)`` -> :func:`encode_text_tower`."""

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        self.config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.text_width))
        self.transformer = Transformer(
            cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.mlp_ratio, cfg.activation
        )
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.zeros(cfg.text_width, cfg.embed_dim))
        self.register_buffer("attn_mask", ~causal_mask(cfg.context_length), persistent=False)
        if self.text_projection.device.type != "meta":
            nn.init.normal_(self.token_embedding.weight, std=0.02)
            nn.init.normal_(self.positional_embedding, std=0.01)
            nn.init.normal_(self.text_projection, std=cfg.text_width**-0.5)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_text_tower(self, ids)


TEXT_TOWER_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.")


def text_tower_state(clip: CLIP) -> dict[str, torch.Tensor]:
    """The text-tower entries of a :class:`CLIP`'s state dict, as :class:`CLIPTextEncoder`
    names them."""
    sd = clip.state_dict()
    return {k: v for k, v in sd.items() if k.startswith(TEXT_TOWER_KEYS) or k == "text_projection"}


def count_parameters(cfg: CLIPConfig) -> int:
    """Parameters of a model of ``cfg``, counted on the meta device (no memory allocated)."""
    with torch.device("meta"):
        model = CLIP(cfg)
    return sum(p.numel() for p in model.parameters())


# -- OpenAI's layout ------------------------------------------------------------------------

_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def config_from_openai_state_dict(sd: Mapping[str, torch.Tensor], **overrides: Any) -> CLIPConfig:
    """The config of a ViT state dict in OpenAI's layout, inferred as ``clip.model.build_model``
    does (64-wide heads; ``<eos>`` is the last vocabulary id). ``overrides`` win."""
    if "visual.proj" not in sd:
        raise ConfigError("not a ViT CLIP state dict in OpenAI's layout (no 'visual.proj')")

    def layers(prefix: str) -> int:  # prefix "a.b." -> distinct N of keys "a.b.N.*"
        return len({k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)})

    vw = sd["visual.conv1.weight"].shape[0]
    patch = sd["visual.conv1.weight"].shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    tw = sd["ln_final.weight"].shape[0]
    vocab = sd["token_embedding.weight"].shape[0]
    fields: dict[str, Any] = {
        "embed_dim": sd["text_projection"].shape[1],
        "image_size": patch * grid,
        "patch_size": patch,
        "vision_width": vw,
        "vision_layers": layers("visual.transformer.resblocks."),
        "vision_heads": max(vw // 64, 1),
        "vocab_size": vocab,
        "context_length": sd["positional_embedding"].shape[0],
        "text_width": tw,
        "text_layers": layers("transformer.resblocks."),
        "text_heads": max(tw // 64, 1),
        "eos_id": vocab - 1,
        **overrides,
    }
    return CLIPConfig(**fields)


def from_openai_state_dict(sd: Mapping[str, torch.Tensor], **overrides: Any) -> CLIP:
    """A :class:`CLIP` holding an OpenAI-layout ViT state dict (strict: no key left over)."""
    cfg = config_from_openai_state_dict(sd, **overrides)
    weights = {k: v for k, v in sd.items() if k not in _OPENAI_EXTRA_KEYS}
    model = CLIP(cfg)
    model.load_state_dict(weights, strict=True)
    return model


def check_compatible(cfg: CLIPConfig, tokenizer: Any) -> None:
    """One-line errors when a tokenizer's ids or context do not fit the model."""
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tokenizer.vocab_size} tokens; the CLIP model has "
            f"{cfg.vocab_size} (set model.vocab_size)"
        )
    if tokenizer.max_length > cfg.context_length:
        raise ConfigError(
            f"the tokenizer pads to {tokenizer.max_length} tokens; the CLIP model has "
            f"{cfg.context_length} positions (set model.context_length)"
        )
    if tokenizer.eos_id != cfg.eos_id:
        raise ConfigError(
            f"the tokenizer's <eos> id is {tokenizer.eos_id}; the model pools at {cfg.eos_id}"
        )
    adds_bos = bool(getattr(tokenizer.config, "add_bos", False))
    if adds_bos and tokenizer.bos_id != cfg.bos_id:
        raise ConfigError(
            f"the tokenizer starts texts with id {tokenizer.bos_id}; the model's bos_id is "
            f"{cfg.bos_id}"
        )
