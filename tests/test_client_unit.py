"""Unit tests of the client that need no server: input conversion, error parsing, retries, decoding, packaging.

``httpx.MockTransport`` stands in for the server only to feed the parsing and retry layers canned answers; the
end-to-end tests provoke the real errors from the real services.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from mmsearch_client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ConflictError,
    Document,
    GatewayTimeoutError,
    Image,
    InternalServerError,
    Item,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    RequestTimeoutError,
    ServiceUnavailableError,
    UpsertResponse,
    pair,
)
from mmsearch_client._base import BaseClient, upsert_batch_plan
from mmsearch_client.cli import main as cli_main
from mmsearch_client.cli import scan
from mmsearch_client.errors import MMSearchError, field_to_loc, loc_to_field, parse_error_body, parse_retry_after
from mmsearch_client.inputs import detect_image_mime, item_to_json, to_items, to_wire_document, to_wire_image
from mmsearch_client.results import decode_embedding
from mmsearch_client.schemas import EncodeRequest
from PIL import Image as PILImage

CLIENT_DIR = Path(__file__).resolve().parents[1] / "clients" / "python"
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schema"

PNG_1x1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def _image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (4, 3), (200, 10, 10)).save(buf, format=fmt)
    return buf.getvalue()


def _decode_data_uri(uri: str) -> tuple[str, bytes]:
    head, payload = uri.split(",", 1)
    assert head.startswith("data:") and head.endswith(";base64")
    return head[5 : -len(";base64")], base64.b64decode(payload)


# --------------------------------------------------------------------------------------------------- inputs
def test_str_is_always_text_even_if_a_file_of_that_name_exists(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "cat.png").write_bytes(PNG_1x1)
    monkeypatch.chdir(tmp_path)
    assert to_items("cat.png") == ["cat.png"]
    assert to_items(["a red bicycle", "cat.png"]) == ["a red bicycle", "cat.png"]
    assert item_to_json("cat.png") == "cat.png"


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp"),
     ("BMP", "image/bmp"), ("TIFF", "image/tiff")],
)  # fmt: skip
def test_path_and_bytes_become_data_uris_with_the_sniffed_mime(tmp_path: Path, fmt: str, mime: str) -> None:
    data = _image_bytes(fmt)
    # a misleading extension: the format comes from the magic bytes
    path = tmp_path / "picture.bin"
    path.write_bytes(data)
    assert detect_image_mime(data) == mime
    for image in (Image.from_path(path), Image.from_bytes(data)):
        got_mime, payload = _decode_data_uri(image.uri)
        assert (got_mime, payload) == (mime, data)
    [item] = to_items([path])
    assert isinstance(item, Item) and item.text is None
    assert item.image is not None and _decode_data_uri(item.image) == (mime, data)


def test_unknown_bytes_and_raw_bytes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a recognised image"):
        Image.from_bytes(b"hello world, not an image")
    assert Image.from_bytes(b"\x00\x01", mime="image/png").uri == "data:image/png;base64,AAE="
    raw: Any = PNG_1x1  # deliberately mistyped
    with pytest.raises(TypeError, match=r"Image\.from_bytes"):
        to_items([raw])
    with pytest.raises(TypeError, match=r"Image\.from_bytes"):
        to_items(raw)
    (tmp_path / "notes.png").write_text("not really a png")
    with pytest.raises(ValueError, match=r"notes\.png"):
        Image.from_path(tmp_path / "notes.png")


def test_pil_image_is_sent_as_png() -> None:
    pil = PILImage.new("RGB", (5, 7), (1, 2, 3))
    for value in (pil, Image.from_pil(pil)):
        [item] = to_items([value])
        assert isinstance(item, Item) and item.image is not None
        mime, data = _decode_data_uri(item.image)
        assert mime == "image/png"
        back = PILImage.open(io.BytesIO(data))
        assert back.format == "PNG" and back.size == (5, 7) and back.getpixel((0, 0)) == (1, 2, 3)


def test_urls_pass_through_untouched() -> None:
    url = "https://example.com/a%20b.png?x=1"
    assert Image.url(url).uri == url
    assert to_items(Image.url(url)) == [Item(image=url)]
    assert to_wire_image(url) == url
    data_uri = "data:image/png;base64," + base64.b64encode(PNG_1x1).decode()
    assert to_wire_image(data_uri) == data_uri
    with pytest.raises(ValueError):
        Image.url("file:///etc/passwd")
    with pytest.raises(ValueError):
        Image.url("/local/path.png")


def test_pairs(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(PNG_1x1)
    item = pair("a caption", path)
    assert item.text == "a caption" and item.image is not None and item.image.startswith("data:image/png;base64,")
    assert pair("c", Image.url("http://h/i.jpg")) == Item(text="c", image="http://h/i.jpg")
    assert item_to_json(Item(text="t", image="http://h/i.jpg")) == {"text": "t", "image": "http://h/i.jpg"}
    with pytest.raises(ValueError, match="Path"):
        pair("caption", "x.png")  # a str image must be a URL: paths are explicit
    mixed = to_items(["t", Item(text="u"), pair("v", Image.url("https://h/i.png")), path])
    assert [item_to_json(i) if isinstance(i, str) else sorted(item_to_json(i)) for i in mixed] == [
        "t", ["text"], ["image", "text"], ["image"],
    ]  # fmt: skip


def test_audio_and_video_items() -> None:
    """``audio``/``video``: an http(s) URL or a data URI of their own kind, one medium per item, sent as given."""
    wav = "data:audio/wav;base64,UklGRg=="
    mp4 = "data:video/mp4;base64,AAAAGGZ0eXA="
    assert Item(audio=wav).modality == "audio" and Item(audio=wav).media == "audio"
    assert Item(text="a clip", video=mp4).modality == "text+video"
    assert Item(text="t", audio="https://h/a.flac").modality == "text+audio"
    assert Item(video="http://h/v.webm").modality == "video" and Item(text="t").media is None
    assert item_to_json(Item(text="t", video=mp4)) == {"text": "t", "video": mp4}
    assert to_items([{"audio": wav}]) == [Item(audio=wav)]
    sent: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json={"embeddings": [[1.0]], "model": "m", "dimensions": 1})

    with _client(handler) as client:
        client.encode([Item(audio=wav)])
    assert sent[0]["inputs"] == [{"audio": wav}]
    for bad, match in [
        ({"audio": "/etc/passwd"}, "audio must be an http"),
        ({"video": "file:///etc/passwd"}, "video must be an http"),
        ({"audio": mp4}, "data:audio/"),  # a video data URI given as audio
        ({"video": "data:video/mp4,notbase64"}, "base64"),
        ({"image": "https://h/i.png", "audio": wav}, "one medium"),
        ({"audio": wav, "video": mp4}, "one medium"),
        ({}, "'audio' or 'video'"),
    ]:
        with pytest.raises(ValueError, match=match):
            Item.model_validate(bad)
    req = EncodeRequest.model_validate({"inputs": ["x", {"video": "https://h/v.mp4"}]})
    assert [i if isinstance(i, str) else i.modality for i in req.inputs] == ["x", "video"]


def test_documents_convert_every_image_kind(tmp_path: Path) -> None:
    path = tmp_path / "p.jpg"
    path.write_bytes(_image_bytes("JPEG"))
    wire = to_wire_document(Document("d1", text="hello", image=path, metadata={"lang": "en", "n": 3}))
    assert wire["id"] == "d1" and wire["text"] == "hello" and wire["metadata"] == {"lang": "en", "n": 3}
    assert _decode_data_uri(wire["image"])[0] == "image/jpeg"
    assert "embedding" not in wire
    assert to_wire_document({"id": "d2", "image": Image.url("https://h/x.png")}) == {
        "id": "d2",
        "image": "https://h/x.png",
    }
    pil_doc = to_wire_document(Document("d3", image=PILImage.new("L", (2, 2))))
    assert pil_doc["image"].startswith("data:image/png;base64,")
    assert to_wire_document(Document("d4", embedding=[0.5, 0.5])) == {"id": "d4", "embedding": [0.5, 0.5]}


# ------------------------------------------------------------------------------------------- error parsing
Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler, **kw: Any) -> Client:
    kw.setdefault("max_retries", 0)
    return Client("http://mmsearch.test", http_client=httpx.Client(transport=httpx.MockTransport(handler)), **kw)


def _raise_for(status: int, body: Any, headers: dict[str, str] | None = None) -> APIStatusError:
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=content, headers=headers)

    with pytest.raises(APIStatusError) as info, _client(handler) as client:
        client.encode(["x"])
    return info.value


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, BadRequestError), (401, AuthenticationError), (403, AuthenticationError), (404, NotFoundError),
     (408, RequestTimeoutError), (409, ConflictError), (413, PayloadTooLargeError), (422, BadRequestError),
     (429, RateLimitError), (500, InternalServerError), (502, InternalServerError),
     (503, ServiceUnavailableError), (504, GatewayTimeoutError)],
)  # fmt: skip
def test_status_codes_map_to_exception_classes(status: int, cls: type[APIStatusError]) -> None:
    err = _raise_for(status, {"error": "boom", "code": "some_code", "field": None})
    assert type(err) is cls
    assert (err.status_code, err.message, err.code, err.field) == (status, "boom", "some_code", None)
    assert err.response is not None and err.response.status_code == status
    assert isinstance(err, TimeoutError) == (status in (408, 504))


def test_mmsearch_error_body_with_field() -> None:
    err = _raise_for(
        422, {"error": "inputs[3].image: not an image", "code": "not_an_image", "field": "inputs[3].image"}
    )
    assert isinstance(err, BadRequestError)
    assert (err.code, err.field) == ("not_an_image", "inputs[3].image")
    assert str(err) == "422 not_an_image: inputs[3].image: not an image"
    err = _raise_for(404, {"error": "no such collection", "code": "collection_not_found", "field": "collection"})
    assert str(err) == "404 collection_not_found at collection: no such collection"


def test_bentoml_validation_error_builds_the_field_path_from_loc() -> None:
    body = {
        "error": "2 validation errors for EncodeRequest",
        "detail": [
            {"type": "value_error", "loc": ["inputs", 3, "Item", "image"], "msg": "Input should be a string"},
            {"type": "string_type", "loc": ["inputs", 3, "str"], "msg": "Input should be a valid string"},
        ],
    }
    err = _raise_for(400, body)
    assert isinstance(err, BadRequestError)
    assert err.field == "inputs[3].image"
    assert err.code == "validation_error"
    assert "Input should be a string" in err.message and "+1 more" in err.message
    assert loc_to_field(["body", "documents", 0, "metadata"]) == "documents[0].metadata"
    assert loc_to_field(["query", "function-after[_not_empty(), Item]"]) == "query"
    assert loc_to_field([]) is None and loc_to_field("nope") is None


def test_bentoml_list_body_plain_text_and_odd_shapes() -> None:
    err = _raise_for(500, [{"error": "An unexpected error has occurred, please check the server log."}])
    assert isinstance(err, InternalServerError) and err.message.startswith("An unexpected error")
    assert err.code == "internal_error"
    err = _raise_for(503, "Runners are not ready.")
    assert isinstance(err, ServiceUnavailableError) and err.message == "Runners are not ready."
    err = _raise_for(404, "")
    assert isinstance(err, NotFoundError) and err.message == "Not Found" and err.code == "not_found"
    err = _raise_for(400, "BentoService error handling API request: bad")  # a bare JSON string
    assert err.message == "BentoService error handling API request: bad"
    # a wrapped body is the server's to flatten (service.errors.parse_error at its edge): the client reads one shape
    assert field_to_loc("documents[3].image") == ("documents", 3, "image")
    assert field_to_loc("query") == ("query",) and field_to_loc("a[x]") == ("a[x]",)
    assert loc_to_field(list(field_to_loc("image[2].text"))) == "image[2].text"
    assert parse_error_body({"detail": "Not authenticated"}) == ("Not authenticated", None, None)
    assert parse_error_body(None) == (None, None, None)
    assert parse_error_body([1, 2]) == (None, None, None)


def test_retry_after_header_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") == 0.0
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    got = parse_retry_after(date, now=now)
    assert got is not None and 28 <= got <= 31
    err = _raise_for(429, {"error": "slow down", "code": "overloaded"}, headers={"Retry-After": "7"})
    assert isinstance(err, RateLimitError) and err.retry_after == 7.0


# ------------------------------------------------------------------------------------------------- retries
class _Flaky:
    """Answers ``failures`` times with ``status`` (or raises ``exc``), then with a valid encode answer."""

    def __init__(self, failures: int, status: int = 503, retry_after: str | None = "0.01", exc: Any = None):
        self.failures, self.status, self.retry_after, self.exc = failures, status, retry_after, exc
        self.attempts = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.attempts <= self.failures:
            if self.exc is not None:
                raise self.exc("simulated", request=request)
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return httpx.Response(self.status, json={"error": "busy", "code": "overloaded"}, headers=headers)
        return httpx.Response(200, json={"embeddings": [[1.0, 0.0]], "model": "m", "dimensions": 2})


def _recording(client: Any) -> list[float]:
    """Replace the client's sleep by a recorder of the delays it was asked to wait."""
    sleeps: list[float] = []
    client._sleep = sleeps.append
    return sleeps


