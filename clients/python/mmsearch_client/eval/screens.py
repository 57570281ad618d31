"""A seeded set of screenshots with real text, for measuring OCR, keyword, vector and hybrid retrieval.

    mmsearch eval --make-screens DIR [--seed 0] [--distractors 320]

52 pages rendered with Pillow's bundled font (the same pixels on every machine for a Pillow version):
12 dashboards and 10 settings pages (1280x800, with 15 px lines), 10 slides (1280x720), 10 receipts (600x1000)
and 10 scanned-looking letters (1000x1300: grey, rotated, blurred, noisy, JPEG quality 35). Each page has a
condition, ``metadata.condition`` of its document:

* ``clean``: dark text on a light background;
* ``small``: the page's quoted line is 15 px text on a 1280x800 screenshot;
* ``hard``: low contrast (grey on grey), blurred, saved as JPEG quality 35;
* ``scanned``: the letters.

Queries, one relevant page each, in groups (``metadata.group``): ``quote`` (words shown on the page),
``paraphrase`` (what the page is about, in other words) and ``degraded`` (a copy of the page image, rotated,
shrunk, blurred and saved as JPEG: an image query). The corpus is the pages (image documents) plus
``distractors`` texts from other topics in the same genres. ``truth.jsonl`` holds every line drawn on each page,
for OCR word recall (``bench/ocr_recall.py``).

Needs Pillow (``pip install pillow``).
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmsearch_client.eval import screens_content as content
from mmsearch_client.eval.synthetic import SyntheticSet, require_pillow

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage
    from PIL.ImageDraw import ImageDraw

__all__ = ["GROUPS", "PageSpec", "render_pages", "write_screens"]

GROUP_QUOTE = "quote"
GROUP_PARAPHRASE = "paraphrase"
GROUP_DEGRADED = "degraded"
GROUPS = (GROUP_QUOTE, GROUP_PARAPHRASE, GROUP_DEGRADED)
DEFAULT_DISTRACTORS = 320
SMALL_PX = 15
CLEAN = ((250, 250, 252), (25, 28, 36), (37, 99, 235))
LOW_CONTRAST = ((214, 214, 214), (150, 150, 150), (160, 160, 175))


@dataclass(slots=True)
class PageSpec:
    """One rendered page: its id, kind, condition, image, every line drawn, a quote and a paraphrase."""

    id: str
    kind: str
    condition: str
    image: PILImage
    data: bytes
    """The image file: PNG, or the JPEG the degradation wrote (``hard``, ``scanned``)."""
    lines: list[str] = field(default_factory=list)
    quote: str = ""
    paraphrase: str = ""


def _pil() -> Any:
    return require_pillow()


class _Canvas:
    """A page being drawn; remembers every line of text it draws."""

    def __init__(self, size: tuple[int, int], palette: tuple[tuple[int, int, int], ...]) -> None:
        from PIL.ImageDraw import Draw

        self.bg, self.fg, self.accent = palette
        self.image: PILImage = _pil().new("RGB", size, self.bg)
        self.draw: ImageDraw = Draw(self.image)
        self.lines: list[str] = []

    def text(self, xy: tuple[float, float], text: str, size: int, fill: tuple[int, int, int] | None = None) -> float:
        """Draw ``text``; returns its width."""
        from PIL import ImageFont

        font = ImageFont.load_default(size=size)
        self.draw.text(xy, text, fill=fill or self.fg, font=font)
        self.lines.append(text)
        return float(self.draw.textlength(text, font=font))


def _dashboard(page: dict[str, Any], canvas: _Canvas, rng: random.Random) -> None:
    d, fg, accent = canvas.draw, canvas.fg, canvas.accent
    d.rectangle((0, 0, 1280, 70), fill=accent if canvas.bg == CLEAN[0] else canvas.bg)
    head = (255, 255, 255) if canvas.bg == CLEAN[0] else fg
    canvas.text((32, 18), page["title"], 32, head)
    canvas.text((930, 28), f"Last 30 days, updated {rng.randint(6, 11):02d}:{rng.randint(0, 59):02d}", SMALL_PX, head)
    for i, (label, value) in enumerate(page["tiles"]):
        x = 32 + i * 308
        d.rounded_rectangle((x, 100, x + 288, 230), radius=10, outline=accent, width=2)
        canvas.text((x + 18, 118), label, 18)
        canvas.text((x + 18, 156), value, 40, accent)
    canvas.text((32, 270), "Top locations", 22)
    cities = rng.sample(["Lisbon", "Oslo", "Austin", "Kyoto", "Nairobi", "Lima", "Perth", "Quebec"], 4)
    for r, city in enumerate(cities):
        y = 312 + r * 34
        d.line((32, y - 6, 600, y - 6), fill=tuple((c + 255) // 2 for c in fg))
        canvas.text((40, y), city, SMALL_PX)
        canvas.text((300, y), f"{rng.randint(100, 9999):,}", SMALL_PX)
        canvas.text((480, y), f"{rng.randint(1, 40)}.{rng.randint(0, 9)}%", SMALL_PX)
    values = [rng.randint(20, 100) for _ in range(8)]
    for i, v in enumerate(values):
        x = 700 + i * 66
        d.rectangle((x, 560 - v * 2.6, x + 44, 560), fill=accent)
        canvas.text((x + 4, 570), f"W{i + 1}", SMALL_PX)
    canvas.text((32, 740), page["note"], SMALL_PX)


def _settings(page: dict[str, Any], canvas: _Canvas, rng: random.Random) -> None:
    d, fg, accent = canvas.draw, canvas.fg, canvas.accent
    d.rectangle((0, 0, 260, 800), fill=tuple(max(0, c - 12) for c in canvas.bg))
    for i, item in enumerate(["General", "Account", "Privacy", "Notifications", "Display", "Storage", "About"]):
        canvas.text((28, 40 + i * 44), item, 18)
    canvas.text((300, 36), page["title"], 30)
    for i, (name, desc) in enumerate(page["options"]):
        y = 120 + i * 110
        d.line((300, y - 16, 1240, y - 16), fill=tuple((c + 255) // 2 for c in fg))
        canvas.text((300, y), name, 20)
        canvas.text((300, y + 34), desc, SMALL_PX)
        on = rng.random() < 0.6
        d.rounded_rectangle((1150, y + 6, 1210, y + 36), radius=15, fill=accent if on else (200, 200, 200))
        d.ellipse((1180, y + 9, 1204, y + 33) if on else (1156, y + 9, 1180, y + 33), fill=(255, 255, 255))
    canvas.text((300, 760), f"Version 4.{rng.randint(0, 19)}.{rng.randint(0, 9)}", SMALL_PX)


def _slide(page: dict[str, Any], canvas: _Canvas, rng: random.Random) -> None:
    canvas.draw.rectangle((0, 690, 1280, 720), fill=canvas.accent)
    canvas.text((80, 70), page["title"], 48)
    for i, bullet in enumerate(page["bullets"]):
        y = 200 + i * 90
        canvas.draw.ellipse((84, y + 10, 100, y + 26), fill=canvas.accent)
        canvas.text((124, y), bullet, 30)
    canvas.text((80, 650), f"Company confidential, page {rng.randint(2, 40)}", SMALL_PX)


def _receipt(page: dict[str, Any], canvas: _Canvas, rng: random.Random) -> None:
    canvas.text((40, 40), page["title"], 30)
    canvas.text((40, 90), page["address"], 18)
    canvas.text(
        (40, 122),
        f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/2025 {rng.randint(8, 20)}:{rng.randint(0, 59):02d}",
        18,
    )
    y = 190
    total = 0.0
    for name, price in page["items"]:
        canvas.text((40, y), name, 20)
        if price:
            canvas.text((460, y), price, 20)
            total += float(price)
        y += 44
    canvas.draw.line((40, y, 560, y), fill=canvas.fg, width=2)
    canvas.text((40, y + 20), "TOTAL", 26)
    canvas.text((440, y + 20), f"{total:.2f}", 26)
    canvas.text((40, y + 80), f"VAT included, receipt no. {rng.randint(10000, 99999)}", 18)
    canvas.text((40, y + 120), "Thank you for your visit", 18)


def _scan(page: dict[str, Any], canvas: _Canvas, rng: random.Random) -> None:
    canvas.text((90, 110), page["title"], 34)
    for i, line in enumerate(page["body"]):
        canvas.text((90, 220 + i * 52), line, 24)
    canvas.text((90, 220 + len(page["body"]) * 52 + 60), f"Ref. {rng.randint(1000, 9999)}-{rng.randint(10, 99)}", 20)


def _harden(img: PILImage, rng: random.Random) -> bytes:
    """Blur and JPEG quality 35 (the low contrast was drawn)."""
    from PIL import ImageFilter

    return _encode(img.filter(ImageFilter.GaussianBlur(radius=1.0)), "JPEG", 35)


def _scanned(img: PILImage, rng: random.Random) -> bytes:
    """Grey, slightly rotated, blurred, noisy, JPEG quality 35: a page through an office scanner."""
    import numpy as np
    from PIL import ImageFilter

    pil = _pil()
    img = img.convert("L").rotate(rng.uniform(-2.0, 2.0), resample=pil.Resampling.BICUBIC, fillcolor=245)
    img = img.filter(ImageFilter.GaussianBlur(radius=0.8))
    arr = np.asarray(img, dtype=np.float32)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 9, arr.shape)
    img = pil.fromarray(np.clip(arr * 0.85 + 30 + noise, 0, 255).astype("uint8"), "L").convert("RGB")
    return _encode(img, "JPEG", 35)


def _encode(img: PILImage, fmt: str, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _decode(data: bytes) -> PILImage:
    img: PILImage = _pil().open(io.BytesIO(data))
    img.load()
    return img


def degrade(img: PILImage, rng: random.Random) -> bytes:
    """An image query made from a page: rotated up to 2 degrees, shrunk to 80 %, blurred, JPEG quality 50."""
    from PIL import ImageFilter

    pil = _pil()
    img = img.convert("RGB").rotate(
        rng.uniform(-2.0, 2.0), resample=pil.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255)
    )
    img = img.resize((int(img.width * 0.8), int(img.height * 0.8)), pil.Resampling.LANCZOS)
    return _encode(img.filter(ImageFilter.GaussianBlur(radius=0.5)), "JPEG", 50)


_Renderer = Callable[[dict[str, Any], _Canvas, random.Random], None]
_KINDS: list[tuple[str, list[dict[str, Any]], tuple[int, int], _Renderer, tuple[str, ...]]] = [
    ("dashboard", content.DASHBOARDS, (1280, 800), _dashboard, ("clean", "small", "hard")),
    ("settings", content.SETTINGS, (1280, 800), _settings, ("clean", "small", "hard")),
    ("slide", content.SLIDES, (1280, 720), _slide, ("clean", "hard")),
    ("receipt", content.RECEIPTS, (600, 1000), _receipt, ("clean", "hard")),
    ("scan", content.SCANS, (1000, 1300), _scan, ("scanned",)),
]


def _quote(kind: str, condition: str, page: dict[str, Any], rng: random.Random) -> str:
    """Words shown on the page; on ``small`` pages, a 15 px line."""
    if kind == "dashboard":
        if condition == "small":
            return str(page["note"])
        label, value = rng.choice(page["tiles"])
        return f"{page['title']} {label}" if condition == "hard" else f"{label} {value}"
    if kind == "settings":
        name, desc = rng.choice(page["options"])
        return str(desc) if condition == "small" else f"{page['title']} {name}"
    if kind == "slide":
        return str(rng.choice(page["bullets"]))
    if kind == "receipt":
        return f"{page['title']} {rng.choice(page['items'])[0]}"
    return str(rng.choice(page["body"][:-1]))


def render_pages(seed: int = 0) -> list[PageSpec]:
    """Every page of the set, rendered (deterministic for ``seed``)."""
    rng = random.Random(seed)
    out: list[PageSpec] = []
    for kind, pages, size, render, conditions in _KINDS:
        for i, page in enumerate(pages):
            condition = conditions[i % len(conditions)]
            canvas = _Canvas(size, LOW_CONTRAST if condition == "hard" else CLEAN)
            render(page, canvas, rng)
            if condition == "hard":
                data = _harden(canvas.image, rng)
            elif condition == "scanned":
                data = _scanned(canvas.image, rng)
            else:
                data = _encode(canvas.image, "PNG")
            out.append(
                PageSpec(
                    id=f"{kind}{i:02d}",
                    kind=kind,
                    condition=condition,
                    image=_decode(data),
                    data=data,
                    lines=canvas.lines,
                    quote=_quote(kind, condition, page, rng),
                    paraphrase=str(page["paraphrase"]),
                )
            )
    return out


def distractor_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` texts from the distractor topics and templates (all combinations first, then repeats with new
    numbers)."""
    rng = random.Random(seed + 1)
    combos = [(t, tpl) for tpl in content.DISTRACTOR_TEMPLATES for t in content.DISTRACTOR_TOPICS]
    rng.shuffle(combos)
    out = []
    for i in range(n):
        topic, template = combos[i % len(combos)]
        text = template.format(topic=topic, n=f"{rng.randint(12, 98_000):,}", p=rng.randint(2, 60))
        out.append(text[0].upper() + text[1:])
    return out


