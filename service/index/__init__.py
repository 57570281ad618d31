"""Vector index layer: LanceDB (directory or S3) or Milvus (Lite file or server) behind one interface.

Open one with ``service.index.factory.open_index(uri)``.
"""

from service.index.base import (
    CollectionMismatch,
    CollectionNotFound,
    DimensionMismatch,
    Filter,
    IndexedCollection,
    IndexHit,
    IndexRecord,
    InvalidCollectionName,
    InvalidFilter,
    VectorIndex,
)

__all__ = [
    "CollectionMismatch",
    "CollectionNotFound",
    "DimensionMismatch",
    "Filter",
    "IndexHit",
    "IndexRecord",
    "IndexedCollection",
    "InvalidCollectionName",
    "InvalidFilter",
    "VectorIndex",
]
