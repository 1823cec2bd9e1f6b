"""The web page at /ui/ driven by a real headless Chromium (Debian ``chromium`` + ``chromium-driver``, selenium with
the Debian driver given explicitly and ``SE_AVOID_STATS=true``, so nothing reaches beyond loopback) against a real
``python -m app serve`` with an API key and the default weights; plus the slice viewer's routes over httpx.

The page must show the same numbers as the API answers for the same upload, load slice images (through the key),
scroll, switch windows, and show a non-CT refusal's code and sentence. A screenshot is written to
``$ICH_TEST_ARTEFACTS`` (default: the test's temporary folder). Budget: about 35 s on 2 CPU cores.
"""

from __future__ import annotations

import os
import re
import signal
import time
from html.parser import HTMLParser
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from service_fixtures import ServerProcess, start_server, write_phantom_series
from system_components import require_executable

from app.ui import STATIC_DIR

ROOT = Path(__file__).resolve().parents[1]
KEY = "ui-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMEOUT = httpx.Timeout(60.0)
WAIT_S = 60.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    tmp = tmp_path_factory.mktemp("ui-server")
    srv = start_server(tmp, env={"ICH_API_KEYS": KEY, "ICH_UPLOAD_DIR": str(tmp)}, weights_dir=ROOT / "weights",
                       ready_timeout=300.0)
    yield srv
    assert srv.stop() in (0, -signal.SIGTERM), srv.log_text()[-3000:]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_phantom_series(tmp_path_factory.mktemp("ui-phantom") / "series", n_slices=16, size=96)


@pytest.fixture(scope="module")
def mr_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_phantom_series(tmp_path_factory.mktemp("ui-mr") / "mr", n_slices=4, size=32, modality="MR")


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("ICH_TEST_ARTEFACTS") or tmp_path_factory.mktemp("ui-artefacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    chromium = require_executable("chromium", "chromium", "/usr/bin/chromium")
    driver_path = require_executable("chromedriver", "chromium-driver", "/usr/bin/chromedriver")
    os.environ["SE_AVOID_STATS"] = "true"  # selenium manager: no usage statistics
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1500", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-default-apps"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(driver_path)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _multipart(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (p.name, p.read_bytes(), "application/dicom")) for p in paths]


def _wait(predicate, timeout: float = WAIT_S, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _open_page(browser, server: ServerProcess) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    browser.get(f"{server.base_url}/ui/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{server.base_url}/ui/")
    key = browser.find_element(By.ID, "api-key")
    key.send_keys(KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    _wait(lambda: "ready" in browser.find_element(By.ID, "server-state").text
          and "API key" not in browser.find_element(By.ID, "server-state").text, 10, "the model line")


# WCAG 2 contrast ratio of each visible text element against the first opaque background behind it
CONTRAST_JS = """
const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
const lum = (c) => { const v = rgb(c).slice(0, 3).map((x) => { x /= 255;
  return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); });
  return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; };
const background = (el) => { for (; el; el = el.parentElement) { const c = getComputedStyle(el).backgroundColor;
  const v = rgb(c); if (v.length === 3 || (v.length === 4 && v[3] > 0.9)) return c; } return 'rgb(255, 255, 255)'; };
const out = [];
for (const el of document.querySelectorAll(arguments[0])) {
  if (!el.offsetParent || !el.textContent.trim()) continue;
  const a = lum(getComputedStyle(el).color), b = lum(background(el));
  out.push([el.id || el.className || el.tagName, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)]);
}
return out;
"""
TEXT_SELECTOR = "h1, h2, h3, p, dt, dd, li, a, button, label, legend, figcaption, code, th, td"


def _low_contrast(browser) -> list:  # type: ignore[no-untyped-def]
    ratios = browser.execute_script(CONTRAST_JS, TEXT_SELECTOR)
    assert len(ratios) > 10
    return [(name, round(r, 2)) for name, r in ratios if r < 4.5]


def _script_errors(browser) -> list[str]:  # type: ignore[no-untyped-def]
    """Errors the page's scripts raised since the last call (refused requests the page handles are not errors)."""
    return [e["message"] for e in browser.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]


def _upload(browser, paths: list[Path], picker: str = "file-input") -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, picker).send_keys("\n".join(str(p) for p in paths))
    _wait(lambda: browser.find_element(By.ID, "analyse").is_enabled(), 5, "the analyse button")
    browser.find_element(By.ID, "analyse").click()


# --- the page itself ----------------------------------------------------------------------------------------
class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v for k, v in attrs if k in ("src", "href", "action", "srcset", "data") and v]


