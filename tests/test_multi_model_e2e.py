"""Several models per service (issue #23): one Embedder process serving two tiny embedders (the CLIP-shaped one and a
text-only BERT) and one Reranker process serving two tiny rerankers (the Qwen2-VL-shaped one and a text BERT
cross-encoder), both from one ``MMSEARCH_MODELS`` file written here; real ``bentoml serve`` processes on loopback,
real SDKs (``openai``, ``cohere``), in-process sentence-transformers as the reference. Each bento starts once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cohere
import httpx
import mmsearch_client
import numpy as np
import openai
import pytest
from sentence_transformers import CrossEncoder, SentenceTransformer

from bench.support.images import data_uri, decode, make_image, png_bytes
from bench.support.metrics import samples
from bench.support.servers import BentoServer
from tests.conftest import serve_bento, serve_wired_search

pytestmark = pytest.mark.e2e
TOL = 1e-5
TEXTS = ["a red square", "quarterly revenue dashboard", "http://127.0.0.1/x.png", "the cat is on the car"]
WIKI_TOKENS = 16  # the text model's max_model_tokens in the file: shorter than its own 128
WIKI_INPUTS = 4  # and its max_inputs_per_request


@pytest.fixture(scope="module")
def paths(tiny_models) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    from bench.support.servers import tiny_dir
    from service.tiny import ensure_tiny_text_embedder

    return {
        "clip": Path(tiny_models.clip),
        "wiki": ensure_tiny_text_embedder(tiny_dir()),
        "vlm-rerank": Path(tiny_models.vlm_reranker),
        "text-rerank": Path(tiny_models.text_reranker),
    }


@pytest.fixture(scope="module")
def models_file(tmp_path_factory: pytest.TempPathFactory, paths: dict[str, Path]) -> Path:
    path = tmp_path_factory.mktemp("repo") / "models.yaml"
    path.write_text(
        "embedders:\n"
        f"  clip: {{source: {paths['clip']}, default: true}}\n"
        f"  wiki: {{source: {paths['wiki']}, max_model_tokens: {WIKI_TOKENS}, max_inputs_per_request: {WIKI_INPUTS}}}\n"
        "rerankers:\n"
        f"  vlm-rerank: {{source: {paths['vlm-rerank']}}}\n"
        f"  text-rerank: {{source: {paths['text-rerank']}, default: true}}\n"
    )
    return path


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory, models_file: Path) -> Iterator[BentoServer]:
    yield from serve_bento(
        tmp_path_factory.mktemp("multi-embedder"), "service.embedder:Embedder", MMSEARCH_MODELS=str(models_file)
    )


@pytest.fixture(scope="module")
def reranker(tmp_path_factory: pytest.TempPathFactory, models_file: Path) -> Iterator[BentoServer]:
    yield from serve_bento(
        tmp_path_factory.mktemp("multi-reranker"), "service.reranker:Reranker", MMSEARCH_MODELS=str(models_file)
    )


@pytest.fixture(scope="module")
def local(paths: dict[str, Path]) -> dict[str, Any]:
    wiki = SentenceTransformer(str(paths["wiki"]), device="cpu")
    wiki.max_seq_length = WIKI_TOKENS
    return {
        "clip": SentenceTransformer(str(paths["clip"]), device="cpu"),
        "wiki": wiki,
        "vlm-rerank": CrossEncoder(str(paths["vlm-rerank"]), device="cpu"),
        "text-rerank": CrossEncoder(str(paths["text-rerank"]), device="cpu"),
    }


def post(server: BentoServer, route: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}{route}", json=body, timeout=60)


def encode_local(model: SentenceTransformer, inputs: list[Any], input_type: str) -> np.ndarray:
    fn = model.encode_query if input_type == "query" else model.encode_document
    return np.asarray(fn(inputs, normalize_embeddings=True, convert_to_numpy=True))


# ------------------------------------------------------------------------------------------------- Embedder
@pytest.mark.parametrize("input_type", ["query", "document"])
def test_each_embedder_matches_sentence_transformers(
    embedder: BentoServer, local: dict[str, Any], input_type: str
) -> None:
    """``model`` routes to each model (its own dimension and prompts), the default without it; each model's vectors
    equal in-process sentence-transformers. The long text checks the text model's own token limit (16)."""
    texts = [*TEXTS[:3], "the cat is on the red car and the dog is in the blue photo of a car " * 3]
    as_items = {"clip": [{"text": t} for t in texts], "wiki": texts}  # CLIP gets text items, as the server does
    for name, dim in (("clip", 16), ("wiki", 24), (None, 16)):
        body = {"inputs": texts, "input_type": input_type, **({"model": name} if name else {})}
        r = post(embedder, "/encode", body)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["model"] == (name or "clip") and got["dimensions"] == dim
        want = encode_local(local[name or "clip"], as_items[name or "clip"], input_type)
        assert np.abs(np.asarray(got["embeddings"]) - want).max() <= TOL, name


