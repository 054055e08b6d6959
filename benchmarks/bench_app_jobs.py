"""Annotation speed in the web app against the engine alone, on the same model and cells.

A page's long work runs in a background thread while a progress panel reruns twice a second.
Streamlit by default calls ``gc.collect()`` after every script run; with a model loaded that
takes ~0.4 s holding the GIL, and it starved the job thread (the app annotated ~2 cells/s where
the engine alone does ~75). ``c2s app`` turns that collection off (``--runner.postScriptGC=false``).
This benchmark keeps the regression visible. In one run it measures:

1. ``engine``: ``annotate()`` in this process on the example dataset (700 cells), candidates
   "T cell, B cell", batch 64, the demo model, no cache;
2. ``app``: the same annotation started from the Annotate page in Debian's chromium (Playwright),
   from the click until the page reports the result, on a server started as ``c2s app`` does;
3. ``app_streamlit_default_gc`` (unless ``--skip-default-gc``): the same with Streamlit's
   post-run ``gc.collect()`` on, as Streamlit does by default (``--runner.postScriptGC=true``).

Run on demand (~2 min, plus ~6 min for the default-GC server on a 2-core CPU)::

    OMP_NUM_THREADS=2 python benchmarks/bench_app_jobs.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench_sentences import REPO, machine

from webapp.launch import streamlit_command, wait_until_healthy

CHROMIUM = "/usr/bin/chromium"
LABELS = "T cell, B cell"
BATCH = 64
GC_FLAG = "--runner.postScriptGC=false"
JOB_LIMIT_S = 900


def engine_run() -> dict:
    """The annotation the page runs, called directly."""
    import scanpy as sc

    from c2s_engine.models import load_model
    from c2s_engine.tasks.annotate import annotate

    adata = sc.datasets.pbmc68k_reduced()
    model = load_model("demo")
    start = time.perf_counter()
    annotate(adata, model, labels=[s.strip() for s in LABELS.split(",")], batch_size=BATCH,
             cache=False)
    seconds = time.perf_counter() - start
    return {"cells": adata.n_obs, "seconds": round(seconds, 2),
            "cells_per_s": round(adata.n_obs / seconds, 1), "precision": model.precision}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(argv: list[str], folder: Path) -> subprocess.Popen:
    env = {**os.environ, "C2S_WORKSPACE_DIR": str(folder / "workspaces"),
           "C2S_CACHE_DIR": str(folder / "cache"), "C2S_EXAMPLE_ON_START": "1"}
    env.pop("C2S_DEMO_MODEL", None)
    with (folder / "server.log").open("wb") as log:  # the server keeps its own copy
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def app_run(post_script_gc: bool) -> dict:
    """Annotate from the browser on a fresh server; seconds from the click to the result."""
    from playwright.sync_api import expect, sync_playwright

    port = _free_port()
    argv = streamlit_command(port=port)
    if post_script_gc:
        # Explicitly on: .streamlit/config.toml (read from the repository root) turns it off too.
        argv[argv.index(GC_FLAG)] = "--runner.postScriptGC=true"
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        server = _serve(argv, Path(tmp))
        try:
            wait_until_healthy(url, server)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                     args=["--no-sandbox", "--disable-gpu"])
                tab = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                tab.set_default_timeout(300_000)
                expect.set_options(timeout=300_000)
                tab.goto(url)
                tab.get_by_role("button", name="Load example dataset").click()
                expect(tab.get_by_text("Ready: the dataset is prepared for cell sentences.")
                       ).to_be_visible()
                tab.get_by_test_id("stSidebarNav").get_by_role("link", name="Annotate",
                                                               exact=True).click()
                tab.get_by_text("Typed list", exact=True).click()
                tab.get_by_label("Candidate cell types (one per line or comma-separated)"
                                 ).fill(LABELS)
                tab.get_by_text("Advanced", exact=True).click()
                tab.get_by_label("Batch size").fill(str(BATCH))
                tab.get_by_label("Batch size").press("Enter")
                start = time.perf_counter()
                tab.get_by_role("button", name="Annotate cells").click()
                done = tab.get_by_text(re.compile(r"^Annotated 700 cells in "))
                expect(done).to_be_visible(timeout=JOB_LIMIT_S * 1000)
                seconds = time.perf_counter() - start
                reported = done.inner_text()
                browser.close()
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    return {"cells": 700, "seconds": round(seconds, 2), "cells_per_s": round(700 / seconds, 1),
            "page_said": reported, "post_script_gc": post_script_gc,
            "command": " ".join(argv[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-default-gc", action="store_true",
                        help="do not measure the server with Streamlit's post-run gc.collect()")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" /
                        "app_jobs.json")
    args = parser.parse_args()
    import torch

    report = {"machine": {**machine(), "torch_threads": torch.get_num_threads()},
              "task": {"dataset": "scanpy pbmc68k_reduced (700 cells)", "labels": LABELS,
                       "batch_size": BATCH, "model": "demo"}}
    report["engine"] = engine_run()
    report["app"] = app_run(post_script_gc=False)
    report["app_vs_engine"] = round(report["app"]["cells_per_s"]
                                    / report["engine"]["cells_per_s"], 3)
    if not args.skip_default_gc:
        report["app_streamlit_default_gc"] = app_run(post_script_gc=True)
        report["default_gc_vs_engine"] = round(
            report["app_streamlit_default_gc"]["cells_per_s"] / report["engine"]["cells_per_s"],
            3)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
