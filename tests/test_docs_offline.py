"""serving.docs + serving.webui: every page works with no network, and the OpenAPI names every error.

In-process (Litestar's TestClient): the HTML of ``/``, ``/docs`` and ``/docs/redoc`` must reference
only this server, every asset it references must be served, the vendored bundles must ship with
their licences and be package data, and each documented operation's error responses need a schema.
"""

from __future__ import annotations

import fnmatch
import re
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import serving_testkit as kit
from litestar.testing import TestClient

from serving.app import create_app
from serving.docs import WEB_DIR
from serving.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["/", "/docs", "/docs/redoc"]
ASSET_REF = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
EXTERNAL = re.compile(r"(?:https?:)?//[a-z0-9.-]+", re.IGNORECASE)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    workspace = tmp_path_factory.mktemp("docs")
    kit.build_model(workspace / "models" / "tone.onnx")
    (workspace / "data").mkdir()
    settings = Settings(model_dir=workspace / "models", data_roots=(workspace / "data",), decode_workers=1)
    with TestClient(create_app(settings)) as test_client:
        deadline = time.monotonic() + 20
        while test_client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.02)
        yield test_client


def asset_refs(html: str) -> list[str]:
    return sorted(set(ASSET_REF.findall(html)))


@pytest.mark.parametrize("page", PAGES)
def test_pages_reference_no_external_url(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    refs = asset_refs(html)
    assert any(ref.endswith(".js") for ref in refs), refs  # the check below looks at real references
    assert [ref for ref in refs if EXTERNAL.match(ref)] == []
    # Not even in the inlined OpenAPI document or a script: nothing on the page names another host.
    assert re.findall(r"https?://[^\s\"'<>]+", html) == []


@pytest.mark.parametrize("page", PAGES)
def test_every_referenced_asset_is_served(client: TestClient, page: str) -> None:
    refs = [ref for ref in asset_refs(client.get(page).text) if ref.startswith("/")]
    expected_types = {".js": "javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for ref in refs:
        response = client.get(ref)
        assert response.status_code == 200, ref
        suffix = Path(ref).suffix
        if suffix in expected_types:
            assert expected_types[suffix] in response.headers["content-type"], ref


def test_docs_pages_pin_a_same_origin_content_security_policy(client: TestClient) -> None:
    for page in ["/docs", "/docs/redoc"]:
        assert 'http-equiv="Content-Security-Policy" content="default-src \'self\'' in client.get(page).text
    assert client.get("/").headers["content-security-policy"].startswith("default-src 'self'")


def test_static_files_stay_inside_the_web_folder(client: TestClient) -> None:
    for probe in ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py"]:
        response = client.get(probe)
        assert response.status_code in (400, 404), probe
        assert "create_app" not in response.text
    for missing in ["/static/nope.js", "/static/vendor/", "/static/vendor/redoc/nope.js"]:
        response = client.get(missing)
        assert response.status_code == 404 and str(WEB_DIR) not in response.text, missing


def test_vendored_bundles_ship_with_their_licences() -> None:
    vendor = WEB_DIR / "vendor"
    for folder, licence_words in {"swagger-ui": "Apache License", "redoc": "MIT License"}.items():
        assert licence_words in (vendor / folder / "LICENSE").read_text()
    assert (vendor / "swagger-ui" / "swagger-ui-bundle.js").stat().st_size > 500_000
    assert (vendor / "redoc" / "redoc.standalone.js").stat().st_size > 500_000
    readme = (vendor / "README.md").read_text()
    assert "swagger-ui-dist@5" in readme and "redoc@2" in readme


def test_every_web_file_is_package_data() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "serving"
    ]
    files = sorted(p.relative_to(WEB_DIR.parent).as_posix() for p in WEB_DIR.rglob("*") if p.is_file())
    assert "web/index.html" in files and "web/vendor/redoc/redoc.standalone.js" in files
    missing = [f for f in files if not any(fnmatch.fnmatchcase(f, pattern) for pattern in patterns)]
    assert missing == []


def test_web_page_assets_are_small(client: TestClient) -> None:
    sizes = {
        name: len(client.get(f"/static/{name}").content) for name in ["app.js", "style.css", "favicon.svg"]
    }
    sizes["index.html"] = len(client.get("/").content)
    assert sum(sizes.values()) < 40_000, sizes  # hand-written page: tens of KB, no framework


# ---- OpenAPI: every error response has a schema -----------------------------------------------------------


def test_every_documented_error_response_has_a_schema(client: TestClient) -> None:
    schema = client.get("/docs/openapi.json").json()
    missing = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")) and not response.get("content"):
                    missing.append(f"{method.upper()} {path} {code}")
    assert missing == []


@pytest.mark.parametrize(
    ("path", "method", "codes"),
    [
        ("/model/predict", "post", {"400", "404", "413", "500", "503"}),
        ("/model/predict-directory", "post", {"400", "403", "404", "413", "500", "503"}),
        ("/model/predict-directory-stream", "post", {"400", "403", "404", "413", "500", "503"}),
        ("/model/test-directory", "post", {"400", "403", "404", "413", "500", "503"}),
        ("/model/test-directory-stream", "post", {"400", "403", "404", "413", "500", "503"}),
        ("/ready", "get", {"503"}),
        ("/v2/models/{rest}", "post", {"400", "404", "405", "413", "500", "503"}),
    ],
)
def test_error_responses_are_named_with_their_body(
    client: TestClient, path: str, method: str, codes: set[str]
) -> None:
    schema = client.get("/docs/openapi.json").json()
    responses = schema["paths"][path][method]["responses"]
    assert codes <= set(responses), sorted(responses)
    components = schema["components"]["schemas"]
    for code in codes:
        ref = responses[code]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        assert ref in components and components[ref]["properties"], (code, ref)
    if path.startswith("/model/"):
        assert responses["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
        assert {"status_code", "detail"} <= set(components["ErrorBody"]["required"])


def test_native_errors_have_the_documented_shape(client: TestClient) -> None:
    body = client.post(
        "/model/predict", params={"model": "nope.onnx"}, files={"files": ("a.wav", b"x")}
    ).json()
    assert set(body) == {"status_code", "detail"} and body["status_code"] == 404
