"""Media garbage collection: stored images (and thumbnails) that no document references any more are deleted.

Mark and sweep over the whole store, because one image may be referenced by documents of several collections (it is
stored once, by content): mark = every collection's stored ``image`` values (``VectorIndex.image_refs``); sweep =
every stored name not marked and older than ``grace_s``. The grace period covers an upsert in flight (its media are
written before its documents) and a replica whose index view lags; storing a known image again restarts it (image
and thumbnail). The age check and the delete happen under ``MediaStore.lock_for(name)``, which ingest holds while
it stores or touches that name, and a local delete renames the file aside and re-checks its age first
(``LocalBlobs.delete_if_idle``), so a re-upsert of the same bytes by this or another process is never lost between
the check and the delete (on S3, only within one process).
"""

from __future__ import annotations

import logging

from service.index.base import CollectionNotFound, VectorIndex
from service.mediastore import MediaStore, name_of, split_ref, thumbnail_name

log = logging.getLogger("mmsearch.media")


def referenced_names(index: VectorIndex) -> set[str] | None:
    """The stored names every document of every collection references (None: the index cannot list them)."""
    names: set[str] = set()
    for info in index.list_collections():
        try:
            refs = index.image_refs(info.name)
        except NotImplementedError:
            return None
        except CollectionNotFound:
            continue  # dropped meanwhile
        for stored in refs:
            ref, _ = split_ref(stored)
            name = name_of(ref) if ref else None
            if name is None:
                continue
            names.add(name)
            thumb = thumbnail_name(ref or "")
            if thumb:
                names.add(thumb)
    return names


def collect(index: VectorIndex, media: MediaStore, grace_s: float) -> int:
    """Delete unreferenced media older than ``grace_s``; returns how many blobs were deleted. Blocking."""
    keep = referenced_names(index)
    if keep is None:
        return 0
    deleted = 0
    for name in list(media.blobs.names()):
        if name in keep:
            continue
        # Under the lock ingest holds while it stores or touches this name: a re-upsert of the same bytes
        # either touched it before the age check (young: kept) or waits and finds it gone (written again).
        with media.lock_for(name):
            age = media.blobs.age_s(name)
            if age is None or age < grace_s:
                continue
            if media.blobs.delete_if_idle(name, grace_s):  # re-checked: another process may have touched it
                deleted += 1
    if deleted:
        log.info("media gc: deleted %d unreferenced blobs", deleted)
    return deleted
