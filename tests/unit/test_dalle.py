"""The stage-2 transformer: text stream, backends, causality, parameter counts, loss."""

from __future__ import annotations

import warnings

import pytest
import torch

from tessera.config.dalle import DalleConfig
from tessera.config.presets import preset
from tessera.models.dalle import DALLE, count_parameters, empty_text, prepare_text
from tessera.nn.attention import MaskSpec, SelfAttention


def tiny(**kw: object) -> DalleConfig:
    base = dict(
        text_vocab=50, text_len=4, image_vocab=16, grid_size=4, d_model=32, n_layers=4, n_heads=4
    )
    base.update(kw)
    return DalleConfig(**base)  # type: ignore[arg-type]


def test_text_stream_has_bos_and_per_position_padding() -> None:
    cfg = tiny(text_len=6)
    ids = torch.tensor([[7, 8, 9, 10, 11, 12, 13], [5, 0, 0, 0, 0, 0, 0]])
    out = prepare_text(ids, torch.tensor([7, 1]), cfg)
    assert out.tolist() == [[1, 7, 8, 9, 10, 11], [1, 5, 52, 53, 54, 55]]
    assert empty_text(1, cfg).tolist() == [[1, 51, 52, 53, 54, 55]]
    with pytest.raises(ValueError, match="text ids must be in"):
        prepare_text(torch.tensor([[60]]), torch.tensor([1]), cfg)


def test_paper_preset_has_12b_parameters_on_meta_device() -> None:
    n = count_parameters(DalleConfig())
    assert abs(n / 12.0e9 - 1) < 0.02, n


