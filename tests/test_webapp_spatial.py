"""The Spatial neighborhoods page (AppTest) on real osmFISH coordinates, with the tiny model."""

from __future__ import annotations

import json
from dataclasses import replace

import anndata as ad
import numpy as np
import pytest
from conftest import shared_file
from sklearn.neighbors import NearestNeighbors

from c2s_engine.tasks.neighborhoods import CONNECTIVITIES_KEY
from webapp import state

pytest_plugins = ["tiny_checkpoints", "webapp_helpers"]

PAGE = "pages/7_Spatial_neighborhoods.py"
JOB = "c2s_spatial_job"
LIGREC = b"ligand,receptor,pathway\nBmp4,Pdgfra,test\nVtn,Flt1,test\n"


def _finish_job(at):
    assert at.session_state[JOB].wait(timeout=90)
    at.run()
    assert not at.exception
    return at


@pytest.fixture(scope="module")
def _osmfish(tmp_path_factory) -> state.LoadedDataset:
    # Loaded the way the Upload page loads a browser upload.
    path = shared_file("osmfish_sscortex/osmfish_sscortex.h5ad")
    with path.open("rb") as data:
        return state.load_upload(path.name, data, tmp_path_factory.mktemp("upload"))


@pytest.fixture
def osmfish(_osmfish) -> state.LoadedDataset:
    """The osmFISH cortex (6471 cells, 33 genes, obsm['spatial']): a private copy."""
    return replace(_osmfish, adata=_osmfish.adata.copy())


def _map_spec(at) -> dict:
    (chart,) = [c for c in at.get("plotly_chart") if c.proto.id and "c2s_sp_map" in c.proto.id]
    return json.loads(chart.proto.spec)


def test_without_coordinates_the_page_explains_how_to_add_them(webapp, small_example):
    at = webapp.open(PAGE, dataset=small_example)
    assert not at.exception
    assert at.title[0].value == "Spatial neighborhoods"
    (info,) = webapp.texts(at.info)
    assert info.startswith("This dataset has no spatial coordinates, so this page has nothing "
                           "to show. Fix: store each cell's x/y position as an n_cells x 2 "
                           "array in adata.obsm['spatial'] (obsm keys now: X_pca, X_umap)")
    assert "adata.obsm['spatial'] = xy[['x', 'y']].to_numpy()" in at.code[0].value
    assert not at.main.button


