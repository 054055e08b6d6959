"""The Annotate page (AppTest), and the shared pieces it is built from: background jobs with
progress and cancel, plots, the model picker and the engine's embedding view."""

from __future__ import annotations

import threading
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from c2s_engine.embedding_view import color_values, ensure_umap, gene_expression
from c2s_engine.errors import (
    CancelledError,
    LabelsError,
    ModelNotFoundError,
    ObsColumnError,
    SpatialDataError,
)
from c2s_engine.models import load_model
from c2s_engine.tasks import annotate as annotate_task
from c2s_engine.tasks.label_metrics import classification_metrics
from c2s_engine.tasks.runtime import models_supporting
from webapp import components, models, plots, state

pytest_plugins = ["tiny_checkpoints", "webapp_helpers"]

PAGE = "pages/2_Annotate.py"
JOB = "c2s_annotate_job"


def _finish_job(at):
    """Wait for the page's background job, then rerun the page so it collects the outcome."""
    assert at.session_state[JOB].wait(timeout=90)
    at.run()
    assert not at.exception
    return at


# --- Annotate page: bad inputs ------------------------------------------------------------------


def test_without_a_dataset_the_page_points_to_upload(webapp):
    at = webapp.open(PAGE)
    assert not at.exception
    assert at.title[0].value == "Annotate cell types"
    assert webapp.texts(at.info) == [
        "No dataset is loaded. Fix: load your data, or the example dataset, on the Upload data "
        "page first."]
    assert not at.main.button  # nothing to run
    assert "No dataset loaded yet" in webapp.sidebar(at)


def test_a_model_without_cell_type_prediction_offers_the_ones_that_have_it(
        webapp, small_example, monkeypatch, qa_only_model_dir):
    monkeypatch.setenv("C2S_DEMO_MODEL", str(qa_only_model_dir))
    at = webapp.open(PAGE, dataset=small_example)
    assert not at.exception
    (warning,) = webapp.texts(at.warning)
    assert warning == (
        "The current model, demo, was not trained for cell type annotation (its model card "
        "lists: question_answering), so its answers here would not mean anything.")
    offered = [b.label for b in at.main.button]
    # Every model that lists the task except the current one ("demo", here the test's
    # model), shipped models first.
    assert offered == [f"Use {name}" for name in models_supporting("cell_type_prediction")
                       if name != "demo"]
    assert "Use vandijklab/C2S-Pythia-410m-cell-type-prediction" in offered
    assert "c2s_ann_run" not in [b.key for b in at.button]


def test_a_missing_demo_model_is_one_error_line(webapp, small_example, monkeypatch, tmp_path):
    monkeypatch.setenv("C2S_DEMO_MODEL", str(tmp_path / "nowhere"))
    at = webapp.open(PAGE, dataset=small_example)
    assert not at.exception
    message = f"the demo model is not installed (nothing at C2S_DEMO_MODEL={tmp_path}/nowhere)"
    main_errors = webapp.texts(at.main.error)
    assert len(main_errors) == 1
    assert main_errors[0].startswith(message + ". Fix: put a saved model folder")
    assert webapp.texts(at.sidebar.error) == main_errors


def test_typed_candidates_must_not_be_empty(webapp, small_example):
    at = webapp.open(PAGE, dataset=small_example)
    at.radio(key="c2s_ann_source").set_value("Typed list").run()
    at.button(key="c2s_ann_run").click().run()
    assert not at.exception
    assert webapp.texts(at.error) == [
        "No candidate cell types were typed. Fix: type at least one, or choose another source "
        "of candidates."]
    assert JOB not in at.session_state


# --- Annotate page: happy path ------------------------------------------------------------------


