"""The mmsearch wire schema: request and response models shared by the services and the client.

This module is the single definition of the native HTTP contract. The services import it, and the client re-exports
it (``mmsearch_client.schemas``); nothing else keeps a copy. The OpenAI/Cohere compatibility models are the
services' own (``service/compat.py``): the client never speaks those dialects.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from mmsearch_schema import fields

__all__ = [
    "MAX_CALIBRATION_CANDIDATES",
    "MAX_CALIBRATION_QUERIES",
    "MAX_CALIBRATION_RELEVANT",
    "AliasDeleteRequest",
    "AliasDeleteResponse",
    "AliasInfo",
    "AliasRequest",
    "AliasResponse",
    "AliasesResponse",
    "CalibrateRequest",
    "CalibrateResponse",
    "CalibrationInfo",
    "CalibrationPair",
    "CalibrationQuery",
    "CollectionInfo",
    "CollectionName",
    "CollectionsResponse",
    "DeleteRequest",
    "DeleteResponse",
    "DocumentId",
    "DropRequest",
    "DropResponse",
    "EncodeRequest",
    "EncodeResponse",
    "EncodingFormat",
    "ErrorBody",
    "Evidence",
    "GetRequest",
    "GetResponse",
    "HybridOptions",
    "IdsRequest",
    "IdsResponse",
    "InputType",
    "Item",
    "ItemLike",
    "MediaKind",
    "MetadataValue",
    "Modality",
    "OcrLine",
    "OcrRequest",
    "OcrResponse",
    "OcrResult",
    "RerankRequest",
    "RerankResponse",
    "RerankResult",
    "SearchHit",
    "SearchMode",
    "SearchRequest",
    "SearchResponse",
    "SearchTimings",
    "SearchWarning",
    "StoredDocument",
    "UncalibrateRequest",
    "UncalibrateResponse",
    "UpsertDocument",
    "UpsertRequest",
    "UpsertResponse",
    "as_item",
]

InputType = Literal["query", "document"]
SearchMode = Literal["vector", "keyword", "hybrid"]
EncodingFormat = Literal["float", "base64"]
Modality = Literal["text", "image", "text+image", "audio", "video", "text+audio", "text+video"]
MediaKind = Literal["image", "audio", "video"]

DocumentId = Annotated[str, AfterValidator(fields.check_id)]


class Item(BaseModel):
    """One input: text, one medium (an image, an audio clip or a video), or text with one medium.

    ``image`` is an ``http(s)://`` URL (fetched by the server under its media policy), a
    ``data:image/...;base64,`` URI or a stored image's ``media://<sha256>.<ext>``
    reference. ``audio`` and ``video`` are an ``http(s)://`` URL or a ``data:audio/...;base64,`` /
    ``data:video/...;base64,`` URI or a stored clip's ``media://`` reference (decoded by the server under its
    audio/video limits, for models that take the modality). A plain string given where an ``Item`` is accepted
    always means text.
    """

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    image: str | None = None
    audio: str | None = None
    video: str | None = None
    t0: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    """With ``audio`` or ``video``: encode only the clip's time range from ``t0`` to ``t1`` seconds (a segment)."""
    t1: float | None = Field(default=None, ge=0, allow_inf_nan=False)  # > t0 (checked below); not gt: OpenAPI 3.0

    @field_validator("audio", "video")
    @classmethod
    def _av_ref(cls, v: str | None, info: ValidationInfo) -> str | None:
        return fields.check_av_ref(v, str(info.field_name)) if v is not None else None

    @model_validator(mode="after")
    def _not_empty(self) -> Item:
        media = [k for k in ("image", "audio", "video") if getattr(self, k) is not None]
        if self.text is None and not media:
            raise ValueError("an item needs 'text', 'image', 'audio' or 'video'")
        if len(media) > 1:
            raise ValueError(f"an item holds one medium, with or without text (got {' and '.join(media)})")
        if (self.t0 is None) != (self.t1 is None):
            raise ValueError("a time range needs both 't0' and 't1'")
        if self.t0 is not None and self.t1 is not None:
            if self.media not in ("audio", "video"):
                raise ValueError("a time range ('t0', 't1') applies to 'audio' or 'video' only")
            if self.t0 >= self.t1:
                raise ValueError(f"'t0' must be before 't1' (got {self.t0:g} and {self.t1:g})")
        return self

    @property
    def window(self) -> tuple[float, float] | None:
        """The time range to encode, ``(t0, t1)`` s (``None``: the whole clip)."""
        return (self.t0, self.t1) if self.t0 is not None and self.t1 is not None else None

    @property
    def media(self) -> MediaKind | None:
        """Which medium the item holds (``None``: text only)."""
        if self.image is not None:
            return "image"
        if self.audio is not None:
            return "audio"
        return "video" if self.video is not None else None

    @property
    def modality(self) -> Modality:
        media = self.media
        if media is None:
            return "text"
        if self.text is None:
            return media
        return _WITH_TEXT[media]


