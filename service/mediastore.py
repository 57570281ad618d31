"""Search's own copy of every document image, content-addressed, on a local directory or S3.

Ingest stores each image's bytes once as ``<sha256>.<ext>`` (however it arrived: URL, data URI or upload) plus a
bounded JPEG preview ``<sha256>.thumb.jpeg``; the document keeps the reference ``media://<sha256>.<ext>``.
Searches, the Reranker, the Embedder and the Reader read the stored bytes; nothing ever fetches a document image
from its source again.

Where: ``MMSEARCH_MEDIA_URI`` (a directory or ``s3://bucket/prefix``, see ``service.media_s3``), else
``MMSEARCH_MEDIA_DIR``. Every process that resolves ``media://`` references (Search replicas and the model
services) must reach the same store: a shared volume or the same bucket.

The stored ``image`` column holds the reference, followed for URL images by ``#`` and the original URL
(``join_ref`` / ``split_ref``): one column, no index schema change; the API shows them as ``image`` and ``source``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from PIL import Image, ImageOps

if TYPE_CHECKING:
    from service.config import Settings

SCHEME = "media://"
LOCK_STRIPES = 64
_HEX8 = re.compile(r"^[0-9a-f]{8}")
THUMB_SIDE = 256
"""Longest side of a thumbnail, in pixels."""
THUMB_SUFFIX = ".thumb.jpeg"
AV_CONTENT_TYPES = {
    "mp4": "video/mp4",
    "webm": "video/webm",
    "mov": "video/quicktime",
    "mkv": "video/x-matroska",
    "m4a": "audio/mp4",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
}
"""Stored audio and video clips by extension (``put_clip``)."""
_NAME_RE = re.compile(
    r"^[0-9a-f]{64}\.(png|jpeg|webp|gif|bmp|tiff|thumb\.jpeg|t\d{1,10}\.thumb\.jpeg|"
    + "|".join(AV_CONTENT_TYPES)
    + r")\Z"
)
_EXT = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
CONTENT_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    **AV_CONTENT_TYPES,
}


def valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(name.rsplit(".", 1)[-1], "application/octet-stream")


def name_of(ref: str) -> str | None:
    """The stored name behind a ``media://`` reference (or a bare name; a clip's ``?t=...`` window left out);
    None if it is not one."""
    name = ref[len(SCHEME) :] if ref.startswith(SCHEME) else ref
    name = name.split("?", 1)[0]
    return name if valid_name(name) else None


def is_clip(name: str) -> bool:
    """Whether a stored name is an audio or video clip."""
    return name.rsplit(".", 1)[-1] in AV_CONTENT_TYPES


def is_video(name: str) -> bool:
    return AV_CONTENT_TYPES.get(name.rsplit(".", 1)[-1], "").startswith("video/")


def segment_thumbnail_name(digest: str, t0: float) -> str:
    """A video segment's keyframe preview: ``<sha256>.t<milliseconds>.thumb.jpeg``."""
    return f"{digest}.t{round(t0 * 1000)}{THUMB_SUFFIX}"


def thumbnail_name(ref: str) -> str | None:
    """The thumbnail's stored name for an image reference or a video segment's (``?t=<t0>,...``); None for
    anything else (audio, a thumbnail)."""
    name = name_of(ref)
    if name is None or name.endswith(THUMB_SUFFIX):
        return None
    digest = name.split(".", 1)[0]
    if is_clip(name):
        from service.segments import parse_ref

        seg = parse_ref(ref)
        return segment_thumbnail_name(digest, seg.t0) if seg is not None and is_video(name) else None
    return digest + THUMB_SUFFIX


def join_ref(ref: str, source: str | None) -> str:
    """What the index stores as ``image``: the reference, and the original URL when there was one."""
    return f"{ref}#{source}" if source else ref


def split_ref(stored: str | None) -> tuple[str | None, str | None]:
    """``(image, source)`` from a stored ``image`` value. Values that are not ``media://`` references (documents
    stored before media were kept) come back unchanged, with no source."""
    if stored is None or not stored.startswith(SCHEME):
        return stored, None
    ref, sep, source = stored.partition("#")
    return ref, (source if sep else None)


