"""The console in a real headless Chromium (Debian's `chromium`, driven by Playwright for Python with
`executable_path`; no browser download). Set FLYWHEEL_SCREENSHOTS=docs/ to write the README's
screenshots of the routes page, a diff and a call page."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.console.conftest import ADMIN_KEY, ROUTE, Learned

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]


def test_console_in_chromium(learned: Learned) -> None:
    url = learned.gw.url
    shots = os.environ.get("FLYWHEEL_SCREENSHOTS")
    before, _, _ = learned.client.ask("before-rollback", "How do I reset my password?")
    assert _written(learned, before)
    assert learned.client.get(f"/console/api/calls/{before}")["artifacts"]["index"] == learned.canary_index
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()

        # without a session: redirected to sign-in
        page.goto(f"{url}/console/routes/{ROUTE}")
        assert page.url.startswith(f"{url}/console/login?next=")
        page.fill("input[name=key]", "wrong key")
        page.click("form#login button")
        assert "not the admin key" in page.content()
        page.fill("input[name=key]", ADMIN_KEY)
        page.click("form#login button")
        page.wait_for_url(f"{url}/console/routes/{ROUTE}")

        # the routes page: the learned index and template serve the route
        page.goto(f"{url}/console/routes")
        row = page.locator("#routes tbody tr", has_text=ROUTE)
        assert learned.previous_index in row.inner_text() and learned.canary_index in row.inner_text()
        assert row.locator("svg.spark").count() >= 4
        if shots:
            page.screenshot(path=str(Path(shots) / "console-routes.png"), full_page=True)

        # route detail: versions with evaluation, learned template, and the timeline
        page.click(f"a.route-link:text('{ROUTE}')")
        versions = page.locator("#versions").inner_text()
        assert "template" in page.locator("#timeline").inner_text()
        assert learned.canary_index in versions and "canary" in versions and "passed" in versions

        # the diff of the index in canary, with its evidence; follow an evidence link to its call
        page.goto(f"{url}/console/routes/{ROUTE}/diff?kind=index&to={learned.canary_index}")
        assert "+Assistant: Cancel any time" in page.locator("#diff").inner_text()
        if shots:
            page.screenshot(path=str(Path(shots) / "console-diff.png"), full_page=True)
        link = page.locator("a.evidence-link").first
        call_id = link.get_attribute("href").rsplit("/", 1)[-1]  # type: ignore[union-attr]
        link.click()
        page.wait_for_url(f"{url}/console/calls/{call_id}")
        assert page.locator("#call-id").inner_text() == call_id
        assert "cancel" in page.locator("#messages").inner_text().lower()
        assert "Cancel any time" in page.locator("#feedback").inner_text()  # the correction that caused it
        if shots:
            page.screenshot(path=str(Path(shots) / "console-call.png"), full_page=True)

        # a request with the session but without the CSRF token is refused
        cookies = {c["name"]: c["value"] for c in page.context.cookies()}
        forged = httpx.post(f"{url}/console/routes/{ROUTE}/action", cookies=cookies,
                            data={"action": "freeze", "note": "forged"})
        assert forged.status_code == 403 and "CSRF" in forged.text
        assert not any(a["action"] == "freeze" for a in _actions(learned))

        # roll the canary back, with confirmation and a note
        page.goto(f"{url}/console/routes/{ROUTE}")
        page.click(f"#rollback-{learned.canary_index}")
        page.click("form#confirm button")  # the note is required: the browser keeps the form
        assert "/confirm" in page.url
        page.fill("textarea[name=note]", "answers about cancelling look wrong")
        page.click("form#confirm button")
        page.wait_for_url(f"{url}/console/routes/{ROUTE}?msg=*")
        assert "rollback done" in page.locator("#flash").inner_text()
        assert "answers about cancelling look wrong" in page.locator("#timeline").inner_text()
        browser.close()

    # the route serves the previous index again, and the log names who did it and why
    for i in range(4):
        call_id, _, _ = learned.client.ask(f"after-{i}", "How do I reset my password?")
        call = learned.client.get(f"/console/api/calls/{call_id}") if _written(learned, call_id) else None
        assert call is not None and call["artifacts"]["index"] == learned.previous_index
    log = learned.client.get(f"/admin/routes/{ROUTE}/log", kind="index")["data"]
    last = [e for e in log if e["version"] == learned.canary_index][-1]
    assert last["to_state"] == "rolled_back" and "answers about cancelling look wrong" in last["reason"]
    assert "by admin-" in last["reason"]


def _actions(learned: Learned) -> list[dict[str, str]]:
    page = learned.client.get(f"/console/api/routes/{ROUTE}")
    return [e | {"action": e["event"]} for e in page["timeline"] if e["kind"] == "route"]


def _written(learned: Learned, call_id: str) -> bool:
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = learned.client.http.get(f"{learned.gw.url}/console/api/calls/{call_id}")
        if r.status_code == 200:
            return True
        time.sleep(0.05)
    return False