def test_openai_sdk_routes_by_model(embedder: BentoServer, local: dict[str, Any]) -> None:
    client = openai.OpenAI(api_key="none", base_url=f"{embedder.url}/v1")
    for name in ("wiki", "clip"):
        res = client.embeddings.create(model=name, input=TEXTS, extra_body={"input_type": "query"})
        assert res.model == name
        items = TEXTS if name == "wiki" else [{"text": t} for t in TEXTS]
        want = encode_local(local[name], items, "query")
        got = np.asarray([d.embedding for d in res.data])
        assert got.shape == want.shape and np.abs(got - want).max() <= TOL
    listed = client.models.list()
    assert [m.id for m in listed.data] == ["clip", "wiki"]
    assert {m.owned_by for m in listed.data} == {"mmsearch"} and client.models.retrieve("wiki").id == "wiki"


def test_typed_client_routes_by_model(embedder: BentoServer, reranker: BentoServer, local: dict[str, Any]) -> None:
    with mmsearch_client.Client(embedder.url) as client:
        res = client.encode_query(TEXTS, model="wiki")
        assert res.model == "wiki" and res.dimensions == 24
        assert np.abs(np.asarray(res.embeddings) - encode_local(local["wiki"], TEXTS, "query")).max() <= TOL
        with pytest.raises(mmsearch_client.NotFoundError) as e:
            client.encode("x", model="nope")
        assert (e.value.code, e.value.field) == ("model_not_found", "model")
    with mmsearch_client.Client(reranker.url) as client:
        assert client.rerank("q", ["d"], model="vlm-rerank").model == "vlm-rerank"


def test_unknown_model_is_404_in_each_shape(embedder: BentoServer) -> None:
    native = post(embedder, "/encode", {"inputs": ["x"], "model": "nope"})
    assert native.status_code == 404, native.text
    assert native.json()["code"] == "model_not_found" and native.json()["field"] == "model"
    assert "served: clip, wiki" in native.json()["error"]
    upload = httpx.post(
        f"{embedder.url}/upload/encode",
        files=[("image", ("a.png", png_bytes(make_image(1)), "image/png"))],
        data={"model": "nope"},
        timeout=30,
    )
    assert upload.status_code == 404 and upload.json()["code"] == "model_not_found", upload.text
    client = openai.OpenAI(api_key="none", base_url=f"{embedder.url}/v1")
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("nope")
    assert e.value.code == "model_not_found"


