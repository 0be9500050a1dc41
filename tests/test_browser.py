"""The HTML viewer in headless Chromium: no console errors, no network, interactive, non-blank,
and a 512-token × 12-layer × 12-head page that renders without freezing.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/install_browser.sh`` installs them)
and selenium (the ``browser``/``test`` extras). Skips only when the browser is absent.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
import time

import numpy as np
import pytest
import torch

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install 'attnkit[browser]'")
pytest.importorskip("jinja2", reason="needs the viz extra: pip install 'attnkit[viz]'")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from attnkit import viz  # noqa: E402
from attnkit.inspect import AttentionMaps  # noqa: E402

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="headless Chromium not installed: run .ci/install_browser.sh")

# Waiting longer than this means the page froze (the complaint about other viewers on long
# inputs); it is a hang detector, not a speed target. The measured time is printed instead.
FREEZE_S = 60
SENTENCE = ["[CLS]", "the", "animal", "didn", "'", "t", "cross", "the", "street", "because", "it", "was", "too", "tired", ".", "[SEP]"]


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="attnkit-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1400,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _open(driver, path) -> float:
    """Load a page, wait until the viewer says it is drawn; return the page's own render time (ms)."""
    driver.get_log("browser"), driver.get_log("performance")  # drop what earlier pages logged
    driver.get(path.as_uri())
    WebDriverWait(driver, FREEZE_S).until(lambda d: d.execute_script("return document.body.dataset.ready || document.body.dataset.error"))
    assert driver.execute_script("return document.body.dataset.error") is None
    return float(driver.execute_script("return document.body.dataset.renderMs"))


def _assert_clean(driver):
    """No console errors, and no request that leaves the machine."""
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    urls = [json.loads(e["message"])["message"]["params"].get("request", {}).get("url", "") for e in driver.get_log("performance")]
    remote = [u for u in urls if u.split(":", 1)[0] in ("http", "https", "ws", "wss", "ftp")]
    assert not remote, remote


def _canvas(driver, css="#head-canvas") -> str:
    return driver.execute_script(f"return document.querySelector('{css}').toDataURL()")


def _ink(driver, css="#head-canvas") -> int:
    """Non-transparent pixels on a canvas."""
    return driver.execute_script(
        f"const c = document.querySelector('{css}'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;")


def _maps(tokens, N, H, seed=0) -> AttentionMaps:
    g = torch.Generator().manual_seed(seed)
    L = len(tokens)
    w = [torch.softmax(torch.randn(1, H, L, L, generator=g) * 3, -1) for _ in range(N)]
    return AttentionMaps(w, [list(tokens)], special=[[t.startswith("[") for t in tokens]], meta={"model": "toy"})


@pytest.fixture(scope="module")
def small_page(tmp_path_factory):
    return viz.save_html(_maps(SENTENCE, N=3, H=4), tmp_path_factory.mktemp("html") / "small.html", title="toy model")


def test_head_view_focus_changes_drawing(browser, small_page):
    _open(browser, small_page)
    edges_all, pixels_all, ink_all = (browser.find_element(By.ID, "head-canvas").get_attribute("data-edges"),
                                      _canvas(browser), _ink(browser))
    assert int(edges_all) > 16 and ink_all > 1000
    browser.find_elements(By.CSS_SELECTOR, ".qtok")[10].click()  # "it"
    WebDriverWait(browser, 5).until(lambda d: d.execute_script("return document.body.dataset.focus") == "q10")
    edges_it = int(browser.find_element(By.ID, "head-canvas").get_attribute("data-edges"))
    assert 0 < edges_it < int(edges_all) and _canvas(browser) != pixels_all
    info = browser.find_element(By.ID, "focus-info").text
    assert info.startswith('"it" (token 10) attends to:') and "layer 2 head 3:" in info
    browser.find_elements(By.CSS_SELECTOR, ".qtok")[10].click()  # unpin
    WebDriverWait(browser, 5).until(lambda d: d.execute_script("return document.body.dataset.focus") == "")
    _assert_clean(browser)


