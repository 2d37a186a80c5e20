"""The browser page at ``/``: plain HTML + vanilla JS + CSS from ``serving/web/``, no build step, no CDN.

The page only calls the public API (``GET /models``, ``POST /model/predict?timeline=true``,
``POST /model/test-directory``), so everything it shows is exactly what a script would get.
The files are package data (see ``pyproject.toml``) and are served under ``/static``, together with
the vendored documentation bundles of :mod:`serving.docs`.
"""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response, Router, get
from litestar.exceptions import NotFoundException
from litestar.handlers import HTTPRouteHandler
from litestar.static_files import create_static_files_router

from serving.docs import CONTENT_SECURITY_POLICY, STATIC_PATH, WEB_DIR

INDEX = WEB_DIR / "index.html"


def _not_found(_: Request[Any, Any, Any], exc: NotFoundException) -> Response[dict[str, Any]]:
    # Litestar's own message names the directory on disk: say less.
    return Response({"status_code": 404, "detail": "no such static file"}, status_code=404)


def web_routes() -> list[HTTPRouteHandler | Router]:
    """The page at ``/`` and the static files under ``/static``, read from the installed package."""
    index_html = INDEX.read_bytes()

    @get("/", include_in_schema=False, media_type=MediaType.HTML, sync_to_thread=False)
    def index() -> Response[bytes]:
        return Response(
            index_html,
            media_type=MediaType.HTML,
            # frame-ancestors works only as a header (not in a <meta> CSP): no site may frame this page.
            headers={
                "Content-Security-Policy": CONTENT_SECURITY_POLICY + "; frame-ancestors 'none'",
                "Cache-Control": "no-cache",
            },
        )

    static = create_static_files_router(
        path=STATIC_PATH,
        directories=[WEB_DIR],
        name="static",
        include_in_schema=False,
        exception_handlers={NotFoundException: _not_found},
    )
    return [index, static]
