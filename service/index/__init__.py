"""Vector index layer: LanceDB (directory or S3) or Milvus (Lite file or server) behind one interface.

Open one with ``service.index.factory.open_index(uri)``.
"""

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
]
