"""The S3 media store against the moto S3 emulator: the MediaStore operations, key safety, several writers."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.media_s3 import S3MediaStore
from tests.support.s3 import MotoServer


def name_of(data: bytes, ext: str = "png") -> str:
    return f"{hashlib.sha256(data).hexdigest()}.{ext}"


@pytest.fixture
def store(s3_server: MotoServer) -> S3MediaStore:
    return S3MediaStore(f"s3://{s3_server.new_bucket('media')}/some/prefix")


def test_put_get_exists_delete_names(store: S3MediaStore, s3_server: MotoServer) -> None:
    store.check()
    a, b = b"\x89PNG first", b"\x89PNG second"
    assert store.get(name_of(a)) is None and not store.exists(name_of(a)) and store.age_s(name_of(a)) is None
    store.put(name_of(a), a)
    store.put(name_of(b, "thumb.jpeg"), b)
    assert store.get(name_of(a)) == a and store.exists(name_of(a))
    assert sorted(store.names()) == sorted([name_of(a), name_of(b, "thumb.jpeg")])
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=store.bucket)["Contents"]]
    assert sorted(keys) == sorted(f"some/prefix/{n}" for n in store.names())
    store.delete(name_of(a))
    store.delete(name_of(a))  # absent: no error
    assert store.get(name_of(a)) is None and list(store.names()) == [name_of(b, "thumb.jpeg")]
    assert store.local_path(name_of(b, "thumb.jpeg")) is None and store.sweep_temporary(0) == 0


def test_reput_refreshes_age(store: S3MediaStore) -> None:
    data = b"same bytes"
    store.put(name_of(data), data)
    time.sleep(1.2)
    age = store.age_s(name_of(data))
    assert age is not None and age >= 1.0
    store.put(name_of(data), data)  # another replica stores the same image again: grace period starts over
    refreshed = store.age_s(name_of(data))
    assert refreshed is not None and refreshed < age and store.get(name_of(data)) == data


@pytest.mark.parametrize("bad", ["../etc/passwd", "a/b.png", "x" * 64 + ".png/../k", "", "ABC.png"])
def test_unsafe_names_never_reach_a_key(store: S3MediaStore, bad: str) -> None:
    for call in (lambda: store.put(bad, b"x"), lambda: store.get(bad), lambda: store.delete(bad)):
        with pytest.raises(ValueError, match="invalid media name"):
            call()


def test_concurrent_writers_lose_nothing(store: S3MediaStore) -> None:
    blobs = [f"blob {i}".encode() * 100 for i in range(40)]
    with ThreadPoolExecutor(8) as pool:  # every blob written by two writers at once
        list(pool.map(lambda d: store.put(name_of(d), d), blobs + blobs))
    assert sorted(store.names()) == sorted(name_of(d) for d in blobs)
    assert all(store.get(name_of(d)) == d for d in blobs)


def test_unreachable_bucket_is_a_clear_error(s3_server: MotoServer) -> None:
    with pytest.raises(RuntimeError, match="no-such-bucket"):
        S3MediaStore("s3://no-such-bucket/x").check()
    with pytest.raises(ValueError, match="not an S3 URI"):
        S3MediaStore("s3://Bad_Bucket/x")
