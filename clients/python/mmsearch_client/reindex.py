"""Re-embed a collection with another model without downtime (``mmsearch reindex``), through the public routes:
page the ids (``/ids``), read the stored text and media (``/get``), upsert them into a new collection bound to the
other model (``/upsert`` with ``model``; images and audio/video clips travel as their ``media://`` references, so
no bytes move, and the target cuts a clip into segments again), then switch the alias atomically
(``/aliases/set``). Searches through the alias keep answering from the old collection until the switch, from the
new one after it; the old collection stays (drop it when done).

Documents written to the old collection during the copy are not carried over: pause writers, or write through the
alias after the switch. Documents that hold only an embedding (no text, image or clip) cannot be re-embedded: they
are skipped and listed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from mmsearch_client._client import Client
from mmsearch_client.errors import PayloadTooLargeError
from mmsearch_client.schemas import StoredDocument, UpsertDocument

__all__ = ["ReindexResult", "default_target", "reindex"]


@dataclass
class ReindexResult:
    source: str
    """The collection read (the alias's target, or the collection named)."""
    target: str
    model: str
    copied: int = 0
    skipped: list[str] = field(default_factory=list)
    """Ids of embedding-only documents (nothing to re-embed)."""
    alias: str | None = None
    """The alias switched to ``target`` (None: a collection was named; point an alias at ``target`` yourself)."""


def default_target(collection: str, model: str) -> str:
    """``<collection>_<model>``, cut to the collection-name rule ([A-Za-z][A-Za-z0-9_]{0,63})."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{collection}_{model}")[:64]


def reindex(
    client: Client,
    source: str,
    model: str,
    *,
    into: str | None = None,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> ReindexResult:
    """Copy ``source`` (an alias or a collection) into ``into`` (default ``default_target``) embedded by
    ``model``, then switch the alias if ``source`` is one. ``on_batch(copied_so_far)`` after each batch."""
    aliases = {a.alias: a.collection for a in client.aliases().aliases}
    current = aliases.get(source, source)
    result = ReindexResult(source=current, target=into or default_target(current, model), model=model)
    if result.target == current:
        raise ValueError(f"reindex: the new collection must differ from {current!r}")
    after: str | None = None
    while True:
        page = client.ids(collection=current, after=after, limit=batch_size)
        _copy_page(client, page.ids, result)
        if on_batch is not None:
            on_batch(result.copied)
        after = page.next
        if after is None:
            break
    if not result.copied:
        raise ValueError(f"reindex: {current!r} holds no document with text, an image or a clip to re-embed")
    if source in aliases:
        client.set_alias(source, result.target)
        result.alias = source
    return result


def _copy_page(client: Client, ids: list[str], result: ReindexResult) -> None:
    """Read one page of documents from ``result.source`` and upsert those with content into ``result.target``.
    An audio or video document travels as its whole stored clip (``/get`` names the clip, not a segment): the
    target cuts it into segments again (at the server's segment length)."""
    docs = client.get(ids, collection=result.source).documents if ids else []
    wire = [
        UpsertDocument(id=d.id, text=d.text, image=d.image, audio=d.audio, video=d.video, metadata=d.metadata)
        for d in docs
        if _has_content(d)
    ]
    result.skipped += [d.id for d in docs if not _has_content(d)]
    _upsert_split(client, wire, result)


def _has_content(doc: StoredDocument) -> bool:
    """Whether there is something to embed again: text, an image, an audio or video clip."""
    return any(v is not None for v in (doc.text, doc.image, doc.audio, doc.video))


def _upsert_split(client: Client, wire: list[UpsertDocument], result: ReindexResult) -> None:
    """Upsert ``wire`` into the target, halving a batch the server answers 413 (the model's inputs per request,
    or the body size) down to one document."""
    if not wire:
        return
    try:
        client.upsert(wire, collection=result.target, model=result.model)
    except PayloadTooLargeError:
        if len(wire) == 1:
            raise
        half = len(wire) // 2
        _upsert_split(client, wire[:half], result)
        _upsert_split(client, wire[half:], result)
        return
    result.copied += len(wire)
