"""Make the documentation's pictures from real runs: ``python tools/docs_images.py [PART ...]``.

Parts (default: all but ``perf``, which tools/bench_plots.py makes from bench results):

- ``explain``: ``attnkit explain`` on all-MiniLM-L6-v2 (the tutorial-3 sentence, token "it"): its
  heatmap PNG as written, and screenshots of its HTML viewer (head view with "it" pinned, model
  view, rollout view) in headless Chromium, offline.
- ``alignment``: a short ``attnkit seq2seq train`` run on the dates task (CPU, a few minutes), then
  ``attnkit seq2seq translate --plot`` on a held-out-style date; the printed evaluation goes to
  ``docs/img/alignment-dates.txt`` beside the PNG so the page can quote it.

Every output lands in docs/img/ and is committed; the docs build does not run models. Needs the
``hf``, ``viz``, ``seq2seq`` and ``browser`` extras and Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
SENTENCE = "The animal didn't cross the street because it was too tired."
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")


def _attnkit(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "attnkit", *args], capture_output=True, text=True, env=ENV, cwd=cwd)
    if proc.returncode != 0:
        sys.exit(f"attnkit {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = next(p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1200,900", "--hide-scrollbars"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def _ready(driver) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.ready || document.body.dataset.error"))
    if driver.execute_script("return document.body.dataset.error"):
        sys.exit("the viewer page reported an error")


def _trim(path: Path, margin: int = 16) -> None:
    """Cut the blank rows below a screenshot's content."""
    import numpy as np
    from matplotlib.image import imread, imsave

    img = imread(path)
    ink = np.flatnonzero((img[..., :3] < 0.97).any(axis=(1, 2)))
    if ink.size:
        imsave(path, img[: min(len(img), ink[-1] + margin)])


def explain() -> list[Path]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    work = Path(tempfile.mkdtemp(prefix="attnkit-docs-"))
    html, png = work / "attention.html", IMG / "explain-heatmap.png"
    out = _attnkit("explain", SENTENCE, "--token", "it", "--html", str(html), "--png", str(png))
    (IMG / "explain-output.txt").write_text(out.replace(str(work) + os.sep, "").replace(str(IMG) + os.sep, ""), encoding="utf-8")
    driver = _browser()
    try:
        driver.get(html.as_uri())
        _ready(driver)
        shots = [IMG / "viewer-head.png", IMG / "viewer-model.png", IMG / "viewer-rollout.png"]
        driver.save_screenshot(str(shots[0]))
        driver.find_element(By.CSS_SELECTOR, 'button[data-view="model"]').click()
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model-grid canvas")) >= 6 * 12)
        time.sleep(0.5)  # thumbnails paint after they are inserted
        driver.save_screenshot(str(shots[1]))
        driver.find_element(By.CSS_SELECTOR, 'button[data-view="rollout"]').click()
        WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.body.dataset.view") == "rollout")
        time.sleep(0.5)
        driver.save_screenshot(str(shots[2]))
    finally:
        driver.quit()
        shutil.rmtree(work, ignore_errors=True)
    for shot in shots:
        _trim(shot)
    return [png, IMG / "explain-output.txt", *shots]


def alignment(minutes: float = 4.0) -> list[Path]:
    work = Path(tempfile.mkdtemp(prefix="attnkit-seq2seq-"))
    try:
        run = work / "dates"
        train = _attnkit("seq2seq", "train", "--data", "dates", "--score", "general", "--epochs", "2",
                         "--max-minutes", str(minutes), "--out", str(run), "--no-progress")
        report = _attnkit("seq2seq", "evaluate", "--model", str(run), "--limit", "500")
        png = IMG / "alignment-dates.png"
        text = "3rd of March 1986"
        translation = _attnkit("seq2seq", "translate", "--model", str(run), text, "--plot", str(png))
        note = (f"$ attnkit seq2seq train --data dates --score general --epochs 2 --max-minutes {minutes:g}\n"
                f"{train.strip().splitlines()[-1].replace(str(run), 'RUN')}\n"
                f"$ attnkit seq2seq evaluate --model RUN --limit 500\n{report.strip()}\n"
                f"$ attnkit seq2seq translate --model RUN \"{text}\" --plot alignment-dates.png\n"
                f"{translation.strip().splitlines()[0]}\n")
        (IMG / "alignment-dates.txt").write_text(note, encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [png, IMG / "alignment-dates.txt"]


PARTS = {"explain": explain, "alignment": alignment}

if __name__ == "__main__":
    IMG.mkdir(parents=True, exist_ok=True)
    for part in sys.argv[1:] or list(PARTS):
        if part not in PARTS:
            sys.exit(f"unknown part {part!r}; choose from {sorted(PARTS)}")
        for path in PARTS[part]():
            print(f"wrote {path.relative_to(ROOT)}")
