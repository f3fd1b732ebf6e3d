"""The dVAE model: pixel mapping, shapes and dtypes, gradients, checkpointing, grad scaling."""

import pytest
import torch
import torch.nn.functional as F

from tessera.config.vae import VAEConfig
from tessera.nn.gradscale import set_resblock_scaling
from tessera.vae.losses import logit_laplace_nll
from tessera.vae.model import DiscreteVAE, ResBlock
from tessera.vae.pixels import LOGIT_LAPLACE_EPS, map_pixels, unmap_pixels

CFG = VAEConfig(image_size=16, n_hid=8, n_blk_per_group=2, group_count=3, vocab_size=32, n_init=12)


def _model(seed: int = 0, cfg: VAEConfig = CFG) -> DiscreteVAE:
    torch.manual_seed(seed)
    return DiscreteVAE(cfg)


def _images(b: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------- pixels


def test_map_pixels_range_and_round_trip():
    x = torch.linspace(0, 1, 101)
    m = map_pixels(x)
    assert float(m.min()) == pytest.approx(LOGIT_LAPLACE_EPS)
    assert float(m.max()) == pytest.approx(1 - LOGIT_LAPLACE_EPS)
    assert torch.allclose(unmap_pixels(m), x, atol=1e-6)
    assert torch.allclose(map_pixels(x, 0.25), 0.5 * x + 0.25)


def test_unmap_pixels_clamps_to_unit_range():
    x = torch.tensor([0.0, 0.05, 0.1, 0.5, 0.9, 0.95, 1.0])
    got = unmap_pixels(x)
    assert torch.allclose(got, torch.tensor([0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0]), atol=1e-6)
    assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0


# ---------------------------------------------------------------------------------- shapes


def test_forward_shapes():
    model = _model()
    x = map_pixels(_images(3))
    logits, mu, ln_b = model(x, temperature=1.0)
    g = CFG.grid_size
    assert logits.shape == (3, CFG.vocab_size, g, g)
    assert mu.shape == ln_b.shape == (3, 3, 16, 16)
    z = F.one_hot(torch.zeros(3, g, g, dtype=torch.long), CFG.vocab_size).permute(0, 3, 1, 2)
    assert model.decoder(z.float()).shape == (3, 6, 16, 16)


def test_grid_size_follows_group_count():
    cfg = VAEConfig(
        image_size=32, n_hid=8, n_blk_per_group=1, group_count=4, vocab_size=16, n_init=8
    )
    tokens = _model(cfg=cfg).encode(_images(1, 32))
    assert tokens.shape == (1, 4, 4)


def test_encode_decode_shapes_dtypes_and_range():
    model = _model().eval()
    tokens = model.encode(_images(4))
    assert tokens.shape == (4, CFG.grid_size, CFG.grid_size) and tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < CFG.vocab_size
    # Random tokens everywhere in the codebook: the decode is still a valid image.
    rand = torch.randint(0, CFG.vocab_size, (4, CFG.grid_size, CFG.grid_size))
    for t in (tokens, rand):
        images = model.decode(t)
        assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
        assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_encode_is_argmax_of_encoder_logits_without_noise():
    model = _model().eval()
    images = _images(2)
    logits = model.encoder(map_pixels(images))
    assert torch.equal(model.encode(images), logits.argmax(1))
    assert torch.equal(model.encode(images), model.encode(images))  # deterministic


def test_decode_is_unmapped_sigmoid_of_the_location():
    model = _model().eval()
    tokens = torch.randint(0, CFG.vocab_size, (2, CFG.grid_size, CFG.grid_size))
    z = F.one_hot(tokens, CFG.vocab_size).permute(0, 3, 1, 2).float()
    want = unmap_pixels(torch.sigmoid(model.decoder(z)[:, :3]))
    assert torch.allclose(model.decode(tokens), want, atol=1e-6)


def test_post_gain_is_one_over_layers_squared():
    model = _model()
    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    assert len(blocks) == 2 * CFG.group_count * CFG.n_blk_per_group
    n_layers = CFG.group_count * CFG.n_blk_per_group
    assert {b.post_gain for b in blocks} == {1.0 / n_layers**2}


# ------------------------------------------------------------------------------- gradients


def _relaxed_loss(model: DiscreteVAE, images: torch.Tensor, seed: int = 3) -> torch.Tensor:
    torch.manual_seed(seed)  # the gumbel noise
    x = map_pixels(images)
    logits, mu, ln_b = model(x, temperature=0.7)
    return logit_laplace_nll(x, mu, ln_b).mean() + 0.01 * logits.float().pow(2).mean()


def test_gradients_reach_every_encoder_parameter_through_the_relaxation():
    model = _model()
    torch.manual_seed(3)
    x = map_pixels(_images(2))
    _, mu, ln_b = model(x, temperature=0.5)
    # Reconstruction term only: the encoder learns only through the gumbel-softmax sample.
    logit_laplace_nll(x, mu, ln_b).mean().backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, name


def _grads(model: DiscreteVAE) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_activation_checkpointing_gives_identical_gradients(monkeypatch):
    images = _images(2)
    plain = _model()
    loss_plain = _relaxed_loss(plain, images)
    loss_plain.backward()

    calls = []
    real = torch.utils.checkpoint.checkpoint

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", spy)
    ckpt = _model()
    ckpt.set_activation_checkpointing(True)
    loss_ckpt = _relaxed_loss(ckpt, images)
    loss_ckpt.backward()
    assert len(calls) == 2 * CFG.group_count * CFG.n_blk_per_group  # every resblock
    assert torch.equal(loss_plain, loss_ckpt)
    g_plain, g_ckpt = _grads(plain), _grads(ckpt)
    for name, g in g_plain.items():
        assert torch.allclose(g_ckpt[name], g, rtol=1e-5, atol=1e-7), name

    # Off again, and never under no_grad (inference pays nothing).
    calls.clear()
    with torch.no_grad():
        ckpt(map_pixels(images), temperature=1.0)
    assert calls == []


def test_resblock_scaling_disabled_is_the_plain_residual():
    torch.manual_seed(0)
    block = ResBlock(8, 16, n_layers=4, kernels=(3, 3, 3, 1))
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    assert block.grad_scale.enabled is False
    y = block(x)
    x2 = x.detach().clone().requires_grad_(True)
    want = block.id_path(x2) + (1 / 16) * block.res_path(x2)
    assert torch.equal(y, want)
    (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
    (want * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
    assert torch.equal(x.grad, x2.grad)


def test_resblock_scaling_scales_only_branch_gradients():
    images = _images(2)
    plain = _model()
    _relaxed_loss(plain, images).backward()
    g_plain = _grads(plain)

    scaled = _model()
    n = set_resblock_scaling(scaled, True)
    assert n == 2 * CFG.group_count * CFG.n_blk_per_group
    for b in (m for m in scaled.modules() if isinstance(m, ResBlock)):
        b.grad_scale.set_scales(8.0)
    loss = _relaxed_loss(scaled, images)
    loss.backward()
    branch = {
        id(p) for b in scaled.modules() if isinstance(b, ResBlock) for p in b.res_path.parameters()
    }
    for name, p in scaled.named_parameters():
        factor = 8.0 if id(p) in branch else 1.0
        assert torch.allclose(p.grad, factor * g_plain[name], rtol=1e-4, atol=1e-7), name

    # Scaling switched off again: exactly the plain model.
    set_resblock_scaling(scaled, False)
    scaled.zero_grad(set_to_none=True)
    _relaxed_loss(scaled, images).backward()
    for name, g in _grads(scaled).items():
        assert torch.equal(g, g_plain[name]), name


def test_channels_last_and_contiguous_inputs_agree():
    model = _model().eval()
    x = map_pixels(_images(2))
    a = model.encoder(x)
    b = model.encoder(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------ beyond the paper (shapes)


def test_straight_through_decoder_reads_one_hot_codes_and_grads_reach_the_encoder():
    import dataclasses

    from tessera.vae.model import Decoder

    cfg = dataclasses.replace(_model().config, straight_through=True)
    model = DiscreteVAE(cfg)
    seen = []
    hook = model.decoder.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    x = map_pixels(_images(2))
    _, mu, ln_b = model(x, temperature=1.0)
    hook.remove()
    z = seen[0]
    assert torch.equal(z.sum(1), torch.ones_like(z.sum(1))) and set(z.unique().tolist()) <= {0, 1}
    logit_laplace_nll(x, mu, ln_b).mean().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert isinstance(model.decoder, Decoder)


def test_marginal_kl_is_zero_for_uniform_use_and_log_k_for_one_code():
    import math

    from tessera.vae.losses import kl_marginal_to_uniform

    k = 8
    onehots = torch.eye(k)[None, :, :, None].expand(2, k, k, 1) * 50.0  # every code once
    assert abs(float(kl_marginal_to_uniform(onehots))) < 1e-4
    one = torch.zeros(2, k, 3, 3)
    one[:, 0] = 50.0  # every position picks code 0
    assert abs(float(kl_marginal_to_uniform(one)) - math.log(k)) < 1e-4


def test_vq_codebook_tokens_decode_and_training_keeps_codes_alive():
    import dataclasses

    from tessera.training.stages.vae import vq_loss

    torch.manual_seed(0)
    cfg = dataclasses.replace(_model().config, quantizer="vq", codebook_dim=8, vocab_size=16)
    model = DiscreteVAE(cfg)
    images = _images(4)
    x = map_pixels(images)
    model.train()
    logits, mu, ln_b = model(x, temperature=1.0)
    assert logits.shape[1] == 16 and bool(model.codebook.initialized)
    loss, metrics = vq_loss(images, logits, mu, ln_b, model, cfg)
    loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())  # straight-through
    assert metrics["commit"] >= 0 and metrics["codes_alive"] == 16
    model.eval()
    tokens = model.encode(images)
    assert tokens.shape == (4, *logits.shape[2:]) and tokens.max() < 16
    # encode is the nearest code; decode of those codes equals the training-path decoder input
    h = model.encoder(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(tokens, (-model.codebook.distances(
        h.permute(0, 2, 3, 1).reshape(-1, 8))).argmax(1).view_as(tokens))  # fmt: skip
    out = model.decode(tokens)
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    # a code that no assignment reaches is re-seeded from the batch
    model.train()
    with torch.no_grad():
        model.codebook.cluster_size[3] = 0.0
        model.codebook.embed[3] = 1e6
        model(x, temperature=1.0)
    assert float(model.codebook.embed[3].abs().max()) < 1e5
