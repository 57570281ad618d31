"""Long audio and video documents as segments: the windows, the rows' ids and their stored references (issue #21).

A clip longer than ``segment_seconds`` is indexed as one row per window of that length, each starting
``segment_seconds - segment_overlap_s`` after the previous one, the last one ending at the clip's end. The index
layer knows no segments: the rows are ordinary rows.

* Row ids: the first window's row has the document's own id, so ``/get`` and a query by id find the document as
  before; window ``k`` >= 1 has ``<id>\\x1f<k>``. A document id never holds a control character
  (``mmsearch_schema.fields.check_id``), so no document's id is ever another's segment. Those continuation rows
  carry the reserved filter term ``CONTINUATION_TERM``: collection counts leave them out.
* The stored media reference of every row names the clip and the window:
  ``media://<sha256>.<ext>?t=<t0>,<t1>&n=<n>&d=<duration>`` (``n`` windows in all; a clip within one window is
  stored as ``?t=0,<duration>&n=1&d=<duration>``), followed as for images by ``#<source URL>`` when it was
  fetched. The index layer needs no new column on either backend. The first row therefore tells how many rows
  the document has: deleting or replacing it removes them all.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from service.index.base import CONTINUATION_TERM, SEGMENT_SEPARATOR, is_continuation

SEPARATOR = SEGMENT_SEPARATOR
__all__ = [
    "CONTINUATION_TERM",
    "MAX_DOCUMENT_ID_CHARS",
    "Segment",
    "Window",
    "document_id",
    "is_continuation",
    "parse_ref",
    "row_id",
    "row_ids",
    "stored_ref",
    "windows",
]
MAX_SEGMENTS = 10_000
MAX_DOCUMENT_ID_CHARS = 500
"""A segmented document's id leaves room for its rows' ``\\x1f<k>`` suffix within 512 characters (Milvus's key)."""
_NUM = r"(\d+(?:\.\d+)?)"
_QUERY = re.compile(rf"^\?t={_NUM},{_NUM}&n=(\d+)&d={_NUM}\Z")


@dataclass(frozen=True)
class Window:
    t0: float
    t1: float


def windows(duration: float, seconds: float, overlap: float) -> list[Window]:
    """The windows of a clip of ``duration`` s: one when it fits in ``seconds``, else windows of ``seconds`` every
    ``seconds - overlap`` s, the last ending at ``duration`` (it may be shorter)."""
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError("duration must be positive")
    if not (seconds > 0 and 0 <= overlap < seconds):
        raise ValueError("segment seconds must be positive and the overlap smaller")
    if duration <= seconds:
        return [Window(0.0, _round(duration))]
    stride = seconds - overlap
    n = math.ceil((duration - seconds) / stride - 1e-9) + 1
    if n > MAX_SEGMENTS:
        raise ValueError(f"{n} segments, over {MAX_SEGMENTS}")
    return [Window(_round(k * stride), _round(min(k * stride + seconds, duration))) for k in range(n)]


def _round(t: float) -> float:
    return round(t, 3)


def row_id(doc_id: str, k: int) -> str:
    """The id of window ``k``'s row of document ``doc_id``."""
    return doc_id if k == 0 else f"{doc_id}{SEPARATOR}{k}"


def document_id(rid: str) -> str:
    """The document a row belongs to."""
    return rid.split(SEPARATOR, 1)[0]


def row_ids(doc_id: str, n: int) -> list[str]:
    return [row_id(doc_id, k) for k in range(n)]


def stored_ref(ref: str, window: Window, n: int, duration: float) -> str:
    """A row's media reference: the clip's ``media://`` reference with the window, the document's row count and
    the clip's length."""
    return f"{ref}?t={_num(window.t0)},{_num(window.t1)}&n={n}&d={_num(duration)}"


def _num(t: float) -> str:
    return f"{t:.3f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Segment:
    ref: str
    """The clip's reference (``media://<sha256>.<ext>``)."""
    t0: float
    t1: float
    n: int
    duration: float


def parse_ref(ref: str | None) -> Segment | None:
    """The clip and window of a stored reference (without its ``#source``); None when it names no window."""
    if ref is None:
        return None
    base, sep, query = ref.partition("?")
    m = _QUERY.match(sep + query) if sep else None
    if m is None:
        return None
    return Segment(base, float(m.group(1)), float(m.group(2)), int(m.group(3)), float(m.group(4)))
