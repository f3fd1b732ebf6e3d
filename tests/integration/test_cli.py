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
