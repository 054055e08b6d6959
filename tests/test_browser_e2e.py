"""End-to-end test in a real browser: the app started as the README says, driven by Playwright.

The server is started with ``bash scripts/run.sh --port <free port>`` (the README's command) on
127.0.0.1, and Debian's chromium (``/usr/bin/chromium``, headless) loads the example dataset,
annotates it, asks a question, downloads the annotated ``.h5ad`` and visits every page.
Screenshots of every page go to ``test-artifacts/screenshots/<nn>_<page>.png``.

The model is the installed demo model when ``assets/models/demo/c2s.json`` exists, else a tiny
random model whose card lists every task (so its answers are noise: the test checks behaviour).
Without chromium or Playwright the test skips, except in CI (``CI=true``), where it fails:
``bash scripts/ensure_chromium.sh`` installs chromium.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import anndata as ad
import pytest

from webapp.launch import wait_until_healthy

pytest_plugins = ["tiny_checkpoints", "webapp_helpers"]

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
DEMO_CARD = REPO / "assets" / "models" / "demo" / "c2s.json"
# The seven pages of the issue, in menu order.
PAGE_TITLES = ["Upload data", "Annotate", "Caption clusters", "Dataset summary",
               "Ask questions", "Simulate perturbations", "Spatial neighborhoods"]
# scripts/run.sh first checks the environment (and installs it when requirements changed).
SERVER_START_S = 300
# Loading the example, annotating 700 cells and answering run on a shared CPU.
STEP_MS = 240_000
QUESTION = "Which cell types are in this sample?"


def _require_browser():
    """Playwright's sync API, or a skip (a failure in CI) naming the missing piece."""
    missing = ""
    try:
        from playwright import sync_api
    except ImportError:
        missing = "Playwright is not installed. Fix: pip install playwright"
    if not missing and not CHROMIUM.exists():
        missing = (f"Debian's chromium is not installed at {CHROMIUM}. "
                   "Fix: bash scripts/ensure_chromium.sh")
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the browser test must run in CI: {missing}")
        pytest.skip(missing)
    return sync_api


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """Stop the server started by this test: run.sh's process group (c2s app and streamlit)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    try:
        wait_until_healthy(url, process, SERVER_START_S)
    except RuntimeError as error:
        pytest.fail(f"scripts/run.sh: {error}:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory, all_tasks_model_dir):
    """The app, started exactly as the README says, on a free port of 127.0.0.1."""
    _require_browser()
    folder = tmp_path_factory.mktemp("browser-e2e")
    env = {**os.environ, "C2S_WORKSPACE_DIR": str(folder / "workspaces"),
           "C2S_CACHE_DIR": str(folder / "cache")}
    if DEMO_CARD.exists():
        env.pop("C2S_DEMO_MODEL", None)
    else:
        env["C2S_DEMO_MODEL"] = str(all_tasks_model_dir)
    port = _free_port()
    log = folder / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(["bash", "scripts/run.sh", "--port", str(port)], cwd=REPO,
                                   env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        yield url
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def page(server):
    """A chromium tab on the app, with the example dataset loaded from the Upload page."""
    sync_api = _require_browser()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                      accept_downloads=True)
        context.set_default_timeout(STEP_MS)
        sync_api.expect.set_options(timeout=STEP_MS)
        tab = context.new_page()
        tab.goto(server)
        tab.get_by_role("button", name="Load example dataset").click()
        sync_api.expect(tab.get_by_text("Ready: the dataset is prepared for cell sentences.")
                        ).to_be_visible()
        yield tab
        context.close()
        browser.close()


def _expect():
    return _require_browser().expect


def _settle(tab) -> None:
    """Wait until Streamlit has finished the run started by the last action.

    The run may start a moment after the click, so first give its 'running' icon a chance to
    appear, then wait for it to go.
    """
    running = tab.get_by_test_id("stStatusWidgetRunningIcon")
    with contextlib.suppress(AssertionError):  # already finished, or too quick to see
        _expect()(running).to_have_count(1, timeout=2_000)
    _expect()(running).to_have_count(0)


def _open(tab, title: str) -> None:
    tab.get_by_test_id("stSidebarNav").get_by_role("link", name=title, exact=True).click()
    _settle(tab)


def _assert_no_exception(tab, where: str) -> None:
    assert tab.get_by_test_id("stException").count() == 0, f"{where} shows an exception"
    assert "Traceback" not in tab.get_by_role("main").inner_text(), \
        f"{where} shows a traceback"


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


def test_annotate_ask_and_download_the_example(page, tmp_path, pbmc68k):
    expect = _expect()
    _open(page, "Annotate")
    expect(page.get_by_role("heading", name="Annotate cell types")).to_be_visible()
    # Two typed candidates and big batches keep 700 cells quick on a busy CPU.
    page.get_by_text("Typed list", exact=True).click()
    page.get_by_label("Candidate cell types (one per line or comma-separated)").fill(
        "T cell, B cell")
    page.get_by_text("Advanced", exact=True).click()
    page.get_by_label("Batch size").fill("64")
    page.get_by_label("Batch size").press("Enter")
    page.get_by_role("button", name="Annotate cells").click()
    expect(page.get_by_text(re.compile(r"^Annotated 700 cells in "))).to_be_visible()
    _settle(page)

    # The UMAP is drawn: a plotly figure with points (svg) or a WebGL canvas.
    umap = page.locator(".st-key-c2s_ann_umap").get_by_test_id("stPlotlyChart")
    expect(umap.locator(".js-plotly-plot")).to_be_visible()
    expect(umap.locator("path.point, canvas").first).to_be_attached()
    # The cluster table (the last table on the page) is filled: a row per louvain cluster.
    clusters = page.get_by_test_id("stDataFrame").last
    expect(clusters).to_be_visible()
    expect(clusters.locator("[aria-rowcount]").first).to_be_attached()
    rows = int(clusters.locator("[aria-rowcount]").first.get_attribute("aria-rowcount"))
    assert rows - 1 == pbmc68k.obs["louvain"].nunique()  # aria-rowcount counts the header

    with page.expect_download() as download:
        page.get_by_test_id("stDownloadButton").filter(
            has_text="Annotated data (.h5ad, with provenance)").locator("button").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name.endswith("_annotated.h5ad")
    annotated = ad.read_h5ad(saved)
    assert annotated.n_obs == 700
    assert set(annotated.obs["c2s_cell_type"].astype(str)) <= {"T cell", "B cell"}
    assert annotated.obs["c2s_confidence"].between(0.5, 1.0).all()
    assert list(annotated.uns["c2s"]["annotate"]["candidates"]) == ["T cell", "B cell"]
    _assert_no_exception(page, "Annotate")

    _open(page, "Ask questions")
    expect(page.get_by_role("heading", name="Ask questions")).to_be_visible()
    chat = page.get_by_test_id("stChatInput").locator("textarea")
    chat.fill(QUESTION)
    chat.press("Enter")
    # The answer bubble comes with its context: "Context used: whole dataset, N cells, ...".
    expect(page.get_by_text(re.compile(r"^Context used: "))).to_be_visible()
    messages = page.get_by_test_id("stChatMessage")
    expect(messages).to_have_count(2)
    assert QUESTION in messages.nth(0).inner_text()
    _assert_no_exception(page, "Ask questions")


def _nav_titles(tab) -> list[str]:
    """The page titles in the sidebar menu (each link's text is its icon's name, then the title)."""
    links = tab.get_by_test_id("stSidebarNav").get_by_role("link").all_inner_texts()
    return [text.split("\n")[-1].strip() for text in links]


def test_every_page_renders_without_an_exception(page):
    expect = _expect()
    assert _nav_titles(page) == PAGE_TITLES
    for number, title in enumerate(PAGE_TITLES, start=1):
        _open(page, title)
        expect(page.get_by_role("main").get_by_role("heading", level=1)).to_be_visible()
        _assert_no_exception(page, title)
        page.screenshot(path=str(SCREENSHOTS / f"{number:02d}_{_slug(title)}.png"),
                        full_page=True)
