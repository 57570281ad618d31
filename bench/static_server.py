"""A static file server for benchmark images: ``python -m bench.static_server ROOT PORT`` (127.0.0.1 only).

HTTP/1.1 with keep-alive, TCP_NODELAY and one thread per connection, so the media loader's connection pool
is exercised the way a real image host would be.
"""

from __future__ import annotations

import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class _Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle on, the body waits for the client's delayed ACK
    # (~40 ms per response on loopback). Real image hosts (nginx, CDNs) set TCP_NODELAY.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    root, port = (argv or sys.argv[1:])[:2]
    ThreadingHTTPServer.daemon_threads = True
    httpd = ThreadingHTTPServer(("127.0.0.1", int(port)), partial(_Handler, directory=root))
    httpd.serve_forever()


if __name__ == "__main__":
    main()
