"""A static file server for benchmark images: ``python -m bench.static_server ROOT PORT`` (127.0.0.1 only).

HTTP/1.1 with keep-alive and one thread per connection, so the media loader's connection pool is exercised the
way a real image host would be.
"""

from __future__ import annotations

import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class _Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    root, port = (argv or sys.argv[1:])[:2]
    ThreadingHTTPServer.daemon_threads = True
    httpd = ThreadingHTTPServer(("127.0.0.1", int(port)), partial(_Handler, directory=root))
    httpd.serve_forever()


if __name__ == "__main__":
    main()
