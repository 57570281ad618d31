"""Turn user-supplied image references (http(s) URLs, ``data:image/...;base64,`` URIs, uploads) into images, and
fetch the bytes of audio and video items (``fetch_av``: the same fetch path, their own byte caps; ``service.avload``
decodes them).

The only module that fetches or decodes user media: the embedder, reranker and search services call it and
hand the models nothing but decoded RGB ``PIL.Image`` objects. Every hostile input becomes a ``MediaError``
with a short reason code, the HTTP status to answer and the request field it came from.

Defences, in order: scheme allowlist (never a local path); DNS resolution with every address vetted
(loopback, private, link-local, multicast, reserved, unspecified, and IPv4 inside mapped/6to4/teredo IPv6 are
refused unless ``fetch_allow`` admits the host or address); the connection pinned to the vetted address;
redirects followed by hand with the same checks at every hop; connect/read timeouts plus a whole-fetch
deadline; a byte cap on Content-Length and on the streamed body; strict base64 with the decoded size checked
before decoding; format and pixel caps checked from the image header before any pixel is decoded, in a
worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import contextvars
import hashlib
import io
import ipaddress
import os
import re
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpcore
import httpx
from PIL import Image, ImageOps

from service.config import Settings
from service.mediastore import SCHEME as MEDIA_SCHEME
from service.mediastore import MediaStore, name_of
from service.pixels import Lease, PixelBudget, PixelBudgetBusy, TooManyPixels
from service.priority import PriorityGate

__all__ = ["MediaError", "MediaLoader", "content_hash"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")

USER_AGENT = "mmsearch/0.1"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_DATA_URI = re.compile(r"data:image/[a-z0-9.+-]+(?:;[a-z0-9.+-]+=[^;,]*)*;base64,", re.IGNORECASE)
_AV_DATA_URIS = {
    kind: re.compile(rf"data:{kind}/[a-z0-9.+-]+(?:;[a-z0-9.+-]+=[^;,]*)*;base64,", re.IGNORECASE)
    for kind in ("audio", "video")
}
_FORMAT_ALIASES = {"MPO": "JPEG"}  # Pillow reports multi-picture JPEGs (most phone photos) as MPO

_STATUS: dict[str, int] = {
    "bad_scheme": 400,
    "bad_url": 400,
    "bad_base64": 400,
    "blocked_address": 400,
    "too_many_redirects": 400,
    "too_large": 413,
    "too_many_pixels": 413,
    "pixel_budget_busy": 503,
    "not_an_image": 422,
    "format_not_allowed": 422,
    "timeout": 408,
    "http_error": 422,
    "connect_error": 422,
    "dns_error": 422,
    "media_unavailable": 422,
}


class MediaError(Exception):
    """A refused image reference.

    ``reason`` is a machine code, ``message`` is safe to show, ``status`` is the HTTP status to answer and
    ``field`` the request field (e.g. ``inputs[3].image``).
    """

    def __init__(self, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = _STATUS.get(reason, 400)
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


def content_hash(img_bytes: bytes) -> str:
    """SHA-256 hex digest of raw image bytes (cache key)."""
    return hashlib.sha256(img_bytes).hexdigest()


# --- address policy --------------------------------------------------------------------------------


def _is_blocked(ip: IPAddress) -> bool:
    """True if ``ip`` is not a plain public unicast address, including IPv4 hidden inside IPv6 forms."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _is_blocked(ip.ipv4_mapped)
        if ip.is_site_local:
            return True
        if any(v4 is not None and _is_blocked(v4) for v4 in (ip.sixtofour, *(ip.teredo or ()))):
            return True
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


async def _resolve(host: str, port: int) -> list[IPAddress]:
    """Addresses ``host`` resolves to; numeric forms like ``2130706433`` or ``0x7f.1`` come out normalised."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    out: list[IPAddress] = []
    for family, *_, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    return out


# Addresses vetted for (host, port) during the current fetch. A ContextVar because httpcore opens the
# connection in the task that sends the request, so the backend below sees the pins made by that ``_fetch``.
_PINS: contextvars.ContextVar[dict[tuple[str, int], list[IPAddress]] | None] = contextvars.ContextVar(
    "mmsearch_media_pins", default=None
)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that connects only to vetted IPs.

    IP pinning: httpcore hands ``connect_tcp`` the URL's host name. We do not ask DNS again: we connect to
    the addresses ``MediaLoader._vet`` approved moments earlier for this fetch (or, with no pin, resolve and
    vet here), passing the IP literal to the real backend, so an answer that changes between check and
    connect (DNS rebinding) cannot steer us elsewhere. Everything above the socket keeps the host name: the
    ``Host`` header comes from the URL, and for https httpcore then calls
    ``start_tls(server_hostname=<host>)`` on the returned stream, so SNI and certificate verification are
    against the name, not the IP.
    """

    def __init__(self, loader: MediaLoader) -> None:
        self._loader = loader
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pins = _PINS.get() or {}
        addrs = pins.get((host.lower(), port)) or await self._loader._vet(host, port)
        last: Exception | None = None
        for ip in addrs:
            try:
                return await self._inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last = e
        raise last or httpcore.ConnectError("no address")

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# --- the loader ------------------------------------------------------------------------------------


