"""A real browser draws a 3 on the page's canvas with the mouse and reads the prediction the page shows, and
follows the page's link to the run's report.html."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import uvicorn

from digit_recognizer.predict import TorchPredictor
from digit_recognizer.rundir import RunDir
from digit_recognizer.serve import create_app, listen, url

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def server(served_run):
    app = create_app(TorchPredictor(served_run), report=RunDir(served_run).read_report())
    # The test binds the port (any free one) and keeps it: no other program can take it before the server starts.
    with listen("127.0.0.1", 0) as sock:
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "server did not start"
        yield url(sock)
        server.should_exit = True
        thread.join(timeout=10)


# A 3 as two bowls, in canvas coordinates (280x280).
THREE = [(95, 70), (125, 52), (165, 52), (190, 75), (188, 105), (165, 128), (135, 138),
         (170, 148), (195, 175), (192, 210), (165, 232), (125, 235), (92, 215)]


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package 'chromium')")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


def draw_a_three(server: str) -> tuple[str, int, str]:
    """Draw a 3 with the mouse; the digit the page shows, its number of bars, and the digit shown once cleared."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(server)
            box = page.locator("#pad").bounding_box()
            page.mouse.move(box["x"] + THREE[0][0], box["y"] + THREE[0][1])
            page.mouse.down()
            for x, y in THREE[1:]:
                page.mouse.move(box["x"] + x, box["y"] + y, steps=6)
            page.mouse.up()
            # The page predicts while the stroke is drawn; wait for the answer to the finished drawing.
            page.wait_for_function("document.getElementById('digit').dataset.state === 'settled'", timeout=15_000)
            shown, bars = page.locator("#digit").inner_text().strip(), page.locator("#bars .bar").count()
            page.click("#clear")
            return shown, bars, page.locator("#digit").inner_text().strip()
        finally:
            browser.close()


@needs_chromium
def test_draw_a_digit_and_read_the_prediction(server):
    shown, bars, cleared = draw_a_three(server)
    assert shown in "0123456789" and len(shown) == 1 and bars == 10
    assert cleared == "\u2013"  # the page shows a dash when empty


@needs_chromium
def test_a_drawn_three_is_read_as_three(server, shared_data):
    # Needs the model trained on competition rows (shared_data): trained on the embedded digits only, it reads a
    # mouse-drawn 3 by luck.
    assert draw_a_three(server)[0] == "3"


@needs_chromium
def test_the_report_renders_with_every_figure(server, served_run):
    """From the page, the link to the report; the report shows its three figures (decoded from the page itself)
    and asks for nothing else: no other request, and no console error (the served page forbids loading
    anything, so a reference elsewhere would be one)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            requests, problems = [], []
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda message: problems.append(message.text) if message.type == "error"
                    and not message.location.get("url", "").endswith("/favicon.ico") else None)  # the page has none
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(server)
            requests.clear()
            page.click("a[href='/report']")
            page.wait_for_load_state("load")
            assert page.url == f"{server}/report"
            assert page.locator("h1").inner_text().startswith("fast:")
            images = page.locator("img")
            assert images.count() == 3
            sizes = images.evaluate_all("imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
            assert all(complete and width > 200 and height > 200 for complete, width, height in sizes), sizes
            assert page.locator("#per-class tr").count() == 11  # a header and one row per digit
            assert [url for url in requests if not url.startswith("data:")] == [f"{server}/report"]
            assert problems == []
            # The same file opened straight from the run directory renders the same figures.
            page.goto((served_run / "report.html").as_uri())
            page.wait_for_load_state("load")
            assert page.locator("img").evaluate_all("imgs => imgs.every(i => i.naturalWidth > 200)")
        finally:
            browser.close()
