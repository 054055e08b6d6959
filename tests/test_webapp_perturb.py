"""The Simulate perturbations page (AppTest), its engine view (c2s_engine.compare_view), the
gene programs (webapp.genesets) and the saved results it restores after a refresh."""

from __future__ import annotations

from dataclasses import replace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from c2s_engine import compare_view
from c2s_engine.errors import GeneSetFileError, GroupingError
from webapp import genesets, saved_results, state

pytest_plugins = ["tiny_checkpoints", "webapp_helpers"]

PAGE = "pages/6_Simulate_perturbations.py"
JOB = "c2s_perturb_job"


def _finish_job(at):
    assert at.session_state[JOB].wait(timeout=90)
    at.run()
    assert not at.exception
    return at


@pytest.fixture
def conditions(small_example) -> state.LoadedDataset:
    """The 32 example cells, half of them called control and half stimulated."""
    adata = small_example.adata
    adata.obs["condition"] = pd.Categorical(["control", "stimulated"] * 16)
    return replace(small_example, adata=adata)


# --- page: bad inputs ---------------------------------------------------------------------------


def test_a_model_without_perturbation_response_offers_others(
        webapp, conditions, monkeypatch, qa_only_model_dir):
    monkeypatch.setenv("C2S_DEMO_MODEL", str(qa_only_model_dir))
    at = webapp.open(PAGE, dataset=conditions)
    assert not at.exception
    assert at.title[0].value == "Simulate perturbations"
    (warning,) = webapp.texts(at.warning)
    assert warning.startswith("The current model, demo, was not trained for perturbation "
                              "response prediction (its model card lists: question_answering)")
    assert "c2s_pt_run" not in [b.key for b in at.button]


def test_an_unnamed_perturbation_is_refused_before_any_work(webapp, conditions):
    at = webapp.open(PAGE, dataset=conditions)
    assert not at.exception
    # Defaults found from the data: the condition column, its control value, the other value.
    assert at.selectbox(key="c2s_pt_column").value == "condition"
    assert at.selectbox(key="c2s_pt_control").value == "control"
    assert at.selectbox(key="c2s_pt_real").value == "stimulated"
    assert at.number_input(key="c2s_pt_n").value == 16  # all 16 controls (fewer than 50)
    assert "16 control cells, 16 real perturbed cells." in webapp.texts(at.caption)
    at.text_input(key="c2s_pt_text").set_value("   ")
    at.button(key="c2s_pt_run").click().run()
    assert webapp.texts(at.error) == ["No perturbation was named. Fix: type the perturbation "
                                      "in words, e.g. IFN-beta."]
    assert JOB not in at.session_state
    assert "perturb" not in at.session_state[state.DATASET_KEY].adata.uns["c2s"]


def test_perturbations_and_decoding_named_on_the_model_card_are_the_defaults(
        webapp, conditions, monkeypatch, build_checkpoint, tmp_path):
    training = {"config": {"data": {"perturbation_names": {"stimulated": "IFN-beta"}}},
                "decoding": {"perturbation_response": {"temperature": 0.6,
                                                       "contrast_weight": 1.0}}}
    folder = build_checkpoint(tmp_path / "kang", "gemma2", card={
        "base": "vandijklab/C2S-Scale-Gemma-2-2B", "context_length": 256, "top_k": 16,
        "tasks": ["perturbation_response"], "training": training})
    monkeypatch.setenv("C2S_DEMO_MODEL", str(folder))
    at = webapp.open(PAGE, dataset=conditions)
    assert not at.exception
    known = at.selectbox(key="c2s_pt_known")
    # The card's name of the real perturbed cells' condition value is the default.
    assert known.options == ["IFN-beta", "Other (type it)"] and known.value == "IFN-beta"
    assert "c2s_pt_text" not in [t.key for t in at.text_input]
    known.set_value("Other (type it)").run()
    assert at.text_input(key="c2s_pt_text").value == ""
    # Decoding starts from the card's recommendation (the page's own defaults are 1.0, 0.75).
    assert at.number_input(key="c2s_pt_temperature").value == 0.6
    assert at.number_input(key="c2s_pt_contrast_weight").value == 1.0


