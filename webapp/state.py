"""The dataset a browser session works on, and how it gets there.

Every page reads the current dataset from ``st.session_state[DATASET_KEY]``. Loading goes through
the engine (``c2s_engine.readers.read`` then ``c2s_engine.validation.prepare``), so the app applies
exactly what the CLI applies. Nothing here draws widgets.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import anndata as ad

from c2s_engine.errors import UnsupportedFormatError
from c2s_engine.normalization import source_label
from c2s_engine.readers import SUPPORTED_FORMATS as READER_FORMATS
from c2s_engine.readers import read
from c2s_engine.validation import ValidationReport, prepare

DATASET_KEY = "c2s_dataset"
ERROR_KEY = "c2s_load_error"
LAST_UPLOAD_KEY = "c2s_last_upload"
WORKDIR_KEY = "c2s_upload_dir"

EXAMPLE_NAME = "PBMC 68k reduced (scanpy example)"
# A browser uploads single files, so a 10x folder has to come zipped.
SUPPORTED_FORMATS = ", ".join(f for f in READER_FORMATS if "folder" not in f or "zip" in f)


@dataclass
class LoadedDataset:
    """A dataset prepared for C2S, as held in the session."""

    name: str
    adata: ad.AnnData
    report: ValidationReport


def load_example() -> LoadedDataset:
    """Prepare scanpy's bundled ``pbmc68k_reduced`` (700 PBMCs, 765 genes; no download)."""
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    return LoadedDataset(EXAMPLE_NAME, adata, prepare(adata))


def safe_filename(name: str) -> str:
    """Reduce a browser-supplied file name to a plain name inside the upload folder.

    Directory parts are dropped and unusual characters replaced, while the extension (which
    tells the reader the format, e.g. ``.csv.gz``) is kept.
    """
    base = Path(name.replace("\\", "/")).name
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")
    return cleaned or "upload"


def session_workdir(session: MutableMapping[str, Any]) -> Path:
    """The session's private upload folder, created on first use.

    The ``TemporaryDirectory`` object lives in the session state, so the folder and the uploads
    in it are deleted when the session ends and the state is discarded.
    """
    if WORKDIR_KEY not in session:
        session[WORKDIR_KEY] = tempfile.TemporaryDirectory(prefix="c2s-upload-")
    return Path(session[WORKDIR_KEY].name)


def load_upload(name: str, data: BinaryIO, workdir: Path) -> LoadedDataset:
    """Write an uploaded file into ``workdir`` and read and prepare it with the engine.

    Earlier uploads in ``workdir`` are removed first, so a session keeps at most one file on disk.
    The file stays there while the dataset is in use because large ``.h5ad`` files are read
    backed (on disk).

    Raises
    ------
    c2s_engine.errors.C2SError
        Any reading or validation problem, with its fix.
    """
    if name.lower().endswith((".mtx", ".mtx.gz")):
        # The reader would look for features/barcodes files next to it, which a browser never sends.
        raise UnsupportedFormatError(
            f"{name} is a lone 10x matrix; its features and barcodes files are missing",
            fix="zip the whole 10x folder (matrix, features and barcodes files) and upload the .zip",
        )
    for old in workdir.iterdir():
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    path = workdir / safe_filename(name)
    with path.open("wb") as out:
        shutil.copyfileobj(data, out)
    adata = read(path)
    return LoadedDataset(name, adata, prepare(adata))


def dataset_card(dataset: LoadedDataset) -> dict[str, str]:
    """The few facts shown in the sidebar on every page.

    Organism and normalisation come from the bookkeeping ``prepare`` wrote to
    ``adata.uns['c2s']`` (subkeys ``identifiers`` and ``normalization``), so the card stays right
    when a later page changes the data.
    """
    c2s = dataset.adata.uns.get("c2s", {})
    norm = c2s.get("normalization", {})
    if norm:
        converted = "C2S log10" if len(norm["steps"]) else "already C2S"
        normalisation = f"{norm['detected']} in {source_label(norm['source'])} -> {converted}"
    else:
        normalisation = "not prepared"
    return {
        "Dataset": dataset.name,
        "Cells": f"{dataset.adata.n_obs:,}",
        "Genes": f"{dataset.adata.n_vars:,}",
        "Organism": str(c2s.get("identifiers", {}).get("organism", "unknown")),
        "Normalisation": normalisation,
    }


def report_rows(report: ValidationReport) -> dict[str, str]:
    """The validation report as label -> text rows for display (problems are shown apart)."""
    spatial = (
        f"obsm['{report.spatial['key']}'], {' x '.join(map(str, report.spatial['shape']))}"
        if report.spatial
        else "none"
    )
    storage = "sparse" if report.sparse else "dense"
    return {
        "Cells x genes": f"{report.n_cells:,} x {report.n_genes:,} ({storage}"
        + (", backed on disk)" if report.backed else ")"),
        "Gene names": f"{report.identifier_kind} (symbols from {report.symbol_source or 'nowhere'})",
        "Organism": f"{report.organism} ({report.organism_source})",
        "Expression": report.normalization or "-",
        "C2S values from": source_label(report.matrix) if report.matrix else "-",
        "Label columns": ", ".join(f"{k} ({v} levels)" for k, v in report.label_columns.items())
        or "none",
        "Embeddings": ", ".join(report.embeddings) or "none",
        "Spatial coordinates": spatial,
    }