_WITH_TEXT: dict[MediaKind, Modality] = {"image": "text+image", "audio": "text+audio", "video": "text+video"}

ItemLike = Annotated[str | Item, Field(union_mode="left_to_right")]


def as_item(value: str | Item) -> Item:
    """Normalise a plain string (always text) or an ``Item`` to an ``Item``."""
    return Item(text=value) if isinstance(value, str) else value


# --------------------------------------------------------------------------------------------------- errors
class ErrorBody(BaseModel):
    """Every error the services answer: ``error`` is human-readable, ``code`` machine-readable.

    ``field`` is the request path at fault, e.g. ``inputs[3].image``.
    """

    error: str
    code: str = "error"
    field: str | None = None


# --------------------------------------------------------------------------------------------------- embedder
class EncodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[ItemLike] = Field(min_length=1, description="Texts (plain strings) and/or items.")
    input_type: InputType = "document"
    normalize: bool = True
    dimensions: int | None = Field(default=None, ge=1, description="Truncate (Matryoshka) to this many dims.")
    encoding_format: EncodingFormat = "float"
    timeout: float | None = Field(default=None, ge=0.0001, le=600, description="Deadline in seconds (504 after).")
    model: str | None = Field(default=None, description="The served embedder to use (default: the default model).")


class EncodeResponse(BaseModel):
    embeddings: list[list[float]] | list[str]
    """Float vectors, or base64 of little-endian float32 when ``encoding_format="base64"``."""
    model: str
    dimensions: int


# --------------------------------------------------------------------------------------------------- reranker
class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: ItemLike
    documents: list[ItemLike] = Field(description="Candidates to score against the query (may be empty).")
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    timeout: float | None = Field(default=None, ge=0.0001, le=600, description="Deadline in seconds (504 after).")
    model: str | None = Field(default=None, description="The served reranker to use (default: the default model).")


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: Item | None = None


class RerankResponse(BaseModel):
    results: list[RerankResult]
    model: str


# --------------------------------------------------------------------------------------------------- reader
class OcrRequest(BaseModel):
    """Read the text in images (``POST /ocr``): every input needs an ``image``."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[ItemLike] = Field(min_length=1, description="Items with an image (URL or data URI).")
    input_type: InputType = "document"
    """``query`` inputs are read before queued ``document`` inputs (bulk ingest)."""
    timeout: float | None = Field(default=None, ge=0.0001, le=600, description="Deadline in seconds (504 after).")


class OcrLine(BaseModel):
    """One recognised line of text and where it is: ``box`` is ``[x0, y0, x1, y1]`` in image pixels."""

    text: str
    box: list[float] = Field(min_length=4, max_length=4)
    score: float


class OcrResult(BaseModel):
    text: str
    """The lines in reading order, joined by newlines."""
    lines: list[OcrLine]
    width: int
    height: int


class OcrResponse(BaseModel):
    results: list[OcrResult]
    model: str


# --------------------------------------------------------------------------------------------------- search
MetadataValue = str | int | float | bool | list[str | int | float | bool] | None


CollectionName = Annotated[str, AfterValidator(fields.check_collection_name)]
"""A collection's name, checked by the one rule (:func:`mmsearch_schema.fields.check_collection_name`)."""


