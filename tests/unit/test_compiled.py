"""The static-shape decoding step and the compiled paths (training forward, token step) give
the eager numbers: equal logits / tokens / losses up to float rounding."""

from __future__ import annotations

import pytest
import torch

from tessera.config.dalle import DalleConfig
from tessera.config.sampling import DalleSampling
from tessera.models.dalle import DALLE, prepare_text
from tessera.sampling.sample import generate_image_tokens


def _model(attention: str = "sparse", seed: int = 0) -> DALLE:
    torch.manual_seed(seed)
    cfg = DalleConfig(
        text_vocab=50,
        text_len=4,
        image_vocab=16,
        grid_size=4,
        d_model=32,
        n_layers=4,
        n_heads=4,
        attention=attention,  # type: ignore[arg-type]
    )
    return DALLE(cfg).eval()


def _text(model: DALLE, b: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return prepare_text(
        torch.randint(3, 50, (b, 3), generator=g), torch.full((b,), 3), model.config
    )


@pytest.mark.parametrize("attention", ["sparse", "full"])
def test_decode_step_equals_the_cached_forward(attention: str) -> None:
    """decode_step (whole-cache attention with the mask bias row) == hidden() with the cache
    (attention to the mask row's keys only), for every mask kind of the sparse schedule."""
    model = _model(attention)
    cfg = model.config
    text = _text(model, 2)
    image = torch.randint(0, 16, (2, cfg.image_len))
    with torch.no_grad():
        ref_cache, cache = model.new_cache(2), model.new_cache(2)
        model.hidden(model.embed(text, None), cache=ref_cache)
        model.hidden(model.embed(text, None), cache=cache)
        biases = model.mask_biases()
        for i in range(cfg.image_len - 1):
            e = model.embed(None, image[:, i : i + 1], image_start=i)
            h = model.hidden(e, cache=ref_cache, start=cfg.text_len + i)[:, -1]
            ref = model.image_logits(h)
            got = model.decode_step(image[:, i], torch.tensor([i]), cache, biases)
            assert (got - ref).abs().max().item() < 1e-5, i
    written = cfg.seq_len - 1
    for a, b in zip(cache.k + cache.v, ref_cache.k + ref_cache.v, strict=True):
        assert torch.allclose(a[:, :, :written], b[:, :, :written], atol=1e-6)


def test_training_forward_uses_the_whole_stream_without_changing_the_loss() -> None:
    """The last stream position is run (even length) but changes no loss term: the loss equals
    a model that only ever sees positions < seq_len - 1 (masks are causal)."""
    model = _model("sparse")
    cfg = model.config
    text = _text(model, 2)
    image = torch.randint(0, 16, (2, cfg.image_len))
    loss, text_ce, image_ce = model(text, image)
    h = model.hidden(model.embed(text, image[:, :-1]))
    n_text = cfg.text_len - 1
    ref_text = torch.nn.functional.cross_entropy(
        model.text_logits(h[:, :n_text]).flatten(0, 1), text[:, 1:].flatten()
    )
    ref_image = torch.nn.functional.cross_entropy(
        model.image_logits(h[:, n_text:]).flatten(0, 1), image.flatten()
    )
    assert abs(text_ce.item() - ref_text.item()) < 1e-5
    assert abs(image_ce.item() - ref_image.item()) < 1e-5
    ref = cfg.loss_text_weight * ref_text + cfg.loss_image_weight * ref_image
    assert abs(loss.item() - ref.item()) < 1e-5


@pytest.mark.slow
def test_compiled_sampling_draws_the_eager_tokens_and_follows_weight_changes() -> None:
    model = _model("sparse")
    text = _text(model, 3)
    eager = DalleSampling(top_k=6, guidance=2.0)
    fast = DalleSampling(top_k=6, guidance=2.0, compile=True)

    def run(s: DalleSampling) -> torch.Tensor:
        return generate_image_tokens(
            model, text, settings=s, generator=torch.Generator().manual_seed(3)
        )

    assert torch.equal(run(fast), run(eager))
    assert torch.equal(run(fast), run(eager))  # the second call reuses the graph
    with torch.no_grad():  # the frozen graph must not keep stale weights
        model.image_emb.weight.mul_(3.0)
    assert torch.equal(run(fast), run(eager))


@pytest.mark.slow
def test_compiled_training_forward_gives_the_eager_loss_and_gradients() -> None:
    model = _model("sparse").train()
    text = _text(model, 4)
    image = torch.randint(
        0, 16, (4, model.config.image_len), generator=torch.Generator().manual_seed(1)
    )
    loss = model(text, image)[0]
    loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.compile(dynamic=False)
    got = model(text, image)[0]
    got.backward()
    assert abs(got.item() - loss.item()) < 1e-5
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref[n], atol=1e-5, rtol=1e-4), n


def test_compile_needs_the_cache() -> None:
    with pytest.raises(ValueError, match="compile needs use_cache"):
        DalleSampling(compile=True, use_cache=False)


def test_a_compiler_failure_is_one_line(monkeypatch) -> None:
    from tessera.errors import CompileError
    from tessera.sampling import sample as sample_mod

    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found\nlong trace")

        return call

    monkeypatch.setattr(sample_mod.torch, "compile", broken)
    model = _model("full", seed=1)  # a fresh model: no graph cached for it
    with pytest.raises(
        CompileError,
        match=r"^compiling the sampling step failed \(RuntimeError: "
        r"InvalidCxxCompiler: no working C\+\+ compiler found\); sample without",
    ):
        generate_image_tokens(model, _text(model), settings=DalleSampling(compile=True))
