"""``open_index``: the backend an index URI names. Apart from ``base`` so that the backends, which import ``base``,
are not imported by it (each backend is imported only when its URI is opened: pymilvus and lancedb load lazily)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from service.index.base import DEFAULT_ANN_THRESHOLD, VectorIndex


def open_index(
    uri: str, *, ann_threshold: int = DEFAULT_ANN_THRESHOLD, version_retention_s: float | None = None
) -> VectorIndex:
    """Open the index named by ``uri``.

    * ``milvus:<path>`` or a path ending in ``.db``: Milvus Lite (embedded, single process per file);
    * ``http://host:19530`` / ``https://...``: a Milvus server;
    * ``s3://bucket/prefix``: a LanceDB database on S3-compatible object storage (endpoint and credentials from the
      standard AWS environment variables, see :mod:`service.objectstore`);
    * any other string: a directory holding an embedded LanceDB database (created if missing).

    ``ann_threshold``: collections with more rows than this get an approximate (ANN) index; below it search is
    exact.

    ``version_retention_s`` (LanceDB): table versions younger than this survive the background clean-up (default
    :data:`service.index.lance.DEFAULT_VERSION_RETENTION`); Milvus compacts on its own.
    """
    if ann_threshold < 1:
        raise ValueError("ann_threshold must be >= 1")
    if version_retention_s is not None and not version_retention_s >= 0:
        raise ValueError("version_retention_s must be >= 0")
    if uri.startswith(("http://", "https://")):
        from service.index.milvus import MilvusIndex

        return MilvusIndex(uri, ann_threshold=ann_threshold)
    if uri.startswith("milvus:") or uri.endswith(".db"):
        from service.index.milvus import MilvusIndex

        path = uri.removeprefix("milvus:")
        if not path.endswith(".db"):
            raise ValueError(f"Milvus Lite needs a file path ending in '.db', e.g. milvus:./data/index.db; got {uri!r}")
        return MilvusIndex(os.path.abspath(os.path.expanduser(path)), ann_threshold=ann_threshold)
    if uri.startswith("s3://"):
        from service.index.lance import LanceIndex

        return LanceIndex(uri, ann_threshold=ann_threshold, **_lance_options(version_retention_s))
    if "://" in uri:
        raise ValueError(f"unsupported index URI scheme: {uri!r}")
    from service.index.lance import LanceIndex

    return LanceIndex(
        os.path.abspath(os.path.expanduser(uri)), ann_threshold=ann_threshold, **_lance_options(version_retention_s)
    )


def _lance_options(version_retention_s: float | None) -> dict[str, Any]:
    if version_retention_s is None:
        return {}
    return {"version_retention": timedelta(seconds=version_retention_s)}
