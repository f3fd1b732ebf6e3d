"""The KV-cached autoregressive loop of DALL·E's prior: text (+ image prompt) -> image tokens.

One forward pass over the text (and any kept image-prompt tokens) fills the cache; then each
new image token costs one single-position pass whose attention reads the cached keys allowed by
its layer's mask row. Classifier-free guidance runs the conditional and the unconditional
(empty-caption) streams as one batch of ``2B`` and mixes their logits:
``uncond + scale * (cond - uncond)``.

With ``compile=True`` the per-token work (the blocks, the head, guidance, the filters and the
draw from given uniforms) is one ``torch.compile`` graph with static shapes
(:meth:`~tessera.models.dalle.DALLE.decode_step`) and the weights frozen into it as constants
(inductor's ``freezing``: under bf16 autocast the weights are cast and packed for the matmul
kernels once, not at every token). One graph is compiled per (model weights, batch, settings,
autocast dtype), a one-off cost of tens of seconds on CPU; it is rebuilt when the weights
change. The uniforms come from the same generator in the same order, so a compiled run draws
the eager run's tokens up to floating-point rounding of the logits.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from typing import Any

import torch

from tessera.config.sampling import DalleSampling
from tessera.errors import CompileError
from tessera.models.dalle import DALLE, empty_text
from tessera.nn.attention import KVCache
from tessera.sampling.filters import filter_logits, sample_with


def next_token(logits: torch.Tensor, u: torch.Tensor, s: DalleSampling) -> torch.Tensor:
    """Guidance (the first half of the rows conditional, the second unconditional), the
    filters, then one draw per row from uniforms ``u`` ``(B, 1)``; guided: the tokens for both
    halves. Shared by the eager loop and the compiled step."""
    guided = s.guidance != 1.0
    if guided:
        b = logits.shape[0] // 2
        cond, uncond = logits[:b], logits[b:]
        logits = uncond + s.guidance * (cond - uncond)
    logits = filter_logits(
        logits, temperature=s.temperature, k=s.top_k, p=s.top_p, threshold=s.threshold
    )
    nxt = sample_with(logits, u)
    return torch.cat([nxt, nxt]) if guided else nxt


StepFn = Callable[..., torch.Tensor]
# model -> {key: compiled step}; weak, so a dropped model frees its graphs
_COMPILED: weakref.WeakKeyDictionary[DALLE, dict[tuple[Any, ...], StepFn]] = (
    weakref.WeakKeyDictionary()
)


def _weights_key(model: DALLE) -> tuple[Any, ...]:
    """Changes whenever a parameter is replaced or updated in place (a frozen graph holds the
    weights it was compiled with)."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


class _DecodeStep(torch.nn.Module):
    """The per-token work as a module, so inductor's freezing sees the weights as the module's
    constants (a closure over the model would pass them as graph inputs and cast them at every
    token). ``serial`` is unique per instance and read in ``forward``, so dynamo guards on it:
    a graph frozen with one model's weights is never reused for another instance (dynamo
    otherwise matches modules by type)."""

    _serials = itertools.count()

    def __init__(
        self, model: DALLE, s: DalleSampling, device_type: str, ac_dtype: torch.dtype | None
    ) -> None:
        super().__init__()
        self.model = model
        self.settings = s
        self.device_type = device_type
        self.ac_dtype = ac_dtype
        self.serial = next(self._serials)

    def forward(
        self,
        token: torch.Tensor,
        index: torch.Tensor,
        u: torch.Tensor,
        k: list[torch.Tensor],
        v: list[torch.Tensor],
        biases: torch.Tensor,
    ) -> torch.Tensor:
        if self.serial < 0:  # never; makes the serial part of the graph's guards
            raise AssertionError
        with torch.autocast(
            self.device_type, dtype=self.ac_dtype, enabled=self.ac_dtype is not None
        ):
            logits = self.model.decode_step(token, index, KVCache(k, v), biases)
        return next_token(logits, u, self.settings)


