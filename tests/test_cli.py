"""The `attnkit softmax` explainer reproduces the texts' worked examples; errors are one line, exit 2."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from attnkit.cli import main


@pytest.mark.parametrize(
    "args,expected",
    [
        (["2.0", "1.0", "0.1"], "softmax = [0.659, 0.242, 0.099]"),
        (["3.0", "1.0", "0.2"], "softmax = [0.836, 0.113, 0.051]"),
        (["8.0", "2.0", "4.0", "--digits", "4"], "softmax = [0.9796, 0.0024, 0.0179]"),
        (["1000", "1001", "1002"], "softmax = [0.090, 0.245, 0.665]"),
        (["1", "2", "--temperature", "0.5"], "softmax = [0.119, 0.881]"),
    ],
)
def test_worked_examples(capsys, args, expected):
    assert main(["softmax", *args]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # the answer is the last line, unless a classic-mistake correction follows it (2 1 0.1: test_cli_lessons.py)
    assert lines[-1] == expected or (lines[0] == expected and lines[1].startswith("correction:"))


def test_explain_shows_each_step(capsys):
    main(["softmax", "2.0", "1.0", "0.1", "--explain"])
    out = capsys.readouterr().out
    for piece in ["e^2.000 = 7.3891", "e^1.000 = 2.7183", "e^0.100 = 1.1052", "= 11.2125", "7.3891 / 11.2125 = 0.659"]:
        assert piece in out


def test_naive_shows_overflow_and_fix(capsys):
    main(["softmax", "1000", "1001", "1002", "--naive"])
    out = capsys.readouterr().out
    assert "[inf, inf, inf]" in out and "[nan, nan, nan]" in out and "overflow" in out
    assert "e^(x-m) = [0.1353, 0.3679, 1.0000]" in out


@pytest.mark.parametrize("args", [[], ["a", "1"], ["nan", "1"], ["1", "--temperature", "0"], ["1", "--temperature", "x"]])
def test_bad_input_one_line_exit_2(args):
    proc = subprocess.run([sys.executable, "-m", "attnkit.cli", "softmax", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "error" in proc.stderr


def test_negative_numbers_are_values(capsys):
    assert main(["softmax", "-1", "-2"]) == 0
    assert capsys.readouterr().out.strip() == "softmax = [0.731, 0.269]"


def test_python_dash_m_attnkit_and_version():
    from attnkit import __version__

    proc = subprocess.run([sys.executable, "-m", "attnkit", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"attnkit {__version__}"
    proc = subprocess.run([sys.executable, "-m", "attnkit", "softmax", "1", "1"], capture_output=True, text=True)
    assert proc.returncode == 0 and "softmax = [0.500, 0.500]" in proc.stdout


def test_a_closed_pipe_is_not_an_error():
    # `attnkit softmax 1 2 3 --explain | head -1`: the reader leaves first. Closing our end before the
    # command writes makes the broken pipe certain (with `head` it depends on timing).
    proc = subprocess.Popen([sys.executable, "-m", "attnkit", "softmax", "1", "2", "3", "--explain"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == b"", err.decode()


def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from _parsers(sub)


def test_every_help_shows_defaults_and_one_example_per_line():
    from attnkit.cli.main import build_parser

    parsers = list(_parsers(build_parser()))
    assert len(parsers) >= 8
    for parser in parsers:
        text = parser.format_help()
        for action in parser._actions:
            shown = not (action.default is None or action.default is False or action.default == argparse.SUPPRESS)
            if action.option_strings and shown:
                entry = re.split(r"\n  (?=-)", text.split("\noptions:\n", 1)[1])  # one item per option
                entry = next(e for e in entry if e.lstrip().startswith(action.option_strings[0]))
                assert "default" in entry, f"{parser.prog} {action.option_strings[0]}: no default in --help"
        if "examples:" in text:
            lines = text.split("examples:\n", 1)[1].strip("\n").splitlines()
            assert lines and all(line.startswith("  attnkit ") and " | " not in line for line in lines), (parser.prog, lines)
