"""CLIP: the InfoNCE loss, the logit-scale clamp, OpenAI's state-dict layout against a
functional reference written from the paper, pooling at <eos>, scoring, retrieval metrics."""

from __future__ import annotations

import math

import pytest
import torch

from tessera.config.clip import CLIPConfig
from tessera.config.presets import preset
from tessera.errors import ConfigError
from tessera.evaluation.retrieval import recall_at_k
from tessera.models.clip import (
    CLIP,
    clip_loss,
    config_from_openai_state_dict,
    count_parameters,
    eos_positions,
    from_openai_state_dict,
)
from tessera.sampling.rerank import CLIPScorer


def test_infonce_matches_a_hand_computed_value() -> None:
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = 2 * img @ txt.T = [[2, 1.2], [0, 1.6]]; each cross-entropy is log(1 + e^-margin)
    # rows (image->text): margins 0.8, 1.6; columns (text->image): margins 2.0, 0.4
    expected = sum(math.log1p(math.exp(-m)) for m in (0.8, 1.6, 2.0, 0.4)) / 4
    assert clip_loss(img, txt, 2.0).item() == pytest.approx(expected, rel=1e-6)
    # symmetric in its two arguments; a perfect, confident batch has ~0 loss
    assert clip_loss(txt, img, 2.0).item() == pytest.approx(expected, rel=1e-6)
    assert clip_loss(torch.eye(3), torch.eye(3), 100.0).item() < 1e-30


def test_logit_scale_starts_at_1_over_0_07_and_is_clamped_at_100() -> None:
    model = CLIP(preset("clip", "tiny"))
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # exp(10) ~ 22026
    s = model.scale()
    assert s.item() == pytest.approx(100.0, rel=1e-6)
    s.backward()
    assert model.logit_scale.grad.item() == 0.0  # no gradient pushes it further while clamped
    model.logit_scale.grad = None
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    model.scale().backward()
    assert model.logit_scale.grad.item() == pytest.approx(math.exp(3.0), rel=1e-6)


def test_vit_b_32_preset_has_openais_parameter_count_on_meta_device() -> None:
    cfg = preset("clip", "vit-b-32")
    assert (cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers) == (
        224,
        32,
        768,
        12,
    )
    assert (cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.context_length) == (512, 12, 8, 77)
    # with OpenAI's 49408-token vocabulary: exactly the released ViT-B/32's 151,277,313
    assert count_parameters(cfg.replace(vocab_size=49408)) == 151_277_313


def test_bad_configs_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="not divisible by patch_size"):
        CLIPConfig(image_size=30, patch_size=8)
    with pytest.raises(ConfigError, match="vision_width 100 is not divisible by vision_heads"):
        CLIPConfig(vision_width=100, vision_heads=12)
    with pytest.raises(ConfigError, match="eos_id"):
        CLIPConfig(vocab_size=10, eos_id=10)


# -- OpenAI's layout vs a functional reference ------------------------------------------------

V_WIDTH, V_LAYERS, V_HEADS, PATCH, GRID = 64, 2, 4, 8, 4
T_WIDTH, T_LAYERS, T_HEADS, CONTEXT, VOCAB, EMBED = 32, 2, 2, 8, 50, 24
BLOCK = {  # name -> shape, of one residual block of width w
    "ln_1.weight": lambda w: (w,),
    "ln_1.bias": lambda w: (w,),
    "attn.in_proj_weight": lambda w: (3 * w, w),
    "attn.in_proj_bias": lambda w: (3 * w,),
    "attn.out_proj.weight": lambda w: (w, w),
    "attn.out_proj.bias": lambda w: (w,),
    "ln_2.weight": lambda w: (w,),
    "ln_2.bias": lambda w: (w,),
    "mlp.c_fc.weight": lambda w: (4 * w, w),
    "mlp.c_fc.bias": lambda w: (4 * w,),
    "mlp.c_proj.weight": lambda w: (w, 4 * w),
    "mlp.c_proj.bias": lambda w: (w,),
}


