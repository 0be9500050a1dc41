"""A standalone interactive HTML viewer: one file, no network, no CDN.

The page is rendered from ``templates/viewer.html.j2`` with jinja2; its script and style are
inlined from ``viewer.js`` / ``viewer.css``. The attention data are embedded compactly:

- head view: each query's kept keys per (layer, head) — its ``top_k`` heaviest, or the fewest
  holding ``keep_mass`` of its weight — as counts per row (uint16), key indices (uint16) and
  weights (float16); the cut and how much weight it hides are stated on the page;
- ``bad``: one flag per (layer, head, query) row holding NaN or inf, shown as such;
- model view: every head max-pooled to at most ``thumb × thumb`` cells, 8-bit;
- rollout view: the rollout matrix, 8-bit, each row scaled to its maximum (kept as float32);

all packed into one binary blob per sequence, deflate-compressed and base64-encoded; the page
inflates it with the browser's built-in ``DecompressionStream`` and draws to ``<canvas>``. The
JSON header is strict JSON: non-finite numbers travel as the strings ``"NaN"``/``"Infinity"``.
For notebooks, `attnkit.viz._notebook` wraps the page in an ``<iframe srcdoc>`` so that
several viewers in one notebook never share element ids, styles or scripts.
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


def _keep(seq: np.ndarray, top_k: int | None, keep_mass: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys kept per row, heaviest first: ``counts (R,)`` and the rows' ``idx``, ``val`` one after
    the other, over the rows ``R = N·H·l``.

    A row keeps its ``top_k`` heaviest keys, or fewer: the fewest whose weights add up to
    ``keep_mass``. Non-finite weights sort last (+inf first) and are kept as they are.
    """
    s = seq.shape[-1]
    rows = seq.reshape(-1, s)
    rank = np.nan_to_num(rows, nan=-1.0, posinf=2.0, neginf=-1.0)  # NaN last, +inf first
    order = np.argsort(-rank, axis=-1, kind="stable")
    vals = np.take_along_axis(rows, order, -1)
    count = np.full(len(rows), s if top_k is None else min(top_k, s), dtype=np.int64)
    if keep_mass is not None:
        cum = np.cumsum(np.nan_to_num(vals.astype(np.float64), nan=0.0, posinf=1.0), axis=-1)
        count = np.minimum(count, (cum < keep_mass - 1e-9).sum(-1) + 1)
    mask = np.arange(s)[None, :] < count[:, None]
    return count, order[mask], vals[mask]


def _max_pool(seq: np.ndarray, tq: int, tk: int) -> np.ndarray:
    """Max-pool the last two axes to ``(tq, tk)`` cells (keeps sharp single-key peaks visible)."""
    rows = np.linspace(0, seq.shape[-2], tq + 1).astype(int)[:-1]
    cols = np.linspace(0, seq.shape[-1], tk + 1).astype(int)[:-1]
    return np.maximum.reduceat(np.maximum.reduceat(seq, rows, axis=-2), cols, axis=-1)


def _u8(x: np.ndarray, scale: float) -> np.ndarray:
    x = np.nan_to_num(x, nan=0.0, posinf=scale, neginf=0.0)  # non-finite rows are flagged separately
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


def _finite(x: float) -> float | str:
    """A JSON-safe number: non-finite values become the strings "NaN", "Infinity", "-Infinity"
    (bare NaN is not JSON; the page turns the strings back into numbers and shows them)."""
    return x if np.isfinite(x) else ("NaN" if np.isnan(x) else ("Infinity" if x > 0 else "-Infinity"))


def _check_options(top_k: int | None, keep_mass: float | None, thumb: int) -> None:
    if top_k is not None and top_k < 1 or thumb < 1:
        raise AttnkitError.build("top_k >= 1 (or None) and thumb >= 1", f"top_k={top_k}, thumb={thumb}", "e.g. top_k=8, thumb=48")
    if keep_mass is not None and not 0.0 < keep_mass <= 1.0:
        raise AttnkitError.build("keep_mass in (0, 1]", str(keep_mass), "e.g. keep_mass=0.95 keeps 95% of each row's weight")


