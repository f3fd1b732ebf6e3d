"""Multi-head self-attention with an explicit mask, a KV cache and two backends.

- ``sdpa`` (everywhere; all CPU training and CI): ``F.scaled_dot_product_attention`` with the
  dense boolean mask of :mod:`tessera.nn.masks`. Backward works on every device.
- ``flex`` (CUDA training and prefill; ``auto``, the default, picks it on CUDA): compiled
  FlexAttention with a ``BlockMask`` built once per (mask kind, text_len, grid width,
  sequence length, device) and cached. FlexAttention has no backward on CPU (torch 2.13), so
  on CPU ``flex`` is only used by the parity test, in eager mode without gradients.

Incremental decoding uses the dense mask's matching row against the cached keys (so the
sparse pattern is respected while caching): written out on CPU for one-query steps, SDPA
elsewhere. :meth:`SelfAttention.step` is the static-shape form of one such step (the position
is a tensor, the keys are the whole cache, unwritten slots masked), which ``torch.compile``
turns into one graph for every position.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tessera.nn.masks import attention_mask, mask_mod

Backend = Literal["auto", "sdpa", "flex"]


@dataclasses.dataclass
class KVCache:
    """Keys and values of every layer, preallocated: one ``(B, H, max_len, d_head)`` tensor
    per layer in ``k`` and ``v`` (separate tensors, so a compiled decoding step updates each in
    place instead of copying a stacked cache back).

    Callers say where each forward writes (``start``); the cache holds no position of its own.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @classmethod
    def empty(
        cls,
        *,
        n_layers: int,
        batch: int,
        n_heads: int,
        max_len: int,
        d_head: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> KVCache:
        shape = (batch, n_heads, max_len, d_head)

        def zeros() -> list[torch.Tensor]:
            return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]

        return cls(zeros(), zeros())

    @property
    def dtype(self) -> torch.dtype:
        return self.k[0].dtype


@functools.lru_cache(maxsize=64)
def dense_mask(
    kind: str, text_len: int, h: int, w: int, conv_kernel: int, device: str, factors: int = 1
) -> torch.Tensor:
    """Cached ``(T, T)`` bool mask of :func:`tessera.nn.masks.attention_mask` on ``device``."""
    return attention_mask(
        kind,
        text_len,
        h,
        w,
        conv_kernel=conv_kernel,
        factors=factors,
        device=torch.device(device),
    )


@functools.lru_cache(maxsize=64)
def mask_bias(
    kind: str, text_len: int, h: int, w: int, conv_kernel: int, device: str, factors: int = 1
) -> torch.Tensor:
    """The dense mask as an additive float32 bias: 0 where allowed, -inf elsewhere (cached).
    Adding it is one fused pass; ``masked_fill(~mask)`` also builds the negated mask per call."""
    mask = dense_mask(kind, text_len, h, w, conv_kernel, device, factors)
    return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, float("-inf"))


@functools.lru_cache(maxsize=64)
def _block_mask(
    kind: str, text_len: int, w: int, conv_kernel: int, seq_len: int, device: str, factors: int = 1
):
    from torch.nn.attention.flex_attention import create_block_mask

    mod = mask_mod(kind, text_len, w, conv_kernel=conv_kernel, factors=factors)
    return create_block_mask(mod, None, None, seq_len, seq_len, device=device)


