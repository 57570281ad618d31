"""A small synthetic evaluation set of rendered "screenshots", written in the evaluation dataset format.

    python -m mmsearch_client.eval.synthetic DIR [--seed 0]
    mmsearch eval --make-synthetic DIR

Deterministic for a given seed (and Pillow version): 30 corpus items rendered with Pillow (bar charts, line charts,
dashboards with number tiles, slides with a title and bullets), each with its own title, content and colours.
20 are images only, 5 are an image with a caption (text+image), 5 are text only (the content written out, at
most 72 characters: CLIP-style text encoders read 77 tokens).

60 queries, each with one relevant document (grade 1), in groups (``metadata.group``):

* ``text_title`` (30): the item's title as a text query.
* ``image_exact_copy`` (20): a byte-identical copy of an image-only item's file. The query and the document
  embed the same input, so their cosine similarity is 1.0 and recall@1 must be 1.0 **for any model** when
  rerank is off; with rerank on it is whatever the reranker makes of it.
* ``image_rerender`` (10): an image-only item shrunk to 75% and saved as JPEG (quality 55): reported as measured.

Needs Pillow (``pip install pillow``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage
    from PIL.ImageDraw import ImageDraw
    from PIL.ImageFont import FreeTypeFont, ImageFont

    Box = tuple[int, int, int, int]
    RGB = tuple[int, int, int]
    Font = FreeTypeFont | ImageFont

__all__ = ["SyntheticSet", "main", "write_synthetic"]

SIZE = (320, 200)
N_CORPUS = 30
N_RERENDER = 10
# Texts stay short: CLIP-style text towers read at most 77 tokens, and the tiny test model's byte-level tokenizer
# spends one token per byte.
MAX_TEXT_CHARS = 72
GROUP_TEXT = "text_title"
GROUP_EXACT = "image_exact_copy"
GROUP_RERENDER = "image_rerender"

_TOPICS = [
    "Coffee Sales",
    "Server Uptime",
    "Rainfall in Lisbon",
    "Bicycle Rentals",
    "Solar Output",
    "Ticket Backlog",
    "Museum Visitors",
    "Warehouse Stock",
    "Mobile Signups",
    "Ferry Passengers",
    "Bakery Orders",
    "Wind Speed",
    "Library Loans",
    "Checkout Latency",
    "Hotel Occupancy",
    "Water Usage",
    "Parcel Deliveries",
    "Exam Scores",
    "Crop Yield",
    "Cloud Spend",
    "Clinic Appointments",
    "Taxi Fares",
    "Podcast Downloads",
    "Energy Prices",
    "Support Calls",
    "Bird Sightings",
    "Garden Harvest",
    "Bus Punctuality",
    "Recycling Volume",
    "Chess Ratings",
    "Ice Cream Demand",
    "Forest Cover",
]
_BULLETS = [
    "Costs fell for the third quarter",
    "Two new regions launched",
    "Hiring paused until spring",
    "Customer churn is flat",
    "Migration finished ahead of plan",
    "Budget review in October",
    "Latency target met in all zones",
    "Pilot extended to five cities",
    "Supplier contract renewed",
    "Weekend demand doubled",
    "Audit found no major issues",
    "Training completed by 94% of staff",
]
_TILE_LABELS = ["Users", "Revenue", "Errors", "Orders", "Uptime", "Queue", "Refunds", "Visits", "Alerts", "NPS"]
_PALETTES = [
    ((250, 250, 245), (30, 30, 30), (66, 133, 244)),
    ((20, 24, 38), (235, 235, 240), (255, 159, 64)),
    ((255, 244, 214), (60, 40, 20), (200, 60, 60)),
    ((230, 245, 233), (20, 60, 30), (46, 139, 87)),
    ((240, 236, 255), (40, 20, 80), (123, 63, 228)),
    ((45, 45, 45), (240, 240, 240), (0, 200, 200)),
    ((255, 255, 255), (10, 10, 80), (255, 99, 132)),
    ((250, 230, 240), (80, 10, 40), (30, 144, 255)),
]
_KINDS = ("bar", "line", "dashboard", "slide")
_KIND_NAMES = {"bar": "bar chart", "line": "line chart", "dashboard": "dashboard", "slide": "slide"}


@dataclass(frozen=True, slots=True)
class SyntheticSet:
    """What :func:`write_synthetic` wrote."""

    root: Path
    corpus: int
    queries: int
    groups: dict[str, int]


def require_pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - depends on the environment
        raise RuntimeError("the synthetic set needs Pillow: pip install pillow") from None
    return Image


def _font(size: int) -> FreeTypeFont | ImageFont:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _title_for(kind: str, topic: str, rng: random.Random) -> str:
    year = rng.randint(2015, 2024)
    if kind == "bar":
        return f"{topic} by Quarter {year}"
    if kind == "line":
        return f"{topic} Trend {year}"
    if kind == "dashboard":
        return f"{topic} Dashboard"
    return f"{topic}: Key Points"


def _content(kind: str, rng: random.Random) -> dict[str, Any]:
    if kind == "bar":
        labels = ["Q1", "Q2", "Q3", "Q4"] if rng.random() < 0.5 else ["North", "South", "East", "West", "Centre"]
        return {"labels": labels, "values": [rng.randint(5, 100) for _ in labels]}
    if kind == "line":
        n = rng.randint(6, 12)
        v = float(rng.randint(20, 60))
        values = []
        for _ in range(n):
            v = max(1.0, v + rng.uniform(-15, 15))
            values.append(round(v, 1))
        return {"values": values}
    if kind == "dashboard":
        labels = rng.sample(_TILE_LABELS, rng.choice([4, 6]))
        return {"tiles": [(label, f"{rng.randint(1, 9999):,}") for label in labels]}
    return {"bullets": rng.sample(_BULLETS, rng.randint(3, 4))}


def _fit(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` cut at a word boundary to at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    cut = max(head.rfind(", "), head.rfind("; "))  # whole list entries
    if cut <= text.find(": "):
        cut = head.rfind(" ")
    return text[:cut].rstrip(",;:.")


def _describe(kind: str, title: str, content: dict[str, Any]) -> str:
    """The item's content written out, short (the text of text and text+image items)."""
    return _fit(_describe_long(kind, title, content))


