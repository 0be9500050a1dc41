"""A standalone interactive HTML viewer: one file, no network, no CDN.

The page is rendered from ``templates/viewer.html.j2`` with jinja2; its script and style are
inlined from ``viewer.js`` / ``viewer.css``. The attention data are embedded compactly:

- head view: each query's top-``k`` keys per (layer, head), key indices as uint16 and
  weights as float16 — the pruning and how much weight it hides are stated on the page;
- model view: every head max-pooled to at most ``thumb × thumb`` cells, 8-bit;
- rollout view: the rollout matrix, 8-bit, each row scaled to its maximum (kept as float32);

all packed into one binary blob, deflate-compressed and base64-encoded; the page inflates
it with the browser's built-in ``DecompressionStream`` and draws to ``<canvas>``.
"""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import AttnkitError
from ..inspect import AttentionMaps, display, rollout_sequence

__all__ = ["to_html", "save_html"]


def _env() -> Any:
    try:
        import jinja2
    except ImportError:
        raise AttnkitError.build("jinja2 for the HTML viewer", "not installed", "pip install 'attnkit[viz]'") from None
    return jinja2.Environment(loader=jinja2.PackageLoader("attnkit.viz", "templates"),
                              autoescape=jinja2.select_autoescape(["html", "j2"]), keep_trailing_newline=True)


def _top_k(seq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` largest weights, sorted descending: indices ``(N, H, l, k)`` and weights."""
    idx = np.argpartition(-seq, k - 1, axis=-1)[..., :k]
    vals = np.take_along_axis(seq, idx, -1)
    order = np.argsort(-vals, axis=-1, kind="stable")
    return np.take_along_axis(idx, order, -1), np.take_along_axis(vals, order, -1)


def _max_pool(seq: np.ndarray, tq: int, tk: int) -> np.ndarray:
    """Max-pool the last two axes to ``(tq, tk)`` cells (keeps sharp single-key peaks visible)."""
    rows = np.linspace(0, seq.shape[-2], tq + 1).astype(int)[:-1]
    cols = np.linspace(0, seq.shape[-1], tk + 1).astype(int)[:-1]
    return np.maximum.reduceat(np.maximum.reduceat(seq, rows, axis=-2), cols, axis=-1)


def _u8(x: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.rint(x / max(scale, 1e-12) * 255.0), 0, 255).astype(np.uint8)


def _pack(arrays: dict[str, np.ndarray]) -> tuple[str, dict[str, list[Any]]]:
    """Concatenate arrays (4-byte aligned), deflate, base64; return the blob and its table of contents."""
    parts, toc, offset = [], {}, 0
    for name, a in arrays.items():
        raw = np.ascontiguousarray(a).tobytes()
        toc[name] = [offset, a.dtype.name, int(a.size)]
        pad = (-len(raw)) % 4
        parts.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    return base64.b64encode(zlib.compress(b"".join(parts), 6)).decode("ascii"), toc


def payload(maps: AttentionMaps, *, sequence: int = 0, top_k: int = 8, thumb: int = 48, title: str | None = None,
            layer: int | None = None, focus: int | None = None, heads: Sequence[int] | None = None) -> dict[str, Any]:
    """The JSON-able data the viewer embeds (see the module docstring for the encoding)."""
    if top_k < 1 or thumb < 1:
        raise AttnkitError.build("top_k >= 1 and thumb >= 1", f"top_k={top_k}, thumb={thumb}", "e.g. top_k=8, thumb=48")
    seq = maps.sequence(sequence)  # (N, H, l, s) float32
    N, H, l, s = seq.shape
    if layer is not None and not 0 <= layer < N:
        raise AttnkitError.build(f"layer in [0, {N})", str(layer), "layers count from 0")
    if focus is not None and not 0 <= focus < l:
        raise AttnkitError.build(f"focus, a query position in [0, {l})", str(focus), "positions count real tokens from 0")
    heads = list(range(H)) if heads is None else [int(h) for h in heads]
    if any(not 0 <= h < H for h in heads):
        raise AttnkitError.build(f"heads in [0, {H})", str(heads), "heads count from 0")
    if l == 0 or s == 0:
        raise AttnkitError.build("a sequence with at least one token", f"l={l}, s={s}", "pick a non-empty sequence")
    k = min(top_k, s)
    idx, vals = _top_k(seq, k)
    hidden = np.clip(1.0 - vals.sum(-1, dtype=np.float64), 0.0, 1.0)  # weight outside the top-k, per row
    tq, tk = min(l, thumb), min(s, thumb)
    arrays: dict[str, np.ndarray] = {
        "idx": idx.astype(np.uint16 if s <= 65535 else np.uint32),
        "val": vals.astype(np.float16).view(np.uint16),
        "thumb": _u8(_max_pool(seq, tq, tk), 1.0),
    }
    if maps.is_self_attention:
        r = rollout_sequence(seq).numpy()  # (l, l), same as rollout(maps)[sequence] without padding
        row_max = np.maximum(r.max(-1, keepdims=True), 1e-12)  # per-row scale: [CLS]-like columns would wash out the rest
        arrays["rollout"] = _u8(r / row_max, 1.0)
        arrays["rollout_rowmax"] = row_max[:, 0].astype(np.float32)
    blob, toc = _pack(arrays)
    return {
        "title": title or f"attention of {maps.meta.get('model', 'a model')}",
        "tokens": [display(t) for t in maps.tokens[sequence]],
        "keys": [display(t) for t in maps.keys_of(sequence)],
        "special": maps.specials_of(sequence) if maps.is_self_attention else [False] * s,
        "N": N, "H": H, "l": l, "s": s, "k": k, "thumb": [tq, tk],
        "layer": N - 1 if layer is None else layer, "focus": focus, "heads": heads,
        "hidden_mean": float(hidden.mean()), "hidden_max": float(hidden.max()),
        "self_attention": maps.is_self_attention,
        "blob": blob, "toc": toc,
    }


def _script_json(data: dict[str, Any]) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' that could close the tag or start a comment."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def to_html(maps: AttentionMaps, *, sequence: int = 0, top_k: int = 8, thumb: int = 48, title: str | None = None,
            layer: int | None = None, focus: int | None = None, heads: Sequence[int] | None = None) -> str:
    """The viewer as one self-contained HTML string (head view, model view, rollout view).

    Args:
        maps: captured attention; ``sequence`` picks one sequence of the batch.
        top_k: keys kept per query and head for the head view (the page states how much
            weight the pruning hides, mean and max over rows).
        thumb: model-view thumbnails are max-pooled to at most ``thumb × thumb`` cells.
        title: page title (defaults to the model name in ``maps.meta``).
        layer: the layer the head view opens on (default: the last).
        focus: a query position to open pinned (focused), e.g. the word being explained.
        heads: the heads selected at first (default: all).

    Example:
        >>> import torch
        >>> from attnkit.inspect import AttentionMaps
        >>> maps = AttentionMaps([torch.softmax(torch.randn(1, 2, 5, 5), -1)], [list("abcde")])
        >>> page = to_html(maps, title="demo")
        >>> page.startswith("<!DOCTYPE html>") and "http" not in page.split("attnkit-data")[0]
        True
    """
    data = payload(maps, sequence=sequence, top_k=top_k, thumb=thumb, title=title, layer=layer, focus=focus, heads=heads)
    env = _env()
    return env.get_template("viewer.html.j2").render(title=data["title"], data_json=_script_json(data))


def save_html(maps: AttentionMaps, path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`to_html` to ``path`` (UTF-8); returns the path."""
    path = Path(path)
    path.write_text(to_html(maps, **kwargs), encoding="utf-8")
    return path
