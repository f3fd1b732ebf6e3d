"""Logit filters (hand-computed), the KV-cached loop (== uncached), guidance, image prompts."""

from __future__ import annotations

import math

import pytest
import torch

from tessera.config.dalle import DalleConfig
from tessera.config.sampling import DalleSampling
from tessera.models.dalle import DALLE, prepare_text
from tessera.sampling.filters import (
    apply_temperature,
    filter_logits,
    logit_threshold,
    sample,
    top_k,
    top_p,
)
from tessera.sampling.sample import generate_image_tokens

INF = float("-inf")


def test_top_k_keeps_the_k_largest() -> None:
    x = torch.tensor([[1.0, 4.0, 2.0, 3.0]])
    assert top_k(x, 2).tolist() == [[INF, 4.0, INF, 3.0]]
    assert torch.equal(top_k(x, 0), x) and torch.equal(top_k(x, 9), x)


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    x = probs.log()
    assert torch.isfinite(top_p(x, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_p(x, 0.51)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p(x, 0.9)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(top_p(x, 0.01)).sum() == 1  # the arg-max always survives
    # Unsorted input: the filter follows the values, not the positions.
    y = x[:, [2, 0, 3, 1]]
    assert torch.isfinite(top_p(y, 0.8)).tolist() == [[False, True, False, True]]


def test_threshold_is_relative_to_the_most_likely_token() -> None:
    x = torch.tensor([[0.0, math.log(0.5), math.log(0.09)]])
    assert torch.isfinite(logit_threshold(x, 0.1)).tolist() == [[True, True, False]]
    assert torch.equal(logit_threshold(x, 0.0), x)


def test_temperature_and_composition() -> None:
    x = torch.tensor([[2.0, 1.0, 0.0]])
    assert torch.allclose(apply_temperature(x, 0.5), x * 2)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        apply_temperature(x, 0.0)
    out = filter_logits(x, temperature=0.5, k=2)
    assert out.tolist() == [[4.0, 2.0, INF]]


def test_sample_is_seeded_and_never_draws_filtered_tokens() -> None:
    x = top_k(torch.randn(64, 10), 3)
    a = sample(x, torch.Generator().manual_seed(5))
    b = sample(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.isfinite(x.gather(1, a[:, None])).all()
    # Empirical frequencies follow the softmax.
    logits = torch.tensor([[0.0, math.log(3.0)]]).expand(20000, 2)
    draws = sample(logits, torch.Generator().manual_seed(0)).float().mean()
    assert abs(draws.item() - 0.75) < 0.02


def _model(seed: int = 0, **kw: object) -> DALLE:
    torch.manual_seed(seed)
    base = dict(
        text_vocab=50, text_len=4, image_vocab=16, grid_size=4, d_model=32, n_layers=4, n_heads=4
    )
    base.update(kw)
    return DALLE(DalleConfig(**base)).eval()  # type: ignore[arg-type]


def _text(model: DALLE, b: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return prepare_text(
        torch.randint(3, 50, (b, 3), generator=g), torch.tensor([3, 1, 0][:b]), model.config
    )


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("attention", ["sparse", "full"])
def test_cached_and_uncached_sampling_give_identical_tokens(
    guidance: float, attention: str
) -> None:
    model = _model(attention=attention)
    text = _text(model)
    kw = dict(temperature=0.9, top_k=8, guidance=guidance)
    a = generate_image_tokens(
        model, text, settings=DalleSampling(**kw), generator=torch.Generator().manual_seed(3)
    )
    b = generate_image_tokens(
        model,
        text,
        settings=DalleSampling(**kw, use_cache=False),
        generator=torch.Generator().manual_seed(3),
    )
    assert a.shape == (3, 16)
    assert torch.equal(a, b)


def test_cached_logits_equal_a_full_forward() -> None:
    model = _model()
    text = _text(model, 2)
    image = torch.randint(0, 16, (2, 16))
    x = model.embed(text, image[:, :-1])
    full = model.image_logits(model.hidden(x)[:, model.config.text_len - 1 :])
    cache = model.new_cache(2)
    steps = [model.hidden(model.embed(text, None), cache=cache)[:, -1]]
    for i in range(15):
        e = model.embed(None, image[:, i : i + 1], image_start=i)
        steps.append(model.hidden(e, cache=cache, start=model.config.text_len + i)[:, -1])
    cached = model.image_logits(torch.stack(steps, 1))
    assert (cached - full).abs().max().item() < 1e-5


def test_image_prompt_rows_are_kept() -> None:
    model = _model()
    text = _text(model)
    prefix = torch.randint(0, 16, (3, 8))
    out = generate_image_tokens(
        model, text, prefix=prefix, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(out[:, :8], prefix)
    full = torch.randint(0, 16, (3, 16))
    assert torch.equal(generate_image_tokens(model, text, prefix=full), full)
    with pytest.raises(ValueError, match="prefix must be"):
        generate_image_tokens(model, text, prefix=torch.zeros(2, 4, dtype=torch.long))


def test_guidance_zero_samples_the_unconditional_stream() -> None:
    # scale 0 -> uncond logits only: every prompt gives the same tokens for the same draws.
    model = _model()
    text = _text(model)
    g = torch.Generator().manual_seed(0)
    out = generate_image_tokens(
        model, text, settings=DalleSampling(guidance=0.0, top_k=1), generator=g
    )
    assert (out == out[0]).all()


def test_sampling_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="top_p"):
        DalleSampling(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        DalleSampling(temperature=-1.0)
