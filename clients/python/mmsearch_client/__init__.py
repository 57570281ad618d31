"""mmsearch client: typed sync/async access to the mmsearch multimodal retrieval service.

Plain strings are always text; images are explicit (:class:`Image`, ``pathlib.Path``, ``PIL.Image.Image``)::

    from pathlib import Path
    from mmsearch_client import Client, Document, Image, pair

    with Client("http://127.0.0.1:3000") as client:          # or $MMSEARCH_URL / $MMSEARCH_API_KEY
        vecs = client.encode_query(["a red bicycle", Image.url("https://example.com/bike.png")])
        print(vecs.dimensions, vecs.embeddings[0][:4])

        client.upsert([
            Document("d1", text="a red bicycle leaning on a wall"),
            Document("d2", image=Path("photos/bike.jpg"), metadata={"shop": "north"}),
            Document("d3", text="blue bike", image=Image.from_path("photos/blue.png")),
        ], collection="products")
        summary = client.upsert_many(many_documents, collection="products", batch_size=64)

        res = client.search("red bike", collection="products", top_k=5, rerank="auto",
                            filter={"shop": "north"})
        for hit in res.hits:
            print(hit.id, hit.score, hit.retrieval_score, hit.rerank_score)

        ranked = client.rerank("red bike", ["a red bicycle", pair("a bike", Path("bike.jpg"))], top_n=1)

Async: the same methods on :class:`AsyncClient` (``async with AsyncClient() as client: await ...``).
Errors: every failure is an :class:`MMSearchError`; HTTP errors are :class:`APIStatusError` subclasses
(``BadRequestError`` carries ``.field``, e.g. ``"inputs[3].image"``), transport failures
:class:`APIConnectionError` / :class:`APITimeoutError`. Connection errors, 429 and 503 are retried.
"""

from mmsearch_client._base import DEFAULT_BASE_URL, __version__
from mmsearch_client._client import AsyncClient, Client
from mmsearch_client.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    GatewayTimeoutError,
    InternalServerError,
    MMSearchError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    RequestTimeoutError,
    ServiceUnavailableError,
)
from mmsearch_client.inputs import Document, DocumentLike, Image, ImageLike, InputLike, content_id, pair
from mmsearch_client.results import BatchFailure, EncodeResult, HealthStatus, UpsertSummary
from mmsearch_client.schemas import (
    CalibrateResponse,
    CalibrationInfo,
    CalibrationQuery,
    CollectionInfo,
    CollectionsResponse,
    DeleteResponse,
    DropResponse,
    Evidence,
    GetResponse,
    Item,
    OcrLine,
    OcrResponse,
    OcrResult,
    RerankResponse,
    RerankResult,
    SearchHit,
    SearchMode,
    SearchResponse,
    SearchTimings,
    StoredDocument,
    UncalibrateResponse,
    UpsertResponse,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BatchFailure",
    "CalibrateResponse",
    "CalibrationInfo",
    "CalibrationQuery",
    "Client",
    "CollectionInfo",
    "CollectionsResponse",
    "ConflictError",
    "DeleteResponse",
    "Document",
    "DocumentLike",
    "DropResponse",
    "EncodeResult",
    "Evidence",
    "GatewayTimeoutError",
    "GetResponse",
    "HealthStatus",
    "Image",
    "ImageLike",
    "InputLike",
    "InternalServerError",
    "Item",
    "MMSearchError",
    "NotFoundError",
    "OcrLine",
    "OcrResponse",
    "OcrResult",
    "PayloadTooLargeError",
    "RateLimitError",
    "RequestTimeoutError",
    "RerankResponse",
    "RerankResult",
    "SearchHit",
    "SearchMode",
    "SearchResponse",
    "SearchTimings",
    "ServiceUnavailableError",
    "StoredDocument",
    "UncalibrateResponse",
    "UpsertResponse",
    "UpsertSummary",
    "__version__",
    "content_id",
    "pair",
]