def test_map_neighbourhoods_niches_same_test_and_generation(webapp, osmfish):
    at = webapp.open(PAGE, dataset=osmfish)
    assert not at.exception
    adata = osmfish.adata
    coords = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    # Default radius: median distance to the 6th nearest cell, two significant digits.
    sixth = NearestNeighbors(n_neighbors=7).fit(coords).kneighbors(coords)[0][:, -1]
    radius = float(f"{np.median(sixth):.2g}")
    assert at.number_input(key="c2s_sp_radius").value == radius
    assert at.selectbox(key="c2s_sp_color").value == "Region"
    center = at.selectbox(key="c2s_sp_center").value
    assert center == adata.obs_names[np.argmin(((coords - coords.mean(0)) ** 2).sum(1))]
    spec = _map_spec(at)
    (circle,) = spec["layout"]["shapes"]
    x, y = coords[adata.obs_names.get_loc(center)]
    assert (circle["x0"], circle["x1"]) == pytest.approx((x - radius, x + radius))
    assert spec["layout"]["annotations"][0]["text"] == f"radius {radius:g}"
    # The model tasks that need neighbourhoods say so until they are built.
    assert webapp.texts(at.info).count("Build neighbourhoods first (above the map): this task "
                                       "draws its cells from them.") == 2

    at.button(key="c2s_sp_build").click().run()
    assert not at.exception
    (success,) = webapp.texts(at.success)
    built = at.session_state[state.DATASET_KEY].adata
    degree = np.diff(built.obsp[CONNECTIVITIES_KEY].indptr)
    assert success == (f"Built neighbourhoods: {degree.mean():.1f} neighbours per cell on "
                       f"average, {(degree == 0).sum():,} cells without neighbours.")
    assert built.uns["c2s"]["spatial_neighbors"]["radius"] == radius

    # Niche labels for a sample of 8 cells, scored against the Region candidates, with a
    # ligand-receptor table as context.
    at.file_uploader(key="c2s_sp_ligrec").upload("pairs.csv", LIGREC, "text/csv")
    at.run()
    assert "2 pairs loaded from pairs.csv." in webapp.texts(at.caption)
    assert at.selectbox(key="c2s_sp_niche_from").value == "Region"
    at.number_input(key="c2s_sp_niche_n").set_value(8)
    at.button(key="c2s_sp_niche_run").click().run()
    _finish_job(at)
    assert webapp.texts(at.success)[0].startswith("Predicted the niche of 8 cells in ")
    adata = at.session_state[state.DATASET_KEY].adata
    niche = adata.obs["c2s_niche"]
    assert niche.notna().sum() == 8
    assert set(niche.dropna().astype(str)) <= set(adata.obs["Region"].astype(str))
    prov = adata.uns["c2s"]["spatial_niche"]
    assert prov["params"]["ligrec"] and prov["params"]["ligrec_pairs"] == 2
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Cells compared"] == "8"
    assert metrics["Accuracy"] == f"{float(prov['metrics']['accuracy']):.1%}"
    assert at.selectbox(key="c2s_sp_color").value == "c2s_niche"

    at.number_input(key="c2s_sp_same_pairs").set_value(3)
    at.number_input(key="c2s_sp_same_cells").set_value(3)
    at.button(key="c2s_sp_same_run").click().run()
    _finish_job(at)
    same = at.session_state[state.DATASET_KEY].adata.uns["c2s"]["spatial_same_neighborhood"]
    n_sets = len(same["table"]["center"])
    assert webapp.texts(at.success)[0].startswith(
        f"Answered {n_sets} same-neighbourhood questions in ")
    assert 1 <= n_sets <= 6 and int(same["n_positive"]) + int(same["n_negative"]) == n_sets

    at.number_input(key="c2s_sp_gen_n").set_value(2)
    at.number_input(key="c2s_sp_gen_cells").set_value(3)
    at.button(key="c2s_sp_gen_run").click().run()
    _finish_job(at)
    assert webapp.texts(at.success)[0].startswith("Generated 2 neighbour cells in ")
    stamp, tables = at.session_state["c2s_spatial_generated"]
    generated = tables["spatial_generated"]
    assert list(generated.obs["c2s_center_cell"]) == [center, center]
    np.testing.assert_array_equal(generated.obsm["spatial"], [[x, y], [x, y]])
    downloads = {b.key for b in at.get("download_button")}
    assert downloads == {"c2s_sp_dl_niche", "c2s_sp_dl_same", "c2s_sp_dl_generated",
                         "c2s_sp_dl_h5ad"}

    # Everything is in the workspace: the dataset with its results, and the generated cells.
    workspace = at.session_state[state.WORKSPACE_KEY]
    saved = ad.read_h5ad(workspace.dataset_path())
    assert saved.obs["c2s_niche"].notna().sum() == 8
    assert CONNECTIVITIES_KEY in saved.obsp
    assert saved.uns["c2s"]["spatial_same_neighborhood"]["time"] == same["time"]
    back = ad.read_h5ad(workspace.path / "spatial_generated.h5ad")
    assert back.uns["c2s"]["spatial_neighbor_generation"]["time"] == stamp


def test_a_bad_ligand_receptor_table_and_a_model_without_spatial_tasks(
        webapp, osmfish, monkeypatch, qa_only_model_dir):
    monkeypatch.setenv("C2S_DEMO_MODEL", str(qa_only_model_dir))
    at = webapp.open(PAGE, dataset=osmfish)
    assert not at.exception
    warnings = webapp.texts(at.warning)
    assert len(warnings) == 3 and all(
        w.startswith("The current model, demo, was not trained for ") for w in warnings)
    # The map and neighbourhoods need no model.
    assert at.button(key="c2s_sp_build") is not None
    uploader = at.file_uploader(key="c2s_sp_ligrec")
    uploader.upload("empty.csv", b"", "text/csv")
    at.run()
    assert webapp.texts(at.error) == ["empty.csv cannot be read as a table (No columns to parse "
                                      "from file). Fix: save it as a comma-separated CSV with a "
                                      "header row."]
    at.file_uploader(key="c2s_sp_ligrec").clear().upload("pairs.csv", b"source,target\nA,B\n",
                                                         "text/csv")
    at.run()
    assert not at.exception and not at.error
    assert at.selectbox(key="c2s_sp_ligand").value == "source"
    assert at.selectbox(key="c2s_sp_receptor").value == "target"
    at.selectbox(key="c2s_sp_receptor").set_value("source").run()
    assert webapp.texts(at.error) == ["The ligand and receptor columns are both 'source'. Fix: "
                                      "choose the column of ligand genes and the column of "
                                      "receptor genes."]