@functools.lru_cache(maxsize=2)
def _flex(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *, dropout: float = 0.0
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) masked) v, written out: the CPU training path.

    mask: bool (True = attend) or an additive float bias (0 / -inf, :func:`mask_bias`).
    On CPU, SDPA's fused backward with a boolean mask is slow at these sizes (measured 130 ms
    of a 2.2 s step for B=32, H=8, T=79, d=32, 8 layers: 47% of the step), while the written
    out form is a few batched matmuls (bf16 under autocast) and a float32 softmax, which
    ``torch.compile`` fuses with the scale and the bias into one pass.
    """
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, t, T)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))  # softmax in >= fp32
    bool_mask = mask.dtype == torch.bool
    scores = scores.masked_fill(~mask, float("-inf")) if bool_mask else scores + mask
    attn = torch.softmax(scores, dim=-1).to(v.dtype)
    if dropout > 0:
        attn = F.dropout(attn, p=dropout)
    return attn @ v


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """Which mask a layer uses: kind + the stream's geometry."""

    kind: str
    text_len: int
    grid_h: int
    grid_w: int
    conv_kernel: int = 11
    factors: int = 1  # image tokens per grid position (a factorised image tokenizer)

    def _key(self, device: torch.device) -> tuple[str, int, int, int, int, str, int]:
        """The cached mask builders' arguments (hashable: they are lru-cached)."""
        k = self.kind, self.text_len, self.grid_h, self.grid_w, self.conv_kernel
        return (*k, str(device), self.factors)

    def dense(self, device: torch.device) -> torch.Tensor:
        return dense_mask(*self._key(device))

    def bias(self, device: torch.device) -> torch.Tensor:
        return mask_bias(*self._key(device))


class SelfAttention(nn.Module):
    """Causal multi-head self-attention over a masked stream (fused QKV projection)."""

    def __init__(self, d_model: int, n_heads: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(
        self,
        x: torch.Tensor,
        spec: MaskSpec,
        *,
        cache: KVCache | None = None,
        layer: int = 0,
        start: int = 0,
        backend: Backend = "sdpa",
    ) -> torch.Tensor:
        """x: (B, t, d_model) for stream positions ``start .. start + t``.

        Without a cache ``start`` must be 0 and the stream attends within itself. With a cache
        the new keys/values are written at ``start`` and the queries attend to every cached
        position ``< start + t`` allowed by the mask.
        """
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, t, d_head)
        end = start + t
        if cache is not None:
            cache.k[layer][:, :, start:end] = k
            cache.v[layer][:, :, start:end] = v
            k = cache.k[layer][:, :, :end]
            v = cache.v[layer][:, :, :end]
        p = self.dropout if self.training else 0.0
        if backend == "auto":
            backend = "flex" if x.is_cuda else "sdpa"
        if backend == "flex" and cache is None and p == 0.0:  # flex has no attention dropout
            y = self._flex(q, k, v, spec)
        else:
            if q.device.type == "cpu" and (t == 1 or (torch.is_grad_enabled() and q.requires_grad)):
                # training, and one-query decoding steps (SDPA's fused CPU kernel costs ~130 us
                # a call there, about 2x the written-out form)
                bias = spec.bias(x.device)[start:end, :end]  # (t, end)
                y = masked_attention(q, k, v, bias, dropout=p)
            else:
                mask = spec.dense(x.device)[start:end, :end]  # (t, end)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(b, t, d)  # (B, t, d_model)
        return self.proj(y)

    def step(
        self,
        x: torch.Tensor,
        bias_row: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        pos: torch.Tensor,
    ) -> torch.Tensor:
        """One decoding position with static shapes: x ``(B, 1, d_model)`` at stream position
        ``pos`` (a 1-element int64 tensor); its key/value are written into the layer's cache
        ``(B, H, max_len, d_head)`` in place, and the query attends to every cache slot with
        ``bias_row`` ``(1, max_len)`` (the mask bias row of ``pos``, -inf on unwritten slots,
        which the causal mask already excludes)."""
        b = x.shape[0]
        qkv = self.qkv(x).view(b, 1, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, 1, d_head)
        k_cache.index_copy_(2, pos, k.to(k_cache.dtype))
        v_cache.index_copy_(2, pos, v.to(v_cache.dtype))
        y = masked_attention(q, k_cache, v_cache, bias_row)
        return self.proj(y.transpose(1, 2).reshape(b, 1, -1))

    def _flex(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: MaskSpec
    ) -> torch.Tensor:
        t = q.shape[2]
        block = _block_mask(
            spec.kind, spec.text_len, spec.grid_w, spec.conv_kernel, t, str(q.device), spec.factors
        )
        fn = _flex(compiled=q.device.type == "cuda")
        return fn(q, k, v, block_mask=block, scale=1.0 / math.sqrt(self.d_head))
