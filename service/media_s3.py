"""Stored media on S3-compatible object storage: ``MMSEARCH_MEDIA_URI=s3://bucket/prefix``.

One object per stored name (``<prefix>/<sha256>.<ext>``), written with a single ``PutObject``: S3 makes it visible
whole or not at all and durable when the call returns, so there are no temporary files to sweep. Names are
content hashes, so two replicas writing the same name write the same bytes. Endpoint and credentials come from
the standard AWS variables (:mod:`service.objectstore`). Every replica, and the model services that resolve
``media://`` references, reach the same bucket: no shared volume needed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from service import objectstore

_KEY_SAFE = re.compile(r"^[0-9a-f]{64}\.[a-z0-9.]{3,24}\Z")  # content hash + extension (mp4, t8000.thumb.jpeg): no "/"


def _is_missing(e: Exception) -> bool:
    code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


class S3MediaStore:
    """Named immutable blobs in one bucket under one prefix (the ``MediaStore`` operations)."""

    def __init__(self, uri: str, client: Any | None = None) -> None:
        self.uri = uri
        self.bucket, self.prefix = objectstore.split_s3(uri)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                max_pool_connections=32,
            )
            client = boto3.client("s3", config=config, **objectstore.S3Settings.from_env().boto3_kwargs())
        self._s3 = client

    def _key(self, name: str) -> str:
        if not _KEY_SAFE.match(name):
            raise ValueError(f"invalid media name {name!r}")
        return f"{self.prefix}/{name}" if self.prefix else name

    def check(self) -> None:
        """Fail at start-up with a clear message when the bucket cannot be reached."""
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except Exception as e:
            raise RuntimeError(f"media store {self.uri}: bucket {self.bucket!r} is not reachable: {e}") from e

    def put(self, name: str, data: bytes) -> None:
        if self.touch(name):
            return
        self._s3.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)

    def touch(self, name: str) -> bool:
        """Refresh LastModified (the GC grace period, see age_s) by copying the object onto itself; ``False`` if
        it is not stored."""
        key = self._key(name)
        if not self.exists(name):
            return False
        try:
            self._s3.copy_object(
                Bucket=self.bucket,
                Key=key,
                CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE",
                Metadata={"touched": str(time.time())},
            )
        except Exception as e:
            if _is_missing(e):
                return False
            raise
        return True

    def delete_if_idle(self, name: str, grace_s: float) -> bool:
        """Delete ``name`` unless stored or touched in the last ``grace_s`` seconds. The caller holds the media
        store's lock for ``name`` (``MediaStore.lock_for``), so a writer of this process cannot touch it in
        between; another process's touch between this check and the delete is not seen (S3 has no rename)."""
        age = self.age_s(name)
        if age is None or age < grace_s:
            return False
        self.delete(name)
        return True

    def get(self, name: str) -> bytes | None:
        try:
            body: bytes = self._s3.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except Exception as e:
            if _is_missing(e):
                return None
            raise
        return body

    def _head(self, name: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = self._s3.head_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as e:
            if _is_missing(e):
                return None
            raise
        return head

    def exists(self, name: str) -> bool:
        return self._head(name) is not None

    def delete(self, name: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self._key(name))

    def names(self) -> Iterator[str]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix) :]
                if _KEY_SAFE.match(name):
                    yield name

    def age_s(self, name: str) -> float | None:
        head = self._head(name)
        if head is None:
            return None
        modified: datetime = head["LastModified"]
        return max(0.0, (datetime.now(UTC) - modified).total_seconds())

    def local_path(self, name: str) -> None:
        return None

    def sweep_temporary(self, max_age_s: float) -> int:
        return 0  # single PutObject writes leave nothing behind
