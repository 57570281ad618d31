"""``read_upload_form``: the multipart form of ``/upload/encode`` (Embedder and Search), validated with the
``/encode`` rules (``EncodeRequest``); every refusal is a 4xx naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from service.config import Settings
from service.errors import ApiError
from service.uploads import read_upload_form

SETTINGS = Settings(
    max_image_bytes=100, max_audio_bytes=200, max_video_bytes=300, max_inputs_per_request=3, max_av_inputs_per_request=2
)


async def _echo(request: Request) -> Response:
    try:
        form = await read_upload_form(request, SETTINGS)
    except ApiError as e:
        return e.to_response()
    return JSONResponse({k: v for k, v in vars(form).items() if k != "files"} | {"sizes": [len(b) for b in form.files]})


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(Starlette(routes=[Route("/", _echo, methods=["POST"])]))


def _post(client: TestClient, data: dict[str, Any] | None = None, n: int = 1, size: int = 10) -> Any:
    files = [("image", (f"{i}.png", b"x" * size, "image/png")) for i in range(n)]
    return client.post("/", files=files, data=data or {})


def test_defaults_and_options(client: TestClient) -> None:
    got = _post(client).json()
    assert got == {
        "medium": "image",
        "content_types": ["image/png"],
        "texts": None,
        "input_type": "document",
        "dimensions": None,
        "normalize": True,
        "encoding_format": "float",
        "model": None,
        "sizes": [10],
    }
    opts = {"input_type": "query", "dimensions": "8", "normalize": "false", "encoding_format": "base64", "text": "a"}
    got = _post(client, {**opts, "model": "wiki"}).json()
    assert (got["input_type"], got["dimensions"], got["normalize"], got["encoding_format"], got["model"]) == (
        "query",
        8,
        False,
        "base64",
        "wiki",
    )
    assert got["texts"] == ["a"]
    assert _post(client, {"dimensions": ""}).json()["dimensions"] is None  # an empty field: the default


@pytest.mark.parametrize(
    ("data", "n", "size", "status", "field"),
    [
        ({"input_type": "passage"}, 1, 10, 400, "input_type"),
        ({"dimensions": "0"}, 1, 10, 400, "dimensions"),
        ({"dimensions": "eight"}, 1, 10, 400, "dimensions"),
        ({"normalize": "maybe"}, 1, 10, 400, "normalize"),
        ({"encoding_format": "int8"}, 1, 10, 400, "encoding_format"),
        ({"text": ["a", "b"]}, 1, 10, 400, "text"),
        ({}, 1, 101, 413, "image[0]"),
    ],
)
def test_refusals_name_the_field(
    client: TestClient, data: dict[str, Any], n: int, size: int, status: int, field: str
) -> None:
    r = _post(client, data, n, size)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and r.json()["error"].startswith(f"{field}: "), r.json()


def test_more_files_than_inputs_per_request_are_refused_while_parsing(client: TestClient) -> None:
    r = _post(client, n=4)
    # Starlette answers this one itself (plain text; the service's error middleware gives it the JSON shape)
    assert r.status_code == 400 and "Maximum number of files is 3" in r.text


def test_no_image_is_refused(client: TestClient) -> None:
    r = client.post("/", data={"text": "a"}, files=[("other", ("x", b"x", "text/plain"))])
    assert r.status_code == 400 and r.json()["field"] == "image"


def _media(client: TestClient, parts: list[tuple[str, int]], data: dict[str, Any] | None = None) -> Any:
    files = [(name, (f"{i}.bin", b"x" * size, f"{name}/x-any")) for i, (name, size) in enumerate(parts)]
    return client.post("/", files=files, data=data or {})


def test_audio_and_video_files_are_read_within_their_own_limits() -> None:
    client = TestClient(Starlette(routes=[Route("/", _echo, methods=["POST"])]))
    got = _media(client, [("video", 300), ("video", 5)], {"text": ["a", "b"]}).json()
    assert (got["medium"], got["sizes"], got["texts"]) == ("video", [300, 5], ["a", "b"])
    assert _media(client, [("audio", 200)]).json()["sizes"] == [200]  # above max_image_bytes: audio's own limit


@pytest.mark.parametrize(
    ("parts", "status", "field", "words"),
    [
        ([("audio", 10), ("audio", 201)], 413, "audio[1]", "exceeds 200 bytes"),
        ([("video", 301)], 413, "video[0]", "exceeds 300 bytes"),
        ([("video", 1)] * 3, 413, "video", "at most 2 audio and video inputs"),
        ([("image", 1), ("video", 1)], 422, "video", "one medium per upload"),
        ([("audio", 1), ("video", 1)], 422, "video", "got audio and video files"),
    ],
)
def test_audio_and_video_refusals_name_the_field(
    client: TestClient, parts: list[tuple[str, int]], status: int, field: str, words: str
) -> None:
    r = _media(client, parts)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["field"] == field and body["error"].startswith(f"{field}: ") and words in body["error"], body


def test_an_oversize_part_is_refused_while_the_body_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The part over its limit stops the parse: its bytes past the limit are never spooled (not read, then cut)."""
    from starlette.datastructures import UploadFile

    written: list[int] = []
    real = UploadFile.write

    async def counted(self: UploadFile, data: bytes) -> None:
        written.append(len(data))
        await real(self, data)

    monkeypatch.setattr(UploadFile, "write", counted)
    client = TestClient(Starlette(routes=[Route("/", _echo, methods=["POST"])]))
    r = _media(client, [("audio", 50_000)])
    assert r.status_code == 413 and r.json()["field"] == "audio[0]", r.text
    assert sum(written) <= 200  # at most the limit was spooled


def test_a_text_field_before_a_file_of_the_same_name_keeps_the_files_position(client: TestClient) -> None:
    r = client.post("/", files=[("video", ("v.mp4", b"x" * 301, "video/mp4"))], data={"video": "not a file"})
    # httpx sends the fields first: in getlist order the text field is video[0], the file video[1]
    assert r.status_code == 413 and r.json()["field"] == "video[1]", r.text
