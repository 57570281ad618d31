"""An S3-compatible object store for tests: the moto server (PyPI ``moto[server]``) on loopback, stopped by PID.

Data lives in the server's memory and is gone when it stops. Clients reach it through the standard AWS variables
returned by :meth:`MotoServer.aws_env` (what ``MMSEARCH_INDEX_URI=s3://...`` and ``MMSEARCH_MEDIA_URI=s3://...`` read).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.support.servers import free_port, stop_process_tree

MOTO = str(Path(sys.executable).with_name("moto_server"))
KEY = "test"


class MotoServer:
    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> MotoServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        cmd = [MOTO, "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
            try:
                httpx.get(f"{self.endpoint}/moto-api/", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"moto_server not ready in {timeout}s")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_tree(self.proc, timeout=10)
            self.proc = None

    def aws_env(self) -> dict[str, str]:
        """The standard AWS variables pointing at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": KEY,
            "AWS_REGION": "us-east-1",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=KEY,
            aws_secret_access_key=KEY,
            region_name="us-east-1",
        )

    def new_bucket(self, prefix: str = "b") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name
