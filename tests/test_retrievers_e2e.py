"""The LangChain and LlamaIndex retrievers (``mmsearch-client[langchain]`` / ``[llamaindex]``) against the real
composed bento: same hits as the client's own search, filters, image queries, rerank on and off, sync and async."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import QueryBundle
from mmsearch_client import Client
from mmsearch_client import Document as MDocument
from mmsearch_client.integrations.langchain import MMSearchRetriever as LangChainRetriever
from mmsearch_client.integrations.llamaindex import MMSearchRetriever as LlamaIndexRetriever

from bench.support.images import make_image
from bench.support.servers import BentoServer

pytestmark = pytest.mark.e2e
COLLECTION = "rag_retrievers"
TEXTS = {"t-rev": "Q3 revenue dashboard", "t-road": "product roadmap slide", "t-login": "login page with an error"}


@pytest.fixture(scope="module")
def corpus(search_server: BentoServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rag")
    for i in range(3):
        make_image(20 + i).save(root / f"shot{i}.png")
    docs = [
        MDocument("t-rev", text=TEXTS["t-rev"], metadata={"team": "finance", "year": 2026}),
        MDocument("t-road", text=TEXTS["t-road"], metadata={"team": "product", "year": 2025}),
        MDocument("t-login", text=TEXTS["t-login"], metadata={"team": "product", "year": 2026}),
        *(MDocument(f"i{i}", image=root / f"shot{i}.png", metadata={"team": "design", "year": 2026}) for i in range(3)),
    ]
    with Client(search_server.url) as client:
        assert client.upsert(docs, collection=COLLECTION).upserted == 6
    return root


def expected(server: BentoServer, query: object, **kw: object) -> list[tuple[str, float]]:
    with Client(server.url) as client:
        res = client.search(query, collection=COLLECTION, **kw)  # type: ignore[arg-type]
    return [(h.id, h.score) for h in res.hits]


def lc_pairs(docs: list[Document]) -> list[tuple[str, float]]:
    return [(str(d.metadata["id"]), float(d.metadata["score"])) for d in docs]


def test_langchain_retriever(search_server: BentoServer, corpus: Path) -> None:
    retriever = LangChainRetriever(url=search_server.url, collection=COLLECTION, top_k=3)
    docs = retriever.invoke("revenue")
    assert lc_pairs(docs) == pytest.approx(expected(search_server, "revenue", top_k=3))
    top = docs[0]
    assert top.id == top.metadata["id"] and top.metadata["rerank_score"] is not None
    assert all(d.metadata["collection"] == COLLECTION for d in docs)
    assert [d.page_content for d in docs] == [TEXTS.get(str(d.id), "") for d in docs]
    assert all(d.metadata["team"] in {"finance", "product", "design"} for d in docs)

    filtered = retriever.invoke("revenue", filter={"team": "product"}, rerank=False, top_k=5)
    assert {d.metadata["id"] for d in filtered} == {"t-road", "t-login"}
    assert all(d.metadata["rerank_score"] is None for d in filtered)

    by_image = retriever.invoke("", image=corpus / "shot1.png", rerank=False)
    assert by_image[0].metadata["id"] == "i1"  # the same image: cosine 1
    assert by_image[0].metadata["image_url"].startswith(f"{search_server.url}/media/")
    assert by_image[0].page_content == ""

    got = asyncio.run(retriever.ainvoke("login", filter={"year": {"$gte": 2026}}))
    assert lc_pairs(got) == pytest.approx(expected(search_server, "login", top_k=3, filter={"year": {"$gte": 2026}}))
    with pytest.raises(TypeError):
        retriever.invoke("x", not_an_option=1)


def test_llamaindex_retriever(search_server: BentoServer, corpus: Path) -> None:
    retriever = LlamaIndexRetriever(search_server.url, collection=COLLECTION, top_k=4, rerank=False)
    nodes = retriever.retrieve("roadmap")
    assert [(n.node.node_id, n.score) for n in nodes] == pytest.approx(
        expected(search_server, "roadmap", top_k=4, rerank=False)
    )
    assert all(n.node.metadata["rerank_score"] is None for n in nodes)

    reranked = LlamaIndexRetriever(search_server.url, collection=COLLECTION, top_k=2, filter={"team": "design"})
    nodes = reranked.retrieve(QueryBundle(query_str="", image_path=str(corpus / "shot2.png")))
    assert {n.node.node_id for n in nodes} <= {"i0", "i1", "i2"} and len(nodes) == 2
    assert all(n.node.metadata["rerank_score"] is not None for n in nodes)
    assert [n.score for n in nodes] == [n.node.metadata["rerank_score"] for n in nodes]

    anodes = asyncio.run(retriever.aretrieve("login page"))
    assert [n.node.node_id for n in anodes] == [
        i for i, _ in expected(search_server, "login page", top_k=4, rerank=False)
    ]
    assert [n.node.get_content() for n in anodes] == [TEXTS.get(n.node.node_id, "") for n in anodes]
