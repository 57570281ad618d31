"""Seeded, distinct test images (no downloads)."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def make_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A random-noise background with a few coloured shapes: different for every seed."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, size[0] // 2)), int(rng.integers(0, size[1] // 2))
        x1, y1 = x0 + int(rng.integers(8, size[0] // 2)), y0 + int(rng.integers(8, size[1] // 2))
        draw.rectangle((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def data_uri(img: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode("ascii")


def stored_ref(uri: str) -> str:
    """The ``media://`` reference Search stores a PNG data URI's image under."""
    data = base64.b64decode(uri.partition(",")[2])
    return f"media://{hashlib.sha256(data).hexdigest()}.png"


def decode(data: bytes) -> Image.Image:
    """Decode like the server does for a plain PNG (RGB)."""
    return Image.open(io.BytesIO(data)).convert("RGB")


def write_images(root: Path, n: int, prefix: str = "img") -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = root / f"{prefix}{i}.png"
        p.write_bytes(png_bytes(make_image(i)))
        paths.append(p)
    return paths


Box = tuple[float, float, float, float]


def text_image(
    lines: list[tuple[str, tuple[int, int]]], size: tuple[int, int] = (480, 160), font_size: int = 22
) -> tuple[Image.Image, dict[str, Box]]:
    """A white image with ``lines`` of black text at their (x, y); returns it with each word's drawn box.

    Pillow's bundled font (no system fonts needed), so the pixels are the same on every machine.
    """
    from PIL import ImageFont

    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_size)
    boxes: dict[str, Box] = {}
    for text, (x, y) in lines:
        draw.text((x, y), text, fill="black", font=font)
        cursor = float(x)
        for word in text.split(" "):
            x0, y0, x1, y1 = draw.textbbox((cursor, y), word, font=font)
            boxes[word] = (float(x0), float(y0), float(x1), float(y1))
            cursor += draw.textlength(word + " ", font=font)
    return img, boxes


def overlap(a: Box, b: Box) -> float:
    """Intersection area over the area of ``b``."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / ((b[2] - b[0]) * (b[3] - b[1]))