def test_503_is_retried_honouring_retry_after() -> None:
    flaky = _Flaky(failures=2, retry_after="0.01")
    with _client(flaky, max_retries=2) as client:
        sleeps = _recording(client)
        res = client.encode(["x"])
    assert res.embeddings == [[1.0, 0.0]]
    assert flaky.attempts == 3
    assert sleeps == [0.01, 0.01]


def test_retries_give_up_after_max_retries_and_raise_the_last_error() -> None:
    flaky = _Flaky(failures=10, status=429, retry_after="2")
    with _client(flaky, max_retries=3) as client:
        sleeps = _recording(client)
        with pytest.raises(RateLimitError) as info:
            client.encode(["x"])
    assert flaky.attempts == 4 and sleeps == [2.0, 2.0, 2.0]
    assert info.value.retry_after == 2.0


def test_backoff_without_retry_after_grows_with_jitter_and_is_capped() -> None:
    flaky = _Flaky(failures=4, retry_after=None)
    with _client(flaky, max_retries=4) as client:
        sleeps = _recording(client)
        client.encode(["x"])
    assert len(sleeps) == 4
    for attempt, delay in enumerate(sleeps):
        nominal = min(0.5 * 2**attempt, 8.0)
        assert 0.75 * nominal <= delay <= nominal
    assert BaseClient._retry_delay(20) <= 8.0
    # an absurd Retry-After is not honoured: backoff instead
    assert BaseClient._retry_delay(0, httpx.Response(503, headers={"Retry-After": "3600"})) <= 0.5