class UpsertDocument(BaseModel):
    """A document to index: text, an image, or both, with optional metadata and a precomputed embedding."""

    model_config = ConfigDict(extra="forbid")

    id: DocumentId
    text: str | None = None
    image: str | None = None
    audio: str | None = None
    """An audio clip (``http(s)://`` URL, ``data:audio/...;base64,`` URI or a stored ``media://`` clip): fetched once,
    stored by Search, embedded by the Embedder; a clip longer than the server's segment length is indexed as
    segments (hits name the best one's ``t0``/``t1``)."""
    video: str | None = None
    """A video, as ``audio``; each segment also gets a keyframe ``thumbnail``."""
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    embedding: list[float] | None = None
    modality: Literal["text", "image", "text+image"] | None = None
    """Set from the content at ingest (``text``, ``image``, ``text+image``); a document with only an ``embedding``
    may declare the modality it was embedded from (else it is stored unlabelled). Must agree with the content."""

    _v_metadata = field_validator("metadata")(fields.check_metadata)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return fields.check_stored_text(v, "text")

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        if v is not None and not v[:5].lower().startswith("data:"):  # inline images are stored by hash
            fields.check_stored_text(v, "image")
        return v

    @field_validator("audio", "video")
    @classmethod
    def _av_ref(cls, v: str | None, info: ValidationInfo) -> str | None:
        return fields.check_av_ref(v, str(info.field_name)) if v is not None else None

    @model_validator(mode="after")
    def _has_content(self) -> UpsertDocument:
        media = [k for k in ("image", "audio", "video") if getattr(self, k) is not None]
        if self.text is None and not media and self.embedding is None:
            raise ValueError("a document needs 'text', 'image', 'audio', 'video' or 'embedding'")
        if len(media) > 1:
            raise ValueError(f"a document holds one medium, with or without text (got {' and '.join(media)})")
        if media and media[0] != "image" and (self.embedding is not None or self.modality is not None):
            raise ValueError("an audio or video document is embedded by the server (no 'embedding' or 'modality')")
        fields.check_declared_modality(self.text, self.image, self.modality)
        return self

    @property
    def media(self) -> MediaKind | None:
        """Which medium the document holds (``None``: none)."""
        return (
            "image"
            if self.image is not None
            else "audio"
            if self.audio is not None
            else ("video" if self.video is not None else None)
        )


class UpsertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: CollectionName = "default"
    documents: list[UpsertDocument] = Field(min_length=1)
    model: str | None = Field(
        default=None,
        max_length=200,
        description="The embedder a new collection is bound to (default: the Embedder's default model); for an "
        "existing collection it must be the one the collection holds (409 collection_mismatch otherwise).",
    )


class UpsertResponse(BaseModel):
    collection: str
    upserted: int
    ids: list[str]
    ocr_images: int = 0
    """Images whose text was read (OCR) for this request."""
    ocr_lines: int = 0
    """Lines of text they held."""


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: CollectionName = "default"
    ids: list[DocumentId] = Field(min_length=1)


class DeleteResponse(BaseModel):
    collection: str
    deleted: int


class DropRequest(BaseModel):
    """Drop a whole collection: its documents and its index (not undoable)."""

    model_config = ConfigDict(extra="forbid")

    collection: CollectionName


class DropResponse(BaseModel):
    collection: str
    dropped: bool
    """False only when the client asked ``missing_ok`` and the collection did not exist."""


class GetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: CollectionName = "default"
    ids: list[DocumentId] = Field(min_length=1)
    include_embedding: bool = False


class IdsRequest(BaseModel):
    """One page of a collection's document ids, in id order: the ids after ``after`` (None: from the first)."""

    model_config = ConfigDict(extra="forbid")

    collection: CollectionName = "default"
    after: str | None = Field(default=None, max_length=1000)
    limit: int = Field(default=100, ge=1, le=1000)


class IdsResponse(BaseModel):
    collection: str
    """The collection read (an alias resolved)."""
    ids: list[str]
    next: str | None = None
    """Pass as ``after`` for the next page; None: this was the last."""


class StoredDocument(BaseModel):
    id: str
    text: str | None = None
    image: str | None = None
    """The stored copy of the image (``media://<sha256>.<ext>``)."""
    source: str | None = None
    """The URL the image was fetched from at ingest."""
    thumbnail: str | None = None
    """A preview path under ``/media/``."""
    audio: str | None = None
    """The stored copy of an audio document's clip (``media://<sha256>.<ext>``)."""
    video: str | None = None
    """The stored copy of a video document's clip (``media://<sha256>.<ext>``)."""
    segments: int | None = None
    """An audio or video document's segments (one vector each; 1 for a clip within one segment)."""
    duration: float | None = None
    """An audio or video document's length in seconds (the end of its last segment)."""
    ocr_text: str | None = None
    modality: str = ""
    """``text``, ``image``, ``text+image``, or an embedding-only document's declared modality (``""``: none)."""
    """The text read from the image at ingest (when OCR is on), lines in reading order."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    embedding: list[float] | None = None


class GetResponse(BaseModel):
    collection: str
    documents: list[StoredDocument]


MAX_CALIBRATION_QUERIES = 1000
MAX_CALIBRATION_RELEVANT = 1000
MAX_CALIBRATION_CANDIDATES = 1000


class CalibrationQuery(BaseModel):
    """A labelled query: its text and/or image and the ids of the documents relevant to it."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    image: str | None = None
    relevant: list[DocumentId] = Field(min_length=1, max_length=MAX_CALIBRATION_RELEVANT)

    @model_validator(mode="after")
    def _content(self) -> CalibrationQuery:
        if not self.text and not self.image:
            raise ValueError("a calibration query needs text or image")
        return self


