"""The app in a real browser: Debian chromium driven by Playwright (never `playwright install`)."""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

pytest.importorskip("gradio", reason="the app needs the [app] extra (gradio)")
playwright = pytest.importorskip(
    "playwright.sync_api", reason="the browser test needs the playwright package"
)
CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.slow,  # ~25 s with the browser start; .ci/run runs slow tests too
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian chromium is not installed (apt-get install chromium; .ci/run installs it)",
    ),
]

from stylekit.apps import Engine, ModelCache, build_demo, free_port, launch  # noqa: E402

MAX_FILE_SIZE_KB = 300
TIMEOUT_MS = 120_000
RESULT = "#results img"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    engine = Engine(tmp_path_factory.mktemp("outputs"), models=ModelCache(device="cpu"), default_model="mini")
    demo = build_demo(engine, work_dir=tmp_path_factory.mktemp("app"))
    _, local_url, _ = launch(demo, port=free_port(), block=False, max_file_size=f"{MAX_FILE_SIZE_KB}kb")
    try:
        yield local_url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def page(url, tmp_path_factory):
    with playwright.sync_playwright() as runner:
        browser = runner.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.wait_for_selector("#content input[type=file]", state="attached")
            yield page
        finally:
            browser.close()


def upload(page, elem_id: str, path: Path) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))


def result_size(page) -> tuple[int, int]:
    page.wait_for_function(
        "() => { const i = document.querySelector('#results img'); return i && i.complete && i.naturalWidth > 0 }"
    )
    width, height = page.evaluate(
        "() => { const i = document.querySelector('#results img'); return [i.naturalWidth, i.naturalHeight] }"
    )
    return int(width), int(height)


def wait_for_text(page, text: str) -> None:
    page.get_by_text(text, exact=False).first.wait_for(state="visible")


def test_browser_transfer_errors_then_success(page, tmp_path: Path) -> None:
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    Image.fromarray(make_image(0)).save(content)
    Image.fromarray(make_image(1)).save(style)

    # 1. A full transfer: upload content and style, run, wait for the result image.
    upload(page, "content", content)
    upload(page, "style", style)
    page.click("#run-image")
    wait_for_text(page, "1 image(s)")
    assert result_size(page) == (64, 64)  # mini's native size
    first_src = page.get_attribute(RESULT, "src")
    page.screenshot(path=str(tmp_path / "result.png"), full_page=True)
    assert (tmp_path / "result.png").stat().st_size > 0

    # 2. A non-image is refused with a message in the page.
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    upload(page, "content", notes)
    wait_for_text(page, "notes.txt")
    assert "Invalid file type" in page.inner_text("body") or "not an image file" in page.inner_text("body")

    # 3. An oversized file is refused with a message in the page.
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > MAX_FILE_SIZE_KB * 1024
    upload(page, "style", big)
    wait_for_text(page, "exceed the maximum allowed size")
    page.screenshot(path=str(tmp_path / "errors.png"), full_page=True)

    # 4. The server still serves: a good request (another style) succeeds and replaces the result.
    other_style = tmp_path / "style2.png"
    Image.fromarray(make_image(2)).save(other_style)
    upload(page, "content", content)
    upload(page, "style", other_style)
    page.wait_for_timeout(500)
    page.click("#run-image")
    page.wait_for_function(
        "(old) => { const i = document.querySelector('#results img'); return i && i.getAttribute('src') !== old }",
        arg=first_src,
    )
    assert result_size(page) == (64, 64)
    page.screenshot(path=str(tmp_path / "after-errors.png"), full_page=True)
