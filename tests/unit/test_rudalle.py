"""ruDALL-E -> tessera: parity with ruDALL-E's own ``DalleModel`` (its masks, its logits for
every mask kind, its cached sampling loop) at a small random config, YouTokenToMe ids through
HF ``tokenizers``, and one-line errors for what does not convert."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from helpers.references import missing_reference
from helpers.rudalle_ref import dalle_module
from tessera.config.sampling import DalleSampling
from tessera.convert.rudalle import (
    config_from_rudalle,
    convert_rudalle_state_dict,
    load_rudalle,
    yttm_to_hf,
    yttm_tokenizer,
)
from tessera.errors import CheckpointError, TokenizerError
from tessera.models.dalle import prepare_text
from tessera.nn.masks import attention_mask, layer_kinds
from tessera.sampling.sample import generate_image_tokens

TOL = 1e-5
TEXT_VOCAB, TEXT_LEN, GRID, IMAGE_VOCAB, HEADS = 64, 8, 8, 32, 4


def reference(n_layers: int, seed: int = 0) -> torch.nn.Module:
    """ruDALL-E's ``DalleModel`` (v3, Malevich's options) at a small size, every weight
    random (LayerNorms included)."""
    mod = dalle_module()
    torch.manual_seed(seed)
    ref = mod.DalleModel(
        device="cpu",
        num_layers=n_layers,
        vocab_size=TEXT_VOCAB + TEXT_LEN,
        hidden_size=32,
        num_attention_heads=HEADS,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
        text_seq_length=TEXT_LEN,
        image_tokens_per_dim=GRID,
        image_vocab_size=IMAGE_VOCAB,
        cogview_sandwich_layernorm=True,
        cogview_pb_relax=True,
        hf_version="v3",
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return ref.eval()


def captions(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random BPE captions (ids >= 4, no special ids) of various lengths (one too long for
    its <eos>): (ids (B, n), lengths (B,), ruDALL-E's text ids (B, TEXT_LEN))."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([0, 3, TEXT_LEN - 2, TEXT_LEN - 1, TEXT_LEN + 2][:b])
    ids = torch.randint(4, TEXT_VOCAB, (b, TEXT_LEN + 2), generator=g)
    rows = []
    for row, n in zip(ids.tolist(), lengths.tolist()):
        # YTTMTokenizerWrapper.encode_text + prepare_tokens: [bos] + tokens + [eos], cut, zeros
        t = [2, *row[:n], 3][:TEXT_LEN]
        rows.append(t + [0] * (TEXT_LEN - len(t)))
    return ids, lengths, torch.tensor(rows)


@pytest.mark.parametrize("kind", ["row", "column", "conv"])
def test_masks_equal_rudalle(kind):
    dalle_module()  # loads its sibling image_attention.py too
    ia = importlib.import_module("_rudalle_ref.dalle.image_attention")
    build = {"row": ia.get_row_mask, "column": ia.get_col_mask, "conv": ia.get_conv_mask}[kind]
    theirs = build(TEXT_LEN, GRID, is_bool_mask=True)
    ours = attention_mask(kind, TEXT_LEN, GRID, GRID, conv_kernel=11)
    assert torch.equal(theirs, ours)
    if kind == "conv":  # at an 8 x 8 grid the 11 x 11 window is a real restriction
        assert not torch.equal(ours, attention_mask("full", TEXT_LEN, GRID, GRID))


@pytest.mark.parametrize("n_layers", [4, 6])
def test_logits_equal_rudalle(n_layers):
    ref = reference(n_layers)
    # every kind at 4 layers; at 6 ruDALL-E's schedule ends on a column layer, the paper's on conv
    kinds = {
        4: ["row", "column", "row", "conv"],
        6: ["row", "column", "row", "row", "row", "column"],
    }
    model = load_rudalle(ref.state_dict(), n_heads=HEADS)
    assert [b.kind for b in model.blocks] == kinds[n_layers]
    assert layer_kinds(6) == ["row", "column", "row", "row", "row", "conv"]  # the paper's
    for i, block in enumerate(model.blocks):  # each layer reads the mask ruDALL-E's does
        want = {"row": "row_mask", "column": "col_mask", "conv": "conv_mask"}[block.kind]
        assert ref.transformer._get_layer_mask(i) is getattr(ref.transformer, want)
    cfg = model.config
    ids, lengths, text_ids = captions(5, seed=n_layers)
    image = torch.randint(
        0, IMAGE_VOCAB, (5, GRID * GRID), generator=torch.Generator().manual_seed(9)
    )
    # the text stream: ruDALL-E replaces each 0 by its position's padding token
    text = prepare_text(ids, lengths, cfg)
    pad = torch.arange(TEXT_LEN) + TEXT_VOCAB
    assert torch.equal(text, torch.where(text_ids == 0, pad, text_ids))
    seq = TEXT_LEN + GRID * GRID
    with torch.no_grad():
        logits, _ = ref(torch.cat([text_ids, image], 1), torch.ones(5, 1, seq, seq).tril())
        h = model.hidden(model.embed(text, image))
        text_logits, image_logits = model.text_logits(h), model.image_logits(h)
    table = cfg.text_table
    assert (text_logits - logits[..., :table]).abs().max() < TOL
    assert (image_logits - logits[..., table:]).abs().max() < TOL


def top_k_top_p_filtering(logits, top_k=0, top_p=1.0, filter_value=-float("Inf")):
    """transformers 4.10's ``top_k_top_p_filtering`` (what ruDALL-E's ``generate_images``
    calls; removed from transformers 5), verbatim but for ``min_tokens_to_keep=1``."""
    if top_k > 0:
        top_k = min(max(top_k, 1), logits.size(-1))
        indices_to_remove = logits < torch.topk(logits, top_k)[0][..., -1, None]
        logits[indices_to_remove] = filter_value
    if top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True)
        cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        sorted_indices_to_remove = cumulative_probs > top_p
        sorted_indices_to_remove[..., 1:] = sorted_indices_to_remove[..., :-1].clone()
        sorted_indices_to_remove[..., 0] = 0
        indices_to_remove = sorted_indices_to_remove.scatter(
            1, sorted_indices, sorted_indices_to_remove
        )
        logits[indices_to_remove] = filter_value
    return logits


def reference_sample(ref, text_ids, *, top_k, top_p, temperature, generator):
    """ruDALL-E's ``generate_images`` token loop (its KV cache, its filtering), with the draw
    ``torch.multinomial(probs, 1)`` replaced by inverse-CDF on uniforms from ``generator``
    (one per token and row, in tessera's order): the same seed-fixed draws."""
    b = text_ids.shape[0]
    seq = TEXT_LEN + GRID * GRID
    attention_mask = torch.tril(torch.ones((b, 1, seq, seq)))
    out, cache = text_ids, None
    with torch.no_grad():
        for _ in range(out.shape[1], seq):
            logits, cache = ref(out, attention_mask, use_cache=True, cache=cache, return_loss=False)
            logits = logits[:, -1, ref.vocab_size :]
            logits /= temperature
            filtered = top_k_top_p_filtering(logits, top_k=top_k, top_p=top_p)
            probs = torch.nn.functional.softmax(filtered, dim=-1)
            u = torch.rand(b, 1, generator=generator)
            cdf = probs.cumsum(-1)
            sample = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp(
                max=probs.shape[-1] - 1
            )
            out = torch.cat((out, sample), dim=-1)
    return out[:, TEXT_LEN:]


@pytest.mark.parametrize("use_cache", [True, False])
def test_cached_sampling_draws_rudalles_tokens(use_cache):
    ref = reference(4, seed=3)
    model = load_rudalle(ref.state_dict(), n_heads=HEADS)
    ids, lengths, text_ids = captions(3, seed=4)
    knobs = {"top_k": 12, "top_p": 0.9, "temperature": 0.8}
    theirs = reference_sample(ref, text_ids, **knobs, generator=torch.Generator().manual_seed(5))
    settings = DalleSampling(**knobs, use_cache=use_cache)
    ours = generate_image_tokens(
        model,
        prepare_text(ids, lengths, model.config),
        settings=settings,
        generator=torch.Generator().manual_seed(5),
    )
    assert torch.equal(ours, theirs)


def test_unknown_and_missing_keys_are_one_line():
    sd = reference(4).state_dict()
    cfg = config_from_rudalle(sd, n_heads=HEADS)
    bad = {**sd, "transformer.layers.0.attention.rotary.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"1 unknown ruDALL-E key\(s\): 'transformer") as e:
        convert_rudalle_state_dict(bad, cfg)
    assert "\n" not in str(e.value)
    short = {k: v for k, v in sd.items() if "layers.3." not in k}
    with pytest.raises(CheckpointError, match="missing key"):
        convert_rudalle_state_dict(short, cfg)
    wrapped = {**sd, "transformer.conv_mask": sd["transformer.row_mask"]}
    with pytest.raises(CheckpointError, match="conv_mask differs"):
        convert_rudalle_state_dict(wrapped, cfg)


CORPUS = [
    "Красный круг на синем фоне",
    "маленькая   собака\tи большой кот",
    "ёжик в тумане ",
    "  cat and dog",
    "Котик!",
    "",
    "\u2581\u2581кот\u2581",
    "<PAD> <EOS> кот",
    "x\u00a0y",
    "zzz qqq ЪЪЪ",
]


def _yttm():
    if importlib.util.find_spec("youtokentome") is None:
        missing_reference("youtokentome")
    import youtokentome

    return youtokentome


def test_yttm_bpe_ids_through_hf_tokenizers(tmp_path):
    yttm = _yttm()
    words = "красный синий зелёный круг квадрат треугольник на в и под над большой маленький"
    words = [*words.split(), "собака", "кошка", "кот", "ёжик", "cat", "dog", "фон", "туман"]
    g = torch.Generator().manual_seed(0)
    lines = [
        " ".join(words[int(i)] for i in torch.randint(0, len(words), (int(n),), generator=g))
        for n in torch.randint(1, 9, (3000,), generator=g)
    ]
    (tmp_path / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    bpe = yttm.BPE.train(
        data=str(tmp_path / "corpus.txt"), model=str(tmp_path / "bpe.model"), vocab_size=200
    )
    raw = yttm_to_hf(tmp_path / "bpe.model", lowercase=False)
    raw.encode_special_tokens = True  # special-token text in a caption is text, as in YTTM
    texts = CORPUS + lines[:500]
    for t in texts:
        assert raw.encode(t).ids == bpe.encode([t], output_type=yttm.OutputType.ID)[0], t
    # as tessera's tokenizer: ruDALL-E's pipeline lower-cases and strips every prompt first
    tok = yttm_tokenizer(tmp_path / "bpe.model", text_len=32)
    batch = tok.encode_batch(texts)
    for t, row, n in zip(texts, batch.ids, batch.lengths):
        want = bpe.encode([t.lower().strip()], output_type=yttm.OutputType.ID)[0][:30]
        assert row[: int(n)].tolist() == want, t
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)
    assert (
        tok.tokens(tok.encode("кот")) == bpe.encode(["кот"], output_type=yttm.OutputType.SUBWORD)[0]
    )


def test_bad_bpe_files(tmp_path):
    (tmp_path / "x.model").write_text("not a model\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="not a YouTokenToMe"):
        yttm_to_hf(tmp_path / "x.model")
    # two merge rules spelling the same string cannot live in one HF vocabulary
    chars = {9601: 4, ord("a"): 5, ord("b"): 6}
    rules = [(5, 6, 7), (7, 6, 8), (6, 6, 9), (5, 9, 10)]  # ab, abb, bb, abb again
    lines = [f"{len(chars)} {len(rules)}", *(f"{c} {i}" for c, i in chars.items())]
    lines += [f"{x} {y} {z}" for x, y, z in rules] + ["1 0 2 3"]
    (tmp_path / "dup.model").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="ids 8 and 10 are both 'abb'"):
        yttm_to_hf(tmp_path / "dup.model")
