"""``service.avmedia``: audio and video bytes decoded into arrays under the media policy (issue #21, first slice).

Every clip is made here with PyAV (``bench.support.avclips``, ``tests.support.avhostile``): valid clips decode to
arrays of the expected shape, rate, timestamps and content; each of the hostile set is refused with its reason and
4xx status, within a deadline; decoding the hostile set over and over keeps a process's peak memory bounded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.support import avclips
from service.avmedia import AudioSpec, AVMediaError, VideoSpec
from service.config import Settings
from service.media import MediaError
from tests.support import avhostile

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 10.0  # generous: the point is "no hang", not speed
COLOUR_TOLERANCE = 12  # per channel, after YUV 4:2:0 and lossy coding


def settings(**overrides: Any) -> Settings:
    return Settings(**overrides)


def refusal(fn: Any, *args: Any, **kwargs: Any) -> AVMediaError:
    with pytest.raises(AVMediaError) as info:
        fn(*args, **kwargs)
    return info.value


# --- valid video ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,codec",
    [("mp4", "libx264"), ("webm", "libvpx-vp9"), ("matroska", "libx264"), ("mp4", "mpeg4")],
)
def test_video_frames_colours_and_timestamps(fmt: str, codec: str) -> None:
    """A 4 s clip whose colour changes every second, sampled at 2 fps: 8 frames at 0, 0.5, ... 3.5 s."""
    video = VideoSpec().decode(avclips.video(4.0, fmt=fmt, codec=codec), settings())
    assert video.frames.shape == (8, 48, 64, 3) and video.frames.dtype == np.uint8
    assert video.fps == 2.0 and video.source_size == (64, 48)
    np.testing.assert_allclose(video.timestamps, np.arange(8) * 0.5, atol=1e-3)
    for t, got in zip(video.timestamps, avclips.mean_colours(video.frames), strict=True):
        assert np.abs(np.subtract(got, avclips.colour_at(t, 1.0))).max() <= COLOUR_TOLERANCE, (t, got)


def test_caller_fps_and_frame_cap() -> None:
    """A model's processor asks 1 fps: one frame per colour; asking more than ``video_fps`` is capped to it."""
    clip = avclips.video(4.0)
    video = VideoSpec(fps=1.0).decode(clip, settings())
    np.testing.assert_allclose(video.timestamps, [0, 1, 2, 3], atol=1e-3)
    assert len({c for c in avclips.mean_colours(video.frames)}) == 4
    assert VideoSpec(fps=30.0).decode(clip, settings()).fps == 2.0


def test_long_video_is_sampled_sparser_to_fit_the_frame_cap() -> None:
    """20 s at 2 fps would be 40 frames; with max_video_frames=8 the rate drops so 8 frames span the clip."""
    video = VideoSpec().decode(avclips.video(20.0, rate=2, colour_s=2.5), settings(max_video_frames=8))
    assert video.fps == pytest.approx(7 / 20)
    assert 7 <= len(video.frames) <= 8
    assert video.timestamps[-1] >= 15.0  # the end of the clip is represented, not only its first seconds
    steps = np.diff(video.timestamps)
    assert steps.min() >= 2.5 and steps.max() <= 3.5


def test_video_without_a_declared_duration_is_thinned_to_the_frame_cap() -> None:
    """A 100 s capture written where the muxer could not seek back (no duration in the header): the frame cap is
    kept by dropping every other frame and halving the rate each time it fills, so the whole clip is spanned."""
    clip = avclips.video(100.0, fmt="matroska", rate=2, colour_s=10.0, seekable=False)
    video = VideoSpec().decode(clip, settings(max_video_frames=16))
    assert video.fps == pytest.approx(2.0 / 2**4)  # 2 -> 1 -> 0.5 -> 0.25 -> 0.125 fps
    assert len(video.frames) <= 16
    np.testing.assert_allclose(video.timestamps, np.arange(len(video.frames)) * 8.0, atol=1e-3)
    assert video.timestamps[-1] >= 90.0
    for t, got in zip(video.timestamps, avclips.mean_colours(video.frames), strict=True):
        assert np.abs(np.subtract(got, avclips.colour_at(t, 10.0))).max() <= COLOUR_TOLERANCE, (t, got)


