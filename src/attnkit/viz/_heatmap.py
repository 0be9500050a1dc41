"""Attention heatmaps with matplotlib: one head, one layer's heads, every layer × head, rollout.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot state, no GUI
backend), so they work in scripts, servers and tests alike. Save with [`save`][attnkit.viz._heatmap.save].
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AttnkitError
from ..inspect import AttentionMaps, display, locate, rollout
from ._fonts import families as _families, fit_fonts, quiet_missing_glyphs

__all__ = ["plot_head", "plot_layer", "plot_model", "plot_rollout", "save"]

def _label_step(n: int, room_px: float) -> tuple[int, float]:
    """(show every k-th label, font size in points) so labels stay legible and never overlap."""
    size = float(np.clip(room_px / max(n, 1) * 0.9, 5.0, 10.0))
    step = max(1, int(np.ceil(n * size * 1.3 / max(room_px, 1))))
    return step, size


def _ticks(ax: Any, axis: str, labels: list[str], room_px: float, families: list[str]) -> None:
    step, size = _label_step(len(labels), room_px)
    idx = list(range(0, len(labels), step))
    shown = [labels[i] if step == 1 else f"{labels[i]} ·{i}" for i in idx]
    if axis == "x":
        ax.set_xticks(idx, shown, rotation=90, fontsize=size, fontfamily=families)
    else:
        ax.set_yticks(idx, shown, fontsize=size, fontfamily=families)


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _heat(ax: Any, matrix: np.ndarray, queries: list[str], keys: list[str], *, labels: bool, room_px: float,
          cmap: str, vmax: float | None) -> Any:
    image = ax.imshow(matrix, cmap=cmap, vmin=0.0, vmax=vmax if vmax is not None else max(float(matrix.max()), 1e-9),
                      aspect="auto", interpolation="nearest")
    if labels:
        families = _families(queries + keys)
        _ticks(ax, "x", keys, room_px, families)
        _ticks(ax, "y", queries, room_px, families)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query (attending)")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    return image


def _tokens(maps: AttentionMaps, sequence: int) -> tuple[list[str], list[str]]:
    return [display(t) for t in maps.tokens[sequence]], [display(t) for t in maps.keys_of(sequence)]


def _check(maps: AttentionMaps, layer: int | None = None, head: int | None = None) -> None:
    if layer is not None and not 0 <= layer < maps.num_layers:
        raise AttnkitError.build(f"layer in [0, {maps.num_layers})", str(layer), "layers count from 0")
    if head is not None and not 0 <= head < maps.num_heads:
        raise AttnkitError.build(f"head in [0, {maps.num_heads})", str(head), "heads count from 0")


def plot_head(maps: AttentionMaps, layer: int, head: int, *, sequence: int = 0, query: str | int | None = None,
              cmap: str = "Blues", vmax: float | None = None, size: float = 7.0) -> Any:
    """Heatmap of one head: rows are queries, columns keys, colour the weight.

    The colour scale runs from 0 to ``vmax`` (default: the head's largest weight, so long
    inputs with small weights stay visible; pass 1.0 to compare figures).

    ``query`` outlines that word's row(s). Labels thin out (every k-th, with its position)
    when there are too many to read. Returns a ``matplotlib.figure.Figure``.

    Example:
        >>> import torch
        >>> from attnkit.inspect import AttentionMaps
        >>> maps = AttentionMaps([torch.softmax(torch.randn(1, 2, 4, 4), -1)], [list("abcd")])
        >>> plot_head(maps, 0, 1, query="b").axes[0].get_title()
        'layer 0 head 1'
    """
    _check(maps, layer, head)
    queries, keys = _tokens(maps, sequence)
    fig = _figure(size + 1.2, size)
    ax = fig.add_subplot()
    image = _heat(ax, maps.sequence(sequence)[layer, head], queries, keys, labels=True, room_px=size * 72, cmap=cmap, vmax=vmax)
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    if query is not None:
        from matplotlib.patches import Rectangle

        rows = locate(maps.tokens[sequence], query)
        ax.add_patch(Rectangle((-0.5, rows[0] - 0.5), len(keys), len(rows), fill=False, edgecolor="crimson", linewidth=1.5))
    ax.set_title(f"layer {layer} head {head}")
    return fit_fonts(fig)


def plot_layer(maps: AttentionMaps, layer: int, *, sequence: int = 0, cols: int | None = None, cmap: str = "Blues",
               vmax: float | None = None, panel: float = 2.6) -> Any:
    """Every head of one layer as a grid of heatmaps, on one colour scale (0 to ``vmax``,
    default the layer's largest weight)."""
    _check(maps, layer)
    H = maps.num_heads
    cols = cols or min(H, 4)
    rows = -(-H // cols)
    queries, keys = _tokens(maps, sequence)
    labels = len(queries) <= 24
    fig = _figure(cols * panel + 1.0, rows * panel)
    seq = maps.sequence(sequence)
    vmax = vmax if vmax is not None else max(float(seq[layer].max()), 1e-9)
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for h, ax in enumerate(axes.flat):
        if h >= H:
            ax.set_axis_off()
            continue
        image = _heat(ax, seq[layer, h], queries, keys, labels=labels, room_px=panel * 60, cmap=cmap, vmax=vmax)
        ax.set_title(f"head {h}", fontsize=9)
        if labels:
            ax.set_xlabel("")
            ax.set_ylabel("")
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    fig.suptitle(f"layer {layer}: {H} heads")
    return fit_fonts(fig)


def plot_model(maps: AttentionMaps, *, sequence: int = 0, cmap: str = "Blues", vmax: float = 1.0, thumb: float = 1.1) -> Any:
    """Thumbnails of every layer (rows) × head (columns): the whole model's attention at a glance
    (colour scale 0 to ``vmax`` for all)."""
    N, H = maps.num_layers, maps.num_heads
    fig = _figure(H * thumb + 0.6, N * thumb + 0.4)
    seq = maps.sequence(sequence)
    axes = fig.subplots(N, H, squeeze=False)
    for layer, h in itertools.product(range(N), range(H)):
        ax = axes[layer, h]
        ax.imshow(seq[layer, h], cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest", aspect="auto")
        ax.set_xticks([])
        ax.set_yticks([])
        if layer == 0:
            ax.set_title(f"h{h}", fontsize=8)
        if h == 0:
            ax.set_ylabel(f"L{layer}", fontsize=8)
    fig.suptitle(f"{N} layers × {H} heads (rows: layers, columns: heads)")
    return fit_fonts(fig)


def plot_rollout(maps: AttentionMaps, *, sequence: int = 0, cmap: str = "Purples", size: float = 7.0, **kwargs: Any) -> Any:
    """Heatmap of attention rollout ([`attnkit.inspect.rollout`][attnkit.inspect._analysis.rollout]; ``kwargs`` go to it)."""
    queries, keys = _tokens(maps, sequence)
    r = rollout(maps.select(sequence), **kwargs)[0].numpy()
    fig = _figure(size + 1.2, size)
    ax = fig.add_subplot()
    image = _heat(ax, r, queries, keys, labels=True, room_px=size * 72, cmap=cmap, vmax=None)
    fig.colorbar(image, ax=ax, shrink=0.8, label="rolled-out attention")
    ax.set_title(f"attention rollout over {maps.num_layers} layers")
    return fit_fonts(fig)


def save(fig: Any, path: str | Path, *, dpi: int = 150) -> Path:
    """Write a figure to ``.png`` or ``.svg`` (by the suffix); returns the path."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        raise AttnkitError.build("a path ending in .png or .svg", str(path), "rename the file")
    with quiet_missing_glyphs():
        fit_fonts(fig).savefig(path, dpi=dpi, format=path.suffix.lower()[1:])
    return path
