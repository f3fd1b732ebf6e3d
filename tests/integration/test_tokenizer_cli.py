"""``tessera tokenizer train|encode`` end to end on a small .txt corpus and on shapes."""

import argparse
import ast
import importlib.util
import logging

import pytest

from tessera.cli import tokenizer as tokenizer_cli
from tessera.cli.main import main
from tessera.text import CONFIG_FILE, TOKENIZER_FILE, TextTokenizer

CAPTIONS = [
    "A small red circle in the top left corner",
    "a large blue square next to a green triangle",
    "Two yellow stars above a purple hexagon.",
    "ＡＮ orange ﬁsh 🐟 beside a 猫",
]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(CAPTIONS * 20 + ["", "   "]) + "\n", encoding="utf-8")
    return path


def test_train_then_encode(corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", str(corpus), "--out", str(out), "--preset", "tiny"]
    assert main([*argv, "--vocab-size", "320", "--max-length", "24"]) == 0
    printed = capsys.readouterr().out
    assert (out / TOKENIZER_FILE).is_file() and (out / CONFIG_FILE).is_file()
    tok = TextTokenizer.load(out)
    assert (tok.config.vocab_size, tok.max_length) == (320, 24)
    assert f"trained on {len(CAPTIONS) * 20} captions: vocabulary {tok.vocab_size} ids" in printed
    assert str(tok.encode(CAPTIONS[0])) in printed

    assert main(["tokenizer", "encode", str(out), "A red circle", "<eos> 猫"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"'A red circle': {len(tok.encode('a red circle'))} tokens"
    ids = ast.literal_eval(lines[1].split(":", 1)[1].strip())
    assert ids == tok.encode("a red circle") and tok.eos_id not in tok.encode("<eos> 猫")
    tokens = ast.literal_eval(lines[2].split(":", 1)[1].strip())
    assert "".join(tokens).replace("Ġ", " ").strip() == "a red circle"


def test_encode_truncates_an_over_long_prompt_and_says_so(corpus, tmp_path, capsys, caplog):
    """T18 at the CLI: a prompt over max_length used to print all its ids, unwarned."""
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", str(corpus), "--out", str(out), "--preset", "tiny"]
    assert main([*argv, "--max-length", "8"]) == 0
    capsys.readouterr()
    tok = TextTokenizer.load(out)
    prompt = " ".join(CAPTIONS[:2])
    full = tok.encode(prompt, truncate=False)
    n = len(full)
    assert n > 8
    with caplog.at_level(logging.WARNING, logger="tessera.text"):
        assert main(["tokenizer", "encode", str(out), prompt]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        f"{prompt!r}: 8 tokens (truncated to max_length 8: {n - 8} of {n} tokens dropped)"
    )
    assert ast.literal_eval(lines[1].split(":", 1)[1].strip()) == full[:8]
    assert f"dropped the last {n - 8} tokens" in caplog.text
    assert main(["tokenizer", "encode", str(out), prompt, "--no-truncate"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{prompt!r}: {n} tokens (over max_length 8 by {n - 8}; not truncated)"
    assert ast.literal_eval(lines[1].split(":", 1)[1].strip()) == full


def test_n_limits_the_lines_read(corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", str(corpus), "--out", str(out), "--preset", "tiny", "--n", "7"]
    assert main(argv) == 0
    assert "trained on 7 captions" in capsys.readouterr().out


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["tokenizer", "encode", str(tmp_path / "missing"), "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tessera: error: tokenizer file not found") and "\n" not in err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["tokenizer", "train", str(empty), "--out", str(tmp_path / "t")]) == 2
    assert "no text to train" in capsys.readouterr().err
    assert main(["tokenizer", "train", str(tmp_path / "none.txt"), "--out", str(tmp_path)]) == 2
    assert "cannot read captions" in capsys.readouterr().err
    assert main(["tokenizer", "train", str(empty), "--out", str(tmp_path), "--preset", "x"]) == 2
    assert "unknown tokenizer preset" in capsys.readouterr().err


@pytest.mark.skipif(
    importlib.util.find_spec("tessera.data.shapes") is None, reason="shapes data not built yet"
)
def test_train_on_the_shapes_source(tmp_path, capsys):
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "shapes", "--out", str(out), "--preset", "shapes", "--n", "300"]
    assert main(argv) == 0
    tok = TextTokenizer.load(out)
    assert tok.max_length == 32 and 260 < tok.vocab_size <= 512
    assert len(tok.encode("a red circle")) <= 4


def test_register_adds_both_commands():
    parser = argparse.ArgumentParser()
    tokenizer_cli.register(parser.add_subparsers())
    args = parser.parse_args(["encode", "DIR", "a", "b"])
    assert args.func is tokenizer_cli.run_encode and args.texts == ["a", "b"]
    assert parser.parse_args(["train", "x.txt", "--out", "o"]).func is tokenizer_cli.run_train
