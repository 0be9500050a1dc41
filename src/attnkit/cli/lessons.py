"""Lessons on top of the softmax walkthrough: the classic mistakes corrected, with the user's numbers.

The usual explanations of softmax carry worked numbers, and a few of them are wrong. This module
computes the right numbers (float64, with autograd as a second opinion where a gradient is claimed)
and renders each lesson as a few lines of text for ``attnkit softmax``:

- `corrections` — the often-quoted mistakes: "softmax is smooth: [0.2, 2.1] → [0.475, 0.525]",
  the carelessly rounded ``[2, 1, 0.1] → [0.65, 0.24, 0.11]``, "the derivative of softmax is
  itself", a cross-entropy without labels, ``S = QᵀK``, "softmax explodes gradients". Each is
  printed when the input is the classic example, or for any input with ``--explain``.
- `compare` — why ``e^x``: the same numbers through ``|x|``, ``x²``, ReLU, sigmoid,
  sparsemax and entmax-1.5, with the properties that decide (``--compare``).
- `cross_entropy_steps` — ``L = −ln p_y`` and ``∂L/∂z = p − y`` by the chain rule, checked
  against torch autograd (``--target``).
- `saturation` — why ``1/√d``: the mean top weight of random ``q·k`` rows as ``d`` grows (``--dk``).

Example:
    >>> from attnkit.cli.lessons import cross_entropy_steps
    >>> ce = cross_entropy_steps([2.0, 1.0, 0.1], target=0)
    >>> round(ce.loss, 3), [round(g, 3) for g in ce.grad]
    (0.417, [-0.341, 0.242, 0.099])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import AttnkitError

__all__ = [
    "CrossEntropySteps",
    "Saturation",
    "compare",
    "corrections",
    "cross_entropy_steps",
    "jacobian",
    "saturation",
    "softmax64",
]


def softmax64(values: Sequence[float], temperature: float = 1.0) -> np.ndarray:
    """``softmax(x / T)`` in float64, max subtracted first (no overflow)."""
    z = np.asarray(values, dtype=np.float64) / temperature
    e = np.exp(z - z.max())
    return e / e.sum()


def _lse(values: Sequence[float], temperature: float = 1.0) -> float:
    """``log Σ e^{x/T}`` as ``m + log Σ e^{x/T − m}``: every exponent ≤ 0, and the sum is ≥ 1 (no log 0)."""
    z = [v / temperature for v in values]
    m = max(z)
    return m + math.log(math.fsum(math.exp(v - m) for v in z))


def _require_finite(values: Sequence[float], lesson: str) -> None:
    if not all(math.isfinite(v) for v in values):
        raise AttnkitError.build(f"finite scores for {lesson}", "[" + ", ".join(f"{v:g}" for v in values) + "]",
                                 "drop the ±inf entries (-inf is a masked entry: it takes no part in the lesson)")


def jacobian(probs: Sequence[float]) -> np.ndarray:
    """``∂p_i/∂x_j = p_i(δ_ij − p_j)``, i.e. ``diag(p) − ppᵀ`` (for temperature 1)."""
    p = np.asarray(probs, dtype=np.float64)
    return np.diag(p) - np.outer(p, p)


def _seq(xs: Sequence[float], digits: int = 3) -> str:
    return "[" + ", ".join(f"{x:.{digits}f}" for x in xs) + "]"


def _is(values: Sequence[float], classic: Sequence[float]) -> bool:
    return len(values) == len(classic) and all(math.isclose(a, b, abs_tol=1e-12) for a, b in zip(values, classic))


# ---- the classic mistakes --------------------------------------------------------------

def _smooth(values: Sequence[float], temperature: float, classic: bool) -> list[str]:
    p = softmax64(values, temperature)
    if classic:
        a, b = softmax64([2.0, 2.1]), softmax64([2.11, 2.1])
        return [
            f"correction: the often-quoted \"softmax is smooth: [0.2, 2.1] -> [0.475, 0.525]\" is false: "
            f"softmax([0.2, 2.1]) = {_seq(softmax64([0.2, 2.1]))}.",
            f"  {_seq(a)} is softmax([2.0, 2.1]); raising the 2.0 to 2.11 gives {_seq(b)}: a small change of",
            "  score gives a small change of weight (and can flip the order) -- that is what smooth means.",
        ]
    bumped = softmax64([values[0] + 0.1, *values[1:]], temperature)
    return [f"smooth: raising the first score by 0.1 moves the weights from {_seq(p)} to {_seq(bumped)} "
            "(a small change of score, a small change of weight)."]


def _decimals(x: float) -> int:
    """Decimals of ``x`` as written (``0.65`` → 2, ``0.1`` → 1, ``1`` → 0)."""
    text = repr(float(x))
    return 0 if "e" in text else len(text.split(".")[1].rstrip("0"))


def _rounding(values: Sequence[float], temperature: float, claim: Sequence[float]) -> list[str]:
    """Check claimed weights (e.g. a text's ``[0.65, 0.24, 0.11]`` for ``[2, 1, 0.1]``) at their own decimals."""
    p = softmax64(values, temperature)
    if len(claim) != len(p):
        raise AttnkitError.build(f"--claim with {len(p)} weights (one per score)", f"{len(claim)}",
                                 "e.g. attnkit softmax 2 1 0.1 --claim 0.65 0.24 0.11")
    places = max(_decimals(c) for c in claim)
    # Compare at the claim's decimals, with a margin for the binary representation of the claim itself.
    wrong = [i for i, (c, t) in enumerate(zip(claim, p)) if abs(c - t) > 0.5 * 10.0**-places + 1e-12]
    shown = "[" + ", ".join(f"{c:.{places}f}" for c in claim) + "]"
    if not wrong:
        return [f"check: the claimed {shown} is softmax of these scores correctly rounded to {places} decimals "
                f"(true values {_seq(p)})."]
    which = ", ".join(f"p_{i} = {p[i]:.{places + 1}f} is not {claim[i]:.{places}f}" for i in wrong)
    return [
        f"correction: the claimed {shown} is not softmax of these scores rounded: the true values are {_seq(p)},",
        f"  to {places} decimals {_seq(p, places)}: {which}.",
    ]


def _jacobian_lines(values: Sequence[float], temperature: float) -> list[str]:
    p = softmax64(values, temperature)
    J = jacobian(p) / temperature  # chain rule through z = x / T
    n = min(len(p), 8)
    out = ["correction: the derivative of softmax is not softmax itself (that is e^x): "
           "dp_i/dx_j = p_i(delta_ij - p_j), J = diag(p) - pp^T" + (f" / T (T = {temperature:g})" if temperature != 1 else "")
           + (":" if len(p) <= 8 else f" (first {n} rows):")]
    out += ["  " + " ".join(f"{v:+.3f}" for v in row[:n]) for row in J[:n]]
    out.append(f"  each row sums to 0 (adding a constant to every score changes nothing); largest |entry| here "
               f"{np.abs(J).max():.3f} <= {'1/4' if temperature == 1 else '1/(4T)'}.")
    return out


def _labels(values: Sequence[float], temperature: float) -> list[str]:
    p = softmax64(values, temperature)
    y = int(np.argmax(p))
    log_p = [v / temperature - _lse(values, temperature) for v in values]  # log-softmax: no ln of a rounded 0
    return [
        f"correction: a cross-entropy needs the labels. -sum_k ln p_k = {-math.fsum(log_p):.3f} punishes every class;"
        f" the loss is L = -sum_k y_k ln p_k = -ln p_y,",
        f"  e.g. for label y = {y}: -ln {p[y]:.3f} = {-math.log(p[y]):.3f}. --target {y} shows dL/dz = p - y step by step.",
    ]


def _shapes(values: Sequence[float]) -> list[str]:
    n = len(values)
    return [
        f"shapes: in attention these {n} scores are one row of S = QK^T / sqrt(d). With tokens as rows, Q is L x d",
        f"  and K is S x d, so QK^T is L x S (here 1 x {n}: one softmax per query row); Q^T K would be d x d.",
    ]


def _gradient_bound(values: Sequence[float], temperature: float) -> list[str]:
    J = jacobian(softmax64(values, temperature)) / temperature
    return [
        f"correction: softmax does not explode gradients: every dp_i/dx_j lies in [-1/4, 1/4] (here at most "
        f"{np.abs(J).max():.3f}).",
        "  What goes wrong is saturation: huge scores make p one-hot and J -> 0. --dk 1024 shows why attention divides by sqrt(d).",
    ]


def corrections(values: Sequence[float], *, temperature: float = 1.0, explain: bool = False,
                claim: Sequence[float] | None = None) -> list[str]:
    """The classic-mistake lessons that apply: each when ``values`` is its classic example, all with ``explain``.

    ``claim``: weights a text gives for these scores; checked at their own decimals, corrected only
    when wrong (the classic ``[0.65, 0.24, 0.11]`` for ``[2, 1, 0.1]``).

    Example:
        >>> print(corrections([2.0, 1.0, 0.1], claim=[0.65, 0.24, 0.11])[0])
        correction: the claimed [0.65, 0.24, 0.11] is not softmax of these scores rounded: the true values are [0.659, 0.242, 0.099],
    """
    out: list[str] = []
    if not all(math.isfinite(v) for v in values):  # the walkthrough explains ±inf; these lessons need numbers
        if explain or claim is not None:
            out.append("(the lessons of --explain and --claim need finite scores: leave out the ±inf entries to see them)")
        return out
    plain = temperature == 1.0
    smooth_classic = plain and (_is(values, (0.2, 2.1)) or _is(values, (2.0, 2.1)))
    if smooth_classic or explain:
        out += _smooth(values, temperature, smooth_classic)
    if claim is not None:
        out += _rounding(values, temperature, claim)
    if explain:
        out += _jacobian_lines(values, temperature) + _labels(values, temperature) + _shapes(values)
        out += _gradient_bound(values, temperature)
    return out


# ---- why e^x -----------------------------------------------------------------------------

def _normalized(f: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: f(x) / f(x).sum()


def _candidates() -> dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]]:
    from .. import entmax15, sparsemax

    return {
        "e^x (softmax)": (lambda x: torch.softmax(x, -1), "smooth, never 0"),
        "|x|": (_normalized(torch.abs), "kink at 0, flips sign with x"),
        "x^2": (_normalized(torch.square), "pushes negatives up"),
        "ReLU": (_normalized(torch.relu), "0 for every x < 0"),
        "sigmoid": (torch.sigmoid, "vanishes for large |x|"),
        "sparsemax": (lambda x: sparsemax(x), "0 outside the support"),
        "entmax-1.5": (lambda x: entmax15(x), "0 outside the support"),
    }


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def compare(values: Sequence[float]) -> list[str]:
    """Each candidate normaliser on ``values`` with the properties that decide, as a text table.

    Properties are measured on the numbers given, in float64: sums to 1; every weight positive;
    order kept (a larger score never gets a smaller weight; strictly larger for the positive ones);
    unchanged when a constant is added (``x + 10``); defined and summing to 1 for an all-negative row
    (``x − max(x) − 1``); and how many scores get a zero gradient (autograd of ``p·g`` for a fixed
    random ``g``), with what is behind it.
    """
    x = torch.tensor(list(values), dtype=torch.float64)
    if len(x) < 2:
        raise AttnkitError.build("at least two numbers for --compare", f"{len(x)}", "e.g. attnkit softmax 2 1 -3 --compare")
    g = torch.linspace(-1.0, 1.0, len(x), dtype=torch.float64) + 0.3  # a fixed, generic upstream gradient
    rows, width = [], max(len(_seq(values)) + 8, 22)
    passed: dict[str, list[bool]] = {}
    for name, (f, why) in _candidates().items():
        with torch.no_grad(), np.errstate(all="ignore"):
            p = f(x)
            shifted, negative = f(x + 10.0), f(x - x.max() - 1.0)
        ok_sum = bool(torch.isclose(p.sum(), torch.tensor(1.0, dtype=torch.float64)))
        positive = bool((p > 0).all())
        bigger = x[:, None] > x[None, :]
        keeps = bool((p[:, None] >= p[None, :])[bigger].all()) and (not positive or bool((p[:, None] > p[None, :])[bigger].all()))
        shift = bool(torch.allclose(shifted, p, atol=1e-12))
        neg = bool(torch.isfinite(negative).all()) and bool(torch.isclose(negative.sum(), torch.tensor(1.0, dtype=torch.float64)))
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad((f(xg) * g).sum(), xg)
        dead = int((grad == 0).sum()) if bool(torch.isfinite(grad).all()) else len(x)
        passed[name] = [ok_sum, positive, keeps, shift, neg, dead == 0]
        weights = "[" + ", ".join("nan" if math.isnan(v) else f"{v:.3f}" for v in p.tolist()) + "]"
        rows.append(f"{name:<14}{weights:<{width}}{_yes(ok_sum):>5}{_yes(positive):>9}{_yes(keeps):>7}{_yes(shift):>7}"
                    f"{_yes(neg):>6}   {dead}/{len(x)} ({why})")
    head = f"{'candidate':<14}{'weights':<{width}}{'sum1':>5}{'positive':>9}{'order':>7}{'x+c':>7}{'x<0':>6}   zero gradient"
    return [
        f"candidates for turning x = {_seq(values)} into weights (measured on these numbers, float64):",
        head, *rows,
        "sum1: adds to 1; order: a larger score never gets a smaller weight; x+c: unchanged when a constant is added;",
        "x<0: defined and summing to 1 for an all-negative row; zero gradient: scores that get no learning signal.",
        *_claims(x, passed),
    ]


