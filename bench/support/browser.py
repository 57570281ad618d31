"""A real headless Chromium for the page tests: npm's ``@sparticuz/chromium`` driven by Python ``playwright``.

``playwright install`` needs a download host that is not reachable here (nor from CI), so the browser comes from the
npm registry (``tests/browser/package.json``, pinned by its lock file, installed by ``npm ci`` into the gitignored
``tests/browser/node_modules``) and Playwright launches it by ``executable_path``. axe-core comes the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BROWSER_DIR = REPO / "tests" / "browser"
NODE_MODULES = BROWSER_DIR / "node_modules"
AXE_JS = NODE_MODULES / "axe-core" / "axe.min.js"
# Screenshots of each page state: test artifacts, gitignored.
ARTIFACTS = Path(os.environ.get("MMSEARCH_TEST_ARTIFACTS", REPO / "test-artifacts")) / "page"
CHROMIUM_ARGS = [
    "--no-sandbox",  # tests run as root in CI
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
]


def ensure_node_modules() -> Path:
    """``npm ci`` the pinned browser packages unless node_modules already holds exactly what the lock file pins.

    ``make install-test`` runs the same ``npm ci``; this covers a bare ``pytest`` and a changed lock file.
    """
    with open(BROWSER_DIR / ".install.lock", "w") as guard:  # two test runs never install at once
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not _installed_matches_lock():
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=BROWSER_DIR, check=True, timeout=600
            )
    return NODE_MODULES


def _installed_matches_lock() -> bool:
    """npm keeps what it installed in node_modules/.package-lock.json: the same versions as the committed lock?"""
    try:
        installed = json.loads((NODE_MODULES / ".package-lock.json").read_text())["packages"]
    except (OSError, ValueError, KeyError):
        return False
    wanted = json.loads((BROWSER_DIR / "package-lock.json").read_text())["packages"]
    return (
        all(installed.get(name, {}).get("version") == meta.get("version") for name, meta in wanted.items() if name)
        and (NODE_MODULES / "@sparticuz" / "chromium" / "package.json").is_file()
    )


def chromium_path() -> str:
    """The Chromium binary of ``@sparticuz/chromium`` (unpacked once into node_modules/.cache, ~4 s)."""
    ensure_node_modules()
    tmp = NODE_MODULES / ".cache" / "chromium"
    tmp.mkdir(parents=True, exist_ok=True)
    script = "import('@sparticuz/chromium').then(async m => console.log(await m.default.executablePath()))"
    with open(tmp.parent / "chromium.lock", "w") as guard:  # parallel test workers never unpack at once
        fcntl.flock(guard, fcntl.LOCK_EX)
        out = subprocess.check_output(
            ["node", "-e", script], cwd=BROWSER_DIR, env={**os.environ, "TMPDIR": str(tmp)}, text=True, timeout=120
        )
    return out.strip().splitlines()[-1]


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A launched headless Chromium (a playwright ``Browser``), closed on exit."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class ConsoleLog:
    """Console messages and uncaught errors of one page."""

    errors: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> ConsoleLog:
        def on_console(msg: Any) -> None:
            self.messages.append(f"{msg.type}: {msg.text}")
            if msg.type in ("error", "assert"):
                self.errors.append(msg.text)

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        return self

    def unexpected(self, allowed_statuses: set[int]) -> list[str]:
        """Errors other than Chromium's "Failed to load resource: ... status of N" for an expected status N."""
        allowed = {f"the server responded with a status of {s} " for s in allowed_statuses}
        return [e for e in self.errors if not any(a in e for a in allowed)]


def axe_violations(page: Any, impacts: tuple[str, ...] = ("serious", "critical")) -> list[dict[str, Any]]:
    """Run axe-core in the page (injected over the DevTools protocol: the page's CSP admits no inline script).

    Returns the violations of the given impacts, each with its rule id, help text and offending nodes.
    """
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE_JS.read_text())
    result = page.evaluate(
        "async () => JSON.stringify((await axe.run(document, {resultTypes: ['violations']})).violations)"
    )
    return [
        {"id": v["id"], "impact": v["impact"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]]}
        for v in json.loads(result)
        if v["impact"] in impacts
    ]


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot of the current state under the artifacts directory."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


class PageSession:
    """One browser context (fresh sessionStorage) on the search page, with its console and requests recorded.

    ``close()`` fails the test on a console error it did not allow (uncaught exceptions and CSP violations
    included), on a request to another origin and on the API key appearing in any URL.
    """

    def __init__(self, browser: Any, url: str, key: str | None) -> None:
        self.url = url
        self.key = key
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.console = ConsoleLog().attach(self.page)
        self.requests: list[Any] = []
        self.page.on("request", lambda r: self.requests.append(r))
        self.allowed: set[int] = set()  # HTTP statuses a test provokes on purpose (Chromium logs them as errors)

    def open(self, enter_key: bool = True) -> Any:
        """Load the page; with keys on, answer its key prompt. Returns the playwright ``Page``."""
        from playwright.sync_api import expect

        self.page.goto(self.url + "/")
        if self.key is not None and enter_key:
            expect(self.page.locator("#key-dialog")).to_be_visible()
            self.page.fill("#key-input", self.key)
            self.page.press("#key-input", "Enter")
        if self.key is None or enter_key:
            expect(self.page.locator("body")).to_have_attribute("data-ready", "true")
        return self.page

    def search(self, text: str | None = None) -> Any:
        """Submit the form (typing ``text`` first) and wait until this search has finished."""
        from playwright.sync_api import expect

        page = self.page
        before = page.locator("#results").get_attribute("data-searches") or "0"
        if text is not None:
            page.fill("#q", text)
        page.click("#search-button")
        expect(page.locator("#results")).to_have_attribute("data-searches", str(int(before) + 1))
        return page

    def cards(self) -> list[str]:
        """The ids of the result cards, in order."""
        return [c.get_attribute("data-id") or "" for c in self.page.locator("#grid .card").all()]

    def last_search(self) -> Any:
        return [r for r in self.requests if r.url.endswith("/search") and r.method == "POST"][-1]

    def last_search_body(self) -> dict[str, Any]:
        return dict(json.loads(self.last_search().post_data))

    def last_search_response(self) -> dict[str, Any]:
        """The JSON the page got for its last search (as the browser received it)."""
        return dict(self.last_search().response().json())

    def check(self, state: str) -> None:
        """Screenshot this state and assert axe finds no serious or critical violation in it."""
        screenshot(self.page, state)
        assert axe_violations(self.page) == [], state

    def close(self) -> None:
        try:
            assert self.console.unexpected(self.allowed) == [], self.console.messages
            for r in self.requests:
                # nothing from another origin (the internet); blob: URLs of this origin are minted by the page itself
                assert r.url.startswith((self.url + "/", f"blob:{self.url}/")), r.url
                assert not self.key or self.key not in r.url, r.url  # the key travels in a header only
        finally:
            self.context.close()
