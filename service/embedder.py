"""Embedder service: text, images and text+image documents -> vectors in one space."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Hashable, Sequence
from typing import Any

import bentoml
import numpy as np
from mmsearch_client.schemas import (
    EncodeRequest,
    EncodeResponse,
    InputType,
    Item,
    OpenAIEmbedding,
    OpenAIEmbeddingsRequest,
    OpenAIEmbeddingsResponse,
    OpenAIUsage,
)
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.config import get_settings
from service.errors import ApiError, bad_request, handle_api_errors
from service.inputs import ModelInput, check_count, model_modalities, resolve_items
from service.middleware import install as install_middleware
from service.models import check_simulated_oom, load_embedder
from service.runtime import DOCUMENT_PRIORITY, QUERY_PRIORITY, ModelRuntime
from service.service_config import model_service_config


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
@bentoml.service(name="Embedder", **model_service_config())
class Embedder:
    """Encodes inputs with the query or document prompt of a sentence-transformers model, batched adaptively."""

    def __init__(self) -> None:
        self.settings = get_settings()
        self.model, self.model_name = load_embedder(self.settings)
        self.modalities = model_modalities(self.model)
        self.text_only = self.modalities == ["text"]
        self.dimension = int(self.model.get_sentence_embedding_dimension() or 0)
        self.runtime: ModelRuntime[Any, np.ndarray] = ModelRuntime("embedder", self.settings, self._run_batch)

    def _run_batch(self, lane: Hashable, inputs: list[Any]) -> Sequence[np.ndarray]:
        """One model call: all inputs share an input type and a modality (CLIP cannot mix them)."""
        import torch

        input_type = lane[0]  # type: ignore[index]
        check_simulated_oom(self.settings, inputs)
        fn = self.model.encode_query if input_type == "query" else self.model.encode_document
        with torch.inference_mode():
            emb = fn(
                inputs,
                batch_size=len(inputs),
                convert_to_numpy=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            )
        return list(np.asarray(emb, dtype=np.float32))

    async def embed(
        self, inputs: Sequence[ModelInput], input_type: InputType, timeout: float | None = None
    ) -> np.ndarray:
        """Encode resolved inputs, each in the lane of its modality; rows come back in input order."""
        metrics = self.runtime.metrics
        by_lane: dict[tuple[str, str], list[int]] = {}
        for i, x in enumerate(inputs):
            by_lane.setdefault((input_type, x.modality), []).append(i)
            metrics.inputs.labels("embedder", x.modality, input_type).inc()
        priority = QUERY_PRIORITY if input_type == "query" else DOCUMENT_PRIORITY
        out = np.zeros((len(inputs), self.dimension), dtype=np.float32)
        lanes = list(by_lane.items())
        results = await asyncio.gather(
            *(
                self.runtime.run(
                    lane, [inputs[i].to_st(self.text_only) for i in idx], priority=priority, timeout=timeout
                )
                for lane, idx in lanes
            )
        )
        for (_, idx), rows in zip(lanes, results, strict=True):
            out[idx] = np.stack(rows)
        return out

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
        uploads: dict[int, Image.Image] | None = None,
        timeout: float | None = None,
    ) -> np.ndarray:
        check_count(field, len(items), self.settings.max_inputs_per_request)
        self._check_dimensions(dimensions)
        # a query: document work yields to this request at every stage until it answers
        async with self.runtime.gate.interactive() if input_type == "query" else contextlib.nullcontext():
            resolved = await resolve_items(
                items,
                field=field,
                loader=self.runtime.loader,
                settings=self.settings,
                supported=self.modalities,
                model=self.model_name,
                uploads=uploads,
                background=input_type == "document",
            )
            emb = await self.embed(resolved, input_type, timeout)
            return postprocess(emb, dimensions, normalize)

    @bentoml.api(route="/encode", input_spec=EncodeRequest)
    @handle_api_errors
    async def encode(self, **kw: Any) -> EncodeResponse:
        """Encode texts, images (URL or data URI) and text+image items with the query or document prompt."""
        req = EncodeRequest.model_validate(kw)
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
        req = OpenAIEmbeddingsRequest.model_validate(kw)
        items: list[str | Item] = [req.input] if isinstance(req.input, str) else list(req.input)
        emb = await self._encode(
            items, field="input", input_type=req.input_type, normalize=True, dimensions=req.dimensions
        )
        vectors = encode_vectors(emb, req.encoding_format)
        # Usage is an estimate (whitespace words + 1 per image): OpenAI clients only display it.
        tokens = sum(
            len((x.text or "").split()) + (1 if x.image else 0)
            for x in (Item(text=i) if isinstance(i, str) else i for i in items)
        )
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
            "dimension": self.dimension,
            "modalities": self.modalities,
            "max_batch_size": self.runtime.batcher.max_batch_size,
            "effective_max_batch_size": self.runtime.batcher.effective_max_batch_size,
            "max_inputs_per_request": self.settings.max_inputs_per_request,
            "tiny_random_weights": self.settings.profile == "tiny",
        }

    @handle_api_errors
    async def encode_upload(self, request: Request) -> Response:
        """Multipart upload: ``image`` files (repeated), optional ``text`` fields paired with them by position."""
        from starlette.formparsers import MultiPartException

        try:
            form = await request.form(
                max_files=self.settings.max_inputs_per_request,
                max_fields=self.settings.max_inputs_per_request + 16,
                max_part_size=max(self.settings.max_text_chars * 4, 64 * 1024),
            )
        except MultiPartException as e:
            raise ApiError(413 if "exceed" in str(e).lower() else 400, "bad_multipart", str(e)) from None
        files = form.getlist("image")
        texts = [t for t in form.getlist("text") if isinstance(t, str)]
        if not files:
            raise bad_request("image: at least one image file is required", "image")
        if texts and len(texts) != len(files):
            raise bad_request(
                f"text: give one text per image to pair them ({len(texts)} texts, {len(files)} images)",
                "text",
            )
        check_count("image", len(files), self.settings.max_inputs_per_request)
        input_type = str(form.get("input_type") or "document")
        if input_type not in ("query", "document"):
            raise bad_request("input_type: must be 'query' or 'document'", "input_type")
        dims_raw = form.get("dimensions")
        try:
            dimensions = int(str(dims_raw)) if dims_raw not in (None, "") else None
        except ValueError:
            raise bad_request("dimensions: must be an integer", "dimensions") from None
        if dimensions is not None and dimensions < 1:
            raise bad_request("dimensions: must be >= 1", "dimensions")
        normalize = str(form.get("normalize") or "true").lower() not in ("false", "0", "no")
        encoding_format = str(form.get("encoding_format") or "float")
        if encoding_format not in ("float", "base64"):
            raise bad_request("encoding_format: must be 'float' or 'base64'", "encoding_format")
        uploads: dict[int, Image.Image] = {}
        for i, f in enumerate(files):
            if isinstance(f, str):
                raise bad_request(f"image[{i}]: must be a file part, not a text field", f"image[{i}]")
            data = await f.read(self.settings.max_image_bytes + 1)
            if len(data) > self.settings.max_image_bytes:
                raise ApiError(
                    413,
                    "too_large",
                    f"image[{i}]: file exceeds {self.settings.max_image_bytes} bytes",
                    field=f"image[{i}]",
                )
            uploads[i] = await self.runtime.loader.decode_upload(
                data, f"image[{i}]", background=input_type == "document"
            )
        items: list[str | Item] = [Item(text=texts[i] if texts else None, image="upload:") for i in range(len(files))]
        emb = await self._encode(
            items,
            field="image",
            input_type=input_type,
            normalize=normalize,
            dimensions=dimensions,
            uploads=uploads,
        )
        body = EncodeResponse(
            embeddings=encode_vectors(emb, encoding_format),
            model=self.model_name,
            dimensions=emb.shape[1],
        )
        return JSONResponse(body.model_dump())


install_middleware(Embedder, get_settings())