@pytest.mark.parametrize("status", [400, 404, 500, 504])
def test_other_errors_are_not_retried(status: int) -> None:
    flaky = _Flaky(failures=1, status=status)
    with _client(flaky, max_retries=3) as client, pytest.raises(APIStatusError):
        client.encode(["x"])
    assert flaky.attempts == 1


def test_connection_errors_are_retried_but_read_timeouts_are_not() -> None:
    flaky = _Flaky(failures=2, exc=httpx.ConnectError)
    with _client(flaky, max_retries=2) as client:
        sleeps = _recording(client)
        assert client.encode(["x"]).dimensions == 2
    assert flaky.attempts == 3 and len(sleeps) == 2

    flaky = _Flaky(failures=5, exc=httpx.ConnectError)
    with _client(flaky, max_retries=1) as client, pytest.raises(APIConnectionError) as info:
        _recording(client)
        client.encode(["x"])
    assert flaky.attempts == 2 and not isinstance(info.value, APITimeoutError)

    flaky = _Flaky(failures=1, exc=httpx.ReadTimeout)
    with _client(flaky, max_retries=3) as client, pytest.raises(APITimeoutError) as tinfo:
        client.encode(["x"])
    assert flaky.attempts == 1 and isinstance(tinfo.value, TimeoutError)


