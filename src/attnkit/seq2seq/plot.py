"""The alignment heatmap of one translation: output tokens (rows) × source tokens (columns).

Needs matplotlib (``pip install 'attnkit[viz]'``), imported on first use. The picture is drawn
by [`attnkit.viz.plot_head`][attnkit.viz._heatmap.plot_head] (one layer, one head of cross-attention), so fonts (CJK labels
and titles) are handled by the one helper every attnkit plot uses.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence

from torch import Tensor

from attnkit.errors import AttnkitError

__all__ = ["plot_alignment"]

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

    from attnkit import viz
    from attnkit.inspect import AttentionMaps

    maps = AttentionMaps([w.view(1, 1, *w.shape)], [out], key_tokens=[src])
    with rc_context({"text.parse_math": False}):  # labels and title are plain text: "$x$" is not math
        fig = viz.plot_head(maps, 0, 0, vmax=1.0, size=max(3.0, 0.3 * max(len(src), len(out))))
        ax = fig.axes[0]
        ax.set_xlabel("source")
        ax.set_ylabel("output")
        ax.set_title(title)  # viz.save / viz.fit_fonts give CJK titles a CJK font
        if path is not None:
            viz.save(fig, path, dpi=150)
    return viz.fit_fonts(fig)
