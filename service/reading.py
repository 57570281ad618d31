"""Search reads the text in images through the Reader: image documents at ingest, image queries when the embedder
takes text only (the lite profile) or keyword retrieval needs the query image's words.

Results are cached by image content, so a batch resent by the client (after it dropped a refused document) or an
image upserted again is not read twice.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from mmsearch_schema.wire import InputType, Item

from service.errors import ApiError
from service.ocr import OcrPage
from service.ports import ReaderPort

DEFAULT_CACHE_ENTRIES = 4096


class OcrCache:
    """Pages by image content key (an LRU of ``max_entries``); thread-safe."""

    def __init__(self, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._pages: OrderedDict[str, OcrPage] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> OcrPage | None:
        with self._lock:
            page = self._pages.get(key)
            if page is None:
                self.misses += 1
                return None
            self._pages.move_to_end(key)
            self.hits += 1
            return page

    def put(self, key: str, page: OcrPage) -> None:
        with self._lock:
            self._pages[key] = page
            self._pages.move_to_end(key)
            while len(self._pages) > self.max_entries:
                self._pages.popitem(last=False)


class TextReader:
    """Reads images with the Reader (when OCR is enabled), through the cache."""

    def __init__(self, reader: ReaderPort | None, cache: OcrCache | None = None) -> None:
        self.reader = reader
        self.cache = cache or OcrCache()

    @property
    def enabled(self) -> bool:
        return self.reader is not None

    async def read(
        self, images: Sequence[tuple[str | None, str]], input_type: InputType, timeout: float | None
    ) -> list[OcrPage]:
        """Pages of ``images`` (``(content key or None, image reference)``), in order; each image read once."""
        if self.reader is None:
            raise ApiError(422, "ocr_disabled", "reading text in images is off (MMSEARCH_OCR)")
        pages: list[OcrPage | None] = [self.cache.get(k) if k else None for k, _ in images]
        todo = [i for i, p in enumerate(pages) if p is None]
        if todo:
            try:
                fresh = await self.reader.read([Item(image=images[i][1]) for i in todo], input_type, timeout)
            except ApiError as e:  # the Reader saw only the uncached images: point at positions in ``images``
                e.relocate("inputs", lambda k, rest: ("inputs", todo[k], *rest) if k < len(todo) else None)
                raise
            for i, page in zip(todo, fresh, strict=True):
                pages[i] = page
                key = images[i][0]
                if key:
                    self.cache.put(key, page)
        return [p for p in pages if p is not None]


def modality_paths(embedder_modalities: Sequence[str], ocr: bool) -> dict[str, str]:
    """How each document or query modality is searched, for ``/info``."""
    supported = set(embedder_modalities)
    keyword = "; its OCR text is keyword-searchable and cited as evidence" if ocr else ""
    paths = {"text": "text embedding; keyword-searchable"}
    if "image" in supported:
        paths["image"] = "image embedding" + keyword
    elif ocr:
        paths["image"] = "OCR text -> text embedding; keyword-searchable, cited as evidence"
    else:
        paths["image"] = "unsupported (the embedder reads text only and OCR is off)"
    if "text+image" in supported:
        paths["text+image"] = "joint text+image embedding" + keyword
    elif ocr and "image" not in supported:
        paths["text+image"] = "text + OCR text -> text embedding; keyword-searchable, cited as evidence"
    else:
        paths["text+image"] = "unsupported by the embedder"
    for m in ("audio", "video", "text+audio", "text+video"):
        if m in supported:  # service.segments
            paths[m] = "one embedding per segment (MMSEARCH_SEGMENT_SECONDS); hits name the best segment's t0/t1"
    return paths