def test_page_is_local_and_loads_fast(server: ServerProcess, browser) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT) as client:
        t0 = time.perf_counter()
        page = client.get("/ui/")
        assets = {path.name: client.get(f"/ui/{path.name}") for path in STATIC_DIR.iterdir()}
        elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"the page and its files took {elapsed:.2f} s"
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert {"index.html", "app.js", "app.css", "api.js", "result.js", "viewer.js"} <= set(assets)
    for name, asset in assets.items():
        assert asset.status_code == 200 and asset.content == (STATIC_DIR / name).read_bytes()
        if name.endswith(".js"):
            assert "javascript" in asset.headers["content-type"]  # ES modules need a JavaScript type
    parser = _Refs()
    parser.feed(page.text)
    assert set(parser.refs) >= {"app.css", "app.js"}
    external = [r for r in parser.refs if re.match(r"^(?:[a-z][a-z0-9+.-]*:|//)", r, re.I) and not r.startswith("#")]
    assert external == [], external
    for path in STATIC_DIR.iterdir():  # nothing in the page's files names another host
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", path.read_text(), re.I), path.name
    assert httpx.get(f"{server.base_url}/", timeout=TIMEOUT, follow_redirects=False).headers["location"] == "/ui/"
    assert httpx.get(f"{server.base_url}/ui", timeout=TIMEOUT, follow_redirects=True).url.path == "/ui/"

    browser.get(f"{server.base_url}/ui/")
    timing = browser.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "return {load: n.loadEventEnd - n.startTime, resources: performance.getEntriesByType('resource')"
        ".map(r => r.name)};")
    assert 0 < timing["load"] < 1000, timing
    assert all(name.startswith(server.base_url + "/") for name in timing["resources"]), timing["resources"]
    loaded = {name.rsplit("/", 1)[-1] for name in timing["resources"]}
    assert {"app.css", "app.js", "api.js", "result.js", "viewer.js"} <= loaded, loaded
    state = _wait(lambda: browser.find_element("id", "server-state").text if "API key" in
                  browser.find_element("id", "server-state").text else None, 10, "the key request")
    assert "needs an API key" in state


