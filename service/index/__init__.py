"""Vector index layer: LanceDB (directory or S3) or Milvus (Lite file or server) behind one interface."""

from service.index.base import (
    CollectionInfo,
    CollectionMismatch,
    CollectionNotFound,
    DimensionMismatch,
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
    "DimensionMismatch",
    "Filter",
    "IndexHit",
    "InvalidCollectionName",
    "InvalidFilter",
    "StoredDocument",
    "VectorIndex",
    "open_index",
]