def test_async_client_retries_503_the_same_way() -> None:
    flaky = _Flaky(failures=2, retry_after="0.01")

    async def run() -> tuple[list[list[float]], list[float]]:
        http = httpx.AsyncClient(transport=httpx.MockTransport(flaky))
        async with AsyncClient("http://mmsearch.test", http_client=http, max_retries=2) as client:
            sleeps: list[float] = []

            async def record(seconds: float) -> None:
                sleeps.append(seconds)

            patched: Any = client
            patched._sleep = record
            res = await client.encode(["x"])
        await http.aclose()
        return res.embeddings, sleeps

    embeddings, sleeps = asyncio.run(run())
    assert embeddings == [[1.0, 0.0]] and flaky.attempts == 3 and sleeps == [0.01, 0.01]


# ---------------------------------------------------------------------------------------- encode decoding
def test_decode_embedding_little_endian_float32() -> None:
    values = [0.5, -1.25, 3.0e-8, 1234.5]
    raw = struct.pack("<4f", *values)
    assert decode_embedding(base64.b64encode(raw).decode()) == pytest.approx(values, rel=1e-7)
    with pytest.raises(ValueError, match="multiple of 4"):
        decode_embedding(base64.b64encode(b"abc").decode())
    with pytest.raises(ValueError, match="base64"):
        decode_embedding("not base64!")


def test_encode_requests_base64_and_decodes_it(monkeypatch: Any) -> None:
    vectors = [[0.1, 0.2, 0.3], [-1.0, 0.0, 2.5]]
    seen: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["body"] = json.loads(request.content)
        seen["auth"] = request.headers.get("authorization")
        seen["url"] = str(request.url)
        payload = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors]
        return httpx.Response(200, json={"embeddings": payload, "model": "tiny", "dimensions": 3})

    monkeypatch.setenv("MMSEARCH_API_KEY", "s3cret")
    with _client(handler) as client:
        res = client.encode_query(["a", Image.url("https://h/i.png")], dimensions=3)
    assert seen["url"] == "http://mmsearch.test/encode"
    assert seen["auth"] == "Bearer s3cret"
    assert seen["body"] == {
        "inputs": ["a", {"image": "https://h/i.png"}],
        "input_type": "query",
        "normalize": True,
        "encoding_format": "base64",
        "dimensions": 3,
    }
    assert res.model == "tiny" and res.dimensions == 3 and len(res) == 2
    for got, want in zip(res.embeddings, vectors, strict=True):
        assert got == pytest.approx(want, rel=1e-6)
    with _client(handler) as client:
        client.encode_document("a", model="wiki")
    assert seen["body"]["model"] == "wiki" and seen["body"]["input_type"] == "document"


