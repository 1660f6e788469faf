"""The playground at `/`, driven in headless Chromium (Debian's, through Playwright) against the
session app over HTTPS: forms built from the endpoints' schemas, the API key, submission through
the queue with a live progress bar, and each modality's result (image, text, audio, 3D viewer,
video); personalization only as far as the server's 422 (a real training run takes minutes).

Screenshots land in `test-artifacts/playground/`. The video test comes last and wakes the
scale-to-zero video deployment: `test_fuzz` and `test_modalities_http`, which need it at zero
replicas, run before this module (alphabetical order); later modules only use it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import API_KEY, ROOT

CHROMIUM = os.environ.get("GENSERVE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Playwright adds --headless itself; headless Chromium renders WebGL (the 3D viewer) in
# software (SwiftShader), so no GPU is needed. Nothing here may reach beyond loopback.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts" / "playground"
RESULT_MS = 90_000        # a job on the 2-core box, queue included
VIDEO_MS = 240_000        # the video deployment scales up from zero first
ENDPOINTS = ["sdxl", "chat", "tts", "image-to-video", "text-to-video", "text-to-3d",
             "personalization"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: run `make chromium`")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url, request):
    """A fresh tab (own storage) on the playground; fails the test on a script error or a
    Content-Security-Policy violation, and leaves a screenshot either way."""
    context = browser.new_context(ignore_https_errors=True, base_url=app_url,
                                  viewport={"width": 1280, "height": 900})
    context.set_default_timeout(RESULT_MS)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    tab.on("console", lambda m: problems.append(f"console: {m.text}")
           if m.type == "error" and "Content Security Policy" in m.text else None)
    yield tab
    tab.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert not problems, problems


def open_endpoint(page, name: str) -> None:
    """Load the page, give it the key, and pick the endpoint."""
    page.goto(f"/#{name}")
    page.fill("#api-key", API_KEY)
    page.click("#key-save")
    page.wait_for_selector(f'#workspace[data-endpoint="{name}"]:not([hidden])')


def submit_and_wait(page, timeout_ms: int = RESULT_MS) -> None:
    page.click("#submit")
    page.wait_for_selector('#progress[data-state="done"], #progress[data-state="failed"]',
                           timeout=timeout_ms)
    assert page.get_attribute("#progress", "data-state") == "done", page.text_content("#error")
    assert page.eval_on_selector("#progress", "p => p.value") == 100


def test_page_is_public_and_allows_only_its_own_origin(anon, client):
    r = anon.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert API_KEY not in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    assert not re.search(r"https?:|\*", csp), csp  # no other origin, no wildcard
    assert anon.get("/playground/static/app.js").status_code == 200
    viewer = anon.get("/playground/static/vendor/three/build/three.module.js")
    assert viewer.status_code == 200, "three.js is not vendored: run `make playground`"
    # Percent-encoded, so the client does not fold the dots away before the server sees them.
    for bad in ("%2E%2E/routes/playground.py", "__init__.py", "..%2F..%2F..%2Fpyproject.toml"):
        assert anon.get(f"/playground/static/{bad}").status_code == 404, bad
    # The catalog is API: it needs the key.
    assert anon.get("/playground/endpoints").status_code == 401
    catalog = client.get("/playground/endpoints").json()["endpoints"]
    assert [e["name"] for e in catalog] == ENDPOINTS
    assert all(e["deployed"] for e in catalog)
    # Not API: the playground stays out of the OpenAPI document (and the fuzzer's list).
    assert not any(p == "/" or p.startswith("/playground")
                   for p in anon.get("/openapi.json").json()["paths"])


def test_wrong_key_is_refused_and_the_right_one_kept(page):
    page.goto("/")
    page.fill("#api-key", "not-the-key")
    page.click("#key-save")
    page.wait_for_selector('#key-status[data-state="error"]')
    assert "401" in page.text_content("#key-status")
    page.fill("#api-key", API_KEY)
    page.click("#key-save")
    page.wait_for_selector('#key-status[data-state="ok"]')
    assert page.locator("#endpoints button").all_inner_texts() == ENDPOINTS
    assert page.input_value("#api-key") == ""  # not left in the field
    page.reload()  # kept for the tab (sessionStorage): no second prompt
    page.wait_for_selector('#workspace[data-endpoint="sdxl"]:not([hidden])')
    page.evaluate("location.hash = 'tts'")  # a link to an endpoint, without a reload
    page.wait_for_selector('#workspace[data-endpoint="tts"]:not([hidden])')


def test_sdxl_form_progress_and_image(page):
    open_endpoint(page, "sdxl")
    # The form is the schema: bounds, step, default, enum, description.
    height = page.locator("#f-sdxl-height")
    assert [height.get_attribute(a) for a in ("min", "max", "step", "value")] == \
        ["64", "2048", "8", "1024"]
    assert "DDIM" in page.locator("#f-sdxl-scheduler option").all_inner_texts()
    assert page.input_value("#f-sdxl-scheduler") == "DDIM"
    assert "Denoising steps" in page.text_content('[data-field="num_inference_steps"]')
    assert page.locator("#f-sdxl-response_format").count() == 0  # the queue ignores it

    page.fill("#f-sdxl-prompt", "a cat with a hat")
    page.fill("#f-sdxl-width", "80")
    page.fill("#f-sdxl-height", "64")
    # Enough steps to run for a few seconds: progress lines are logged at most twice a second.
    page.fill("#f-sdxl-num_inference_steps", "40")
    # Record every progress label the page shows while the job runs.
    page.evaluate("""() => { window.labels = [];
        new MutationObserver(() => window.labels.push(
            document.getElementById('progress-label').textContent))
        .observe(document.getElementById('progress-label'), {childList: true}); }""")
    submit_and_wait(page)
    labels = page.evaluate("window.labels")
    assert any(re.fullmatch(r"base: step \d+/40", label) for label in labels), labels
    assert "base: step 40/40" in page.text_content("#logs")

    img = page.locator("#results img")
    page.wait_for_function("() => document.querySelector('#results img')?.complete")
    assert img.get_attribute("src").startswith(f"{page.url.split('/#')[0]}/files/")
    assert img.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [80, 64]


def test_chat_shows_the_reply(page):
    open_endpoint(page, "chat")
    page.fill("#f-chat-prompt", "Hi!")
    page.fill("#f-chat-max_new_tokens", "8")
    submit_and_wait(page)
    page.wait_for_selector("#results .chat-text")
    assert '"finish_reason"' in page.text_content("#raw")


def test_tts_plays_audio(page):
    open_endpoint(page, "tts")
    page.fill("#f-tts-text", "Hello there")
    submit_and_wait(page)
    audio = page.locator("#results audio")
    page.wait_for_function("() => document.querySelector('#results audio')?.readyState >= 1")
    assert audio.evaluate("a => a.duration") > 0
    assert page.locator("#results a.download").get_attribute("download").endswith(".wav")


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_text_to_3d_mesh_in_the_viewer(page, fmt):
    open_endpoint(page, "text-to-3d")
    page.fill("#f-text-to-3d-prompt", "a chair")
    page.fill("#f-text-to-3d-num_inference_steps", "2")
    page.fill("#f-text-to-3d-frame_size", "16")
    page.select_option("#f-text-to-3d-format", fmt)
    submit_and_wait(page)
    viewer = page.locator("#results .mesh-viewer")
    page.wait_for_selector('#results .mesh-viewer:is([data-state="loaded"], [data-state="error"])')
    assert viewer.get_attribute("data-state") == "loaded", viewer.text_content()
    assert viewer.get_attribute("data-format") == fmt
    assert int(viewer.get_attribute("data-vertices")) > 0
    # The mesh is drawn: the canvas has pixels other than the background.
    drawn = viewer.locator("canvas").evaluate("""c => {
        const copy = document.createElement('canvas');
        copy.width = c.width; copy.height = c.height;
        const ctx = copy.getContext('2d');
        ctx.drawImage(c, 0, 0);
        const px = ctx.getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < px.length; i += 4) if (Math.abs(px[i] - 0xf2) > 8) n++;
        return n; }""")
    assert drawn > 100, drawn
    # Orbiting re-renders without errors (the page fixture fails on any).
    box = viewer.locator("canvas").bounding_box()
    page.mouse.move(box["x"] + 200, box["y"] + 150)
    page.mouse.down()
    page.mouse.move(box["x"] + 260, box["y"] + 170, steps=5)
    page.mouse.up()


def test_personalization_form_and_the_servers_422(page):
    open_endpoint(page, "personalization")
    # Required fields first, without a value; the rest behind "Options".
    fields = page.locator("#endpoint-form .field").evaluate_all(
        "rows => rows.map(r => r.dataset.field)")
    assert fields[:2] == ["images_data_url", "photo_class"]
    assert page.input_value("#f-personalization-photo_class") == ""
    assert page.locator("#f-personalization-photo_class option").all_inner_texts()[1:] == \
        ["Man", "Woman", "Person", "Boy", "Girl", "Baby"]
    assert page.locator("#f-personalization-images_data_url-file").count() == 1  # uploads
    assert page.get_attribute("#f-personalization-rank", "max") == "256"
    assert page.text_content("details.options summary").startswith("Options (")

    page.fill("#f-personalization-images_data_url", "https://example.com/photos.zip")
    page.click("#submit")
    page.wait_for_selector('#progress[data-state="failed"]')
    error = page.text_content("#error")
    assert "422" in error and "photo_class" in error and "Field required" in error, error


def test_video_endpoints_play_the_mp4(page, tmp_path):
    """Last: wakes the scale-to-zero video deployment (see the module docstring)."""
    png = tmp_path / "frame.png"
    Image.new("RGB", (64, 64), (200, 80, 40)).save(png)
    small = {"width": "64", "height": "64", "num_frames": "2", "fps": "6",
             "num_inference_steps": "1", "decode_chunk_size": "2"}

    open_endpoint(page, "image-to-video")
    # The field takes URLs, so the picker uploads the file and puts its signed URL there.
    page.set_input_files("#f-image-to-video-image-file", str(png))
    page.wait_for_function(
        "() => document.getElementById('f-image-to-video-image').value.includes('/files/')")
    for name, value in small.items():
        page.fill(f"#f-image-to-video-{name}", value)
    submit_and_wait(page, VIDEO_MS)
    check_video(page)
    page.screenshot(path=str(ARTIFACTS / "image-to-video.png"), full_page=True)

    page.click('#endpoints button[data-endpoint="text-to-video"]')
    page.fill("#f-text-to-video-prompt", "a rocket")
    for name, value in {**small, "image_num_inference_steps": "2"}.items():
        page.fill(f"#f-text-to-video-{name}", value)
    submit_and_wait(page, VIDEO_MS)
    check_video(page)


def check_video(page) -> None:
    page.wait_for_function("() => document.querySelector('#results video')?.readyState >= 1")
    video = page.locator("#results video")
    assert video.evaluate("v => [v.videoWidth, v.videoHeight]") == [64, 64]
    assert video.evaluate("v => v.duration") > 0
    data = page.request.get(video.get_attribute("src")).body()
    assert data[4:8] == b"ftyp"  # an MP4