def payload(maps: AttentionMaps, *, sequence: int = 0, top_k: int | None = 8, keep_mass: float | None = None,
            thumb: int = 48) -> dict[str, Any]:
    """The JSON-able data of one sequence (see the module docstring for the encoding)."""
    _check_options(top_k, keep_mass, thumb)
    seq = maps.sequence(sequence)  # (N, H, l, s) float32
    N, H, l, s = seq.shape
    if l == 0 or s == 0:
        raise AttnkitError.build("a sequence with at least one token", f"sequence {sequence}: l={l}, s={s}", "pick a non-empty sequence")
    counts, idx, vals = _keep(seq, top_k, keep_mass)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    bad = ~np.isfinite(seq).all(-1)  # (N, H, l): rows holding NaN or inf
    kept = np.add.reduceat(np.nan_to_num(vals.astype(np.float64), nan=0.0), starts)  # every row keeps >= 1 key
    hidden = np.clip(1.0 - kept, 0.0, 1.0).reshape(N, H, l)[~bad]  # weight not kept, per finite row
    tq, tk = min(l, thumb), min(s, thumb)
    arrays: dict[str, np.ndarray] = {
        "cnt": counts.astype(np.uint16 if s <= 65535 else np.uint32),  # keys kept per row
        "idx": idx.astype(np.uint16 if s <= 65535 else np.uint32),
        "val": vals.astype(np.float16).view(np.uint16),
        "bad": bad.astype(np.uint8),
        "thumb": _u8(_max_pool(seq, tq, tk), 1.0),
    }
    if maps.is_self_attention:
        r = rollout_sequence(seq).numpy()  # (l, l), same as rollout(maps)[sequence] without padding
        row_max = np.maximum(np.nanmax(np.where(np.isinf(r), np.nan, r), -1, keepdims=True, initial=0.0), 1e-12)
        row_max = np.where(np.isfinite(r).all(-1, keepdims=True), row_max, np.nan)  # NaN: the row is not finite
        arrays["rollout"] = _u8(r / np.nan_to_num(row_max, nan=1.0), 1.0)  # per-row scale: [CLS]-like columns would wash out the rest
        arrays["rollout_rowmax"] = row_max[:, 0].astype(np.float32)
    blob, toc = _pack(arrays)
    tokens = [display(t) for t in maps.tokens[sequence]]
    return {
        "name": f"{sequence}: " + " ".join(tokens[:8]) + (" …" if len(tokens) > 8 else ""),
        "tokens": tokens,
        "keys": [display(t) for t in maps.keys_of(sequence)],
        "special": maps.specials_of(sequence) if maps.is_self_attention else [False] * s,
        "l": l, "s": s, "kmax": int(counts.max()), "thumb": [tq, tk],
        "hidden_mean": _finite(float(hidden.mean())) if hidden.size else 0.0,
        "hidden_max": _finite(float(hidden.max())) if hidden.size else 0.0,
        "bad_rows": int(bad.sum()),
        "blob": blob, "toc": toc,
    }


_VIEWS = ("head", "model", "rollout")