# --- page: happy path and refresh ---------------------------------------------------------------


def test_prediction_shows_metrics_changes_programs_map_and_downloads(webapp, conditions):
    at = webapp.open(PAGE, dataset=conditions)
    at.text_input(key="c2s_pt_text").set_value("IFN-beta")
    at.number_input(key="c2s_pt_n").set_value(6)
    at.button(key="c2s_pt_run").click().run()
    assert not at.exception
    _finish_job(at)
    (success,) = webapp.texts(at.success)
    assert success.startswith("Predicted 6 perturbed cells in ")

    adata = at.session_state[state.DATASET_KEY].adata
    prov = adata.uns["c2s"]["perturb"]
    assert prov["params"]["perturbation"] == "IFN-beta" and prov["params"]["n_cells"] == 6
    assert prov["params"]["n_controls"] == 16
    stamp, tables = at.session_state["c2s_perturb_result"]
    predicted, joint = tables["perturb_predicted"], tables["perturb_joint"]
    assert stamp == prov["time"] and predicted.n_obs == 6
    controls = set(adata.obs_names[adata.obs["condition"] == "control"])
    assert set(predicted.obs["c2s_control_cell"]) <= controls
    assert "condition" not in predicted.obs  # would call the predicted cells controls
    assert joint.obs[compare_view.GROUP_KEY].value_counts().to_dict() == {
        "control": 16, "real perturbed": 16, "predicted": 6}
    assert joint.obsm["X_umap"].shape == (38, 2)

    # Metrics against the 16 real stimulated cells, with the controls as the baseline.
    comparison = predicted.uns["c2s"]["perturb_comparison"]
    # AppTest does not expose dataframe keys: in page order, metrics, up, down, program.
    metrics, up, down, program = (d.value for d in at.dataframe)
    assert list(metrics.index) == ["Predicted vs real perturbed",
                                   "Controls vs real perturbed (baseline)"]
    assert list(metrics.columns) == ["scFID", "MMD", "Wasserstein"]
    assert metrics.loc["Predicted vs real perturbed", "MMD"] == pytest.approx(
        comparison["predicted_vs_real"]["summary"]["mmd"])

    # Up/down tables are the mean changes of the predicted cells from the controls.
    shift = compare_view.mean_shift(joint, "control")
    expected_up = shift["change predicted"].sort_values(ascending=False)
    expected_up = expected_up[expected_up > 0].head(15)
    assert list(up.index) == list(expected_up.index)
    np.testing.assert_allclose(up["change predicted"], expected_up.to_numpy())
    assert (down["change predicted"] < 0).all() and (down["change predicted"].diff()[1:] >= 0).all()

    assert at.selectbox(key="c2s_pt_program").value == "Interferon response (type I ISGs)"
    assert list(program.index) == ["control", "real perturbed", "predicted"]
    assert list(program["n_cells"]) == [16, 16, 6]
    assert any(c.startswith("7 of 30 genes of the set are measured here: ISG20, IFITM1")
               for c in webapp.texts(at.caption))
    assert [c.key for c in at.get("plotly_chart")] == ["c2s_pt_umap"]
    assert {b.key for b in at.get("download_button")} == {"c2s_pt_dl_h5ad", "c2s_pt_dl_csv"}

    # A GMT upload replaces the built-in programs.
    at.radio(key="c2s_pt_program_kind").set_value("Upload a GMT file").run()
    at.file_uploader(key="c2s_pt_gmt").upload(
        "mine.gmt", b"MINE\tmy program\tIRF7\tly6e\tNOPE\n", "text/plain")
    at.run()
    assert not at.exception
    assert at.selectbox(key="c2s_pt_program").options == ["MINE"]
    assert any(c.startswith("2 of 3 genes of the set are measured here: IRF7, LY6E.")
               for c in webapp.texts(at.caption))
    at.selectbox(key="c2s_pt_color").set_value(compare_view.SCORE_KEY).run()
    assert not at.exception

    # Saved: the dataset with the provenance, and both result tables (h5ad round trip).
    workspace = at.session_state[state.WORKSPACE_KEY]
    saved = ad.read_h5ad(workspace.path / "perturb_predicted.h5ad")
    assert list(saved.obs["c2s_control_cell"]) == list(predicted.obs["c2s_control_cell"])
    assert saved.uns["c2s"]["perturb"]["time"] == prov["time"]
    assert ad.read_h5ad(workspace.dataset_path()).uns["c2s"]["perturb"]["time"] == prov["time"]

    # A refreshed tab (new session, same workspace in the URL) gets the results back.
    again = webapp.open(PAGE, query={"ws": workspace.id})
    assert not again.exception
    assert again.dataframe[0].value.shape == (2, 3)
    assert [c.key for c in again.get("plotly_chart")] == ["c2s_pt_umap"]