class Blobs(Protocol):
    """Named immutable blobs: a local directory (``LocalBlobs``) or a bucket (``service.media_s3.S3MediaStore``)."""

    def put(self, name: str, data: bytes) -> None: ...
    def get(self, name: str) -> bytes | None: ...
    def exists(self, name: str) -> bool: ...
    def delete(self, name: str) -> None: ...
    def touch(self, name: str) -> bool: ...
    def delete_if_idle(self, name: str, grace_s: float) -> bool: ...
    def names(self) -> Iterator[str]: ...
    def age_s(self, name: str) -> float | None: ...
    def local_path(self, name: str) -> Path | None: ...
    def sweep_temporary(self, max_age_s: float) -> int: ...


class LocalBlobs:
    """Blobs as files of one directory: written to a temporary file, fsynced, renamed, directory fsynced.

    Symbolic links are never followed: a file replaced by a link reads as missing."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        if not valid_name(name):
            raise ValueError(f"invalid media name {name!r}")
        return self.root / name

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        if self.touch(name):  # stored already: the GC's grace period starts over (see age_s)
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.root)

    def get(self, name: str) -> bytes | None:
        try:
            fd = os.open(self._path(name), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
                return None
            raise
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            return f.read()

    def _lstat(self, name: str) -> os.stat_result | None:
        try:
            st = os.lstat(self._path(name))
        except FileNotFoundError:
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def exists(self, name: str) -> bool:
        return self._lstat(name) is not None

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(name))

    def touch(self, name: str) -> bool:
        """Restart ``name``'s GC grace period (its mtime); ``False`` if it is not stored."""
        if not self.exists(name):
            return False
        try:
            os.utime(self._path(name), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def delete_if_idle(self, name: str, grace_s: float) -> bool:
        """Delete ``name`` unless it was stored or touched in the last ``grace_s`` seconds, also by another process
        sharing the directory: it is first renamed aside (a writer arriving then finds it missing and writes it
        again), then its age is checked once more (a rename keeps the mtime, so a touch that came before the
        rename shows) and it is put back if young. Returns whether it was deleted."""
        path = self._path(name)
        st = self._lstat(name)
        if st is None or time.time() - st.st_mtime < grace_s:
            return False
        aside = self.root / f".gc-{name}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        st = os.lstat(aside)
        if time.time() - st.st_mtime < grace_s or not stat.S_ISREG(st.st_mode):
            os.rename(aside, path)  # touched between the checks (same bytes if rewritten meanwhile: by content)
            return False
        os.unlink(aside)
        return True

    def names(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for entry in os.scandir(self.root):
            if valid_name(entry.name) and entry.is_file(follow_symlinks=False):
                yield entry.name

    def age_s(self, name: str) -> float | None:
        st = self._lstat(name)
        return None if st is None else max(0.0, time.time() - st.st_mtime)

    def local_path(self, name: str) -> Path | None:
        return self._path(name) if self.exists(name) else None

    def sweep_temporary(self, max_age_s: float) -> int:
        """Remove ``.tmp-*`` files older than ``max_age_s`` (left by a crash between write and rename) and ``.gc-*``
        files (a crash during a garbage collector's delete, see ``delete_if_idle``)."""
        n = 0
        if not self.root.is_dir():
            return 0
        now = time.time()
        for entry in os.scandir(self.root):
            leftover = entry.name.startswith((".tmp-", ".gc-"))
            if leftover and now - entry.stat(follow_symlinks=False).st_mtime >= max_age_s:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    n += 1
        return n


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class StoredImage:
    ref: str
    """``media://<sha256>.<ext>``"""
    thumbnail: str | None
    """The thumbnail's stored name (None when no preview could be made)."""


class MediaStore:
    """Content-addressed images (and their thumbnails) over a blob store."""

    def __init__(self, blobs: Blobs | Path | str) -> None:
        self.blobs: Blobs = LocalBlobs(Path(blobs)) if isinstance(blobs, (str, Path)) else blobs
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]

    def lock_for(self, name: str) -> threading.Lock:
        """The lock ingest holds while it checks and stores (or touches) an image and its thumbnail, and the
        garbage collector while it checks and deletes one of them: a re-upsert of the same bytes is never lost
        between the collector's age check and its delete (``service.mediagc``). Keyed by the content hash."""
        digest = name.removeprefix(SCHEME).split(".", 1)[0]
        return self._locks[int(digest[:8], 16) % LOCK_STRIPES if _HEX8.match(digest) else 0]

    @classmethod
    def open(cls, uri: str) -> MediaStore:
        """``s3://bucket/prefix`` or a directory."""
        from service import objectstore

        if objectstore.is_s3(uri):
            from service.media_s3 import S3MediaStore

            return cls(S3MediaStore(uri))
        return cls(Path(os.path.expanduser(uri)))

    def check(self) -> None:
        """Fail at start-up with a clear message when an object store cannot be reached (a directory is created
        on first write)."""
        check = getattr(self.blobs, "check", None)
        if check is not None:
            check()

    def put_image(self, data: bytes, image_format: str) -> StoredImage:
        """Store validated image bytes (``image_format``: Pillow's name, read from the header) and their thumbnail;
        returns the reference. Blocking: call it in a worker thread."""
        ext = _EXT.get(image_format.upper())
        if ext is None:
            raise ValueError(f"unsupported image type: {image_format}")
        digest = hashlib.sha256(data).hexdigest()
        name = f"{digest}.{ext}"
        thumb: str | None = digest + THUMB_SUFFIX
        with self.lock_for(name):
            # Seen before: no new preview; both are touched (their GC grace period starts over), never rewritten.
            if self.blobs.touch(digest + THUMB_SUFFIX) and self.blobs.touch(name):
                return StoredImage(SCHEME + name, thumb)
        preview = make_thumbnail(data)  # outside the lock: the slow part
        with self.lock_for(name):
            if preview is None:
                thumb = None
            else:
                self.blobs.put(digest + THUMB_SUFFIX, preview)
            self.blobs.put(name, data)  # last: a stored image always has its thumbnail
        return StoredImage(SCHEME + name, thumb)

    def put_clip(self, data: bytes, ext: str, thumbnails: dict[float, bytes] | None = None) -> str:
        """Store validated audio or video bytes (``ext``: a key of ``AV_CONTENT_TYPES``) and their segments'
        keyframe previews (JPEG bytes by segment start); returns the clip's reference. Blocking."""
        if ext not in AV_CONTENT_TYPES:
            raise ValueError(f"unsupported clip type: {ext}")
        digest = hashlib.sha256(data).hexdigest()
        name = f"{digest}.{ext}"
        with self.lock_for(name):
            for t0, jpeg in (thumbnails or {}).items():
                thumb = segment_thumbnail_name(digest, t0)
                if not self.blobs.touch(thumb):
                    self.blobs.put(thumb, jpeg)
            self.blobs.put(name, data)  # last: a stored clip always has its previews (put touches a known one)
        return SCHEME + name

    def read(self, ref: str) -> bytes | None:
        """The bytes behind a reference or stored name; None if malformed or missing. Blocking."""
        name = name_of(ref)
        return None if name is None else self.blobs.get(name)

    def exists(self, ref: str) -> bool:
        name = name_of(ref)
        return name is not None and self.blobs.exists(name)

    def path_of(self, ref: str) -> Path | None:
        """The local file behind a reference (local stores only), or None."""
        name = name_of(ref)
        return None if name is None else self.blobs.local_path(name)


def make_thumbnail(data: bytes, side: int = THUMB_SIDE) -> bytes | None:
    """A JPEG preview whose longest side is at most ``side`` (the image's bytes are already validated)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (side, side))  # JPEG: decode at a reduced scale
            img.seek(0)
            img.load()
            turned = ImageOps.exif_transpose(img)
            rgb = turned.convert("RGBA") if turned.mode in ("RGBA", "LA", "P", "PA") else turned
            rgb.thumbnail((side, side))
            if rgb.mode == "RGBA":
                canvas = Image.new("RGB", rgb.size, (255, 255, 255))
                canvas.paste(rgb, mask=rgb.getchannel("A"))
                rgb = canvas
            out = io.BytesIO()
            rgb.convert("RGB").save(out, "JPEG", quality=80)
            return out.getvalue()
    except Exception:
        return None


def open_media_store(settings: Settings) -> MediaStore:
    """The store the settings name: ``media_uri`` when set, else ``media_dir``."""
    if settings.media_uri:
        return MediaStore.open(settings.media_uri)
    return MediaStore(settings.media_dir)


def local_media_dir(settings: Settings) -> Path | None:
    """The media directory on this machine (None when media live in object storage)."""
    from service import objectstore

    uri = settings.media_uri
    if not uri:
        return settings.media_dir
    return None if objectstore.is_s3(uri) else Path(os.path.expanduser(uri))