def test_annotation_with_labels_shows_metrics_map_clusters_and_downloads(
        webapp, webapp_env, small_example):
    at = webapp.open(PAGE, dataset=small_example)
    assert not at.exception
    # Defaults: candidates from bulk_labels, compared with bulk_labels, majority per louvain.
    assert at.radio(key="c2s_ann_source").value == "From an obs column"
    assert at.selectbox(key="c2s_ann_labels_from").value == "bulk_labels"
    assert at.selectbox(key="c2s_ann_truth").value == "bulk_labels"
    assert at.selectbox(key="c2s_ann_groupby").value == "louvain"
    assert at.number_input(key="c2s_ann_top_k").value == 16  # the model card's top_k
    assert at.number_input(key="c2s_ann_tie_orders").value == 1
    at.number_input(key="c2s_ann_tie_orders").set_value(2)
    at.button(key="c2s_ann_run").click().run()
    assert not at.exception
    # The job saves its results itself: a tab closed during the run loses nothing.
    assert at.session_state[JOB].wait(timeout=90)
    workspace = at.session_state[state.WORKSPACE_KEY]
    assert "c2s_cell_type" in ad.read_h5ad(workspace.dataset_path()).obs
    _finish_job(at)
    (success,) = webapp.texts(at.success)
    assert success.startswith("Annotated 32 cells in ")

    adata = at.session_state[state.DATASET_KEY].adata
    predicted = adata.obs["c2s_cell_type"]
    candidates = set(small_example.adata.obs["bulk_labels"].astype(str))
    assert set(predicted.astype(str)) <= candidates
    assert np.all((adata.obs["c2s_confidence"] > 0) & (adata.obs["c2s_confidence"] <= 1))

    expected = classification_metrics(adata.obs["bulk_labels"].to_numpy(object),
                                      predicted.to_numpy(object))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Accuracy": f"{expected.accuracy:.1%}",
                       "Macro-F1": f"{expected.macro_f1:.3f}", "Cells compared": "32"}
    charts = [c.key for c in at.get("plotly_chart")]
    assert charts == ["c2s_ann_confusion", "c2s_ann_umap"]
    assert at.selectbox(key="c2s_ann_color").value == "c2s_cell_type"

    clusters = at.dataframe[-1].value  # the cluster table comes last
    louvain = small_example.adata.obs["louvain"]
    assert list(clusters.index) == [c for c in louvain.cat.categories if (louvain == c).any()]
    assert clusters["n_cells"].sum() == 32
    assert set(clusters["majority cell type"]) <= candidates

    downloads = {b.key: b for b in at.get("download_button")}
    assert set(downloads) == {"c2s_ann_dl_h5ad", "c2s_ann_dl_csv"}
    # Saved to the workspace with provenance that survives the h5ad round trip.
    saved = ad.read_h5ad(workspace.dataset_path())
    assert list(saved.obs["c2s_cell_type"].astype(str)) == list(predicted.astype(str))
    prov = saved.uns["c2s"]["annotate"]
    assert prov["model"] == "demo" and prov["params"]["truth"] == "bulk_labels"
    assert prov["params"]["tie_orders"] == 2 and "score_tie_order_1" in prov["calls"]
    assert float(prov["metrics"]["accuracy"]) == pytest.approx(expected.accuracy)


def test_download_payloads_hold_the_predictions(annotated_example, tmp_path):
    adata = annotated_example.adata
    (tmp_path / "out.h5ad").write_bytes(components.adata_bytes(adata))
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    assert list(back.obs["c2s_cell_type"]) == list(adata.obs["c2s_cell_type"])
    assert back.uns["c2s"]["annotate"]["task"] == "cell_type_prediction"


def test_a_selection_is_summarised_and_kept_for_other_pages(webapp, annotated_example):
    small_example = annotated_example
    picked = list(small_example.adata.obs_names[:5])
    at = webapp.open(PAGE, dataset=small_example, session={state.SELECTION_KEY: picked})
    assert not at.exception
    assert [s.value for s in at.subheader][:3] == [
        "Agreement with the existing labels", "Cell map", "Selected cells (5)"]
    table = at.dataframe[0].value
    expected = small_example.adata.obs["c2s_cell_type"].iloc[:5].astype(str).value_counts()
    assert table["cells"].to_dict() == expected.to_dict()
    assert "5 cells selected on a plot" in webapp.sidebar(at)
    at.button(key="c2s_ann_clear_selection").click().run()
    assert state.SELECTION_KEY not in at.session_state