def test_contrast_with_another_cell_type_reaches_the_prediction(webapp, conditions):
    at = webapp.open(PAGE, dataset=conditions)
    assert at.number_input(key="c2s_pt_contrast_weight").disabled  # off until a column is chosen
    at.text_input(key="c2s_pt_text").set_value("IFN-beta")
    at.number_input(key="c2s_pt_n").set_value(4)
    at.selectbox(key="c2s_pt_contrast_by").set_value("bulk_labels").run()
    assert at.number_input(key="c2s_pt_contrast_weight").value == 0.75
    at.button(key="c2s_pt_run").click().run()
    _finish_job(at)
    params = at.session_state[state.DATASET_KEY].adata.uns["c2s"]["perturb"]["params"]
    assert params["contrast_weight"] == 0.75 and params["contrast_key"] == "bulk_labels"
    assert params["n_contrast_cells"] == 16  # every control cell
    assert params["n_cells"] == 4


def test_restricting_to_some_cell_types_makes_their_column_the_contrast(webapp, conditions):
    at = webapp.open(PAGE, dataset=conditions)
    assert at.selectbox(key="c2s_pt_contrast_by").value == "(none)"
    at.selectbox(key="c2s_pt_restrict").set_value("bulk_labels").run()
    assert not at.exception
    assert at.selectbox(key="c2s_pt_contrast_by").value == "bulk_labels"
    assert not at.number_input(key="c2s_pt_contrast_weight").disabled


def test_results_of_an_earlier_dataset_are_not_shown(webapp, conditions, tmp_path):
    predicted = ad.AnnData(np.zeros((2, 3), np.float32))
    predicted.uns["c2s"] = {"perturb": {"time": "2026-01-01T00:00:00+00:00"}}
    session: dict = {state.DATASET_KEY: conditions}
    saved_results.save_cells(state.session_workspace(session), "perturb_predicted", predicted)
    # The current dataset has no perturbation run: nothing to show.
    assert saved_results.current_result(session, "k", "perturb", ("perturb_predicted",)) is None
    conditions.adata.uns["c2s"]["perturb"] = {"time": "2026-01-01T00:00:00+00:00"}
    found = saved_results.current_result(session, "k", "perturb", ("perturb_predicted",))
    assert found["perturb_predicted"].shape == (2, 3)
    conditions.adata.uns["c2s"]["perturb"] = {"time": "2026-02-02T00:00:00+00:00"}
    assert saved_results.current_result(session, "k", "perturb", ("perturb_predicted",)) is None


# --- engine: compare_view -----------------------------------------------------------------------


def _cells(values, genes, prefix):
    return ad.AnnData(sp.csr_matrix(np.asarray(values, np.float32)),
                      obs=pd.DataFrame(index=[f"{prefix}{i}" for i in range(len(values))]),
                      var=pd.DataFrame(index=genes))


def test_joint_cells_align_genes_and_name_groups():
    control = _cells([[1, 2, 0], [3, 0, 0]], ["A", "B", "C"], "c")
    predicted = _cells([[5, 7]], ["C", "A"], "p")  # other gene order, B missing
    empty = _cells(np.zeros((0, 3)), ["A", "B", "C"], "e")
    joint = compare_view.joint_cells({"control": control, "none": empty, "predicted": predicted})
    assert list(joint.obs_names) == ["control:c0", "control:c1", "predicted:p0"]
    assert list(joint.obs["c2s_group"].cat.categories) == ["control", "predicted"]
    assert list(joint.obs["c2s_cell"]) == ["c0", "c1", "p0"]
    np.testing.assert_array_equal(joint.X.toarray(), [[1, 2, 0], [3, 0, 0], [7, 0, 5]])
    with pytest.raises(GroupingError, match="every group of cells to compare is empty"):
        compare_view.joint_cells({"none": empty})


