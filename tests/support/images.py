"""Seeded, distinct test images (no downloads)."""

from __future__ import annotations

import base64
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