# --- Annotate page: failures and cancel keep earlier results ------------------------------------


def test_an_engine_error_is_shown_and_earlier_results_are_kept(
        webapp, annotated_example, monkeypatch):
    small_example = annotated_example
    before = small_example.adata.obs["c2s_cell_type"].copy()
    when = small_example.adata.uns["c2s"]["annotate"]["time"]

    def failing(adata, model, **kwargs):
        adata.obs["c2s_cell_type"] = "garbage"  # written to the copy, which is thrown away
        raise LabelsError("no candidate labels in bulk_labels", "give at least one label")

    monkeypatch.setattr(annotate_task, "annotate", failing)
    at = webapp.open(PAGE, dataset=small_example)
    at.button(key="c2s_ann_run").click().run()
    _finish_job(at)
    assert webapp.texts(at.error) == [
        "no candidate labels in bulk_labels. Fix: give at least one label."]
    adata = at.session_state[state.DATASET_KEY].adata
    pd.testing.assert_series_equal(adata.obs["c2s_cell_type"], before)
    assert adata.uns["c2s"]["annotate"]["time"] == when
    assert [c.key for c in at.get("plotly_chart")] == ["c2s_ann_confusion", "c2s_ann_umap"]


def test_an_unexpected_engine_bug_is_one_line(webapp, small_example, monkeypatch):
    def buggy(adata, model, **kwargs):
        raise RuntimeError("index out of range")

    monkeypatch.setattr(annotate_task, "annotate", buggy)
    at = webapp.open(PAGE, dataset=small_example)
    at.button(key="c2s_ann_run").click().run()
    _finish_job(at)
    (error,) = webapp.texts(at.error)
    assert error.startswith("Could not finish annotating the cells (RuntimeError: index out of "
                            "range). Fix:")
    assert "\n" not in error


def test_cancel_button_stops_the_run_and_keeps_earlier_results(
        webapp, annotated_example, monkeypatch):
    small_example = annotated_example
    before = small_example.adata.obs["c2s_cell_type"].copy()
    started = threading.Event()

    def slow(adata, model, *, progress, cancel, **kwargs):
        progress(8, 32, 4.0)
        started.set()
        assert cancel.wait(timeout=60), "the Cancel button never set the event"
        raise CancelledError("Cancelled after 8 of 32 cells", done=8, total=32)

    monkeypatch.setattr(annotate_task, "annotate", slow)
    at = webapp.open(PAGE, dataset=small_example)
    at.button(key="c2s_ann_run").click().run()
    assert started.wait(timeout=30)
    at.run()  # the progress panel now shows the engine's progress
    (bar,) = at.get("progress")
    assert bar.proto.text == "8 of 32 cells · 4.0 cells/s · about 6 s left"
    assert at.button(key="c2s_ann_run").disabled
    at.button(key=f"{JOB}_cancel").click().run()
    _finish_job(at)
    assert webapp.texts(at.warning) == [
        "Stopped annotating the cells after 8 of 32 cells, as asked. Nothing was changed: "
        "earlier results are kept."]
    pd.testing.assert_series_equal(
        at.session_state[state.DATASET_KEY].adata.obs["c2s_cell_type"], before)


# --- background jobs ----------------------------------------------------------------------------


def test_a_job_really_cancels_the_engine_between_batches(small_example, all_tasks_model_dir):
    model = load_model(str(all_tasks_model_dir))
    adata = small_example.adata
    work = state.working_copy(adata)
    seen = []

    def run(progress, cancel):
        def report(done, total, rate):
            seen.append((done, total))
            progress(done, total, rate)
            cancel.set()  # the user clicks Cancel while the first batch is reported

        return annotate_task.annotate(work, model, labels_from="bulk_labels", top_k=16,
                                      batch_size=4, cache=False, progress=report, cancel=cancel)

    job = components.BackgroundJob(run, doing="annotating the cells").start()
    assert job.wait(timeout=60)
    outcome = job.outcome
    assert outcome.status == "cancelled"
    assert (outcome.done, outcome.total) == (4, 32) and seen == [(4, 32)]
    assert outcome.message == ("Stopped annotating the cells after 4 of 32 cells, as asked. "
                               "Nothing was changed: earlier results are kept.")
    assert "c2s_cell_type" not in adata.obs and "annotate" not in adata.uns["c2s"]