class CalibrateRequest(BaseModel):
    """Fit a per-modality-pair score calibration from labelled queries and store it with the collection."""

    model_config = ConfigDict(extra="forbid")

    collection: CollectionName = "default"
    queries: list[CalibrationQuery] = Field(min_length=1, max_length=MAX_CALIBRATION_QUERIES)
    method: Literal["platt", "isotonic"] = "platt"
    name: str = Field(default="", max_length=200)
    """What the labelled set is called (shown by ``/collections``)."""
    candidates: int = Field(default=50, ge=1, le=MAX_CALIBRATION_CANDIDATES)
    """Candidates drawn per document modality and query; with the relevant documents, the fitting samples."""


class CalibrationPair(BaseModel):
    samples: int
    positives: int


class CalibrationInfo(BaseModel):
    """A collection's calibration: the set it was fitted on and what each modality pair got."""

    set: str
    queries: int
    method: str
    created: str
    pairs: dict[str, CalibrationPair]
    """``"<query modality>-><document modality>"`` -> samples and relevant samples it was fitted on."""
    skipped: dict[str, str] = Field(default_factory=dict)
    """Pairs seen but not fitted, with why (too few relevant or non-relevant samples)."""


class CalibrateResponse(BaseModel):
    collection: str
    calibration: CalibrationInfo


class UncalibrateRequest(BaseModel):
    """Remove a collection's score calibration: ``/search`` then scores it as an uncalibrated one."""

    model_config = ConfigDict(extra="forbid")

    collection: CollectionName = "default"


class UncalibrateResponse(BaseModel):
    collection: str
    removed: bool
    """False when the collection had no calibration (informative only: a retry after a lost answer sees it gone)."""


class CollectionInfo(BaseModel):
    name: str
    count: int
    dimension: int
    model: str
    """The embedder the collection is bound to: every upsert and search embeds with it."""
    revision: str | None = None
    """The model's revision when the collection was created (when the Embedder's /info gave one)."""
    calibration: CalibrationInfo | None = None
    """Set when the collection is calibrated (``POST /calibrate``)."""


class CollectionsResponse(BaseModel):
    collections: list[CollectionInfo]


class AliasRequest(BaseModel):
    """Point ``alias`` at ``collection`` (created, or replaced in one atomic switch)."""

    model_config = ConfigDict(extra="forbid")

    alias: CollectionName
    collection: CollectionName


class AliasResponse(BaseModel):
    alias: str
    collection: str
    previous: str | None = None
    """The collection the alias pointed at before (None: new alias)."""


class AliasDeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: CollectionName


class AliasDeleteResponse(BaseModel):
    alias: str
    deleted: bool


class AliasInfo(BaseModel):
    alias: str
    collection: str


class AliasesResponse(BaseModel):
    aliases: list[AliasInfo]


class HybridOptions(BaseModel):
    """How hybrid retrieval fuses the vector and keyword candidate lists (defaults: the server's settings)."""

    model_config = ConfigDict(extra="forbid")

    fusion: Literal["coverage", "rrf"] | None = None
    """``coverage``: scaled cosine + keyword_weight x (share of query terms the document contains)^2, a share under
    half counting 0;
    ``rrf``: reciprocal rank fusion of the two lists (the vector list weighs 1)."""
    keyword_weight: float | None = Field(default=None, ge=0, le=100)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: CollectionName = "default"
    query: ItemLike
    top_k: int = Field(default=10, ge=1, le=1000)
    candidates: int = Field(default=50, ge=1, description="Shortlist size retrieved before reranking.")
    mode: SearchMode | None = None
    """``vector`` (embeddings), ``keyword`` (BM25 over text and OCR text) or ``hybrid`` (both, fused). Default:
    ``hybrid`` when the index can do keyword search and the collection holds text, else ``vector``."""
    hybrid: HybridOptions | None = None
    rerank: bool | Literal["auto"] | None = None
    """``true``: rerank or fail (503); ``false``: retrieval only; ``"auto"``: rerank if the reranker answers.
    Default: rerank when a reranker is configured (like ``true``), else retrieval only (a warning says so)."""
    filter: dict[str, Any] | None = None
    """Metadata conditions (``{"key": value}``, ``$in``, ``$ne``, ranges), and ``"$modality"`` for the document
    modality (``"text"``, ``"image"``, ``"text+image"``, ``"audio"``, ``"video"``, ``"text+audio"``,
    ``"text+video"``)."""
    balance: Literal["auto", "off"] = "auto"
    """``auto``: when the collection holds more than one document modality, draw candidates per modality and fuse
    them on a shared scale, each keeping a minimum share (the modality gap cannot crowd one out); ``off``: one
    top-``candidates`` by raw cosine."""
    segments: Literal["best", "all"] = "best"
    """Audio and video documents indexed as segments: ``best`` returns each document once, at its best segment
    (``t0``/``t1``); ``all`` returns every matching segment as its own hit (the document's id repeats)."""
    min_score: float | None = Field(default=None, ge=-1, le=1)
    """Drop vector candidates scoring below it (before reranking): on a calibrated collection the calibrated
    probability of relevance (one threshold means the same for every modality), else the raw cosine. Candidates
    found by keyword only are kept."""
    timeout: float | None = Field(default=None, ge=0.0001, le=600, description="Deadline in seconds.")

    # candidates < top_k: the server shortlists top_k candidates (the shortlist is never smaller than the answer).


