"""The official SDKs as real clients of the composed bento (one public port, loopback, API key on):
``openai`` (sync, async, base64, dimensions, error fields), ``cohere`` v1 and v2, LangChain's
``OpenAIEmbeddings`` (both settings of ``check_embedding_ctx_length``) and LlamaIndex's ``OpenAIEmbedding``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import cohere
import httpx
import numpy as np
import openai
import pytest

from bench.support.images import data_uri, make_image, png_bytes
from bench.support.servers import BentoServer
from tests.conftest import serve_bento
from tests.support.tiktoken_cache import seed_tiktoken_cache

pytestmark = pytest.mark.e2e
KEY = "sdk-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
TOL = 1e-5
MODEL = "mmsearch/tiny-random-clip"


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory, tiny_models: object) -> Iterator[BentoServer]:
    yield from serve_bento(
        tmp_path_factory.mktemp("sdk-search"),
        "service.search:Search",
        MMSEARCH_API_KEYS=KEY,
        MMSEARCH_MAX_REQUEST_BYTES=str(2 * 1024 * 1024),
    )


def encode(server: BentoServer, inputs: list[object], input_type: str = "document", **kw: object) -> np.ndarray:
    body = {"inputs": inputs, "input_type": input_type, **kw}
    r = httpx.post(f"{server.url}/encode", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["embeddings"], dtype=np.float32)


def rerank_scores(server: BentoServer, query: str, docs: list[str]) -> list[float]:
    r = httpx.post(f"{server.url}/rerank", json={"query": query, "documents": docs}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    by_index = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    return [by_index[i] for i in range(len(docs))]


# ------------------------------------------------------------------------------------------------- one port
def test_every_route_on_the_public_port(search: BentoServer) -> None:
    url = search.url
    checks = {
        "/v1/embeddings": httpx.post(f"{url}/v1/embeddings", json={"input": "hi"}, headers=AUTH, timeout=30),
        "/v1/rerank": httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["a"]}, headers=AUTH, timeout=30),
        "/v2/rerank": httpx.post(
            f"{url}/v2/rerank", json={"model": "m", "query": "q", "documents": ["a"]}, headers=AUTH, timeout=30
        ),
        "/upload/encode": httpx.post(
            f"{url}/upload/encode",
            files=[("image", ("a.png", png_bytes(make_image(3)), "image/png"))],
            headers=AUTH,
            timeout=30,
        ),
    }
    for route, r in checks.items():
        assert r.status_code == 200, (route, r.text)
    # the upload through Search gives what the same image gives through /encode
    want = encode(search, [{"image": data_uri(make_image(3))}])
    got = np.asarray(checks["/upload/encode"].json()["embeddings"], dtype=np.float32)
    assert np.abs(got - want).max() <= TOL
    bad = httpx.post(
        f"{url}/upload/encode",
        files=[("image", ("a.png", b"not an image", "image/png"))],
        headers=AUTH,
        timeout=30,
    )
    assert bad.status_code == 422 and bad.json()["field"] == "image[0]", bad.text


def test_composed_start_up_is_warning_free(search: BentoServer) -> None:
    """The composed bento's start-up (Search, and the Embedder, Reranker and Reader workers it starts) and the
    requests answered so far log no FutureWarning (nor any other Python warning)."""
    r = httpx.post(f"{search.url}/info", json={}, headers=AUTH, timeout=30)
    assert r.status_code == 200 and all(r.json()[d]["available"] for d in ("embedder", "reranker", "reader"))
    log = search.log_path.read_text(errors="replace")
    for service in ("Search", "Embedder", "Reranker", "Reader"):  # the log covers every worker's start-up
        assert f"Service {service} initialized" in log, service
    assert "FutureWarning" not in log and "Warning:" not in log, [x for x in log.splitlines() if "Warning" in x]


# ------------------------------------------------------------------------------------------------- openai
def test_openai_sdk_sync_base64_and_dimensions(search: BentoServer) -> None:
    client = openai.OpenAI(base_url=f"{search.url}/v1", api_key=KEY, max_retries=0)
    texts = ["a red bicycle", "quarterly revenue chart", "login page"]
    res = client.embeddings.create(model="anything", input=texts)  # the SDK asks for base64 by default
    assert res.model == MODEL and [d.index for d in res.data] == [0, 1, 2]
    got = np.asarray([d.embedding for d in res.data], dtype=np.float32)
    assert np.abs(got - encode(search, texts)).max() <= TOL
    floats = client.embeddings.create(model="x", input=texts[0], encoding_format="float")
    assert np.abs(np.asarray(floats.data[0].embedding) - got[0]).max() <= TOL
    short = client.embeddings.create(model="x", input=texts, dimensions=8)
    want = encode(search, texts, dimensions=8)
    assert np.asarray(short.data[0].embedding).shape == (8,)
    assert np.abs(np.asarray([d.embedding for d in short.data]) - want).max() <= TOL
    queries = client.embeddings.create(model="x", input=texts, extra_body={"input_type": "query"})
    assert np.abs(np.asarray([d.embedding for d in queries.data]) - encode(search, texts, "query")).max() <= TOL


def test_openai_sdk_async(search: BentoServer) -> None:
    async def run() -> list[list[float]]:
        async with openai.AsyncOpenAI(base_url=f"{search.url}/v1", api_key=KEY, max_retries=0) as client:
            results = await asyncio.gather(*(client.embeddings.create(model="x", input=f"t{i}") for i in range(4)))
        return [r.data[0].embedding for r in results]

    got = np.asarray(asyncio.run(run()), dtype=np.float32)
    assert np.abs(got - encode(search, [f"t{i}" for i in range(4)])).max() <= TOL


def test_openai_sdk_2048_inputs(search: BentoServer) -> None:
    client = openai.OpenAI(base_url=f"{search.url}/v1", api_key=KEY, max_retries=0, timeout=120)
    res = client.embeddings.create(model="x", input=[f"text {i}" for i in range(2048)])
    assert len(res.data) == 2048 and res.data[2047].index == 2047
    with pytest.raises(openai.APIStatusError) as too_many:
        client.embeddings.create(model="x", input=["t"] * 2049)
    e = too_many.value
    assert e.status_code == 413 and e.code == "too_many_inputs" and e.param == "input"  # type: ignore[attr-defined]
    assert "2048" in e.message


def test_openai_sdk_error_fields(search: BentoServer) -> None:
    client = openai.OpenAI(base_url=f"{search.url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as dims:
        client.embeddings.create(model="x", input="hello", dimensions=17)
    assert dims.value.code == "invalid_request" and dims.value.param == "dimensions"
    assert dims.value.type == "invalid_request_error" and "16" in dims.value.message
    with pytest.raises(openai.BadRequestError) as tokens:
        client.embeddings.create(model="x", input=[[15339, 1917]])
    assert tokens.value.code == "token_ids_not_supported" and tokens.value.param == "input"
    assert "check_embedding_ctx_length=False" in tokens.value.message
    with pytest.raises(openai.BadRequestError) as invalid:  # BentoML's own validation error, in OpenAI's shape
        client.embeddings.create(model="x", input="hello", encoding_format="int8")  # type: ignore[arg-type]
    assert invalid.value.param == "encoding_format" and invalid.value.code == "validation_error"
    with pytest.raises(openai.UnprocessableEntityError) as image:
        client.embeddings.create(model="x", input=[{"image": "data:image/png;base64,AAAA"}])  # type: ignore[list-item]
    assert image.value.param == "input[0].image"
    wrong_key = openai.OpenAI(base_url=f"{search.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:  # a middleware refusal, in OpenAI's shape
        wrong_key.embeddings.create(model="x", input="hello")
    assert auth.value.code == "unauthorized" and auth.value.type == "authentication_error"
    big = httpx.post(
        f"{search.url}/v1/embeddings", json={"input": ["x" * 1000] * 3000}, headers=AUTH, timeout=30
    )  # over MMSEARCH_MAX_REQUEST_BYTES: refused by the body-limit middleware, in OpenAI's shape
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large", big.text
    wrong_type = httpx.post(
        f"{search.url}/v1/embeddings", content=b"input=x", headers={**AUTH, "content-type": "text/plain"}
    )
    assert wrong_type.status_code == 415 and wrong_type.json()["error"]["code"] == "unsupported_media_type"


# ------------------------------------------------------------------------------------------------- cohere
def test_cohere_v1_and_v2_clients(search: BentoServer) -> None:
    docs = ["alpha particle", "beta decay", "gamma ray"]
    want = rerank_scores(search, "radiation", docs)
    best = int(np.argmax(want))
    v1 = cohere.Client(api_key=KEY, base_url=search.url)
    r1 = v1.rerank(model="any", query="radiation", documents=docs, top_n=2, return_documents=True)
    assert r1.results[0].index == best and len(r1.results) == 2
    assert abs(r1.results[0].relevance_score - want[best]) <= TOL
    assert r1.results[0].document is not None and r1.results[0].document.text == docs[best]
    v2 = cohere.ClientV2(api_key=KEY, base_url=search.url)
    r2 = v2.rerank(model="any", query="radiation", documents=docs)
    assert sorted(x.index for x in r2.results) == [0, 1, 2]
    assert all(abs(x.relevance_score - want[x.index]) <= TOL for x in r2.results)
    assert r2.results[0].index == best


def test_cohere_errors_in_cohere_shape(search: BentoServer) -> None:
    v2 = cohere.ClientV2(api_key=KEY, base_url=search.url)
    with pytest.raises(cohere.core.ApiError) as too_many:
        v2.rerank(model="any", query="q", documents=["d"] * 257)
    assert too_many.value.status_code == 413
    body = too_many.value.body
    assert set(body) == {"id", "message"} and "256" in body["message"] and "documents" in body["message"]
    with pytest.raises(cohere.BadRequestError) as invalid:  # BentoML's validation error, in Cohere's shape
        v2.rerank(model="any", query="q", documents=["d"], top_n=0)
    assert set(invalid.value.body) == {"id", "message"} and "top_n" in invalid.value.body["message"]
    with pytest.raises(cohere.UnauthorizedError) as auth:
        cohere.ClientV2(api_key="wrong", base_url=search.url).rerank(model="m", query="q", documents=["d"])
    assert set(auth.value.body) == {"id", "message"}


# ------------------------------------------------------------------------------------------------- langchain
def test_langchain_openai_embeddings_raw_text(search: BentoServer) -> None:
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(
        model="text-embedding-3-small",
        base_url=f"{search.url}/v1",
        api_key=KEY,  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    texts = [f"document number {i}" for i in range(1100)]  # LangChain's default chunk: 1000 per request
    got = np.asarray(emb.embed_documents(texts), dtype=np.float32)
    assert got.shape[0] == 1100
    sample = [0, 999, 1000, 1099]
    assert np.abs(got[sample] - encode(search, [texts[i] for i in sample])).max() <= TOL
    query = np.asarray(emb.embed_query("document number 7"))
    assert np.abs(query - encode(search, ["document number 7"])[0]).max() <= TOL  # default input_type: document


def test_langchain_openai_embeddings_token_ids(
    search: BentoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_openai import OpenAIEmbeddings

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(seed_tiktoken_cache(tmp_path / "tiktoken")))
    emb = OpenAIEmbeddings(
        model="text-embedding-3-small",
        base_url=f"{search.url}/v1",
        api_key=KEY,
        max_retries=0,  # type: ignore[arg-type]
    )  # check_embedding_ctx_length=True (the default): LangChain sends cl100k token ids
    with pytest.raises(openai.BadRequestError) as e:
        emb.embed_documents(["a red bicycle"])
    assert e.value.code == "token_ids_not_supported"
    assert "check_embedding_ctx_length=False" in e.value.message


# ------------------------------------------------------------------------------------------------- llamaindex
def test_llama_index_openai_embedding(search: BentoServer) -> None:
    from llama_index.embeddings.openai import OpenAIEmbedding

    emb = OpenAIEmbedding(model_name="mmsearch", api_base=f"{search.url}/v1", api_key=KEY, max_retries=0)
    texts = ["a red bicycle", "quarterly revenue chart"]
    got = np.asarray(emb.get_text_embedding_batch(texts), dtype=np.float32)
    assert np.abs(got - encode(search, texts)).max() <= TOL
    q = np.asarray(emb.get_query_embedding("red bike"), dtype=np.float32)
    assert np.abs(q - encode(search, ["red bike"])[0]).max() <= TOL
    aq = np.asarray(asyncio.run(emb.aget_query_embedding("red bike")), dtype=np.float32)
    assert np.abs(aq - q).max() <= TOL


# ------------------------------------------------------------------------------------------------- native
def test_native_errors_always_json(search: BentoServer) -> None:
    url = search.url
    missing = httpx.post(f"{url}/nope", json={}, headers=AUTH)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found", missing.text
    assert "/nope" in missing.json()["error"] and set(missing.json()) == {"error", "code", "field"}
    wrong_method = httpx.get(f"{url}/search", headers=AUTH)
    assert wrong_method.status_code == 405 and wrong_method.json()["code"] == "method_not_allowed"
    assert "POST" in wrong_method.headers.get("allow", "")
    invalid = httpx.post(f"{url}/search", json={"query": "q", "top_k": 0}, headers=AUTH)
    assert invalid.status_code == 400 and invalid.json()["field"] == "top_k", invalid.text
    assert invalid.json()["code"] == "validation_error" and set(invalid.json()) == {"error", "code", "field"}
    missing_field = httpx.post(f"{url}/encode", json={}, headers=AUTH)
    assert missing_field.status_code == 400 and missing_field.json()["field"] == "inputs"
    unauth = httpx.post(f"{url}/search", json={"query": "q"})
    assert unauth.status_code == 401 and set(unauth.json()) == {"error", "code", "field"}