def test_limits_and_modalities_are_the_chosen_models(embedder: BentoServer, local: dict[str, Any]) -> None:
    img = make_image(3)
    # an image: CLIP encodes it (also uploaded, routed by the form's model field); the text model refuses it
    for route in ("/encode", "/upload/encode"):
        if route == "/encode":
            r = post(embedder, route, {"inputs": [{"image": data_uri(img)}], "model": "clip"})
        else:
            files = [("image", ("a.png", png_bytes(img), "image/png"))]
            r = httpx.post(f"{embedder.url}{route}", files=files, data={"model": "clip"}, timeout=30)
        assert r.status_code == 200 and r.json()["model"] == "clip", r.text
        want = encode_local(local["clip"], [decode(png_bytes(img))], "document")
        assert np.abs(np.asarray(r.json()["embeddings"]) - want).max() <= TOL
    refused = post(embedder, "/encode", {"inputs": ["ok", {"image": data_uri(img)}], "model": "wiki"})
    assert refused.status_code == 422 and refused.json()["code"] == "unsupported_modality", refused.text
    assert refused.json()["field"] == "inputs[1]" and "model 'wiki' (supported: text)" in refused.json()["error"]
    # dimensions: at most each model's own
    assert post(embedder, "/encode", {"inputs": ["x"], "model": "wiki", "dimensions": 20}).status_code == 200
    over = post(embedder, "/encode", {"inputs": ["x"], "model": "clip", "dimensions": 20})
    assert over.status_code == 400 and "at most 16 for model 'clip'" in over.json()["error"], over.text
    # inputs per request: the text model's own limit (4); CLIP keeps the service's
    many = ["t"] * (WIKI_INPUTS + 1)
    assert post(embedder, "/encode", {"inputs": many, "model": "clip"}).status_code == 200
    too_many = post(embedder, "/encode", {"inputs": many, "model": "wiki"})
    assert too_many.status_code == 413 and too_many.json()["code"] == "too_many_inputs", too_many.text


def test_info_and_metrics_per_model(embedder: BentoServer) -> None:
    info = post(embedder, "/info", {}).json()
    assert (info["model"], info["dimension"], info["modalities"]) == ("clip", 16, ["text", "image"])
    by_name = {m["name"]: m for m in info["models"]}
    assert list(by_name) == ["clip", "wiki"]
    assert by_name["clip"]["default"] is True and by_name["wiki"]["default"] is False
    assert (by_name["wiki"]["dimension"], by_name["wiki"]["modalities"]) == (24, ["text"])
    assert (by_name["clip"]["max_tokens"], by_name["wiki"]["max_tokens"]) == (77, WIKI_TOKENS)
    assert by_name["wiki"]["max_inputs_per_request"] == WIKI_INPUTS
    assert by_name["wiki"]["loading"]["name"] == "wiki" and "/" not in str(by_name["wiki"]["loading"])
    for name in ("clip", "wiki"):
        assert post(embedder, "/encode", {"inputs": ["counted"], "model": name}).status_code == 200
        inputs = samples(embedder.url, "mmsearch_inputs_total", service="embedder", model=name)
        assert sum(v for _, v in inputs) >= 1, name
        batches = samples(embedder.url, "mmsearch_model_batch_size_count", service="embedder", model=name)
        assert sum(v for _, v in batches) >= 1, name
        assert samples(embedder.url, "mmsearch_queue_depth", service="embedder", model=name), name


# ------------------------------------------------------------------------------------------------- Reranker
def test_each_reranker_matches_sentence_transformers(reranker: BentoServer, local: dict[str, Any]) -> None:
    docs = ["the red car", "a cat photo", "blue dog"]
    for name in ("vlm-rerank", "text-rerank", None):
        r = post(reranker, "/rerank", {"query": "the cat", "documents": docs, **({"model": name} if name else {})})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == (name or "text-rerank")
        got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        model = name or "text-rerank"
        pairs = (
            [("the cat", d) for d in docs]
            if model == "text-rerank"
            else [({"text": "the cat"}, {"text": d}) for d in docs]
        )
        want = local[model].predict(pairs, convert_to_numpy=True)
        assert np.abs(np.asarray([got[i] for i in range(len(docs))]) - want).max() <= TOL, name
    img = make_image(5)
    image_pair = {"query": "a chart", "documents": [{"image": data_uri(img)}]}
    assert post(reranker, "/rerank", {**image_pair, "model": "vlm-rerank"}).status_code == 200
    refused = post(reranker, "/rerank", {**image_pair, "model": "text-rerank"})
    assert refused.status_code == 422 and "model 'text-rerank' (supported: text)" in refused.json()["error"]