def _claims(x: torch.Tensor, passed: dict[str, list[bool]]) -> list[str]:
    """The common claims about softmax, each answered from the table above or a small seeded computation."""
    soft = "e^x (softmax)"
    others = [n for n, ok in passed.items() if n != soft]
    sum1 = [n for n in others if passed[n][0]]
    every = [n for n in others if all(passed[n])]
    alone = "only e^x" if not every else "e^x and " + ", ".join(every)
    out = [
        f'claim "only softmax can produce a probability distribution": false -- {len(sum1)} of the {len(others)} others',
        f"  sum to 1 here too ({', '.join(sum1) or 'none'}): any non-negative map divided by its sum is a distribution.",
        f"  What {alone} has on these numbers is every property at once: positive weights, order kept, unchanged",
        "  by x+c, defined for negative rows, and a gradient for every score (sparsemax and entmax-1.5 give up",
        "  'positive' on purpose: exact zeros, sparse weights).",
        'claim "softmax improves efficiency": it costs -- a pass over each row for the max, an exp per score, a sum',
        "  and a division (attnkit bench times it). What it buys is a distribution: weights >= 0 that add to 1, so",
        "  the output is a weighted average of the values.",
        'claim "softmax is used almost exclusively for classification": classification heads use it, and so does',
        "  every attention layer (one softmax per query row of QK^T/sqrt(d)), a language model's next-token",
        "  distribution (and its sampling temperature), mixture-of-experts routing and contrastive losses.",
    ]
    # ReLU on the Q/K projections: a seeded example of what it does to the scores.
    gen = torch.Generator().manual_seed(0)
    d, n = 16, 8
    q, k = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(n, d, generator=gen, dtype=torch.float64)
    plain, relu = k @ q / math.sqrt(d), torch.relu(k) @ torch.relu(q) / math.sqrt(d)
    out += [
        "ReLU on the Q and K projections: q_i, k_i >= 0 make every q.k >= 0, so no score can be negative",
        f"  (seeded q, k with d = {d}: {int((plain < 0).sum())} of {n} scores negative without ReLU, {int((relu < 0).sum())} "
        "with it): a key can no longer",
        "  be pushed below an unrelated one, and the zeroed coordinates get no gradient. ReLU on V changes the values",
        "  mixed, not the weights.",
    ]
    return out