class MediaLoader:
    """Fetches and decodes user images under the limits in ``Settings``; one per process, shared by services.

    ``stats`` counts refusals by reason, plus ``ok`` (images returned) and ``fetched_bytes`` (bodies read).
    """

    def __init__(self, settings: Settings, *, client: httpx.AsyncClient | None = None) -> None:
        """``client``: an injected client is used as is (and not closed here). It gets the pre-connect address
        checks but not IP pinning, which only the client built here has; leave it ``None`` outside tests."""
        self.settings = settings
        self.stats: dict[str, int] = {"ok": 0, "fetched_bytes": 0}
        self.on_refusal: Callable[[str], None] | None = None
        """Called with the reason of every refusal (the services count them as a Prometheus metric)."""
        self.gate: PriorityGate | None = None
        self.pixels = PixelBudget.from_settings(settings)
        """Decoded pixels per request and in flight in this process (``service.pixels``)."""
        """Background (document) decodes wait for in-flight query requests at this gate."""
        self._background_pool: ThreadPoolExecutor | None = None
        self._background_slots: asyncio.Semaphore | None = None
        self._client = client
        self._own_client = client is None
        self.store: MediaStore | None = None
        """Where ``media://`` references are read (opened from the settings on first use)."""
        self._sem: asyncio.Semaphore | None = None
        self._lock = threading.Lock()
        self._allow_hosts: set[str] = set()
        self._allow_nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._allow_only = settings.fetch_allow_only
        for entry in settings.fetch_allow:
            try:
                self._allow_nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._allow_hosts.add(entry.lower().rstrip("."))

    # public API ---------------------------------------------------------------------------------------------

    async def load(self, ref: str, field: str, *, background: bool = False, lease: Lease | None = None) -> Image.Image:
        """Fetch (http/https) or decode (data URI) one image; refusals raise ``MediaError`` for ``field``."""
        return (await self.load_many([(ref, field)], background=background, lease=lease))[0]

    async def load_many(
        self,
        refs: Sequence[tuple[str | bytes, str]],
        *,
        background: bool = False,
        lease: Lease | None = None,
        also: Sequence[tuple[int, str]] = (),
    ) -> list[Image.Image]:
        """Load ``(ref, field)`` pairs concurrently (at most ``fetch_concurrency`` fetches at once), in order. A
        ``ref`` is an image reference (URL or data URI) or the bytes of an uploaded file.

        Three steps: every image's bytes are fetched or base64-decoded and its header read (format and pixel
        caps); the request's ``lease`` reserves the pixels of all of them at once (413 over the per-request
        budget, 503 when the worker's in-flight budget stays full); only then are pixels decoded. Without a
        ``lease`` the reservation ends when this returns. ``background``: bulk work, whose decodes run on the
        document pool after in-flight queries. On failure raises the error of the first failing input by position.
        ``also``: ``(pixels, field)`` of the request's other media (audio, video; ``service.avload``), reserved in
        the same reservation as the images.
        """
        probed = await first_failure([self._guarded(field, self._obtain(ref, background)) for ref, field in refs])
        return await self._decode_all(
            [(data, field) for (data, _), (_, field) in zip(probed, refs, strict=True)],
            [pixels for _, pixels in probed],
            background,
            lease,
            also,
        )

    async def decode_upload(self, data: bytes, field: str, *, background: bool = False) -> Image.Image:
        """One uploaded image, under the same caps and pixel budget as ``load``."""
        return (await self.load_many([(data, field)], background=background))[0]

    def decode_bytes(self, data: bytes, field: str) -> Image.Image:
        """Decode bytes under the per-image caps, outside any pixel budget. Blocking (benchmarks and tests)."""
        try:
            img = self._decode(data)
        except MediaError as e:
            raise self._refused(e, field) from None
        self._bump("ok")
        return img

    async def reserve(self, lease: Lease, sizes: Sequence[tuple[int, str]]) -> None:
        """Reserve ``(pixels, field)`` sizes on ``lease`` at once: 413 naming the field that crossed the per-request
        budget, 503 when the worker's in-flight budget stays full."""
        try:
            await lease.reserve([n for n, _ in sizes])
        except TooManyPixels as e:
            raise self._refused(MediaError("too_many_pixels", str(e)), sizes[e.index][1]) from None
        except PixelBudgetBusy as e:
            raise self._refused(MediaError("pixel_budget_busy", str(e)), sizes[0][1] if sizes else "") from None

    async def _decode_all(
        self,
        items: Sequence[tuple[bytes, str]],
        sizes: Sequence[int],
        background: bool,
        lease: Lease | None,
        also: Sequence[tuple[int, str]] = (),
    ) -> list[Image.Image]:
        async with contextlib.AsyncExitStack() as stack:
            if lease is None:
                lease = await stack.enter_async_context(self.pixels.lease())
            await self.reserve(lease, [*zip(sizes, (field for _, field in items), strict=True), *also])
            images = await first_failure(
                [self._guarded(field, self._in_thread(background, self._decode, data)) for data, field in items]
            )
        self._bump("ok", len(images))
        return images

    async def _guarded(self, field: str, step: Awaitable[T]) -> T:
        """Await one input's step; its refusal names ``field``."""
        try:
            return await step
        except MediaError as e:
            raise self._refused(e, field) from None

    async def _obtain(self, ref: str | bytes, background: bool) -> tuple[bytes, int]:
        """The image bytes of ``ref`` (fetched or base64-decoded) and its pixel count read from its header."""
        if isinstance(ref, bytes):
            return ref, await asyncio.to_thread(self._probe, ref)
        if not isinstance(ref, str):
            raise MediaError("bad_scheme", "image must be an http(s) URL or a data:image/...;base64 URI")
        head = ref[:8].lower()
        if head.startswith("data:"):
            data = await asyncio.to_thread(self._data_uri_bytes, ref)
        elif head.startswith(("http://", "https://")):
            data = await self._fetch(ref)
        elif head.startswith(MEDIA_SCHEME):
            return await asyncio.to_thread(self._stored_probed, ref)  # one thread hop: read and header
        else:
            raise MediaError("bad_scheme", "image must be an http(s) URL or a data:image/...;base64 URI")
        return data, await asyncio.to_thread(self._probe, data)

    async def fetch_image(self, ref: str | bytes, field: str) -> tuple[bytes, str]:
        """The bytes of one image (fetched, base64-decoded, read from the media store or given) and its format,
        with the byte, format and pixel caps checked from the header; no pixel is decoded. Ingest keeps these
        bytes: a URL is fetched here once, never again."""
        data, _ = await self._guarded(field, self._obtain(ref, True))
        fmt = await self._guarded(field, asyncio.to_thread(self._format, data))
        return data, fmt

    async def fetch_images(self, refs: Sequence[tuple[str | bytes, str]]) -> list[tuple[bytes, str]]:
        """``fetch_image`` for ``(ref, field)`` pairs concurrently, in order; the first failure by position."""
        return await first_failure([self.fetch_image(ref, field) for ref, field in refs])

    async def fetch_av(self, ref: str, field: str, kind: str) -> bytes:
        """The bytes of one audio or video item (``kind``): fetched from an http(s) URL under the fetch policy, or
        a ``data:<kind>/...;base64,`` URI, at most ``max_<kind>_bytes``. Nothing is decoded here (``avmedia``)."""
        return await self._guarded(field, self._obtain_av(ref, kind))

    async def _obtain_av(self, ref: str, kind: str) -> bytes:
        cap = self.settings.max_audio_bytes if kind == "audio" else self.settings.max_video_bytes
        head = ref[:8].lower() if isinstance(ref, str) else ""
        if head.startswith("data:"):
            return await asyncio.to_thread(self._data_uri_bytes, ref, kind, cap)
        if head.startswith(("http://", "https://")):
            return await self._fetch(ref, kind, cap)
        if head.startswith(MEDIA_SCHEME):  # a stored clip (Search sends a document's segments so)
            data = await asyncio.to_thread(self._stored_bytes, ref)
            if len(data) > cap:
                raise MediaError("too_large", f"{kind} is larger than {cap} bytes")
            return data
        raise MediaError("bad_scheme", f"{kind} must be an http(s) URL or a data:{kind}/...;base64 URI")

    async def run_decode(self, background: bool, fn: Callable[[], T]) -> T:
        """``fn()`` in a decoding thread, as images are decoded (documents: after in-flight queries)."""
        return await self._in_thread(background, lambda _: fn(), None)

    def refuse(self, e: MediaError, field: str) -> MediaError:
        """``e`` for ``field``, counted as a refusal (stats and ``on_refusal``)."""
        return self._refused(e, field)

    def _stored_probed(self, ref: str) -> tuple[bytes, int]:
        data = self._stored_bytes(ref)
        return data, self._probe(data)

    def _stored_bytes(self, ref: str) -> bytes:
        """A ``media://`` reference's bytes from the media store (``MMSEARCH_MEDIA_URI`` / ``MMSEARCH_MEDIA_DIR``)."""
        if self.store is None:
            from service.mediastore import open_media_store

            self.store = open_media_store(self.settings)
        if name_of(ref) is None:
            raise MediaError("bad_url", "media reference is malformed (media://<sha256>.<ext>)")
        try:
            data = self.store.read(ref)
        except OSError as e:  # a local store's I/O error
            raise MediaError("media_unavailable", f"stored image {ref} cannot be read: {e.strerror}") from None
        except Exception as e:  # object storage unreachable or refusing
            raise MediaError("media_unavailable", f"stored image {ref} cannot be read: {type(e).__name__}") from None
        if data is None:
            raise MediaError("media_unavailable", f"stored image {ref} is missing from the media store")
        return data

    async def _in_thread(self, background: bool, fn: Callable[[Any], T], arg: Any) -> T:
        """Decode in a worker thread. Bulk (document) work runs on its own small pool, and each decode first
        waits at ``gate`` for in-flight queries; interactive work uses the default pool and never waits."""
        if not background:
            return await asyncio.to_thread(fn, arg)
        if self._background_pool is None:
            n = self.settings.document_decode_threads or max(1, (os.cpu_count() or 1) // 4)
            self._background_pool = ThreadPoolExecutor(n, thread_name_prefix="decode-documents")
            self._background_slots = asyncio.Semaphore(n)
        assert self._background_slots is not None
        async with self._background_slots:  # only as many as run at once pass the gate: none sit queued past it
            if self.gate is not None:
                await self.gate.background_turn()
            return await asyncio.get_running_loop().run_in_executor(self._background_pool, fn, arg)

    async def aclose(self) -> None:
        """Close the HTTP client if this loader created it, and the document decode pool."""
        if self._client is not None and self._own_client:
            await self._client.aclose()
            self._client = None
        if self._background_pool is not None:
            self._background_pool.shutdown(wait=False, cancel_futures=True)
            self._background_pool = None

    # fetching -----------------------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            s = self.settings
            limits = httpx.Limits(max_connections=s.fetch_concurrency, max_keepalive_connections=s.fetch_concurrency)
            transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
            # Same pool httpx would build, plus our pinning network backend (httpx has no public hook for it).
            transport._pool = httpcore.AsyncConnectionPool(
                ssl_context=httpx.create_ssl_context(trust_env=False),
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry,
                network_backend=_PinnedBackend(self),
            )
            timeout = httpx.Timeout(
                connect=s.fetch_connect_timeout_s,
                read=s.fetch_read_timeout_s,
                write=s.fetch_read_timeout_s,
                pool=s.fetch_deadline_s,
            )
            self._client = httpx.AsyncClient(
                transport=transport,
                timeout=timeout,
                follow_redirects=False,
                trust_env=False,
                headers={"User-Agent": USER_AGENT},
            )
        return self._client

    def _parse_url(self, ref: str, kind: str = "image") -> httpx.URL:
        try:
            url = httpx.URL(ref)
        except (httpx.InvalidURL, ValueError, TypeError):
            raise MediaError("bad_url", f"{kind} URL is malformed") from None
        if url.scheme not in _DEFAULT_PORTS:
            raise MediaError("bad_scheme", f"{kind} must be an http(s) URL or a data:{kind}/...;base64 URI")
        if not url.host:
            raise MediaError("bad_url", f"{kind} URL has no host")
        return url

    async def _vet(self, host: str, port: int) -> list[IPAddress]:
        """Resolve ``host`` and return its addresses, or refuse if any of them is not admitted."""
        name = host.lower().rstrip(".")
        try:
            addrs = await _resolve(host, port)
        except (OSError, UnicodeError):
            raise MediaError("dns_error", f"could not resolve image host {name!r}") from None
        if not addrs:
            raise MediaError("dns_error", f"could not resolve image host {name!r}")
        if name in self._allow_hosts:
            return addrs
        for ip in addrs:
            admitted = any(ip in net for net in self._allow_nets)
            if _is_blocked(ip) and not admitted:
                raise MediaError("blocked_address", f"image host {name!r} is not a public address")
            if self._allow_only and not admitted:
                raise MediaError("blocked_address", f"image host {name!r} is not in MMSEARCH_FETCH_ALLOW")
        return addrs

    async def _fetch(self, ref: str, kind: str = "image", cap: int | None = None) -> bytes:
        """GET ``ref`` under the fetch policy: at most ``cap`` bytes (default ``max_image_bytes``)."""
        s = self.settings
        if self._sem is None:
            self._sem = asyncio.Semaphore(s.fetch_concurrency)
        pins: dict[tuple[str, int], list[IPAddress]] = {}
        token = _PINS.set(pins)
        try:
            async with self._sem, asyncio.timeout(s.fetch_deadline_s):
                return await self._fetch_hops(self._parse_url(ref, kind), pins, kind, cap or s.max_image_bytes)
        except TimeoutError:
            raise MediaError("timeout", f"{kind} fetch exceeded {s.fetch_deadline_s:g} s") from None
        except httpx.TimeoutException:
            raise MediaError("timeout", f"{kind} server timed out") from None
        except httpx.ConnectError:
            raise MediaError("connect_error", f"could not connect to the {kind} server") from None
        except httpx.HTTPError:
            raise MediaError("http_error", f"{kind} server sent an invalid response") from None
        finally:
            _PINS.reset(token)

    async def _fetch_hops(
        self, url: httpx.URL, pins: dict[tuple[str, int], list[IPAddress]], kind: str, cap: int
    ) -> bytes:
        s = self.settings
        client = self._http()
        headers = {"User-Agent": USER_AGENT, "Accept": f"{kind}/*", "Accept-Encoding": "identity"}
        for _hop in range(s.fetch_max_redirects + 1):
            host = url.raw_host.decode("ascii").lower()
            port = url.port or _DEFAULT_PORTS[url.scheme]
            pins[(host, port)] = await self._vet(host, port)  # refused here, before any connection
            resp = await client.send(client.build_request("GET", url, headers=headers), stream=True)
            try:
                if resp.status_code in _REDIRECTS and "location" in resp.headers:
                    try:
                        url = self._parse_url(str(url.join(resp.headers["location"])), kind)
                    except httpx.InvalidURL:
                        raise MediaError("bad_url", f"{kind} redirect location is malformed") from None
                    continue
                if resp.status_code != 200:
                    raise MediaError("http_error", f"{kind} server answered HTTP {resp.status_code}")
                return await self._read_capped(resp, kind, cap)
            finally:
                await resp.aclose()
        raise MediaError("too_many_redirects", f"{kind} URL redirected more than {s.fetch_max_redirects} times")

    async def _read_capped(self, resp: httpx.Response, kind: str, cap: int) -> bytes:
        declared = resp.headers.get("content-length", "")
        if declared.strip().isdigit() and int(declared) > cap:
            raise MediaError("too_large", f"{kind} is larger than {cap} bytes")
        buf = bytearray()
        # aiter_raw: no content-decoding, so a gzip bomb cannot expand past the cap inside one chunk.
        async for chunk in resp.aiter_raw():
            buf += chunk
            if len(buf) > cap:
                raise MediaError("too_large", f"{kind} is larger than {cap} bytes")
        self._bump("fetched_bytes", len(buf))
        return bytes(buf)

    # decoding (worker threads) ------------------------------------------------------------------------------

    def _data_uri_bytes(self, ref: str, kind: str = "image", cap: int | None = None) -> bytes:
        m = (_DATA_URI if kind == "image" else _AV_DATA_URIS[kind]).match(ref)
        if m is None:
            raise MediaError("bad_scheme", f"data URIs must be data:{kind}/<format>;base64,<payload>")
        # sized before it is sliced out: a refused payload is never copied (the refusal's traceback would keep the
        # copy of a data URI up to max_request_bytes alive with its frame until the next request on this thread)
        n, tail = len(ref) - m.end(), ref[max(m.end(), len(ref) - 2) :]  # base64 pads with at most two "="
        size = n // 4 * 3 - (len(tail) - len(tail.rstrip("=")))
        cap = cap or self.settings.max_image_bytes
        if size > cap:
            raise MediaError("too_large", f"{kind} is larger than {cap} bytes")
        try:
            return base64.b64decode(ref[m.end() :], validate=True)
        except (binascii.Error, ValueError):
            raise MediaError("bad_base64", "data URI payload is not valid base64") from None

    @contextlib.contextmanager
    def _opened(self, data: bytes) -> Iterator[Image.Image]:
        """``data`` opened (header read, no pixel decoded) with the byte, format and pixel caps checked. Errors of
        the block (decoding) become ``not_an_image``: decoders raise anything on hostile or truncated data."""
        s = self.settings
        if len(data) > s.max_image_bytes:
            raise MediaError("too_large", f"image is larger than {s.max_image_bytes} bytes")
        try:
            # Pillow's own bomb check (global Image.MAX_IMAGE_PIXELS) may raise here; ours follows, per call.
            with Image.open(io.BytesIO(data)) as img:
                fmt = _FORMAT_ALIASES.get(img.format or "", img.format or "")
                if fmt not in s.image_formats:
                    raise MediaError("format_not_allowed", f"image format {fmt or 'unknown'} is not accepted")
                width, height = img.size
                if width * height > s.max_image_pixels:
                    raise MediaError("too_many_pixels", f"image has more than {s.max_image_pixels} pixels")
                yield img
        except MediaError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise MediaError("too_many_pixels", f"image has more than {s.max_image_pixels} pixels") from None
        except Exception:
            raise MediaError("not_an_image", "data is not a decodable image") from None

    def _format(self, data: bytes) -> str:
        with self._opened(data) as img:
            return _FORMAT_ALIASES.get(img.format or "", img.format or "")

    def _probe(self, data: bytes) -> int:
        """The pixels ``data`` will decode to, from its header (caps checked)."""
        with self._opened(data) as img:
            return int(img.size[0] * img.size[1])

    def _decode(self, data: bytes) -> Image.Image:
        with self._opened(data) as img:
            img.seek(0)  # first frame of animations
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # no copy of the pixels when there is nothing to turn
            return _to_rgb(img)

    # bookkeeping --------------------------------------------------------------------------------------------

    def _bump(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] = self.stats.get(key, 0) + n

    def _refused(self, e: MediaError, field: str) -> MediaError:
        e.field = field
        self._bump(e.reason)
        if self.on_refusal is not None:
            self.on_refusal(e.reason)
        return e


async def first_failure(steps: Sequence[Awaitable[T]]) -> list[T]:
    """Run ``steps`` concurrently; their results in order, or the error of the first failing step by position.

    Once a step fails, later ones are cancelled at once; earlier ones are awaited only to learn whether they fail
    first.
    """
    tasks: list[asyncio.Future[T]] = [asyncio.ensure_future(step) for step in steps]
    try:
        first_bad = await _first_failed(tasks)
    finally:
        leftover = [t for t in tasks if not t.done()]
        for t in leftover:
            t.cancel()
        if leftover:
            await asyncio.wait(leftover)
    if first_bad is not None:
        exc = tasks[first_bad].exception()
        assert exc is not None
        # The error's traceback will hold this frame: without its tasks (each holding an error) and its own name
        # for the error, no reference cycle keeps the request's frames, body included, alive until a gc pass
        # (a refused 34 MB data URI stayed in the worker's RSS until a later request triggered one).
        tasks.clear()
        try:
            raise exc
        finally:
            del exc
    return [t.result() for t in tasks]


async def _first_failed(tasks: list[asyncio.Future[T]]) -> int | None:
    """Wait for ``tasks``; the position of the first that failed (cancelling every later one as soon as one has
    failed), or ``None`` when none did."""
    position = {t: i for i, t in enumerate(tasks)}
    first_bad: int | None = None
    pending: set[asyncio.Future[T]] = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        failed = [position[t] for t in done if not t.cancelled() and t.exception() is not None]
        if failed:
            first_bad = min(failed if first_bad is None else [*failed, first_bad])
            for t in pending:
                if position[t] > first_bad:
                    t.cancel()
    return first_bad


def _to_rgb(img: Image.Image) -> Image.Image:
    """``img`` in RGB (itself if it already is); transparent pixels are composited onto white, not black."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")
