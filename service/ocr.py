"""The OCR engine: RapidOCR (PP-OCRv6 small detection + recognition, ONNX Runtime on CPU), models in the wheel.

Only decoded ``PIL`` images reach the engine (never a string: RapidOCR would fetch a URL or open a path itself).
Images are read at full resolution up to ``max_side`` pixels on the longer side (a screenshot's 15 px text does
not survive a VLM-style downscale); larger images are scaled down to that bound for detection, and the boxes
are mapped back to the original pixels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from mmsearch_schema.wire import OcrLine as WireLine
from mmsearch_schema.wire import OcrResult
from PIL import Image

log = logging.getLogger("mmsearch.ocr")

ENGINE = "rapidocr"
MODELS = "PP-OCRv6-small"


@dataclass(frozen=True)
class OcrLine:
    """One recognised line: its text, axis-aligned box ``[x0, y0, x1, y1]`` in image pixels, and confidence."""

    text: str
    box: tuple[float, float, float, float]
    score: float


@dataclass(frozen=True)
class OcrPage:
    """What the engine read from one image, lines in reading order (top to bottom, then left to right)."""

    lines: tuple[OcrLine, ...]
    width: int
    height: int

    @property
    def text(self) -> str:
        """The lines joined by newlines: what is indexed and embedded for the image."""
        return "\n".join(line.text for line in self.lines)


def engine_name() -> str:
    """``rapidocr-<version>/<models>``, the model name Reader reports."""
    try:
        version = metadata.version("rapidocr")
    except metadata.PackageNotFoundError:  # pragma: no cover - rapidocr is a pinned dependency
        version = "unknown"
    return f"{ENGINE}-{version}/{MODELS}"


def axis_box(points: Any, width: int, height: int) -> tuple[float, float, float, float]:
    """The axis-aligned bounding box of a quadrilateral's corner points, clipped to the image, 0.1 px precision."""
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]

    def clip(v: float, hi: int) -> float:
        return round(min(max(v, 0.0), float(hi)), 1)

    return (clip(min(xs), width), clip(min(ys), height), clip(max(xs), width), clip(max(ys), height))


def reading_order(lines: list[OcrLine]) -> list[OcrLine]:
    """Sort lines top to bottom; lines whose vertical centres are within half a line height are one row, read
    left to right."""
    if not lines:
        return []
    by_top = sorted(lines, key=lambda ln: ((ln.box[1] + ln.box[3]) / 2, ln.box[0]))
    rows: list[list[OcrLine]] = []
    for line in by_top:
        centre = (line.box[1] + line.box[3]) / 2
        if rows:
            last = rows[-1][-1]
            half = max(1.0, (last.box[3] - last.box[1]) / 2)
            if abs(centre - (last.box[1] + last.box[3]) / 2) <= half:
                rows[-1].append(line)
                continue
        rows.append([line])
    return [ln for row in rows for ln in sorted(row, key=lambda ln: ln.box[0])]


def to_page(result: Any, width: int, height: int) -> OcrPage:
    """Convert a RapidOCR output (``txts``, ``boxes``, ``scores``; all ``None`` when nothing was found)."""
    txts = getattr(result, "txts", None) or ()
    boxes = getattr(result, "boxes", None)
    scores = getattr(result, "scores", None) or ()
    if boxes is None or not len(txts):
        return OcrPage((), width, height)
    lines = [
        OcrLine(" ".join(str(t).split()), axis_box(b, width, height), round(float(s), 4))
        for t, b, s in zip(txts, boxes, scores, strict=True)
        if str(t).strip()
    ]
    return OcrPage(tuple(reading_order(lines)), width, height)


class OcrAdapter:
    """The Reader's model as the batcher sees it (``service.adapters``): ``prepare`` makes RGB images in the
    preprocessing thread, ``run`` reads them one after another (PP-OCR detects one image at a time on CPU)."""

    modalities = ["image"]
    accelerated = False

    def __init__(self, engine: OcrEngine, threads: Any = None) -> None:
        self.engine = engine
        self.name = engine.name
        self.threads = threads

    def prepare(self, lane: Hashable, images: list[Image.Image]) -> list[Image.Image]:
        return [img if img.mode == "RGB" else img.convert("RGB") for img in images]

    def run(self, lane: Hashable, images: list[Image.Image]) -> Sequence[OcrPage]:
        return [self.engine.read(img) for img in images]


class OcrEngine:
    """A RapidOCR instance configured for full-resolution reading, ``threads`` ONNX Runtime threads."""

    def __init__(self, *, threads: int = 1, max_side: int = 4096, min_score: float = 0.5) -> None:
        from rapidocr import RapidOCR

        self.max_side = max_side
        self.name = engine_name()
        params: dict[str, Any] = {
            "Global.log_level": "error",
            "Global.text_score": min_score,
            "Global.max_side_len": max_side,
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
        self._engine = RapidOCR(params=params)
        logging.getLogger("RapidOCR").setLevel(logging.WARNING)

    def read(self, image: Image.Image) -> OcrPage:
        """Read one decoded image (RGB)."""
        result = self._engine(image.convert("RGB") if image.mode != "RGB" else image)
        return to_page(result, image.width, image.height)


def lines_to_json(lines: list[OcrLine] | tuple[OcrLine, ...]) -> str | None:
    """Compact JSON of lines for storage (``[[text, [x0, y0, x1, y1], score], ...]``); ``None`` for none."""
    if not lines:
        return None
    return json.dumps([[ln.text, list(ln.box), ln.score] for ln in lines], ensure_ascii=False, separators=(",", ":"))


def lines_from_json(raw: str | bytes | None) -> list[OcrLine]:
    """The lines stored by :func:`lines_to_json` (malformed entries are skipped, never raised)."""
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        return []
    out: list[OcrLine] = []
    for entry in value if isinstance(value, list) else []:
        try:
            text, box, score = entry
            x0, y0, x1, y1 = (float(v) for v in box)
            out.append(OcrLine(str(text), (x0, y0, x1, y1), float(score)))
        except (TypeError, ValueError):
            continue
    return out


def page_to_wire(page: OcrPage) -> OcrResult:
    """The Reader's wire form of a page."""
    return OcrResult(
        text=page.text,
        lines=[WireLine(text=ln.text, box=list(ln.box), score=ln.score) for ln in page.lines],
        width=page.width,
        height=page.height,
    )


def page_from_wire(result: OcrResult) -> OcrPage:
    """An ``OcrPage`` from the Reader's wire ``OcrResult``."""
    lines = tuple(OcrLine(ln.text, (ln.box[0], ln.box[1], ln.box[2], ln.box[3]), ln.score) for ln in result.lines)
    return OcrPage(lines, result.width, result.height)
