"""The BPE text tokenizer (T18 over-long prompts, T19 normalisation and round trips)."""

import json
import logging
import pickle
import random
import subprocess
import sys
import unicodedata

import pytest
import torch

from tessera.config.text import TokenizerConfig
from tessera.errors import TokenizerError
from tessera.text import CONFIG_FILE, TOKENIZER_FILE, TextTokenizer
from tessera.text.tokenizer import _ASCII_WS, _CHUNK, _SEP

COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon"]
PLACES = ["top left", "top right", "bottom left", "bottom right", "center"]


def corpus(n=600, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a = f"a {rng.choice(['small', 'large'])} {rng.choice(COLORS)} {rng.choice(SHAPES)}"
        if i % 3 == 0:
            out.append(f"{a.capitalize()} in the {rng.choice(PLACES)} corner.")
        elif i % 3 == 1:
            out.append(f"{a} above a {rng.choice(COLORS)} {rng.choice(SHAPES)}")
        else:
            out.append(f"{a}, next to {rng.randint(2, 9)} stars")
    return out


CONFIG = TokenizerConfig(vocab_size=400, max_length=16, dropout=0.1)


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.train(corpus(), CONFIG)


def nfkc_lower(text):
    return unicodedata.normalize("NFKC", text).lower().strip()


# -- T19: normalisation and round trip ---------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "A small red circle in the top left corner",
        "a small red circle in the top left corner.",
        "THREE Blue Squares, 2 stars & a   hexagon!",
        "tabs\tand\nnewlines inside",
        "  leading and trailing spaces  ",
        'it\'s a "quoted" (shape) #42',
    ],
)
def test_ascii_round_trip_is_lowercased_input(tok, text):
    assert tok.decode(tok.encode(text, truncate=False)) == text.lower().strip()


def test_uppercase_is_lowercased(tok):
    assert tok.encode("A RED Circle") == tok.encode("a red circle")


@pytest.mark.parametrize(
    ("text", "normalised"),
    [("ﬁsh", "fish"), ("ＡＢＣ ｒｅｄ", "abc red"), ("Ⅻ stars", "xii stars"), ("x²", "x2")],
)
def test_nfkc_is_applied(tok, text, normalised):
    assert tok.normalize(text) == normalised
    assert tok.encode(text) == tok.encode(normalised)
    assert tok.decode(tok.encode(text)) == normalised


@pytest.mark.parametrize(
    "text", ["🐱 next to a 🟥", "红色的圆", "猫と犬", "Ünïcödé ßtraße", "👩‍👩‍👧"]
)
def test_emoji_and_cjk_encode_without_unk_and_round_trip(tok, text):
    ids = tok.encode(text, truncate=False)
    assert ids and all(3 <= i < tok.vocab_size for i in ids)  # byte tokens, never a special
    assert tok.hf_tokenizer.model.unk_token is None
    assert tok.decode(ids) == nfkc_lower(text)


def test_red_is_one_token_at_start_and_in_the_middle(tok):
    # add_prefix_space=True: the caption's first word is the same token as mid-caption
    assert tok.encode("red")[0] == tok.encode("a red")[1]


def test_special_token_text_in_a_caption_stays_text(tok):
    ids = tok.encode("<pad> <bos> <eos>", truncate=False)
    assert not {tok.pad_id, tok.bos_id, tok.eos_id} & set(ids)
    assert tok.decode(ids) == "<pad> <bos> <eos>"


def test_special_ids_are_stable_after_save_and_load(tok, tmp_path):
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    tok.save(tmp_path)
    loaded = TextTokenizer.load(tmp_path)
    hf = loaded.hf_tokenizer
    assert [hf.token_to_id(t) for t in ("<pad>", "<bos>", "<eos>")] == [0, 1, 2]
    assert loaded.vocab_size == tok.vocab_size
    texts = [*corpus(50, seed=3), "🐱 猫", "ﬁsh"]
    assert [loaded.encode(t) for t in texts] == [tok.encode(t) for t in texts]
    loaded.save(tmp_path / "again")
    assert (tmp_path / "again" / TOKENIZER_FILE).read_bytes() == (
        tmp_path / TOKENIZER_FILE
    ).read_bytes()


