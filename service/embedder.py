"""Embedder service: text, images and text+image documents -> vectors in one space."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Sequence
from typing import Any

import bentoml
import numpy as np
from mmsearch_client.schemas import EncodeRequest, EncodeResponse, InputType, Item
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import lifecycle
from service.bento_options import model_service_options, validated
from service.compat import (
    OpenAIEmbedding,
    OpenAIEmbeddingsRequest,
    OpenAIEmbeddingsResponse,
    OpenAIUsage,
    estimate_tokens,
)
from service.config import get_settings
from service.errors import bad_request, handle_api_errors
from service.inputs import ModelInput, check_av_count, check_count, item_paths, resolve_items
from service.middleware import install as install_middleware
from service.models import load_embedder, load_or_exit
from service.runtime import DOCUMENT_PRIORITY, QUERY_PRIORITY, ModelRuntime
from service.uploads import read_upload_form


def postprocess(emb: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Truncate to ``dimensions`` (Matryoshka), then L2-normalise if asked."""
    out = emb[:, :dimensions] if dimensions else emb
    out = out.astype(np.float32, copy=True)
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, 1e-12)
    return out


def encode_vectors(emb: np.ndarray, encoding_format: str) -> list[list[float]] | list[str]:
    if encoding_format == "base64":
        return [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in emb]
    return [row.tolist() for row in emb]


async def _upload_encode(request: Request) -> Response:
    """``POST /upload/encode``: multipart image files (``image``, repeated), optional paired ``text`` fields."""
    svc: Embedder = bentoml.get_current_service()
    return await svc.encode_upload(request)


upload_app = Starlette(routes=[Route("/encode", _upload_encode, methods=["POST"])])


