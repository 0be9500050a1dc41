"""Fonts for every attnkit plot (viz heatmaps, seq2seq alignment plots): CJK text that renders.

matplotlib's default font (DejaVu Sans) has no CJK glyphs: ``北京`` comes out as boxes, with one
"Glyph ... missing" warning per character. [`fit_fonts`][attnkit.viz._fonts.fit_fonts] gives every text of a figure that
needs it (tick labels, titles, axis labels) a CJK fallback font, once per figure, just before
it is drawn or saved. The font is looked up once per process; a matplotlib font cache older
than a font installed later (e.g. by ``.ci/install_browser.sh``) is refreshed once, on disk, so
later processes find the font directly. Without any CJK font there is one warning, not one
per glyph.
"""

from __future__ import annotations

import contextlib
import functools
import unicodedata
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

__all__ = ["cjk_font", "families", "fit_fonts", "is_wide", "quiet_missing_glyphs"]

# Fonts with CJK glyphs that Debian/Ubuntu/macOS/Windows ship; matplotlib falls back along the list.
_CJK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR", "Source Han Sans",
              "WenQuanYi Zen Hei", "Droid Sans Fallback", "Hiragino Sans", "Microsoft YaHei", "MS Gothic")
_CJK_FILES = ("cjk", "wqy", "droidsansfallback", "sourcehan", "msgothic", "msyh")
_BASE = "DejaVu Sans"
_warned = False


def is_wide(text: str) -> bool:
    """True when ``text`` holds a wide (CJK) character that DejaVu Sans cannot draw."""
    return any(unicodedata.east_asian_width(c) in ("W", "F") for c in text)


@functools.lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The name of an installed CJK font matplotlib can use, or ``None`` (looked up once)."""
    from matplotlib import font_manager

    fm = font_manager.fontManager
    found = next((n for n in _CJK_FONTS if n in {f.name for f in fm.ttflist}), None)
    if found is None:
        # The font cache predates a font installed later: add the files, and write the cache back
        # so the refresh happens once, not in every process.
        added = False
        for path in font_manager.findSystemFonts():
            if any(key in Path(path).name.lower().replace("-", "").replace("_", "") for key in _CJK_FILES):
                with contextlib.suppress(Exception):  # a broken font file must not break plotting
                    fm.addfont(path)
                    added = True
        found = next((n for n in _CJK_FONTS if n in {f.name for f in fm.ttflist}), None)
        if added and found is not None:
            with contextlib.suppress(OSError):
                import matplotlib

                cache = Path(matplotlib.get_cachedir(), f"fontlist-v{font_manager.FontManager.__version__}.json")
                font_manager.json_dump(fm, cache)
    return found


def families(texts: Iterable[str]) -> list[str]:
    """``["DejaVu Sans"]``, plus a CJK fallback when a text needs one (one warning per process if
    none is installed)."""
    global _warned
    if not any(is_wide(t) for t in texts):
        return [_BASE]
    cjk = cjk_font()
    if cjk is None:
        if not _warned:
            _warned = True
            warnings.warn("attnkit: no CJK font found, CJK text will show as boxes; install one "
                          "(Debian: apt-get install fonts-noto-cjk)", stacklevel=3)
        return [_BASE]
    return [_BASE, cjk]


def fit_fonts(fig: Any) -> Any:
    """Give every text of ``fig`` that holds CJK characters a CJK fallback font; returns ``fig``.

    Covers tick labels, titles, suptitles, axis and colorbar labels, whenever they were set.
    Single wide characters on an x axis are set upright (a rotated ``北`` reads sideways), and so
    is every x label when none is wider than two columns.
    """
    from matplotlib.text import Text

    texts = [t for t in fig.findobj(Text) if t.get_text()]
    wide = [t for t in texts if is_wide(t.get_text())]
    if wide:
        fam = families([t.get_text() for t in wide])
        for t in wide:
            t.set_fontfamily(fam)
    for ax in fig.axes:
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        short = all(_columns(t.get_text()) <= 2 for t in labels)  # e.g. characters of a date: all upright
        for label in labels:
            if short or (len(label.get_text()) == 1 and is_wide(label.get_text())):
                label.set_rotation(0)
    return fig


def _columns(text: str) -> int:
    """Display width of ``text`` in columns (a CJK character takes two)."""
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


@contextlib.contextmanager
def quiet_missing_glyphs() -> Iterator[None]:
    """Silence matplotlib's per-glyph "missing from font" warnings once `families` has warned
    that no CJK font is installed (one warning, not one per character)."""
    with warnings.catch_warnings():
        if _warned:
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        yield
