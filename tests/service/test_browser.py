"""End to end in a real browser (Debian's Chromium driven by Playwright) against the real HTTP server.

Opens the worklist, opens the analysed study, scrolls through slices, toggles the lesion overlay and confirms
the result with a comment, then checks the review stored with user and time.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from ctriage.service.api import create_app
from ctriage.service.db import Study
from ctriage.service.runtime import Service
from tests.service.conftest import store_series

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TIMEOUT_MS = 30_000


@pytest.fixture
def server(config, analyze, ct_series: Path) -> Iterator[tuple[str, Service]]:
    """The real app on a free port, with one study received and analysed."""
    service = Service.create(config, analyze)
    store_series(service.store, ct_series)
    assert service.worker.run_once()
    uv = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=config.http_port,
                                       log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    started = threading.Event()
    while not started.wait(0.05):
        if uv.started or not thread.is_alive():
            started.set()
    assert uv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{config.http_port}", service
    uv.should_exit = True
    thread.join(10)


@pytest.fixture
def page():
    """A Chromium page; skips when Chromium or Playwright is not installed."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip package 'playwright' (test extra)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


def _slice_shown(page, index: int, overlay: int) -> None:
    """Wait until the viewer displays slice ``index`` (0-based) with the overlay flag, fully loaded."""
    page.wait_for_function(
        """([index, overlay]) => { const img = document.getElementById('slice');
            return img.complete && img.naturalWidth === 512 && img.src.includes(`/slices/${index}.png`)
                && img.src.includes(`overlay=${overlay}`); }""",
        arg=[index, overlay],
    )


def test_worklist_study_scroll_overlay_confirm(server, page):
    base, service = server
    page.goto(base + "/")
    row = page.locator("tr.row", has_text="CTRIAGE-TEST")
    row.wait_for()
    assert "done" in row.inner_text()
    row.click()

    page.wait_for_url("**/study.html?id=*")
    page.locator("#viewer").wait_for(state="visible")
    _slice_shown(page, 10, 1)  # opens in the middle of the 20 slices
    assert page.locator("#slice-count").inner_text() == "20"

    page.locator("#slice").hover()
    page.mouse.wheel(0, 120)
    _slice_shown(page, 11, 1)
    page.locator("#slice").focus()
    page.keyboard.press("ArrowUp")
    _slice_shown(page, 10, 1)

    page.locator("#overlay").uncheck()
    _slice_shown(page, 10, 0)
    page.locator("#windows button[data-window='mediastinum']").click()
    page.wait_for_function("document.getElementById('slice').src.includes('window=mediastinum')")
    page.locator("#overlay").check()
    _slice_shown(page, 10, 1)
    assert page.locator("#projection").evaluate("img => img.complete && img.naturalWidth > 0")
    assert "ratio" in page.locator("#lungs-table").inner_text()

    page.locator("#user").fill("dr.chase")
    page.locator("#comment").fill("bilateral GGO, agree")
    page.locator("#confirm").click()
    page.locator("#review-message", has_text="confirmed saved").wait_for()
    page.locator("#reviews li", has_text="dr.chase").wait_for()

    study_id = int(page.url.rsplit("=", 1)[1])
    with service.sessions() as session:
        (review,) = session.get(Study, study_id).reviews
    assert (review.decision, review.user, review.comment) == ("confirmed", "dr.chase", "bilateral GGO, agree")
    assert review.created_at is not None
