"""The web app's launcher, its session helpers and the Upload page (Streamlit AppTest, no browser)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from c2s_engine.errors import C2SError
from c2s_engine.readers import read
from webapp import launch as launch_module
from webapp.launch import streamlit_command
from webapp.state import (
    DATASET_KEY,
    EXAMPLE_NAME,
    LAST_UPLOAD_KEY,
    WORKDIR_KEY,
    safe_filename,
)

pytest_plugins = ["tiny_checkpoints", "webapp_helpers"]

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "webapp" / "app.py"
# Reading and preparing the 700-cell example takes a few seconds on a busy 2-core machine.
TIMEOUT = 120


@pytest.fixture(autouse=True)
def _tiny_demo_and_private_workspaces(webapp_env):
    """The sidebar loads `demo`: a tiny model here; workspaces go to a temp folder."""


# --- launcher -----------------------------------------------------------------------------------


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(flag.removeprefix("--").split("=", 1) for flag in argv if flag.startswith("--"))


def test_streamlit_command_defaults_are_local_and_safe():
    argv = streamlit_command()
    assert argv[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert Path(argv[4]) == APP
    assert _flags(argv) == {
        "server.address": "127.0.0.1",
        "server.port": "8501",
        "server.maxUploadSize": "2048",
        "server.enableXsrfProtection": "true",
        "server.headless": "true",
        "browser.gatherUsageStats": "false",
        "runner.postScriptGC": "false",
    }


def test_every_server_flag_is_a_streamlit_option():
    # A misspelt flag would make Streamlit refuse to start or, for the GC one, let background
    # jobs crawl again (its default is on, which is why the flag is there).
    from streamlit import config

    options = config.get_config_options(force_reparse=True)
    for name in _flags(streamlit_command()):
        assert name in options, name
    assert options["runner.postScriptGC"].default_val is True


def test_streamlit_command_uses_the_given_host_port_and_upload_limit():
    flags = _flags(streamlit_command(host="0.0.0.0", port=9000, max_upload_mb=512))
    assert flags["server.address"] == "0.0.0.0"
    assert flags["server.port"] == "9000"
    assert flags["server.maxUploadSize"] == "512"
    assert flags["server.enableXsrfProtection"] == "true"


def test_launch_runs_streamlit_from_the_project_root(monkeypatch, capsys):
    calls = []

    def fake_call(argv, cwd):
        calls.append((argv, cwd))
        return 3

    monkeypatch.setattr(launch_module.subprocess, "call", fake_call)
    assert launch_module.launch(host="0.0.0.0", port=8600, max_upload_mb=100) == 3
    assert calls == [(streamlit_command("0.0.0.0", 8600, 100), REPO)]
    # The config file Streamlit reads from the working directory is there.
    assert (calls[0][1] / ".streamlit" / "config.toml").is_file()
    assert "open http://127.0.0.1:8600" in capsys.readouterr().out


def test_streamlit_config_file_has_the_same_safe_defaults():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    flags = _flags(streamlit_command())
    assert config["server"]["address"] == flags["server.address"]
    assert config["server"]["port"] == int(flags["server.port"])
    assert config["server"]["maxUploadSize"] == int(flags["server.maxUploadSize"])
    assert config["server"]["enableXsrfProtection"] is True
    assert config["server"]["headless"] is True
    assert config["browser"]["gatherUsageStats"] is False
    assert config["client"]["showErrorDetails"] == "none"
    assert config["theme"]["base"] == "light"


# --- session helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("pbmc.h5ad", "pbmc.h5ad"),
        ("counts.csv.gz", "counts.csv.gz"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\my data (1).h5ad", "my_data__1_.h5ad"),
        (".bashrc", "bashrc"),
        ("", "upload"),
    ],
)
def test_safe_filename_keeps_the_extension_and_drops_directories(name, expected):
    assert safe_filename(name) == expected


# --- Upload page --------------------------------------------------------------------------------


def _app() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


def _metrics(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


def _sidebar_text(at: AppTest) -> str:
    elements = [*at.sidebar.text, *at.sidebar.markdown]
    return "\n".join(str(element.value) for element in elements)


def test_upload_page_starts_empty_with_an_example_button_and_an_uploader():
    at = _app()
    assert at.title[0].value == "Upload data"
    assert at.button(key="c2s_load_example").label == "Load example dataset"
    assert at.file_uploader(key="c2s_upload").label == "Or upload your own file"
    assert not at.error and not at.metric
    assert "No dataset loaded yet" in at.sidebar.caption[0].value


def test_example_dataset_report(tmp_path):
    at = _app()
    at.button(key="c2s_load_example").click().run()
    assert not at.exception
    assert not at.error
    assert _metrics(at) == {
        "Cells": "700",
        "Genes": "765",
        "Organism": "Homo sapiens",
        "Gene identifiers": "symbol",
        # QC from the log-normalised .raw: genes per cell, and no library size to report
        "Median genes per cell": "243",
        "Median counts per cell": "n/a (not raw counts)",
        "Median % mitochondrial": "n/a",
    }
    dataset = at.session_state[DATASET_KEY]
    expected = np.median(np.asarray((dataset.adata.raw.X > 0).sum(axis=1)).ravel())
    assert expected == 243
    assert "X_umap" in dataset.adata.obsm and len(at.get("plotly_chart")) == 1
    assert dataset.name == EXAMPLE_NAME
    assert dataset.adata.shape == (700, 765)
    # The C2S bookkeeping prepare() wrote survives an h5ad round trip.
    path = tmp_path / "prepared.h5ad"
    dataset.adata.write_h5ad(path)
    assert read(path).uns["c2s"]["identifiers"]["organism"] == "Homo sapiens"
    # The sidebar card is drawn after the page, so it already shows the new dataset.
    sidebar = _sidebar_text(at)
    assert EXAMPLE_NAME in sidebar
    assert "Cells: 700" in sidebar and "Genes: 765" in sidebar
    assert "Organism: Homo sapiens" in sidebar
    assert "Normalisation: log1p in adata.raw -> C2S log10" in sidebar
    # The report: table rows, the warning about the scaled X, and the ready message.
    rows = at.table[0].value["Value"].to_dict()
    assert rows["Gene names"] == "symbol (symbols from var_names)"
    assert rows["C2S values from"] == "adata.raw"
    assert rows["Label columns"] == "bulk_labels (10 levels), phase (3 levels), louvain (11 levels)"
    assert rows["Embeddings"] == "X_pca, X_umap"
    assert rows["Spatial coordinates"] == "none"
    assert [w.value for w in at.warning] == [
        "X: scaled / z-scored values (negative, non-integer); using adata.raw instead"
    ]
    assert at.success[0].value == "Ready: the dataset is prepared for cell sentences."


def test_uploaded_h5ad_is_read_from_the_session_folder(pbmc68k, tmp_path):
    path = tmp_path / "pbmc.h5ad"
    pbmc68k.write_h5ad(path)
    at = _app()
    at.file_uploader(key="c2s_upload").upload("my pbmc.h5ad", path.read_bytes()).run()
    assert not at.exception and not at.error
    assert _metrics(at)["Cells"] == "700"
    assert _metrics(at)["Genes"] == "765"
    assert at.session_state[DATASET_KEY].name == "my pbmc.h5ad"
    workdir = Path(at.session_state[WORKDIR_KEY].name)
    assert [p.name for p in workdir.iterdir()] == ["my_pbmc.h5ad"]
    # A rerun (any widget interaction) does not read the same upload again.
    loaded = at.session_state[DATASET_KEY]
    upload_id = at.session_state[LAST_UPLOAD_KEY]
    at.run()
    assert at.session_state[DATASET_KEY] is loaded
    assert at.session_state[LAST_UPLOAD_KEY] == upload_id


def _expected_message(name: str, data: bytes, tmp_path: Path, workdir: Path) -> str:
    """The engine's own message for the same file, with the path it had in the session."""
    path = tmp_path / safe_filename(name)
    path.write_bytes(data)
    with pytest.raises(C2SError) as info:
        read(path)
    return str(info.value).replace(str(tmp_path), str(workdir))