def test_rerank_sends_model_only_when_given() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"results": [{"index": 0, "relevance_score": 0.5}], "model": "ce"})

    with _client(handler) as client:
        client.rerank("q", ["d"])
        client.rerank("q", ["d"], model="ce")
    assert "model" not in seen[0] and seen[1]["model"] == "ce"


def test_constructor_settings_from_env(monkeypatch: Any) -> None:
    monkeypatch.setenv("MMSEARCH_URL", "http://envhost:9000/")
    monkeypatch.delenv("MMSEARCH_API_KEY", raising=False)
    with Client() as client:
        assert client.base_url == "http://envhost:9000" and client.api_key is None
        assert "authorization" not in {k.lower() for k in client._headers()}
    with Client("http://other:1", api_key="k", timeout=3.0, max_retries=5) as client:
        assert (client.base_url, client.api_key, client.max_retries) == ("http://other:1", "k", 5)
        assert client.timeout.read == 3.0
    with pytest.raises(ValueError):
        Client("localhost:3000")


# ------------------------------------------------------------------------------------------- upsert_many plan
def test_upsert_plan_drops_blamed_documents_and_splits_on_413() -> None:
    docs = [{"id": f"d{i}", "text": "t"} for i in range(6)]
    plan = upsert_batch_plan(docs)
    sent = [next(plan)]
    bad = BadRequestError(422, "not an image", "not_an_image", "documents[2].image")
    sent.append(plan.send(bad))
    assert [d["id"] for d in sent[1]] == ["d0", "d1", "d3", "d4", "d5"]
    too_big = PayloadTooLargeError(413, "too many", "too_many_inputs", "documents")
    sent.append(plan.send(too_big))
    assert [d["id"] for d in sent[2]] == ["d0", "d1"]
    sent.append(plan.send(UpsertResponse(collection="c", upserted=2, ids=["d0", "d1"])))
    assert [d["id"] for d in sent[3]] == ["d3", "d4", "d5"]
    with pytest.raises(StopIteration) as stop:
        plan.send(ServiceUnavailableError(503, "down", "unavailable"))
    outcome = stop.value.value
    assert outcome.ids == ["d0", "d1"]
    assert [f.ids for f in outcome.failures] == [["d2"], ["d3", "d4", "d5"]]
    assert isinstance(outcome.failures[0].error, MMSearchError) and outcome.requests == 4


