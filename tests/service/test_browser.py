"""End to end in a real browser (Debian's Chromium driven by Playwright) against the real HTTP server.

Logs in, opens the worklist, opens the analysed study, scrolls through slices, toggles the lesion overlay and
confirms the result with a comment, then checks the review stored with the logged-in user and time; roles (what a
radiologist does not see or may not do), the audit page, and a cross-site form post that must change nothing.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from ctriage.report.images import CONSOLIDATION_RGB, GGO_RGB
from ctriage.service.api import create_app
from ctriage.service.auth import add_user
from ctriage.service.db import AuditEvent, Study, requeue
from ctriage.service.runtime import Service
from tests.service.conftest import PASSWORD, free_port, store_series, with_lesions

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TIMEOUT_MS = 30_000


@pytest.fixture
def server(config, analyze, ct_series: Path) -> Iterator[tuple[str, Service]]:
    """The real app on a free port, with one study received and analysed, a radiologist and an admin."""
    service = Service.create(config, analyze)
    store_series(service.store, ct_series)
    assert service.worker.run_once()
    add_user(service.sessions, "dr.chase", PASSWORD, "radiologist")
    add_user(service.sessions, "dr.cuddy", PASSWORD, "admin")
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


def _log_in(page, base: str, username: str, path: str = "/") -> None:
    """Open ``path``, which sends the browser to the login page, log in there and come back to ``path``."""
    page.goto(base + path)
    page.wait_for_url("**/login.html?next=*")
    page.locator("#username").fill(username)
    page.locator("#password").fill(PASSWORD)
    page.locator("#login").click()
    page.wait_for_url(base + path)
    page.locator("#account", has_text=username).wait_for()


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
    _log_in(page, base, "dr.chase")
    assert page.locator("#upload-form").is_hidden()  # uploads are for admins
    row = page.locator("tr.row", has_text="CTRIAGE-TEST")
    row.wait_for()
    assert "done" in row.inner_text()
    for shown in ("female, 64 y", "ACC001", "CT Body 3.0", "SCANNER1", "COVID-19-like pattern (", "threshold"):
        assert shown in row.inner_text(), shown
    row.click()

    page.wait_for_url("**/study.html?id=*")
    page.locator("#viewer").wait_for(state="visible")
    _slice_shown(page, 10, 1)  # opens in the middle of the 20 slices
    assert page.locator("#slice-count").inner_text() == "20"
    assert page.locator("#slice-position").inner_text() == "position -786.5 mm, instance 277"  # as in the PACS
    assert "not a diagnosis" in page.locator("#ident-note").inner_text()
    assert "67 %" in page.locator("#projection-scale").inner_text()  # the projection's colour scale

    page.locator("#slice").hover()
    page.mouse.wheel(0, 120)
    _slice_shown(page, 11, 1)
    assert page.locator("#slice-position").inner_text() == "position -788.5 mm, instance 278"
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
    assert "Involved" in page.locator("#lungs-table").inner_text()  # labels, not report keys
    assert "not for diagnostic use" in page.locator(".notice").inner_text()

    assert page.locator("#send").is_hidden() and page.locator("#reanalyse").is_hidden()
    page.locator("#comment").fill("bilateral GGO, agree")
    page.locator("#confirm").click()
    page.locator("#review-message", has_text="confirmed saved").wait_for()
    page.locator("#reviews li", has_text="dr.chase").wait_for()

    study_id = int(page.url.rsplit("=", 1)[1])
    with service.sessions() as session:
        (review,) = session.get(Study, study_id).reviews
    assert (review.decision, review.user, review.comment) == ("confirmed", "dr.chase", "bilateral GGO, agree")
    assert review.created_at is not None


def test_admin_reads_the_audit_trail(server, page):
    base, service = server
    _log_in(page, base, "dr.cuddy", "/study.html?id=1")
    page.locator("#viewer").wait_for(state="visible")
    assert page.locator("#send").is_visible() and page.locator("#reanalyse").is_visible()
    page.locator("#comment").fill("agree")
    page.locator("#confirm").click()
    page.locator("#reviews li", has_text="dr.cuddy").wait_for()
    page.locator("a[href='audit.html']").click()
    page.wait_for_url("**/audit.html")
    page.locator("tr.audit-row", has_text="confirmed").wait_for()
    rows = page.locator("tr.audit-row").all_inner_texts()
    assert any("dr.cuddy" in r and "view" in r for r in rows) and any("login" in r for r in rows)
    with page.expect_download() as download:
        page.locator("#csv").click()
    assert "confirmed" in Path(download.value.path()).read_text()


def test_a_radiologist_cannot_reach_admin_actions(server, page):
    base, _service = server
    _log_in(page, base, "dr.chase", "/audit.html")
    page.locator("#audit-message", has_text="admin role").wait_for()
    status = page.evaluate("""async () => (await api('/api/studies/1/retry', {method: 'POST'})).status""")
    assert status == 403


def test_a_cross_site_form_post_changes_nothing(server, page, tmp_path: Path):
    """Another site's page, opened by a logged-in admin, posts a form to the retry endpoint: refused."""
    base, service = server
    _log_in(page, base, "dr.cuddy")
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "index.html").write_text(
        f'<form id="f" method="post" action="{base}/api/studies/1/retry"></form>'
        "<script>document.getElementById('f').submit()</script>")
    port = free_port()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(evil))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as site:
        threading.Thread(target=site.serve_forever, daemon=True).start()
        page.goto(f"http://localhost:{port}/index.html")
        page.wait_for_url(f"{base}/api/studies/1/retry")
        assert page.locator("body").inner_text().strip().startswith("{")  # a refusal, in JSON
        site.shutdown()
    with service.sessions() as session:
        assert session.get(Study, 1).status == "done"
        assert not session.query(AuditEvent).filter(AuditEvent.action == "retry").count()


