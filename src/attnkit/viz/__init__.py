"""Pictures of attention: matplotlib heatmaps and a standalone interactive HTML viewer.

Needs the ``viz`` extra (``pip install 'attnkit[viz]'``: matplotlib, jinja2), imported on
first use. Every function takes [`attnkit.inspect.AttentionMaps`][attnkit.inspect._maps.AttentionMaps].

- [`plot_head`][attnkit.viz._heatmap.plot_head], [`plot_layer`][attnkit.viz._heatmap.plot_layer], [`plot_model`][attnkit.viz._heatmap.plot_model], [`plot_rollout`][attnkit.viz._heatmap.plot_rollout] return
  ``matplotlib.figure.Figure`` objects; [`save`][attnkit.viz._heatmap.save] writes PNG or SVG. [`fit_fonts`][attnkit.viz._fonts.fit_fonts] gives
  CJK text (labels and titles) a CJK font; every attnkit plot goes through it.
- [`to_html`][attnkit.viz._html.to_html] / [`save_html`][attnkit.viz._html.save_html]: one self-contained HTML file (no network) with a head
  view, a model view and a rollout view, drawn on canvas; fine for 512 tokens × 12 × 12. A batch
  is switchable inside the page; ``top_k=`` / ``keep_mass=`` choose the head-view cut.
- [`show`][attnkit.viz._notebook.show] / [`viewer`][attnkit.viz._notebook.viewer]: the same viewer in Jupyter, each in its own iframe (several per
  notebook never interfere); ``AttentionMaps`` displays itself this way.

Example:
    >>> import torch
    >>> from attnkit.inspect import AttentionMaps
    >>> from attnkit import viz
    >>> maps = AttentionMaps([torch.softmax(torch.randn(1, 2, 4, 4), -1)], [list("abcd")])
    >>> len(viz.plot_layer(maps, 0).axes) >= 2, "<canvas" in viz.to_html(maps)
    (True, True)
"""

from __future__ import annotations

from ._fonts import fit_fonts
from ._heatmap import plot_head, plot_layer, plot_model, plot_rollout, save
from ._html import save_html, to_html
from ._notebook import Viewer, show, viewer

__all__ = ["Viewer", "fit_fonts", "plot_head", "plot_layer", "plot_model", "plot_rollout", "save", "save_html", "show",
           "to_html", "viewer"]
