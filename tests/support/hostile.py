"""A loopback HTTP server with hostile endpoints, and the hostile-input battery shared by the services' tests."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from bench.support.images import make_image, png_bytes

MAX_IMAGE_BYTES = 1_000_000  # the test bentos run with this cap
FETCH_DEADLINE_S = 3.0  # and this whole-fetch deadline


def _pixel_bomb() -> bytes:
    """A 20000x20000 1-bit PNG: 400 megapixels in well under 1 MB."""
    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    disable_nagle_algorithm = True  # see servers._QuietHandler
    bomb: bytes = b""
    ok_png: bytes = b""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "image/png", length: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def _redirect(self, to: str) -> None:
        self.send_response(302)
        self.send_header("Location", to)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        p = self.path
        if p == "/ok.png":
            self._send(200, self.ok_png)
        elif p == "/slow.png":  # drips one byte every 0.5 s, for longer than any deadline
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for b in self.ok_png[:60]:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.5)
        elif p == "/big.png":
            self._send(200, b"\x89PNG" + b"\0" * (MAX_IMAGE_BYTES * 3))
        elif p == "/big-chunked.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for _ in range(40):
                    self.wfile.write(b"\0" * 100_000)
        elif p == "/bomb.png":
            self._send(200, self.bomb)
        elif p == "/corrupt.png":
            self._send(200, self.ok_png[:40] + b"garbage" * 50)
        elif p == "/page.html":
            self._send(200, b"<html><body>not an image</body></html>", "text/html")
        elif p == "/missing.png":
            self._send(404, b"no")
        elif p == "/to-loopback":
            self._redirect(f"http://127.0.0.2:{port}/ok.png")
        elif p == "/to-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif p == "/to-file":
            self._redirect("file:///etc/passwd")
        elif p.startswith("/loop"):
            n = int(p[5:] or 0)
            self._redirect(f"/loop{n + 1}")
        else:
            self._send(404, b"")


@dataclass
class HostileServer:
    url: str


@contextlib.contextmanager
def hostile_server() -> Iterator[HostileServer]:
    _Handler.bomb = _pixel_bomb()
    _Handler.ok_png = png_bytes(make_image(7))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield HostileServer(f"http://127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
        httpd.server_close()


def hostile_images(base: str) -> dict[str, str]:
    """Image references that must each be refused with a 4xx (the test bento allows only 127.0.0.1/32)."""
    port = base.rsplit(":", 1)[1]
    big_b64 = base64.b64encode(b"\0" * (MAX_IMAGE_BYTES + 10)).decode()
    return {
        "loopback_other_ip": f"http://127.0.0.2:{port}/ok.png",
        "loopback_ipv6": f"http://[::1]:{port}/ok.png",
        "ipv4_mapped_ipv6": f"http://[::ffff:127.0.0.2]:{port}/ok.png",
        "loopback_decimal": "http://2130706434/ok.png",
        "private_10": "http://10.0.0.1/x.png",
        "private_192": "http://192.168.1.1/x.png",
        "private_172": "http://172.16.0.1/x.png",
        "link_local_metadata": "http://169.254.169.254/latest/meta-data/",
        "unspecified": "http://0.0.0.0/x.png",
        "multicast": "http://224.0.0.1/x.png",
        "redirect_to_loopback": f"{base}/to-loopback",
        "redirect_to_metadata": f"{base}/to-metadata",
        "redirect_to_file": f"{base}/to-file",
        "redirect_loop": f"{base}/loop0",
        "file_scheme": "file:///etc/passwd",
        "ftp_scheme": "ftp://127.0.0.1/x.png",
        "local_path": "/etc/passwd",
        "relative_path": "../../etc/hosts.png",
        "slow_server": f"{base}/slow.png",
        "over_byte_cap": f"{base}/big.png",
        "over_byte_cap_chunked": f"{base}/big-chunked.png",
        "pixel_bomb": f"{base}/bomb.png",
        "corrupt_png": f"{base}/corrupt.png",
        "html_not_image": f"{base}/page.html",
        "http_404": f"{base}/missing.png",
        "malformed_base64": "data:image/png;base64,@@not*base64@@",
        "base64_not_image": "data:image/png;base64," + base64.b64encode(b"hello world, not an image").decode(),
        "base64_over_cap": "data:image/png;base64," + big_b64,
        "data_uri_not_image_type": "data:text/plain;base64,aGVsbG8=",
        "empty": "",
    }
