"""The web page in a real browser: headless Chromium from Debian's `chromium` package, driven by
Playwright pointed at that executable (never `playwright install`: no browser download here).

A live uvicorn server on loopback serves two tiny runs (a text GPT and a class-conditional image
VAE) behind an API key. The browser opens the page, is refused until the key is entered, then
generates an image (twice with the same seed: identical), shows a refused request's message, and
generates a streamed text (tokens appended as they arrive), and never asks any other host for anything (the page works offline).
Set GENFORGE_SCREENSHOT=path to save a screenshot of the image result. docs/serve-page.png was
made by hand the same way, from a `vae-digits model.conditional=true train.max_steps=400` run.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip("Debian's chromium is not installed (/usr/bin/chromium); `apt-get install chromium` "
                "(.ci/run does) to run the browser test", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install 'genforge[dev]'")
pytest.importorskip("fastapi", reason="FastAPI is not installed: pip install 'genforge[serve]'")
pytest.importorskip("uvicorn", reason="uvicorn is not installed: pip install 'genforge[serve]'")
pytest.importorskip("PIL", reason="pillow is not installed: pip install 'genforge[images]'")

from genforge.cli import main  # noqa: E402

KEY = "page-test-key"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 60_000  # generous: two shared CPU cores


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A text GPT (with eval.json), a class-conditional image VAE and, with RDKit, a molecule GPT,
    each trained for a few steps. Module-scoped, so it sets up before conftest's per-test cache:
    it isolates the data cache itself."""
    root = tmp_path_factory.mktemp("page-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENFORGE_CACHE", str(root / "cache"))
        mp.delenv("GENFORGE_DATA", raising=False)
        return _train_runs(root)


def _train_runs(root: Path) -> list[Path]:
    corpus = root / "c.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 80)
    assert main(["train", "gpt-demo", f"data.name={corpus}", "model.n_layer=1", "model.n_head=2",
                 "model.n_embd=16", "model.block_size=16", "train.batch_size=4", "train.max_steps=4",
                 "train.eval_every=4", "--run-dir", str(root / "poem"), "--no-progress"]) == 0
    assert main(["train", "vae-digits", "model.conditional=true", "model.latent_dim=4", "model.channels=[8, 8]",
                 "model.hidden=32", "train.batch_size=16", "train.max_steps=4", "train.eval_every=4",
                 "--run-dir", str(root / "digits"), "--no-progress"]) == 0
    assert main(["eval", str(root / "poem"), "--max-batches", "1"]) == 0  # eval.json: the Report tab's numbers
    runs = [root / "poem", root / "digits"]
    try:
        import rdkit  # noqa: F401  (molecule drawings)
    except ImportError:
        return runs
    # Small carbon chains: greedy decoding gives valid SMILES after a few steps, so drawings appear.
    smi = root / "m.smi"
    smi.write_text("\n".join(["CCO", "CCC", "CCCC", "CCN", "CCCO", "CCCCO"] * 10) + "\n")
    assert main(["train", "gpt-demo", f"data.name={smi}", "data.val_fraction=0.1", "model.n_layer=1",
                 "model.n_head=2", "model.n_embd=16", "model.block_size=12", "train.batch_size=8",
                 "train.max_steps=30", "train.lr=1e-2", "train.warmup_steps=2", "train.eval_every=30",
                 "--run-dir", str(root / "mol"), "--no-progress"]) == 0
    return [*runs, root / "mol"]


@pytest.fixture(scope="module")
def server(runs):
    """The app under uvicorn in a thread, on a loopback socket bound here (so no port race)."""
    import uvicorn

    from genforge.serve.app import create_app
    from genforge.serve.engine import load_entries

    with pytest.MonkeyPatch.context() as mp:  # loading may read the data cache, as training did
        mp.setenv("GENFORGE_CACHE", str(runs[0].parent / "cache"))
        app = create_app(load_entries([str(r) for r in runs], device="cpu"), api_key=KEY)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    uv.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


