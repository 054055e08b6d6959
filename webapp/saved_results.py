"""Cell tables a page makes beside the dataset (predicted or generated cells), kept in the
session and in its workspace so that a refresh does not lose them.

A result belongs to one run of a task on the session's dataset: the task records its provenance
in ``dataset.adata.uns['c2s'][task]`` and in the result's own ``uns['c2s'][task]``, with the
run's time. A result is shown only while those two agree, so results of an earlier dataset (or
an earlier run) never appear next to the current one. Nothing here draws widgets.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import anndata as ad

from c2s_engine.errors import WorkspaceError
from webapp import state
from webapp.workspace import Workspace


def run_stamp(adata: ad.AnnData, task_key: str) -> str:
    """The time of the last ``task_key`` run recorded in ``adata`` ('' when none)."""
    return str(adata.uns.get("c2s", {}).get(task_key, {}).get("time", ""))


def _path(workspace: Workspace, name: str) -> Path:
    return workspace.path / f"{name}.h5ad"


def save_cells(workspace: Workspace, name: str, adata: ad.AnnData) -> None:
    """Write ``adata`` as ``<name>.h5ad`` in the workspace (a temporary file renamed over the
    old one, so a crash never leaves half a file).

    Raises
    ------
    WorkspaceError
        The file cannot be written.
    """
    target = _path(workspace, name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                       dir=target.parent)
        os.close(handle)
        try:
            adata.write_h5ad(tmp)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as exc:
        raise WorkspaceError(
            f"the results are in this browser session but could not be saved to {target} "
            f"({exc})", "free disk space or set C2S_WORKSPACE_DIR to a writable folder; "
            "meanwhile download what you need") from exc


def load_cells(workspace: Workspace, name: str) -> ad.AnnData | None:
    """The saved ``<name>.h5ad`` of the workspace, or None when there is none or it is unreadable
    (a broken result file only means the task has to be run again)."""
    path = _path(workspace, name)
    if not path.is_file():
        return None
    try:
        return ad.read_h5ad(path)
    except (OSError, KeyError, ValueError):
        return None


def current_result(session: MutableMapping[str, Any], key: str, task_key: str,
                   names: tuple[str, ...]) -> dict[str, ad.AnnData] | None:
    """The result tables of the last ``task_key`` run on the session's dataset, or None.

    Looks in ``session[key]`` first, then in the workspace files ``<name>.h5ad`` for each of
    ``names`` (caching what it read in the session). Tables whose ``uns['c2s'][task_key]`` time
    differs from the dataset's are stale and ignored.
    """
    dataset: state.LoadedDataset | None = session.get(state.DATASET_KEY)
    if dataset is None:
        return None
    stamp = run_stamp(dataset.adata, task_key)
    if not stamp:
        return None
    held = session.get(key)
    if held is not None and held[0] == stamp:
        return held[1]
    workspace = state.session_workspace(session)
    tables = {name: load_cells(workspace, name) for name in names}
    if any(t is None or run_stamp(t, task_key) != stamp for t in tables.values()):
        return None
    session[key] = (stamp, tables)
    return tables


def keep_result(session: MutableMapping[str, Any], key: str, task_key: str,
                tables: dict[str, ad.AnnData]) -> None:
    """Hold ``tables`` in the session and save each as ``<name>.h5ad`` in the workspace.

    Call after the dataset with the run's provenance became the session's dataset.

    Raises
    ------
    WorkspaceError
        A file could not be saved (the session keeps the tables).
    """
    dataset: state.LoadedDataset = session[state.DATASET_KEY]
    session[key] = (run_stamp(dataset.adata, task_key), tables)
    workspace = state.session_workspace(session)
    for name, table in tables.items():
        save_cells(workspace, name, table)