def openai_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float64 weights under the key names and shapes of OpenAI's ViT CLIP."""
    shapes = {
        "visual.conv1.weight": (V_WIDTH, 3, PATCH, PATCH),
        "visual.class_embedding": (V_WIDTH,),
        "visual.positional_embedding": (GRID * GRID + 1, V_WIDTH),
        "visual.ln_pre.weight": (V_WIDTH,),
        "visual.ln_pre.bias": (V_WIDTH,),
        "visual.ln_post.weight": (V_WIDTH,),
        "visual.ln_post.bias": (V_WIDTH,),
        "visual.proj": (V_WIDTH, EMBED),
        "token_embedding.weight": (VOCAB, T_WIDTH),
        "positional_embedding": (CONTEXT, T_WIDTH),
        "ln_final.weight": (T_WIDTH,),
        "ln_final.bias": (T_WIDTH,),
        "text_projection": (T_WIDTH, EMBED),
        "logit_scale": (),
    }
    for prefix, layers, width in (
        ("visual.transformer.resblocks", V_LAYERS, V_WIDTH),
        ("transformer.resblocks", T_LAYERS, T_WIDTH),
    ):
        for i in range(layers):
            for name, shape in BLOCK.items():
                shapes[f"{prefix}.{i}.{name}"] = shape(width)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        if k.endswith(
            ("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "l.weight")
        ):
            x = 1 + 0.1 * x  # LayerNorm gains (ln_final.weight ends in "l.weight")
        elif k == "logit_scale":
            x = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)
        elif k.endswith("weight") and len(shape) == 2:
            x = x / math.sqrt(shape[1])  # keep activations O(1)
        else:
            x = 0.1 * x
        sd[k] = x
    return sd


def ref_layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * w + b