def test_decode_skips_specials_and_padding(tok):
    ids = [tok.bos_id, *tok.encode("a red star"), tok.eos_id, 0, 0]
    assert tok.decode(ids) == "a red star"
    assert tok.decode(torch.tensor(ids)) == "a red star"
    batch = tok.encode_batch(["a red star", "A Blue Circle"], add_eos=True)
    assert tok.decode_batch(batch.ids) == ["a red star", "a blue circle"]


def test_decode_rejects_ids_out_of_range(tok):
    with pytest.raises(TokenizerError, match="outside"):
        tok.decode([5, tok.vocab_size])
    with pytest.raises(TokenizerError):
        tok.decode([-1])


# -- batches -----------------------------------------------------------------------------------
def test_batch_shapes_dtype_and_padding(tok):
    texts = ["a red circle", "a small blue square in the top left corner", ""]
    batch = tok.encode_batch(texts)
    assert batch.ids.shape == (3, 16) and batch.ids.dtype == torch.int64
    assert batch.lengths.dtype == torch.int64
    assert batch.lengths.tolist() == [len(tok.encode(t)) for t in texts]
    for row, text, n in zip(batch.ids, texts, batch.lengths.tolist()):
        assert row[:n].tolist() == tok.encode(text)
        assert (row[n:] == tok.pad_id).all()
    assert batch.mask.tolist() == [[j < n for j in range(16)] for n in batch.lengths.tolist()]
    assert (batch.truncated, batch.dropped_tokens) == (0, 0)
    empty = tok.encode_batch([])
    assert empty.ids.shape == (0, 16) and empty.lengths.shape == (0,)


def test_add_eos_ends_every_caption(tok):
    texts = ["a red circle", ""]
    batch = tok.encode_batch(texts, add_eos=True)
    for row, text, n in zip(batch.ids, texts, batch.lengths.tolist()):
        assert row[:n].tolist() == [*tok.encode(text), tok.eos_id]


def random_text(rng):
    pieces = [
        "".join(
            rng.choice("abcXYZ019 .,!'\t\n\x0b\x1c\x1f\x00") for _ in range(rng.randint(0, 12))
        ),
        "".join(chr(rng.randint(0, 127)) for _ in range(rng.randint(0, 8))),
        rng.choice(["", " ", "  ", "\u3000", "\xa0", "ﬁ", "ＡＢ", "ΟΔΟΣ", "猫", "🐱", "e\u0301"]),
        rng.choice(["", "<eos>", "<pad>", "a red circle", "Σ", "İ"]),
    ]
    rng.shuffle(pieces)
    return "".join(pieces)


def test_batch_equals_one_by_one_encoding():
    # The joined fast path must give exactly the ids of encoding each caption on its own.
    tok = TextTokenizer.train(corpus(), CONFIG.replace(max_length=64))
    rng = random.Random(0)
    texts = [random_text(rng) for _ in range(3 * _CHUNK + 5)]  # several chunks
    batch = tok.encode_batch(texts)
    for row, text, n in zip(batch.ids.tolist(), texts, batch.lengths.tolist()):
        expected = tok.encode(text, truncate=False)[:64]
        assert (n, row[:n]) == (len(expected), expected), repr(text)
        assert tok.decode(tok.encode(text, truncate=False)) == tok.normalize(text), repr(text)
    # with dropout: other segmentations of the same text
    train = tok.encode_batch(texts * 4, train=True, seed=1)
    assert train.truncated >= batch.truncated * 4
    texts_back = tok.decode_batch(train.ids)
    for text, back, n in zip(texts * 4, texts_back, train.lengths.tolist()):
        if n < 64:
            assert back == tok.normalize(text), repr(text)


def test_ascii_prenormalisation_equals_the_saved_normalizer(tok):
    # The batch path lower-cases and strips ASCII captions in Python; it must equal HF's
    # NFKC -> Lowercase -> Strip on every ASCII character, alone and between letters.
    for code in range(128):
        c = chr(code)
        for text in (c, c * 3, f"A{c}b", f"{c}Ab{c}", f" {c} "):
            assert text.lower().strip(_ASCII_WS) == tok.normalize(text), repr(text)


