"""Content-addressed store for images sent inline (data URIs / uploads) with documents.

An image document keeps its source URL when it was given by URL. An inline image has no URL, so its bytes are
written once to ``MMSEARCH_MEDIA_DIR/<sha256>.<ext>`` and the document stores ``media://<sha256>.<ext>``.
Search resolves these references when it sends candidates to the reranker and serves them at ``/media/<name>``.
With several Search replicas the directory must be shared (a ReadWriteMany volume).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tempfile
from pathlib import Path

from PIL import Image

SCHEME = "media://"
_NAME_RE = re.compile(r"^[0-9a-f]{64}\.(png|jpeg|jpg|webp|gif|bmp|tiff)$")
_DATA_RE = re.compile(r"^data:image/([a-z0-9.+-]+);base64,", re.IGNORECASE)
_MIME = {"jpg": "jpeg", "tiff": "tiff"}


class MediaStore:
    """Writes inline images by content hash and reads them back."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put_data_uri(self, uri: str) -> str:
        """Store the image of a data URI (already validated by the embedder); returns its ``media://`` ref."""
        m = _DATA_RE.match(uri)
        if not m:
            raise ValueError("not a base64 image data URI")
        data = base64.b64decode(uri[m.end() :], validate=True)
        # The extension comes from the bytes (header only), not from the declared MIME type.
        with Image.open(io.BytesIO(data)) as img:
            ext = {"MPO": "jpeg"}.get(img.format or "", (img.format or "").lower())
        name = f"{hashlib.sha256(data).hexdigest()}.{ext}"
        if not _NAME_RE.match(name):
            raise ValueError(f"unsupported image type: {img.format}")
        path = self.root / name
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        return SCHEME + name

    def path_of(self, ref: str) -> Path | None:
        """The file behind a ``media://`` ref, or None if the ref is malformed or missing."""
        name = ref[len(SCHEME) :] if ref.startswith(SCHEME) else ref
        if not _NAME_RE.match(name):
            return None
        path = self.root / name
        return path if path.is_file() else None

    def to_data_uri(self, ref: str) -> str | None:
        """A ``media://`` ref as a data URI (for the reranker), or None if unknown."""
        path = self.path_of(ref)
        if path is None:
            return None
        ext = path.suffix[1:]
        return f"data:image/{_MIME.get(ext, ext)};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