def png_of(src: str):
    """The decoded image behind an <img>'s data: URL (fails unless it is a valid PNG)."""
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    data = base64.b64decode(src[len(prefix):], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def open_page(server, browser, runs):
    """The page, opened and given the key; returns it with the list of foreign requests it made
    and the Authorization headers of its sample requests."""
    page = browser.new_page(viewport={"width": 1200, "height": 820})
    page.set_default_timeout(TIMEOUT_MS)
    foreign: list[str] = []
    page.on("request", lambda r: None if r.url.startswith((server, "data:", "blob:")) else foreign.append(r.url))
    bearer: list[str | None] = []
    page.on("request", lambda r: bearer.append(r.headers.get("authorization")) if "/v1/samples" in r.url else None)

    page.goto(server)
    # Without the key the API refuses, and the page shows the server's JSON message.
    page.wait_for_selector("#error:not([hidden])")
    assert "API key" in page.inner_text("#error")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function(f"document.querySelectorAll('#model option').length === {len(runs)}")
    assert page.is_hidden("#error")
    assert page.evaluate("sessionStorage.getItem('genforge.apiKey')") == KEY
    return page, foreign, bearer


def test_page_generates_an_image_and_a_streamed_text(server, browser, runs):
    page, foreign, bearer = open_page(server, browser, runs)

    # Image: the form comes from the run's options (num_samples bounded, a class select).
    page.select_option("#model", "digits")
    assert page.is_visible("#class-row") and page.is_hidden("#prompt-row")
    assert page.get_attribute("#options input[name=num_samples]", "max") == "64"
    page.select_option("#class-label", index=1)  # the first class
    page.fill("#options input[name=num_samples]", "4")
    page.fill("#seed", "7")
    page.click("#generate")
    page.wait_for_selector("#output img.grid")
    first = page.get_attribute("#output img.grid", "src")
    assert png_of(first).size[0] > 0
    assert "seed 7" in page.inner_text("#status")
    # What the form said is what the server used (a reloaded form once dropped these silently).
    resolved = page.inner_text("#resolved")
    assert "num_samples=4" in resolved and "class_label=0" in resolved, resolved
    assert page.get_attribute("#download", "download") == "digits-seed7.png"
    # Each answer says whether it is watermarked (images: the post-hoc mark's count, or why none held
    # it) and carries its provenance record.
    mark = page.inner_text("#watermark-status")
    assert (mark.startswith("watermarked (posthoc, key fingerprint ") and "post-hoc mark on " in mark) \
        or "cannot hold the post-hoc mark" in mark, mark
    assert '"seed": 7' in page.eval_on_selector("#provenance pre", "e => e.textContent")
    if os.environ.get("GENFORGE_SCREENSHOT"):
        page.screenshot(path=os.environ["GENFORGE_SCREENSHOT"])
    # "Same seed again" re-sends the request with its seed: the same image, byte for byte.
    page.fill("#seed", "")
    page.evaluate("document.querySelector('#output').replaceChildren()")
    page.click("#again")
    page.wait_for_selector("#output img.grid")
    assert page.get_attribute("#output img.grid", "src") == first

    # Text: streamed; count the separate appends to the sample's text as they arrive.
    page.select_option("#model", "poem")
    assert page.is_visible("#prompt-row") and page.is_hidden("#class-row")
    page.fill("#prompt", "to be")
    # A request the server refuses: its one-line JSON message is shown, nothing else.
    page.fill("#options input[name=top_p]", "5")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error") == "top-p must be in (0, 1], got 5.0"
    page.fill("#options input[name=top_p]", "")
    page.fill("#options input[name=max_new_tokens]", "30")
    page.fill("#seed", "3")
    page.evaluate("""() => {
        window.appends = 0;
        new MutationObserver((records) => {
            for (const r of records) if (r.target.closest && r.target.closest('.generated')) window.appends++;
        }).observe(document.querySelector('#output'), {childList: true, subtree: true, characterData: true});
    }""")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').textContent.includes('seed 3')")
    generated = page.inner_text("#output pre.sample .generated")
    assert len(generated) > 0
    assert page.inner_text("#output pre.sample .prompt") == "to be"
    assert page.evaluate("window.appends") > 1, "the text arrived in one piece, not streamed"
    assert "max_new_tokens=30" in page.inner_text("#resolved")
    assert page.is_hidden("#error")  # the earlier refusal's message is gone
    assert page.get_attribute("#download", "download") == "poem-seed3.txt"
    # The text is watermarked by default, and the page says so with the key's fingerprint (never the key).
    mark = page.inner_text("#watermark-status")
    assert mark.startswith("watermarked (kirchenbauer-2023, key fingerprint ") and "delta 2" in mark, mark
    card = page.eval_on_selector("#model-card pre", "e => e.textContent")  # the run's README.md, folded
    assert card.startswith("---") and "gpt" in card, card[:200]

    # Report tab: the loaded runs side by side, with the GPT's eval.json numbers (the VAE has none).
    page.click("#tab-report")
    page.wait_for_selector("#report table, #report iframe")
    if page.query_selector("#report table"):
        assert [h.inner_text() for h in page.query_selector_all("#report thead th")][1:] == [r.name for r in runs]
        rows = {r.query_selector("th").inner_text(): [c.inner_text() for c in r.query_selector_all("td")]
                for r in page.query_selector_all("#report tbody tr")}
        assert rows["family"][:2] == ["gpt", "vae"]
        assert float(rows["val_loss"][0]) > 0 and rows["val_loss"][1] == "–", rows

    assert all(b == f"Bearer {KEY}" for b in bearer) and len(bearer) == 4
    assert foreign == [], f"the page fetched from other hosts: {foreign}"
    page.close()


def test_page_draws_molecules_with_their_smiles(server, browser, runs):
    if not any(r.name == "mol" for r in runs):
        pytest.skip("RDKit is not installed: no molecule run (pip install 'genforge[molecules]')")
    page, foreign, _ = open_page(server, browser, runs)
    page.select_option("#model", "mol")
    assert page.is_hidden("#prompt-row") and page.is_hidden("#class-row")
    page.fill("#options input[name=temperature]", "0")  # greedy: the chain the run learned
    page.fill("#options input[name=num_samples]", "3")
    page.click("#generate")
    page.wait_for_selector("#output .molecules figure")
    figures = page.query_selector_all("#output .molecules figure")
    assert len(figures) == 3
    for figure in figures:
        smiles = figure.query_selector("figcaption").inner_text()
        assert smiles and set(smiles) <= set("CNO()=") and "invalid" not in smiles, smiles
        src = figure.query_selector("img").get_attribute("src")
        assert src.startswith("data:image/svg+xml") and "%3Csvg" in src  # the drawing, as an image
    assert page.get_attribute("#download", "download").endswith(".smi")
    assert foreign == []
    page.close()