def test_cohere_sdk_routes_by_model(reranker: BentoServer, local: dict[str, Any]) -> None:
    docs = ["alpha particle", "beta decay", "gamma ray"]
    want = local["vlm-rerank"].predict([({"text": "radiation"}, {"text": d}) for d in docs], convert_to_numpy=True)
    v2 = cohere.ClientV2(api_key="none", base_url=reranker.url)
    r2 = v2.rerank(model="vlm-rerank", query="radiation", documents=docs)
    assert all(abs(x.relevance_score - want[x.index]) <= TOL for x in r2.results)
    v1 = cohere.Client(api_key="none", base_url=reranker.url)
    r1 = v1.rerank(model="text-rerank", query="radiation", documents=docs)
    text_want = local["text-rerank"].predict([("radiation", d) for d in docs], convert_to_numpy=True)
    assert all(abs(x.relevance_score - text_want[x.index]) <= TOL for x in r1.results)
    with pytest.raises(cohere.NotFoundError) as e:
        v2.rerank(model="rerank-v3.5", query="q", documents=["d"])
    assert set(e.value.body) == {"id", "message"} and "no reranker named 'rerank-v3.5'" in e.value.body["message"]
    native = post(reranker, "/rerank", {"query": "q", "documents": ["d"], "model": "nope"})
    assert native.status_code == 404 and native.json()["code"] == "model_not_found"


def test_reranker_models_info_and_metrics(reranker: BentoServer) -> None:
    listed = httpx.get(f"{reranker.url}/v1/models", timeout=10).json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["vlm-rerank", "text-rerank"]
    info = post(reranker, "/info", {}).json()
    assert info["model"] == "text-rerank" and [m["name"] for m in info["models"]] == ["vlm-rerank", "text-rerank"]
    for name in ("vlm-rerank", "text-rerank"):
        assert post(reranker, "/rerank", {"query": "q", "documents": ["d"], "model": name}).status_code == 200
        counted = samples(reranker.url, "mmsearch_inputs_total", service="reranker", model=name)
        assert sum(v for _, v in counted) >= 1, name


# ------------------------------------------------------------------------------------------------- Search
@pytest.fixture(scope="module")
def search(
    tmp_path_factory: pytest.TempPathFactory, embedder: BentoServer, reranker: BentoServer
) -> Iterator[BentoServer]:
    """One Search wired to the two multi-model services by URL (each test uses its own collections)."""
    urls = {"MMSEARCH_EMBEDDER_URL": embedder.url, "MMSEARCH_RERANKER_URL": reranker.url, "MMSEARCH_OCR": "off"}
    yield from serve_wired_search(tmp_path_factory.mktemp("multi-search"), urls)


def test_search_uses_the_default_models(search: BentoServer, local: dict[str, Any]) -> None:
    """Search wired to the two multi-model services by URL: a collection created without ``model`` gets the
    default embedder (CLIP, 16-d), searches are reranked by the default reranker, ``/encode`` through Search
    forwards ``model``, and Search's ``/v1/models`` lists both services' models."""
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)]
    up = post(search, "/upsert", {"collection": "c", "documents": docs})
    assert up.status_code == 200, up.text
    found = post(search, "/search", {"collection": "c", "query": "red square", "top_k": 2, "rerank": True})
    assert found.status_code == 200, found.text
    hits = found.json()["hits"]
    assert found.json()["reranked"] is True and len(hits) == 2, found.text
    by_id = {d["id"]: d["text"] for d in docs}
    want = local["text-rerank"].predict([("red square", by_id[h["id"]]) for h in hits], convert_to_numpy=True)
    assert np.abs(np.asarray([h["score"] for h in hits]) - want).max() <= TOL
    (col,) = [c for c in post(search, "/collections", {}).json()["collections"] if c["name"] == "c"]
    assert (col["model"], col["dimension"]) == ("clip", 16)
    via = post(search, "/encode", {"inputs": ["x"], "model": "wiki"})
    assert via.status_code == 200 and via.json()["model"] == "wiki" and via.json()["dimensions"] == 24, via.text
    missing = post(search, "/encode", {"inputs": ["x"], "model": "nope"})
    assert missing.status_code == 404 and missing.json()["code"] == "model_not_found", missing.text
    client = openai.OpenAI(api_key="none", base_url=f"{search.url}/v1")
    assert [m.id for m in client.models.list().data] == ["clip", "wiki", "vlm-rerank", "text-rerank"]
    assert client.models.retrieve("text-rerank").id == "text-rerank"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("nope")
    assert e.value.code == "model_not_found"


