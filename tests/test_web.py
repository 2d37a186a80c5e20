"""The web page at ``/`` in a real browser: Debian's chromium, headless, driven by Playwright.

A live ``lumen-serve`` runs the bundled demo model on the bundled example clips. The browser uploads
clips through the page, and what the page shows (labels, bars, thresholds, timeline, errors,
metrics) is compared with what the API answers for the same request. No browser is downloaded:
Playwright launches ``/usr/bin/chromium`` (``make setup`` installs it with apt). Every request the
pages make is watched, and one to any other host fails the test, so the page provably works offline.

``LUMEN_WEB_SCREENSHOT=docs/web-ui.png pytest tests/test_web.py`` also refreshes the README's picture.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import serving_testkit as kit

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
DEMO_MODEL = ROOT / "models" / "demo" / "lumen-demo.onnx"
EXAMPLES = ROOT / "data" / "examples"
MODEL = "lumen-demo.onnx"
CLIPS = ["piano_voice.wav", "flute.wav"]
BROWSER_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    # A synthetic microphone (a beep) that needs no permission prompt, for the recording test.
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
]  # fmt: skip
WAIT_MS = 30_000  # only turns a hang into a failure

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs chromium with apt", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kit.LiveServer]:
    workspace = tmp_path_factory.mktemp("web")
    (workspace / "models").mkdir()
    shutil.copy(DEMO_MODEL, workspace / "models" / MODEL)
    shutil.copytree(EXAMPLES, workspace / "data" / "examples")
    live = kit.LiveServer(workspace)
    yield live
    assert live.stop() in (0, -signal.SIGTERM), live.log.read_text()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object, server: kit.LiveServer) -> Iterator[object]:
    """A fresh tab; requests to any host but the server are aborted and recorded, JS errors recorded."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})  # type: ignore[attr-defined]
    tab = context.new_page()
    tab.external_requests = []
    tab.js_errors = []
    server_host = urlsplit(server.url).netloc

    def route(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if urlsplit(url).scheme in ("data", "blob") or urlsplit(url).netloc == server_host:
            route.continue_()  # type: ignore[attr-defined]
        else:
            tab.external_requests.append(url)
            route.abort()  # type: ignore[attr-defined]

    tab.route("**/*", route)
    tab.on("pageerror", lambda error: tab.js_errors.append(str(error)))
    tab.set_default_timeout(WAIT_MS)
    yield tab
    assert tab.external_requests == []
    assert tab.js_errors == []
    context.close()


def api_predict(server: kit.LiveServer, files: list[tuple[str, bytes]]) -> dict:
    response = httpx.post(
        f"{server.url}/model/predict",
        params={"model": MODEL, "timeline": "true"},
        files=[("files", (name, data, "audio/wav")) for name, data in files],
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


def percent(css: str) -> float:
    """``"36.5%"`` -> 36.5 (the browser normalises ``36.0%`` to ``36%``)."""
    assert css.endswith("%"), css
    return float(css[:-1])


def pixel_std(png: bytes) -> float:
    with Image.open(io.BytesIO(png)) as image:
        return float(np.asarray(image.convert("L"), dtype=np.float32).std())


def test_upload_shows_the_labels_the_api_gives(page: object, server: kit.LiveServer, tmp_path: Path) -> None:
    page.goto(server.url + "/")  # type: ignore[attr-defined]
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")  # type: ignore[attr-defined]
    assert page.input_value("#model") == MODEL  # type: ignore[attr-defined]
    page.set_input_files("#files", [str(EXAMPLES / name) for name in CLIPS])  # type: ignore[attr-defined]
    page.click("#classify")  # type: ignore[attr-defined]
    page.locator("#results article.result").nth(len(CLIPS) - 1).wait_for()  # type: ignore[attr-defined]

    answer = api_predict(server, [(name, (EXAMPLES / name).read_bytes()) for name in CLIPS])
    models = httpx.get(f"{server.url}/models").json()
    thresholds = dict(zip(models[0]["labels"], models[0]["thresholds"], strict=True))
    for name in CLIPS:
        card = page.locator(f"article.result[data-file='{name}']")  # type: ignore[attr-defined]
        shown = card.locator(".labels .chip").evaluate_all("els => els.map(e => e.dataset.code)")
        expected = [code for code, on in answer["predictions"][name].items() if on]
        assert expected and shown == expected  # the demo model finds at least one instrument in each clip
        bars = card.locator(".bar")
        assert bars.count() == len(thresholds)
        for code, probability in answer["probabilities"][name].items():
            bar = card.locator(f".bar[data-code='{code}']")
            assert bar.locator(".value").inner_text() == f"{100 * probability:.1f}%"
            left = bar.locator(".threshold").evaluate("e => e.style.left")
            assert percent(left) == pytest.approx(100 * thresholds[code], abs=0.05)
            assert ("on" in bar.get_attribute("class").split()) == bool(answer["predictions"][name][code])
        heat = card.locator("table.heatmap")
        assert heat.locator("tbody tr").count() == len(thresholds)
        assert heat.locator("tbody tr:first-child td").count() == len(answer["timeline"][name]) > 1

    shot = tmp_path / "web-ui.png"
    page.screenshot(path=str(shot), full_page=True)  # type: ignore[attr-defined]
    assert pixel_std(shot.read_bytes()) > 10.0  # a blank or single-colour page is ~0
    if target := os.environ.get("LUMEN_WEB_SCREENSHOT"):
        shutil.copy(shot, ROOT / target)


def test_a_broken_file_is_shown_as_an_error_beside_good_ones(page: object, server: kit.LiveServer) -> None:
    page.goto(server.url + "/")  # type: ignore[attr-defined]
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")  # type: ignore[attr-defined]
    broken = {"name": "broken.wav", "mimeType": "audio/wav", "buffer": b"RIFF this is not audio"}
    good = {"name": "flute.wav", "mimeType": "audio/wav", "buffer": (EXAMPLES / "flute.wav").read_bytes()}
    page.set_input_files("#files", [broken, good])  # type: ignore[attr-defined]
    page.click("#classify")  # type: ignore[attr-defined]
    page.wait_for_selector("article.result.error[data-file='broken.wav']")  # type: ignore[attr-defined]
    answer = api_predict(server, [("broken.wav", broken["buffer"]), ("flute.wav", good["buffer"])])
    error_text = page.inner_text("article.result.error[data-file='broken.wav'] .error-text")  # type: ignore[attr-defined]
    assert error_text == f"Error: {answer['errors']['broken.wav']}"
    assert page.locator("article.result[data-file='flute.wav'] .chip").count() >= 1  # type: ignore[attr-defined]
    assert "1 with errors" in page.inner_text("#predict-status")  # type: ignore[attr-defined]


def test_dropped_files_are_classified(page: object, server: kit.LiveServer) -> None:
    page.goto(server.url + "/")  # type: ignore[attr-defined]
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")  # type: ignore[attr-defined]
    clip = (EXAMPLES / "flute.wav").read_bytes()
    transfer = page.evaluate_handle(  # type: ignore[attr-defined]
        """(bytes) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "dropped.wav", { type: "audio/wav" }));
            return transfer;
        }""",
        list(clip),
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})  # type: ignore[attr-defined]
    assert "dropped.wav" in page.inner_text("#chosen")  # type: ignore[attr-defined]
    page.click("#classify")  # type: ignore[attr-defined]
    page.wait_for_selector("article.result[data-file='dropped.wav']")  # type: ignore[attr-defined]
    answer = api_predict(server, [("dropped.wav", clip)])
    shown = page.locator("article.result[data-file='dropped.wav'] .chip").evaluate_all(  # type: ignore[attr-defined]
        "els => els.map(e => e.dataset.code)"
    )
    assert shown == [code for code, on in answer["predictions"]["dropped.wav"].items() if on]


def test_a_microphone_recording_is_sent_as_wav(page: object, server: kit.LiveServer) -> None:
    page.goto(server.url + "/")  # type: ignore[attr-defined]
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")  # type: ignore[attr-defined]
    page.click("#record")  # type: ignore[attr-defined]
    page.wait_for_selector("#record[aria-pressed='true']")  # type: ignore[attr-defined]
    status = page.locator("#record-status", has_text=re.compile(r"Recording… [1-9]\d*\.\d s"))  # type: ignore[attr-defined]
    status.wait_for()  # at least 1 s of the synthetic microphone captured
    page.click("#record")  # type: ignore[attr-defined]
    page.wait_for_selector("#record[aria-pressed='false']")  # type: ignore[attr-defined]
    assert page.inner_text("#record-status").startswith("Recorded ")  # type: ignore[attr-defined]
    page.click("#classify")  # type: ignore[attr-defined]
    card = page.locator("#results article.result").first  # type: ignore[attr-defined]
    card.wait_for()
    assert card.get_attribute("data-file").startswith("recording-")
    assert "error" not in card.get_attribute("class").split()  # the server decoded the page's WAV
    assert card.locator(".bar").count() == 11


def test_keyboard_only_reaches_and_submits_the_form(page: object, server: kit.LiveServer) -> None:
    page.goto(server.url + "/")  # type: ignore[attr-defined]
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")  # type: ignore[attr-defined]
    reached = []
    for _ in range(25):
        page.keyboard.press("Tab")  # type: ignore[attr-defined]
        reached.append(page.evaluate("document.activeElement.id"))  # type: ignore[attr-defined]
    for control in ["model", "files", "threshold", "classify", "dataset-type", "dataset-path", "score"]:
        assert control in reached, reached
    page.focus("#classify")  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # no file yet: the page says what to do and moves focus to the file input
    assert "at least one audio file" in page.inner_text("#predict-status")  # type: ignore[attr-defined]
    assert page.evaluate("document.activeElement.id") == "files"  # type: ignore[attr-defined]


def test_score_a_dataset_shows_the_api_metrics(page: object, server: kit.LiveServer) -> None:
    page.goto(server.url + "/")  # type: ignore[attr-defined]
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")  # type: ignore[attr-defined]
    page.select_option("#dataset-type", "irmastest")  # type: ignore[attr-defined]
    page.fill("#dataset-path", "examples")  # type: ignore[attr-defined]
    page.press("#dataset-path", "Enter")  # type: ignore[attr-defined]
    page.wait_for_selector("#metrics-table")  # type: ignore[attr-defined]
    answer = httpx.post(
        f"{server.url}/model/test-directory",
        json={
            "model": MODEL,
            "datasets": [{"dataset_type": "irmastest", "dataset_path": "examples"}],
            "add_instrument_metrics": True,
        },
        timeout=60,
    ).json()
    for key in ["n_files", "f1_micro", "f1_macro", "lrap"]:
        value = answer["metrics"][key]
        shown = page.inner_text(f"#metrics-table tr[data-metric='{key}'] td")  # type: ignore[attr-defined]
        assert shown == (str(value) if isinstance(value, int) else f"{value:.3f}")
    rows = page.locator("table.instruments tbody tr")  # type: ignore[attr-defined]
    assert rows.count() == len(answer["instrument_metrics"])
    f1_pia = answer["instrument_metrics"]["pia"]["f1"]
    width = page.locator("table.instruments tr[data-code='pia'] .fill").evaluate("e => e.style.width")  # type: ignore[attr-defined]
    assert percent(width) == pytest.approx(100 * f1_pia, abs=0.05)


def test_a_path_outside_the_data_root_is_shown_as_the_api_error(page: object, server: kit.LiveServer) -> None:
    page.goto(server.url + "/")  # type: ignore[attr-defined]
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")  # type: ignore[attr-defined]
    page.fill("#dataset-path", "../outside")  # type: ignore[attr-defined]
    page.click("#score")  # type: ignore[attr-defined]
    page.wait_for_selector("#score-results .error")  # type: ignore[attr-defined]
    text = page.inner_text("#score-results .error")  # type: ignore[attr-defined]
    assert text.startswith("HTTP 403: path '../outside' is outside the data root")


@pytest.mark.parametrize(("path", "rendered"), [("/docs", ".swagger-ui .info .title"), ("/docs/redoc", "h1")])
def test_docs_render_without_network(page: object, server: kit.LiveServer, path: str, rendered: str) -> None:
    page.goto(server.url + path)  # type: ignore[attr-defined]
    page.wait_for_selector(rendered)  # type: ignore[attr-defined]
    assert "lumen-audio" in page.inner_text(rendered)  # type: ignore[attr-defined]
    # the page fixture then asserts that nothing was requested from another host
