"""Evidence: the lines of a hit that contain the query's terms, with their boxes when they were read by OCR.

A page can highlight where in a screenshot the answer is. Lines come from the document's own text (split into
lines, long ones cut to a window around the first match) and from its OCR lines (with ``[x0, y0, x1, y1]``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from service.keywords import terms
from service.ocr import OcrLine

MAX_EVIDENCE = 5
"""Lines per hit."""
MAX_SNIPPET_CHARS = 240
"""A text line longer than this is cut to a window around its first matching word."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Line:
    source: Literal["ocr", "text"]
    text: str
    box: tuple[float, float, float, float] | None = None


def _text_lines(text: str) -> list[str]:
    out: list[str] = []
    for raw in text.splitlines():
        line = " ".join(raw.split())
        if not line:
            continue
        out.extend(_SENTENCE_END.split(line) if len(line) > MAX_SNIPPET_CHARS else [line])
    return out


def _window(line: str, query_terms: set[str]) -> str:
    """``line`` itself, or a ``MAX_SNIPPET_CHARS`` window starting a little before its first matching word."""
    if len(line) <= MAX_SNIPPET_CHARS:
        return line
    start = 0
    for m in re.finditer(r"[^\W_]+", line):
        if set(terms(m.group(0))) & query_terms:
            start = max(0, m.start() - 40)
            break
    snippet = line[start : start + MAX_SNIPPET_CHARS]
    return ("…" if start else "") + snippet + ("…" if start + MAX_SNIPPET_CHARS < len(line) else "")


def find_evidence(
    query_terms: set[str], text: str | None, ocr_lines: Sequence[OcrLine], limit: int = MAX_EVIDENCE
) -> list[Line]:
    """Up to ``limit`` lines that contain query terms: most distinct terms first, then in reading order."""
    if not query_terms:
        return []
    scored: list[tuple[int, int, Line]] = []
    order = 0
    for ln in ocr_lines:
        matched = len(set(terms(ln.text)) & query_terms)
        if matched:
            scored.append((-matched, order, Line("ocr", ln.text, ln.box)))
        order += 1
    for raw in _text_lines(text or ""):
        matched = len(set(terms(raw)) & query_terms)
        if matched:
            scored.append((-matched, order, Line("text", _window(raw, query_terms))))
        order += 1
    scored.sort(key=lambda s: (s[0], s[1]))
    return [line for _, _, line in scored[:limit]]
