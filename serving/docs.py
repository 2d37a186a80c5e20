"""API documentation that works on an air-gapped host, and the error schemas the OpenAPI document names.

Swagger UI (``/docs``) and ReDoc (``/docs/redoc``) load their JavaScript and CSS from files inside
this package (``serving/web/vendor/``, see its README for versions and licences), served under
``/static``; Litestar's render plugins only take the local URLs. Each page also carries a
Content-Security-Policy that allows this origin only, so a stray remote reference inside a vendored
bundle (ReDoc's footer logo) is blocked by the browser instead of leaking a request or hanging.

Every handler declares its error responses with :func:`error_responses`, so clients see the schema
of each 4xx/5xx body (``{"status_code", "detail"}``) in the document, not only the 200.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from litestar import Request
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin

WEB_DIR = Path(__file__).with_name("web")
STATIC_PATH = "/static"
DOCS_PATH = "/docs"
VENDOR_URL = f"{STATIC_PATH}/vendor"
FAVICON = f'<link rel="icon" type="image/svg+xml" href="{STATIC_PATH}/favicon.svg">'
# Same origin only; inline script/style because both UIs inline the spec and use CSS-in-JS, blob: for
# ReDoc's search worker, data: for inline SVG icons.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' blob:; worker-src 'self' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'"
)
CSP_META = f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'.encode()


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Every error of the native API: the HTTP status again and a message naming the field and the fix."""

    status_code: int
    detail: str
    extra: list[dict[str, Any]] | dict[str, Any] | None = None
    """Validation errors: one entry per bad field (``key``, ``message``, ``source``)."""


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request: the detail names the field (or the multipart part) and what is wrong",
    403: "A path outside --data-root (after resolving symlinks)",
    404: "Unknown model id (GET /models lists them)",
    408: "The request body stalled for longer than --body-timeout",
    413: "Over an admission limit: body (--max-upload-mb), files (--max-files), paths (--max-paths), "
    "datasets (--max-datasets), decoded size (--max-request-mb) or more windows than --max-queue",
    415: "A predict body that is neither multipart/form-data nor a raw audio file type",
    424: "The model's artifact cannot be loaded (not retryable until the file is fixed)",
    500: "A server bug, or inference failed for every file; details are in the server log",
    503: "Busy (queue full, --max-concurrent-requests) or a transient load failure; with Retry-After",
}


def error_responses(*codes: int, body: type[msgspec.Struct] = ErrorBody) -> dict[int, ResponseSpec]:
    """``responses=`` for a handler: each status with its description and ``body``'s schema (500 always)."""
    return {
        code: ResponseSpec(data_container=body, description=ERROR_DESCRIPTIONS[code], generate_examples=False)
        for code in sorted({*codes, 500})
    }


def _with_csp(html: bytes) -> bytes:
    return html.replace(b"<head>", b"<head>" + CSP_META, 1)


class OfflineSwagger(SwaggerRenderPlugin):
    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return _with_csp(super().render(request, openapi_schema))


class OfflineRedoc(RedocRenderPlugin):
    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return _with_csp(super().render(request, openapi_schema))


def openapi_config(*, title: str, version: str, description: str) -> OpenAPIConfig:
    """Swagger UI at ``/docs``, ReDoc at ``/docs/redoc``, the document at ``/docs/openapi.json``."""
    swagger = f"{VENDOR_URL}/swagger-ui"
    return OpenAPIConfig(
        title=title,
        version=version,
        description=description,
        path=DOCS_PATH,
        render_plugins=[
            OfflineSwagger(
                path="/",
                js_url=f"{swagger}/swagger-ui-bundle.js",
                css_url=f"{swagger}/swagger-ui.css",
                standalone_preset_js_url=f"{swagger}/swagger-ui-standalone-preset.js",
                favicon=FAVICON,
            ),
            OfflineRedoc(
                path="/redoc",
                js_url=f"{VENDOR_URL}/redoc/redoc.standalone.js",
                google_fonts=False,
                favicon=FAVICON,
            ),
        ],
    )
