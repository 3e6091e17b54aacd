"""The demo page: the functions behind it on the bundled trained pipeline, and the page itself served by
``selftok demo`` on localhost and driven by a real headless Chromium (Debian's, through Playwright)."""

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import PIL.Image
import pytest
import torch

from selftok_hf.apps.demo import (
    coarse_to_fine,
    grid_table,
    prefix_lengths,
    reconstruct,
    token_grid,
    zoom,
)
from selftok_hf.assets import bundled_images, embedded_pipeline
from selftok_hf.evaluation.metrics import psnr

pytestmark = pytest.mark.usefixtures("single_thread")

PHOTO = os.path.join(os.path.dirname(sys.modules["selftok_hf"].__file__), "assets", "coffee.jpg")


@pytest.fixture(scope="module")
def pipe():
    pipe = embedded_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.round(images * 255).astype(np.uint8)


def test_token_grid_prefixes_and_zoom():
    assert token_grid(torch.arange(32)) == [list(range(r * 8, r * 8 + 8)) for r in range(4)]
    assert np.asarray(token_grid(torch.arange(512))).shape == (16, 32)
    assert token_grid(torch.arange(7)) == [list(range(7))]
    table = grid_table(torch.arange(32))
    assert table["headers"] == ["positions", *(f"+{j}" for j in range(8))] and table["data"][1] == ["8-15", *range(8, 16)]
    assert prefix_lengths(32) == [1, 2, 4, 8, 16, 32] and prefix_lengths(48) == [1, 2, 4, 8, 16, 32, 48]
    assert zoom(PIL.Image.new("RGB", (32, 32))).size == (256, 256) and zoom(PIL.Image.new("RGB", (300, 200))).size == (300, 200)


def test_reconstruct_and_coarse_to_fine_are_the_pipeline(pipe):
    photo = bundled_images()["coffee.jpg"]
    pixel_values = pipe.image_processor([photo], return_tensors="pt").pixel_values
    ids = pipe.encode(pixel_values)

    model_input, token_ids, reconstruction, value = reconstruct(pipe, photo, num_inference_steps=4, prefix_length=8, seed=3)
    torch.testing.assert_close(token_ids, ids[0], rtol=0, atol=0)
    np.testing.assert_array_equal(np.asarray(model_input), to_uint8(((pixel_values[0] + 1) / 2).permute(1, 2, 0).numpy()))
    expected = pipe(ids, num_inference_steps=4, prefix_length=8, generator=torch.Generator().manual_seed(3), output_type="pt").images
    np.testing.assert_array_equal(np.asarray(reconstruction), to_uint8(expected[0].permute(1, 2, 0).numpy()))
    assert value == pytest.approx(psnr(expected, (pixel_values + 1) / 2).item(), abs=1e-5)

    # The renderer decodes from all tokens: the prefix does not apply to it.
    _, _, rendered, _ = reconstruct(pipe, photo, use_renderer=True, prefix_length=8)
    np.testing.assert_array_equal(np.asarray(rendered), to_uint8(pipe(ids, use_renderer=True, output_type="np").images[0]))

    strip = coarse_to_fine(pipe, ids[0], num_inference_steps=4, seed=3)
    assert [caption for _, caption in strip] == ["first 1 token", "first 2 tokens", "first 4 tokens", "first 8 tokens", "first 16 tokens", "first 32 tokens"]
    np.testing.assert_array_equal(np.asarray(strip[3][0]), np.asarray(reconstruction))  # the same noise, the same 8 tokens
    coarse, fine = (np.asarray(image, dtype=np.float64) for image, _ in (strip[0], strip[-1]))
    assert np.abs(coarse - fine).mean() > 1  # the tokens after the first change the image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_demo_page_in_a_real_browser(pipe, tmp_path):
    """``selftok demo --tiny`` in a subprocess; headless Chromium uploads the sample photo and reads back the
    reconstruction, the PSNR, the token grid and the coarse-to-fine strip, then generates an image from a prompt."""
    # Skipped where Gradio, Playwright or Chromium is missing, except where CI installed them (.ci/run).
    missing = pytest.fail if os.environ.get("SELFTOK_REQUIRE_BROWSER_TESTS") == "1" else pytest.skip
    try:
        import gradio  # noqa: F401
        from playwright import sync_api
    except ImportError as error:
        missing(f"the browser test needs pip install 'selftok-hf[demo]' playwright: {error}")
    chromium = shutil.which("chromium")
    if chromium is None:
        missing("the browser test needs Debian's chromium (apt-get install chromium)")

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "selftok_hf.apps.cli", "demo", "--tiny", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the demo server did not answer within 180 s"
                time.sleep(0.5)

        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url, wait_until="load")
            page.locator("#input-image input[type=file]").set_input_files(PHOTO)  # uploading runs the reconstruction
            image = page.locator("#reconstruction img")
            image.wait_for(state="visible", timeout=120_000)
            shown = PIL.Image.open(io.BytesIO(page.request.get(image.get_attribute("src")).body()))
            page.locator("#coarse-to-fine img").nth(5).wait_for(state="visible", timeout=120_000)
            strip_images = page.locator("#coarse-to-fine img").count()
            summary = page.locator("#psnr").inner_text()
            grid_text = page.locator("#token-grid").inner_text()

            page.get_by_role("tab", name="Text → image").click()
            page.locator("#generate").click()
            generated = page.locator("#generated img")
            generated.wait_for(state="visible", timeout=120_000)
            generated_size = PIL.Image.open(io.BytesIO(page.request.get(generated.get_attribute("src")).body())).size
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)

    # What the page shows is what the API computes (50 steps, all 32 tokens, seed 0), enlarged 8x.
    _, ids, reconstruction, value = reconstruct(pipe, PIL.Image.open(PHOTO))
    assert shown.size == (256, 256)
    pixels = np.asarray(shown.convert("RGB"), dtype=np.int16)
    assert pixels.std() > 10  # not blank
    assert np.abs(pixels - np.asarray(zoom(reconstruction), dtype=np.int16)).max() <= 1
    assert f"PSNR {value:.2f} dB" in summary and "50-step decoder, first 32 of 32 tokens" in summary
    assert [int(cell) for cell in re.findall(r"^\s*(\d+)\s*$", grid_text, re.MULTILINE)] == ids.tolist()
    assert strip_images == 6  # prefixes 1, 2, 4, 8, 16, 32
    assert generated_size == (256, 256)  # the tiny VLM's 64-px image, enlarged 4x