def test_caption_containing_the_separator_falls_back_exactly(tok):
    texts = ["a red circle", f"a {_SEP} blue", "a star"]
    batch = tok.encode_batch(texts)
    for row, text, n in zip(batch.ids.tolist(), texts, batch.lengths.tolist()):
        assert row[:n] == tok.encode(text, truncate=False)[:16]


def test_non_string_input_is_a_tokenizer_error(tok):
    with pytest.raises(TokenizerError, match="str"):
        tok.encode_batch(["a", 3])
    with pytest.raises(TokenizerError, match="str"):
        tok.encode(None)


# -- T18: over-long prompts --------------------------------------------------------------------
def test_long_caption_is_truncated_with_a_warning_and_counted(tok, caplog):
    tok = pickle.loads(pickle.dumps(tok))  # fresh stats
    long = " ".join(corpus(40))
    full = tok.encode(long, truncate=False)
    assert len(full) > 16
    with caplog.at_level(logging.WARNING, logger="tessera.text"):
        batch = tok.encode_batch([long, "a red circle"])
    assert batch.ids.shape == (2, 16)
    assert batch.ids[0].tolist() == full[:16]
    assert batch.lengths.tolist() == [16, len(tok.encode("a red circle"))]
    assert (batch.truncated, batch.dropped_tokens) == (1, len(full) - 16)
    assert (tok.stats.captions, tok.stats.truncated, tok.stats.dropped_tokens) == (
        2,
        1,
        len(full) - 16,
    )
    [record] = [r for r in caplog.records if r.name == "tessera.text"]
    assert record.levelno == logging.WARNING
    assert f"dropping {len(full) - 16} tokens" in record.getMessage()


def test_truncation_keeps_eos(tok):
    long = " ".join(corpus(40))
    full = tok.encode(long, truncate=False)
    batch = tok.encode_batch([long], add_eos=True)
    assert batch.ids[0].tolist() == [*full[:15], tok.eos_id]
    assert (batch.lengths.item(), batch.dropped_tokens) == (16, len(full) - 15)


def test_paper_length_prompt_over_256_tokens(tok, caplog):
    tok256 = TextTokenizer(tok.hf_tokenizer, CONFIG.replace(max_length=256))
    long = " ".join(corpus(200))
    n = len(tok256.encode(long, truncate=False))
    assert n > 256
    with caplog.at_level(logging.WARNING, logger="tessera.text"):
        batch = tok256.encode_batch([long])
    assert batch.ids.shape == (1, 256) and batch.lengths.item() == 256
    assert batch.dropped_tokens == n - 256
    assert f"dropping {n - 256} tokens" in caplog.text


def test_encode_truncates_an_over_long_prompt_with_a_warning(tok, caplog):
    """T18 for a single prompt: 300 tokens against max_length 256 -> 256 ids and a warning
    naming the 44 dropped tokens; ``truncate=False`` keeps them all."""
    tok256 = TextTokenizer(tok.hf_tokenizer, CONFIG.replace(max_length=256))
    prompt = tok256.decode(tok256.encode(" ".join(corpus(200)), truncate=False)[:300])
    full = tok256.encode(prompt, truncate=False)
    n = len(full)
    assert n > 290
    with caplog.at_level(logging.WARNING, logger="tessera.text"):
        ids = tok256.encode(prompt)
    assert ids == full[:256]
    [record] = [r for r in caplog.records if r.name == "tessera.text"]
    assert record.levelno == logging.WARNING
    assert f"prompt of {n} tokens truncated to max_length 256" in record.getMessage()
    assert f"dropped the last {n - 256} tokens" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tessera.text"):
        assert tok256.encode(prompt, truncate=False) == full
        assert tok256.encode("a red circle") == tok256.encode("a red circle", truncate=False)
    assert not caplog.records


def test_training_truncation_warns_once_then_counts(tok, caplog):
    tok = pickle.loads(pickle.dumps(tok))
    long = " ".join(corpus(40))
    with caplog.at_level(logging.DEBUG, logger="tessera.text"):
        for _ in range(3):
            tok.encode_batch([long], train=True, seed=0)
    levels = [r.levelno for r in caplog.records if r.name == "tessera.text"]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert tok.stats.truncated == 3 and tok.stats.batches == 3


