"""Per-session workspaces on disk: ids, atomic saving, reattaching after a refresh, clearing."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from c2s_engine.errors import WorkspaceError
from webapp import state
from webapp.workspace import (
    DATASET_FILE,
    Workspace,
    is_workspace_id,
    new_workspace_id,
    workspace_root,
)

pytest_plugins = ["tiny_checkpoints", "webapp_helpers"]


def test_workspace_root_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("C2S_WORKSPACE_DIR", str(tmp_path / "ws"))
    assert workspace_root() == tmp_path / "ws"
    monkeypatch.delenv("C2S_WORKSPACE_DIR")
    assert workspace_root() == (tmp_path.home() / ".c2s-studio" / "workspaces")


@pytest.mark.parametrize("bad", ["../../etc", "ABCDEF0123456789abcdef0123456789", "abc", "",
                                 "0123456789abcdef0123456789abcdef/..", None])
def test_only_well_formed_ids_reach_the_disk(bad, tmp_path):
    assert not is_workspace_id(bad)
    with pytest.raises(WorkspaceError) as info:
        Workspace(bad, root=tmp_path)
    assert "is not a C2S Studio workspace id" in str(info.value)
    assert "Fix: open the app without the ws=... part of the address" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_new_ids_are_distinct_and_well_formed():
    ids = {new_workspace_id() for _ in range(50)}
    assert len(ids) == 50 and all(is_workspace_id(i) for i in ids)


def test_dataset_and_documents_round_trip(tmp_path, pbmc68k_copy):
    workspace = Workspace(new_workspace_id(), root=tmp_path)
    assert not workspace.has_dataset and workspace.load_dataset() is None
    pbmc68k_copy.uns["c2s"] = {"annotate": {"model": "demo", "seed": -1, "top_k": 16}}
    workspace.save_dataset(pbmc68k_copy, {"name": "pbmc", "report": {"n_cells": 700}})
    adata, info = workspace.load_dataset()
    assert info == {"name": "pbmc", "report": {"n_cells": 700}}
    assert adata.shape == (700, 765)
    assert adata.uns["c2s"]["annotate"]["model"] == "demo"
    assert list(adata.obs["bulk_labels"]) == list(pbmc68k_copy.obs["bulk_labels"])
    assert workspace.load_document("chat", default=[]) == []
    history = [{"role": "user", "content": "Which cells express CD3E?"}]
    workspace.save_document("chat", history)
    assert workspace.load_document("chat") == history
    # Nothing but the documents themselves is left behind (no temporary files).
    assert sorted(p.name for p in workspace.path.iterdir()) == [
        "chat.json", "dataset.h5ad", "dataset.json"]
    with pytest.raises(WorkspaceError, match="not a valid workspace document name"):
        workspace.save_document("../chat", [])


def test_a_failed_save_keeps_the_previous_file(tmp_path, pbmc68k_copy, monkeypatch):
    workspace = Workspace(new_workspace_id(), root=tmp_path)
    workspace.save_dataset(pbmc68k_copy, {"name": "first"})
    before = (workspace.path / DATASET_FILE).read_bytes()

    def broken_write(self, path, *args, **kwargs):
        path.write_bytes(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", broken_write)
    with pytest.raises(OSError, match="No space left"):
        workspace.save_dataset(pbmc68k_copy, {"name": "second"})
    assert (workspace.path / DATASET_FILE).read_bytes() == before
    assert workspace.load_document("dataset") == {"name": "first"}
    assert sorted(p.name for p in workspace.path.iterdir()) == ["dataset.h5ad", "dataset.json"]


def test_unreadable_saved_files_are_reported(tmp_path):
    workspace = Workspace(new_workspace_id(), root=tmp_path)
    workspace.path.mkdir(parents=True)
    (workspace.path / "chat.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(WorkspaceError, match="the saved chat of workspace .* cannot be read"):
        workspace.load_document("chat")
    (workspace.path / DATASET_FILE).write_bytes(b"not hdf5")
    (workspace.path / "dataset.json").write_text("{}", encoding="utf-8")
    with pytest.raises(WorkspaceError) as info:
        workspace.load_dataset()
    assert str(info.value).endswith("Fix: clear the workspace and load the data again.")


def test_clear_deletes_everything(tmp_path, pbmc68k_copy):
    workspace = Workspace(new_workspace_id(), root=tmp_path)
    workspace.save_dataset(pbmc68k_copy, {"name": "x"})
    workspace.clear()
    assert not workspace.path.exists() and workspace.load_dataset() is None


# --- session helpers ----------------------------------------------------------------------------


def test_attach_reopens_the_workspace_named_in_the_url(webapp_env, example_dataset):
    first: dict = {}
    query: dict = {}
    workspace = state.attach_workspace(first, query)
    assert query == {"ws": workspace.id}
    example_dataset.adata.obs["note"] = "kept"
    state.set_dataset(first, example_dataset)
    assert workspace.path.parent == webapp_env and workspace.has_dataset

    # A refreshed tab: a new, empty session whose URL still names the workspace.
    second: dict = {}
    assert state.attach_workspace(second, {"ws": workspace.id}).id == workspace.id
    restored = second[state.DATASET_KEY]
    assert restored.name == example_dataset.name
    assert restored.report == example_dataset.report
    assert list(restored.adata.obs["note"].unique()) == ["kept"]
    assert restored.adata.uns["c2s"]["identifiers"]["organism"] == "Homo sapiens"


def test_attach_ignores_a_malformed_or_unknown_id(webapp_env):
    session: dict = {}
    query = {"ws": "../../../etc/passwd"}
    workspace = state.attach_workspace(session, query)
    assert is_workspace_id(workspace.id) and query["ws"] == workspace.id
    assert state.DATASET_KEY not in session
    unknown = new_workspace_id()
    session = {}
    assert state.attach_workspace(session, {"ws": unknown}).id == unknown
    assert state.DATASET_KEY not in session


def test_attach_with_broken_saved_data_starts_a_new_workspace(webapp_env):
    broken = Workspace(new_workspace_id())
    broken.path.mkdir(parents=True)
    (broken.path / DATASET_FILE).write_bytes(b"garbage")
    (broken.path / "dataset.json").write_text("{}", encoding="utf-8")
    session: dict = {}
    query = {"ws": broken.id}
    with pytest.raises(WorkspaceError):
        state.attach_workspace(session, query)
    assert session[state.WORKSPACE_KEY].id != broken.id
    assert query["ws"] == session[state.WORKSPACE_KEY].id


def test_set_dataset_forgets_the_selection_and_clear_forgets_everything(
        webapp_env, example_dataset):
    session: dict = {state.SELECTION_KEY: ["AAAG-1"]}
    query: dict = {}
    old = state.attach_workspace(session, query)
    state.set_dataset(session, example_dataset)
    assert state.SELECTION_KEY not in session and old.has_dataset
    session[state.SELECTION_KEY] = ["x"]
    new = state.clear_workspace(session, query)
    assert not old.path.exists()
    assert new.id != old.id and query == {"ws": new.id}
    assert state.DATASET_KEY not in session and state.SELECTION_KEY not in session


def test_a_save_failure_is_one_message_and_keeps_the_session_data(
        webapp_env, example_dataset, monkeypatch):
    session: dict = {}
    state.attach_workspace(session, {})

    def full_disk(self, adata, info):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Workspace, "save_dataset", full_disk)
    with pytest.raises(WorkspaceError) as info:
        state.set_dataset(session, example_dataset)
    assert "the results are in this browser session but could not be saved" in str(info.value)
    assert "Fix: free disk space or set C2S_WORKSPACE_DIR" in str(info.value)
    assert session[state.DATASET_KEY] is example_dataset


def test_working_copy_shares_matrices_but_not_results(pbmc68k_copy):
    pbmc68k_copy.uns["c2s"] = {"normalization": {"detected": "log1p"}}
    work = state.working_copy(pbmc68k_copy)
    assert np.shares_memory(work.X, pbmc68k_copy.X)
    work.obs["c2s_cell_type"] = "T"
    work.obsm["c2s_label_probs"] = np.zeros((700, 2))
    work.uns["c2s"]["annotate"] = {"model": "demo"}
    assert "c2s_cell_type" not in pbmc68k_copy.obs
    assert "c2s_label_probs" not in pbmc68k_copy.obsm
    assert list(pbmc68k_copy.uns["c2s"]) == ["normalization"]
    assert work.raw.shape == pbmc68k_copy.raw.shape


def test_working_copy_of_backed_data_is_in_memory(tmp_path, pbmc68k):
    pbmc68k.write_h5ad(tmp_path / "x.h5ad")
    backed = ad.read_h5ad(tmp_path / "x.h5ad", backed="r")
    work = state.working_copy(backed)
    assert not work.isbacked and work.shape == (700, 765)
    work.obs["new"] = 1
    assert "new" not in backed.obs


# --- in the app ----------------------------------------------------------------------------------


def test_upload_saves_to_the_workspace_and_a_refresh_gets_it_back(webapp, webapp_env):
    at = webapp.open()
    workspace_id = at.query_params["ws"]
    assert is_workspace_id(workspace_id)
    at.button(key="c2s_load_example").click().run()
    assert not at.exception
    assert (webapp_env / workspace_id / DATASET_FILE).is_file()

    refreshed = webapp.open("pages/2_Annotate.py", query={"ws": workspace_id})
    assert not refreshed.exception
    assert refreshed.session_state[state.DATASET_KEY].name == state.EXAMPLE_NAME
    assert state.EXAMPLE_NAME in webapp.sidebar(refreshed)
    assert refreshed.query_params["ws"] == workspace_id

    refreshed.button(key="c2s_clear_workspace").click().run()
    assert not refreshed.exception
    assert not (webapp_env / workspace_id).exists()
    assert refreshed.query_params["ws"] != workspace_id
    assert state.DATASET_KEY not in refreshed.session_state
    assert "No dataset loaded yet" in webapp.sidebar(refreshed)


def test_two_sessions_never_share_data(webapp, example_dataset):
    first = webapp.open(dataset=example_dataset)
    second = webapp.open()
    assert first.query_params["ws"] != second.query_params["ws"]
    assert state.DATASET_KEY not in second.session_state
    assert "No dataset loaded yet" in webapp.sidebar(second)