# ---- cross-entropy, step by step ---------------------------------------------------------

@dataclass(frozen=True)
class CrossEntropySteps:
    """``L = −ln softmax(x/T)_y`` and its gradient, by hand (``grad``) and by autograd (``autograd``).

    ``grad`` is ``∂L/∂x = (p − y) / T``; ``autograd`` is ``torch.nn.functional.cross_entropy``'s
    gradient in float64 on the same numbers.
    """

    values: tuple[float, ...]
    target: int
    temperature: float
    probs: tuple[float, ...]
    loss: float
    grad: tuple[float, ...]
    autograd: tuple[float, ...]

    @property
    def max_difference(self) -> float:
        return max(abs(a - b) for a, b in zip(self.grad, self.autograd))


def cross_entropy_steps(values: Sequence[float], target: int, *, temperature: float = 1.0) -> CrossEntropySteps:
    """Cross-entropy of ``softmax(values / T)`` against class ``target`` (0-based), with both gradients."""
    n = len(values)
    if not 0 <= target < n:
        raise AttnkitError.build(f"--target between 0 and {n - 1} (a class index, counting from 0)", str(target),
                                 f"pick one of the {n} scores, e.g. --target 0")
    _require_finite(values, "--target")
    p = softmax64(values, temperature)
    y = np.zeros(n)
    y[target] = 1.0
    grad = (p - y) / temperature  # the chain rule, summed by hand: see format_cross_entropy
    x = torch.tensor(list(values), dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy((x / temperature)[None], torch.tensor([target]))
    loss.backward()
    return CrossEntropySteps(tuple(values), target, temperature, tuple(p.tolist()), _lse(values, temperature)
                             - values[target] / temperature, tuple(grad.tolist()), tuple(x.grad.tolist()))


def format_cross_entropy(ce: CrossEntropySteps, digits: int = 3) -> list[str]:
    """The steps from the label to ``∂L/∂z = p − y`` as text."""
    y = [1.0 if i == ce.target else 0.0 for i in range(len(ce.values))]
    k = ce.target
    z = "z = x / T" if ce.temperature != 1 else "z = x"
    out = [
        f"cross-entropy against class {k} (counting from 0), one-hot y = {_seq(y, 0)}, {z}:",
        f"  p = softmax(z) = {_seq(ce.probs, digits)}",
        f"  L = -sum_k y_k ln p_k = -ln p_{k} = -ln {ce.probs[k]:.{digits}f} = {ce.loss:.{digits}f}",
        f"    computed as logsumexp(z) - z_{k} = {ce.loss + ce.values[k] / ce.temperature:.{digits}f} - "
        f"({ce.values[k] / ce.temperature:.{digits}f}), the stable form of attnkit.softmax_cross_entropy and",
        "    F.cross_entropy, never as -ln of the rounded p: e^-745 is 0 in float64 (-ln 0 = inf) and e^-744 keeps",
        "    one bit (-ln of it gives 743.747, not 744).",
        "  chain rule: dL/dz_j = sum_i dL/dp_i * dp_i/dz_j, with dL/dp_i = -y_i / p_i and dp_i/dz_j = p_i(delta_ij - p_j)",
        "            = -sum_i y_i (delta_ij - p_j) = p_j - y_j   (because sum_i y_i = 1)",
        "  dL/dz = p - y = [" + ", ".join(f"{p:.{digits}f}-{t:.0f}" for p, t in zip(ce.probs, y)) + "] = "
        + _seq([p - t for p, t in zip(ce.probs, y)], digits),
    ]
    if ce.temperature != 1:
        out.append(f"  dL/dx = (p - y) / T = {_seq(ce.grad, digits)}")
    out.append(f"  autograd (torch.nn.functional.cross_entropy, float64): {_seq(ce.autograd, digits)}; "
               f"largest difference {ce.max_difference:.1e}")
    return out


# ---- why 1/sqrt(d) -------------------------------------------------------------------------

@dataclass(frozen=True)
class Saturation:
    """Mean over random rows of the top softmax weight and of the largest ``|∂p_i/∂s_j|``, per ``d``.

    Scores are ``q·k`` for ``q, k ~ N(0, I_d)`` (variance ``d``) or ``q·k/√d`` (variance 1).
    """

    dims: tuple[int, ...]
    keys: int
    rows: int
    seed: int
    top_unscaled: tuple[float, ...]
    top_scaled: tuple[float, ...]
    grad_unscaled: tuple[float, ...]
    grad_scaled: tuple[float, ...]


def saturation(dk: int, *, keys: int = 16, rows: int = 500, seed: int = 0) -> Saturation:
    """Measure softmax saturation of ``q·k`` scores for ``d`` = 1, 4, 16, ... up to ``dk`` (seeded, float64)."""
    if not 1 <= dk <= 65536:
        raise AttnkitError.build("--dk between 1 and 65536", str(dk), "e.g. --dk 1024")
    dims = sorted({4**i for i in range(9) if 4**i < dk} | {dk})
    gen = torch.Generator().manual_seed(seed)
    cols: dict[str, list[float]] = {"tu": [], "ts": [], "gu": [], "gs": []}
    for d in dims:
        q = torch.randn(rows, 1, d, generator=gen, dtype=torch.float64)
        k = torch.randn(rows, keys, d, generator=gen, dtype=torch.float64)
        s = (q * k).sum(-1)  # (rows, keys): one query row of S = QK^T per draw
        for tag, scores in (("u", s), ("s", s / math.sqrt(d))):
            p = torch.softmax(scores, -1)
            J = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
            cols["t" + tag].append(float(p.max(-1).values.mean()))
            cols["g" + tag].append(float(J.abs().amax((-2, -1)).mean()))
    return Saturation(tuple(dims), keys, rows, seed, tuple(cols["tu"]), tuple(cols["ts"]), tuple(cols["gu"]), tuple(cols["gs"]))


def format_saturation(sat: Saturation) -> list[str]:
    """The saturation table and what it means."""
    out = [
        f"why attention divides by sqrt(d): {sat.rows} random rows of {sat.keys} keys, q and k ~ N(0, I_d) (seed {sat.seed});",
        "Q is L x d and K is S x d, so S = QK^T is L x S, and each score q.k has variance d:",
        f"{'d':>6}  {'mean top weight':>24}  {'mean largest |dp/ds|':>24}",
        f"{'':>6}  {'q.k':>11} {'q.k/sqrt(d)':>12}  {'q.k':>11} {'q.k/sqrt(d)':>12}",
    ]
    for i, d in enumerate(sat.dims):
        out.append(f"{d:>6}  {sat.top_unscaled[i]:>11.3f} {sat.top_scaled[i]:>12.3f}  "
                   f"{sat.grad_unscaled[i]:>11.3f} {sat.grad_scaled[i]:>12.3f}")
    out += [
        "Without 1/sqrt(d) the rows saturate (top weight -> 1) and the gradient through softmax shrinks toward 0;",
        "with it the scores keep variance 1 at every d. Softmax itself never explodes: |dp_i/ds_j| <= 1/4.",
    ]
    return out
