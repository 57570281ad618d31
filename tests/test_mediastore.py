"""The media store (``service.mediastore``) on a local directory, and ``media://`` references in the loader."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from bench.support.images import make_image, png_bytes
from service.config import Settings
from service.media import MediaError, MediaLoader
from service.mediastore import (
    LocalBlobs,
    MediaStore,
    join_ref,
    make_thumbnail,
    name_of,
    open_media_store,
    split_ref,
    thumbnail_name,
)


def test_put_image_is_content_addressed_with_a_thumbnail(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    data = png_bytes(make_image(1, (600, 300)))
    stored = store.put_image(data, "PNG")
    digest = hashlib.sha256(data).hexdigest()
    assert stored.ref == f"media://{digest}.png" and stored.thumbnail == f"{digest}.thumb.jpeg"
    assert store.read(stored.ref) == data and store.put_image(data, "PNG") == stored
    assert sorted(os.listdir(tmp_path)) == sorted([f"{digest}.png", f"{digest}.thumb.jpeg"])  # no .tmp-* left
    with Image.open(io.BytesIO(store.blobs.get(f"{digest}.thumb.jpeg") or b"")) as thumb:
        assert thumb.size == (256, 128)


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "media"
    blobs = LocalBlobs(root)
    secret = tmp_path / "secret"
    secret.write_bytes(b"private")
    root.mkdir()
    name = "a" * 64 + ".png"
    os.symlink(secret, root / name)
    assert blobs.get(name) is None and not blobs.exists(name) and blobs.local_path(name) is None
    assert list(blobs.names()) == []
    blobs.put(name, b"real")  # a link in the way is replaced by the real file, the target is untouched
    assert blobs.get(name) == b"real" and secret.read_bytes() == b"private" and not (root / name).is_symlink()


def test_failed_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = LocalBlobs(tmp_path)

    def disk_full(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        blobs.put("b" * 64 + ".png", b"bytes")
    assert os.listdir(tmp_path) == []


def test_sweep_removes_old_temporary_files_only(tmp_path: Path) -> None:
    blobs = LocalBlobs(tmp_path)
    (tmp_path / ".tmp-old").write_bytes(b"x")
    os.utime(tmp_path / ".tmp-old", (1, 1))
    (tmp_path / ".tmp-new").write_bytes(b"x")
    assert blobs.sweep_temporary(60) == 1 and sorted(os.listdir(tmp_path)) == [".tmp-new"]


@pytest.mark.parametrize("bad", ["../x.png", "a/b.png", "A" * 64 + ".png", "a" * 64 + ".svg", "", "a" * 64])
def test_unsafe_names_are_refused(tmp_path: Path, bad: str) -> None:
    store = MediaStore(tmp_path)
    assert name_of(bad) is None and store.read(bad) is None and store.read("media://" + bad) is None
    with pytest.raises(ValueError, match="invalid media name"):
        LocalBlobs(tmp_path).put(bad, b"x")


def test_stored_value_splits_into_image_and_source() -> None:
    ref = "media://" + "c" * 64 + ".jpeg"
    url = "https://example.org/a.jpg?x=1#frag"
    assert split_ref(join_ref(ref, url)) == (ref, url)
    assert split_ref(join_ref(ref, None)) == (ref, None)
    assert split_ref("http://old/stored-url.png") == ("http://old/stored-url.png", None)
    assert thumbnail_name(ref) == "c" * 64 + ".thumb.jpeg" and thumbnail_name("http://x/y.png") is None


def test_thumbnail_of_a_transparent_image_is_on_white() -> None:
    img = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    out = make_thumbnail(buf.getvalue())
    assert out is not None
    with Image.open(io.BytesIO(out)) as thumb:
        assert thumb.size == (40, 20) and thumb.convert("RGB").getpixel((5, 5)) == (255, 255, 255)


def test_loader_reads_media_references_from_the_store(tmp_path: Path) -> None:
    settings = Settings(media_dir=tmp_path)
    data = png_bytes(make_image(2))
    ref = open_media_store(settings).put_image(data, "PNG").ref
    loader = MediaLoader(settings)
    img = asyncio.run(loader.load(ref, "documents[0].image"))
    assert img.size == (64, 48)
    with pytest.raises(MediaError) as e:
        asyncio.run(loader.load("media://" + "d" * 64 + ".png", "documents[3].image"))
    assert (e.value.status, e.value.reason, e.value.field) == (422, "media_unavailable", "documents[3].image")
    with pytest.raises(MediaError) as e:
        asyncio.run(loader.load("media://../../etc/passwd", "query.image"))
    assert e.value.reason == "bad_url"


def test_storing_known_bytes_again_makes_no_new_thumbnail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = MediaStore(tmp_path)
    data = png_bytes(make_image(4))
    first = store.put_image(data, "PNG")
    import service.mediastore as mediastore

    def fail(_: bytes) -> bytes:
        raise AssertionError("thumbnail made again")

    monkeypatch.setattr(mediastore, "make_thumbnail", fail)
    assert store.put_image(data, "PNG") == first
