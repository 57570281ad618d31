"""Vector index layer: LanceDB (embedded directory) or Milvus (Lite file or server) behind one interface."""

from service.index.base import (
    CollectionInfo,
    CollectionMismatch,
    CollectionNotFound,
    Filter,
    IndexHit,
    InvalidCollectionName,
    InvalidFilter,
    StoredDocument,
    VectorIndex,
    open_index,
)

__all__ = [
    "CollectionInfo",
    "CollectionMismatch",
    "CollectionNotFound",
    "Filter",
    "IndexHit",
    "InvalidCollectionName",
    "InvalidFilter",
    "StoredDocument",
    "VectorIndex",
    "open_index",
]
