"""Open an HTML file in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by
selenium) and list what is wrong with it: images that did not load, requests that left the machine,
console errors. Also a script: ``python tests/browser.py PAGE.html SCREENSHOT.png``.

Chromium shows a PNG cut short as far as it goes and reports it loaded (natural width > 0, and
``img.decode()`` resolves), so inline images are also decoded to the end with Pillow."""

from __future__ import annotations

import base64
import io
import json
import shutil
import sys
from pathlib import Path

from PIL import Image

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
LOCAL = ("file:", "data:", "about:", "chrome:", "devtools:")


def start_browser():
    """Headless Chromium with performance (network) and console logs, or a ``RuntimeError`` saying why not."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        raise RuntimeError(f"selenium is not installed ({e}); pip install selenium") from None
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).is_file() and not shutil.which(Path(path).name):
            raise RuntimeError(f"{path} is missing; install Debian's chromium and chromium-driver (scripts/setup.sh)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(CHROMEDRIVER if Path(CHROMEDRIVER).is_file() else shutil.which("chromedriver"))
    try:
        return webdriver.Chrome(options=options, service=service)
    except Exception as e:  # the driver's many ways of failing to start all mean: no browser here
        raise RuntimeError(f"headless Chromium did not start: {str(e).splitlines()[0]}") from None


def check_page(driver, page: str | Path, screenshot: str | Path | None = None) -> list[str]:
    """Problems with ``page`` once rendered: every ``<img>`` must have loaded (natural width > 0), every
    request must stay on the machine (``file:`` or ``data:``), and the console must have no errors.
    ``screenshot``: save the whole page there as PNG."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("performance"), driver.get_log("browser")  # drop what an earlier page left
    driver.get(Path(page).resolve().as_uri())
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"
        )
    )
    problems = []
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt || i.src.slice(0, 60), i.src, i.naturalWidth])"
    )
    if not images:
        problems.append("the page has no images")
    for name, src, width in images:
        if not width:
            problems.append(f"image did not load: {name}")
        elif src.startswith("data:") and not _decodes(src):
            problems.append(f"image is cut short or corrupt: {name}")
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if not url.startswith(LOCAL):
                problems.append(f"request left the machine: {url[:120]}")
    problems += [
        f"console {e['level']}: {e['message'][:200]}" for e in driver.get_log("browser") if e["level"] == "SEVERE"
    ]
    if screenshot:  # the whole page, not just the window
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 16000), "scale": 1}
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
    return problems


def _decodes(uri: str) -> bool:
    """Whether a ``data:`` URI holds an image that decodes to its last pixel."""
    try:
        Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).load()
    except (OSError, ValueError):
        return False
    return True


if __name__ == "__main__":
    browser = start_browser()
    try:
        found = check_page(browser, sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    finally:
        browser.quit()
    print("\n".join(found) or "ok: every image loaded, no request left the machine, no console errors")
    sys.exit(1 if found else 0)