def test_job_progress_text_and_outcomes():
    gate = threading.Event()

    def work(progress, cancel):
        progress(100, 700, 25.0)
        gate.wait(10)
        return "result"

    job = components.BackgroundJob(work, doing="scoring", unit="cells")
    assert job.status_text() == "Starting: scoring..."
    job.start()
    deadline = time.monotonic() + 10
    while job.progress()[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.running and job.outcome is None
    assert job.status_text() == "100 of 700 cells · 25.0 cells/s · about 24 s left"
    job.cancel()
    assert job.status_text().endswith(" · stopping after the current batch")
    gate.set()
    assert job.wait(10)
    assert job.outcome.status == "done" and job.outcome.result == "result"
    session = {"k": job}
    assert components.collect_job(session, "k").result == "result" and "k" not in session
    assert components.collect_job(session, "k") is None


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0 s"), (59, "59 s"), (75, "1 min 15 s"),
                                               (3720, "1 h 2 min")])
def test_format_duration(seconds, text):
    assert components.format_duration(seconds) == text


def test_format_bytes():
    assert [models.format_bytes(n) for n in (512, 1536, 3 * 1024**2, 5 * 1024**3)] == [
        "512 B", "1.5 KB", "3.0 MB", "5.0 GB"]


# --- model picker -------------------------------------------------------------------------------


def test_a_failed_model_load_is_remembered_not_retried(webapp_env, monkeypatch, tmp_path):
    calls = []

    def fake_load(name, precision, device, demo_folder):
        calls.append(name)
        raise ModelNotFoundError("boom", None)

    monkeypatch.setattr(models, "_load_shared", fake_load)
    session: dict = {}
    choice = models.ModelChoice(str(tmp_path / "missing"))
    assert models.choose(session, choice) is None
    assert models.current_model(session) is None
    assert calls == [str(tmp_path / "missing")]
    assert models.model_error(session) == "boom."
    assert models.choose(session, choice) is None  # asking again retries
    assert len(calls) == 2


def test_model_options_list_demo_the_shipped_models_then_the_registry():
    options = models.model_options()
    # The shipped perturbation and spatial models load offline, so they come before downloads.
    assert options[:3] == ["demo", "kang-perturbation", "osmfish-spatial"]
    assert options[3:] == [card.name for card in models.list_models()]


# --- plots --------------------------------------------------------------------------------------


def test_embedding_figure_carries_cell_names_and_colours(pbmc68k_copy):
    figure = plots.embedding_figure(pbmc68k_copy, "bulk_labels")
    names = [trace.name for trace in figure.data]
    assert names == list(pbmc68k_copy.obs["bulk_labels"].cat.categories)
    first = figure.data[0]
    cells = pbmc68k_copy.obs_names[pbmc68k_copy.obs["bulk_labels"] == first.name]
    assert [c[0] for c in first.customdata] == list(cells)
    assert figure.layout.dragmode == "lasso"
    numeric = plots.embedding_figure(pbmc68k_copy, "CD3E")
    assert len(numeric.data) == 1
    np.testing.assert_allclose(numeric.data[0].marker.color,
                               gene_expression(pbmc68k_copy, "CD3E"))
    with pytest.raises(ObsColumnError, match="'NOPE' is neither an obs column nor a gene"):
        plots.embedding_figure(pbmc68k_copy, "NOPE")


