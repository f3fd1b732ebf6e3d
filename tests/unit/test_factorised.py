"""The factorised (gain-shape) image tokenizer and the transformer that reads its tokens
(issue 27): the split is exact on shapes and colour-invariant, tokens alternate structure and
colour codes, the masks act on grid cells, sampling keeps each token in its factor."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tessera.config.dalle import DalleConfig
from tessera.config.presets import preset
from tessera.config.sampling import DalleSampling
from tessera.data.images import psnr
from tessera.data.shapes.render import render_scene
from tessera.data.shapes.scene import Scene, SceneObject
from tessera.errors import ConfigError
from tessera.models.dalle import DALLE, prepare_text
from tessera.nn.masks import attention_mask, image_mask, mask_mod
from tessera.sampling.sample import generate_image_tokens
from tessera.training.data import shapes_image_batches
from tessera.vae import gain_shape
from tessera.vae.model import DiscreteVAE

PALETTE = {  # shapes spec v1
    (220, 38, 38),
    (245, 140, 20),
    (235, 200, 20),
    (30, 160, 70),
    (30, 90, 220),
    (140, 50, 190),
}


def _images(n: int = 64, size: int = 32) -> torch.Tensor:
    return next(
        shapes_image_batches(
            split="eval", image_size=size, batch_size=n, seed=0, rank=0, world_size=1
        )
    )["images"]


def _one(color: str, shape: str, cx: float = 13.3, cy: float = 18.6) -> torch.Tensor:
    obj = SceneObject(color=color, shape=shape, size="large", cx=cx, cy=cy, side=13, cell="center")
    img = render_scene(Scene(canvas=32, objects=(obj,), relation=None, split="eval", index=0))
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255


# -- the split -------------------------------------------------------------------------------


def test_gain_shape_split_is_exact_on_shapes_and_finds_the_palette() -> None:
    x = _images()
    cover, colour = gain_shape.split(x, 4, 1)
    assert cover.shape == (64, 1, 32, 32) and colour.shape == (64, 3, 8, 8)
    assert float(psnr(gain_shape.compose(cover, colour, 4), x).min()) > 60
    found = {
        tuple(int(v) for v in (255 - c * 255).round())
        for c in colour.permute(0, 2, 3, 1).reshape(-1, 3)
    }
    assert found == PALETTE | {(255, 255, 255)}  # every object colour, exactly; white cells


def test_coverage_does_not_depend_on_the_colour() -> None:
    # a held-out pair's coverage is a seen pair's: the structure tokens cannot tell them apart
    covers = [gain_shape.split(_one(c, "circle"), 4)[0] for c in ("red", "blue", "yellow")]
    assert (covers[0] - covers[1]).abs().max() < 0.02
    assert (covers[0] - covers[2]).abs().max() < 0.02
    white = torch.ones(1, 3, 32, 32)
    cover, colour = gain_shape.split(white, 4)
    assert cover.abs().max() == 0 and colour.abs().max() == 0
    with pytest.raises(ValueError, match="multiple of the cell"):
        gain_shape.split(torch.ones(1, 3, 30, 30), 4)


# -- the tokenizer ---------------------------------------------------------------------------


def _fvae() -> DiscreteVAE:
    cfg = dataclasses.replace(preset("vae", "tiny"), quantizer="vq", codebook_dim=8, colour_codes=8)
    torch.manual_seed(0)
    vae = DiscreteVAE(cfg)
    vae.train()
    for _ in range(20):
        vae.observe_colours(vae.split(_images(16))[1])
    return vae.eval()


def _factorised_dalle(vae: DiscreteVAE, *, text_vocab: int, text_len: int) -> DalleConfig:
    """A small transformer over ``vae``'s factorised tokens (8 colour codes)."""
    v = vae.config.vocab_size
    return DalleConfig(
        text_vocab=text_vocab,
        text_len=text_len,
        image_vocab=v + 8,
        grid_size=8,
        d_model=32,
        n_layers=2,
        n_heads=4,
        image_factors=(v, 8),
    )


