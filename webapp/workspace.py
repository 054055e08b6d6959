"""A browser session's workspace on disk, so finished work survives a refresh or a restart.

A workspace is a folder ``<root>/<id>`` holding the session's dataset with its results
(``dataset.h5ad``), the validation report and dataset name (``dataset.json``) and any
page's JSON documents (chat history, captions, ...). The root is ``$C2S_WORKSPACE_DIR`` or
``~/.c2s-studio/workspaces``. The id travels in the page URL, so it is untrusted input:
only ids of the form :func:`new_workspace_id` makes are accepted.

Every file is written to a temporary name in the same folder and renamed over the old one,
so a crash mid-write never leaves a half-written file in place of good results.
Nothing here draws widgets.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad

from c2s_engine.errors import WorkspaceError

WORKSPACE_ENV_VAR = "C2S_WORKSPACE_DIR"
DEFAULT_ROOT = Path("~/.c2s-studio/workspaces")
DATASET_FILE = "dataset.h5ad"
DATASET_INFO_FILE = "dataset.json"
_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
_DOC_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def workspace_root() -> Path:
    """Folder holding every workspace: ``$C2S_WORKSPACE_DIR`` or ``~/.c2s-studio/workspaces``."""
    configured = os.environ.get(WORKSPACE_ENV_VAR)
    return Path(configured).expanduser() if configured else DEFAULT_ROOT.expanduser()


def new_workspace_id() -> str:
    """A fresh unguessable id (32 hex characters): knowing it is what gives access."""
    return secrets.token_hex(16)


def is_workspace_id(value: object) -> bool:
    """Whether ``value`` has the form of a workspace id (anything else never touches the disk)."""
    return isinstance(value, str) and _ID_PATTERN.fullmatch(value) is not None


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Workspace:
    """One session's folder of saved work.

    Parameters
    ----------
    workspace_id
        An id from :func:`new_workspace_id` (e.g. read back from the page URL).
    root
        Folder of all workspaces; :func:`workspace_root` by default.

    Raises
    ------
    WorkspaceError
        ``workspace_id`` is not a well-formed id.
    """

    def __init__(self, workspace_id: str, root: Path | None = None) -> None:
        if not is_workspace_id(workspace_id):
            raise WorkspaceError(
                f"{str(workspace_id)[:40]!r} is not a C2S Studio workspace id",
                "open the app without the ws=... part of the address to start a new workspace",
            )
        self.id = workspace_id
        self.path = (root or workspace_root()) / workspace_id

    @property
    def has_dataset(self) -> bool:
        """Whether a dataset was saved here."""
        return (self.path / DATASET_FILE).is_file() and (self.path / DATASET_INFO_FILE).is_file()

    def save_dataset(self, adata: ad.AnnData, info: dict[str, Any]) -> None:
        """Save the dataset (with all results in it) and a JSON description of it.

        Parameters
        ----------
        adata
            Written as ``dataset.h5ad``; everything in ``uns`` must be ``.h5ad``-safe.
        info
            JSON-safe facts about the dataset (its name, the validation report, ...).
        """
        _write_atomically(self.path / DATASET_FILE, lambda tmp: adata.write_h5ad(tmp))
        self.save_document("dataset", info)

    def load_dataset(self) -> tuple[ad.AnnData, dict[str, Any]] | None:
        """The saved dataset and its description, or None when nothing was saved.

        Raises
        ------
        WorkspaceError
            The saved files cannot be read (e.g. the disk was full when they were written).
        """
        if not self.has_dataset:
            return None
        try:
            adata = ad.read_h5ad(self.path / DATASET_FILE)
        except (OSError, KeyError, ValueError) as exc:
            raise WorkspaceError(
                f"the saved dataset of workspace {self.id} cannot be read ({exc})",
                "clear the workspace and load the data again",
            ) from exc
        return adata, self.load_document("dataset", {})

    def dataset_path(self) -> Path:
        """Where the dataset is saved (for downloads of the saved file)."""
        return self.path / DATASET_FILE

    def save_document(self, name: str, value: Any) -> None:
        """Save a JSON document (chat history, captions, ...) as ``<name>.json``.

        Raises
        ------
        WorkspaceError
            ``name`` is not a plain lower-case name.
        """
        text = json.dumps(value, ensure_ascii=False, indent=1)
        _write_atomically(self._document(name), lambda tmp: tmp.write_text(text, "utf-8"))

    def load_document(self, name: str, default: Any = None) -> Any:
        """A saved JSON document, or ``default`` when there is none.

        Raises
        ------
        WorkspaceError
            The file exists but is not valid JSON.
        """
        path = self._document(name)
        if not path.is_file():
            return default
        try:
            return json.loads(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WorkspaceError(f"the saved {name} of workspace {self.id} cannot be read ({exc})",
                                 "clear the workspace to start again") from exc

    def clear(self) -> None:
        """Delete everything saved in this workspace."""
        shutil.rmtree(self.path, ignore_errors=True)

    def _document(self, name: str) -> Path:
        if not _DOC_NAME.fullmatch(name):
            raise WorkspaceError(f"{name!r} is not a valid workspace document name",
                                 "use lower-case letters, digits and underscores")
        return self.path / f"{name}.json"