# -- BPE dropout -------------------------------------------------------------------------------
def test_no_dropout_at_inference(tok):
    text = "a small red circle in the top left corner"
    reference = tok.encode(text)
    tok.encode_batch([text] * 100, train=True, seed=0)  # training batches in between change nothing
    assert all(tok.encode(text) == reference for _ in range(1000))
    batch = tok.encode_batch([text] * 1000)
    assert (batch.ids == batch.ids[0]).all()
    assert batch.ids[0, : len(reference)].tolist() == reference


def test_dropout_changes_segmentation_in_training_only(tok):
    tok = TextTokenizer(tok.hf_tokenizer, CONFIG.replace(max_length=64))  # room for dropout
    texts = corpus(20, seed=5)
    batch = tok.encode_batch(texts * 50, train=True, seed=0)
    rows = [tuple(r) for r in batch.ids.tolist()]
    distinct = {t: {rows[i] for i in range(len(rows)) if i % 20 == j} for j, t in enumerate(texts)}
    assert all(len(d) > 1 for d in distinct.values())  # every caption got several segmentations
    # ... that all spell the same text, and are longer on average than without dropout
    assert batch.truncated == 0
    assert tok.decode_batch(batch.ids) == [t.lower() for t in texts * 50]
    plain = tok.encode_batch(texts * 50)
    assert batch.lengths.sum() > plain.lengths.sum()


def test_inference_is_unaffected_by_concurrent_training_batches(tok):
    from concurrent.futures import ThreadPoolExecutor

    texts = corpus(300, seed=7)
    reference = tok.encode_batch(texts).ids

    def work(i):
        batch = tok.encode_batch(texts, train=i % 2 == 1, seed=i)
        return i % 2 == 1 or torch.equal(batch.ids, reference)

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(16)))


def test_zero_dropout_config_makes_training_deterministic(tok):
    tok0 = TextTokenizer(tok.hf_tokenizer, CONFIG.replace(dropout=0.0))
    texts = corpus(50)
    assert torch.equal(tok0.encode_batch(texts, train=True).ids, tok0.encode_batch(texts).ids)


def test_dropout_is_a_function_of_the_seed(tok):
    # the draws come from the caller's seed, never from the library's unseedable RNG
    tok = TextTokenizer(tok.hf_tokenizer, CONFIG.replace(max_length=64))
    texts = corpus(40, seed=3)
    a = tok.encode_batch(texts, train=True, seed=11).ids
    assert torch.equal(a, tok.encode_batch(texts, train=True, seed=11).ids)
    assert not torch.equal(a, tok.encode_batch(texts, train=True, seed=12).ids)
    with pytest.raises(TokenizerError, match="needs a seed"):
        tok.encode_batch(texts, train=True)


def test_seeded_bpe_without_dropout_is_the_library_bpe(tok):
    from tessera.text.tokenizer import _SeededBPEDropout

    bpe = _SeededBPEDropout(tok.hf_tokenizer.to_str())
    pre = tok.hf_tokenizer.pre_tokenizer
    rng = random.Random(0)
    for text in corpus(200, seed=9) + [random_text(rng) for _ in range(200)]:
        words = pre.pre_tokenize_str(tok.normalize(text))
        ids = [i for w, _ in words for i in bpe.ids(w, 0.0, rng)]
        assert ids == tok.encode(text, truncate=False), repr(text)


# -- training, files, config -------------------------------------------------------------------
def test_training_is_deterministic(tok, tmp_path):
    again = TextTokenizer.train(corpus(), CONFIG)
    assert again.hf_tokenizer.to_str() == tok.hf_tokenizer.to_str()
    # ... also in another process (hash seeds and thread pools differ)
    tok.save(tmp_path / "here")
    script = (
        "import random, sys\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from test_tokenizer import corpus, CONFIG\n"
        "from tessera.text import TextTokenizer\n"
        "TextTokenizer.train(corpus(), CONFIG).save(sys.argv[1])\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "there"), str(_tests_dir())],
        check=True,
        env={"PYTHONHASHSEED": "123", "RAYON_NUM_THREADS": "1", "PATH": ""},
    )
    assert (tmp_path / "there" / TOKENIZER_FILE).read_bytes() == (
        tmp_path / "here" / TOKENIZER_FILE
    ).read_bytes()