def test_two_collections_on_two_models_in_one_search(search: BentoServer, local: dict[str, Any]) -> None:
    """Collections bound to their model: ``screens`` on the default CLIP (16-d), ``pages`` on the text model
    (24-d), the same texts in both. Each stores its model's vectors (parity with in-process sentence-transformers),
    each search embeds the query with its collection's model (the top hit's score is the cosine of the two local
    vectors) and says which collection and model answered; later upserts keep the collection's model, naming another
    is a 409 naming both, an unknown model is a 404; /collections and /info show each collection's model."""
    docs = [{"id": f"p{i}", "text": t} for i, t in enumerate(TEXTS)]
    assert post(search, "/upsert", {"collection": "screens", "documents": docs}).status_code == 200
    up = post(search, "/upsert", {"collection": "pages", "documents": docs, "model": "wiki"})
    assert up.status_code == 200, up.text
    cols = {c["name"]: c for c in post(search, "/collections", {}).json()["collections"]}
    assert (cols["screens"]["model"], cols["screens"]["dimension"]) == ("clip", 16)
    assert (cols["pages"]["model"], cols["pages"]["dimension"]) == ("wiki", 24)
    info = {c["name"]: c["model"] for c in post(search, "/info", {}).json()["collections"]}
    assert (info["screens"], info["pages"]) == ("clip", "wiki")
    for name, model in (("screens", "clip"), ("pages", "wiki")):
        got = post(search, "/get", {"collection": name, "ids": ["p1"], "include_embedding": True}).json()
        stored = np.asarray(got["documents"][0]["embedding"])
        want = encode_local(local[model], [TEXTS[1]], "document")[0]
        assert np.abs(stored - want).max() <= TOL, name
        found = post(search, "/search", {"collection": name, "query": TEXTS[1], "rerank": False, "mode": "vector"})
        assert found.status_code == 200, found.text
        body = found.json()
        assert (body["collection"], body["model"]) == (name, model)
        q = encode_local(local[model], [TEXTS[1]], "query")[0]
        assert body["hits"][0]["id"] == "p1" and abs(body["hits"][0]["score"] - float(q @ want)) <= 1e-4, name
    again = post(search, "/upsert", {"collection": "pages", "documents": [{"id": "n", "text": "new page"}]})
    assert again.status_code == 200, again.text
    new = post(search, "/get", {"collection": "pages", "ids": ["n"], "include_embedding": True}).json()
    assert len(new["documents"][0]["embedding"]) == 24
    refused = post(search, "/upsert", {"collection": "pages", "documents": docs[:1], "model": "clip"})
    assert refused.status_code == 409 and refused.json()["code"] == "collection_mismatch", refused.text
    assert "'wiki'" in refused.json()["error"] and "'clip'" in refused.json()["error"], refused.text
    unknown = post(search, "/upsert", {"collection": "other", "documents": docs[:1], "model": "nope"})
    assert unknown.status_code == 404 and unknown.json()["code"] == "model_not_found", unknown.text


def test_aliases_through_the_client_and_the_cli(search: BentoServer, capsys: pytest.CaptureFixture[str]) -> None:
    """An alias created with the CLI, switched atomically with the typed client from a CLIP collection to a text
    model's one: each search through it says which collection and model answered; an alias cannot shadow a
    collection, an aliased collection is not dropped, and a deleted alias is a 404 again."""
    from mmsearch_client.cli import main as cli

    docs = [{"id": f"a{i}", "text": t} for i, t in enumerate(TEXTS)]
    assert post(search, "/upsert", {"collection": "al_clip", "documents": docs}).status_code == 200
    assert post(search, "/upsert", {"collection": "al_wiki", "documents": docs, "model": "wiki"}).status_code == 200
    assert cli(["alias", "set", "al_live", "al_clip", "--url", search.url]) == 0
    assert "'al_live' -> 'al_clip'" in capsys.readouterr().out
    with mmsearch_client.Client(search.url) as client:
        first = client.search(TEXTS[1], collection="al_live", rerank=False, mode="vector")
        assert (first.collection, first.model, first.hits[0].id) == ("al_clip", "clip", "a1")
        assert client.set_alias("al_live", "al_wiki").previous == "al_clip"
        then = client.search(TEXTS[1], collection="al_live", rerank=False, mode="vector")
        assert (then.collection, then.model, then.hits[0].id) == ("al_wiki", "wiki", "a1")
        assert [d.id for d in client.get(["a1"], collection="al_live").documents] == ["a1"]
        assert ("al_live", "al_wiki") in [(a.alias, a.collection) for a in client.aliases().aliases]
        with pytest.raises(mmsearch_client.ConflictError) as e:
            client.set_alias("al_clip", "al_wiki")
        assert e.value.code == "alias_conflict"
        with pytest.raises(mmsearch_client.ConflictError) as e:
            client.drop_collection("al_wiki")
        assert e.value.code == "collection_aliased"
        assert "al_live" not in [c.name for c in client.collections().collections]
    assert cli(["alias", "delete", "al_live", "--url", search.url]) == 0
    gone = post(search, "/search", {"collection": "al_live", "query": "x", "rerank": False})
    assert gone.status_code == 404 and gone.json()["code"] == "collection_not_found", gone.text


