"""Embedder service: text, images and text+image documents -> vectors in one space.

It hosts every embedder of the model repository (``service.model_host``); a request chooses one with ``model``."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Sequence
from typing import Any

import bentoml
import numpy as np
from mmsearch_schema.wire import EncodeRequest, EncodeResponse, InputType, Item
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

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
from service.model_host import HostedModel, openai_models_app
from service.model_service import ModelService
from service.models import load_embedder
from service.runtime import DOCUMENT_PRIORITY, QUERY_PRIORITY
from service.uploads import read_upload_form

Embedding = HostedModel[Any, np.ndarray]


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
    """``POST /upload/encode``: multipart ``image``, ``audio`` or ``video`` files, optional paired ``text`` fields."""
    svc: Embedder = bentoml.get_current_service()
    return await svc.encode_upload(request)


upload_app = Starlette(routes=[Route("/encode", _upload_encode, methods=["POST"])])


models_app = openai_models_app()


@bentoml.asgi_app(models_app, path="/v1")
@bentoml.asgi_app(upload_app, path="/upload")
@bentoml.service(name="Embedder", **model_service_options())
class Embedder(ModelService[np.ndarray], role="embedder", load=load_embedder):
    """Encodes inputs with the query or document prompt of a sentence-transformers model, batched adaptively."""

    def __init__(self) -> None:
        super().__init__()
        assert self.host.default is not None  # a repository has at least one embedder

    async def embed(
        self, inputs: Sequence[ModelInput], input_type: InputType, timeout: float | None, m: Embedding
    ) -> np.ndarray:
        """Encode resolved inputs with model ``m``, each in the lane of its modality (``(input_type, modality)``:
        one prompt per batch, and CLIP cannot mix text and images); rows come back in input order."""
        for x in inputs:
            m.runtime.count_input(x.modality, input_type)
        priority = QUERY_PRIORITY if input_type == "query" else DOCUMENT_PRIORITY
        lanes = [((input_type, x.modality), x.to_st(m.text_only)) for x in inputs]
        rows = await m.runtime.run_lanes(lanes, priority=priority, timeout=timeout)
        return np.stack(rows).astype(np.float32, copy=False) if rows else np.zeros((0, m.dimension), dtype=np.float32)

    @staticmethod
    def _check_dimensions(m: Embedding, dimensions: int | None) -> None:
        if dimensions is not None and dimensions > m.dimension:
            raise bad_request(
                f"dimensions: at most {m.dimension} for model {m.name!r} (got {dimensions})",
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
        model: str | None = None,
    ) -> tuple[np.ndarray, str]:
        """Encode ``items`` with the model ``model`` names (at most ``max_inputs``, default the model's
        ``max_inputs_per_request``; those with an image always count against ``max_inputs_per_request``); the
        vectors and the model's name."""
        m = self.host.get(model)
        per_request = m.served.limits.max_inputs_per_request
        check_count(field, len(items), max_inputs or per_request)
        with_images = sum(1 for x in items if isinstance(x, Item) and x.image is not None)
        check_count(field, with_images, per_request, "inputs with an image")
        check_av_count(field, items, self.settings)
        self._check_dimensions(m, dimensions)
        loader = self.host.loader
        # a query: document work yields to this request at every stage until it answers. The pixel lease holds
        # the decoded images' budget until the model has run.
        async with (
            self.host.gate.interactive() if input_type == "query" else contextlib.nullcontext(),
            loader.pixels.lease() as lease,
        ):
            resolved = await resolve_items(
                items,
                paths=item_paths(field, len(items)),
                loader=loader,
                settings=self.settings,
                supported=m.modalities,
                model=m.name,
                uploads=uploads,
                background=input_type == "document",
                lease=lease,
                av=getattr(m.adapter, "av", None),
            )
            emb = await self.embed(resolved, input_type, timeout, m)
            del resolved
            return postprocess(emb, dimensions, normalize), m.name

    @bentoml.api(route="/encode", input_spec=EncodeRequest)
    @handle_api_errors
    async def encode(self, **kw: Any) -> EncodeResponse:
        """Encode texts, images (URL or data URI) and text+image items with the query or document prompt."""
        req = validated(EncodeRequest, kw)
        emb, name = await self._encode(
            req.inputs,
            field="inputs",
            input_type=req.input_type,
            normalize=req.normalize,
            dimensions=req.dimensions,
            timeout=req.timeout,
            model=req.model,
        )
        return EncodeResponse(embeddings=encode_vectors(emb, req.encoding_format), model=name, dimensions=emb.shape[1])

    @bentoml.api(route="/v1/embeddings", input_spec=OpenAIEmbeddingsRequest)
    @handle_api_errors
    async def openai_embeddings(self, **kw: Any) -> OpenAIEmbeddingsResponse:
        """OpenAI-compatible embeddings (``input_type`` extension, default ``document``)."""
        req = validated(OpenAIEmbeddingsRequest, kw)
        items = req.items()
        emb, name = await self._encode(
            items,
            field="input",
            input_type=req.input_type,
            normalize=True,
            dimensions=req.dimensions,
            max_inputs=self.settings.max_embeddings_inputs,
            model=req.model,
        )
        vectors: list[list[float] | str] = list(encode_vectors(emb, req.encoding_format))
        tokens = estimate_tokens(items)
        return OpenAIEmbeddingsResponse(
            data=[OpenAIEmbedding(index=i, embedding=v) for i, v in enumerate(vectors)],
            model=name,
            usage=OpenAIUsage(prompt_tokens=tokens, total_tokens=tokens),
        )

    @bentoml.api(route="/info")
    async def info(self) -> dict[str, Any]:
        """The default model's name, dimension, modalities and batching limits at the top level (as with one
        model), and every model the Embedder hosts under ``models``."""
        default = self.host.get(None)
        return {
            "service": "Embedder",
            "model": default.name,
            "loading": default.served.spec.describe(),
            "dimension": default.dimension,
            "modalities": default.modalities,
            "model_modalities": getattr(default.adapter, "declared_modalities", None),
            **default.runtime.info(),
            "max_inputs_per_request": default.served.limits.max_inputs_per_request,
            "max_embeddings_inputs": self.settings.max_embeddings_inputs,
            "max_tokens": default.max_tokens,
            "max_text_chars": self.settings.max_text_chars,
            "tiny_random_weights": self.settings.profile == "tiny",
            "models": self.host.describe(),
        }

    @handle_api_errors
    async def encode_upload(self, request: Request) -> Response:
        """Multipart upload: ``image``, ``audio`` or ``video`` files (repeated, one medium per request), optional
        ``text`` fields paired with them by position; decoded as the same media by URL or data URI are."""
        form = await read_upload_form(request, self.settings)
        uploads: dict[int, bytes] = dict(enumerate(form.files))  # decoded under the request's pixel lease
        texts = form.texts
        # the item names the medium; its reference is a placeholder that is never read (the bytes are ``uploads``)
        ref = "upload:" if form.medium == "image" else f"data:{form.medium}/upload;base64,"
        items: list[str | Item] = [
            Item.model_validate({"text": texts[i] if texts else None, form.medium: ref}) for i in range(len(uploads))
        ]
        emb, name = await self._encode(
            items,
            field=form.medium,
            input_type=form.input_type,
            normalize=form.normalize,
            dimensions=form.dimensions,
            uploads=uploads,
            model=form.model,
        )
        body = EncodeResponse(embeddings=encode_vectors(emb, form.encoding_format), model=name, dimensions=emb.shape[1])
        return JSONResponse(body.model_dump())


install_middleware(Embedder, get_settings())
