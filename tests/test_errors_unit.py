"""Error rendering per API family and parsing of every error shape the services meet (pure logic)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from service.errors import ApiError, ErrorShapeMiddleware, Family, family_for_path, parse_error, render


def test_family_by_route() -> None:
    assert family_for_path("/v1/embeddings") is Family.OPENAI
    assert family_for_path("/v1/embeddings/") is Family.OPENAI
    assert family_for_path("/v1/models") is Family.OPENAI and family_for_path("/v1/models/org/name") is Family.OPENAI
    assert family_for_path("/v1/rerank") is Family.COHERE and family_for_path("/v2/rerank") is Family.COHERE
    assert family_for_path("/search") is Family.NATIVE and family_for_path("/upload/encode") is Family.NATIVE


def test_render_each_family() -> None:
    err = ApiError(413, "too_many_inputs", "input: at most 2048 inputs per request (got 2049)", field="input")
    assert json.loads(render(err, Family.NATIVE)) == {
        "error": "input: at most 2048 inputs per request (got 2049)",
        "code": "too_many_inputs",
        "field": "input",
    }
    assert json.loads(render(err, Family.OPENAI)) == {
        "error": {
            "message": "input: at most 2048 inputs per request (got 2049)",
            "type": "invalid_request_error",
            "param": "input",
            "code": "too_many_inputs",
        }
    }
    cohere = json.loads(render(err, Family.COHERE))
    assert set(cohere) == {"id", "message"} and cohere["message"].startswith("input: at most 2048")
    assert json.loads(render(ApiError(401, "unauthorized", "no key"), Family.OPENAI))["error"]["type"] == (
        "authentication_error"
    )
    assert json.loads(render(ApiError(503, "unavailable", "down"), Family.OPENAI))["error"]["type"] == "server_error"


def test_parse_every_shape_back() -> None:
    err = ApiError(400, "invalid_request", "dimensions: at most 16", field="dimensions")
    for family in Family:
        back = parse_error(400, render(err, family))
        assert back.message == err.message and back.status == 400
        if family is not Family.COHERE:  # Cohere's shape has no code or field
            assert (back.code, back.field) == (err.code, err.field)
    bentoml = {"error": "1 validation error", "detail": [{"loc": ["body", "top_k"], "msg": "too small", "type": "x"}]}
    v = parse_error(400, json.dumps(bentoml).encode())
    assert (v.code, v.field, v.message) == ("validation_error", "top_k", "top_k: too small")
    plain = parse_error(404, b"Not Found", "text/plain")
    assert (plain.code, plain.message) == ("not_found", "Not Found")


def _run(app: Any, path: str, method: str = "POST") -> tuple[int, dict[str, str], Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(ErrorShapeMiddleware(app)(scope, receive, send))
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, json.loads(body) if body else None


def _app(status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(extra or [])]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return app


def test_middleware_reshapes_plain_text_and_keeps_headers() -> None:
    status, headers, body = _run(
        _app(405, b"Method Not Allowed", b"text/plain", [(b"allow", b"POST")]), "/search", "GET"
    )
    assert status == 405 and headers["allow"] == "POST" and headers["content-type"] == "application/json"
    assert body == {"error": "GET is not allowed on /search", "code": "method_not_allowed", "field": None}
    status, headers, body = _run(_app(404, b"Not Found", b"text/plain"), "/v1/embeddingz")
    assert body["code"] == "not_found" and "/v1/embeddingz" in body["error"]
    status, headers, body = _run(
        _app(503, b'{"error": "busy", "code": "queue_timeout", "field": null}', b"application/json"), "/v1/embeddings"
    )
    assert status == 503 and headers["retry-after"] == "1"
    assert body["error"]["code"] == "queue_timeout" and body["error"]["type"] == "server_error"


def test_middleware_hides_internal_500_detail_and_passes_success() -> None:
    status, _, body = _run(_app(500, b'{"error": "Traceback ... 10.0.0.7"}', b"application/json"), "/v2/rerank")
    assert status == 500 and "10.0.0.7" not in body["message"]
    status, _, body = _run(_app(200, b'{"ok": true}', b"application/json"), "/v1/embeddings")
    assert status == 200 and body == {"ok": True}


def test_a_wrapped_dependency_error_is_flattened_at_the_edge() -> None:
    """BentoML answers ``[{"error": <a dependency's JSON body>}]`` when an exception carries that body as its
    message: the service's edge rebuilds the inner error, so clients see one shape."""
    inner = json.dumps({"error": "collection 'x' not found", "code": "collection_not_found", "field": "collection"})
    err = parse_error(404, json.dumps([{"error": inner}]).encode())
    assert (err.message, err.code, err.field) == ("collection 'x' not found", "collection_not_found", "collection")


def test_field_paths_are_relocated_as_paths() -> None:
    """A dependency's ``inputs[k]`` error is moved to the caller's field by path, message prefix included."""
    from service.pipeline import remap_inputs

    def embedder_error(field: str | None, message: str) -> ApiError:
        return ApiError(400, "bad_url", message, field=field)

    e = remap_inputs(embedder_error("inputs[1].image", "inputs[1].image: bad URL"), [4, 7], "documents")
    assert (e.field, e.message) == ("documents[7].image", "documents[7].image: bad URL")
    e = remap_inputs(embedder_error("inputs[0].text", "inputs[0].text: too long"), [0], "query", single=True)
    assert (e.field, e.message) == ("query.text", "query.text: too long")
    e = remap_inputs(embedder_error("inputs[3]", "blocked address"), [9], "documents")  # out of range: unchanged
    assert (e.field, e.message) == ("inputs[3]", "blocked address")
    e = remap_inputs(embedder_error("inputs[0].image", "not an image"), [2], "documents")  # message without a path
    assert (e.field, e.message) == ("documents[2].image", "not an image")
    e = remap_inputs(embedder_error("dimensions", "dimensions: at most 16"), [2], "documents")
    assert (e.field, e.message) == ("dimensions", "dimensions: at most 16")
    e = remap_inputs(embedder_error(None, "inputs: at most 256"), [2], "documents")
    assert (e.field, e.message) == (None, "inputs: at most 256")


def test_reader_errors_point_at_the_callers_positions_past_the_cache() -> None:
    """The Reader sees only the uncached images: its ``inputs[k]`` is moved to the position in the caller's list."""
    from service.ocr import OcrPage
    from service.reading import OcrCache, TextReader

    class RefusingReader:
        async def read(self, items: Any, input_type: Any, timeout: Any) -> Any:
            raise ApiError(422, "not_an_image", "inputs[1].image: not an image", field="inputs[1].image")

    cache = OcrCache()
    cache.put("a", OcrPage((), 1, 1))
    reader = TextReader(RefusingReader(), cache)  # type: ignore[arg-type]
    try:
        asyncio.run(reader.read([("a", "x"), ("b", "y"), ("c", "z")], "document", None))
    except ApiError as e:
        assert (e.field, e.message) == ("inputs[2].image", "inputs[2].image: not an image")
    else:
        raise AssertionError("the Reader's refusal was swallowed")
