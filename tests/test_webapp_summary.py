"""The Dataset summary page (AppTest)."""

from __future__ import annotations

import anndata as ad

from c2s_engine.models import load_model
from c2s_engine.tasks import summarize as summarize_task
from c2s_engine.tasks.runtime import models_supporting
from webapp import state

pytest_plugins = ["tiny_checkpoints", "webapp_helpers"]

PAGE = "pages/4_Dataset_summary.py"
JOB = "c2s_summary_job"
SETTINGS = {"c2s_sum_n_cells": 5, "c2s_sum_max_tokens": 8}


def _finish_job(at):
    """Wait for the page's background job, then rerun the page so it collects the outcome
    (a quick job may already have been collected by the rerun that started it)."""
    if JOB in at.session_state:
        assert at.session_state[JOB].wait(timeout=90)
        at.run()
    assert not at.exception
    return at


def _open(webapp, dataset):
    at = webapp.open(PAGE, dataset=dataset)
    for key, value in SETTINGS.items():
        at.number_input(key=key).set_value(value)
    return at


def _expected(dataset, model_dir, seed):
    """What the engine writes for the page's settings, on a private copy."""
    return summarize_task.summarize_dataset(
        dataset.adata.copy(), load_model(str(model_dir)), n_cells=5, groupby="louvain",
        top_k=16, max_new_tokens=8, seed=seed)


def test_without_a_dataset_the_page_points_to_upload(webapp):
    at = webapp.open(PAGE)
    assert not at.exception
    assert at.title[0].value == "Dataset summary"
    assert webapp.texts(at.info) == [
        "No dataset is loaded. Fix: load your data, or the example dataset, on the Upload data "
        "page first."]
    assert not at.main.button


def test_a_model_without_summaries_offers_the_ones_that_have_it(
        webapp, small_example, monkeypatch, qa_only_model_dir):
    monkeypatch.setenv("C2S_DEMO_MODEL", str(qa_only_model_dir))
    at = webapp.open(PAGE, dataset=small_example)
    assert not at.exception
    assert webapp.texts(at.warning) == [
        "The current model, demo, was not trained for dataset summaries (its model card "
        "lists: question_answering), so its answers here would not mean anything."]
    offered = [b.label for b in at.main.button]
    # Every model that lists the task except the current one ("demo", here the test's
    # model), shipped models first.
    assert offered == [f"Use {n}" for n in models_supporting("natural_language_interpretation")
                       if n != "demo"]
    assert "c2s_sum_run" not in [b.key for b in at.button]


def test_summary_shows_the_cells_and_the_context_budget_and_regenerates(
        webapp, webapp_env, small_example, all_tasks_model_dir):
    at = webapp.open(PAGE, dataset=small_example)
    # Defaults: 20 cells stratified by the cluster column, the card's top_k, a quarter of the
    # context for the text; nothing to regenerate yet.
    assert at.number_input(key="c2s_sum_n_cells").value == 20
    assert at.selectbox(key="c2s_sum_groupby").value == "louvain"
    assert at.number_input(key="c2s_sum_top_k").value == 16
    assert at.number_input(key="c2s_sum_max_tokens").value == 64
    assert at.number_input(key="c2s_sum_seed").value == 0
    assert at.button(key="c2s_sum_again").disabled
    for key, value in SETTINGS.items():
        at.number_input(key=key).set_value(value)
    at.button(key="c2s_sum_run").click().run()
    _finish_job(at)

    expected = _expected(small_example, all_tasks_model_dir, seed=0)
    stored = at.session_state[state.DATASET_KEY].adata.uns["c2s"]["summary"]
    assert [str(c) for c in stored["cells_used"]] == expected.cells_used
    assert stored["text"] == expected.text
    (success,) = webapp.texts(at.success)
    assert success.startswith(f"Summarised from {expected.n_cells_used} cells in ")
    assert (expected.text or "(the model wrote nothing)") in webapp.texts(at.text)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Cells used": str(expected.n_cells_used),
                       "Genes per cell": str(expected.n_genes_per_cell),
                       "Prompt tokens": f"{expected.n_tokens} of {expected.budget}"}
    assert expected.budget == 256 - 8
    (bar,) = at.get("progress")
    assert bar.value == int(100 * expected.n_tokens / expected.budget)  # percent
    share = f"{expected.n_tokens / expected.budget:.0%}"
    assert bar.proto.text == (
        f"Context budget: {expected.n_tokens} of 248 prompt tokens used ({share}); the "
        "model's context is 256 tokens, 8 of them kept for the summary.")
    (cells,) = at.dataframe
    assert list(cells.value.index) == expected.cells_used
    louvain = small_example.adata.obs.loc[expected.cells_used, "louvain"].astype(str)
    assert list(cells.value["louvain"]) == list(louvain)
    # Stratified: the first cells come from different clusters, taking turns.
    assert louvain.nunique() == len(louvain)
    assert at.code[0].value == expected.prompt
    saved = ad.read_h5ad(webapp_env / at.session_state[state.WORKSPACE_KEY].id / "dataset.h5ad")
    assert saved.uns["c2s"]["summary"]["text"] == expected.text

    # Regenerate: the seed moves on, other cells are drawn.
    assert not at.button(key="c2s_sum_again").disabled
    at.button(key="c2s_sum_again").click().run()
    _finish_job(at)
    assert at.number_input(key="c2s_sum_seed").value == 1
    again = _expected(small_example, all_tasks_model_dir, seed=1)
    stored = at.session_state[state.DATASET_KEY].adata.uns["c2s"]["summary"]
    assert stored["provenance"]["seed"] == 1
    assert [str(c) for c in stored["cells_used"]] == again.cells_used != expected.cells_used
    assert list(at.dataframe[0].value.index) == again.cells_used


def test_a_failed_run_is_one_line_and_keeps_the_earlier_summary(
        webapp, small_example, monkeypatch):
    at = _open(webapp, small_example)
    at.button(key="c2s_sum_run").click().run()
    _finish_job(at)
    before = dict(at.session_state[state.DATASET_KEY].adata.uns["c2s"]["summary"])

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(summarize_task, "summarize_dataset", broken)
    at.button(key="c2s_sum_again").click().run()
    _finish_job(at)
    assert webapp.texts(at.error) == [
        "Could not finish writing the summary (RuntimeError: out of memory). Fix: check the "
        "inputs and try again; if it happens again, report this error together with the server "
        "log."]
    after = at.session_state[state.DATASET_KEY].adata.uns["c2s"]["summary"]
    assert after["text"] == before["text"] and after["provenance"]["seed"] == 0
    assert list(at.dataframe[0].value.index) == [str(c) for c in before["cells_used"]]


def test_without_clusters_the_cells_are_not_stratified(webapp, small_example):
    at = _open(webapp, small_example)
    at.selectbox(key="c2s_sum_groupby").set_value("(none)")
    at.button(key="c2s_sum_run").click().run()
    _finish_job(at)
    stored = at.session_state[state.DATASET_KEY].adata.uns["c2s"]["summary"]
    assert stored["groupby"] == "" and "groupby" not in stored["provenance"]["params"]
    assert list(at.dataframe[0].value.columns) == ["position in prompt"]