def test_upload_shows_the_api_numbers_and_slices(server: ServerProcess, browser, phantom: list[Path],  # type: ignore[no-untyped-def]
                                                  artefacts: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    api = httpx.post(f"{server.base_url}/v1/predictions", files=_multipart(phantom), headers=AUTH, timeout=TIMEOUT)
    assert api.status_code == 200, api.text
    expected = api.json()

    _open_page(browser, server)
    _upload(browser, [phantom[0].parent], picker="folder-input")  # the folder picker (webkitdirectory)
    assert browser.find_element(By.ID, "selection").text.startswith(f"{len(phantom)} files chosen")
    results = _wait(lambda: browser.find_element(By.ID, "results").is_displayed()
                    or browser.find_element(By.ID, "problem").is_displayed(), what="the result")
    assert results and browser.find_element(By.ID, "results").is_displayed(), \
        browser.find_element(By.ID, "problem").text
    assert not browser.find_element(By.ID, "progress-box").is_displayed()
    assert browser.find_element(By.ID, "status").text == "Analysis finished."

    def fact(name: str) -> tuple[str, str | None]:
        el = browser.find_element(By.ID, name)
        return el.text, el.get_attribute("data-value")

    h, e = expected["haematoma"], expected["expansion"]
    text, value = fact("r-volume")
    assert value is not None and float(value) == pytest.approx(h["volume_ml"], rel=1e-12, abs=1e-12)
    assert text == f"{h['volume_ml']:.1f} mL"
    text, value = fact("r-abc2")
    assert float(value) == pytest.approx(h["abc2_volume_ml"], rel=1e-12, abs=1e-12)
    text, value = fact("r-probability")
    if e["probability"] is None:
        assert value is None and text == "Not assessed"
    else:
        assert float(value) == pytest.approx(e["probability"], rel=1e-12)
        assert text.startswith(f"{e['probability']:.2f}")
    assert float(fact("r-raw")[1]) == pytest.approx(e["raw_probability"], rel=1e-12)
    assert fact("r-infratentorial")[1] == str(h["infratentorial"]).lower()
    assert fact("r-detected")[1] == str(h["detected"]).lower()
    warnings = browser.find_element(By.ID, "warnings").text
    for w in expected["input"]["warnings"]:
        assert w["code"] in warnings
    links = {a.text: a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")}
    assert links["Haematoma mask (NIfTI)"].endswith("/mask.nii.gz") and links["DICOM SEG (segmentation)"].endswith(
        "/seg.dcm")

    index = httpx.get(f"{server.base_url}{expected['links']['self']}/slices", headers=AUTH, timeout=TIMEOUT).json()
    image = browser.find_element(By.ID, "slice-image")
    loaded = "const i = document.getElementById('slice-image'); return i.complete && i.naturalWidth;"
    assert _wait(lambda: browser.execute_script(loaded), 20, "a slice image") == index["columns"]
    start = int(image.get_attribute("data-slice"))
    if h["detected"]:  # the viewer opens on the largest cross-section of the haematoma
        assert start == int(np.argmax(index["mask_pixels"]))
        assert "outlined in red" in browser.find_element(By.ID, "slice-caption").text
    caption = browser.find_element(By.ID, "slice-caption").text
    assert f"Slice {start + 1} of {index['count']}" in caption and f"z = {index['positions_mm'][start]:.1f} mm" in caption
    assert [browser.find_element(By.ID, f"o-{edge}").text for edge in ("left", "right", "top", "bottom")] == \
        ["R", "L", "A", "P"]

    target = start - 1 if start > 0 else start + 1
    browser.find_element(By.ID, "slice-figure").send_keys(Keys.ARROW_DOWN if target < start else Keys.ARROW_UP)
    _wait(lambda: image.get_attribute("data-slice") == str(target), 20, "the next slice")
    assert browser.find_element(By.ID, "slice-slider").get_attribute("value") == str(target + 1)
    browser.find_element(By.CSS_SELECTOR, "input[name=window][value=bone]").click()
    _wait(lambda: image.get_attribute("data-window") == "bone", 20, "the bone window")
    browser.find_element(By.CSS_SELECTOR, "input[name=window][value=brain]").click()
    if h["detected"]:
        browser.find_element(By.ID, "slice-peak").click()
    _wait(lambda: browser.execute_script(loaded) and image.get_attribute("data-window") == "brain", 20, "brain")
    assert _low_contrast(browser) == []
    assert _script_errors(browser) == []
    browser.save_screenshot(str(artefacts / "ui-result.png"))
    browser.find_element(By.ID, "results").screenshot(str(artefacts / "ui-result-panel.png"))
    assert (artefacts / "ui-result.png").stat().st_size > 10_000


def test_non_ct_upload_shows_the_refusal(server: ServerProcess, browser, mr_series: list[Path],  # type: ignore[no-untyped-def]
                                        artefacts: Path) -> None:
    from selenium.webdriver.common.by import By

    api = httpx.post(f"{server.base_url}/v1/predictions", files=_multipart(mr_series), headers=AUTH, timeout=TIMEOUT)
    assert api.status_code == 422 and api.json()["code"] == "not_ct", api.text
    _open_page(browser, server)
    _upload(browser, mr_series)
    problem = browser.find_element(By.ID, "problem")
    _wait(problem.is_displayed, what="the refusal")
    assert browser.find_element(By.ID, "problem-code").text == "not_ct"
    assert browser.find_element(By.ID, "problem-status").text == "422"
    assert browser.find_element(By.ID, "problem-text").text == api.json()["detail"]
    assert "not CT" in browser.find_element(By.ID, "problem-hint").text
    assert not browser.find_element(By.ID, "results").is_displayed()
    assert _low_contrast(browser) == []
    assert _script_errors(browser) == []
    browser.save_screenshot(str(artefacts / "ui-refusal.png"))


# --- the slice routes ---------------------------------------------------------------------------------------
def _decode_png_rgb(data: bytes) -> np.ndarray:
    from test_outputs import _decode_png_rgb as decode

    return decode(data)


def test_slice_routes_draw_the_stored_mask(server: ServerProcess, phantom: list[Path], tmp_path: Path) -> None:
    base = server.base_url
    doc = httpx.post(f"{base}/v1/predictions", files=_multipart(phantom), headers=AUTH, timeout=TIMEOUT).json()
    prefix = f"{base}{doc['links']['self']}"
    assert httpx.get(f"{prefix}/slices", timeout=TIMEOUT).status_code == 401
    index = httpx.get(f"{prefix}/slices", headers=AUTH, timeout=TIMEOUT).json()
    assert index["count"] == len(phantom) and len(index["positions_mm"]) == len(phantom)
    assert index["orientation"] == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert np.allclose(np.diff(index["positions_mm"]), 5.0)  # the phantom's slice spacing, ascending z
    nii = tmp_path / "mask.nii.gz"
    nii.write_bytes(httpx.get(f"{base}{doc['links']['mask_nifti']}", headers=AUTH, timeout=TIMEOUT).content)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(nii)))
    assert index["mask_pixels"] == [int(v) for v in mask.reshape(len(mask), -1).sum(axis=1)]
    k = int(np.argmax(index["mask_pixels"])) if mask.any() else len(phantom) // 2
    png = httpx.get(f"{prefix}/slices/{k}.png", params={"window": "blood"}, headers=AUTH, timeout=TIMEOUT)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    rgb = _decode_png_rgb(png.content)
    assert rgb.shape[:2] == (index["rows"], index["columns"])
    red = (rgb == (255, 0, 0)).all(axis=2)
    from app.outputs.slices import outline

    assert np.array_equal(red, outline(mask[k]))  # the outline is the stored mask's, on this slice
    bad = httpx.get(f"{prefix}/slices/{len(phantom)}.png", headers=AUTH, timeout=TIMEOUT)
    assert bad.status_code == 404 and bad.json()["code"] == "not_found"
    assert httpx.get(f"{prefix}/slices/0.png", params={"window": "lung"}, headers=AUTH,
                     timeout=TIMEOUT).json()["code"] == "validation_error"
    assert httpx.get(f"{base}/v1/predictions/{'0' * 32}/slices/0.png", headers=AUTH,
                     timeout=TIMEOUT).status_code == 404


