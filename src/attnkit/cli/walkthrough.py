"""A step-by-step softmax walkthrough: the worked examples of the texts, as data and as text.

``softmax(x)_i = e^{x_i} / Σ_j e^{x_j}``. Computed literally, ``e^1000`` overflows; subtracting
the maximum first gives the same answer (the factor ``e^{-max}`` cancels) with every
exponent ≤ 0, so nothing overflows. This module shows both, number by number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import AttnkitError

__all__ = ["SoftmaxSteps", "softmax_steps", "format_steps", "infinity_notes"]


@dataclass(frozen=True)
class SoftmaxSteps:
    """Every intermediate of ``softmax(x / T)`` computed two ways.

    ``naive_*`` use the formula as written in float32 (what a network would use);
    ``shift`` is the subtracted maximum and ``exps``/``total``/``probs`` the safe computation
    in float64.
    """

    values: tuple[float, ...]
    temperature: float
    scaled: tuple[float, ...]
    naive_exps: tuple[float, ...]
    naive_total: float
    naive_probs: tuple[float, ...]
    shift: float
    exps: tuple[float, ...]
    total: float
    probs: tuple[float, ...]

    @property
    def naive_fails(self) -> bool:
        """True when the literal formula overflows or gives NaN in float32."""
        return not all(math.isfinite(p) for p in self.naive_probs) or not math.isfinite(self.naive_total)


def softmax_steps(values: list[float], temperature: float = 1.0) -> SoftmaxSteps:
    """Compute the walkthrough for ``values``.

    Example:
        >>> from attnkit.cli.walkthrough import softmax_steps
        >>> [round(p, 3) for p in softmax_steps([2.0, 1.0, 0.1]).probs]
        [0.659, 0.242, 0.099]
    """
    if not values:
        raise AttnkitError.build("at least one number", "none", "e.g. attnkit softmax 2.0 1.0 0.1")
    if any(math.isnan(v) for v in values):
        raise AttnkitError.build("numbers, not NaN", str(values), "remove the NaN")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise AttnkitError.build("a finite temperature > 0", repr(temperature), "e.g. --temperature 0.5")
    scaled = [v / temperature for v in values]
    if any(math.isinf(s) and math.isfinite(v) for s, v in zip(scaled, values)):  # a tiny temperature overflows
        raise AttnkitError.build(f"scores x/T that stay finite with T={temperature:g}",
                                 "x/T = [" + ", ".join(f"{s:g}" for s in scaled) + "]", "use a larger temperature")
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.exp(np.array(scaled, dtype=np.float32))
        naive_total = naive.sum(dtype=np.float32)
        naive_probs = naive / naive_total
    # -inf is a masked entry (e^-inf = 0, as attnkit.softmax treats it); +inf has no e^x/sum
    # (inf/inf), only the limit x -> +inf: all the weight on the +inf entries, shared equally.
    top = sum(1 for s in scaled if s == math.inf)
    if top:
        shift, exps = math.inf, [1.0 if s == math.inf else 0.0 for s in scaled]
    elif all(s == -math.inf for s in scaled):  # every entry masked: no distribution, weights 0
        shift, exps = -math.inf, [0.0] * len(scaled)
    else:
        shift = max(scaled)
        exps = [math.exp(s - shift) for s in scaled]  # every exponent ≤ 0: no overflow
    total = math.fsum(exps)
    return SoftmaxSteps(
        values=tuple(values),
        temperature=temperature,
        scaled=tuple(scaled),
        naive_exps=tuple(float(x) for x in naive),
        naive_total=float(naive_total),
        naive_probs=tuple(float(x) for x in naive_probs),
        shift=shift,
        exps=tuple(exps),
        total=total,
        probs=tuple(e / total if total else 0.0 for e in exps),
    )


def infinity_notes(steps: SoftmaxSteps) -> list[str]:
    """What ±inf scores mean here (and in `attnkit.softmax`); empty for finite scores."""
    out = []
    if any(s == -math.inf for s in steps.scaled):
        out.append("-inf is a masked entry: e^-inf = 0, so it gets weight 0 and the others share the whole 1 "
                   "(attnkit.softmax treats -inf the same way; a row masked everywhere gets weights 0).")
    if steps.shift == math.inf:
        out.append("+inf has no e^x / sum (inf / inf is undefined): shown is the limit as x -> +inf, all the weight "
                   "on the +inf entries (shared equally), 0 elsewhere. attnkit.softmax and torch.softmax return NaN "
                   "there: in a network a +inf logit is an overflow upstream, not a score.")
    return out


def _num(x: float, digits: int) -> str:
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return f"{x:.{digits}g}" if abs(x) >= 1e6 or (x != 0 and abs(x) < 10 ** -digits) else f"{x:.{digits}f}"


def format_steps(steps: SoftmaxSteps, *, digits: int = 3, explain: bool = False, naive: bool = False) -> str:
    """Render the walkthrough as text; the last line is always ``softmax = [...]``."""

    def seq(xs: tuple[float, ...] | list[float], d: int = digits) -> str:
        return "[" + ", ".join(_num(x, d) for x in xs) + "]"

    out: list[str] = []
    xs = steps.scaled
    finite = math.isfinite(steps.shift)  # else the limit (+inf) or a fully masked row: no exponentials to show
    if explain and not finite:
        out.append(f"input x = {seq(steps.values)}")
    if explain and finite:
        out.append(f"input x = {seq(steps.values)}")
        if steps.temperature != 1.0:
            out.append(f"divide by the temperature T = {steps.temperature:g}: x/T = {seq(xs)}")
        # Show the textbook e^x when the sum fits in float64 (and does not underflow to 0),
        # otherwise the shifted form.
        literal = -700.0 < max(xs) and max(xs) + math.log(len(xs)) < 709.0
        shift = 0.0 if literal else steps.shift
        label = "x" if literal else f"(x - {_num(shift, digits)})"
        exps = [math.exp(x - shift) for x in xs]
        total = math.fsum(exps)
        if not literal:
            way = "underflow to 0" if max(xs) <= -700.0 else "overflow"
            out.append(f"e^x would {way}, so subtract the max {_num(shift, digits)} first (it cancels out):")
        out.append("1. exponentiate each score (always positive; larger scores grow fastest):")
        out += [f"   e^{label.replace('x', _num(x, digits), 1)} = {_num(e, digits + 1)}" for x, e in zip(xs, exps)]
        out.append(f"2. add them up: {' + '.join(_num(e, digits + 1) for e in exps)} = {_num(total, digits + 1)}")
        out.append("3. divide each by the sum, so the results are positive and add up to 1:")
        out += [f"   {_num(e, digits + 1)} / {_num(total, digits + 1)} = {_num(e / total, digits)}" for e in exps]
    if naive and finite:
        out.append("naive formula in float32 (e^x as written, as a network would compute it):")
        out.append(f"   e^x     = {seq(steps.naive_exps)}")
        out.append(f"   sum     = {_num(steps.naive_total, digits)}")
        out.append(f"   e^x/sum = {seq(steps.naive_probs)}")
        if steps.naive_fails:
            out.append("   -> overflow: in float32 e^x is inf for x > 88.72 (float64: x > 709.78), and inf/inf = nan")
        else:
            out.append("   -> fine here, but it overflows once any x exceeds 88.72 in float32 (709.78 in float64)")
        out.append(f"safe formula: subtract the max m = {_num(steps.shift, digits)}; every e^(x-m) <= 1 cannot overflow,")
        out.append("and e^-m cancels between numerator and sum, so the answer is unchanged:")
        out.append(f"   e^(x-m) = {seq(steps.exps, digits + 1)}")
        out.append(f"   sum     = {_num(steps.total, digits + 1)}")
    out += infinity_notes(steps)
    out.append("softmax = [" + ", ".join(f"{p:.{digits}f}" for p in steps.probs) + "]")
    return "\n".join(out)