def _tests_dir():
    from pathlib import Path

    return Path(__file__).parent


def test_vocabulary_size_and_merges_learned(tok):
    assert 259 < tok.vocab_size <= CONFIG.vocab_size
    # frequent words become single tokens
    assert len(tok.encode("circle")) == 1 and len(tok.encode("a red triangle")) == 3


@pytest.mark.parametrize("texts", [[], ["", "   ", "\n"]])
def test_empty_training_corpus_is_an_error(texts):
    with pytest.raises(TokenizerError, match="no text"):
        TextTokenizer.train(iter(texts), CONFIG)


def test_non_string_training_text_is_an_error():
    with pytest.raises(TokenizerError, match="not a str"):
        TextTokenizer.train(["a red circle", b"bytes"], CONFIG)


def test_config_json_round_trip(tok, tmp_path):
    tok.save(tmp_path)
    text = (tmp_path / CONFIG_FILE).read_text()
    assert text == CONFIG.to_json() and json.loads(text)["kind"] == "tokenizer"
    assert TokenizerConfig.from_json(text) == CONFIG
    assert TextTokenizer.load(tmp_path).config == CONFIG
    assert TextTokenizer.load(tmp_path / TOKENIZER_FILE).config == CONFIG  # file: sibling config
    override = CONFIG.replace(max_length=8)
    assert TextTokenizer.load(tmp_path, config=override).max_length == 8


def test_load_beside_a_model_config(tok, tmp_path):
    # A model checkpoint folder: its config.json is the model's; the tokenizer rides along.
    tok.save(tmp_path, write_config=False)
    (tmp_path / CONFIG_FILE).write_text(
        json.dumps({"kind": "dalle", "tokenizer": CONFIG.replace(max_length=32).to_dict()})
    )
    assert TextTokenizer.load(tmp_path).max_length == 32
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"kind": "vae", "channels": 3}))
    assert TextTokenizer.load(tmp_path).config == TokenizerConfig()


def test_missing_and_corrupt_files_are_tokenizer_errors(tok, tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        TextTokenizer.load(tmp_path / "nowhere")
    with pytest.raises(TokenizerError, match="not found"):
        TextTokenizer.load(tmp_path)  # a folder without tokenizer.json
    tok.save(tmp_path / "t")
    bad = tmp_path / "t" / TOKENIZER_FILE
    good = bad.read_text()
    for corrupt in ("{not json", good[: len(good) // 2], "", '{"version": "1.0"}'):
        bad.write_text(corrupt)
        with pytest.raises(TokenizerError, match="invalid tokenizer file") as e:
            TextTokenizer.load(tmp_path / "t")
        assert "\n" not in str(e.value)
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TokenizerError):
        TextTokenizer.load(tmp_path / "t")
    bad.write_text(good)
    (tmp_path / "t" / CONFIG_FILE).write_text('{"kind": "tokenizer", "vocab_size": 1}')
    with pytest.raises(TokenizerError, match="bad tokenizer config"):
        TextTokenizer.load(tmp_path / "t")


def test_foreign_tokenizer_without_our_specials_is_rejected(tok, tmp_path):
    data = json.loads(tok.hf_tokenizer.to_str())
    data["added_tokens"] = data["added_tokens"][1:]  # no <pad>
    data["model"]["vocab"].pop("<pad>")
    (tmp_path / TOKENIZER_FILE).write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match="<pad>"):
        TextTokenizer.load(tmp_path)


def test_config_vocab_smaller_than_the_tokenizer_is_rejected(tok):
    with pytest.raises(TokenizerError, match="config.vocab_size"):
        TextTokenizer(tok.hf_tokenizer, CONFIG.replace(vocab_size=300))


def test_pickle_round_trip(tok):
    copy = pickle.loads(pickle.dumps(tok))
    assert copy.config == tok.config and copy.encode("a red star") == tok.encode("a red star")
