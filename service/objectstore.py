"""S3-compatible object storage: ``s3://bucket/prefix`` URIs and the standard AWS environment variables.

Endpoint and credentials come from the variables every AWS SDK reads: ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (MinIO, Ceph, moto, ...; unset for AWS itself), ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` (unset: the SDK's own chain, e.g. an IAM role), ``AWS_REGION`` or
``AWS_DEFAULT_REGION``. One reader of them here, for LanceDB (object_store options) and for boto3 (media).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

_S3_RE = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$")


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> ``("bucket", "a/b")``; raise ``ValueError`` naming the expected form."""
    m = _S3_RE.match(uri)
    if not m:
        raise ValueError(f"not an S3 URI: {uri!r} (expected s3://<bucket>[/<prefix>], bucket in lowercase DNS form)")
    return m.group(1), (m.group(2) or "").strip("/")


@dataclass(frozen=True)
class S3Settings:
    endpoint: str | None
    region: str | None
    access_key_id: str | None
    secret_access_key: str | None
    session_token: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        e = os.environ if env is None else env
        return cls(
            endpoint=e.get("AWS_ENDPOINT_URL_S3") or e.get("AWS_ENDPOINT_URL") or None,
            region=e.get("AWS_REGION") or e.get("AWS_DEFAULT_REGION") or None,
            access_key_id=e.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=e.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=e.get("AWS_SESSION_TOKEN") or None,
        )

    def _credentials(self) -> dict[str, str | None]:
        """The keys boto3 and object_store name alike."""
        return {
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "aws_session_token": self.session_token,
        }

    def lance_storage_options(self) -> dict[str, str]:
        """Options for ``lancedb.connect(..., storage_options=...)`` (object_store's S3 keys)."""
        plain_http = self.endpoint is not None and self.endpoint.startswith("http://")
        return _set_only(
            {
                "aws_endpoint": self.endpoint,
                "allow_http": "true" if plain_http else None,
                "aws_region": self.region,
                **self._credentials(),
            }
        )

    def boto3_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``boto3.client("s3", ...)`` (unset ones are left to boto3's own chain)."""
        return _set_only({"endpoint_url": self.endpoint, "region_name": self.region, **self._credentials()})


def _set_only(options: dict[str, str | None]) -> dict[str, str]:
    """The options with a value (an unset or empty one is left to the SDK's defaults)."""
    return {key: value for key, value in options.items() if value}
