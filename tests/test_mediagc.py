"""The media garbage collector and a re-upsert of the same bytes racing it (#13.8): the image is never lost.

The race: the sweep finds an unreferenced image older than the grace period, then a re-upsert of the same bytes
touches it (it is stored already, so ingest only restarts its grace period) and writes a document referencing it,
then the sweep deletes it. Here the re-upsert is injected exactly between the sweep's age check and its delete.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench.support.images import make_image, png_bytes
from service import mediastore
from service.mediagc import collect
from service.mediastore import LocalBlobs, MediaStore, name_of, thumbnail_name
from tests.support.fakes import MemoryIndex

HOUR = 3600.0


def _age(media: MediaStore, name: str, seconds: float) -> None:
    path = media.blobs.local_path(name)
    assert path is not None
    past = time.time() - seconds
    os.utime(path, (past, past))


def _stored_long_ago(media: MediaStore, data: bytes) -> tuple[str, str]:
    stored = media.put_image(data, "PNG")
    name, thumb = name_of(stored.ref), thumbnail_name(stored.ref)
    assert name and thumb
    _age(media, name, HOUR)
    _age(media, thumb, HOUR)
    return name, thumb


def test_unreferenced_old_media_are_collected_and_referenced_or_young_kept(tmp_path: Path) -> None:
    media = MediaStore(tmp_path / "media")
    old, old_thumb = _stored_long_ago(media, png_bytes(make_image(1)))
    kept, kept_thumb = _stored_long_ago(media, png_bytes(make_image(2)))
    young = name_of(media.put_image(png_bytes(make_image(3)), "PNG").ref)
    index = MemoryIndex()
    from service.index import IndexRecord

    index.ensure_collection("c", 2, "m")
    index.upsert("c", [IndexRecord("d", None, f"media://{kept}", {}, [1.0, 0.0])])
    assert collect(index, media, grace_s=600) == 2
    assert not media.blobs.exists(old) and not media.blobs.exists(old_thumb)
    assert media.blobs.exists(kept) and media.blobs.exists(kept_thumb) and young and media.blobs.exists(young)


def test_a_reupsert_between_the_age_check_and_the_delete_is_not_lost(tmp_path: Path) -> None:
    """Same process: the re-upsert (another request's worker thread) waits for the sweep's lock on that name,
    then finds the image gone and stores it again, or touched it first and the sweep keeps it."""
    media = MediaStore(tmp_path / "media")
    data = png_bytes(make_image(4))
    name, thumb = _stored_long_ago(media, data)
    checked_age = media.blobs.age_s
    writers: list[threading.Thread] = []
    finished = threading.Event()

    def age_then_reupsert(n: str) -> float | None:
        age = checked_age(n)
        if n == name and not writers:
            w = threading.Thread(target=lambda: (media.put_image(data, "PNG"), finished.set()), daemon=True)
            writers.append(w)
            w.start()
            finished.wait(1.0)  # without the lock the re-upsert touches the file here, before the delete
        return age

    media.blobs.age_s = age_then_reupsert  # type: ignore[method-assign]
    collect(MemoryIndex(), media, grace_s=600)
    writers[0].join(30)
    assert finished.is_set()
    assert media.read(f"media://{name}") == data  # the document the re-upsert writes next can be served
    assert media.blobs.exists(thumb)


def test_another_process_touching_it_during_the_delete_keeps_it(tmp_path: Path, monkeypatch: Any) -> None:
    """Another replica sharing the directory (its own locks): a touch between the sweep's checks and its delete
    shows on the renamed-aside file (a rename keeps the mtime), which is put back."""
    media = MediaStore(tmp_path / "media")
    replica = MediaStore(tmp_path / "media")
    data = png_bytes(make_image(5))
    name, thumb = _stored_long_ago(media, data)
    rename = os.rename
    touched: list[str] = []

    def rename_after_a_touch(src: Any, dst: Any) -> None:
        if Path(src).name == name and not touched:
            replica.put_image(data, "PNG")  # the other replica's re-upsert: touches image and thumbnail
            touched.append(name)
        rename(src, dst)

    monkeypatch.setattr(mediastore.os, "rename", rename_after_a_touch)
    collect(MemoryIndex(), media, grace_s=600)
    assert touched == [name]
    assert media.read(f"media://{name}") == data and media.blobs.exists(thumb)
    assert not any(p.name.startswith(".gc-") for p in (tmp_path / "media").iterdir())


def test_another_process_writing_it_after_the_rename_keeps_its_copy(tmp_path: Path, monkeypatch: Any) -> None:
    """The re-upsert comes after the sweep renamed the old file aside: it finds the name missing and writes the
    bytes again; the sweep deletes only the old file."""
    media = MediaStore(tmp_path / "media")
    replica = MediaStore(tmp_path / "media")
    data = png_bytes(make_image(6))
    name, _ = _stored_long_ago(media, data)
    rename = os.rename
    written: list[str] = []

    def rename_then_write(src: Any, dst: Any) -> None:
        rename(src, dst)
        if Path(src).name == name and not written:
            replica.put_image(data, "PNG")
            written.append(name)

    monkeypatch.setattr(mediastore.os, "rename", rename_then_write)
    assert collect(MemoryIndex(), media, grace_s=600) >= 1
    assert written == [name]
    assert media.read(f"media://{name}") == data
    assert LocalBlobs(tmp_path / "media").age_s(name) == pytest.approx(0, abs=60)  # the new copy


def test_a_crash_during_a_delete_leaves_nothing_after_the_start_up_sweep(tmp_path: Path) -> None:
    root = tmp_path / "media"
    media = MediaStore(root)
    name, _ = _stored_long_ago(media, png_bytes(make_image(7)))
    os.rename(root / name, root / f".gc-{name}")  # killed between the rename aside and the unlink
    old = time.time() - HOUR
    os.utime(root / f".gc-{name}", (old, old))
    assert media.blobs.sweep_temporary(600) == 1
    assert not (root / f".gc-{name}").exists()