def _describe_long(kind: str, title: str, content: dict[str, Any]) -> str:
    name = _KIND_NAMES[kind]
    if kind == "bar":
        pairs = ", ".join(f"{lab} {val}" for lab, val in zip(content["labels"], content["values"], strict=True))
        return f"{title}: {pairs}"
    if kind == "line":
        vals = content["values"]
        return f"{title}: {name}, {vals[0]} to {vals[-1]}, peak {max(vals)}"
    if kind == "dashboard":
        tiles = ", ".join(f"{lab} {val}" for lab, val in content["tiles"])
        return f"{title}: {tiles}"
    return f"{title}: " + "; ".join(content["bullets"])


def _render(kind: str, title: str, content: dict[str, Any], palette_idx: int) -> PILImage:
    pil = require_pillow()
    from PIL import ImageDraw

    bg, fg, accent = _PALETTES[palette_idx % len(_PALETTES)]
    w, h = SIZE
    img: PILImage = pil.new("RGB", SIZE, bg)
    draw = ImageDraw.Draw(img)
    draw.text((12, 8), title, fill=fg, font=_font(17))
    draw.line((12, 32, w - 12, 32), fill=accent, width=2)
    top, bottom, left, right = 44, h - 22, 30, w - 14
    small = _font(11)
    if kind == "bar":
        _bars(draw, content, (left, top, right, bottom), fg, accent, small)
    elif kind == "line":
        _line(draw, content, (left, top, right, bottom), fg, accent)
    elif kind == "dashboard":
        _tiles(draw, content, (12, top, w - 12, h - 10), fg, accent)
    else:
        y = top + 4
        for bullet in content["bullets"]:
            draw.ellipse((16, y + 5, 24, y + 13), fill=accent)
            draw.text((32, y), bullet, fill=fg, font=_font(14))
            y += 34
    return img


def _bars(draw: ImageDraw, content: dict[str, Any], box: Box, fg: RGB, accent: RGB, font: Font) -> None:
    left, top, right, bottom = box
    values: list[int] = content["values"]
    labels: list[str] = content["labels"]
    draw.line((left, top, left, bottom), fill=fg)
    draw.line((left, bottom, right, bottom), fill=fg)
    slot = (right - left) / len(values)
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x0 = left + i * slot + slot * 0.2
        x1 = left + (i + 1) * slot - slot * 0.2
        y0 = bottom - (bottom - top - 12) * value / 100
        draw.rectangle((x0, y0, x1, bottom - 1), fill=accent)
        draw.text((x0, y0 - 12), str(value), fill=fg, font=font)
        draw.text((x0, bottom + 4), label, fill=fg, font=font)