def test_a_lone_mtx_upload_asks_for_the_zipped_folder():
    at = _app()
    at.file_uploader(key="c2s_upload").upload("matrix.mtx.gz", b"\x1f\x8b").run()
    assert not at.exception
    assert [error.value for error in at.error] == [
        "matrix.mtx.gz is a lone 10x matrix; its features and barcodes files are missing. "
        "Fix: zip the whole 10x folder (matrix, features and barcodes files) and upload the .zip."
    ]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("broken.h5ad", b"this is a text file pretending to be HDF5\n" * 10),
        ("seurat.rds", b"X\n\x00\x00\x00\x03"),
    ],
)
def test_bad_upload_shows_the_engine_error_without_a_traceback(name, data, tmp_path):
    at = _app()
    at.file_uploader(key="c2s_upload").upload(name, data).run()
    assert not at.exception
    workdir = Path(at.session_state[WORKDIR_KEY].name)
    assert [error.value for error in at.error] == [_expected_message(name, data, tmp_path, workdir)]
    assert "Fix:" in at.error[0].value
    assert DATASET_KEY not in at.session_state
    assert not at.metric


def test_unexpected_reader_failure_is_one_line_not_a_traceback(monkeypatch):
    def broken_read(path):
        raise RuntimeError("boom")

    monkeypatch.setattr("webapp.state.read", broken_read)
    at = _app()
    at.file_uploader(key="c2s_upload").upload("cells.h5ad", b"\x89HDF\r\n\x1a\n").run()
    assert not at.exception
    (error,) = at.error
    assert error.value.startswith("Could not load cells.h5ad (RuntimeError: boom). Fix: check")
    assert "\n" not in error.value


def test_bad_upload_keeps_the_dataset_already_loaded():
    at = _app()
    at.button(key="c2s_load_example").click().run()
    at.file_uploader(key="c2s_upload").upload("broken.h5ad", b"not hdf5").run()
    assert not at.exception
    assert len(at.error) == 1
    assert at.session_state[DATASET_KEY].name == EXAMPLE_NAME
    # Loading the example again clears the error.
    at.button(key="c2s_load_example").click().run()
    assert not at.error
