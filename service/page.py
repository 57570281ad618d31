"""The search page: ``GET /`` and its static assets (``/ui/<file>``) from ``service/static``, no build step.

The page is plain HTML, CSS and ES modules. Every response carries ``Content-Security-Policy: default-src 'self'``
(plus directives that only tighten it, and ``blob:`` for images and media: a clip the page plays is fetched with the key
and played from an object URL), so the page can load nothing from elsewhere and run no inline code.

The page and its assets are public even when API keys are on: they hold no data, and the page must load to ask for
the key. ``/ui/config.json`` tells it whether to ask (a 401 says as much to anyone). Everything with data
(``/search``, ``/collections``, ``/media/...``) still needs the key; the page sends it as a header, and draws media
it fetched with that header, so a key never appears in a URL.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from service.config import get_settings

STATIC = Path(__file__).parent / "static"
ASSET_PREFIX = "/ui/"
# blob: for media only: a clip (and its poster) is fetched with the API key and played from an object URL, which
# only the page's own scripts can mint.
CSP = (
    "default-src 'self'; img-src 'self' blob:; media-src 'self' blob:; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'; object-src 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag): a redeploy's page is seen at once
}
MEDIA_TYPES = {
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}
# Served files are fixed at import: a request can only name one of them (no paths, no traversal).
ASSETS = {p.name: p for p in sorted(STATIC.iterdir()) if p.is_file() and p.suffix in MEDIA_TYPES}


def is_public(method: str, path: str) -> bool:
    """Whether a request is for the page or its assets, which need no API key."""
    return method in ("GET", "HEAD") and (path == "/" or path.startswith(ASSET_PREFIX))


def _file(path: Path) -> Response:
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


async def _index(_: Request) -> Response:
    return _file(STATIC / "index.html")


async def _asset(request: Request) -> Response:
    path = ASSETS.get(request.path_params["name"])
    if path is None:
        return JSONResponse({"error": "no such page asset", "code": "not_found", "field": "name"}, 404, HEADERS)
    return _file(path)


async def _config(_: Request) -> Response:
    """What the page needs before its first API call: whether to ask for an API key."""
    return JSONResponse({"auth_required": bool(get_settings().api_keys_list())}, headers=HEADERS)


page_app = Starlette(
    routes=[
        Route("/", _index, methods=["GET", "HEAD"]),
        Route(f"{ASSET_PREFIX}config.json", _config, methods=["GET", "HEAD"]),
        Route(ASSET_PREFIX + "{name}", _asset, methods=["GET", "HEAD"]),
    ]
)
