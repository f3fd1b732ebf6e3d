"""The console script: every command has --help; user errors are one line and non-zero."""

import subprocess
import sys

import pytest

from tessera.cli.main import build_parser, main


def _commands(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _commands(sub, (*prefix, name))


COMMANDS = sorted(set(_commands(build_parser())))


def test_expected_commands_exist():
    assert {("data", "shapes"), ("data", "inspect"), ("tokenizer", "train"), ("demo",)} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help_on_every_command(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: tessera" in capsys.readouterr().out


def test_console_script_runs_as_module():
    out = subprocess.run(
        [sys.executable, "-m", "tessera", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("tessera ")


def test_user_error_is_one_line_without_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "tessera", "data", "inspect", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith("tessera: error:")


@pytest.mark.parametrize(
    "make_args",
    [
        lambda f: ["demo", "--out", str(f)],
        lambda f: ["tokenizer", "train", "shapes", "--n", "5", "--out", str(f)],
        lambda f: ["data", "shapes", "--out", str(f / "sub"), "--n", "3"],
        lambda f: ["data", "shapes", "--out", "/proc/tessera-cannot-write", "--n", "3"],
    ],
)
def test_os_errors_on_user_paths_are_one_line(tmp_path, make_args, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = main(make_args(blocker))
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err[-1].startswith("tessera: error:") and "Traceback" not in "\n".join(err)


def _help(capsys, *cmd: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _option_help(text: str, flag: str) -> str:
    """The option's entry in --help (its flags, metavars and help), as one line."""
    lines = text.split("\noptions:\n", 1)[1].splitlines()
    start = next(i for i, x in enumerate(lines) if x.strip().startswith(flag + " "))
    entry = [lines[start]]
    for x in lines[start + 1 :]:
        if x.strip().startswith("-"):
            break
        entry.append(x)
    return " ".join(" ".join(entry).split())


def test_top_level_help_names_both_generators(capsys):
    text = " ".join(_help(capsys).split())
    assert "DALL·E" in text and "DALL·E 2 (unCLIP)" in text


def test_decoder_train_describes_what_the_decoder_reads(capsys):
    text = _help(capsys, "decoder", "train")
    assert "stage 2" not in text and "--vae" not in text  # the decoder reads no dVAE
    assert "condition the decoder" in _option_help(text, "--clip")
    assert "decoder's captions" in _option_help(text, "--tokenizer")
    assert "image tokenizer checkpoint (a dVAE or a VQGAN)" in _option_help(
        _help(capsys, "dalle", "train"), "--vae"
    )


def test_a_checkpoint_flag_the_stage_does_not_read_is_refused(tmp_path, capsys):
    argv = ["decoder", "train", "--vae", str(tmp_path), "--run-dir", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "decoder training reads no --vae checkpoint" in err


@pytest.mark.parametrize(
    ("cmd", "flag", "wanted"),
    [
        (("interpolate",), "--steps", "(default 8)"),
        (("textdiff",), "--steps", "(default 5)"),
        (("generate",), "--seed", "same seed"),
        (("generate",), "--seed", "(default 0)"),
        (("variations",), "--model", "unclip"),
        (("serve",), "--model", "unclip"),
        (("demo",), "--model", "unclip"),
    ],
)
def test_option_help_says_what_it_does_and_its_default(capsys, cmd, flag, wanted):
    assert wanted in _option_help(_help(capsys, *cmd), flag)
