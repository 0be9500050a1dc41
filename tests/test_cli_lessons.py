"""`attnkit softmax` lessons: classic mistakes corrected, --compare, --target, --dk.

Every printed number is checked against an independent float64 computation (torch.softmax,
torch.autograd.functional.jacobian, F.cross_entropy's autograd gradient, the entmax package when installed).
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from attnkit.cli import main
from attnkit.cli.lessons import compare, corrections, cross_entropy_steps, saturation

NUM = r"[-+]?\d+\.\d+"


def _run(capsys, *args: str) -> list[str]:
    assert main(["softmax", *args]) == 0
    return capsys.readouterr().out.strip().splitlines()


def _vec(text: str) -> list[float]:
    return [float(v) for v in re.findall(NUM, text)]


def _sm(xs) -> np.ndarray:
    return torch.softmax(torch.tensor(xs, dtype=torch.float64), -1).numpy()


def test_no_lesson_for_ordinary_numbers(capsys):
    assert _run(capsys, "1", "2") == ["softmax = [0.269, 0.731]"]
    assert corrections([1.0, 2.0]) == []


@pytest.mark.parametrize("args", [["0.2", "2.1"], ["2.0", "2.1"]])
def test_smooth_claim_corrected_with_true_numbers(capsys, args):
    out = "\n".join(_run(capsys, *args))
    assert "[0.475, 0.525]" in out and "false" in out
    claimed = re.search(rf"softmax\(\[0.2, 2.1\]\) = \[({NUM}), ({NUM})\]", out)
    assert np.allclose([float(claimed[1]), float(claimed[2])], _sm([0.2, 2.1]), atol=5e-4)
    assert np.allclose(_sm([0.2, 2.1]), [0.130, 0.870], atol=5e-4)
    assert np.allclose(_sm([2.0, 2.1]), [0.475, 0.525], atol=5e-4)
    bumped = re.search(rf"2.11 gives \[({NUM}), ({NUM})\]", out)
    assert np.allclose([float(bumped[1]), float(bumped[2])], _sm([2.11, 2.1]), atol=5e-4)
    assert float(bumped[1]) == 0.502 and float(bumped[2]) == 0.498


def test_careless_rounding_corrected_only_when_the_claim_is_wrong(capsys):
    assert _run(capsys, "2", "1", "0.1") == ["softmax = [0.659, 0.242, 0.099]"]  # nothing wrong was said: no correction
    lines = _run(capsys, "2", "1", "0.1", "--claim", "0.65", "0.24", "0.11")
    assert lines[0] == "softmax = [0.659, 0.242, 0.099]"
    text = "\n".join(lines[1:])
    assert "correction" in text and "[0.65, 0.24, 0.11]" in text and "[0.659, 0.242, 0.099]" in text
    assert "[0.66, 0.24, 0.10]" in text and "p_0 = 0.659 is not 0.65" in text and "p_2 = 0.099 is not 0.11" in text
    assert "p_1" not in text  # 0.24 is right
    assert np.allclose(_sm([2, 1, 0.1]).round(2), [0.66, 0.24, 0.10])
    for right in (["0.66", "0.24", "0.10"], ["0.659", "0.242", "0.099"], ["0.7", "0.2", "0.1"]):
        said = "\n".join(_run(capsys, "2", "1", "0.1", "--claim", *right)[1:])
        assert "correction" not in said and said.startswith("check: ") and "correctly rounded" in said, right
    # The same claim is right for other scores: [0.65, 0.24, 0.11] is softmax([2, 1, 0.2]) rounded.
    assert np.allclose(_sm([2, 1, 0.2]).round(2), [0.65, 0.24, 0.11])
    assert "correctly rounded to 2" in "\n".join(_run(capsys, "2", "1", "0.2", "--claim", "0.65", "0.24", "0.11"))


@pytest.mark.parametrize("values,target,loss", [(["1000", "0", "-1000"], 2, 2000.0), (["750", "0"], 1, 750.0),
                                                (["744", "0"], 1, 744.0), (["-3", "40", "0.5"], 0, 43.0)])
def test_cross_entropy_lesson_is_stable_at_large_logits(capsys, values, target, loss):
    """-ln(p) of a rounded p fails (ln 0) or is wrong (743.747 at 744); lse - z_y is exact."""
    lines = _run(capsys, *values, "--target", str(target), "--digits", "3")
    x = torch.tensor([[float(v) for v in values]], dtype=torch.float64)
    ref = float(torch.nn.functional.cross_entropy(x, torch.tensor([target])))
    got = float(re.search(rf"-ln p_{target} = -ln {NUM} = ({NUM})", "\n".join(lines))[1])
    assert got == pytest.approx(ref, abs=5e-4) and ref == pytest.approx(loss, abs=5e-3)
    assert cross_entropy_steps([float(v) for v in values], target).loss == pytest.approx(ref, rel=1e-15)
    assert any("logsumexp(z) - z_" in line for line in lines) and any("743.747" in line for line in lines)


def test_infinities_agree_with_the_api(capsys):
    """-inf is a masked entry (weight 0, as attnkit.softmax); +inf is shown as its limit and explained."""
    import attnkit

    for args in (["1", "-inf"], ["-inf", "2", "0"], ["-inf", "-inf"]):
        lines = _run(capsys, "--", *args)
        api = attnkit.softmax(torch.tensor([float(a) for a in args], dtype=torch.float64))
        assert np.allclose(_vec(lines[-1]), api.numpy(), atol=5e-4), args
        assert any("-inf is a masked entry" in line for line in lines)
    assert _run(capsys, "--", "1", "-inf")[-1] == "softmax = [1.000, 0.000]"
    lines = _run(capsys, "--", "1", "inf", "inf")
    assert lines[-1] == "softmax = [0.000, 0.500, 0.500]" and any("limit" in line and "NaN" in line for line in lines)
    assert torch.isnan(attnkit.softmax(torch.tensor([1.0, float("inf")]))).all()  # what the note says the API does
    text = "\n".join(_run(capsys, "--explain", "--naive", "--", "1", "-inf", "0"))
    assert "e^-inf = 0.0000" in text and not re.search(r"\bnan\b", text) and "\nsoftmax = [0.731, 0.000, 0.269]\n" in text
    assert "need finite scores" in text  # the --explain lessons say why they are left out
    assert "finite scores for --target" in _lesson_error(["--target", "0", "--", "1", "-inf"])


@pytest.mark.parametrize("values,temperature", [([3.0, 1.0, 0.2], 1.0), ([0.5, -1.0, 2.0, 0.0], 0.5)])
def test_explain_jacobian_matches_autograd(capsys, values, temperature):
    lines = _run(capsys, *map(str, values), "--explain", "-t", str(temperature))
    start = next(i for i, line in enumerate(lines) if "J = diag(p) - pp^T" in line) + 1
    J = np.array([_vec(row) for row in lines[start: start + len(values)]])
    x = torch.tensor(values, dtype=torch.float64)
    ref = torch.autograd.functional.jacobian(lambda v: torch.softmax(v / temperature, -1), x).numpy()
    assert np.allclose(J, ref, atol=5e-4) and np.abs(ref).max() <= 0.25 / temperature
    text = "\n".join(lines)
    assert "QK^T is L x S" in text and "Q^T K would be d x d" in text and "[-1/4, 1/4]" in text


def test_explain_cross_entropy_needs_labels(capsys):
    text = "\n".join(_run(capsys, "3", "1", "0.2", "--explain"))
    p = _sm([3, 1, 0.2])
    wrong = float(re.search(rf"-sum_k ln p_k = ({NUM})", text)[1])
    right = float(re.search(rf"-ln {NUM} = ({NUM})", text)[1])
    assert wrong == pytest.approx(-np.log(p).sum(), abs=5e-4)
    x = torch.tensor([[3.0, 1.0, 0.2]], dtype=torch.float64)
    assert right == pytest.approx(float(torch.nn.functional.cross_entropy(x, torch.tensor([0]))), abs=5e-4)


@pytest.mark.parametrize("values,target,temperature", [([2.0, 1.0, 0.1], 0, 1.0), ([2.0, 1.0, 0.1], 2, 1.0),
                                                       ([0.3, -2.0, 5.0, 1.0], 1, 2.0)])
def test_target_cross_entropy_steps_against_autograd(capsys, values, target, temperature):
    lines = _run(capsys, *map(str, values), "--target", str(target), "-t", str(temperature), "--digits", "4")
    x = torch.tensor([values], dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(x / temperature, torch.tensor([target]))
    loss.backward()
    text = "\n".join(lines)
    assert float(re.search(rf"-ln p_{target} = -ln {NUM} = ({NUM})", text)[1]) == pytest.approx(float(loss.detach()), abs=5e-5)
    py = [v - (i == target) for i, v in enumerate(_sm(np.array(values) / temperature))]
    dz = next(line for line in lines if line.strip().startswith("dL/dz = p - y"))
    assert np.allclose(_vec(dz.split("] = ")[1]), py, atol=5e-5)
    dx = py if temperature == 1 else _vec(next(line for line in lines if "dL/dx = (p - y) / T" in line).split("= ")[-1])
    assert np.allclose(dx, x.grad[0].numpy(), atol=5e-5)
    ce = cross_entropy_steps(values, target, temperature=temperature)
    assert ce.max_difference < 1e-12 and np.allclose(ce.autograd, x.grad[0].numpy(), atol=1e-15)


def _row(lines: list[str], name: str) -> tuple[list[float], list[str]]:
    line = next(line for line in lines if line.startswith(name + " "))
    weights, rest = line[len(name):].split("]", 1)
    return _vec(weights), rest.split()[:5]


def test_compare_weights_and_properties(capsys):
    lines = _run(capsys, "2", "1", "-3", "--compare")
    x = np.array([2.0, 1.0, -3.0])
    expected = {
        "e^x (softmax)": (_sm(x), ["yes"] * 5),
        "|x|": (abs(x) / abs(x).sum(), ["yes", "yes", "NO", "NO", "yes"]),
        "x^2": (x**2 / (x**2).sum(), ["yes", "yes", "NO", "NO", "yes"]),
        "ReLU": (np.maximum(x, 0) / np.maximum(x, 0).sum(), ["yes", "NO", "yes", "NO", "NO"]),
        "sigmoid": (1 / (1 + np.exp(-x)), ["NO", "yes", "yes", "NO", "NO"]),
        "sparsemax": (np.array([1.0, 0.0, 0.0]), ["yes", "NO", "yes", "yes", "yes"]),
    }
    for name, (weights, props) in expected.items():
        got, flags = _row(lines, name)
        assert np.allclose(got, weights, atol=5e-4), name
        assert flags == props, name
    ent, flags = _row(lines, "entmax-1.5")
    assert flags == ["yes", "NO", "yes", "yes", "yes"] and sum(ent) == pytest.approx(1, abs=2e-3)
    entmax = pytest.importorskip("entmax")
    assert np.allclose(ent, entmax.entmax15(torch.tensor(x), dim=-1).numpy(), atol=5e-4)


def test_compare_says_the_claims_out_loud(capsys):
    lines = _run(capsys, "2", "1", "-3", "--compare")
    text = "\n".join(lines)
    assert "Only e^x passes every test" not in text
    at = next(i for i, line in enumerate(lines) if line.startswith('claim "only softmax can produce a probability distribution"'))
    claim = lines[at] + lines[at + 1]
    # The table's own sum1 column: the others that sum to 1 are named and counted.
    sum1 = [name for name in ("|x|", "x^2", "ReLU", "sigmoid", "sparsemax", "entmax-1.5") if _row(lines, name)[1][0] == "yes"]
    assert f"{len(sum1)} of the 6 others" in claim and all(name in claim for name in sum1) and "sigmoid" not in claim
    assert "What only e^x has on these numbers is every property at once" in text
    assert 'claim "softmax improves efficiency": it costs' in text and "What it buys is a distribution" in text
    assert 'claim "softmax is used almost exclusively for classification"' in text and "attention layer" in text
    at = next(i for i, line in enumerate(lines) if line.startswith("ReLU on the Q and K projections"))
    relu = lines[at] + lines[at + 1]
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(16, generator=gen, dtype=torch.float64), torch.randn(8, 16, generator=gen, dtype=torch.float64)
    assert f"{int(((k @ q) < 0).sum())} of 8 scores negative without ReLU, 0 with it" in relu
    assert int(((k @ q) < 0).sum()) > 0


def _lesson_error(args: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "attnkit", "softmax", *args], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr


def test_compare_zero_gradients_are_measured():
    rows = compare([2.0, 1.0, -3.0])
    relu = next(r for r in rows if r.startswith("ReLU"))
    soft = next(r for r in rows if r.startswith("e^x"))
    assert "1/3" in relu and "0/3" in soft


def test_dk_saturates_without_scale_and_not_with_it(capsys):
    sat = saturation(1024)
    assert sat == saturation(1024)  # seeded
    assert sat.dims == (1, 4, 16, 64, 256, 1024)
    assert sat.top_unscaled[-1] > 0.95 and sat.top_scaled[-1] < 0.3
    assert list(sat.top_unscaled) == sorted(sat.top_unscaled)  # grows with d
    assert max(sat.top_scaled) - min(sat.top_scaled) < 0.06  # stays put with 1/sqrt(d)
    assert max(sat.grad_unscaled + sat.grad_scaled) <= 0.25 and sat.grad_unscaled[-1] < 0.05
    lines = _run(capsys, "--dk", "1024")
    row = next(line for line in lines if line.split()[:1] == ["1024"])
    assert np.allclose(_vec(row), [sat.top_unscaled[-1], sat.top_scaled[-1], sat.grad_unscaled[-1], sat.grad_scaled[-1]],
                       atol=5e-4)


@pytest.mark.parametrize("args,fragment", [(["1", "2", "--target", "2"], "--target between 0 and 1"),
                                           (["1", "--compare"], "at least two numbers"),
                                           (["1", "--dk", "0"], "--dk between 1 and 65536")])
def test_lesson_errors_are_one_line(args, fragment):
    proc = subprocess.run([sys.executable, "-m", "attnkit", "softmax", *args], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and fragment in proc.stderr


def test_docstring_examples():
    import doctest

    from attnkit.cli import lessons

    assert doctest.testmod(lessons).failed == 0
