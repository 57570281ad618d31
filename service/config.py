"""All runtime configuration, read once from ``MMSEARCH_*`` environment variables.

Every setting is validated at start-up; a bad value stops the service with a message that names the variable.
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Defaults for real deployments. Weights are loaded from a hub id or a local path; nothing is downloaded in tests
# (they use MMSEARCH_PROFILE=tiny, which builds random tiny models locally).
DEFAULT_CPU_EMBEDDER = "sentence-transformers/clip-ViT-B-32"
DEFAULT_GPU_EMBEDDER = "Qwen/Qwen3-VL-Embedding-2B"
# CPU reranker default: no multimodal cross-encoder is small enough to be useful on CPU, so CPU deployments get a
# text cross-encoder (image pairs answer 4xx naming the supported modalities); GPUs get the VLM reranker.
DEFAULT_CPU_RERANKER = "cross-encoder/ms-marco-MiniLM-L6-v2"
DEFAULT_GPU_RERANKER = "Qwen/Qwen3-VL-Reranker-2B"


class Settings(BaseSettings):
    """Service settings; each field is the env var ``MMSEARCH_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="MMSEARCH_", extra="ignore", frozen=True)

    # --- models -------------------------------------------------------------------------------------------
    profile: Literal["default", "tiny"] = "default"
    """``tiny`` builds seeded random tiny models offline: smoke tests only, results are meaningless."""
    tiny_dir: Path = Path(os.path.expanduser("~/.cache/mmsearch/tiny"))
    embedder_model: str | None = None
    reranker_model: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    torch_threads: int = Field(default=1, ge=1, le=256)
    trust_remote_code: bool = False

    # --- batching and limits ------------------------------------------------------------------------------
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    max_latency_ms: int = Field(default=10_000, ge=1, le=600_000)
    """Longest an input may wait in the batch queue before the request is answered 503 (with Retry-After)."""
    max_queue_size: int = Field(default=4096, ge=1)
    """Inputs waiting per model service; beyond it requests are refused with 429 and Retry-After."""
    max_inputs_per_request: int = Field(default=256, ge=1, le=100_000)
    max_documents_per_request: int = Field(default=256, ge=1, le=100_000)
    max_text_chars: int = Field(default=32_768, ge=1)
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

    # --- media fetching -----------------------------------------------------------------------------------
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
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
    ann_threshold: int = Field(default=50_000, ge=1)
    embedder_url: str | None = None
    reranker_url: str | None = None
    max_candidates: int = Field(default=1000, ge=1)
    rerank_timeout_s: float = Field(default=10.0, gt=0)
    """Longest Search waits for the reranker; past it ``rerank: "auto"`` degrades to retrieval-only hits."""

    @field_validator("fetch_allow", "image_formats", mode="before")
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

    def api_keys_list(self) -> list[str]:
        """Every configured API key (from ``api_keys`` and ``api_keys_file``), blanks dropped."""
        keys = [k.strip() for k in (self.api_keys or "").split(",")]
        if self.api_keys_file is not None:
            keys += [line.strip() for line in self.api_keys_file.read_text().splitlines()]
        return [k for k in keys if k and not k.startswith("#")]

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def embedder_model_id(self) -> str:
        if self.embedder_model:
            return self.embedder_model
        return DEFAULT_GPU_EMBEDDER if self.resolved_device() == "cuda" else DEFAULT_CPU_EMBEDDER

    def reranker_model_id(self) -> str:
        if self.reranker_model:
            return self.reranker_model
        return DEFAULT_GPU_RERANKER if self.resolved_device() == "cuda" else DEFAULT_CPU_RERANKER


class ConfigError(RuntimeError):
    """Raised at start-up when an ``MMSEARCH_*`` variable is invalid."""


def load_settings() -> Settings:
    """Read and validate settings from the environment, raising ``ConfigError`` with every bad variable named."""
    try:
        return Settings()
    except ValidationError as e:
        lines = [f"  MMSEARCH_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in e.errors()]
        raise ConfigError("invalid mmsearch configuration:\n" + "\n".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (validated once)."""
    return load_settings()
