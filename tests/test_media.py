"""Hostile and normal image references against ``service.media`` with a real HTTP server on 127.0.0.1.

Only loopback is ever connected to: every non-loopback address below is refused before any connection, and a
spy on the network backend checks that.
"""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import threading
import time
import zlib
from collections.abc import Coroutine, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpcore
import pytest
from PIL import Image

from service import media
from service.config import Settings
from service.media import MediaError, MediaLoader, content_hash

T = TypeVar("T")

DEADLINE = 1.5
CAP = 1_000_000
PIXELS = 4_000_000
BOUND = DEADLINE + 1.0  # every refusal must come back within this many seconds


def _png(size: tuple[int, int], colour: Any = "red", mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, "PNG")
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of ``width``x``height`` zeros, compressed (20000x20000 is ~50 KB)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), "blue").save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def _gif() -> bytes:
    frames = [Image.new("P", (8, 8), i) for i in (1, 2)]
    frames[0].putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    frames[1].putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


PNG = _png((64, 48))
BODIES: dict[str, tuple[str, bytes]] = {
    "/png": ("image/png", PNG),
    "/noext": ("application/octet-stream", PNG),
    "/exif.jpg": ("image/jpeg", _exif_jpeg()),
    "/anim.gif": ("image/gif", _gif()),
    "/rgba.png": ("image/png", _png((4, 4), (0, 0, 0, 0), "RGBA")),
    "/bomb.png": ("image/png", _bomb_png(20000, 20000)),
    "/many-pixels.png": ("image/png", _png((2500, 2500), 0, "L")),
    "/corrupt.png": ("image/png", PNG[: len(PNG) // 2]),
    "/garbage": ("image/png", b"\x00\x01garbage" * 100),
    "/html": ("text/html", b"<html><body>not an image</body></html>"),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    state: dict[str, Any] = {}
    lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, ctype: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._send(302, "text/plain", b"", {"Location": location})

    def do_GET(self) -> None:
        port = self.connection.getsockname()[1]
        path = self.path
        with self.lock:
            self.state["host"] = self.headers.get("Host")
            self.state["ua"] = self.headers.get("User-Agent")
        try:
            if path in BODIES:
                ctype, body = BODIES[path]
                self._send(200, ctype, body)
            elif path == "/redirect":
                self._redirect("/png")
            elif path.startswith("/chain/"):
                n = int(path.rsplit("/", 1)[1])
                self._redirect(f"/chain/{n - 1}") if n > 0 else self._send(200, "image/png", PNG)
            elif path == "/to-127.0.0.2":
                self._redirect(f"http://127.0.0.2:{port}/png")
            elif path == "/to-metadata":
                self._redirect("http://169.254.169.254/latest/meta-data/")
            elif path == "/to-file":
                self._redirect("file:///etc/passwd")
            elif path == "/drip":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for b in PNG[:1000]:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.5)
            elif path == "/hang":
                time.sleep(3)
                self._send(200, "image/png", PNG)
            elif path == "/big-cl":
                self._send(200, "image/png", b"\x00" * (CAP + 1))
            elif path == "/big-nocl":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                sent, chunk = 0, b"\x00" * 65536
                try:
                    while sent < 50 * CAP:
                        self.wfile.write(chunk)
                        sent += len(chunk)
                finally:
                    with self.lock:
                        self.state["big_sent"] = sent
            elif path.startswith("/slow/"):
                with self.lock:
                    self.state["active"] = self.state.get("active", 0) + 1
                    self.state["peak"] = max(self.state.get("peak", 0), self.state["active"])
                time.sleep(0.2)
                with self.lock:
                    self.state["active"] -= 1
                self._send(200, "image/png", PNG)
            else:
                self._send(404, "text/plain", b"nope")
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every host the loader really connects to (the pinned IP literal)."""
    seen: list[str] = []
    original = httpcore.AnyIOBackend.connect_tcp

    async def spy(self: httpcore.AnyIOBackend, host: str, port: int, *a: Any, **kw: Any) -> Any:
        seen.append(host)
        assert host in ("127.0.0.1",), f"test tried to connect to {host}"
        return await original(self, host, port, *a, **kw)

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", spy)
    return seen


def _settings(allow: tuple[str, ...] = ("127.0.0.1/32",), **kw: Any) -> Settings:
    base: dict[str, Any] = dict(
        fetch_allow=allow,
        fetch_connect_timeout_s=1.0,
        fetch_read_timeout_s=1.0,
        fetch_deadline_s=DEADLINE,
        fetch_max_redirects=3,
        max_image_bytes=CAP,
        max_image_pixels=PIXELS,
        fetch_concurrency=4,
    )
    base.update(kw)
    return Settings(**base)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _load(settings: Settings, ref: str, field: str = "inputs[0].image") -> Image.Image:
    loader = MediaLoader(settings)
    try:
        return await loader.load(ref, field)
    finally:
        await loader.aclose()


def _refused(settings: Settings, ref: str, reason: str) -> MediaError:
    t0 = time.monotonic()
    with pytest.raises(MediaError) as info:
        run(_load(settings, ref))
    elapsed = time.monotonic() - t0
    err = info.value
    assert err.reason == reason, (ref, err.reason, err.message)
    assert err.field == "inputs[0].image"
    assert elapsed < BOUND, (ref, elapsed)
    return err


def _data_uri(data: bytes, subtype: str = "png") -> str:
    return f"data:image/{subtype};base64," + base64.b64encode(data).decode()


# --- hostile: schemes and local paths --------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "file:///etc/passwd",
        "/etc/passwd",
        "../x.png",
        "x.png",
        "C:\\Windows\\win.ini",
        "",
        "ftp://127.0.0.1/x.png",
        "gopher://127.0.0.1:70/_x",
        "data:text/html;base64,PGh0bWw+",
        "data:image/png,rawbytes",
        " http://127.0.0.1/png",
    ],
)
def test_bad_scheme(ref: str, connects: list[str]) -> None:
    err = _refused(_settings(), ref, "bad_scheme")
    assert err.status == 400
    assert connects == []


def test_local_file_never_opened(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.png"
    path.write_bytes(PNG)
    monkeypatch.chdir(tmp_path)
    for ref in (str(path), "secret.png", f"file://{path}"):
        _refused(_settings(), ref, "bad_scheme")


# --- hostile: addresses (refused before any connection; never connects to non-loopback) --------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/x.png",
        "http://172.16.0.1/x.png",
        "http://192.168.1.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://[::ffff:10.0.0.1]/x.png",
        "http://0.0.0.0/x.png",
        "http://224.0.0.1/x.png",
        "http://100.64.0.1/x.png",
        "http://localhost/x.png",
        "http://LOCALHOST:8080/x.png",
        "http://127.0.0.1/x.png",
        "https://127.0.0.1/x.png",
        "http://2130706433/x.png",  # decimal 127.0.0.1
        "http://0x7f.1/x.png",  # hex + short form
        "http://0x7f000001/x.png",
        "http://017700000001/x.png",  # octal
        "http://[2002:7f00:1::]/x.png",  # 6to4 of 127.0.0.1
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/x.png",  # teredo, client 127.0.0.1
        "http://[fe80::1]/x.png",
        "http://[fec0::1]/x.png",
        "http://[64:ff9b::7f00:1]/x.png",  # NAT64 of 127.0.0.1
    ],
)
def test_blocked_address(url: str, connects: list[str]) -> None:
    err = _refused(_settings(allow=()), url, "blocked_address")
    assert err.status == 400
    assert connects == []


def test_blocked_even_with_allowlist_for_other_ranges(server: str, connects: list[str]) -> None:
    port = server.rsplit(":", 1)[1]
    _refused(_settings(), f"http://127.0.0.2:{port}/png", "blocked_address")
    _refused(_settings(), f"http://[::ffff:127.0.0.1]:{port}/png", "blocked_address")
    assert connects == []


def test_octal_dotted_is_refused(connects: list[str]) -> None:
    _refused(_settings(allow=()), "http://0177.0.0.1/x.png", "bad_url")
    assert connects == []


def test_mixed_resolution_is_refused(monkeypatch: pytest.MonkeyPatch, connects: list[str]) -> None:
    import ipaddress

    async def fake(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.1")]

    monkeypatch.setattr(media, "_resolve", fake)
    _refused(_settings(allow=()), "http://mixed.test/x.png", "blocked_address")
    assert connects == []


def test_unresolvable_host(connects: list[str]) -> None:
    err = _refused(_settings(allow=()), "http://does-not-exist.invalid/x.png", "dns_error")
    assert err.status == 422
    assert connects == []


def test_backend_vets_without_pin(connects: list[str]) -> None:
    async def go() -> None:
        backend = media._PinnedBackend(MediaLoader(_settings(allow=())))
        with pytest.raises(MediaError) as info:
            await backend.connect_tcp("10.0.0.1", 80)
        assert info.value.reason == "blocked_address"

    run(go())
    assert connects == []


# --- hostile: redirects -------------------------------------------------------------------------------------


def test_redirect_to_other_loopback_address(server: str, connects: list[str]) -> None:
    _refused(_settings(), f"{server}/to-127.0.0.2", "blocked_address")
    assert connects == ["127.0.0.1"]


def test_redirect_to_metadata(server: str, connects: list[str]) -> None:
    _refused(_settings(), f"{server}/to-metadata", "blocked_address")
    assert connects == ["127.0.0.1"]


def test_redirect_to_file(server: str) -> None:
    _refused(_settings(), f"{server}/to-file", "bad_scheme")


def test_redirect_chain_too_long(server: str) -> None:
    err = _refused(_settings(), f"{server}/chain/5", "too_many_redirects")
    assert err.status == 400


def test_redirects_disabled(server: str) -> None:
    _refused(_settings(fetch_max_redirects=0), f"{server}/redirect", "too_many_redirects")


# --- hostile: time ------------------------------------------------------------------------------------------


def test_slow_drip_cut_at_deadline(server: str) -> None:
    t0 = time.monotonic()
    err = _refused(_settings(), f"{server}/drip", "timeout")
    assert time.monotonic() - t0 > DEADLINE - 0.1
    assert err.status == 408


def test_read_timeout(server: str) -> None:
    _refused(_settings(fetch_deadline_s=5.0), f"{server}/hang", "timeout")


# --- hostile: size ------------------------------------------------------------------------------------------


def test_too_large_with_content_length(server: str) -> None:
    err = _refused(_settings(), f"{server}/big-cl", "too_large")
    assert err.status == 413


def test_too_large_streamed_without_content_length(server: str) -> None:
    _refused(_settings(), f"{server}/big-nocl", "too_large")
    deadline = time.monotonic() + 5
    while "big_sent" not in _Handler.state and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _Handler.state["big_sent"] < 20 * CAP  # the client stopped reading early


def test_pillow_bomb(server: str) -> None:
    assert len(BODIES["/bomb.png"][1]) < 1_000_000
    err = _refused(_settings(max_image_pixels=500_000_000), f"{server}/bomb.png", "too_many_pixels")
    assert err.status == 413


def test_pixel_cap(server: str) -> None:
    _refused(_settings(), f"{server}/bomb.png", "too_many_pixels")
    _refused(_settings(), f"{server}/many-pixels.png", "too_many_pixels")


def test_data_uri_too_large_checked_before_decoding() -> None:
    # invalid base64 that is too long: size must be refused first, without decoding
    _refused(_settings(), "data:image/png;base64," + "!" * (CAP * 2), "too_large")
    _refused(_settings(), _data_uri(b"\x00" * (CAP + 1)), "too_large")


# --- hostile: content ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/corrupt.png", "/garbage", "/html"])
def test_not_an_image(server: str, path: str) -> None:
    err = _refused(_settings(), f"{server}{path}", "not_an_image")
    assert err.status == 422


def test_http_error(server: str) -> None:
    err = _refused(_settings(), f"{server}/missing", "http_error")
    assert err.status == 422


def test_connect_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the fetch: nothing listens
    _refused(_settings(), f"http://127.0.0.1:{port}/png", "connect_error")


@pytest.mark.parametrize(
    "ref",
    [
        "data:image/png;base64,iVBORw0KGgo!!!!",
        "data:image/png;base64,iVBORw0KGgo",  # bad padding
        "data:image/png;base64,iVBO\nRw0KGgo=",  # whitespace not allowed in strict mode
        "data:image/png;base64,ä" + "A" * 7,
    ],
)
def test_bad_base64(ref: str) -> None:
    err = _refused(_settings(), ref, "bad_base64")
    assert err.status == 400


def test_format_not_allowed() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "BMP")
    err = _refused(_settings(image_formats=("PNG", "JPEG")), _data_uri(buf.getvalue(), "bmp"), "format_not_allowed")
    assert err.status == 422


def test_data_uri_not_an_image() -> None:
    _refused(_settings(), _data_uri(b"<html></html>"), "not_an_image")


# --- normal -------------------------------------------------------------------------------------------------


def test_png_by_url(server: str, connects: list[str]) -> None:
    img = run(_load(_settings(), f"{server}/png"))
    assert img.size == (64, 48) and img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 0, 0)
    assert connects == ["127.0.0.1"]
    assert _Handler.state["ua"] == "mmsearch/0.1"


def test_url_without_extension_and_redirects(server: str) -> None:
    assert run(_load(_settings(), f"{server}/noext")).size == (64, 48)
    assert run(_load(_settings(), f"{server}/redirect")).size == (64, 48)
    assert run(_load(_settings(), f"{server}/chain/3")).size == (64, 48)


def test_data_uri() -> None:
    img = run(_load(_settings(), _data_uri(PNG)))
    assert img.size == (64, 48) and img.mode == "RGB"


def test_exif_rotation(server: str) -> None:
    img = run(_load(_settings(), f"{server}/exif.jpg"))
    assert img.size == (20, 40) and img.mode == "RGB"


def test_gif_first_frame_and_alpha(server: str) -> None:
    gif = run(_load(_settings(), f"{server}/anim.gif"))
    assert gif.mode == "RGB" and gif.getpixel((0, 0)) == (255, 0, 0)
    rgba = run(_load(_settings(), f"{server}/rgba.png"))
    assert rgba.mode == "RGB" and rgba.getpixel((0, 0)) == (255, 255, 255)


def test_host_header_kept_and_ip_pinned(server: str, monkeypatch: pytest.MonkeyPatch, connects: list[str]) -> None:
    """DNS rebinding: the name first resolves to the admitted address, then to a private one."""
    import ipaddress

    answers = iter(["127.0.0.1"] + ["10.0.0.1"] * 10)
    calls: list[str] = []

    async def fake(host: str, port: int) -> list[Any]:
        calls.append(host)
        return [ipaddress.ip_address(next(answers))]

    monkeypatch.setattr(media, "_resolve", fake)
    port = server.rsplit(":", 1)[1]
    img = run(_load(_settings(), f"http://rebind.test:{port}/png"))
    assert img.size == (64, 48)
    assert calls == ["rebind.test"]
    assert connects == ["127.0.0.1"]
    assert _Handler.state["host"] == f"rebind.test:{port}"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """HTTPS server on 127.0.0.1 with a self-signed certificate for ``rebind.test``: (port, CA file)."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not available")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    args = "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=rebind.test"
    args += " -addext subjectAltName=DNS:rebind.test"
    subprocess.run(["openssl", *args.split(), "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield str(httpd.server_address[1]), str(cert)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_https_pinned_ip_keeps_sni_and_verification(
    tls_server: tuple[str, str], monkeypatch: pytest.MonkeyPatch, connects: list[str]
) -> None:
    """Connects to the vetted 127.0.0.1 but verifies the certificate against the URL's host name."""
    import ipaddress
    import ssl

    import httpx

    port, cafile = tls_server

    async def fake(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address("127.0.0.1")]

    monkeypatch.setattr(media, "_resolve", fake)
    monkeypatch.setattr(httpx, "create_ssl_context", lambda **kw: ssl.create_default_context(cafile=cafile))
    img = run(_load(_settings(), f"https://rebind.test:{port}/png"))
    assert img.size == (64, 48)
    assert _Handler.state["host"] == f"rebind.test:{port}"
    # same IP, other name: the certificate does not match, so the name (not the IP) is what is verified
    _refused(_settings(), f"https://other.test:{port}/png", "connect_error")
    assert connects == ["127.0.0.1", "127.0.0.1"]


def test_allow_by_host_name(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import ipaddress

    async def fake(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address("127.0.0.1")]

    monkeypatch.setattr(media, "_resolve", fake)
    port = server.rsplit(":", 1)[1]
    assert run(_load(_settings(allow=("cdn.internal",)), f"http://CDN.internal:{port}/png")).size == (64, 48)
    _refused(_settings(allow=("other.internal",)), f"http://cdn.internal:{port}/png", "blocked_address")


def test_decode_bytes() -> None:
    loader = MediaLoader(_settings())
    assert loader.decode_bytes(PNG, "file").size == (64, 48)
    for data, reason in ((b"\x00" * (CAP + 1), "too_large"), (b"hello", "not_an_image")):
        with pytest.raises(MediaError) as info:
            loader.decode_bytes(data, "files[1]")
        assert info.value.reason == reason and info.value.field == "files[1]"
    assert loader.stats["ok"] == 1 and loader.stats["too_large"] == 1 and loader.stats["not_an_image"] == 1


def test_content_hash() -> None:
    assert content_hash(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# --- load_many ----------------------------------------------------------------------------------------------


def test_load_many_ok_and_bounded(server: str) -> None:
    async def go() -> list[Image.Image]:
        loader = MediaLoader(_settings(fetch_concurrency=2))
        try:
            refs = [(f"{server}/slow/{i}", f"inputs[{i}].image") for i in range(6)] + [(_data_uri(PNG), "x")]
            out = await loader.load_many(refs)
            assert loader.stats["ok"] == 7 and loader.stats["fetched_bytes"] == 6 * len(PNG)
            return out
        finally:
            await loader.aclose()

    _Handler.state["peak"] = 0
    images = run(go())
    assert [im.size for im in images] == [(64, 48)] * 7
    assert _Handler.state["peak"] <= 2


def test_load_many_first_error_by_position_cancels_rest(server: str) -> None:
    async def go(refs: list[tuple[str, str]]) -> MediaError:
        loader = MediaLoader(_settings())
        try:
            with pytest.raises(MediaError) as info:
                await loader.load_many(refs)
            return info.value
        finally:
            await loader.aclose()

    t0 = time.monotonic()
    err = run(go([("http://10.0.0.1/x", "inputs[0].image"), (f"{server}/drip", "inputs[1].image")]))
    assert err.reason == "blocked_address" and err.field == "inputs[0].image"
    assert time.monotonic() - t0 < 0.5  # the slow drip was cancelled, not awaited

    refs = [
        (f"{server}/png", "inputs[0].image"),
        (f"{server}/slow/x", "inputs[1].image"),
        ("/etc/passwd", "inputs[2].image"),
        ("http://10.0.0.1/x", "inputs[3].image"),
    ]
    err = run(go(refs))
    assert err.reason == "bad_scheme" and err.field == "inputs[2].image"
    assert str(err).startswith("inputs[2].image: ")


def test_stats_count_refusals(server: str) -> None:
    async def go() -> dict[str, int]:
        loader = MediaLoader(_settings(allow=()))
        try:
            for ref in ("http://10.0.0.1/", "http://192.168.1.1/", "ftp://x/"):
                with pytest.raises(MediaError):
                    await loader.load(ref, "f")
            return loader.stats
        finally:
            await loader.aclose()

    stats = run(go())
    assert stats["blocked_address"] == 2 and stats["bad_scheme"] == 1 and stats["ok"] == 0


def test_every_service_loader_waits_at_its_gate_and_counts_refusals() -> None:
    """Search's own loader (inline images that skip the Embedder) is built like the model services': refusals are
    counted under its service name and document decodes wait at its gate."""
    from service.metrics import get_metrics
    from service.priority import PriorityGate
    from service.runtime import media_loader

    settings = _settings()
    gate = PriorityGate.for_service(settings, "search")
    loader = media_loader("search", settings, gate)
    assert loader.gate is gate
    counter = get_metrics().refusals.labels("search", "bad_scheme")
    before = counter._value.get()

    async def refused() -> None:
        try:
            with pytest.raises(MediaError):
                await loader.load("ftp://127.0.0.1/x.png", "documents[0].image")
        finally:
            await loader.aclose()

    run(refused())
    assert counter._value.get() == before + 1
