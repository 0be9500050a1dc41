"""The alignment heatmap of one translation: output tokens (rows) × source tokens (columns).

Needs matplotlib (``pip install 'attnkit[viz]'``), imported on first use. When
:mod:`attnkit.viz` is installed the picture is drawn by its :func:`attnkit.viz.plot_head`
(one layer, one head of cross-attention); otherwise by a small matplotlib fallback here.
"""

from __future__ import annotations

import functools
import importlib.util
import unicodedata
from pathlib import Path
from typing import Any, Sequence

from torch import Tensor

from attnkit.errors import AttnkitError

__all__ = ["plot_alignment"]

_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans", "WenQuanYi Zen Hei", "Droid Sans Fallback",
              "Microsoft YaHei", "Hiragino Sans")


def plot_alignment(weights: Tensor, source_tokens: Sequence[str], output_tokens: Sequence[str], *,
                   path: str | Path | None = None, title: str | None = None) -> Any:
    """Heatmap of ``weights (T, S)``: row ``t`` is output token ``t``'s attention over the source.

    Colours run from 0 to 1 so figures of different inputs compare. Saves to ``path`` (``.png``
    or ``.svg``) when given. Labels and title are plain text (a ``$`` is not mathtext). Returns
    the ``matplotlib.figure.Figure``.

    Example:
        >>> import torch
        >>> w = torch.softmax(torch.randn(3, 4), -1)
        >>> fig = plot_alignment(w, list("abcd"), ["x", "y", "<eos>"], title="demo")
        >>> fig.axes[0].get_xlabel(), fig.axes[0].get_ylabel()
        ('source', 'output')
    """
    T, S = weights.shape if weights.dim() == 2 else (-1, -1)
    if weights.dim() != 2 or T != len(output_tokens) or S != len(source_tokens):
        raise AttnkitError.build(
            f"weights of shape (T, S) = ({len(output_tokens)}, {len(source_tokens)}) for the tokens given",
            f"{tuple(weights.shape)}", "pass Translation.weights with its output_tokens and source_tokens",
        )
    if path is not None and Path(path).suffix.lower() not in (".png", ".svg"):
        raise AttnkitError.build("a plot path ending in .png or .svg", str(path), "rename the file")
    if importlib.util.find_spec("matplotlib") is None:
        raise AttnkitError.build("matplotlib for plots", "it is not installed", "pip install 'attnkit[viz]'")
    w = weights.detach().float().cpu()
    show = lambda t: "␣" if t == " " else t  # noqa: E731 — a space label would be invisible
    src, out = [show(t) for t in source_tokens], [show(t) for t in output_tokens]
    title = title or "attention α_t over the source at each output step"
    from matplotlib import rc_context

    with rc_context({"text.parse_math": False}), \
            rc_context({"font.family": list(_families(_is_wide("".join(src + out) + title)))}):  # CJK labels need a CJK font
        fig = _with_viz(w, src, out) if importlib.util.find_spec("attnkit.viz") else _with_matplotlib(w, src, out)
        ax = fig.axes[0]
        ax.set_xlabel("source")
        ax.set_ylabel("output")
        ax.set_title(title)
        if path is not None:
            fig.savefig(path, dpi=150)
    return fig


def _with_viz(w: Tensor, src: list[str], out: list[str]) -> Any:
    """One head of one layer of cross-attention, drawn by attnkit.viz."""
    from attnkit import viz
    from attnkit.inspect import AttentionMaps

    maps = AttentionMaps([w.view(1, 1, *w.shape)], [out], key_tokens=[src])
    return viz.plot_head(maps, 0, 0, vmax=1.0, size=max(3.0, 0.3 * max(len(src), len(out))))


def _is_wide(text: str) -> bool:
    return any(unicodedata.east_asian_width(c) in ("W", "F") for c in text)


@functools.cache
def _families(wide: bool) -> tuple[str, ...]:
    if not wide:
        return ("DejaVu Sans",)
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    return ("DejaVu Sans", *(n for n in _CJK_FONTS if n in names))[:2]


def _with_matplotlib(w: Tensor, src: list[str], out: list[str]) -> Any:
    from matplotlib.figure import Figure

    T, S = w.shape
    fig = Figure(figsize=(1.5 + 0.32 * S, 1.2 + 0.32 * T), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(w.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, aspect="equal", interpolation="nearest")
    ax.set_xticks(range(S), src, rotation=90 if max(map(len, src)) > 2 else 0)
    ax.set_yticks(range(T), out)
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    return fig