def test_zip_upload_and_fields_the_page_renders_when_present(server: ServerProcess, browser,  # type: ignore[no-untyped-def]
                                                             phantom: list[Path], tmp_path: Path) -> None:
    """A ZIP through the file picker gives the same numbers; fields that later models add (an expansion
    interval, NCCT markers, the BAT score) are rendered from the document when it has them."""
    from selenium.webdriver.common.by import By
    from service_fixtures import zip_bytes

    archive = tmp_path / "study.zip"
    archive.write_bytes(zip_bytes(phantom))
    api = httpx.post(f"{server.base_url}/v1/predictions", content=archive.read_bytes(),
                     headers={**AUTH, "Content-Type": "application/zip"}, timeout=TIMEOUT).json()
    _open_page(browser, server)
    _upload(browser, [archive])
    _wait(lambda: browser.find_element(By.ID, "results").is_displayed(), what="the ZIP result")
    volume = browser.find_element(By.ID, "r-volume").get_attribute("data-value")
    assert float(volume) == pytest.approx(api["haematoma"]["volume_ml"], rel=1e-12, abs=1e-12)
    assert browser.find_element(By.ID, "markers-box").is_displayed() is (api.get("ncct_markers") is not None)
    assert browser.find_element(By.ID, "r-interval").text == "Not reported by this model"

    extended = dict(api)
    extended["expansion"] = {**api["expansion"], "interval": {"low": 0.081, "high": 0.342, "level": 0.9}}
    extended["ncct_markers"] = {
        "black_hole": {"present": True, "measurement": "darkness_max_hu", "value": 31.25, "unit": "HU",
                       "threshold": 17.0},
        "swirl": {"present": False, "region_volume_ml": 0.0}}
    extended["bat"] = {"score": 3, "complete": False, "points": {"blend": 1, "hypodensity": 2}}
    extended["links"] = {**api["links"], "sr_dicom": api["links"]["self"] + "/sr.dcm"}
    browser.execute_script("return window.ichPage.showResult(arguments[0])", extended)
    assert browser.find_element(By.ID, "r-interval").text == "90 % interval 0.08 to 0.34"
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#markers tbody tr")]
    assert rows == ["black hole yes darkness max hu 31.25 HU (threshold 17)", "swirl no region volume ml: 0"]
    bat = browser.find_element(By.ID, "bat").text
    assert "score\n3" in bat and "complete\nno" in bat and "blend: 1; hypodensity: 2" in bat
    links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")]
    assert "DICOM SR (measurement report)" in links
    assert _script_errors(browser) == []