# ---------------------------------------------------------------------------------------------------- cli
def test_cli_scan_and_offline_failures(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.PNG").write_bytes(PNG_1x1)
    (tmp_path / "sub" / "c.csv").write_text("x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "d.md").write_text("secret")
    assert [p.relative_to(tmp_path).as_posix() for p in scan([str(tmp_path)])] == ["a.txt", "sub/b.PNG"]
    assert hashlib.sha256(b"hello").hexdigest()[:32] == __import__("mmsearch_client").content_id(b"hello")

    assert cli_main(["health", "--url", "http://127.0.0.1:9"]) == 1
    out = capsys.readouterr().out
    assert "live=no" in out
    assert cli_main(["search", "--url", "http://127.0.0.1:9"]) == 2  # a usage error (no query), as documented
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmsearch: error:") and "\n" not in err
    assert cli_main(["index", str(tmp_path / "missing"), "--url", "http://127.0.0.1:9"]) == 1


def test_cli_index_sends_audio_and_video_files_one_clip_per_request(tmp_path: Path, capsys: Any) -> None:
    """``mmsearch index`` picks up .mp4/.webm/.mov/.mkv and .wav/.flac/.mp3/.ogg, sends each clip as a data URI of
    its own type in a request of its own (a clip is large; the server takes few per request), the rest batched."""
    from mmsearch_client.cli import build_parser, cmd_index

    files = {"a.txt": b"hello", "b.png": PNG_1x1, "c.mp4": b"mp4-bytes", "d.WAV": b"wav-bytes", "e.flac": b"flac"}
    files |= {"f.mkv": b"mkv", "g.ogg": b"ogg", "h.mp3": b"mp3", "i.webm": b"webm", "j.mov": b"mov"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert len(list(scan([str(tmp_path)]))) == len(files)
    upserts: list[list[dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path == "/get":
            return httpx.Response(200, json={"collection": "default", "documents": []})
        upserts.append(body["documents"])
        ids = [d["id"] for d in body["documents"]]
        return httpx.Response(200, json={"collection": "default", "upserted": len(ids), "ids": ids})

    args = build_parser().parse_args(["index", str(tmp_path), "--no-progress"])
    assert cmd_index(_client(handler), args) == 0
    assert "indexed 10," in capsys.readouterr().out
    sent = {d["metadata"]["filename"]: d for batch in upserts for d in batch}
    assert [len(b) for b in upserts if "text" in b[0] or "image" in b[0]] == [2]
    assert sorted(len(b) for b in upserts if "text" not in b[0] and "image" not in b[0]) == [1] * 8
    assert sent["c.mp4"]["video"] == "data:video/mp4;base64," + base64.b64encode(b"mp4-bytes").decode()
    assert sent["d.WAV"]["audio"] == "data:audio/wav;base64," + base64.b64encode(b"wav-bytes").decode()
    assert sent["f.mkv"]["video"].startswith("data:video/x-matroska;base64,")
    assert sent["j.mov"]["video"].startswith("data:video/quicktime;base64,")
    assert sent["h.mp3"]["audio"].startswith("data:audio/mpeg;base64,")
    assert sent["g.ogg"]["audio"].startswith("data:audio/ogg;base64,") and "video" not in sent["g.ogg"]


def test_cli_search_sends_a_video_or_audio_query(tmp_path: Path, capsys: Any) -> None:
    from mmsearch_client.cli import build_parser, cmd_search

    (tmp_path / "q.mp4").write_bytes(b"mp4-bytes")
    queries: list[Any] = []

    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        queries.append(bodies[-1]["query"])
        hit = {"id": "film", "score": 0.9, "retrieval_score": 0.9, "video": "media://x", "t0": 24, "t1": 34}
        return httpx.Response(
            200,
            json={
                "hits": [hit],
                "mode": "vector",
                "reranked": False,
                "timings_ms": {"embed": 1, "retrieve": 1, "rerank": 0, "total": 2},
            },
        )

    args = build_parser().parse_args(["search", "red", "--video", str(tmp_path / "q.mp4")])
    assert cmd_search(_client(handler), args) == 0
    assert queries[0] == {"text": "red", "video": "data:video/mp4;base64," + base64.b64encode(b"mp4-bytes").decode()}
    assert "@ 24-34 s" in capsys.readouterr().out
    res = _client(handler).search({"video": "media://" + "a" * 64 + ".mp4", "t0": 1, "t1": 2}, segments="all")
    assert (
        res.hits[0].t0 == 24
        and bodies[-1]["segments"] == "all"
        and queries[-1] == {"video": "media://" + "a" * 64 + ".mp4", "t0": 1.0, "t1": 2.0}
    )
    queries.clear()
    args = build_parser().parse_args(["search", "--audio", "https://h/a.wav"])
    assert cmd_search(_client(handler), args) == 0 and queries[0] == {"audio": "https://h/a.wav"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--audio", "a.wav", "--video", "v.mp4"])


def test_search_hits_carry_segment_times() -> None:
    from mmsearch_client.schemas import SearchHit

    hit = SearchHit.model_validate(
        {
            "id": "film",
            "score": 0.9,
            "retrieval_score": 0.9,
            "video": "media://" + "a" * 64 + ".mp4",
            "t0": 24,
            "t1": 34,
        }
    )
    assert (hit.t0, hit.t1, hit.video, hit.audio, hit.image) == (24.0, 34.0, "media://" + "a" * 64 + ".mp4", None, None)


# -------------------------------------------------------------------------------------------- packaging
def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def test_client_installs_and_imports_without_torch(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """``pip install schema clients/python`` into a bare venv (the client requires the wire schema, which is not on
    an index: the local copy meets it); the import must not pull torch (or Pillow, rich)."""
    cache = Path(request.config.cache.mkdir("mmsearch-client-venv"))
    venv = cache / "venv"
    python = _venv_python(venv)
    # Build from a clean copy: an in-tree build would leave build/ and egg-info behind in the repo.
    src, schema = tmp_path / "client", tmp_path / "schema"
    for tree, copy in ((CLIENT_DIR, src), (SCHEMA_DIR, schema)):
        shutil.copytree(tree, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        args = [str(schema), str(src)]
    else:
        args = ["--no-deps", "--force-reinstall", str(schema), str(src)]  # deps already there: refresh our code only
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *args], check=True, timeout=300, capture_output=True
    )
    check = (
        "import sys, mmsearch_client, mmsearch_client.cli, mmsearch_client.schemas, mmsearch_schema.wire; "
        "from mmsearch_client import Client, AsyncClient, Image, pair; "
        "assert mmsearch_client.schemas.Item is mmsearch_client.Item is mmsearch_schema.wire.Item; "
        "bad = [m for m in ('torch', 'PIL', 'numpy', 'bentoml') if m in sys.modules]; "
        "assert not bad, bad; print(mmsearch_client.__version__)"
    )
    bare = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the venv's packages, not a checkout's
    out = subprocess.run([str(python), "-c", check], check=True, capture_output=True, text=True, timeout=60, env=bare)
    assert out.stdout.strip()
    probe = subprocess.run(
        [str(python), "-c", "import torch"], capture_output=True, text=True, timeout=60
    )  # and torch really is absent from that venv
    assert probe.returncode != 0


def test_client_reexports_the_whole_wire_schema() -> None:
    """``mmsearch_client.schemas`` / ``.fields`` / ``.errors`` hand out the schema package's own objects, every public
    name of it (one a new model adds to ``mmsearch_schema`` and not to ``__all__`` fails here)."""
    import ast
    import types

    import mmsearch_client.errors
    import mmsearch_client.fields
    import mmsearch_client.schemas
    import mmsearch_schema.errors
    import mmsearch_schema.fields
    import mmsearch_schema.wire

    def defined(module: types.ModuleType) -> set[str]:
        tree = ast.parse(Path(str(module.__file__)).read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)}
        names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        return {n for n in names if not n.startswith("_")}

    pairs = [(mmsearch_client.schemas, mmsearch_schema.wire), (mmsearch_client.fields, mmsearch_schema.fields)]
    for client, schema in pairs:
        assert set(schema.__all__) == defined(schema)
        assert sorted(client.__all__) == sorted(schema.__all__)
        assert [n for n in schema.__all__ if getattr(client, n) is not getattr(schema, n)] == []
    assert set(mmsearch_schema.errors.__all__) == defined(mmsearch_schema.errors)
    for name in ("field_to_loc", "loc_to_field", "parse_error_body"):
        assert name in mmsearch_client.errors.__all__
        assert getattr(mmsearch_client.errors, name) is getattr(mmsearch_schema.errors, name)
    assert mmsearch_client.Item is mmsearch_schema.wire.Item


def test_drop_collection_missing_ok_and_errors() -> None:
    seen: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.path, body))
        if body["collection"] == "there":
            return httpx.Response(200, json={"collection": "there", "dropped": True})
        return httpx.Response(404, json={"error": "nope", "code": "collection_not_found", "field": "collection"})

    with _client(handler) as c:
        assert c.drop_collection("there").dropped is True
        assert c.drop_collection("gone", missing_ok=True).dropped is False
        with pytest.raises(NotFoundError) as err:
            c.drop_collection("gone")
        assert err.value.code == "collection_not_found"
    assert seen[0] == ("/drop", {"collection": "there"})


def test_upsert_model_and_alias_routes_sync_and_async() -> None:
    """``upsert(model=)`` sends ``model`` only when given; the alias methods post to ``/aliases*`` and parse."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.path, body))
        answers: dict[str, Any] = {
            "/upsert": {"collection": body.get("collection"), "upserted": 1, "ids": ["a"]},
            "/aliases": {"aliases": [{"alias": "live", "collection": "v2"}]},
            "/aliases/set": {"alias": "live", "collection": "v2", "previous": "v1"},
            "/aliases/delete": {"alias": "live", "deleted": True},
        }
        return httpx.Response(200, json=answers[request.url.path])

    with _client(handler) as c:
        c.upsert({"id": "a", "text": "x"}, collection="v2")
        c.upsert({"id": "a", "text": "x"}, collection="v2", model="wiki")
        assert c.set_alias("live", "v2").previous == "v1"
        assert [(a.alias, a.collection) for a in c.aliases().aliases] == [("live", "v2")]
        assert c.delete_alias("live").deleted is True
    assert "model" not in seen[0][1] and seen[1][1]["model"] == "wiki"
    assert seen[2:] == [
        ("/aliases/set", {"alias": "live", "collection": "v2"}),
        ("/aliases", {}),
        ("/aliases/delete", {"alias": "live"}),
    ]

    async def run() -> None:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with AsyncClient("http://mmsearch.test", http_client=http, max_retries=0) as c:
            await c.upsert({"id": "a", "text": "x"}, collection="v2", model="wiki")
            assert (await c.set_alias("live", "v2")).collection == "v2"
            assert (await c.aliases()).aliases[0].alias == "live"
            assert (await c.delete_alias("live")).deleted is True

    seen.clear()
    asyncio.run(run())
    assert [p for p, _ in seen] == ["/upsert", "/aliases/set", "/aliases", "/aliases/delete"]
    assert seen[0][1]["model"] == "wiki"


def test_reindex_pages_copies_splits_on_413_and_switches_the_alias() -> None:
    """``mmsearch_client.reindex``: the alias's target is read page by page (``/ids`` then ``/get``), documents
    with content are upserted into the new collection with ``model`` (a batch answered 413 is halved),
    embedding-only ones are skipped, and the alias is switched last."""
    from mmsearch_client.reindex import default_target, reindex

    stored = {f"d{i}": {"id": f"d{i}", "text": f"t{i}", "metadata": {"n": i}} for i in range(5)}
    stored["e"] = {"id": "e", "embedding": None}
    order = sorted(stored)
    calls: list[tuple[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        path = request.url.path
        calls.append((path, body))
        if path == "/aliases":
            return httpx.Response(200, json={"aliases": [{"alias": "live", "collection": "old"}]})
        if path == "/ids":
            start = order.index(body["after"]) + 1 if body.get("after") else 0
            page = order[start : start + body["limit"]]
            more = start + body["limit"] < len(order)
            return httpx.Response(200, json={"collection": "old", "ids": page, "next": page[-1] if more else None})
        if path == "/get":
            docs = [{k: v for k, v in stored[i].items() if v is not None} for i in body["ids"]]
            return httpx.Response(200, json={"collection": "old", "documents": docs})
        if path == "/upsert":
            if len(body["documents"]) > 2:
                err = {"error": "inputs: at most 2", "code": "too_many_inputs", "field": "inputs"}
                return httpx.Response(413, json=err)
            ids = [d["id"] for d in body["documents"]]
            return httpx.Response(200, json={"collection": body["collection"], "upserted": len(ids), "ids": ids})
        assert path == "/aliases/set"
        return httpx.Response(200, json={**body, "previous": "old"})

    with _client(handler) as c:
        res = reindex(c, "live", "wiki", batch_size=4)
    assert (res.source, res.target, res.copied, res.skipped, res.alias) == ("old", "old_wiki", 5, ["e"], "live")
    upserted = [b for p, b in calls if p == "/upsert"]
    assert all(b["model"] == "wiki" and b["collection"] == "old_wiki" for b in upserted)
    ok = [d["id"] for b in upserted if len(b["documents"]) <= 2 for d in b["documents"]]
    assert sorted(ok) == [f"d{i}" for i in range(5)]
    assert upserted[0]["documents"][0] == {"id": "d0", "text": "t0", "metadata": {"n": 0}}
    assert calls[-1] == ("/aliases/set", {"alias": "live", "collection": "old_wiki"})
    assert default_target("pages", "bge-small.v1.5") == "pages_bge_small_v1_5"


def test_reindex_sends_audio_and_video_documents_as_their_stored_clips() -> None:
    """A clip document's ``/get`` names its whole stored clip (its segments and duration beside it): the reindex
    upserts that ``media://`` reference with the text and metadata (the target cuts it into segments again), and
    skips only documents without text, image or clip."""
    from mmsearch_client.reindex import reindex

    film, voice = "media://" + "a" * 64 + ".mp4", "media://" + "b" * 64 + ".wav"
    stored: dict[str, dict[str, Any]] = {
        "film": {"id": "film", "video": film, "segments": 8, "duration": 60.0, "modality": "video"},
        "note": {"id": "note", "text": "hi", "audio": voice, "segments": 1, "duration": 4.0, "metadata": {"k": 1}},
        "vec": {"id": "vec", "modality": "video"},
    }
    upserts: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        path = request.url.path
        if path == "/aliases":
            return httpx.Response(200, json={"aliases": []})
        if path == "/ids":
            return httpx.Response(200, json={"collection": "av", "ids": sorted(stored), "next": None})
        if path == "/get":
            return httpx.Response(200, json={"collection": "av", "documents": [stored[i] for i in body["ids"]]})
        assert path == "/upsert", path
        upserts.append(body)
        ids = [d["id"] for d in body["documents"]]
        return httpx.Response(200, json={"collection": body["collection"], "upserted": len(ids), "ids": ids})

    with _client(handler) as c:
        res = reindex(c, "av", "vid", into="av2")
    assert (res.copied, res.skipped, res.alias) == (2, ["vec"], None)
    (body,) = upserts
    assert body["documents"] == [
        {"id": "film", "video": film},
        {"id": "note", "text": "hi", "audio": voice, "metadata": {"k": 1}},
    ]