def _line(draw: ImageDraw, content: dict[str, Any], box: Box, fg: RGB, accent: RGB) -> None:
    left, top, right, bottom = box
    values: list[float] = content["values"]
    draw.line((left, top, left, bottom), fill=fg)
    draw.line((left, bottom, right, bottom), fill=fg)
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    step = (right - left - 10) / (len(values) - 1)
    points = [(left + 5 + i * step, bottom - 6 - (bottom - top - 12) * (v - lo) / span) for i, v in enumerate(values)]
    for grid_y in range(top, bottom, 25):
        draw.line((left + 1, grid_y, right, grid_y), fill=tuple((c + 128) // 2 for c in fg))
    draw.line(points, fill=accent, width=3)
    for px, py in points:
        draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=accent)


def _tiles(draw: ImageDraw, content: dict[str, Any], box: Box, fg: RGB, accent: RGB) -> None:
    left, top, right, bottom = box
    tiles: list[tuple[str, str]] = content["tiles"]
    cols = 2 if len(tiles) == 4 else 3
    rows = (len(tiles) + cols - 1) // cols
    tw = (right - left - (cols - 1) * 8) / cols
    th = (bottom - top - (rows - 1) * 8) / rows
    for i, (label, value) in enumerate(tiles):
        r, c = divmod(i, cols)
        x0, y0 = left + c * (tw + 8), top + r * (th + 8)
        draw.rounded_rectangle((x0, y0, x0 + tw, y0 + th), radius=6, outline=accent, width=2)
        draw.text((x0 + 8, y0 + 6), label, fill=fg, font=_font(12))
        draw.text((x0 + 8, y0 + 24), value, fill=accent, font=_font(20))


def write_synthetic(directory: str | Path, seed: int = 0) -> SyntheticSet:
    """Write the synthetic set (corpus.jsonl, queries.jsonl, qrels.tsv, images/) into ``directory``."""
    import io

    pil = require_pillow()
    root = Path(directory)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "queries").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    topics = rng.sample(_TOPICS, N_CORPUS)
    palette_offset = rng.randrange(len(_PALETTES))

    corpus: list[dict[str, Any]] = []
    queries: list[dict[str, Any]] = []
    qrels: list[tuple[str, str]] = []
    image_only: list[tuple[str, Path]] = []
    for i, topic in enumerate(topics):
        kind = _KINDS[i % len(_KINDS)]
        modality = "text+image" if i % 6 == 4 else "text" if i % 6 == 5 else "image"
        title = _title_for(kind, topic, rng)
        content = _content(kind, rng)
        doc_id = f"doc{i:02d}_{kind}"
        doc: dict[str, Any] = {"_id": doc_id}
        if modality != "image":
            doc["text"] = _describe(kind, title, content)
        if modality != "text":
            rel = Path("images") / f"{doc_id}.png"
            _render(kind, title, content, palette_offset + i).save(root / rel, format="PNG")
            doc["image"] = rel.as_posix()
            if modality == "image":
                image_only.append((doc_id, root / rel))
        doc["metadata"] = {"kind": kind, "modality": modality, "title": title}
        corpus.append(doc)
        qid = f"q_text_{doc_id}"
        queries.append({"_id": qid, "text": title, "metadata": {"group": GROUP_TEXT}})
        qrels.append((qid, doc_id))

    for doc_id, path in image_only:
        rel = Path("queries") / f"exact_{doc_id}.png"
        (root / rel).write_bytes(path.read_bytes())
        qid = f"q_exact_{doc_id}"
        queries.append({"_id": qid, "image": rel.as_posix(), "metadata": {"group": GROUP_EXACT}})
        qrels.append((qid, doc_id))

    for doc_id, path in image_only[:N_RERENDER]:
        rel = Path("queries") / f"rerender_{doc_id}.jpg"
        with pil.open(path) as src:
            small = src.convert("RGB").resize((SIZE[0] * 3 // 4, SIZE[1] * 3 // 4), pil.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=55)
        (root / rel).write_bytes(buf.getvalue())
        qid = f"q_rerender_{doc_id}"
        queries.append({"_id": qid, "image": rel.as_posix(), "metadata": {"group": GROUP_RERENDER}})
        qrels.append((qid, doc_id))

    def jsonl(rows: Sequence[dict[str, Any]]) -> str:
        return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)

    (root / "corpus.jsonl").write_text(jsonl(corpus), encoding="utf-8")
    (root / "queries.jsonl").write_text(jsonl(queries), encoding="utf-8")
    (root / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in qrels), encoding="utf-8"
    )
    groups: dict[str, int] = {}
    for q in queries:
        groups[q["metadata"]["group"]] = groups.get(q["metadata"]["group"], 0) + 1
    (root / "dataset.json").write_text(
        json.dumps({"name": "mmsearch-synthetic-screenshots", "seed": seed, "groups": groups}, indent=2) + "\n",
        encoding="utf-8",
    )
    return SyntheticSet(root=root, corpus=len(corpus), queries=len(queries), groups=groups)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmsearch_client.eval.synthetic",
        description="Write the synthetic screenshot evaluation set into DIR.",
    )
    parser.add_argument("directory", metavar="DIR")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        out = write_synthetic(args.directory, seed=args.seed)
    except (RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out.corpus} corpus items and {out.queries} queries {out.groups} to {out.root}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