def test_factorised_tokens_alternate_structure_and_colour_and_decode() -> None:
    vae = _fvae()
    cfg = vae.config
    assert cfg.factor_vocabs == (cfg.vocab_size, 8)
    x = _images(8)
    tokens = vae.encode(x)
    assert tokens.shape == (8, 8, 16)
    assert int(tokens[..., 0::2].max()) < cfg.vocab_size
    assert int(tokens[..., 1::2].min()) >= cfg.vocab_size
    assert vae.decode(tokens).shape == (8, 3, 32, 32)
    # the colour book learned the palette: decoding the true coverage with the colour codes
    cover, _ = vae.split(x)
    colours = vae.colour_book.embed[tokens[..., 1::2] - cfg.vocab_size].permute(0, 3, 1, 2)
    assert float(psnr(gain_shape.compose(cover, colours, 4), x).min()) > 40
    bad = tokens.clone()
    bad[0, 0, 1] = 0  # a structure id in a colour slot
    with pytest.raises(ValueError, match="alternate structure ids"):
        vae.decode(bad)


def test_factorised_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="needs quantizer vq"):
        dataclasses.replace(preset("vae", "tiny"), colour_codes=8)
    with pytest.raises(ConfigError, match="image_factors"):
        DalleConfig(image_vocab=20, image_factors=(16, 8))
    with pytest.raises(ConfigError, match="image_factors"):
        DalleConfig(image_vocab=16, image_factors=(16,))


def test_transformer_and_tokenizer_factors_must_agree() -> None:
    from tessera.pipelines.dalle import check_compatible

    vae = _fvae()
    tok = type("Tok", (), {"vocab_size": 40})()
    good = _factorised_dalle(vae, text_vocab=50, text_len=4)
    check_compatible(good, vae, tok)
    with pytest.raises(ConfigError, match="expects one per position"):
        check_compatible(dataclasses.replace(good, image_factors=()), vae, tok)


