"""The `attnkit softmax` explainer reproduces the texts' worked examples; errors are one line, exit 2."""

from __future__ import annotations

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