def test_viewer_opens_on_the_most_involved_slice_and_steps_through_lesions(server, page):
    base, service = server
    service.worker.analyze = with_lesions(service.worker.analyze, {4: 1, 15: 2})  # 4: the most involved slice
    assert requeue(service.sessions, 1) and service.worker.run_once()
    _log_in(page, base, "dr.chase", "/study.html?id=1")
    _slice_shown(page, 4, 1)
    assert page.locator("#lesion-info").inner_text() == "2 slices with lesions"
    page.locator("#next-lesion").click()
    _slice_shown(page, 15, 1)
    page.locator("#next-lesion").click()  # no further lesion: stays
    page.locator("#prev-lesion").click()
    _slice_shown(page, 4, 1)
    assert page.locator(".side-r").inner_text() == "R" and page.locator(".side-l").inner_text() == "L"


def test_mpr_panel_loads_the_ct_and_lesions_in_niivue(server, page):
    base, service = server
    with pytest.raises(urllib.error.HTTPError) as refused:  # no session: no volume
        urllib.request.urlopen(f"{base}/api/studies/1/volume.nii.gz", timeout=10)
    assert refused.value.code == 401
    _log_in(page, base, "dr.chase", "/study.html?id=1")
    page.locator("#mpr-open").click()
    assert page.locator("#mpr-canvas").is_visible()
    page.wait_for_function("window.mprLoaded || window.mprError")
    assert page.evaluate("window.mprError || ''") == ""
    volumes = page.evaluate("window.mprViewer.volumes.map((v) => [v.name, Array.from(v.hdr.dims.slice(1, 4))])")
    assert [name for name, _ in volumes] == ["ct.nii.gz", "lesions.nii.gz"]
    assert volumes[0][1] == volumes[1][1]  # the CT and its labels on one grid
    assert page.evaluate("window.mprViewer.opts.sliceType") == page.evaluate("window.mprViewer.sliceTypeMultiplanar")
    lut = page.evaluate("Array.from(window.mprViewer.volumes[1].colormapLabel.lut.slice(0, 12))")  # RGBA per label
    assert lut == [0, 0, 0, 0, *GGO_RGB, 255, *CONSOLIDATION_RGB, 255]  # the slice overlay's colours
