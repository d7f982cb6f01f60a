"""The page in a real browser (Debian's Chromium under Playwright, as tests/test_serve_page.py):
a music run plays in an <audio> player beside its piano roll with download links, and a
diffusion run edits a PNG picked with the file picker (shown only for runs that take one)."""

from __future__ import annotations

import base64
import json
import shutil

import pytest
from test_serve_page import TIMEOUT_MS, browser, open_page, png_of, server  # noqa: F401 (fixtures)

from genforge.cli import main

pytest.importorskip("pretty_midi")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny chorale GPT and a tiny class-conditional diffusion model (the fixtures above serve them)."""
    from test_music import TINY, jsb_json

    root = tmp_path_factory.mktemp("page-media")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENFORGE_CACHE", str(root / "cache"))
        mp.delenv("GENFORGE_DATA", raising=False)
        data = jsb_json(root / "tiny.json")
        assert main(["train", "gpt-jsb", "--run-dir", str(root / "chorales"), "--no-progress", f"data.name={data}",
                     *TINY]) == 0
        assert main(["train", "diffusion-digits", "model.channels=[8, 16]", "model.heads=2",
                     "model.sampling_steps=3", "model.conditioning=class", "train.batch_size=8", "train.max_steps=2",
                     "train.eval_every=0", "train.plot=false", "--run-dir", str(root / "edit"), "--no-progress"]) == 0
    return [root / "chorales", root / "edit"]


def test_page_plays_music_and_edits_an_uploaded_png(server, browser, runs, tmp_path):  # noqa: F811
    from PIL import Image

    page, foreign, _ = open_page(server, browser, runs)
    page.set_default_timeout(TIMEOUT_MS)
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith("/v1/samples") else None)

    page.select_option("#model", "chorales")
    assert page.is_hidden("#init-row") and page.is_hidden("#prompt-row")
    page.fill("#options input[name=steps]", "4")
    page.fill("#seed", "2")
    page.click("#generate")
    page.wait_for_selector("#output .pieces figure")
    png_of(page.get_attribute("#output img.roll", "src"))
    links = [a.get_attribute("download") for a in page.query_selector_all("#output .pieces a")]
    assert "chorales-seed2-1.mid" in links and "chorales-seed2-1.png" in links
    if shutil.which("fluidsynth"):
        assert page.get_attribute("#output audio", "src").startswith("blob:") and "chorales-seed2-1.wav" in links
        assert page.evaluate("document.querySelector('#output audio').canPlayType('audio/wav')") != ""
    else:
        assert "No audio" in page.inner_text("#output")

    # Editing: the picker appears for the diffusion run; the file goes up as base64 PNG bytes.
    page.select_option("#model", "edit")
    assert page.is_visible("#init-row")
    picture = tmp_path / "start.png"
    Image.new("L", (8, 8), 200).save(picture)
    page.set_input_files("#init-image", str(picture))
    page.fill("#options input[name=strength]", "0")  # nothing re-noised: the picture comes back
    page.fill("#options input[name=num_samples]", "1")
    page.fill("#seed", "1")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.includes('seed 1')")
    assert page.is_hidden("#error"), page.inner_text("#error")
    assert bodies[-1]["init_image"] == base64.b64encode(picture.read_bytes()).decode()
    assert "init_image=sha256:" in page.inner_text("#resolved")
    # the picture comes back, up to the post-hoc watermark's few gray levels (on by default)
    pixels = png_of(page.get_attribute("#output img.grid", "src")).convert("L").tobytes()
    assert any(190 <= v <= 210 for v in pixels), sorted(set(pixels))
    page.select_option("#model", "chorales")  # another model: the picker and its file are gone
    assert page.is_hidden("#init-row")
    assert foreign == [], f"the page fetched from other hosts: {foreign}"
    page.close()