def test_mean_shift_and_top_changes():
    joint = compare_view.joint_cells({
        "control": _cells([[1, 2, 0, 4], [3, 0, 0, 4]], list("ABCD"), "c"),
        "predicted": _cells([[0, 3, 1, 4], [0, 3, 3, 4]], list("ABCD"), "p")})
    shift = compare_view.mean_shift(joint, "control")
    assert list(shift.columns) == ["mean control", "mean predicted", "change predicted"]
    np.testing.assert_allclose(shift["change predicted"], [-2, 2, 2, 0])
    up, down = compare_view.top_changes(shift, "predicted", n=1)
    assert list(up.index) == ["B"] and list(down.index) == ["A"]  # D (no change) in neither
    with pytest.raises(GroupingError, match="there are no 'real' cells"):
        compare_view.mean_shift(joint, "real")


def test_program_scores_match_genes_ignoring_case(pbmc68k_copy):
    joint = compare_view.joint_cells({"a": pbmc68k_copy[:20], "b": pbmc68k_copy[20:30]})
    assert compare_view.match_genes(["irf7", "Ly6e", "NOPE", "IRF7"], joint.var_names) == [
        "IRF7", "LY6E"]
    summary, info = compare_view.program_scores(joint, ["irf7", "LY6E", "NOPE"])
    assert info == {"genes_used": ["IRF7", "LY6E"], "n_genes_program": 3}
    assert list(summary.index) == ["a", "b"] and list(summary["n_cells"]) == [20, 10]
    scores = joint.obs[compare_view.SCORE_KEY]
    assert summary.loc["b", "mean"] == pytest.approx(scores.iloc[20:].mean())
    with pytest.raises(GeneSetFileError) as info:
        compare_view.program_scores(joint, ["NOPE1", "NOPE2"])
    assert str(info.value) == ("none of the program's 2 genes (NOPE1, NOPE2) is measured in this "
                               "dataset. Fix: choose a program of genes measured here, or upload "
                               "a GMT file.")


def test_prediction_metrics_use_the_controls_as_baseline(pbmc68k_copy):
    real = pbmc68k_copy[:40]
    metrics = compare_view.prediction_metrics(pbmc68k_copy[40:80], real, real,
                                              n_components=5)
    assert metrics["predicted_vs_real"]["summary"]["scfid"] == pytest.approx(0, abs=1e-6)
    assert metrics["predicted_vs_real"]["summary"]["wasserstein"] == pytest.approx(0, abs=1e-9)
    assert metrics["control_vs_real"]["summary"]["scfid"] > 0.1
    assert metrics["condition_key"] == []
    assert metrics["pearson_delta"] == pytest.approx(1.0)  # the same change as the real one


# --- gene programs ------------------------------------------------------------------------------


def test_gmt_upload_parsing_and_errors():
    sets = genesets.parse_gmt(b"IFN\tdesc\tISG15\tIFI6\tISG15\n\nMHC\t\tB2M\n", "mine.gmt")
    assert sets == {"IFN": ["ISG15", "IFI6"], "MHC": ["B2M"]}
    with pytest.raises(GeneSetFileError) as info:
        genesets.parse_gmt(b"IFN ISG15 IFI6\n", "../x/bad.gmt")
    assert str(info.value).startswith("bad.gmt line 1 is not a GMT gene set")
    with pytest.raises(GeneSetFileError, match="is not a UTF-8 text file"):
        genesets.parse_gmt(b"\xff\xfe\x00bad", "bin.gmt")


def test_built_in_programs_are_short_distinct_symbol_lists():
    assert set(genesets.BUILT_IN) == {"Interferon response (type I ISGs)",
                                      "MHC class I antigen presentation"}
    for genes in genesets.BUILT_IN.values():
        assert 10 <= len(genes) <= 40 and len(set(genes)) == len(genes)
