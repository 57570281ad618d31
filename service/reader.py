"""Reader service: the text in images, line by line with boxes (OCR), batched and scaled like the models.

``POST /ocr {"inputs": [{"image": ...}], "input_type": "document"|"query"}`` answers, per input, the text and its
lines with ``[x0, y0, x1, y1]`` boxes in the image's own pixels. Images go through the same media policy and
limits as everywhere (``service.media``); the engine (``service.ocr``) only ever sees decoded images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import bentoml
from mmsearch_schema.wire import InputType, Item, OcrRequest, OcrResponse

from service.bento_options import model_service_options, validated
from service.config import get_settings
from service.cpus import plan_threads
from service.errors import handle_api_errors
from service.inputs import check_count
from service.middleware import install as install_middleware
from service.ocr import OcrAdapter, OcrEngine, OcrPage, page_to_wire
from service.runtime import DOCUMENT_PRIORITY, QUERY_PRIORITY, ModelRuntime

MODALITIES = ["image"]


@bentoml.service(name="Reader", **model_service_options())
class Reader:
    """Reads images with RapidOCR; queued query images are read before queued document images."""

    def __init__(self) -> None:
        self.settings = get_settings()
        # ONNX Runtime threads: the Reader's share of the CPUs, like the torch services (MMSEARCH_TORCH_THREADS)
        plan = plan_threads(self.settings.torch_threads, "Reader")
        engine = OcrEngine(
            threads=plan.threads, max_side=self.settings.ocr_max_side, min_score=self.settings.ocr_min_score
        )
        self.adapter = OcrAdapter(engine, plan)
        self.model_name = self.adapter.name
        self.runtime: ModelRuntime[Any, OcrPage] = ModelRuntime(
            "reader",
            self.settings,
            self.adapter,
            max_batch_size=self.settings.ocr_max_batch_size,
            max_queue_wait_ms=self.settings.ocr_max_queue_wait_ms,
        )

    async def read(
        self, items: Sequence[str | Item], *, input_type: InputType, field: str = "inputs", timeout: float | None = None
    ) -> list[OcrPage]:
        check_count(field, len(items), self.settings.max_inputs_per_request)
        # the pixel lease holds the decoded images' budget until they are read
        async with self.runtime.scope(input_type), self.runtime.loader.pixels.lease() as lease:
            resolved = await self.runtime.resolve(
                items, field=field, supported=MODALITIES, model=self.model_name, input_type=input_type, lease=lease
            )
            for _ in resolved:
                self.runtime.count_input("image", input_type)
            priority = QUERY_PRIORITY if input_type == "query" else DOCUMENT_PRIORITY
            return await self.runtime.run(
                (input_type, "image"), [x.image for x in resolved], priority=priority, timeout=timeout
            )

    @bentoml.api(route="/ocr", input_spec=OcrRequest)
    @handle_api_errors
    async def ocr(self, **kw: Any) -> OcrResponse:
        """The text of every input image: lines in reading order with boxes and confidences."""
        req = validated(OcrRequest, kw)
        pages = await self.read(req.inputs, input_type=req.input_type, timeout=req.timeout)
        return OcrResponse(results=[page_to_wire(p) for p in pages], model=self.model_name)

    @bentoml.api(route="/info")
    async def info(self) -> dict[str, Any]:
        """Engine, modalities and limits."""
        return {
            "service": "Reader",
            "model": self.model_name,
            "modalities": MODALITIES,
            "max_side": self.settings.ocr_max_side,
            "min_score": self.settings.ocr_min_score,
            "max_queue_wait_ms": self.settings.ocr_max_queue_wait_ms,
            **self.runtime.info(),
            "max_inputs_per_request": self.settings.max_inputs_per_request,
        }


install_middleware(Reader, get_settings())