def write_screens(directory: str | Path, seed: int = 0, distractors: int = DEFAULT_DISTRACTORS) -> SyntheticSet:
    """Write the set (corpus.jsonl, queries.jsonl, qrels.tsv, truth.jsonl, images/, queries/) into ``directory``."""
    root = Path(directory)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "queries").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 2)
    corpus: list[dict[str, Any]] = []
    queries: list[dict[str, Any]] = []
    truth: list[dict[str, Any]] = []
    for page in render_pages(seed):
        rel = f"images/{page.id}.{'jpg' if page.image.format == 'JPEG' else 'png'}"
        (root / rel).write_bytes(page.data)
        meta = {"kind": page.kind, "condition": page.condition}
        corpus.append({"_id": page.id, "image": rel, "metadata": meta})
        truth.append({"_id": page.id, "image": rel, "condition": page.condition, "lines": page.lines})
        queries.append({"_id": f"quote_{page.id}", "text": page.quote, "metadata": {"group": GROUP_QUOTE, **meta}})
        queries.append(
            {"_id": f"para_{page.id}", "text": page.paraphrase, "metadata": {"group": GROUP_PARAPHRASE, **meta}}
        )
        qrel = f"queries/degraded_{page.id}.jpg"
        (root / qrel).write_bytes(degrade(page.image, rng))
        queries.append({"_id": f"degraded_{page.id}", "image": qrel, "metadata": {"group": GROUP_DEGRADED, **meta}})
    for i, text in enumerate(distractor_texts(distractors, seed)):
        corpus.append({"_id": f"distractor{i:03d}", "text": text, "metadata": {"kind": "distractor"}})

    def jsonl(rows: Sequence[dict[str, Any]]) -> str:
        return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)

    (root / "corpus.jsonl").write_text(jsonl(corpus), encoding="utf-8")
    (root / "queries.jsonl").write_text(jsonl(queries), encoding="utf-8")
    (root / "truth.jsonl").write_text(jsonl(truth), encoding="utf-8")
    qrels = "".join(f"{q['_id']}\t{q['_id'].split('_', 1)[1]}\t1\n" for q in queries)
    (root / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels, encoding="utf-8")
    groups = {g: sum(1 for q in queries if q["metadata"]["group"] == g) for g in GROUPS}
    (root / "dataset.json").write_text(
        json.dumps({"name": "mmsearch-screens", "seed": seed, "distractors": distractors, "groups": groups}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    return SyntheticSet(root=root, corpus=len(corpus), queries=len(queries), groups=groups)
