"""What both framework retrievers share: the query (text, image or both) and hits as content plus metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmsearch_client.inputs import Image, InputLike, pair
from mmsearch_client.schemas import SearchHit

ImageQuery = Image | Path | None
SEARCH_OPTIONS = ("collection", "top_k", "candidates", "rerank", "filter", "timeout")


def search_params(retriever: object, text: str | None, image: ImageQuery, **overrides: Any) -> dict[str, Any]:
    """``Client.search`` arguments: the retriever's options (attributes named as ``SEARCH_OPTIONS``), then the
    per-call ``overrides``, and the query."""
    unknown = set(overrides) - set(SEARCH_OPTIONS)
    if unknown:
        raise TypeError(f"unknown search arguments: {', '.join(sorted(unknown))}")
    params = {name: getattr(retriever, name) for name in SEARCH_OPTIONS}
    params.update(overrides)
    params["query"] = query_input(text, image)
    return params


def query_input(text: str | None, image: ImageQuery) -> InputLike:
    """The search query: text, an image (``Image`` or a local ``Path``), or both. A ``str`` is always text."""
    if image is None:
        if not text:
            raise ValueError("give a query text, an image, or both")
        return text
    img = image if isinstance(image, Image) else Image.from_path(image)
    return pair(text, img) if text else img


def image_url(ref: str | None, base_url: str) -> str | None:
    """A stored image as a URL a browser or an LLM can fetch (``media://x`` is served at ``/media/x``)."""
    if ref is not None and ref.startswith("media://"):
        return f"{base_url}/media/{ref.removeprefix('media://')}"
    return ref


def hit_metadata(hit: SearchHit, base_url: str, collection: str) -> dict[str, Any]:
    """The document's own metadata plus where it came from and its scores (``rerank_score`` None if not reranked)."""
    return {
        **hit.metadata,
        "id": hit.id,
        "collection": collection,
        "score": hit.score,
        "retrieval_score": hit.retrieval_score,
        "rerank_score": hit.rerank_score,
        "image_url": image_url(hit.image, base_url),
    }
