"""The Caption clusters page (AppTest) and the caption helpers it uses."""

from __future__ import annotations

import importlib.util

import anndata as ad
import pytest

from c2s_engine.tasks.caption import captions_table
from c2s_engine.tasks.runtime import models_supporting
from webapp import state, text_tasks

pytest_plugins = ["tiny_checkpoints", "webapp_helpers"]

PAGE = "pages/3_Caption_clusters.py"
JOB = "c2s_caption_job"


def _finish_job(at):
    """Wait for the page's background job, then rerun the page so it collects the outcome
    (a quick job may already have been collected by the rerun that started it)."""
    if JOB in at.session_state:
        assert at.session_state[JOB].wait(timeout=90)
        at.run()
    assert not at.exception
    return at


def _caption(webapp, dataset):
    """Open the page, caption the louvain clusters (3 cells each, 6-token captions), wait."""
    at = webapp.open(PAGE, dataset=dataset)
    at.number_input(key="c2s_cap_max_tokens").set_value(6)
    at.number_input(key="c2s_cap_n_cells").set_value(3)
    at.button(key="c2s_cap_run").click().run()
    assert not at.exception
    return _finish_job(at)


def _saved(webapp_env, at) -> ad.AnnData:
    workspace = at.session_state[state.WORKSPACE_KEY]
    return ad.read_h5ad(webapp_env / workspace.id / "dataset.h5ad")


# --- bad inputs ---------------------------------------------------------------------------------


def test_without_a_dataset_the_page_points_to_upload(webapp):
    at = webapp.open(PAGE)
    assert not at.exception
    assert at.title[0].value == "Caption clusters"
    assert webapp.texts(at.info) == [
        "No dataset is loaded. Fix: load your data, or the example dataset, on the Upload data "
        "page first."]
    assert not at.main.button


def test_a_model_without_captioning_offers_the_ones_that_have_it(
        webapp, small_example, monkeypatch, qa_only_model_dir):
    monkeypatch.setenv("C2S_DEMO_MODEL", str(qa_only_model_dir))
    at = webapp.open(PAGE, dataset=small_example)
    assert not at.exception
    assert webapp.texts(at.warning) == [
        "The current model, demo, was not trained for cluster captioning (its model card "
        "lists: question_answering), so its answers here would not mean anything."]
    offered = [b.label for b in at.main.button]
    # Every model that lists the task except the current one ("demo", here the test's
    # model), shipped models first.
    assert offered == [f"Use {name}" for name in models_supporting("cluster_captioning")
                       if name != "demo"]
    assert "c2s_cap_run" not in [b.key for b in at.button]


def test_a_failed_run_says_why_and_keeps_the_earlier_captions(webapp, small_example,
                                                              monkeypatch):
    at = _caption(webapp, small_example)
    before = captions_table(at.session_state[state.DATASET_KEY].adata)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "igraph" else real_find_spec(name, *a))
    at.radio(key="c2s_cap_source").set_value("Compute Leiden clusters").run()
    at.button(key="c2s_cap_run").click().run()
    _finish_job(at)
    assert webapp.texts(at.error) == [
        "Leiden clustering needs the igraph package, which is not installed. Fix: run `pip "
        "install igraph` in the environment of C2S Studio, or choose an existing cluster column."]
    adata = at.session_state[state.DATASET_KEY].adata
    assert "leiden" not in adata.obs
    assert captions_table(adata).equals(before)
    assert [t.value for t in at.text_area] == list(before["caption"])


def test_the_caption_length_cannot_take_the_whole_context(webapp, small_example):
    at = webapp.open(PAGE, dataset=small_example)
    assert at.number_input(key="c2s_cap_max_tokens").max == 128  # half of the 256 tokens


# --- happy paths --------------------------------------------------------------------------------