def test_a_header_duration_that_lies_short_is_still_refused_not_thinned() -> None:
    clip = avhostile.mkv_duration(avclips.video(20.0, fmt="matroska", rate=2), 1.0)
    assert refusal(VideoSpec().decode, clip, settings(max_video_frames=8)).reason == "too_many_frames"


def test_decode_video_refuses_nonsense_arguments() -> None:
    clip = avclips.video(1.0)
    for kwargs in ({"fps": -1.0}, {"fps": float("nan")}, {"max_frames": 0}):
        with pytest.raises(ValueError):
            VideoSpec(**kwargs).decode(clip, settings())


def test_large_frames_are_scaled_down_to_the_frame_pixels() -> None:
    clip = avclips.video(1.0, size=(640, 480))
    video = VideoSpec().decode(clip, settings(video_frame_pixels=320 * 240))
    assert video.frames.shape[1:] == (240, 320, 3) and video.source_size == (640, 480)
    assert np.abs(np.subtract(avclips.mean_colours(video.frames)[0], avclips.COLOURS[0])).max() <= COLOUR_TOLERANCE


def test_frames_over_the_source_cap_are_refused_from_the_header() -> None:
    err = refusal(VideoSpec().decode, avclips.video(1.0, size=(640, 480)), settings(max_video_source_pixels=640 * 479))
    assert (err.reason, err.status) == ("too_many_pixels", 413)
    assert "640x480" in err.message and "max_video_source_pixels=306560" in err.message


@pytest.mark.parametrize("declared", [-5.0, float("nan"), 0.0])
def test_nonsense_declared_durations_are_ignored(declared: float) -> None:
    """A negative, NaN or zero Duration is no declaration: sampling follows the decoded timestamps."""
    video = VideoSpec().decode(avhostile.mkv_duration(avclips.video(4.0, fmt="matroska"), declared), settings())
    assert video.fps == 2.0
    np.testing.assert_allclose(video.timestamps, np.arange(8) * 0.5, atol=1e-3)


def test_mp4_duration_boxes_that_lie_are_not_trusted() -> None:
    """mvhd and mdhd say 5 hours; FFmpeg times an MP4 by its sample tables, so the 4 s clip decodes as 4 s."""
    clip = avclips.video(4.0)
    lying = avhostile.mp4_durations(clip, 5 * 3600)
    assert len(lying) == len(clip) and lying != clip
    video = VideoSpec().decode(lying, settings())
    np.testing.assert_allclose(video.timestamps, np.arange(8) * 0.5, atol=1e-3)


def test_planned_pixels_are_refused_before_decoding() -> None:
    """8 frames of 64x48 = 24,576 pixels: over a budget of 20,000, refused from the header (the plan)."""
    err = refusal(VideoSpec().decode, avclips.video(4.0), settings(max_video_pixels=20_000))
    assert (err.reason, err.status) == ("too_many_pixels", 413)
    assert "8 frames of 64x48 need 24576 pixels" in err.message and "max_video_pixels=20000" in err.message


# --- valid audio ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,codec,rate",
    [
        ("wav", "pcm_s16le", 16_000),
        ("flac", "flac", 44_100),
        ("mp3", "libmp3lame", 44_100),
        ("ogg", "libopus", 48_000),
        ("webm", "libopus", 48_000),
        ("mp4", "aac", 22_050),
    ],
)
def test_audio_tone_resampled(fmt: str, codec: str, rate: int) -> None:
    """A 2 s 1 kHz tone at the source rate comes back as 16 kHz mono float32, still 1 kHz."""
    audio = AudioSpec(rate=16_000).decode(avclips.audio(2.0, fmt=fmt, codec=codec, rate=rate, freq=1000.0), settings())
    assert audio.rate == 16_000 and audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.duration_s == pytest.approx(2.0, abs=0.05)  # encoders pad a few ms (AAC's priming, MP3's frames)
    assert avclips.dominant_hz(audio.samples, 16_000) == pytest.approx(1000.0, abs=1.0)
    assert 0.3 < float(np.abs(audio.samples).max()) < 1.0


