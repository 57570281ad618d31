"""The search page without a browser: its pure JS logic (node's test runner) and the ASGI app serving it."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from starlette.testclient import TestClient

from bench.support.servers import REPO
from service import page


def test_page_logic_node_unit_tests() -> None:
    """tests/page_js/*.test.mjs against service/static/model.mjs (request building, filters, errors, evidence)."""
    node = shutil.which("node")
    assert node, "node is needed for the page's unit tests (and the browser tests)"
    out = subprocess.run(
        [node, "--test", "--test-reporter=tap", "tests/page_js/"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    passed = int(re.search(r"^# pass (\d+)$", out.stdout, re.M).group(1))  # type: ignore[union-attr]
    assert passed >= 10 and "# fail 0" in out.stdout


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(page.page_app)


def test_page_and_assets_carry_the_csp(client: TestClient) -> None:
    index = client.get("/")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    assert index.headers["content-security-policy"].startswith("default-src 'self';")
    assert "unsafe" not in index.headers["content-security-policy"]
    assert index.headers["x-content-type-options"] == "nosniff"
    for name, media_type in (
        ("app.mjs", "text/javascript"),
        ("style.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ):
        r = client.get(f"/ui/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith(media_type)
        assert r.headers["content-security-policy"] == page.CSP


def test_only_listed_assets_are_served(client: TestClient) -> None:
    """The asset route serves the files of service/static by name: no paths, no traversal, no other files."""
    for path in ("/ui/../page.py", "/ui/..%2Fpage.py", "/ui/%2e%2e/config.py", "/ui/nope.js", "/ui/", "/ui/static"):
        assert client.get(path).status_code == 404, path
    assert set(page.ASSETS) >= {"index.html", "app.mjs", "model.mjs", "style.css"}
    assert all(p.parent == page.STATIC for p in page.ASSETS.values())


def test_no_inline_script_or_style_in_the_html() -> None:
    """The CSP forbids inline code: the page must not depend on any (the browser tests also watch the console)."""
    html = (page.STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>"
    assert "<style" not in html and " style=" not in html and re.search(r"\son[a-z]+=", html) is None
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert src.startswith(("/ui/", "#")), f"{src}: the page loads only its own assets"
    for js in page.STATIC.glob("*.mjs"):
        text = js.read_text()
        assert "innerHTML" not in text and "eval(" not in text and "new Function" not in text, js.name
        assert 'setAttribute("style"' not in text and "localStorage" not in text, js.name


def test_public_requests() -> None:
    """Only GETs of the page and its assets skip the API key; every API and /media still need it."""
    assert (
        page.is_public("GET", "/")
        and page.is_public("HEAD", "/ui/app.mjs")
        and page.is_public("GET", "/ui/config.json")
    )
    for method, path in (("POST", "/"), ("POST", "/ui/app.mjs"), ("GET", "/media/x.png"), ("POST", "/search"),
                         ("GET", "/docs.json"), ("GET", "/uix"), ("GET", "//ui/app.mjs")):  # fmt: skip
        assert not page.is_public(method, path), (method, path)