def test_captions_of_an_obs_column_with_evidence_edits_and_downloads(
        webapp, webapp_env, small_example):
    at = webapp.open(PAGE, dataset=small_example)
    # Defaults: an existing column, the cluster-like one first; the card's top_k; a caption
    # length of a quarter of the tiny model's 256-token context.
    assert at.radio(key="c2s_cap_source").value == "An existing obs column"
    assert at.selectbox(key="c2s_cap_groupby").value == "louvain"
    assert at.number_input(key="c2s_cap_top_k").value == 16
    assert at.number_input(key="c2s_cap_max_tokens").value == 64
    assert at.number_input(key="c2s_cap_n_cells").value == 10
    at = _caption(webapp, small_example)

    adata = at.session_state[state.DATASET_KEY].adata
    n_clusters = small_example.adata.obs["louvain"].nunique()
    (success,) = webapp.texts(at.success)
    assert success.startswith(f"Captioned {n_clusters} clusters of 'louvain' in ")
    table = captions_table(adata)
    assert len(table) == n_clusters
    assert [t.value for t in at.text_area] == list(table["caption"])
    assert all(len(cells) <= 3 for cells in table["cells_used"])
    # Evidence under each caption: shared genes and markers, and the cells in the prompt.
    evidence = [c for c in webapp.texts(at.caption) if c.startswith("Genes shared")]
    assert len(evidence) == n_clusters
    assert evidence[0].startswith(f"Genes shared by the cells used: "
                                  f"{', '.join(table['top_genes'][0])}")
    cells_text = webapp.texts(at.text)
    assert ", ".join(table["cells_used"][0]) in cells_text
    assert [d.label for d in at.get("download_button")] == [
        "Data with captions (.h5ad)", "Captions and evidence (CSV)"]
    # Saved with the dataset in the workspace, so a refresh keeps them.
    saved = _saved(webapp_env, at)
    assert list(captions_table(saved)["caption"]) == list(table["caption"])

    # Edit the second caption.
    cluster = table["cluster"][1]
    at.text_area[1].set_value("  Naive   CD4 T cells ")
    at.button[[b.label for b in at.button].index("Save edited captions")].click().run()
    assert not at.exception
    assert webapp.texts(at.success) == ["Saved 1 edited caption."]
    adata = at.session_state[state.DATASET_KEY].adata
    edited = captions_table(adata)
    assert edited["caption"][1] == "Naive CD4 T cells" and bool(edited["edited"][1])
    assert not edited["edited"].drop(index=1).any()
    members = adata.obs["louvain"].astype(str) == cluster
    assert set(adata.obs.loc[members, "c2s_caption"].astype(str)) == {"Naive CD4 T cells"}
    assert at.text_area[1].value == "Naive CD4 T cells"
    headers = [m for m in webapp.texts(at.markdown) if m.startswith("**Cluster ")]
    assert headers == [
        f"**Cluster {c}** · {n} cells" + (" · edited by you" if c == cluster else "")
        for c, n in zip(table["cluster"], table["n_cells"], strict=True)]
    assert captions_table(_saved(webapp_env, at))["caption"][1] == "Naive CD4 T cells"

    csv = text_tasks.captions_for_download(adata)
    assert list(csv.columns) == ["n_cells", "caption", "edited", "top_genes", "cells_used",
                                 "markers"]
    assert csv.loc[cluster, "caption"] == "Naive CD4 T cells"
    assert csv.loc[cluster, "cells_used"] == "; ".join(edited["cells_used"][1])


def test_an_empty_edit_is_refused_and_changes_nothing(webapp, small_example):
    at = _caption(webapp, small_example)
    before = captions_table(at.session_state[state.DATASET_KEY].adata)
    at.text_area[0].set_value("   ")
    at.text_area[1].set_value("B cells")
    at.button[[b.label for b in at.button].index("Save edited captions")].click().run()
    assert not at.exception
    cluster = before["cluster"][0]
    assert webapp.texts(at.error) == [
        f"the new caption of cluster '{cluster}' is empty. Fix: write the caption text. No "
        "caption was changed."]
    assert captions_table(at.session_state[state.DATASET_KEY].adata).equals(before)


def test_leiden_clusters_are_computed_and_captioned(webapp, small_example):
    at = webapp.open(PAGE, dataset=small_example)
    at.radio(key="c2s_cap_source").set_value("Compute Leiden clusters").run()
    assert at.number_input(key="c2s_cap_resolution").value == 1.0
    at.number_input(key="c2s_cap_resolution").set_value(0.5)
    at.number_input(key="c2s_cap_max_tokens").set_value(6)
    at.number_input(key="c2s_cap_n_cells").set_value(3)
    at.button(key="c2s_cap_run").click().run()
    _finish_job(at)
    adata = at.session_state[state.DATASET_KEY].adata
    assert adata.uns["c2s"]["clustering"]["resolution"] == 0.5
    n_clusters = adata.uns["c2s"]["clustering"]["n_clusters"]
    assert adata.obs["leiden"].nunique() == n_clusters
    assert adata.uns["c2s"]["captions"]["groupby"] == "leiden"
    assert len(captions_table(adata)) == n_clusters == len(at.text_area)
    assert webapp.texts(at.success)[0].startswith(f"Captioned {n_clusters} clusters of 'leiden'")
    # The new column is offered next time.
    at.radio(key="c2s_cap_source").set_value("An existing obs column").run()
    assert "leiden" in at.selectbox(key="c2s_cap_groupby").options


# --- helpers ------------------------------------------------------------------------------------


def test_cluster_columns_prefer_cluster_names_and_skip_ids(pbmc68k_copy):
    obs = pbmc68k_copy.obs
    obs["barcode"] = obs.index.astype(str)  # 700 values: not a clustering
    obs["empty"] = None
    assert text_tasks.cluster_columns(pbmc68k_copy) == ["louvain", "bulk_labels", "phase"]


@pytest.mark.parametrize(("context", "expected"), [(256, 64), (8192, 256), (2, 1)])
def test_default_caption_length_leaves_most_of_the_context_to_cells(context, expected):
    class Card:
        context_length = context

    class Loaded:
        card = Card()

    assert text_tasks.default_new_tokens("cluster_captioning", Loaded()) == expected
