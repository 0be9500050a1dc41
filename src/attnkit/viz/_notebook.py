"""The viewer in Jupyter: ``AttentionMaps._repr_html_`` and [`show`][attnkit.viz._notebook.show].

A notebook page holds many outputs side by side. The viewer page uses fixed element ids and a
page-wide script, so each viewer goes into its own ``<iframe srcdoc=...>``: its own document,
ids, styles and script, nothing shared with the notebook or with other viewers, and still no
network request (the page is inline). ``sandbox="allow-scripts"`` lets the viewer run while
keeping it away from the notebook's cookies, storage and DOM.
"""

from __future__ import annotations

import html
import tempfile
from pathlib import Path
from typing import Any

from ..inspect import AttentionMaps
from ._html import to_html

__all__ = ["Viewer", "show"]


class Viewer:
    """One viewer, ready to display: ``_repr_html_`` gives the isolated ``<iframe>``.

    Attributes:
        page: the standalone HTML page (what [`attnkit.viz.to_html`][attnkit.viz._html.to_html] returns).
        height: the iframe height in CSS pixels.
    """

    def __init__(self, page: str, height: int = 640) -> None:
        self.page, self.height = page, int(height)

    def __repr__(self) -> str:
        return f"Viewer({len(self.page.encode()) // 1024} KB page, shown inline by Jupyter)"

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html.escape(self.page, quote=True)}" sandbox="allow-scripts" '
                f'style="width: 100%; height: {self.height}px; border: 1px solid #d7dde4; border-radius: 4px;" '
                'loading="eager" title="attnkit attention viewer"></iframe>')

    def save(self, path: str | Path) -> Path:
        """Write the standalone page to ``path`` (UTF-8); returns the path."""
        path = Path(path)
        path.write_text(self.page, encoding="utf-8")
        return path


def viewer(maps: AttentionMaps, *, height: int = 640, **options: Any) -> Viewer:
    """A [`Viewer`][attnkit.viz._notebook.Viewer] of ``maps``; ``options`` are [`attnkit.viz.to_html`][attnkit.viz._html.to_html]'s."""
    return Viewer(to_html(maps, **options), height=height)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def show(maps: AttentionMaps, *, height: int = 640, **options: Any) -> None:
    """Show the interactive viewer: inline in Jupyter, else in the default web browser.

    Several viewers in one notebook are independent (each lives in its own iframe).

    Args:
        maps: captured attention (every sequence of the batch can be switched in the page).
        height: the iframe height in pixels (notebooks).
        options: [`attnkit.viz.to_html`][attnkit.viz._html.to_html]'s: ``view`` (``"head"``, ``"model"``,
            ``"rollout"``), ``layer``, ``heads``, ``focus`` (a query position), ``sequence``,
            ``top_k``, ``keep_mass``, ``title``, ...

    Outside a notebook the page is written to a temporary file and opened in the browser. To
    keep the object (to save it, or to display it later), use [`viewer`][attnkit.viz._notebook.viewer].

    Example:
        >>> import torch
        >>> from attnkit.inspect import AttentionMaps
        >>> from attnkit import viz
        >>> maps = AttentionMaps([torch.softmax(torch.randn(1, 2, 4, 4), -1)], [list("abcd")])
        >>> viz.viewer(maps, view="rollout")._repr_html_().startswith("<iframe srcdoc=")
        True
    """
    v = viewer(maps, height=height, **options)
    if _in_notebook():
        from IPython.display import display

        display(v)
    else:
        import webbrowser

        path = v.save(Path(tempfile.mkdtemp(prefix="attnkit-")) / "attention.html")
        webbrowser.open(path.as_uri())