def test_stereo_keeps_channel_order_and_mono_is_their_mean() -> None:
    clip = avclips.audio(2.0, rate=44_100, channels=2, freq=(440.0, 1000.0))
    stereo = AudioSpec(rate=16_000, channels=2).decode(clip, settings())
    assert stereo.samples.shape == (2, 32_000)
    assert avclips.dominant_hz(stereo.samples[0], 16_000) == pytest.approx(440.0, abs=1.0)
    assert avclips.dominant_hz(stereo.samples[1], 16_000) == pytest.approx(1000.0, abs=1.0)
    mono = AudioSpec(rate=16_000, channels=1).decode(clip, settings())
    np.testing.assert_allclose(mono.samples, stereo.samples.mean(axis=0), atol=1e-4)


def test_mono_to_stereo_repeats_the_channel() -> None:
    audio = AudioSpec(rate=8_000, channels=2).decode(avclips.audio(1.0), settings())
    assert audio.samples.shape == (2, 8_000)
    np.testing.assert_array_equal(audio.samples[0], audio.samples[1])
    assert float(np.abs(audio.samples).max()) == pytest.approx(0.5, abs=0.01)


def test_truncated_wav_and_ogg_decode_as_the_shorter_streams_they_are() -> None:
    """Their headers keep no length FFmpeg trusts (WAV's data size is clamped to the file; Ogg's is its last page):
    a cut file is a valid shorter one, decoded as such (documented, not refused)."""
    for clip in (avclips.audio(4.0), avclips.audio(4.0, fmt="ogg", codec="libopus", rate=48_000)):
        audio = AudioSpec(rate=16_000).decode(clip[: len(clip) // 2], settings())
        assert 1.5 < audio.duration_s < 2.5


def test_planned_samples_are_refused_before_decoding() -> None:
    err = refusal(AudioSpec(rate=16_000).decode, avclips.audio(10.0), settings(max_audio_samples=100_000))
    assert (err.reason, err.status) == ("too_many_samples", 413)
    assert "would decode to 160000 samples" in err.message and "max_audio_samples=100000" in err.message


def test_samples_past_a_lying_header_are_refused_while_decoding() -> None:
    """The header says 1 s (16,000 samples, within budget); the stream runs 20 s and hits the budget mid-decode."""
    clip = avhostile.flac_total_samples(avclips.audio(20.0, fmt="flac", codec="flac"), 16_000)
    err = refusal(AudioSpec(rate=16_000).decode, clip, settings(max_audio_samples=100_000))
    assert (err.reason, err.status) == ("too_many_samples", 413) and "decodes to more than" in err.message


@pytest.mark.parametrize("kind", ["audio", "video"])
def test_decode_wall_time_is_enforced(kind: str) -> None:
    tight = settings(av_decode_timeout_s=1e-6)
    if kind == "audio":
        err = refusal(AudioSpec(rate=16_000).decode, avclips.audio(1.0), tight)
    else:
        err = refusal(VideoSpec().decode, avclips.video(1.0), tight)
    assert (err.reason, err.status) == ("decode_too_slow", 413) and "av_decode_timeout_s=1e-06" in err.message


def test_refusal_is_a_media_error_with_the_field() -> None:
    err = refusal(VideoSpec(field="inputs[2].video").decode, b"", settings())
    assert isinstance(err, MediaError) and err.field == "inputs[2].video"
    assert str(err) == "inputs[2].video: video is empty (0 bytes)"


def test_allowlists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSEARCH_VIDEO_CODECS", "VP9, av1")
    monkeypatch.setenv("MMSEARCH_AUDIO_CONTAINERS", "wav")
    s = Settings()
    assert s.video_codecs == ("vp9", "av1") and s.audio_containers == ("wav",)
    err = refusal(VideoSpec().decode, avclips.video(1.0), s)
    assert (err.reason, err.status) == ("codec_not_allowed", 415) and "h264" in err.message
    err = refusal(AudioSpec(rate=16_000).decode, avclips.audio(1.0, fmt="flac", codec="flac"), s)
    assert (err.reason, err.status) == ("container_not_allowed", 415)


# --- the hostile set -----------------------------------------------------------------------------------------

HOSTILE_NAMES = avhostile.names()


@pytest.fixture(scope="module")
def hostile() -> dict[str, avhostile.Case]:
    return {c.name: c for c in avhostile.build()}


def test_hostile_set_is_large_and_varied(hostile: dict[str, avhostile.Case]) -> None:
    assert len(hostile) >= 20
    assert len({c.reason for c in hostile.values()}) >= 12
    assert {c.status for c in hostile.values()} == {413, 415, 422}


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_media_refused_within_deadline(hostile: dict[str, avhostile.Case], name: str) -> None:
    case = hostile[name]
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(avhostile.decode, case)
        try:
            future.exception(timeout=DEADLINE_S)
        except FutureTimeout:
            pytest.fail(f"{name}: no answer within {DEADLINE_S} s")
    err = future.exception()
    assert isinstance(err, AVMediaError), f"{name}: {err!r}"
    assert (err.reason, err.status) == (case.reason, case.status), err.message
    assert 400 <= err.status < 500 and err.message


FUZZ_SEED_CLIPS = {
    "video": [
        lambda: avclips.video(2.0),
        lambda: avclips.video(2.0, fmt="webm", codec="libvpx-vp9"),
        lambda: avclips.video(2.0, fmt="matroska"),
        lambda: avclips.video(2.0, container_options={"movflags": "frag_keyframe+empty_moov"}),
    ],
    "audio": [
        lambda: avclips.audio(1.0),
        lambda: avclips.audio(1.0, fmt="flac", codec="flac"),
        lambda: avclips.audio(1.0, fmt="mp3", codec="libmp3lame"),
        lambda: avclips.audio(1.0, fmt="ogg", codec="libopus", rate=48_000),
        lambda: avclips.audio(1.0, fmt="mp4", codec="aac"),
    ],
}


def test_randomly_damaged_clips_decode_or_are_refused_never_anything_else() -> None:
    """900 seeded random damages (cut, overwritten or inserted bytes) of valid clips: each decodes or is an
    AVMediaError with a 4xx, quickly. (Before the codec was checked ahead of the stream header, a damaged codec id
    left PyAV without a codec context: an AttributeError, a 500.)"""
    rng = np.random.default_rng(7)
    s = settings()
    outcomes: dict[str, int] = {}
    for kind, makers in FUZZ_SEED_CLIPS.items():
        for make in makers:
            clip = make()
            for _ in range(100):
                data = avhostile.mutate(clip, rng)
                t0 = time.monotonic()
                try:
                    AudioSpec(rate=16_000).decode(data, s) if kind == "audio" else VideoSpec().decode(data, s)
                    outcome = "decoded"
                except AVMediaError as e:
                    assert 400 <= e.status < 500, e.reason
                    outcome = e.reason
                assert time.monotonic() - t0 < DEADLINE_S
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("decoded", 0) > 0 and len(outcomes) >= 5, outcomes  # the damage is varied, not all fatal


MEMORY_PROBE = textwrap.dedent(
    """
    import json, re, sys
    from pathlib import Path
    from bench.support import avclips
    from service.avmedia import AVMediaError, VideoSpec
    from service.config import Settings
    from tests.support import avhostile

    def peak_kib():
        return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))

    cases = avhostile.read(Path(sys.argv[1]))
    VideoSpec().decode(avclips.video(1.0), Settings())  # warm: codecs, swscale and numpy paths loaded
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS (a forked child inherits the parent's)
    base = peak_kib()
    refused = 0
    for _ in range(3):
        for case in cases:
            try:
                avhostile.decode(case)
            except AVMediaError:
                refused += 1
    print(json.dumps({"base_kib": base, "peak_kib": peak_kib(), "refused": refused}))
    """
)
PEAK_GROWTH_MIB = 40  # measured: ~12 MiB; decoding the 8K frame while probing (no max_pixels) alone adds ~70


def test_hostile_set_in_a_loop_keeps_peak_memory_bounded(hostile: dict[str, avhostile.Case], tmp_path: Path) -> None:
    """Three rounds of the whole set in a fresh process: its peak RSS (VmHWM) grows by less than PEAK_GROWTH_MIB.

    The 8K case is refused from its header, and FFmpeg's decoders run with ``max_pixels`` while probing, so its
    frames are never decoded (doing so costs ~100 MB); the many-stream cases stop at ``max_av_streams + 1``."""
    avhostile.write(list(hostile.values()), tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["refused"] == 3 * len(hostile)
    growth_mib = (result["peak_kib"] - result["base_kib"]) / 1024
    assert growth_mib < PEAK_GROWTH_MIB, result