def test_reindex_through_an_alias_under_search_load(search: BentoServer, local: dict[str, Any]) -> None:
    """``mmsearch reindex rx_live --model wiki``: a CLIP collection behind an alias is copied page by page into a
    collection bound to the text model, then the alias is switched, while a thread searches through the alias
    without pause. Every search succeeds and says it was answered by exactly one of the two collections with its
    own model; once the text model answered, CLIP never answers again; the copy holds every document, embedded by
    the text model (parity with sentence-transformers)."""
    import threading

    from mmsearch_client.cli import main as cli

    texts = [f"{t} {i}" for i in range(3) for t in TEXTS]
    docs = [{"id": f"r{i:02d}", "text": t, "metadata": {"n": i}} for i, t in enumerate(texts)]
    assert post(search, "/upsert", {"collection": "rx_clip", "documents": docs}).status_code == 200
    assert post(search, "/aliases/set", {"alias": "rx_live", "collection": "rx_clip"}).status_code == 200
    answers: list[tuple[int, str | None, str | None]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=search.url, timeout=60) as http:
            while not stop.is_set():
                try:
                    r = http.post("/search", json={"collection": "rx_live", "query": "red", "rerank": False})
                    body = r.json()
                except httpx.HTTPError as e:
                    answers.append((-1, type(e).__name__, None))
                    continue
                answers.append((r.status_code, body.get("collection"), body.get("model")))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        while len(answers) < 3:  # searches were under way before the reindex began
            stop.wait(0.05)
        # batches of 6 exceed the text model's 4 inputs per request: the copy splits them on its 413
        argv = ["reindex", "rx_live", "--model", "wiki", "--into", "rx_wiki", "--batch-size", "6"]
        assert cli([*argv, "--url", search.url]) == 0
        n = len(answers)
        for _ in range(1200):  # a few searches after the switch (at most 60 s)
            if len(answers) >= n + 3:
                break
            stop.wait(0.05)
    finally:
        stop.set()
        worker.join(timeout=120)
    assert answers and all(status == 200 for status, _, _ in answers), answers
    seen = [(c, m) for _, c, m in answers]
    assert set(seen) == {("rx_clip", "clip"), ("rx_wiki", "wiki")}, set(seen)
    first_wiki = seen.index(("rx_wiki", "wiki"))
    assert all(s == ("rx_wiki", "wiki") for s in seen[first_wiki:]), seen  # one switch, never back
    cols = {c["name"]: c for c in post(search, "/collections", {}).json()["collections"]}
    assert (cols["rx_wiki"]["model"], cols["rx_wiki"]["count"]) == ("wiki", len(docs))
    got = post(search, "/get", {"collection": "rx_live", "ids": ["r07"], "include_embedding": True}).json()
    (doc,) = got["documents"]
    assert (doc["text"], doc["metadata"]) == (texts[7], {"n": 7})
    want = encode_local(local["wiki"], [texts[7]], "document")[0]
    assert np.abs(np.asarray(doc["embedding"]) - want).max() <= TOL