def viewer_data(maps: AttentionMaps, *, sequence: int = 0, sequences: Sequence[int] | None = None, top_k: int | None = 8,
                keep_mass: float | None = None, thumb: int = 48, title: str | None = None, view: str = "head",
                layer: int | None = None, focus: int | None = None, heads: Sequence[int] | None = None) -> dict[str, Any]:
    """Everything the page embeds: one `payload` per sequence shown, plus the opening state."""
    N, H = maps.num_layers, maps.num_heads
    sequences = list(range(maps.batch_size)) if sequences is None else [int(b) for b in sequences]
    for b in sequences + [sequence]:
        maps._check_b(b)
    if sequence not in sequences:
        sequences = [sequence] + sequences
    if view not in _VIEWS:
        raise AttnkitError.build(f"view in {_VIEWS}", repr(view), 'e.g. view="rollout"')
    if layer is not None and not 0 <= layer < N:
        raise AttnkitError.build(f"layer in [0, {N})", str(layer), "layers count from 0")
    l = len(maps.tokens[sequence])
    if focus is not None and not 0 <= focus < l:
        raise AttnkitError.build(f"focus, a query position in [0, {l})", str(focus), "positions count real tokens from 0")
    heads = list(range(H)) if heads is None else [int(h) for h in heads]
    if any(not 0 <= h < H for h in heads):
        raise AttnkitError.build(f"heads in [0, {H})", str(heads), "heads count from 0")
    return {
        "title": title or f"attention of {maps.meta.get('model', 'a model')}",
        "N": N, "H": H, "self_attention": maps.is_self_attention,
        "top_k": top_k, "keep_mass": keep_mass,
        "sequences": [payload(maps, sequence=b, top_k=top_k, keep_mass=keep_mass, thumb=thumb) for b in sequences],
        "start": {"sequence": sequences.index(sequence), "view": view, "layer": N - 1 if layer is None else layer,
                  "focus": focus, "heads": heads},
    }


def _script_json(data: dict[str, Any]) -> str:
    """JSON safe inside <script>: strict (no bare NaN, which JSON.parse rejects), and no '<', '>'
    or '&' that could close the tag or start a comment."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def to_html(maps: AttentionMaps, *, sequence: int = 0, sequences: Sequence[int] | None = None, top_k: int | None = 8,
            keep_mass: float | None = None, thumb: int = 48, title: str | None = None, view: str = "head",
            layer: int | None = None, focus: int | None = None, heads: Sequence[int] | None = None) -> str:
    """The viewer as one self-contained HTML page (head view, model view, rollout view).

    Args:
        maps: captured attention. Every sequence of the batch is embedded (``sequences`` picks
            some) and can be switched inside the page; ``sequence`` is the one shown first.
        top_k: keys kept per query and head for the head view (``None``: no count limit).
        keep_mass: keep, per row, only the fewest keys whose weights add up to this share
            (e.g. ``0.95``), at most ``top_k``. The page states how much weight the cut hides
            (mean and max over rows) and, for a focused token, per head.
        thumb: model-view thumbnails are max-pooled to at most ``thumb × thumb`` cells.
        title: page title (defaults to the model name in ``maps.meta``).
        view: the view that opens: ``"head"``, ``"model"`` or ``"rollout"``.
        layer: the layer the head view opens on (default: the last).
        focus: a query position to open pinned (focused), e.g. the word being explained.
        heads: the heads selected at first (default: all).

    Non-finite weights (NaN, inf) are encoded explicitly and shown as such: the page names the
    rows that hold them instead of failing to load.

    Example:
        >>> import torch
        >>> from attnkit.inspect import AttentionMaps
        >>> maps = AttentionMaps([torch.softmax(torch.randn(1, 2, 5, 5), -1)], [list("abcde")])
        >>> page = to_html(maps, title="demo", keep_mass=0.9)
        >>> page.startswith("<!DOCTYPE html>") and "http" not in page.split("attnkit-data")[0]
        True
    """
    data = viewer_data(maps, sequence=sequence, sequences=sequences, top_k=top_k, keep_mass=keep_mass, thumb=thumb,
                       title=title, view=view, layer=layer, focus=focus, heads=heads)
    return _env().get_template("viewer.html.j2").render(title=data["title"], data_json=_script_json(data))


def save_html(maps: AttentionMaps, path: str | Path, **kwargs: Any) -> Path:
    """Write [`to_html`][attnkit.viz._html.to_html] to ``path`` (UTF-8); returns the path. ``kwargs`` go to [`to_html`][attnkit.viz._html.to_html]."""
    path = Path(path)
    path.write_text(to_html(maps, **kwargs), encoding="utf-8")
    return path