def test_controls_layer_heads_and_keys(browser, small_page):
    _open(browser, small_page)
    before = _canvas(browser)
    Select(browser.find_element(By.ID, "layer")).select_by_value("0")
    WebDriverWait(browser, 5).until(lambda d: _canvas(d) != before)
    browser.find_element(By.ID, "heads-none").click()
    WebDriverWait(browser, 5).until(lambda d: d.find_element(By.ID, "head-canvas").get_attribute("data-edges") == "0")
    assert _ink(browser) == 0
    browser.find_element(By.CSS_SELECTOR, 'input[data-head="1"]').click()
    WebDriverWait(browser, 5).until(lambda d: int(d.find_element(By.ID, "head-canvas").get_attribute("data-edges")) > 0)
    browser.find_elements(By.CSS_SELECTOR, ".ktok")[2].click()  # focus a key: only lines into "animal"
    WebDriverWait(browser, 5).until(lambda d: d.execute_script("return document.body.dataset.focus") == "k2")
    _assert_clean(browser)


def _wait_for_model_grid(driver, n: int) -> None:
    """The model grid is drawn after the click's event turn: wait for its n thumbnails (a loaded
    machine is slow) instead of counting too early."""
    WebDriverWait(driver, 15).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model-grid canvas")) >= n)


def test_model_and_rollout_views(browser, small_page):
    _open(browser, small_page)
    browser.find_element(By.CSS_SELECTOR, 'button[data-view="model"]').click()
    _wait_for_model_grid(browser, 3 * 4)
    thumbs = browser.find_elements(By.CSS_SELECTOR, "#model-grid canvas")
    assert len(thumbs) == 3 * 4
    assert _ink(browser, "#model-grid canvas") > 0
    thumbs[1 * 4 + 2].click()  # layer 1 head 2 opens in the head view with that head alone
    WebDriverWait(browser, 5).until(lambda d: d.execute_script("return document.body.dataset.view") == "head")
    checked = [e.get_attribute("data-head") for e in browser.find_elements(By.CSS_SELECTOR, "#heads input") if e.is_selected()]
    assert checked == ["2"] and Select(browser.find_element(By.ID, "layer")).first_selected_option.text == "1"
    browser.find_element(By.CSS_SELECTOR, 'button[data-view="rollout"]').click()
    WebDriverWait(browser, 5).until(lambda d: d.execute_script("return document.body.dataset.view") == "rollout")
    cell = browser.execute_script("return document.getElementById('rollout-canvas').getBoundingClientRect().width") / 16
    assert cell >= 8  # cells of a readable size, not one pixel per token
    assert _ink(browser, "#rollout-left") > 0 and _ink(browser, "#rollout-top") > 0  # labels on both axes
    canvas = browser.find_element(By.ID, "rollout-canvas")
    browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true, clientX: arguments[0].getBoundingClientRect().left + 5, "
                           "clientY: arguments[0].getBoundingClientRect().top + arguments[0].getBoundingClientRect().height * 10.5 / 16}))", canvas)
    WebDriverWait(browser, 5).until(lambda d: "after 3 layers" in d.find_element(By.ID, "rollout-info").text)
    assert browser.find_element(By.ID, "rollout-info").text.startswith('"it" (token 10)')
    _assert_clean(browser)


def test_opens_on_a_layer_with_a_pinned_token(browser, tmp_path):
    page = viz.save_html(_maps(SENTENCE, N=3, H=4), tmp_path / "focused.html", layer=1, focus=10, heads=[0, 2])
    _open(browser, page)
    assert browser.execute_script("return document.body.dataset.focus") == "q10"
    checked = [e.get_attribute("data-head") for e in browser.find_elements(By.CSS_SELECTOR, "#heads input") if e.is_selected()]
    assert checked == ["0", "2"]
    assert Select(browser.find_element(By.ID, "layer")).first_selected_option.text == "1"
    info = browser.find_element(By.ID, "focus-info").text
    assert info.startswith('"it" (token 10) attends to:') and "layer 1 head 0:" in info and "head 1:" not in info
    assert re.search(r"(: |, )the \d", info) is None  # "the" occurs twice: shown with its position, the·7
    browser.find_elements(By.CSS_SELECTOR, ".qtok")[3].click()  # a click moves the pin elsewhere
    WebDriverWait(browser, 5).until(lambda d: d.execute_script("return document.body.dataset.focus") == "q3")
    _assert_clean(browser)


def test_screenshot_is_not_blank(browser, small_page):
    from matplotlib.image import imread

    _open(browser, small_page)
    img = imread(io.BytesIO(browser.get_screenshot_as_png()), format="png")[..., :3]
    assert img.shape[0] > 500 and img.shape[1] > 800
    rgb = (img.reshape(-1, 3) * 255).astype(np.uint32)
    colours = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])
    assert len(colours) > 50 and img.std() > 0.05