@bentoml.asgi_app(upload_app, path="/upload")
@bentoml.service(name="Embedder", **model_service_options())
class Embedder:
    """Encodes inputs with the query or document prompt of a sentence-transformers model, batched adaptively."""

    _arm_fatal_exit = bentoml.on_deployment(lifecycle.arm)

    def __init__(self) -> None:
        self.settings = get_settings()
        self.adapter = load_or_exit(load_embedder, self.settings)
        self.spec = self.settings.model_spec("embedder")
        # lanes are (input_type, modality): one prompt per batch, and CLIP cannot mix text and images
        self.model_name = self.adapter.name
        self.modalities = self.adapter.modalities
        self.text_only = self.modalities == ["text"]
        self.dimension = self.adapter.dimension
        self.runtime: ModelRuntime[Any, np.ndarray] = ModelRuntime("embedder", self.settings, self.adapter)

    async def embed(
        self, inputs: Sequence[ModelInput], input_type: InputType, timeout: float | None = None
    ) -> np.ndarray:
        """Encode resolved inputs, each in the lane of its modality; rows come back in input order."""
        count = self.runtime.metrics.inputs
        for x in inputs:
            count.labels("embedder", x.modality, input_type).inc()
        priority = QUERY_PRIORITY if input_type == "query" else DOCUMENT_PRIORITY
        lanes = [((input_type, x.modality), x.to_st(self.text_only)) for x in inputs]
        rows = await self.runtime.run_lanes(lanes, priority=priority, timeout=timeout)
        return (
            np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, self.dimension), dtype=np.float32)
        )

    def _check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is not None and dimensions > self.dimension:
            raise bad_request(
                f"dimensions: at most {self.dimension} for model {self.model_name!r} (got {dimensions})",
                "dimensions",
            )

    async def _encode(
        self,
        items: Sequence[str | Item],
        *,
        field: str,
        input_type: InputType,
        normalize: bool,
        dimensions: int | None,
        uploads: dict[int, bytes] | None = None,
        timeout: float | None = None,
        max_inputs: int | None = None,
    ) -> np.ndarray:
        """Encode ``items`` (at most ``max_inputs``, default ``max_inputs_per_request``; those with an image always
        count against ``max_inputs_per_request``)."""
        check_count(field, len(items), max_inputs or self.settings.max_inputs_per_request)
        with_images = sum(1 for x in items if isinstance(x, Item) and x.image is not None)
        check_count(field, with_images, self.settings.max_inputs_per_request, "inputs with an image")
        check_av_count(field, items, self.settings)
        self._check_dimensions(dimensions)
        loader = self.runtime.loader
        # a query: document work yields to this request at every stage until it answers. The pixel lease holds
        # the decoded images' budget until the model has run.
        async with (
            self.runtime.gate.interactive() if input_type == "query" else contextlib.nullcontext(),
            loader.pixels.lease() as lease,
        ):
            resolved = await resolve_items(
                items,
                paths=item_paths(field, len(items)),
                loader=loader,
                settings=self.settings,
                supported=self.modalities,
                model=self.model_name,
                uploads=uploads,
                background=input_type == "document",
                lease=lease,
                av=getattr(self.adapter, "av", None),
            )
            emb = await self.embed(resolved, input_type, timeout)
            del resolved
            return postprocess(emb, dimensions, normalize)

    @bentoml.api(route="/encode", input_spec=EncodeRequest)
    @handle_api_errors
    async def encode(self, **kw: Any) -> EncodeResponse:
        """Encode texts, images (URL or data URI) and text+image items with the query or document prompt."""
        req = validated(EncodeRequest, kw)
        emb = await self._encode(
            req.inputs,
            field="inputs",
            input_type=req.input_type,
            normalize=req.normalize,
            dimensions=req.dimensions,
            timeout=req.timeout,
        )
        return EncodeResponse(
            embeddings=encode_vectors(emb, req.encoding_format),
            model=self.model_name,
            dimensions=emb.shape[1],
        )

    @bentoml.api(route="/v1/embeddings", input_spec=OpenAIEmbeddingsRequest)
    @handle_api_errors
    async def openai_embeddings(self, **kw: Any) -> OpenAIEmbeddingsResponse:
        """OpenAI-compatible embeddings (``input_type`` extension, default ``document``)."""
        req = validated(OpenAIEmbeddingsRequest, kw)
        items = req.items()
        emb = await self._encode(
            items,
            field="input",
            input_type=req.input_type,
            normalize=True,
            dimensions=req.dimensions,
            max_inputs=self.settings.max_embeddings_inputs,
        )
        vectors: list[list[float] | str] = list(encode_vectors(emb, req.encoding_format))
        tokens = estimate_tokens(items)
        return OpenAIEmbeddingsResponse(
            data=[OpenAIEmbedding(index=i, embedding=v) for i, v in enumerate(vectors)],
            model=self.model_name,
            usage=OpenAIUsage(prompt_tokens=tokens, total_tokens=tokens),
        )

    @bentoml.api(route="/info")
    async def info(self) -> dict[str, Any]:
        """Model name, dimension, modalities and batching limits."""
        return {
            "service": "Embedder",
            "model": self.model_name,
            "loading": self.spec.describe(),
            "dimension": self.dimension,
            "modalities": self.modalities,
            "model_modalities": getattr(self.adapter, "declared_modalities", None),
            **self.runtime.info(),
            "max_inputs_per_request": self.settings.max_inputs_per_request,
            "max_embeddings_inputs": self.settings.max_embeddings_inputs,
            "max_tokens": int(getattr(getattr(self.adapter, "model", self.adapter), "max_seq_length", 0) or 0),
            "max_text_chars": self.settings.max_text_chars,
            "tiny_random_weights": self.settings.profile == "tiny",
        }

    @handle_api_errors
    async def encode_upload(self, request: Request) -> Response:
        """Multipart upload: ``image`` files (repeated), optional ``text`` fields paired with them by position."""
        form = await read_upload_form(request, self.settings)
        uploads: dict[int, bytes] = dict(enumerate(form.images))  # decoded under the request's pixel lease
        texts = form.texts
        items: list[str | Item] = [Item(text=texts[i] if texts else None, image="upload:") for i in range(len(uploads))]
        emb = await self._encode(
            items,
            field="image",
            input_type=form.input_type,
            normalize=form.normalize,
            dimensions=form.dimensions,
            uploads=uploads,
        )
        body = EncodeResponse(
            embeddings=encode_vectors(emb, form.encoding_format), model=self.model_name, dimensions=emb.shape[1]
        )
        return JSONResponse(body.model_dump())


install_middleware(Embedder, get_settings())