def ref_block(x: torch.Tensor, p: dict, heads: int, causal: bool) -> torch.Tensor:
    """Pre-norm block: multi-head self-attention then a 4x MLP with x * sigmoid(1.702 x)."""
    b, t, w = x.shape
    d = w // heads
    h = ref_layer_norm(x, p["ln_1.weight"], p["ln_1.bias"])
    qkv = h @ p["attn.in_proj_weight"].T + p["attn.in_proj_bias"]
    q, k, v = (z.reshape(b, t, heads, d).transpose(1, 2) for z in qkv.split(w, dim=-1))
    att = q @ k.transpose(-1, -2) / math.sqrt(d)  # (b, heads, t, t)
    if causal:
        future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        att = att.masked_fill(future, float("-inf"))
    y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, w)
    x = x + y @ p["attn.out_proj.weight"].T + p["attn.out_proj.bias"]
    h = ref_layer_norm(x, p["ln_2.weight"], p["ln_2.bias"])
    h = h @ p["mlp.c_fc.weight"].T + p["mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)
    return x + h @ p["mlp.c_proj.weight"].T + p["mlp.c_proj.bias"]


def ref_blocks(x: torch.Tensor, sd: dict, prefix: str, n: int, heads: int, causal: bool):
    for i in range(n):
        p = {k[len(f"{prefix}.{i}.") :]: v for k, v in sd.items() if k.startswith(f"{prefix}.{i}.")}
        x = ref_block(x, p, heads, causal)
    return x


def ref_encode_image(sd: dict, images: torch.Tensor) -> torch.Tensor:
    """ViT: normalise, cut PATCH x PATCH patches, embed linearly, prepend the class token, add
    positions, ln_pre, blocks, ln_post of the class token, project, L2-normalise."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], dtype=torch.float64)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711], dtype=torch.float64)
    x = (images - mean[:, None, None]) / std[:, None, None]
    b = x.shape[0]
    patches = x.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH)  # (b, 3, g, g, p, p)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(b, GRID * GRID, 3 * PATCH * PATCH)
    tokens = patches @ sd["visual.conv1.weight"].reshape(V_WIDTH, -1).T
    cls = sd["visual.class_embedding"].expand(b, 1, V_WIDTH)
    x = torch.cat([cls, tokens], 1) + sd["visual.positional_embedding"]
    x = ref_layer_norm(x, sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    x = ref_blocks(x, sd, "visual.transformer.resblocks", V_LAYERS, V_HEADS, causal=False)
    x = ref_layer_norm(x[:, 0], sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
    x = x @ sd["visual.proj"]
    return x / x.norm(dim=-1, keepdim=True)


def ref_encode_text(sd: dict, ids: torch.Tensor, eos: int) -> torch.Tensor:
    """Causal transformer over token + position embeddings, read at the end-of-text token."""
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    x = ref_blocks(x, sd, "transformer.resblocks", T_LAYERS, T_HEADS, causal=True)
    x = ref_layer_norm(x, sd["ln_final.weight"], sd["ln_final.bias"])
    at = [row.tolist().index(eos) for row in ids]
    x = x[torch.arange(len(at)), at] @ sd["text_projection"]
    return x / x.norm(dim=-1, keepdim=True)


def test_openai_layout_loads_strictly_and_matches_the_reference_forward() -> None:
    sd = openai_state_dict()
    cfg = CLIPConfig(
        embed_dim=EMBED,
        image_size=PATCH * GRID,
        patch_size=PATCH,
        vision_width=V_WIDTH,
        vision_layers=V_LAYERS,
        vision_heads=V_HEADS,
        vocab_size=VOCAB,
        context_length=CONTEXT,
        text_width=T_WIDTH,
        text_layers=T_LAYERS,
        text_heads=T_HEADS,
        eos_id=VOCAB - 1,
    )
    model = CLIP(cfg).double().eval()
    result = model.load_state_dict(sd, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert set(model.state_dict()) == set(sd)

    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, PATCH * GRID, PATCH * GRID, generator=g, dtype=torch.float64)
    ids = torch.zeros(3, CONTEXT, dtype=torch.long)
    for i, n in enumerate((3, 7, 1)):  # caption tokens, then <eos> (the last id), then pad 0
        ids[i, :n] = torch.randint(1, VOCAB - 1, (n,), generator=g)
        ids[i, n] = VOCAB - 1
    with torch.no_grad():
        img, txt, scale = model(images, ids)
    ref_img, ref_txt = ref_encode_image(sd, images), ref_encode_text(sd, ids, VOCAB - 1)
    torch.testing.assert_close(img, ref_img, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(txt, ref_txt, rtol=1e-10, atol=1e-10)
    ref_logits = math.exp(sd["logit_scale"].item()) * ref_img @ ref_txt.T
    torch.testing.assert_close(scale * img @ txt.T, ref_logits, rtol=1e-10, atol=1e-10)

    # the same dict, with the extra keys OpenAI's checkpoints carry, builds its own config
    extra = {"input_resolution": torch.tensor(32), "context_length": torch.tensor(CONTEXT)}
    full = {**sd, **extra, "vocab_size": torch.tensor(VOCAB)}
    assert config_from_openai_state_dict(full, vision_heads=V_HEADS, text_heads=T_HEADS) == cfg
    loaded = from_openai_state_dict(full, vision_heads=V_HEADS, text_heads=T_HEADS)
    with torch.no_grad():  # float32 weights now
        torch.testing.assert_close(loaded.encode_text(ids), ref_txt.float(), rtol=0, atol=1e-5)


# -- text pooling, scoring --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from tessera.config.text import TokenizerConfig
    from tessera.text import TextTokenizer

    words = ["a red circle", "a blue square on the left", "two green triangles", "a big star"]
    return TextTokenizer.train(words * 5, TokenizerConfig(vocab_size=300, max_length=12))


def test_text_embedding_is_read_at_eos(tokenizer) -> None:
    enc = tokenizer.encode_batch(["a red circle", "two green triangles on the left"], add_eos=True)
    assert eos_positions(enc.ids, 2).tolist() == (enc.lengths - 1).tolist()
    torch.manual_seed(0)
    model = CLIP(preset("clip", "tiny").replace(context_length=12)).eval()
    with torch.no_grad():
        full = model.encode_text(enc.ids)
        # what follows <eos> is never seen (causal): other ids there, or a shorter context
        noisy = enc.ids.clone()
        noisy[0, enc.lengths[0] :] = 7
        assert torch.allclose(model.encode_text(noisy), full, atol=1e-6)
        short = enc.ids[:1, : int(enc.lengths[0])]
        assert torch.allclose(model.encode_text(short)[0], full[0], atol=1e-6)
        # what precedes it is
        other = enc.ids.clone()
        other[0, 1] = 9
        assert not torch.allclose(model.encode_text(other)[0], full[0], atol=1e-4)
    with pytest.raises(ValueError, match="end-of-text id 2"):
        eos_positions(torch.tensor([[5, 6, 0]]), 2)


def test_scorer_embeds_each_prompt_once_and_matches_pairwise_scores(tokenizer) -> None:
    torch.manual_seed(0)
    model = CLIP(preset("clip", "tiny").replace(context_length=12))
    scorer = CLIPScorer(model, tokenizer, batch_size=3)
    calls: list[int] = []
    encode_text = model.encode_text
    model.encode_text = lambda ids: calls.append(ids.shape[0]) or encode_text(ids)  # type: ignore[method-assign]
    images = torch.rand(7, 3, 64, 64)  # resized to the model's 32 px
    prompts = ["a red circle"] * 4 + ["a big star"] * 3
    scores = scorer(images, prompts)
    assert calls == [2]  # two distinct prompts, one batch
    small = torch.nn.functional.interpolate(images, size=(32, 32), mode="bicubic", antialias=True)
    with torch.no_grad():
        img = model.encode_image(small.clamp(0, 1))
        txt = encode_text(tokenizer.encode_batch(prompts, add_eos=True).ids)
    torch.testing.assert_close(scores, (img * txt).sum(-1), rtol=1e-5, atol=1e-6)
    sim = scorer.similarity(images, ["a red circle", "a big star"])
    assert sim.shape == (7, 2) and torch.allclose(sim[:4, 0], scores[:4], atol=1e-6)


def test_scorer_rejects_a_tokenizer_that_does_not_fit(tokenizer) -> None:
    with pytest.raises(ConfigError, match="pads to 12 tokens; the CLIP model has 8 positions"):
        CLIPScorer(CLIP(preset("clip", "tiny").replace(context_length=8)), tokenizer)


def test_recall_at_k_by_hand() -> None:
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.5, 0.0], [0.0, 0.2, 0.1]])
    # image->text: rows 0 (match first), 1 (0.8 beats 0.5), 2 (0.2 beats 0.1) -> 1/3 at k=1
    # text->image: cols 0 (0.9 first), 1 (0.5 first), 2 (0.1 first) -> 3/3
    assert recall_at_k(sim, 1) == pytest.approx((1 / 3, 1.0))
    assert recall_at_k(sim, 2) == pytest.approx((1.0, 1.0))


def test_rerank_sorts_each_prompt_best_first_and_keeps_the_best_k() -> None:
    from tessera.pipelines.base import Samples, rerank

    images = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 3, 2, 2)
    samples = Samples(
        images, ["a"] * 3 + ["b"] * 3, [0, 0, 0, 1, 1, 1], tokens=torch.zeros(6, 1, 1)
    )
    score = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.2, 0.8])

    def reranker(x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return score[x[:, 0, 0, 0].long()]

    out = rerank(samples, reranker, 3)
    assert out.images[:, 0, 0, 0].tolist() == [1, 2, 0, 5, 3, 4]
    assert out.scores == pytest.approx([0.9, 0.5, 0.1, 0.8, 0.3, 0.2])
    best = rerank(samples, reranker, 3, keep=1)
    assert best.images[:, 0, 0, 0].tolist() == [1, 5] and best.prompt_index == [0, 1]


def test_loss_with_negatives_by_hand_and_without_any_equals_clip_loss() -> None:
    from tessera.models.clip import clip_loss_with_negatives

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    neg = torch.nn.functional.normalize(torch.randn(4, 3, 8, generator=g), dim=-1)
    none = torch.zeros(4, 3, dtype=torch.bool)
    assert torch.allclose(
        clip_loss_with_negatives(img, txt, neg, none, 10.0), clip_loss(img, txt, 10.0)
    )
    mask = torch.tensor([[True, False, True]] * 4)
    got = clip_loss_with_negatives(img, txt, neg, mask, 10.0)
    i2t = 0.0
    for i in range(4):
        row = [10.0 * img[i] @ txt[j] for j in range(4)]
        row += [10.0 * img[i] @ neg[i, m] for m in (0, 2)]
        i2t += -torch.log_softmax(torch.stack(row), 0)[i]
    t2i = torch.nn.functional.cross_entropy(10.0 * txt @ img.t(), torch.arange(4))
    assert torch.allclose(got, (i2t / 4 + t2i) / 2, atol=1e-6)
    # a negative closer to the image than its caption raises the loss
    hard = neg.clone()
    hard[:, 0] = img
    assert clip_loss_with_negatives(img, txt, hard, mask, 10.0) > got


def test_text_features_ignore_columns_after_the_last_eos() -> None:
    model = CLIP(preset("clip", "tiny")).eval()
    cfg = model.config
    ids = torch.zeros(2, cfg.context_length, dtype=torch.long)
    ids[0, :3] = torch.tensor([5, 6, cfg.eos_id])
    ids[1, :5] = torch.tensor([7, 8, 9, 10, cfg.eos_id])
    other = ids.clone()
    other[:, 6:] = 11  # different padding after every <eos>
    with torch.no_grad():
        a, b = model.text_features(ids), model.text_features(other)
        alone = model.text_features(ids[:1])  # trimmed to 3 columns instead of 5
    assert torch.allclose(a, b) and torch.allclose(a[:1], alone, atol=1e-5)


def test_hard_negative_batches_are_canonical_and_masked() -> None:
    from tessera.config.text import TokenizerConfig
    from tessera.text import TextTokenizer
    from tessera.training.stages.clip import CaptionedImages

    caps = [
        ["a red circle", "a round red thing"],
        ["a blue square to the left of a red triangle"],
        ["a drawing of nothing canonical"],
    ]
    tok = TextTokenizer.train([c for cs in caps for c in cs] * 20, TokenizerConfig(vocab_size=300))
    stream = iter([{"images": torch.zeros(3, 3, 8, 8), "captions": caps}] * 2)
    batch = next(CaptionedImages(stream, tok, seed=0, rank=0, hard_negatives=4))
    assert batch["negatives"].shape[0] == 12 and batch["negative_mask"].shape == (3, 4)
    assert batch["negative_mask"][:2].all() and not batch["negative_mask"][2].any()
    text = [tok.decode(row.tolist()) for row in batch["text"]]
    assert "round" not in text[0]  # the canonical caption is the positive
    again = next(CaptionedImages(stream, tok, seed=0, rank=0, hard_negatives=4))
    for k in batch:  # a function of the run seed, rank and batch index: the same draws
        assert torch.equal(batch[k], again[k]), k