class Evidence(BaseModel):
    """A line of the document that contains query terms: from its ``text``, or read from its image (``ocr``,
    with ``box`` = ``[x0, y0, x1, y1]`` in the image's pixels)."""

    source: Literal["ocr", "text"]
    text: str
    box: list[float] | None = None


class SearchHit(BaseModel):
    id: str
    score: float
    """Rerank score when reranked, else the retrieval score."""
    retrieval_score: float
    """The mode's score: cosine (vector), BM25 (keyword) or the fused score (hybrid)."""
    vector_score: float | None = None
    """Cosine similarity, when the document was a vector candidate."""
    keyword_score: float | None = None
    """BM25, when the document was a keyword candidate."""
    rerank_score: float | None = None
    fused_score: float | None = None
    """The score by which vector candidates were ordered and shortlisted when it is not the raw cosine: with
    balanced retrieval (``balanced`` in the response) the score on the scale all modalities share (the
    per-modality standardised cosine, or the calibrated probability of relevance); with the redundancy penalty
    (``MMSEARCH_REDUNDANCY_WEIGHT``, on in the lite profile) the cosine less the penalty. ``score`` and
    ``vector_score`` keep the raw cosine."""
    calibrated_score: float | None = None
    """On a calibrated collection: the probability of relevance of the vector score for this (query modality ->
    document modality) pair, which ``min_score`` compares."""
    modality: str = ""
    """The document's modality: ``text``, ``image``, ``text+image`` (``""``: an unlabelled embedding-only one)."""
    text: str | None = None
    image: str | None = None
    """The stored copy of the document's image: ``media://<sha256>.<ext>`` (GET ``/media/<sha256>.<ext>``)."""
    source: str | None = None
    """The URL the image was fetched from at ingest (never fetched again)."""
    thumbnail: str | None = None
    """A preview (longest side at most 256 px) to GET on the service, e.g. ``/media/<sha256>.thumb.jpeg``; for a
    video hit, the keyframe at the start of its segment (``/media/<sha256>.t<ms>.thumb.jpeg``)."""
    audio: str | None = None
    """An audio document's stored clip (``media://<sha256>.<ext>``, GET ``/media/<sha256>.<ext>``)."""
    video: str | None = None
    """A video document's stored clip."""
    t0: float | None = None
    """Audio or video: where the matching segment starts, in seconds (the best one of the document when grouped)."""
    t1: float | None = None
    """Where it ends."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    evidence: list[Evidence] = Field(default_factory=list)
    """The lines that contain query terms (best first): where in a screenshot the answer is."""


class SearchWarning(BaseModel):
    """Something the search could not do without failing, e.g. rerank (``id``: the document concerned, if one)."""

    id: str | None = None
    code: str
    message: str


class SearchTimings(BaseModel):
    read: float = 0.0
    """Reading the query image's text (OCR), when needed."""
    embed: float
    retrieve: float
    rerank: float
    total: float


class SearchResponse(BaseModel):
    hits: list[SearchHit]
    mode: SearchMode = "vector"
    """The retrieval mode that ran."""
    reranked: bool
    balanced: bool = False
    """Whether candidates were drawn per document modality and fused (``balance: "auto"`` on a mixed
    collection)."""
    timings_ms: SearchTimings
    warnings: list[SearchWarning] = Field(default_factory=list)
    collection: str | None = None
    """The collection that answered (an alias is resolved to its collection once, at the start)."""
    model: str | None = None
    """The embedder that collection is bound to (the query was embedded with it)."""