@pytest.mark.parametrize("kind", ["row", "column", "conv", "full"])
def test_flex_and_sdpa_backends_agree(kind: str) -> None:
    torch.manual_seed(0)
    attn = SelfAttention(32, 4).eval()
    spec = MaskSpec(kind, 3, 4, 4, conv_kernel=3)
    x = torch.randn(2, 3 + 16, 32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex on CPU warns that it is unfused
        a = attn(x, spec, backend="sdpa")
        b = attn(x, spec, backend="flex")
    assert (a - b).abs().max().item() < 1e-5


@pytest.mark.parametrize("attention", ["sparse", "row", "column", "conv", "full"])
def test_no_output_depends_on_a_later_input(attention: str) -> None:
    torch.manual_seed(0)
    cfg = tiny(attention=attention, conv_kernel=3)
    model = DALLE(cfg).double()
    t = cfg.text_len + cfg.image_len - 1
    x = torch.randn(1, t, cfg.d_model, dtype=torch.float64, requires_grad=True)
    h = model.hidden(x)
    w = torch.randn(cfg.d_model, dtype=torch.float64)  # LayerNorm outputs sum to a constant
    for i in range(t):
        (g,) = torch.autograd.grad((h[0, i] * w).sum(), x, retain_graph=True)
        assert torch.all(g[0, i + 1 :] == 0), f"output {i} depends on a later input"
        assert g[0, i].abs().sum() > 0


def test_sparse_layers_use_the_paper_schedule() -> None:
    model = DALLE(tiny(n_layers=6))
    assert [b.kind for b in model.blocks] == ["row", "column", "row", "row", "row", "conv"]


def test_row_attention_cannot_see_beyond_its_window() -> None:
    # One row layer: image position (r=3, c=3) must not see image token (0, 0).
    torch.manual_seed(0)
    cfg = tiny(attention="row", n_layers=1)
    model = DALLE(cfg).double()
    x = torch.randn(1, cfg.text_len + cfg.image_len - 1, cfg.d_model, dtype=torch.float64)
    x.requires_grad_(True)
    h = model.hidden(x)
    (g,) = torch.autograd.grad((h[0, -1] * torch.randn(cfg.d_model, dtype=torch.float64)).sum(), x)
    last_img = cfg.image_len - 2  # image index held at the last input position
    seen = [j for j in range(cfg.image_len - 1) if g[0, cfg.text_len + j].abs().sum() > 0]
    assert seen == list(range(last_img - 4, last_img + 1))


def test_loss_is_weighted_and_falls() -> None:
    torch.manual_seed(0)
    cfg = tiny()
    model = DALLE(cfg)
    text = prepare_text(torch.randint(3, 50, (8, 3)), torch.full((8,), 3), cfg)
    image = torch.randint(0, 16, (8, 16))
    loss, t_ce, i_ce = model(text, image)
    assert torch.allclose(loss, t_ce / 8 + 7 * i_ce / 8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(loss.detach())
    for _ in range(40):
        loss = model(text, image)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first


def test_wrong_shapes_are_one_line_errors() -> None:
    cfg = tiny()
    model = DALLE(cfg)
    with pytest.raises(ValueError, match=r"expected text \(B, 4\) and image \(B, 16\)"):
        model(torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 16, dtype=torch.long))


def test_output_layer_is_tied_to_embeddings() -> None:
    model = DALLE(tiny())
    names = {n for n, _ in model.named_parameters()}
    assert not any("head" in n for n in names)
    h = torch.randn(2, 32)
    assert torch.allclose(model.image_logits(h), h @ model.image_emb.weight.t())


def test_bf16_autocast_training_and_cached_sampling() -> None:
    from tessera.sampling.sample import generate_image_tokens

    torch.manual_seed(0)
    cfg = tiny()
    model = DALLE(cfg)
    text = prepare_text(torch.randint(3, 50, (4, 3)), torch.full((4,), 3), cfg)
    image = torch.randint(0, 16, (4, 16))
    ref = model(text, image)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(text, image)[0]
        loss.backward()
        cache = model.new_cache(4)
        tokens = generate_image_tokens(model, text, generator=torch.Generator().manual_seed(0))
    assert cache.dtype == torch.bfloat16  # keys/values are stored in the autocast dtype
    assert abs(loss.item() - ref.item()) < 0.05
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert tokens.shape == (4, 16) and int(tokens.max()) < 16


def test_every_residual_branch_opts_into_per_resblock_scaling() -> None:
    from tessera.nn.gradscale import resblock_grad_scales, set_resblock_scaling

    torch.manual_seed(0)
    cfg = tiny()
    model = DALLE(cfg).double()
    assert len(resblock_grad_scales(model)) == 2 * cfg.n_layers  # attention + MLP per block
    text = prepare_text(torch.randint(3, 50, (2, 3)), torch.full((2,), 3), cfg)
    image = torch.randint(0, 16, (2, 16))
    model(text, image)[0].backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert set_resblock_scaling(model, True) == 2 * cfg.n_layers
    for _, gs in resblock_grad_scales(model):
        gs.scale.fill_(4.0)
    model.zero_grad()
    model(text, image)[0].backward()
    # Inside every block the gradient is the true one x the block's scale; outside, unchanged.
    for n, p in model.named_parameters():
        factor = 4.0 if n.startswith("blocks.") else 1.0
        assert torch.allclose(p.grad, factor * ref[n], rtol=1e-4, atol=1e-9), n


def test_written_out_attention_equals_sdpa() -> None:
    import torch.nn.functional as F

    from tessera.nn.attention import masked_attention
    from tessera.nn.masks import attention_mask

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 19, 8, dtype=torch.float64) for _ in range(3))
    mask = attention_mask("row", 3, 4, 4)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(masked_attention(q, k, v, mask), ref, atol=1e-12)


def test_position_embeddings_are_exempt_from_weight_decay() -> None:
    from tessera.training.optim import no_decay_names, param_groups

    model = DALLE(preset("dalle", "tiny"))
    exempt = no_decay_names(model)
    assert {"text_pos", "row_pos", "col_pos", "text_emb.weight", "image_emb.weight"} <= exempt
    decayed = {
        id(p) for g in param_groups(model, 0.1) if g["weight_decay"] > 0 for p in g["params"]
    }
    assert id(model.text_pos) not in decayed and id(model.row_pos) not in decayed
    assert id(model.blocks[0].mlp.fc.weight) in decayed
