"""The search page in a real headless Chromium against a real Search bento (API keys on) on loopback.

Every test drives the page as a person would (typing, clicking, keyboard, file pickers, paste and drop events),
fails on any console error it did not expect (CSP violations and uncaught exceptions included), runs axe-core on
the states it reaches, and saves a screenshot of each under test-artifacts/page/.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mmsearch_client.inputs import content_id

from bench.support.browser import PageSession
from bench.support.images import data_uri, make_image, overlap, png_bytes, text_image
from bench.support.servers import BentoServer
from tests.conftest import serve_wired_search

pytest.importorskip("playwright")  # the test extra pins it; this only names the problem on a bare venv
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e
KEY = "page-test-key-7f3a9c"
AUTH = {"Authorization": f"Bearer {KEY}"}
IMAGES = 6
TEXTS = {
    "q3": ("Q3 revenue dashboard for the finance team", {"year": 2026, "team": "finance"}),
    "roadmap": ("Product roadmap slide", {"year": 2025, "team": "product"}),
    "login": ("Login page with an error banner", {"year": 2026, "team": "web"}),
    "receipt": ("Receipt from the hardware store", {"year": 2024, "team": "finance"}),
}


# A file pasted or dropped onto an element: the events a person's paste or drag-and-drop fires (synthesised).
DISPATCH_FILE = """([b64, name, kind, target]) => {
    const dt = new DataTransfer();
    dt.items.add(new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], name, {type: 'image/png'}));
    const init = {bubbles: true, cancelable: true};
    const event = kind === 'paste'
        ? new ClipboardEvent('paste', {...init, clipboardData: dt})
        : new DragEvent('drop', {...init, dataTransfer: dt});
    document.getElementById(target).dispatchEvent(event);
}"""


def image_meta(i: int) -> dict[str, Any]:
    return {"year": 2024 + i % 3, "team": "finance" if i % 2 else "design", "kind": "image"}


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory, model_urls: dict[str, str]) -> Iterator[BentoServer]:
    """Search with API keys on, wired to the session's model services by URL (the page talks to Search only)."""
    yield from serve_wired_search(tmp_path_factory.mktemp("page"), model_urls, MMSEARCH_API_KEYS=KEY)


