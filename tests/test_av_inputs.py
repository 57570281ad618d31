"""Audio and video items resolved to model arrays (``service.inputs`` + ``service.avload``), in process.

The items are data URIs and URLs of clips made here with PyAV; a real HTTP server on 127.0.0.1 serves the URL ones.
Each resolved array is compared with ``service.avmedia``'s decoding of the same bytes, and what the lease holds with
the plans read from the headers.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import math
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
from mmsearch_client.schemas import Item
from PIL import Image as PILImage

from bench.support import avclips
from bench.support.servers import StaticServer
from service.avload import AVTarget, budget_units
from service.avmedia import Audio, AudioSpec, Video, VideoSpec
from service.config import Settings
from service.errors import ApiError
from service.inputs import ModelInput, av_to_st, check_av_count, item_paths, resolve_items
from service.media import MediaError, MediaLoader
from tests.support import avhostile

T = TypeVar("T")
torch.set_num_threads(1)

AUDIO_MODEL = ["audio", "text+audio"]
TARGET = AVTarget(audio_rate=16_000)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def uri(kind: str, subtype: str, data: bytes) -> str:
    return f"data:{kind}/{subtype};base64,{base64.b64encode(data).decode()}"


WAV = avclips.audio(1.0, freq=440.0)
MP3 = avclips.audio(1.3, fmt="mp3", codec="libmp3lame", rate=44_100, freq=300.0)
FLAC = avclips.audio(0.7, fmt="flac", codec="flac", rate=22_050, freq=880.0, channels=2)
MP4 = avclips.video(2.0)


def _settings(**kw: Any) -> Settings:
    return Settings(fetch_allow=("127.0.0.1/32",), fetch_allow_only=True, **kw)


async def _resolve(
    items: list[str | Item],
    settings: Settings,
    supported: list[str] = AUDIO_MODEL,
    av: AVTarget | None = TARGET,
) -> tuple[list[ModelInput], int]:
    """Resolve ``items`` in one lease; the inputs and what the lease held."""
    loader = MediaLoader(settings)
    try:
        async with loader.pixels.lease() as lease:
            got = await resolve_items(
                items,
                paths=item_paths("inputs", len(items)),
                loader=loader,
                settings=settings,
                supported=supported,
                model="m",
                lease=lease,
                av=av,
            )
            return got, lease.held
    finally:
        await loader.aclose()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("clips")
    (root / "tone.flac").write_bytes(FLAC)
    (root / "clip.mp4").write_bytes(MP4)
    (root / "big.wav").write_bytes(avclips.audio(3.0))
    with StaticServer(root).running() as server:
        yield server.url


def test_audio_items_resolve_to_the_decoders_arrays_and_reserve_their_plans(clips: str) -> None:
    s = _settings()
    items: list[str | Item] = [
        Item(audio=uri("audio", "wav", WAV)),
        Item(audio=uri("audio", "mpeg", MP3), text="a caption"),
        Item(audio=f"{clips}/tone.flac"),
    ]
    got, held = run(_resolve(items, s))
    assert [x.modality for x in got] == ["audio", "text+audio", "audio"]
    for x, data in zip(got, (WAV, MP3, FLAC), strict=True):
        assert isinstance(x.audio, Audio) and x.image is None and x.video is None
        want = AudioSpec(rate=16_000).decode(data, s)
        assert x.audio.rate == 16_000 and x.audio.samples.dtype == np.float32 and x.audio.samples.ndim == 1
        np.testing.assert_array_equal(x.audio.samples, want.samples)  # mono, resampled, bit for bit
    # what sentence-transformers is handed: arrays in its dict form, the text beside them; never a string medium
    st = got[1].to_st()
    assert isinstance(st, dict) and st["text"] == "a caption" and set(st["audio"]) == {"array", "sampling_rate"}
    assert st["audio"]["array"] is got[1].audio.samples and st["audio"]["sampling_rate"] == 16_000
    # the lease held every item's plan (declared duration + slack at 16 kHz), float32 samples at 4/3 pixel each
    plans = [AudioSpec(rate=16_000).plan(d, s) for d in (WAV, MP3, FLAC)]
    assert plans[0] == math.ceil(1.5 * 16_000)
    assert held == sum(budget_units("audio", p) for p in plans) == sum(math.ceil(p * 4 / 3) for p in plans)
    assert all(x.audio is not None and x.audio.samples.size <= p for x, p in zip(got, plans, strict=True))


def test_video_items_resolve_to_sampled_frames(clips: str) -> None:
    s = _settings()
    items: list[str | Item] = [Item(video=uri("video", "mp4", MP4)), Item(video=f"{clips}/clip.mp4", text="t")]
    got, held = run(_resolve(items, s, supported=["text", "video", "text+video"]))
    want = VideoSpec().decode(MP4, s)
    for x in got:
        assert isinstance(x.video, Video)
        np.testing.assert_array_equal(x.video.frames, want.frames)
    assert got[0].video is not None and got[0].video.frames.shape == (4, 48, 64, 3)  # 2 s at video_fps=2
    st = got[1].to_st()
    assert isinstance(st, dict) and st["text"] == "t"
    assert st["video"]["array"].dtype == np.uint8
    assert st["video"]["video_metadata"] == {
        "fps": 2.0,
        "total_num_frames": 4,
        "duration": 2.0,
        "frames_indices": [0, 1, 2, 3],
    }
    assert held == 2 * VideoSpec().plan(MP4, s) == 2 * 5 * 64 * 48  # 4 sampling times before the end, plus one


def test_av_not_served_or_not_supported_is_422_naming_what_is() -> None:
    s = _settings()
    audio = Item(audio=uri("audio", "wav", WAV))
    with pytest.raises(ApiError) as e:  # where audio/video are not decoded (no AVTarget), for a model that takes them
        run(_resolve(["x", audio], s, supported=["text", "audio"], av=None))
    assert e.value.status == 422 and e.value.code == "unsupported_modality" and e.value.field == "inputs[1].audio"
    assert "/encode" in e.value.message
    with pytest.raises(ApiError) as e:  # ... and for one that would not: its modalities named
        run(_resolve(["x", audio], s, supported=["text", "image"], av=None))
    assert e.value.field == "inputs[1]" and "(supported: text, image)" in e.value.message
    with pytest.raises(ApiError) as e:  # the model does not take audio
        run(_resolve([audio], s, supported=["text", "image", "text+image"]))
    assert e.value.status == 422 and e.value.field == "inputs[0]"
    assert "audio inputs are not supported" in e.value.message and "text, image, text+image" in e.value.message
    with pytest.raises(ApiError) as e:  # nor video, nor text
        run(_resolve([Item(video=uri("video", "mp4", MP4))], s))
    assert "(supported: audio, text+audio)" in e.value.message
    with pytest.raises(ApiError):
        run(_resolve(["plain text"], s))


@pytest.mark.parametrize(
    ("ref", "settings", "reason", "status"),
    [
        (uri("audio", "wav", WAV)[:-8] + "!!!!!!!!", {}, "bad_base64", 400),
        (uri("audio", "wav", WAV), {"max_audio_bytes": 1000}, "too_large", 413),
        ("ftp://127.0.0.1/a.wav", {}, "bad_scheme", 400),
        ("http://10.0.0.1/a.wav", {}, "blocked_address", 400),
        ("{clips}/missing.wav", {}, "http_error", 422),
        ("{clips}/big.wav", {"max_audio_bytes": 50_000}, "too_large", 413),
        (uri("audio", "wav", avclips.video(1.0)), {}, "no_audio_stream", 422),  # a silent MP4 sent as audio
        (uri("audio", "wav", avhostile.image("PNG")), {}, "container_not_allowed", 415),
        (uri("audio", "wav", avhostile.half(MP3)), {}, "truncated", 422),
        (uri("audio", "flac", avhostile.flac_total_samples(FLAC, 36_000 * 22_050)), {}, "too_long", 413),
    ],
    ids=lambda v: v[:40] if isinstance(v, str) else None,
)
def test_audio_refusals_name_the_item(clips: str, ref: str, settings: dict[str, Any], reason: str, status: int) -> None:
    s = _settings(**settings)
    # constructed without the schema's check: the server's own refusal is what is tested
    loader_items: list[str | Item] = ["ok", Item.model_construct(audio=ref.format(clips=clips))]
    with pytest.raises(MediaError) as e:
        run(_resolve(loader_items, s, supported=["text", *AUDIO_MODEL]))
    assert (e.value.reason, e.value.status, e.value.field) == (reason, status, "inputs[1].audio")


def test_request_budget_counts_audio_with_images_and_holds_the_decoder_to_its_plan() -> None:
    wav = Item(audio=uri("audio", "wav", WAV))
    need = budget_units("audio", AudioSpec(rate=16_000).plan(WAV, Settings()))
    with pytest.raises(MediaError) as e:  # the second clip crosses the per-request budget: refused before decoding
        run(_resolve([wav, wav], _settings(max_request_pixels=need + 10)))
    assert (e.value.reason, e.value.status, e.value.field) == ("too_many_pixels", 413, "inputs[1].audio")
    buf = io.BytesIO()
    PILImage.new("RGB", (1, 1), "red").save(buf, "PNG")
    png = uri("image", "png", buf.getvalue())
    with pytest.raises(MediaError) as e:  # one reservation for the image and the clip: the clip crosses it
        run(_resolve([Item(image=png), wav], _settings(max_request_pixels=need), supported=["image", "audio"]))
    assert (e.value.reason, e.value.field) == ("too_many_pixels", "inputs[1].audio")
    got, held = run(_resolve([Item(image=png), wav], _settings(max_request_pixels=need + 1), ["image", "audio"]))
    assert held == need + 1 and got[0].image is not None and got[1].audio is not None
    # a FLAC whose header says 1 s but which runs 20 s: reserved for 1.5 s, its decoder stops there
    liar = avhostile.flac_total_samples(avclips.audio(20.0, fmt="flac", codec="flac"), 16_000)
    with pytest.raises(MediaError) as e:
        run(_resolve([Item(audio=uri("audio", "flac", liar))], _settings()))
    assert (e.value.reason, e.value.status, e.value.field) == ("too_many_samples", 413, "inputs[0].audio")
    assert f"more than the {math.ceil(1.5 * 16_000)} samples its header declared" in e.value.message


HOSTILE = (
    "zero_length", "png_as_video", "ffconcat_local_file", "mjpeg_codec", "webm_truncated", "flac_declares_10_hours",
    "frames_8k", "streams_1000", "channels_16", "rate_1hz", "fps_1000", "corrupt_mp3", "video_only_as_audio",
)  # fmt: skip


@pytest.fixture(scope="module")
def hostile() -> dict[str, avhostile.Case]:
    return {
        name: avhostile.Case(name, kind, make(), reason, avhostile.STATUS[reason], s)
        for name, kind, make, reason, s in avhostile._cases()
        if name in HOSTILE
    }


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_media_refused_with_its_reason(hostile: dict[str, avhostile.Case], name: str) -> None:
    """Part of the hostile set through the request path: fetch, plan, reserve, decode (all of it runs against
    ``avmedia`` alone in test_av_decode.py)."""
    case = hostile[name]
    item = Item(**{case.kind: uri(case.kind, "x-any", case.data)})
    supported = AUDIO_MODEL if case.kind == "audio" else ["video"]
    with pytest.raises(MediaError) as e:
        run(_resolve([item], _settings(**case.settings), supported=supported))
    assert (e.value.reason, e.value.status, e.value.field) == (case.reason, case.status, f"inputs[0].{case.kind}")


def test_av_count_per_request() -> None:
    s = Settings(max_av_inputs_per_request=2)
    a = Item(audio="https://h/a.wav")
    check_av_count("inputs", ["x", a, Item(video="https://h/v.mp4"), Item(image="https://h/i.png")], s)
    with pytest.raises(ApiError) as e:
        check_av_count("inputs", [a, a, a], s)
    assert e.value.status == 413 and e.value.field == "inputs" and "audio and video" in e.value.message


def test_av_to_st_forms() -> None:
    samples = np.zeros(160, np.float32)
    assert av_to_st(Audio(samples, 16_000), None) == {"audio": {"array": samples, "sampling_rate": 16_000}}
    frames = np.zeros((3, 4, 4, 3), np.uint8)
    out = av_to_st(None, Video(frames, np.array([0.0, 0.5, 1.0]), 2.0, (4, 4)))
    assert out["video"]["array"] is frames and out["video"]["video_metadata"]["total_num_frames"] == 3


def test_audio_batches_by_length_give_each_clip_its_own_vector(tmp_path: Path) -> None:
    """The adapter runs an audio batch as groups of one length: a clip's vector is the clip's alone, whatever its
    batch-mates (mean pooling over padded frames would make it depend on the longest one)."""
    from sentence_transformers import SentenceTransformer

    from service.adapters import SentenceTransformerEmbedder
    from service.tiny import build_tiny_audio_embedder

    model = SentenceTransformer(str(build_tiny_audio_embedder(tmp_path / "audio")), device="cpu")
    adapter = SentenceTransformerEmbedder(model, "tiny-audio")
    assert adapter.av == AVTarget(audio_rate=16_000)
    assert adapter.declared_modalities == ["audio", ["audio", "text"]]
    # sentence-transformers declares audio+text, but wav2vec2's processor makes the text CTC labels, which the
    # embedding ignores: the pair's vector is the clip's alone, so the Embedder does not offer text+audio
    assert adapter.modalities == ["audio"]
    clip = {"array": np.ones(4000, np.float32) * 0.1, "sampling_rate": 16_000}
    np.testing.assert_array_equal(
        model.encode_document([{"audio": clip, "text": "any caption"}]), model.encode_document([{"audio": clip}])
    )
    rng = np.random.default_rng(0)
    clips = [Audio((0.1 * rng.standard_normal(n)).astype(np.float32), 16_000) for n in (8000, 16000, 8000, 12000)]
    inputs = [ModelInput(audio=a).to_st() for a in clips]
    for input_type in ("query", "document"):
        lane = (input_type, "audio")
        rows = adapter.run(lane, adapter.prepare(lane, inputs))
        encode = model.encode_query if input_type == "query" else model.encode_document
        for row, x in zip(rows, inputs, strict=True):
            assert np.abs(row - encode([x])[0]).max() <= 1e-6
    padded = model.encode_document(inputs, batch_size=4)
    assert np.abs(padded[0] - rows[0]).max() > 1e-3, "plain batching pads: the grouping is what keeps parity"


def test_search_takes_audio_and_video_queries_to_the_embedder() -> None:
    """Since slice 3 (segments) an audio or video query is embedded like any other: the Embedder refuses a modality
    its model lacks (tests/test_av_segments.py, tests/test_av_search_e2e.py)."""
    from types import SimpleNamespace

    from mmsearch_client.schemas import SearchRequest

    from service.pipeline import SearchPipeline

    stub: Any = SimpleNamespace(settings=Settings())
    for kind in ("audio", "video"):
        SearchPipeline.check_search(stub, SearchRequest(query={"text": "t", kind: f"https://h/x.{kind}"}))


class OomAbove:
    """A model adapter that runs out of memory as CUDA does (``torch.OutOfMemoryError``) when a batch holds more than
    ``over`` inputs or the ``poison`` one; otherwise the real adapter's batch. Records the size of every attempt."""

    def __init__(self, inner: Any, over: int, poison: Any = None) -> None:
        self.inner, self.over, self.poison = inner, over, poison
        self.name, self.modalities, self.accelerated, self.threads = inner.name, inner.modalities, False, None
        self.attempts: list[int] = []

    def prepare(self, lane: Any, inputs: list[Any]) -> Any:
        return inputs, self.inner.prepare(lane, inputs)

    def run(self, lane: Any, prepared: Any) -> Any:
        inputs, features = prepared
        self.attempts.append(len(inputs))
        if len(inputs) > self.over or any(x is self.poison for x in inputs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner.run(lane, features)


def _av_inputs(kind: str, n: int) -> list[Any]:
    """``n`` audio clips of three lengths, or ``n`` videos of two frame sizes, as the Embedder hands them on."""
    rng = np.random.default_rng(7)
    if kind == "audio":
        clips = [Audio((0.1 * rng.standard_normal(4000 * (1 + i % 3))).astype(np.float32), 16_000) for i in range(n)]
        return [ModelInput(audio=a).to_st() for a in clips]
    frames = [rng.integers(0, 256, (2, 28 * (1 + i % 2), 28, 3), dtype=np.uint8) for i in range(n)]
    return [ModelInput(video=Video(f, np.arange(2) / 2, 2.0, (28, 28))).to_st() for f in frames]


@pytest.mark.parametrize("kind", ["audio", "video"])
def test_out_of_memory_on_audio_and_video_batches_is_split_and_retried(kind: str) -> None:
    """A batch of clips that raises ``torch.OutOfMemoryError`` above 2 inputs is split and retried (through the
    service's ``ModelRuntime``, the real tiny model's adapter): the vectors equal the unsplit run's and the cost
    budget comes down; a clip that runs out of memory even alone fails alone with 413 ``input_too_large``, and the
    requests that shared its batch are answered."""
    from sentence_transformers import SentenceTransformer

    from bench.support.servers import tiny_dir
    from service.adapters import SentenceTransformerEmbedder
    from service.runtime import DOCUMENT_PRIORITY, ModelRuntime
    from service.tiny import ensure_tiny_av_models

    models = ensure_tiny_av_models(tiny_dir())
    path = models.audio_embedder if kind == "audio" else models.video_embedder
    inner = SentenceTransformerEmbedder(SentenceTransformer(str(path), device="cpu"), "tiny")
    inputs, lane = _av_inputs(kind, 6), ("document", kind)

    async def encode(adapter: Any, *requests: list[Any]) -> tuple[list[Any], ModelRuntime[Any, Any]]:
        runtime: ModelRuntime[Any, Any] = ModelRuntime("Embedder", Settings(max_batch_size=8), adapter)
        try:
            got = await asyncio.gather(
                *(runtime.run(lane, r, priority=DOCUMENT_PRIORITY) for r in requests), return_exceptions=True
            )
            return list(got), runtime
        finally:
            await runtime.batcher.aclose()

    (want,), _ = run(encode(inner, inputs))
    oom = OomAbove(inner, over=2)
    (got,), runtime = run(encode(oom, inputs))
    assert oom.attempts[0] == 6 and max(oom.attempts) == 6 and runtime.batcher.stats.oom_splits >= 3
    assert np.abs(np.stack(got) - np.stack(want)).max() <= 1e-5
    assert runtime.batcher.effective_max_batch_cost < 1.0 and runtime.batcher.effective_max_batch_size == 8
    assert runtime.info()["max_batch_video_pixels" if kind == "video" else "max_batch_audio_samples"] < (
        Settings().max_batch_video_pixels if kind == "video" else Settings().max_batch_audio_samples
    )

    poison = _av_inputs(kind, 7)[6]
    oom = OomAbove(inner, over=8, poison=poison)
    (first, alone, last), _ = run(encode(oom, inputs[:3], [poison], inputs[3:]))
    assert oom.attempts[0] == 7  # the three requests shared one batch
    assert np.abs(np.stack([*first, *last]) - np.stack(want)).max() <= 1e-5
    assert isinstance(alone, ApiError) and (alone.status, alone.code) == (413, "input_too_large"), alone


def test_a_refused_clip_leaves_no_reference_cycle_holding_the_request() -> None:
    """A refused audio item's error must not sit in a reference cycle with the request's frames: then only a gc pass
    frees them, and a served Embedder kept a refused 34 MB data URI (and a copy of its payload) in its RSS until a
    later request triggered one. Refused by size before decoding, and by the decoder."""

    async def refused(ref: str) -> str:
        try:
            await _resolve([Item(audio=ref)], _settings(max_audio_bytes=20_000))
        except MediaError as e:
            return e.reason
        return "accepted"

    refs = [uri("audio", "wav", bytes(30_000)), uri("audio", "mpeg", avhostile.half(MP3))]
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        reasons = [run(refused(r)) for r in refs]
        gc.collect()
        held = [  # frames that hold a refused data URI (other garbage, e.g. another test's threads, may be there)
            f.f_code.co_name
            for f in gc.garbage
            if isinstance(f, FrameType) and any(v is r for r in refs for v in f.f_locals.values())
        ]
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()
    assert reasons == ["too_large", "truncated"]
    assert held == [], f"frames kept alive by a reference cycle until a gc pass: {held}"
