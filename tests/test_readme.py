"""The README's tour runs as written (the part that needs no model download or extras)."""

from __future__ import annotations

import re
from pathlib import Path


def test_tour_block_runs(tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    first = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(first, "README.md", "exec"), namespace)  # noqa: S102 — our own documentation
    assert namespace["merged"].shape == namespace["out"].shape