def test_selected_cells_reads_plotly_selection_events():
    event = {"selection": {"points": [
        {"point_index": 3, "customdata": ["AAAC-1"]},
        {"point_index": 9, "customdata": ["GGTA-1"]},
        {"point_index": 3, "customdata": ["AAAC-1"]},
        {"point_index": 4, "customdata": "TTTG-1"},
    ], "point_indices": [3, 9, 4], "box": [], "lasso": [{}]}}
    assert plots.selected_cells(event) == ["AAAC-1", "GGTA-1", "TTTG-1"]
    assert plots.selected_cells({"selection": {"points": []}}) == []
    assert plots.selected_cells(None) == []


def test_confusion_figure_shows_counts_and_row_shares():
    confusion = np.array([[3, 1, 0], [0, 2, 2], [0, 0, 0]])
    figure = plots.confusion_figure(confusion, ["B", "T", "NK"], n_true_labels=2)
    heatmap = figure.data[0]
    assert list(heatmap.y) == ["B", "T"] and list(heatmap.x) == ["B", "T", "NK"]
    np.testing.assert_array_equal(heatmap.text, [[3, 1, 0], [0, 2, 2]])
    np.testing.assert_allclose(heatmap.z, [[0.75, 0.25, 0], [0, 0.5, 0.5]])


def test_spatial_figure_needs_coordinates_and_draws_the_radius(pbmc68k_copy):
    with pytest.raises(SpatialDataError) as info:
        plots.spatial_figure(pbmc68k_copy, "bulk_labels")
    assert "Fix: store the x/y position of every cell" in str(info.value)
    pbmc68k_copy.obsm["spatial"] = np.column_stack([np.arange(700.0), np.zeros(700)])
    figure = plots.spatial_figure(pbmc68k_copy, "louvain", radius=5, center=pbmc68k_copy
                                  .obs_names[10])
    (circle,) = figure.layout.shapes
    assert (circle.x0, circle.x1, circle.y0, circle.y1) == (5, 15, -5, 5)
    assert figure.layout.annotations[0].text == "radius 5"
    assert figure.layout.yaxis.scaleanchor == "x"


# --- engine: embedding view ---------------------------------------------------------------------


def test_ensure_umap_computes_a_missing_map_from_the_c2s_values(small_example, tmp_path):
    adata = small_example.adata
    for key in ("X_umap", "X_pca"):
        del adata.obsm[key]
    adata.uns.pop("neighbors", None)
    assert ensure_umap(adata, n_neighbors=10) == "X_umap"
    assert adata.obsm["X_umap"].shape == (32, 2) and np.isfinite(adata.obsm["X_umap"]).all()
    assert adata.uns["c2s"]["embedding_view"] == {
        "basis": "X_umap", "computed_from": "layers/c2s_norm", "n_pcs": 31, "n_neighbors": 10,
        "seed": 0}
    adata.write_h5ad(tmp_path / "x.h5ad")
    assert ad.read_h5ad(tmp_path / "x.h5ad").uns["c2s"]["embedding_view"]["n_pcs"] == 31
    kept = adata.obsm["X_umap"].copy()
    ensure_umap(adata)  # already there: nothing recomputed
    np.testing.assert_array_equal(adata.obsm["X_umap"], kept)


def test_color_values_for_obs_columns_and_genes(pbmc68k_copy):
    obs = pbmc68k_copy.obs
    obs["maybe"] = pd.Series(["a", None] * 350, index=obs.index, dtype=object)
    values, kind = color_values(pbmc68k_copy, "maybe")
    assert kind == "categorical" and list(values.cat.categories) == ["a", "NA"]
    assert list(values[:2]) == ["a", "NA"]
    values, kind = color_values(pbmc68k_copy, "n_genes")
    assert kind == "numeric" and values.dtype == np.float64
    values, kind = color_values(pbmc68k_copy, "bulk_labels")
    assert list(values.cat.categories) == list(obs["bulk_labels"].cat.categories)
    values, kind = color_values(pbmc68k_copy, "CD3E")
    column = pbmc68k_copy.var_names.get_loc("CD3E")
    np.testing.assert_allclose(values.to_numpy(), np.asarray(pbmc68k_copy.X[:, column]).ravel())