def _first_step(
    step: StepFn,
    token: torch.Tensor,
    index: torch.Tensor,
    u: torch.Tensor,
    cache: KVCache,
    biases: torch.Tensor,
) -> torch.Tensor:
    """A batch's first compiled step: compiles (if needed) and checks the guards. Inductor's
    ``freezing`` folds the weights (and their casts and packing) into the graph; it is read
    from the global config at compile time (torch.compile's ``options=`` does not reach it).
    A compiler failure is one line saying how to go on without it."""
    import torch._inductor.config as inductor_config

    try:
        with inductor_config.patch(freezing=True):
            return step(token, index, u, cache.k, cache.v, biases)
    except Exception as e:  # inductor / dynamo raise many kinds; none is the user's data
        raise CompileError.failed(
            "compiling the sampling step",
            e,
            "sample without compile (drop --compile / DalleSampling.compile)",
        ) from e


def compiled_step(model: DALLE, batch: int, s: DalleSampling, cache: KVCache) -> StepFn:
    """The compiled ``(token, index, u, k, v, biases) -> next token`` step for this model,
    batch (rows, guided streams included), settings and the caller's autocast state."""
    device = model.text_emb.weight.device
    ac = torch.is_autocast_enabled(device.type)
    ac_dtype = torch.get_autocast_dtype(device.type) if ac else None
    filters = (s.temperature, s.top_k, s.top_p, s.threshold, s.guidance)
    key = (_weights_key(model), batch, filters, ac_dtype, cache.dtype, str(device))
    graphs = _COMPILED.setdefault(model, {})
    fn = graphs.get(key)
    if fn is None:
        for old in [k for k in graphs if k[0] != key[0]]:  # stale weights: drop their graphs
            del graphs[old]

        step = _DecodeStep(model, s, device.type, ac_dtype)
        fn = torch.compile(step, dynamic=False, fullgraph=True)
        graphs[key] = fn
    return fn


@torch.no_grad()
def generate_image_tokens(
    model: DALLE,
    text: torch.Tensor,
    *,
    settings: DalleSampling | None = None,
    prefix: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample ``(B, image_len)`` image tokens for text streams ``(B, text_len)``.

    prefix: ``(B, R)`` image tokens to keep (an image prompt's first rows, raster order);
      sampling continues from index ``R``.
    generator: the source of every random draw (one uniform per sampled token and stream).
    """
    s = settings or DalleSampling()
    cfg = model.config
    b = text.shape[0]
    n = cfg.image_len
    device = text.device
    prefix = prefix if prefix is not None else torch.zeros(b, 0, dtype=torch.long, device=device)
    if prefix.shape[0] != b or prefix.shape[1] > n:
        raise ValueError(f"prefix must be (B={b}, <= {n}) tokens, got {tuple(prefix.shape)}")
    guided = s.guidance != 1.0
    if guided:
        text = torch.cat([text, empty_text(b, cfg, device)], dim=0)
        prefix = torch.cat([prefix, prefix], dim=0)
    tokens = prefix
    r = prefix.shape[1]
    if r == n:
        return tokens[:b]

    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache(text.shape[0]) if s.use_cache else None
        x = model.embed(text, tokens if r else None)
        h = model.hidden(x, cache=cache)[:, -1]  # (B', d): predicts image token r
        logits = model.image_logits(h, r).float()  # (B', V)
        rows = text.shape[0]
        u = torch.rand(b, 1, generator=generator, device=device)
        nxt = next_token(logits, u, s)  # (B',)
        out = [tokens, nxt[:, None]]
        if s.compile and r + 1 < n:
            assert cache is not None
            step = compiled_step(model, rows, s, cache)
            biases = model.mask_biases(device)
            for i in range(r, n - 1):
                u = torch.rand(b, 1, generator=generator, device=device)
                index = torch.tensor([i], device=device)
                # The first step compiles and checks the guards; later steps differ only in the
                # values of index / token / u, so their guard evaluation is skipped.
                if i == r:
                    nxt = _first_step(step, nxt, index, u, cache, biases)
                else:
                    with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                        nxt = step(nxt, index, u, cache.k, cache.v, biases)
                out.append(nxt[:, None])
            return torch.cat(out, dim=1)[:b]
        for i in range(r, n - 1):
            if cache is not None:
                x = model.embed(None, nxt[:, None], image_start=i)
                h = model.hidden(x, cache=cache, start=cfg.text_len + i)[:, -1]
            else:
                seq = torch.cat(out, dim=1)
                h = model.hidden(model.embed(text, seq))[:, -1]
            u = torch.rand(b, 1, generator=generator, device=device)
            nxt = next_token(model.image_logits(h, i + 1).float(), u, s)
            out.append(nxt[:, None])
        return torch.cat(out, dim=1)[:b]
    finally:
        model.train(was_training)