def test_nan_weight_page_loads_and_shows_nan(browser, tmp_path):
    maps = _maps(SENTENCE, N=2, H=2)
    maps.weights[1][0, 0, 10, 3] = float("nan")
    _open(browser, viz.save_html(maps, tmp_path / "nan.html", focus=10, heads=[0]))
    assert "NaN" in browser.find_element(By.ID, "nonfinite").text
    info = browser.find_element(By.ID, "focus-info").text
    assert "NaN" in info and "row holds NaN/inf" in info
    assert "bad" in browser.find_elements(By.CSS_SELECTOR, ".qtok")[10].get_attribute("class")
    _assert_clean(browser)


def test_batch_switches_inside_the_page(browser, tmp_path):
    g = torch.Generator().manual_seed(2)
    w = [torch.softmax(torch.randn(2, 2, 6, 6, generator=g) * 3, -1)]
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    maps = AttentionMaps(w, [list("abcdef"), ["w", "x", "y", "z"]], mask)
    _open(browser, viz.save_html(maps, tmp_path / "batch.html"))
    assert len(browser.find_elements(By.CSS_SELECTOR, ".qtok")) == 6
    Select(browser.find_element(By.ID, "sequence")).select_by_value("1")
    WebDriverWait(browser, 5).until(lambda d: d.execute_script("return document.body.dataset.sequence") == "1")
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".qtok")] == ["w", "x", "y", "z"]
    WebDriverWait(browser, 5).until(lambda d: _ink(d) > 0)
    browser.find_elements(By.CSS_SELECTOR, ".qtok")[2].click()  # controls work after the switch, once each
    WebDriverWait(browser, 5).until(lambda d: d.execute_script("return document.body.dataset.focus") == "q2")
    _assert_clean(browser)


def _frame_state(driver, frame):
    driver.switch_to.frame(frame)
    try:
        return (driver.execute_script("return document.body.dataset.focus"), _canvas(driver))
    finally:
        driver.switch_to.default_content()


def test_three_notebook_viewers_do_not_interfere(browser, tmp_path):
    """A page laid out as a notebook shows outputs: three viewer outputs, one after the other."""
    outputs = [viz.viewer(_maps(SENTENCE[: 8 + 4 * n], N=2, H=2 + n, seed=n), height=420)._repr_html_() for n in range(3)]
    page = tmp_path / "notebook.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>" +
                    "".join(f'<div class="output_html">{o}</div>' for o in outputs) + "</body></html>", encoding="utf-8")
    browser.get_log("browser"), browser.get_log("performance")
    browser.get(page.as_uri())
    frames = browser.find_elements(By.TAG_NAME, "iframe")
    assert len(frames) == 3
    for frame in frames:  # each draws its own canvas (offscreen frames may wait until scrolled in)
        browser.execute_script("arguments[0].scrollIntoView()", frame)
        browser.switch_to.frame(frame)
        WebDriverWait(browser, FREEZE_S).until(lambda d: d.execute_script("return document.body.dataset.ready || document.body.dataset.error"))
        assert browser.execute_script("return document.body.dataset.error") is None
        assert _ink(browser) > 500
        browser.switch_to.default_content()
    before = [_frame_state(browser, f) for f in frames]
    browser.execute_script("arguments[0].scrollIntoView()", frames[1])
    browser.switch_to.frame(frames[1])
    browser.find_elements(By.CSS_SELECTOR, ".qtok")[3].click()
    WebDriverWait(browser, 5).until(lambda d: d.execute_script("return document.body.dataset.focus") == "q3")
    browser.switch_to.default_content()
    after = [_frame_state(browser, f) for f in frames]
    assert after[1][0] == "q3" and after[1][1] != before[1][1]  # the clicked viewer changed
    assert after[0] == before[0] and after[2] == before[2]  # the others did not
    _assert_clean(browser)


def test_rollout_readable_at_300_tokens(browser, tmp_path):
    tokens = ["[CLS]"] + [f"w{i}" for i in range(298)] + ["[SEP]"]
    _open(browser, viz.save_html(_maps(tokens, N=2, H=2, seed=3), tmp_path / "r300.html", view="rollout", focus=150))
    size = browser.execute_script("const r = document.getElementById('rollout-canvas').getBoundingClientRect(); return [r.width, r.height];")
    assert size[0] / 300 >= 8 and size[1] / 300 >= 8  # a minimum cell size, reached by scrolling
    assert _ink(browser, "#rollout-left") > 0 and _ink(browser, "#rollout-top") > 0
    assert browser.find_element(By.ID, "rollout-info").text.startswith('"w149" (token 150)')
    scroll = browser.execute_script("return document.getElementById('rollout-scroll').scrollTop")
    assert scroll > 0  # scrolled to the focused row
    _assert_clean(browser)


