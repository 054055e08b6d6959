"""The dataset a browser session works on, how it gets there, and where it is saved.

Every page reads the current dataset from ``st.session_state[DATASET_KEY]``. Loading goes through
the engine (``c2s_engine.readers.read`` then ``c2s_engine.validation.prepare``), so the app applies
exactly what the CLI applies. The dataset and its results are also saved in the session's
workspace (:mod:`webapp.workspace`), whose id is kept in the page URL (``?ws=<id>``) so that a
refreshed page, or one opened after a server restart, finds its work again. The session state
is passed in as a mapping, so everything here works (and is tested) without a browser. Nothing
here draws widgets.
"""

from __future__ import annotations

import copy
import re
import shutil
import tempfile
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import anndata as ad

from c2s_engine.errors import UnsupportedFormatError, WorkspaceError
from c2s_engine.normalization import source_label
from c2s_engine.readers import SUPPORTED_FORMATS as READER_FORMATS
from c2s_engine.readers import read
from c2s_engine.validation import Problem, ValidationReport, prepare
from webapp.workspace import Workspace, is_workspace_id, new_workspace_id

DATASET_KEY = "c2s_dataset"
ERROR_KEY = "c2s_load_error"
LAST_UPLOAD_KEY = "c2s_last_upload"
WORKDIR_KEY = "c2s_upload_dir"
WORKSPACE_KEY = "c2s_workspace"
#: Names (``obs_names``) of the cells picked with the lasso or box on a plot; other pages can
#: restrict their work to them.
SELECTION_KEY = "c2s_selection"
#: Query parameter of the page URL that holds the workspace id.
WORKSPACE_PARAM = "ws"

EXAMPLE_NAME = "PBMC 68k reduced (scanpy example)"
#: The Upload page script, for links from other pages ("load a dataset first").
UPLOAD_SCRIPT = Path(__file__).resolve().parent.parent / "pages" / "1_Upload_data.py"
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


def working_copy(adata: ad.AnnData) -> ad.AnnData:
    """A copy to run a task on, so that a failed or cancelled run leaves ``adata`` untouched.

    Everything a task writes (obs columns, obsm/obsp/layers entries, ``uns``) goes into new
    containers, while the expression matrices are shared, not copied: tasks add results and
    never change expression values in place. Backed data is read into memory, because a task
    writes keys that a read-only file cannot take.
    """
    if adata.isbacked:
        return adata.to_memory()
    return ad.AnnData(
        X=adata.X, obs=adata.obs.copy(), var=adata.var.copy(), uns=copy.deepcopy(dict(adata.uns)),
        obsm=dict(adata.obsm), varm=dict(adata.varm), obsp=dict(adata.obsp),
        varp=dict(adata.varp), layers=dict(adata.layers), raw=adata.raw,
    )


def _saved_info(dataset: LoadedDataset) -> dict[str, Any]:
    return {"name": dataset.name, "report": dataset.report.to_dict()}


def _from_saved(adata: ad.AnnData, info: dict[str, Any]) -> LoadedDataset:
    fields = dict(info.get("report") or {"n_cells": adata.n_obs, "n_genes": adata.n_vars})
    fields.pop("ok", None)
    fields["problems"] = [Problem(**p) for p in fields.get("problems", [])]
    return LoadedDataset(str(info.get("name", "saved dataset")), adata, ValidationReport(**fields))


def attach_workspace(
    session: MutableMapping[str, Any], query_params: MutableMapping[str, str]
) -> Workspace:
    """The session's workspace; on a session's first run, the one named in the URL.

    A fresh session whose URL names a workspace (a refreshed page) gets that workspace back,
    with its saved dataset and results put in the session. Otherwise a new id is made. The id is
    (re)written into ``query_params`` on every call because switching pages drops the URL's
    query.

    Raises
    ------
    WorkspaceError
        The saved dataset cannot be read; the session then starts a new, empty workspace.
    """
    workspace = session.get(WORKSPACE_KEY)
    if workspace is None:
        wanted = query_params.get(WORKSPACE_PARAM)
        workspace = Workspace(wanted if is_workspace_id(wanted) else new_workspace_id())
        try:
            saved = workspace.load_dataset()
        except WorkspaceError:
            # The broken files stay on disk for inspection; this session starts afresh.
            session[WORKSPACE_KEY] = Workspace(new_workspace_id())
            query_params[WORKSPACE_PARAM] = session[WORKSPACE_KEY].id
            raise
        session[WORKSPACE_KEY] = workspace
        if saved is not None:
            session[DATASET_KEY] = _from_saved(*saved)
    query_params[WORKSPACE_PARAM] = workspace.id
    return workspace


def session_workspace(session: MutableMapping[str, Any]) -> Workspace:
    """The session's workspace (made on first use when the app did not attach one)."""
    if WORKSPACE_KEY not in session:
        session[WORKSPACE_KEY] = Workspace(new_workspace_id())
    return session[WORKSPACE_KEY]


def save_dataset(session: MutableMapping[str, Any]) -> None:
    """Save the session's dataset, with all results in it, to its workspace.

    Raises
    ------
    WorkspaceError
        The files cannot be written (the session keeps its data; only the saving failed).
    """
    dataset: LoadedDataset | None = session.get(DATASET_KEY)
    if dataset is not None:
        save_to(session_workspace(session), dataset)


def save_to(workspace: Workspace, dataset: LoadedDataset) -> None:
    """Save ``dataset`` to ``workspace`` (also usable from a background job's thread).

    Raises
    ------
    WorkspaceError
        The files cannot be written.
    """
    try:
        workspace.save_dataset(dataset.adata, _saved_info(dataset))
    except OSError as exc:
        raise WorkspaceError(
            f"the results are in this browser session but could not be saved to {workspace.path} "
            f"({exc})",
            "free disk space or set C2S_WORKSPACE_DIR to a writable folder, then run again; "
            "meanwhile download what you need",
        ) from exc


def set_dataset(session: MutableMapping[str, Any], dataset: LoadedDataset) -> None:
    """Make ``dataset`` the session's dataset (forgetting the cell selection) and save it.

    Raises
    ------
    WorkspaceError
        The dataset is in use but could not be saved to the workspace.
    """
    session[DATASET_KEY] = dataset
    session.pop(SELECTION_KEY, None)
    save_dataset(session)


def clear_workspace(
    session: MutableMapping[str, Any], query_params: MutableMapping[str, str]
) -> Workspace:
    """Delete the saved work and drop the dataset, selection and load error from the session.

    A new empty workspace (new id, also put in the URL) replaces the old one.
    """
    if WORKSPACE_KEY in session:
        session[WORKSPACE_KEY].clear()
    for key in (DATASET_KEY, SELECTION_KEY, ERROR_KEY):
        session.pop(key, None)
    session[WORKSPACE_KEY] = Workspace(new_workspace_id())
    query_params[WORKSPACE_PARAM] = session[WORKSPACE_KEY].id
    return session[WORKSPACE_KEY]
