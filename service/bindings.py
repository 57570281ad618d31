"""Collections bound to their embedding model (issue #23): which served model a collection's upserts and searches
embed with, read from the Embedder's ``/info``.

A collection records its model's name and dimension in the index (``VectorIndex.ensure_collection``) and the
model's revision, when the Embedder's ``/info`` gives one, as the collection property ``REVISION_PROPERTY``. A new
collection takes the request's ``model`` (default: the Embedder's default model); every later upsert and search
sends the collection's model to the Embedder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.errors import ApiError
from service.index.base import VectorIndex

REVISION_PROPERTY = "mmsearch.model_revision"


@dataclass(frozen=True)
class Binding:
    """The model a collection embeds with."""

    name: str
    dimension: int
    text_only: bool
    revision: str | None = None
    new: bool = False
    """The collection does not exist yet: the first write creates it bound to this model."""


def served_models(info: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Embedder's models (its ``/info``'s ``models``; an Embedder without that list serves its top-level
    model only), the default first."""
    listed = [dict(m) for m in info.get("models") or []]
    if not listed:
        keys = ("dimension", "modalities", "loading")
        listed = [{"name": info["model"], "default": True, **{k: info.get(k) for k in keys}}]
    return sorted(listed, key=lambda m: not m.get("default"))


def served_entry(info: Mapping[str, Any], name: str | None) -> dict[str, Any] | None:
    """The served model a request's ``model`` names (None: the default). With one model served, any name is that
    model, as the Embedder itself answers (the one-model rule); else None for a name not served."""
    models = served_models(info)
    if name is None:
        return models[0]
    found = next((m for m in models if m.get("name") == name), None)
    if found is None and len(models) == 1:
        return models[0]
    return found


def binding_of(entry: Mapping[str, Any], *, new: bool) -> Binding:
    loading = entry.get("loading") or {}
    return Binding(
        name=str(entry["name"]),
        dimension=int(entry["dimension"]),
        text_only=_reads_text_only(entry),
        revision=loading.get("revision") if isinstance(loading, Mapping) else None,
        new=new,
    )


def not_served(name: str, info: Mapping[str, Any]) -> ApiError:
    served = ", ".join(str(m.get("name")) for m in served_models(info))
    return ApiError(404, "model_not_found", f"model: no embedder named {name!r}; served: {served}", field="model")


def mismatch(collection: str, held: str, requested: str, *, answered: bool = False) -> ApiError:
    """409: a request naming another model than the collection's, or (``answered``) an Embedder answering with
    another model than the one asked (replaced behind Search)."""
    if answered:
        return ApiError(
            409,
            "collection_mismatch",
            f"collection {collection!r} is bound to model {held!r}, the embedder answered with model {requested!r}",
            field="collection",
        )
    return ApiError(
        409,
        "collection_mismatch",
        f"model: collection {collection!r} is bound to model {held!r}, the request names {requested!r}; reindex it "
        "into a new collection to change its model",
        field="model",
    )


def choose(info: Mapping[str, Any], collection: str, held: tuple[int, str] | None, requested: str | None) -> Binding:
    """The binding an upsert embeds with: an existing collection's own model (``held``: dimension, name; a
    ``requested`` model that resolves to another one is a 409 naming both), else the requested or default model."""
    if held is None:
        entry = served_entry(info, requested)
        if entry is None:
            raise not_served(str(requested), info)
        return binding_of(entry, new=True)
    dimension, name = held
    if requested is not None:
        entry = served_entry(info, requested)
        chosen = entry["name"] if entry is not None else requested
        if chosen != name:
            raise mismatch(collection, name, requested)
    entry = served_entry(info, name)
    if entry is None:  # no longer served: the Embedder answers model_not_found when asked
        return Binding(name, dimension, text_only=False)
    return binding_of({**entry, "dimension": dimension, "name": name}, new=False)


def text_only(info: Mapping[str, Any], model: str) -> bool:
    entry = served_entry(info, model)
    return entry is not None and _reads_text_only(entry)


def _reads_text_only(entry: Mapping[str, Any]) -> bool:
    """Whether a served model's ``/info`` entry lists text as its only modality."""
    return list(entry.get("modalities") or []) == ["text"]


def model_info(info: Mapping[str, Any], model: str) -> dict[str, Any]:
    """``model`` (a collection's) as the Embedder's one-model ``/info`` shows it: ``model`` and ``modalities``."""
    entry = served_entry(info, model) or {}
    return {"model": model, "modalities": entry.get("modalities")}


def describe(collections: Sequence[Any]) -> list[dict[str, Any]]:
    """``/info``'s ``collections``: each collection's name, model and dimension."""
    return [{"name": c.name, "model": c.model, "dimension": c.dimension} for c in collections]


def record_revision(index: VectorIndex, collection: str, revision: str) -> None:
    """Record the model's revision with a collection just created (kept if one is recorded already; a backend
    without collection properties records none)."""
    try:
        if index.read_property(collection, REVISION_PROPERTY) is None:
            index.write_property(collection, REVISION_PROPERTY, revision)
    except NotImplementedError:
        pass


def read_revision(index: VectorIndex, collection: str) -> str | None:
    try:
        return index.read_property(collection, REVISION_PROPERTY)
    except NotImplementedError:
        return None
