"""Seeded benchmark inputs made locally: texts, photo-like images, images of a given byte size, vectors."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_WORDS = [
    "red",
    "blue",
    "green",
    "small",
    "large",
    "old",
    "new",
    "wooden",
    "metal",
    "glass",
    "cat",
    "dog",
    "bird",
    "horse",
    "car",
    "bicycle",
    "boat",
    "house",
    "tree",
    "river",
    "mountain",
    "street",
    "city",
    "beach",
    "forest",
    "kitchen",
    "table",
    "chair",
    "window",
    "door",
    "lamp",
    "book",
    "phone",
    "camera",
    "person",
    "child",
    "running",
    "sitting",
    "standing",
    "near",
    "under",
    "beside",
    "behind",
    "photo",
    "picture",
    "drawing",
    "night",
    "morning",
    "winter",
    "summer",
]


def texts(n: int, *, words: tuple[int, int] = (6, 10), seed: int = 0, max_chars: int | None = 70) -> list[str]:
    """``n`` distinct sentences of ``words`` words, cut at a word boundary to at most ``max_chars`` characters.

    The default cap (70) keeps texts inside CLIP's 77 positions with the byte-level tokenizers of the random
    benchmark models (one token per byte), so that no text is truncated and all cost what they say.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(words[0], words[1] + 1))
        body = " ".join(rng.choice(_WORDS, size=k))
        suffix = f" {i}"
        if max_chars is not None and len(body) + len(suffix) > max_chars:
            body = body[: max_chars - len(suffix)].rsplit(" ", 1)[0]
        out.append(body + suffix)
    return out


def photo_like(seed: int, size: tuple[int, int] = (224, 224), noise: int = 6) -> Image.Image:
    """A smooth gradient with blurred shapes and mild sensor-like noise (compresses like a small photo)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [c0 + (c1 - c0) * (xx * a + yy * (1 - a)) / max(w, h) for c0, c1, a in rng.uniform(0, 255, (3, 3))], axis=-1
    )
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 8, h // 2))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(radius=max(1, w // 150)))
    if noise:
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-noise, noise + 1, (h, w, 3), dtype=np.int16)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    if fmt.upper() == "JPEG":
        img.save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes, fmt: str = "PNG") -> str:
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(data).decode("ascii")


def image_of_bytes(target: int, fmt: str = "PNG", seed: int = 0) -> tuple[bytes, tuple[int, int]]:
    """An encoded image of about ``target`` bytes (within ~10%): photo-like content, its side adjusted."""
    noise = 24 if fmt.upper() == "PNG" else 40
    side = 256
    data = encode(photo_like(seed, (side, side), noise), fmt)
    for _ in range(6):
        if abs(len(data) - target) <= 0.08 * target:
            break
        side = max(16, int(side * (target / len(data)) ** 0.5))
        data = encode(photo_like(seed, (side, side), noise), fmt)
    return data, (side, side)


def write_images(root: Path, n: int, size: tuple[int, int] = (224, 224), prefix: str = "img") -> list[Path]:
    """``n`` photo-like PNGs ``<prefix><i>.png`` under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = root / f"{prefix}{i}.png"
        if not p.exists():
            p.write_bytes(encode(photo_like(i, size)))
        out.append(p)
    return out


def unit_vectors(
    n: int, dim: int, *, seed: int = 0, clusters: int = 0, spread: float = 0.35, centre_seed: int | None = None
) -> np.ndarray:
    """``n`` unit vectors (float32). ``clusters > 0``: a mixture around that many random centres (like real
    embeddings, which are far from uniform), drawn from ``centre_seed`` (default ``seed``: pass the documents'
    seed to draw queries around the same centres); 0: isotropic Gaussian (the hardest case for ANN indexes)."""
    rng = np.random.default_rng(seed)
    if clusters:
        crng = np.random.default_rng(seed if centre_seed is None else centre_seed)
        centres = crng.standard_normal((clusters, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        x = centres[rng.integers(0, clusters, n)]
        x += rng.standard_normal((n, dim), dtype=np.float32) * (spread / np.sqrt(dim))
    else:
        x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x