# -- masks on grid cells -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["row", "column", "conv", "full"])
def test_factorised_masks_act_on_cells(kind: str) -> None:
    h = w = 4
    cells = image_mask(kind, h, w, conv_kernel=3)
    tokens = image_mask(kind, h, w, conv_kernel=3, factors=2)
    n = h * w * 2
    a = torch.arange(n)[:, None]
    b = torch.arange(n)[None, :]
    want = cells[a // 2, b // 2] & (b <= a)  # the cell pattern, causal in tokens
    assert torch.equal(tokens, want)
    dense = attention_mask(kind, 3, h, w, conv_kernel=3, factors=2)
    mod = mask_mod(kind, 3, w, conv_kernel=3, factors=2)
    q = torch.arange(dense.shape[0])[:, None]
    k = torch.arange(dense.shape[0])[None, :]
    assert torch.equal(mod(0, 0, q, k), dense)


# -- the transformer ------------------------------------------------------------------------------


def _model(**kw: object) -> DALLE:
    cfg = DalleConfig(
        text_vocab=50,
        text_len=4,
        image_vocab=20,
        grid_size=3,
        d_model=32,
        n_layers=4,
        n_heads=4,
        conv_kernel=3,
        image_factors=(12, 8),
        **kw,  # type: ignore[arg-type]
    )
    torch.manual_seed(0)
    return DALLE(cfg).eval()


def _text(model: DALLE, b: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return prepare_text(
        torch.randint(3, 50, (b, 3), generator=g), torch.tensor([3, 1, 0][:b]), model.config
    )


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_sampled_tokens_stay_in_their_factor(guidance: float) -> None:
    model = _model()
    text = _text(model)
    kw = dict(temperature=2.0, guidance=guidance)
    a = generate_image_tokens(
        model, text, settings=DalleSampling(**kw), generator=torch.Generator().manual_seed(3)
    )
    b = generate_image_tokens(
        model,
        text,
        settings=DalleSampling(**kw, use_cache=False),
        generator=torch.Generator().manual_seed(3),
    )
    assert a.shape == (3, 18) and torch.equal(a, b)
    assert int(a[:, 0::2].max()) < 12 and int(a[:, 1::2].min()) >= 12


def test_factorised_loss_is_over_each_factors_ids_and_falls() -> None:
    model = _model().train()
    text = _text(model, 2)
    image = torch.stack([torch.randint(0, 12, (2, 9)), torch.randint(12, 20, (2, 9))], -1).flatten(
        1
    )
    # at init the image CE is about ln(12) and ln(8) on alternate positions, not ln(20)
    _, _, ce = model(text, image)
    assert abs(float(ce.detach()) - (np.log(12) + np.log(8)) / 2) < 0.2
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, _, _ = model(text, image)
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first
    assert "factor_pos" in model.no_weight_decay()


def test_factorised_outputs_do_not_depend_on_later_inputs() -> None:
    model = _model().double()
    cfg = model.config
    t = cfg.text_len + cfg.image_len - 1
    x = torch.randn(1, t, cfg.d_model, dtype=torch.float64, requires_grad=True)
    h = model.hidden(x)
    w = torch.randn(cfg.d_model, dtype=torch.float64)
    for i in range(t):
        (g,) = torch.autograd.grad((h[0, i] * w).sum(), x, retain_graph=True)
        assert torch.all(g[0, i + 1 :] == 0), f"output {i} depends on a later input"


def test_pipeline_generates_and_keeps_image_prompt_rows_with_factorised_tokens() -> None:
    from tessera.pipelines.dalle import DallePipeline

    vae = _fvae()
    cfg = _factorised_dalle(vae, text_vocab=300, text_len=8)
    from tessera.config.text import TokenizerConfig
    from tessera.text import TextTokenizer

    words = ["a red circle", "a blue square above a green circle"] * 20
    tok = TextTokenizer.train(words, TokenizerConfig(vocab_size=300, max_length=7))
    torch.manual_seed(0)
    pipe = DallePipeline(model=DALLE(cfg).eval(), vae=vae, tokenizer=tok)
    out = pipe.generate(["a red circle", "a blue square"], n=2, seed=0)
    assert out.images.shape == (4, 3, 32, 32) and out.tokens.shape == (4, 8, 16)
    x = _images(1)
    kept = pipe.generate(["a red circle"], image_prompt=x, keep_rows=3, seed=0)
    assert torch.equal(kept.tokens[0, :3], vae.encode(x)[0, :3])


def test_colour_codes_on_one_colour_are_one_token_on_every_precision() -> None:
    """The EMA drives several colour codes onto one palette colour; which of them a cell gets
    must not be float noise (the shipped tokenizer's float16 copy once encoded orange as 2
    where training had read 8, and image prompts drew the wrong colours)."""
    vae = _fvae()
    book = vae.colour_book.embed
    orange = torch.tensor([245.0, 140.0, 20.0]) / 255
    with torch.no_grad():  # codes 2, 5, 6: orange, a few float32 ulps apart, in scrambled order
        for k, eps in ((2, 3e-7), (5, 0.0), (6, 1e-7)):
            book[k] = 1 - orange + eps
    canon = vae.canonical_colours()
    assert canon[2] == canon[5] == canon[6] == 2
    assert all(int(canon[k]) <= k for k in range(len(canon)))
    x = _one("orange", "square")
    ids = vae.encode(x)[..., 1::2] - vae.config.vocab_size
    assert set(ids.unique().tolist()) <= {2} | {int(c) for c in canon[canon != 2]}
    assert 2 in ids.unique().tolist()
    half = DiscreteVAE(vae.config).eval()
    half.load_state_dict({k: t.half().float() for k, t in vae.state_dict().items()})
    assert torch.equal(half.encode(x)[..., 1::2], vae.encode(x)[..., 1::2])


def test_float16_release_keeps_the_codebooks_float32_and_encodes_as_trained(tmp_path) -> None:
    from safetensors import safe_open

    from tessera.checkpoint import load, save

    vae = _fvae()
    save(tmp_path / "v", config=vae.config, model=vae, dtype="float16")
    with safe_open(str(tmp_path / "v" / "model.safetensors"), framework="pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
    assert dtypes["codebook.embed"] == dtypes["colour_book.embed"] == "F32"
    assert dtypes["encoder.blocks.input.weight"] == "F16"
    back = load(tmp_path / "v", kind="vae")
    x = _images(16)
    assert torch.equal(back.encode(x), vae.encode(x))