@pytest.mark.slow
def test_512_tokens_12_layers_12_heads_stays_responsive(browser, tmp_path):
    tokens = ["[CLS]"] + [f"w{i}" for i in range(510)] + ["[SEP]"]
    page = viz.save_html(_maps(tokens, N=12, H=12, seed=1), tmp_path / "long.html")
    start = time.perf_counter()
    render_ms = _open(browser, page)
    wall = time.perf_counter() - start
    print(f"\n512 tokens x 12 layers x 12 heads: {page.stat().st_size / 1e6:.2f} MB, rendered in {render_ms:.0f} ms "
          f"(page clock), {wall:.2f} s wall")
    assert int(browser.find_element(By.ID, "head-canvas").get_attribute("data-edges")) > 0
    far = browser.find_elements(By.CSS_SELECTOR, ".qtok")[400]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", far)
    far.click()
    WebDriverWait(browser, FREEZE_S).until(lambda d: d.execute_script("return document.body.dataset.focus") == "q400")
    assert _ink(browser) > 0
    browser.find_element(By.CSS_SELECTOR, 'button[data-view="model"]').click()
    _wait_for_model_grid(browser, 144)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#model-grid canvas")) == 144
    _assert_clean(browser)


@pytest.fixture(scope="module")
def docs_server(site):
    """The built documentation site over HTTP on 127.0.0.1 (Material's search needs http, not file://)."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_docs_pages_render_formulas_images_and_no_raw_roles(browser, docs_server):
    # Home, the attention reference and two tutorials as a reader sees them: offline (no request
    # leaves 127.0.0.1), formulas typeset by the vendored MathJax, images loaded, no reST roles.
    import attnkit

    found = {"formulas": 0, "images": 0}
    driver = browser
    for page in ("", "reference/attnkit/", "tutorials/01-softmax/", "tutorials/04-translation/"):
        driver.get_log("browser"), driver.get_log("performance")
        driver.get(f"{docs_server}/{page}")
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(
            "return document.readyState === 'complete' && !!(window.MathJax && MathJax.startup && MathJax.startup.promise)"))
        driver.execute_async_script("const done = arguments[0]; MathJax.startup.promise.then(() => done(true));")
        text = driver.execute_script("return document.querySelector('article').innerText")
        assert not re.search(r":(func|class|attr|meth|mod):", text), page
        assert attnkit.__version__ in driver.execute_script("return document.querySelector('.md-header__topic').innerText")
        assert "no public repository URL" in driver.execute_script("return document.querySelector('.md-copyright').innerText")
        found["formulas"] += driver.execute_script("return document.querySelectorAll('article mjx-container svg').length")
        found["images"] += driver.execute_script(
            "return [...document.querySelectorAll('article img')].filter(i => i.complete && i.naturalWidth > 100).length")
        if page == "reference/attnkit/":  # attention opens the page, before the internals
            order = driver.execute_script("return [...document.querySelectorAll('article [id^=attnkit]')].map(h => h.id)")
            assert order.index("attnkit.attention") < order.index("attnkit.KVCache") < order.index("attnkit.AttnkitError")
            assert "attnkit.AttentionSpec" not in order
        if page == "tutorials/01-softmax/":  # the copy button copies code, not prompts or outputs
            output, copied = driver.execute_script(
                "const c = [...document.querySelectorAll('.highlight code')].find(e => e.querySelector('.gp') && e.querySelector('.go'));"
                "c.setAttribute('data-md-copying', '');"
                "const t = c.innerText; c.removeAttribute('data-md-copying'); return [c.querySelector('.go').textContent, t];")
            assert "import" in copied and ">>>" not in copied and output.strip() not in copied, copied
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, (page, errors)
        urls = [json.loads(e["message"])["message"]["params"].get("request", {}).get("url", "") for e in driver.get_log("performance")]
        remote = [u for u in urls if u.split(":", 1)[0] in ("http", "https", "ws", "wss") and not u.startswith(docs_server)]
        assert not remote, (page, remote)
    assert found["formulas"] >= 3 and found["images"] >= 2, found