@pytest.fixture(scope="module")
def corpus(search: BentoServer) -> dict[str, str]:
    """Images img0..img5 (stored inline: media:// refs) and text documents, with metadata; returns id -> image ref."""
    docs: list[dict[str, Any]] = [
        {"id": f"img{i}", "image": data_uri(make_image(i)), "metadata": image_meta(i)} for i in range(IMAGES)
    ]
    docs += [{"id": k, "text": t, "metadata": m} for k, (t, m) in TEXTS.items()]
    r = httpx.post(f"{search.url}/upsert", json={"documents": docs}, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    got = httpx.post(
        f"{search.url}/get", json={"ids": [f"img{i}" for i in range(IMAGES)]}, headers=AUTH, timeout=30
    ).json()
    return {d["id"]: d["image"] for d in got["documents"]}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("page-files")
    for i in range(IMAGES):
        (root / f"img{i}.png").write_bytes(png_bytes(make_image(i)))
    (root / "broken.png").write_bytes(b"this is not an image at all")
    return root


@pytest.fixture
def session(browser: Any, search: BentoServer, corpus: dict[str, str]) -> Iterator[PageSession]:
    s = PageSession(browser, search.url, KEY)
    try:
        yield s
    finally:
        s.close()


# ------------------------------------------------------------------------------------------------ serving


def test_page_is_public_but_data_needs_the_key(search: BentoServer, corpus: dict[str, str]) -> None:
    page = httpx.get(f"{search.url}/", timeout=10)
    assert page.status_code == 200 and "<title>mmsearch</title>" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self';")
    assert httpx.get(f"{search.url}/ui/app.mjs", timeout=10).status_code == 200
    assert httpx.get(f"{search.url}/ui/config.json", timeout=10).json() == {"auth_required": True}
    media = "/media/" + corpus["img0"].removeprefix("media://")
    assert httpx.get(search.url + media, timeout=10).status_code == 401
    assert httpx.get(search.url + media, headers=AUTH, timeout=10).content == png_bytes(make_image(0))
    assert httpx.post(f"{search.url}/search", json={"query": "x"}, timeout=10).status_code == 401
    assert httpx.post(f"{search.url}/", json={}, timeout=10).status_code in (401, 405)


# ------------------------------------------------------------------------------------------------ API key


def test_key_prompt_asks_once_and_keeps_the_key_in_session_storage(session: PageSession) -> None:
    session.allowed.add(401)  # the wrong key below
    page = session.open(enter_key=False)
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#key-input")).to_be_focused()
    page.keyboard.press("Escape")  # nothing works without a key: the prompt stays
    expect(dialog).to_be_visible()
    session.check("key-prompt")

    page.fill("#key-input", "not-the-key")
    page.keyboard.press("Enter")
    expect(page.locator("#key-error")).to_contain_text("refused")
    expect(page.locator("#key-input")).to_have_attribute("aria-invalid", "true")
    session.check("key-refused")

    page.fill("#key-input", KEY)
    page.keyboard.press("Enter")
    expect(dialog).to_be_hidden()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(page.locator("#collection option[value=default]")).to_have_text(f"default ({IMAGES + len(TEXTS)})")
    assert page.evaluate("sessionStorage.getItem('mmsearch.apiKey')") == KEY
    assert page.evaluate("localStorage.length") == 0 and KEY not in page.url

    session.search("revenue")  # later requests carry the key without asking again
    expect(dialog).to_be_hidden()
    api_calls = [r for r in session.requests if r.method == "POST"]
    assert api_calls and all(r.headers.get("authorization") == f"Bearer {KEY}" for r in api_calls[1:])
    page.reload()  # same tab: the key is still there, no prompt
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    expect(dialog).to_be_hidden()


# ------------------------------------------------------------------------------------------------ search


def test_search_by_text_shows_a_result_grid(session: PageSession, corpus: dict[str, str]) -> None:
    page = session.open()
    session.check("initial")
    page.fill("#top-k", "10")
    session.search("revenue dashboard")
    cards = session.cards()
    assert len(cards) == 10 and set(cards) <= {*corpus, *TEXTS}
    assert session.last_search_body() == {
        "collection": "default",
        "query": {"text": "revenue dashboard"},
        "top_k": 10,
        "candidates": 50,
        "rerank": "auto",
    }
    expect(page.locator("#status")).to_contain_text("10 results · reranked")
    q3 = page.locator('.card[data-id="q3"]')
    expect(q3.locator(".snippet")).to_have_text(TEXTS["q3"][0])
    expect(q3.locator(".scores")).to_contain_text("retrieval")
    expect(q3.locator(".scores")).to_contain_text("rerank")
    expect(q3.locator(".meta")).to_contain_text("finance")
    # Image cards: the stored image was fetched with the key (a 401 would be a console error) and drawn.
    images = page.locator(".card .thumb.loaded canvas")
    expect(images).to_have_count(sum(1 for c in cards if c.startswith("img")))
    assert images.first.evaluate("c => [c.width, c.height]") == [64, 48]
    render = page.evaluate("performance.getEntriesByName('mm:render', 'measure').map(m => m.duration)")
    assert len(render) == 1 and render[0] >= 0  # measured in the page; the number itself is bench/page.py's
    session.check("results")


def test_search_by_uploaded_pasted_and_dropped_image(session: PageSession, files: Path) -> None:
    page = session.open()
    page.uncheck("#rerank")  # retrieval order: the same image is its own nearest neighbour
    page.set_input_files("#image-file", str(files / "img3.png"))
    expect(page.locator("#image-preview")).to_be_visible()
    session.search()
    assert session.cards()[0] == "img3"
    expect(page.locator(".card").first.locator(".scores")).to_contain_text("1.000")
    assert session.last_search_body()["query"] == {"image": data_uri(make_image(3))}
    assert session.last_search_body()["rerank"] is False
    session.check("image-query")

    for i, event in ((4, "paste"), (5, "drop")):
        b64 = base64.b64encode(png_bytes(make_image(i))).decode()
        page.evaluate(DISPATCH_FILE, [b64, f"img{i}.png", event, "q" if event == "paste" else "search-form"])
        expect(page.locator("#image-preview-name")).to_have_text(f"img{i}.png")
        session.search()
        assert session.cards()[0] == f"img{i}", event


def test_search_with_filter_rows(session: PageSession) -> None:
    page = session.open()
    page.click("#add-filter")
    expect(page.locator("#filter-key-0")).to_be_focused()
    page.fill("#filter-key-0", "year")
    page.select_option("#filter-op-0", "$gte")
    page.fill("#filter-value-0", "2026")
    page.click("#add-filter")
    page.fill("#filter-key-1", "team")
    page.fill("#filter-value-1", "finance")
    session.search("report")
    assert session.last_search_body()["filter"] == {"year": {"$gte": 2026}, "team": "finance"}
    expected = {"q3", *(f"img{i}" for i in range(IMAGES) if image_meta(i)["year"] >= 2026 and i % 2)}
    assert set(session.cards()) == expected
    for card in page.locator(".card").all():
        expect(card.locator(".meta")).to_contain_text("2026")
    session.check("filter")

    # A bad row is refused in the page, naming the row; nothing is sent.
    sent = len(session.requests)
    page.fill("#filter-value-0", "recent")
    page.click("#search-button")
    expect(page.locator("#error")).to_contain_text("filter row 1: '≥' needs a number")
    expect(page.locator("#filter-value-0")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#filter-value-0")).to_be_focused()
    assert len(session.requests) == sent


def test_server_error_is_shown_readably(session: PageSession, files: Path) -> None:
    page = session.open()
    page.set_input_files("#image-file", str(files / "broken.png"))
    session.search()
    body = httpx.post(
        f"{session.url}/search",
        json=session.last_search_body(),
        headers=AUTH,
        timeout=30,
    )
    assert 400 <= body.status_code < 500
    err = body.json()
    session.allowed.add(body.status_code)
    alert = page.locator("#error[role=alert]")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text(str(body.status_code))
    expect(alert).to_contain_text(err["code"])
    expect(alert).to_contain_text(err["error"])
    expect(alert.locator("code")).to_have_text(err["field"])
    expect(page.locator("#grid .card")).to_have_count(0)
    session.check("error")

    # top_k above the API's limit: refused by the page itself, readably, before any request.
    page.fill("#top-k", "5000")
    page.click("#image-clear")
    page.fill("#q", "x")
    page.click("#search-button")
    expect(alert).to_contain_text("Results: a whole number from 1 to 1000")
    expect(page.locator("#top-k")).to_be_focused()


# ------------------------------------------------------------------------------------------------ detail, keyboard


def test_detail_view_and_more_like_this_by_keyboard(session: PageSession) -> None:
    page = session.open()
    page.uncheck("#rerank")
    page.fill("#top-k", "20")
    session.search("picture")
    target = session.cards().index("img2")
    title = page.locator("#grid .card .open").nth(target)
    title.focus()
    page.keyboard.press("Enter")
    dialog = page.locator("#detail")
    expect(dialog).to_be_visible()
    expect(page.locator("#detail-title")).to_have_text("img2")
    expect(page.locator("#detail-caption")).to_have_text("64 \u00d7 48 px")  # the full image, fetched with the key
    expect(page.locator("#detail-meta")).to_contain_text("design")
    session.check("detail")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(title).to_be_focused()  # focus goes back where it was

    page.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    page.click("#detail-more")
    expect(dialog).to_be_hidden()
    expect(page.locator("#image-preview-name")).to_have_text("like img2")
    expect(page.locator("#results")).to_have_attribute("data-searches", "2")
    assert session.cards()[0] == "img2"
    assert session.last_search_body()["query"] == {"image": data_uri(make_image(2))}
    session.check("more-like-this")

    # The card's own "More like this" button does the same without opening the detail view.
    page.get_by_role("button", name="More like this: img4").click()
    expect(page.locator("#results")).to_have_attribute("data-searches", "3")
    expect(page.locator("#image-preview-name")).to_have_text("like img4")
    assert session.cards()[0] == "img4"
    assert session.last_search_body()["query"] == {"image": data_uri(make_image(4))}


def test_focus_order_follows_the_form(session: PageSession) -> None:
    page = session.open()
    page.locator("body").focus()
    order = []
    for _ in range(9):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.className"))
    assert order == [
        "skip-link",
        "change-key",
        "q",
        "image-file",
        "search-button",
        "collection",
        "mode",
        "top-k",
        "rerank",
    ]
    for expected in ("add-filter", "ingest-collection", "ingest-files", "ingest-folder"):
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == expected
    # The folder picker's input is visually hidden: its label (the visible button) shows the focus.
    outline = page.locator("label[for=ingest-folder]").evaluate("e => getComputedStyle(e).outlineStyle")
    assert outline == "solid"
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("/")  # from anywhere outside a field, "/" jumps to the query box
    expect(page.locator("#q")).to_be_focused()


# ------------------------------------------------------------------------------------------------ ingest


def test_ingest_a_folder_with_progress_and_per_file_errors(
    session: PageSession, search: BentoServer, tmp_path: Path
) -> None:
    folder = tmp_path / "shots"
    (folder / "nested").mkdir(parents=True)
    one, two = png_bytes(make_image(101)), png_bytes(make_image(102))
    (folder / "one.png").write_bytes(one)
    (folder / "nested" / "two.png").write_bytes(two)
    (folder / "notes.md").write_text("Meeting notes about the revenue dashboard")
    (folder / "bad.png").write_bytes(b"\x89PNG but not really")
    (folder / "report.pdf").write_bytes(b"%PDF-1.4")
    (folder / ".hidden.png").write_bytes(one)
    page = session.open()
    session.allowed.update(range(400, 500))  # bad.png's refusal (the code is the server's)
    page.fill("#ingest-collection", "dropped")
    page.set_input_files("#ingest-folder", str(folder))
    status = page.locator("#ingest-status")
    expect(status).to_contain_text("5 of 5 files into dropped: 3 added, 1 skipped, 2 failed. Done.", timeout=60_000)
    expect(page.locator("#ingest-bar")).to_have_attribute("value", "5")
    errors = page.locator("#ingest-errors li")
    expect(errors).to_have_count(2)
    expect(errors.filter(has_text="shots/bad.png")).to_contain_text("422 Unprocessable (not_an_image)")
    expect(errors.filter(has_text="shots/report.pdf")).to_contain_text("not an image")
    session.check("ingest")
    ids = [content_id(one), content_id(two), content_id("Meeting notes about the revenue dashboard")]
    got = httpx.post(f"{search.url}/get", json={"collection": "dropped", "ids": ids}, headers=AUTH, timeout=30).json()[
        "documents"
    ]
    assert [d["id"] for d in got] == ids  # the same ids `mmsearch index` gives these files
    assert got[1]["metadata"] == {"path": "shots/nested/two.png", "filename": "two.png"}
    expect(page.locator("#collection option[value=dropped]")).to_have_text("dropped (3)")

    # Dropping files onto the zone works the same way.
    b64 = base64.b64encode(png_bytes(make_image(103))).decode()
    page.evaluate(DISPATCH_FILE, [b64, "three.png", "drop", "ingest-drop"])
    expect(status).to_contain_text("1 of 1 file into dropped: 1 added. Done.")
    expect(page.locator("#collection option[value=dropped]")).to_have_text("dropped (4)")

    # The collection picker: a search in the new collection finds exactly what was added to it.
    page.select_option("#collection", "dropped")
    session.search("revenue dashboard")
    assert session.last_search_body()["collection"] == "dropped"
    assert set(session.cards()) == {*ids, content_id(png_bytes(make_image(103)))}


# ------------------------------------------------------------------------------------------------ evidence (OCR on)

# Text drawn into images (Pillow's bundled font): the real Reader (RapidOCR) reads them at ingest, and a keyword
# search for "Lisbon" returns the lines it matched with their boxes in the image's pixels.
INVOICE = [("Invoice total 418.20 EUR", (20, 30)), ("Shipping address Lisbon", (60, 100))]
DASHBOARD = [
    ("Revenue by office", (40, 30)),
    ("Lisbon 12,400", (60, 110)),
    ("Porto 8,100", (60, 170)),
    ("Refund rate 2.4%", (330, 250)),
]
BOXED = {"invoice": (INVOICE, (480, 160)), "dashboard": (DASHBOARD, (640, 320))}
TRAVEL = "Travel policy for the Lisbon office"


@pytest.fixture(scope="module")
def ocr_search(tmp_path_factory: pytest.TempPathFactory, model_urls: dict[str, str]) -> Iterator[BentoServer]:
    """A Search reading image documents with the session's real Reader, API keys off. Its reranker budget is 1 µs,
    so a ``rerank: "auto"`` search answers in retrieval order with a real ``warnings`` entry saying why."""
    yield from serve_wired_search(
        tmp_path_factory.mktemp("page-ocr"),
        model_urls,
        MMSEARCH_OCR="on",
        MMSEARCH_RERANK_TIMEOUT_S="1e-6",
    )


@pytest.fixture(scope="module")
def ocr_corpus(ocr_search: BentoServer) -> dict[str, dict[str, tuple[float, float, float, float]]]:
    """Two screenshots with text, a plain image and a text document; returns each screenshot's drawn word boxes."""
    words = {}
    docs: list[dict[str, Any]] = [{"id": "plain", "image": data_uri(make_image(7))}, {"id": "travel", "text": TRAVEL}]
    for doc_id, (lines, size) in BOXED.items():
        img, words[doc_id] = text_image(lines, size=size)
        docs.append({"id": doc_id, "image": data_uri(img), "metadata": {"kind": "screenshot"}})
    r = httpx.post(f"{ocr_search.url}/upsert", json={"documents": docs}, timeout=300)
    assert r.status_code == 200, r.text
    return words


@pytest.fixture
def ocr_session(browser: Any, ocr_search: BentoServer, ocr_corpus: object) -> Iterator[PageSession]:
    s = PageSession(browser, ocr_search.url, None)
    try:
        yield s
    finally:
        s.close()


# Where each evidence box is on screen, relative to the image it is drawn over, and that image's natural size.
BOX_GEOMETRY = """frame => {
    const canvas = frame.querySelector('canvas');
    const c = canvas.getBoundingClientRect();
    return {
        natural: [canvas.width, canvas.height],
        shown: [c.width, c.height],
        boxes: [...frame.querySelectorAll('.evidence-box')].map(b => {
            const r = b.getBoundingClientRect();
            return {text: b.title, rect: [r.left - c.left, r.top - c.top, r.right - c.left, r.bottom - c.top]};
        }),
    };
}"""


def assert_boxes_on_the_image(frame: Any, hit: dict[str, Any], words: dict[str, Any], word: str) -> float:
    """The boxes drawn over ``frame`` are the hit's evidence boxes scaled to the displayed image (within a pixel),
    and one of them covers where ``word`` was drawn. Returns the scale."""
    g = frame.evaluate(BOX_GEOMETRY)
    (nw, nh), (sw, sh) = g["natural"], g["shown"]
    scale = sw / nw
    assert sh / nh == pytest.approx(scale, rel=0.01)  # the image is shown whole, its aspect ratio kept
    expected = [e for e in hit["evidence"] if e.get("box")]
    assert expected and [b["text"] for b in g["boxes"]] == [e["text"] for e in expected]
    for drawn, ev in zip(g["boxes"], expected, strict=True):
        x0, y0, x1, y1 = ev["box"]
        want = [max(0, x0) * scale, max(0, y0) * scale, min(nw, x1) * scale, min(nh, y1) * scale]
        assert drawn["rect"] == pytest.approx(want, abs=1.0), (ev, drawn, scale)
    on_screen = tuple(v * scale for v in words[word])
    assert max(overlap(tuple(b["rect"]), on_screen) for b in g["boxes"]) > 0.9, (word, g["boxes"], on_screen)
    return scale


def test_evidence_boxes_are_drawn_where_the_query_matched(ocr_session: PageSession, ocr_corpus: dict) -> None:
    page = ocr_session.open()
    expect(page.locator("#key-dialog")).to_be_hidden()  # keys off: no prompt
    page.select_option("#mode", "keyword")
    page.uncheck("#rerank")
    ocr_session.search("Lisbon")
    assert ocr_session.last_search_body()["mode"] == "keyword"
    body = ocr_session.last_search_response()
    assert body["mode"] == "keyword"
    hits = {h["id"]: h for h in body["hits"]}
    assert set(ocr_session.cards()) == {"invoice", "dashboard", "travel"}
    for doc_id in BOXED:
        assert any("Lisbon" in e["text"] and e["source"] == "ocr" for e in hits[doc_id]["evidence"]), hits[doc_id]
    assert hits["travel"]["evidence"] == [{"source": "text", "text": TRAVEL, "box": None}]

    for doc_id in BOXED:
        card = page.locator(f'.card[data-id="{doc_id}"]')
        frame = card.locator(".thumb.loaded")
        expect(frame).to_have_count(1)
        assert assert_boxes_on_the_image(frame, hits[doc_id], ocr_corpus[doc_id], "Lisbon") < 1  # a scaled-down card
        expect(card.locator(".evidence mark").first).to_contain_text("Lisbon")
        expect(card.locator(".evidence .source").first).to_have_text("in image")
    travel = page.locator('.card[data-id="travel"]')
    expect(travel.locator(".evidence-box")).to_have_count(0)
    expect(travel.locator(".evidence .source")).to_have_text("in text")
    expect(page.locator("#warnings")).to_be_hidden()
    ocr_session.check("evidence")

    # The detail view: the full image, larger, with the same boxes in the same places.
    page.locator('.card[data-id="dashboard"] .open').click()
    expect(page.locator("#detail-caption")).to_have_text("640 \u00d7 320 px")
    full = page.locator("#detail .thumb.full")
    scale = assert_boxes_on_the_image(full, hits["dashboard"], ocr_corpus["dashboard"], "Lisbon")
    assert scale > 0.9  # shown (nearly) at its own size
    expect(page.locator("#detail-evidence mark").first).to_contain_text("Lisbon")
    ocr_session.check("evidence-detail")


def test_warnings_from_the_server_are_shown(ocr_session: PageSession) -> None:
    page = ocr_session.open()
    page.select_option("#mode", "keyword")
    page.check("#rerank")  # "auto": the reranker misses its 1 µs budget, the hits come back in retrieval order
    ocr_session.search("Lisbon")
    body = ocr_session.last_search_response()
    assert body["reranked"] is False and body["warnings"], body
    panel = page.locator("#warnings")
    expect(panel).to_be_visible()
    items = panel.locator("li")
    expect(items).to_have_text([f"{w['code']}: {w['message']}" for w in body["warnings"]])
    expect(page.locator("#status")).to_contain_text("not reranked")
    assert set(ocr_session.cards()) == {"invoice", "dashboard", "travel"}
    ocr_session.check("warnings")


# ------------------------------------------------------------------------------------------------ thumbnails


def test_cards_show_the_thumbnail_when_a_hit_has_one(session: PageSession, search: BentoServer, files: Path) -> None:
    """Hits may carry ``thumbnail`` (a /media/ path to a small copy): the card shows it, the detail view the full
    image. Here the real /search response gets a ``thumbnail`` and a per-hit warning added on its way to the page
    (playwright's route), as the media work adds them to the server; the other hits' ``thumbnail`` is removed so the
    fallback is tested whatever the server sends. Every other field is the server's."""
    small = data_uri(make_image(60, (32, 24)))
    doc = {"collection": "thumbs", "documents": [{"id": "thumb-src", "image": small}]}
    r = httpx.post(f"{search.url}/upsert", json=doc, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    got = httpx.post(f"{search.url}/get", json={"collection": "thumbs", "ids": ["thumb-src"]}, headers=AUTH, timeout=30)
    ref = got.json()["documents"][0]["image"]
    thumb = "/media/" + ref.removeprefix("media://")

    def add_fields(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        for hit in body["hits"]:
            if hit["id"] == "img1":
                hit["thumbnail"] = thumb
            else:  # the fallback, also once the server sends thumbnails
                hit.pop("thumbnail", None)
        body["warnings"] = [*body.get("warnings", []), {"id": "img1", "code": "media_slow", "message": "slow"}]
        route.fulfill(response=response, json=body)

    page = session.open()
    page.route("**/search", add_fields)
    page.uncheck("#rerank")
    page.set_input_files("#image-file", str(files / "img1.png"))
    session.search()
    img1 = page.locator('.card[data-id="img1"]')
    expect(img1.locator(".thumb.loaded")).to_have_count(1)
    assert img1.locator("canvas").evaluate("c => [c.width, c.height]") == [32, 24]  # the thumbnail
    # img2's image loads on its own: its canvas keeps the default 300 x 150 until drawn (a clean-clone CI run
    # measured it before then)
    expect(page.locator('.card[data-id="img2"] .thumb.loaded')).to_have_count(1)
    other = page.locator('.card[data-id="img2"] canvas')
    assert other.evaluate("c => [c.width, c.height]") == [64, 48]  # no thumbnail: the image itself
    fetched = {r.url.removeprefix(search.url) for r in session.requests if "/media/" in r.url}
    assert thumb in fetched
    expect(img1.locator(".card-warnings")).to_have_text("media_slow: slow")
    expect(page.locator("#warning-list")).to_contain_text("img1: media_slow: slow")
    session.check("thumbnail")
    img1.locator(".open").click()
    expect(page.locator("#detail-caption")).to_have_text("64 \u00d7 48 px")  # the detail view: the full image
    expect(page.locator("#detail-warnings")).to_have_text("media_slow: slow")
