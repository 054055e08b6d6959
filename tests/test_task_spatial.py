"""Spatial tasks: neighbour graphs, ligand-receptor context, niche labels, same-neighbourhood
questions and neighbour generation, on osmFISH mouse cortex cells and tiny random models."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import shared_file
from scipy.spatial.distance import cdist
from sklearn.metrics import accuracy_score

from c2s_engine.errors import InteractionTableError, SpatialDataError, TaskOptionError
from c2s_engine.models import load_model
from c2s_engine.reverse import reconstruct
from c2s_engine.tasks.ligrec import (
    HEADER,
    interaction_block,
    load_ligrec,
    matching_interactions,
)
from c2s_engine.tasks.neighborhoods import neighbor_graph, neighborhood_sets
from c2s_engine.tasks.runtime import TaskNotSupportedError, TaskNotSupportedWarning
from c2s_engine.tasks.spatial import (
    generate_neighbors,
    predict_niche,
    predict_same_neighborhood,
    spatial_neighbors,
)
from c2s_engine.validation import prepare

pytest_plugins = ["tiny_checkpoints"]

RADIUS = 300.0  # pixels of the osmFISH images; ~1-2 neighbours per cell


@pytest.fixture(scope="module")
def model(tiny_gemma2_dir):
    """Tiny Gemma-2 whose card lists spatial_* (context 256 tokens, top_k 16)."""
    return load_model(str(tiny_gemma2_dir), "fp32", "cpu")


@pytest.fixture(scope="module")
def osmfish_block():
    """The 40 valid osmFISH cells nearest one cell (a compact tissue patch), prepared."""
    adata = ad.read_h5ad(shared_file("osmfish_sscortex/osmfish_sscortex.h5ad"))
    adata = adata[adata.obs["Valid"] == 1]
    coords = np.asarray(adata.obsm["spatial"])
    nearest = np.argsort(cdist(coords[[100]], coords)[0])[:40]
    adata = adata[np.sort(nearest)].copy()
    prepare(adata)
    return adata


@pytest.fixture
def osmfish(osmfish_block):
    return osmfish_block.copy()


def _round_trip(adata, tmp_path):
    path = tmp_path / "out.h5ad"
    adata.write_h5ad(path)
    return ad.read_h5ad(path)


# ------------------------------------------------------------------ neighbour graphs

POINTS = np.array([[0, 0], [1, 0], [3, 0], [0, 2.5], [10, 10]], dtype=float)


def _points_adata(points=POINTS):
    return ad.AnnData(np.ones((len(points), 2), np.float32), obsm={"spatial": points})


def test_radius_graph_is_exact_on_hand_made_points():
    adata = _points_adata()
    summary = spatial_neighbors(adata, radius=2.0)
    # Distances: 0-1 = 1, 1-2 = 2 (on the radius: included), 0-3 = 2.5, 4 is far from all.
    expected = np.array([[0, 1, 0, 0, 0],
                         [1, 0, 1, 0, 0],
                         [0, 1, 0, 0, 0],
                         [0, 0, 0, 0, 0],
                         [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(adata.obsp["c2s_spatial_connectivities"].toarray(), expected)
    assert adata.uns["c2s"]["spatial_neighbors"] == {
        "method": "radius", "radius": 2.0, "key": "spatial", "mean_neighbors": 0.8,
        "n_isolated": 2}
    assert summary.method == "radius" and summary.n_isolated == 2


def test_knn_graph_is_exact_and_directed():
    adata = _points_adata()
    spatial_neighbors(adata, n_neighbors=1)
    graph = adata.obsp["c2s_spatial_connectivities"].toarray()
    # Nearest of each point: 0->1, 1->0, 2->1, 3->0, 4->2 (12.2 versus 12.5 to point 3).
    expected = np.zeros((5, 5))
    for i, j in [(0, 1), (1, 0), (2, 1), (3, 0), (4, 2)]:
        expected[i, j] = 1
    np.testing.assert_array_equal(graph, expected)
    assert adata.uns["c2s"]["spatial_neighbors"] == {
        "method": "knn", "n_neighbors": 1, "key": "spatial", "mean_neighbors": 1.0,
        "n_isolated": 0}


def test_default_is_six_nearest_neighbours():
    points = np.random.default_rng(0).uniform(size=(9, 2))
    adata = _points_adata(points)
    spatial_neighbors(adata)
    degree = np.diff(adata.obsp["c2s_spatial_connectivities"].indptr)
    assert degree.tolist() == [6] * 9
    assert adata.uns["c2s"]["spatial_neighbors"]["n_neighbors"] == 6


def test_missing_coordinates_explain_how_to_provide_them():
    adata = ad.AnnData(np.ones((3, 2), np.float32))
    with pytest.raises(SpatialDataError) as err:
        spatial_neighbors(adata, radius=1.0)
    message = str(err.value)
    assert "adata.obsm['spatial'] is missing" in message
    assert "n_cells x 2 array" in message and "Fix:" in message


def test_malformed_coordinates_and_options_are_refused():
    adata = _points_adata()
    adata.obsm["spatial"] = np.ones((5, 1))
    with pytest.raises(SpatialDataError, match=r"shape \(5, 1\), not n_cells x 2"):
        spatial_neighbors(adata, radius=1.0)
    adata.obsm["spatial"] = POINTS.copy()
    adata.obsm["spatial"][2, 0] = np.nan
    with pytest.raises(SpatialDataError, match="1 cells have NaN or infinite coordinates"):
        spatial_neighbors(adata, radius=1.0)
    with pytest.raises(TaskOptionError, match="not both"):
        neighbor_graph(POINTS, radius=1.0, n_neighbors=2)
    with pytest.raises(TaskOptionError, match="between 1 and 4"):
        neighbor_graph(POINTS, n_neighbors=5)


# ------------------------------------------------------------------ ligand-receptor tables

LIGREC_CSV = """Ligand,Receptor,pathway
TGFB1,TGFBR1_TGFBR2,TGFb
TGFB1,ACVR1B_TGFBR2,TGFb
CXCL12,CXCR4,CXCL
,CD74,MIF
VIP,VIPR1,VIP
TGFB1,TGFBR1_TGFBR2,TGFb
VIP,Vipr1,VIP
"""


def test_ligrec_table_keeps_pairs_whose_genes_are_all_expressed(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(LIGREC_CSV, encoding="utf-8")
    table = load_ligrec(path)
    assert table.columns.tolist() == ["ligand", "receptor"]
    assert len(table) == 6  # the row without a ligand is dropped
    # Mouse spelling matches the human table without case; the complex needs both subunits.
    genes = {"Tgfb1", "Tgfbr1", "Tgfbr2", "Cxcl12", "Vip", "Vipr1"}
    found = matching_interactions(table, genes)
    assert found == [(("Tgfb1",), ("Tgfbr1", "Tgfbr2")), (("Vip",), ("Vipr1",))]
    assert matching_interactions(table, genes, limit=1) == found[:1]
    assert matching_interactions(table, {"Tgfb1", "Tgfbr1"}) == []
    assert interaction_block(found) == (
        f"{HEADER}\nTgfb1 - Tgfbr1_Tgfbr2\nVip - Vipr1\n\n")
    assert interaction_block([]) == ""


def test_ligrec_table_without_named_columns_says_how_to_name_them():
    path = shared_file("ligrec/CellChatDB.ligrec.human.csv")  # header: ,0,1,2,3
    with pytest.raises(InteractionTableError) as err:
        load_ligrec(path)
    assert "no 'ligand' and 'receptor' columns (it has: 'Unnamed: 0', '0', '1', '2', '3')" \
        in str(err.value)
    assert "--ligrec-columns" in str(err.value)
    table = load_ligrec(path, columns=("0", "1"))
    assert len(table) == 1939
    assert table.iloc[0].tolist() == ["TGFB1", "TGFBR1_TGFBR2"]


def test_missing_ligrec_file_is_named(tmp_path):
    with pytest.raises(InteractionTableError, match="nope.csv does not exist"):
        load_ligrec(tmp_path / "nope.csv")


# ------------------------------------------------------------------ niche labels

def test_scored_niche_prediction_writes_labels_confidence_and_metrics(model, osmfish, tmp_path):
    result = predict_niche(osmfish, model, labels_from="Region", top_k=12)
    regions = list(osmfish.obs["Region"].cat.categories)
    predicted = osmfish.obs["c2s_niche"]
    assert list(predicted.cat.categories) == regions
    assert predicted.notna().all()
    confidence = osmfish.obs["c2s_niche_confidence"].to_numpy()
    assert ((confidence > 0) & (confidence <= 1)).all()
    np.testing.assert_allclose(confidence, result.confidence.to_numpy())
    prov = osmfish.uns["c2s"]["spatial_niche"]
    assert prov["task"] == "spatial_niche_label_prediction" and prov["card_lists_task"]
    assert prov["params"]["mode"] == "scored" and prov["params"]["candidates"] == regions
    expected = accuracy_score(osmfish.obs["Region"].astype(str), predicted.astype(str))
    assert prov["metrics"]["accuracy"] == pytest.approx(expected)
    assert prov["metrics"]["truth_key"] == "Region"
    assert np.asarray(prov["metrics"]["confusion"]).sum() == osmfish.n_obs
    back = _round_trip(osmfish, tmp_path)
    assert back.obs["c2s_niche"].astype(str).tolist() == predicted.astype(str).tolist()
    assert back.uns["c2s"]["spatial_niche"]["metrics"]["accuracy"] == pytest.approx(expected)


def test_repeated_niche_call_comes_from_the_cache(model, osmfish):
    first = predict_niche(osmfish, model, labels_from="Region", top_k=10)
    second = predict_niche(osmfish, model, labels_from="Region", top_k=10)
    assert second.stats.n_cached == osmfish.n_obs
    pd.testing.assert_series_equal(first.labels, second.labels)


def test_free_text_niche_on_selected_cells(model, osmfish):
    chosen = osmfish.obs_names[:5]
    result = predict_niche(osmfish, model, cells=chosen, top_k=8, max_new_tokens=4)
    assert result.labels.index.tolist() == chosen.tolist()
    assert osmfish.obs.loc[chosen, "c2s_niche"].notna().all()
    assert osmfish.obs["c2s_niche"].isna().sum() == osmfish.n_obs - 5
    assert "c2s_niche_confidence" not in osmfish.obs
    prov = osmfish.uns["c2s"]["spatial_niche"]
    assert prov["params"]["mode"] == "free_text" and prov["params"]["max_new_tokens"] == 4
    assert "metrics" not in prov


def test_niche_prompts_carry_the_interactions_expressed_in_the_cell(model, osmfish):
    table = pd.DataFrame({"ligand": ["GAD2", "PLP1"], "receptor": ["SLC32A1", "NOT_A_GENE"]})
    result = predict_niche(osmfish, model, labels=["Layer 6", "White matter"], top_k=16,
                           ligrec=table, cells=osmfish.obs_names[:10])
    sentences = osmfish.obs_names[:10]
    from c2s_engine.sentences import get_sentences

    for prompt, sentence in zip(result.prompts, get_sentences(osmfish, n_genes=16,
                                                              cells=sentences), strict=True):
        genes = set(sentence.split())
        if {"Gad2", "Slc32a1"} <= genes:
            assert prompt.startswith(f"{HEADER}\nGad2 - Slc32a1\n\nThe following")
        else:
            assert prompt.startswith("The following")
    assert osmfish.uns["c2s"]["spatial_niche"]["params"]["ligrec"] is True


def test_unsupported_model_is_refused_or_marked(tiny_gpt_neox_dir, osmfish):
    other = load_model(str(tiny_gpt_neox_dir), "fp32", "cpu")
    with pytest.raises(TaskNotSupportedError, match="spatial_niche_label_prediction"):
        predict_niche(osmfish, other, labels_from="Region")
    with pytest.warns(TaskNotSupportedWarning):
        predict_niche(osmfish, other, labels_from="Region", top_k=6,
                      cells=osmfish.obs_names[:3], allow_unsupported=True)
    assert osmfish.uns["c2s"]["spatial_niche"]["card_lists_task"] is False


# ------------------------------------------------------------------ same neighbourhood

def test_positive_sets_lie_within_the_radius_and_negatives_outside(osmfish):
    coords = np.asarray(osmfish.obsm["spatial"])
    graph = neighbor_graph(coords, radius=RADIUS)
    sets = neighborhood_sets(graph, n_pairs=10, max_cells=4, rng=np.random.default_rng(1))
    centers = [s.center for s in sets]
    assert len(sets) == 20 and centers[::2] == centers[1::2]
    assert len(set(centers[::2])) == 10
    for positive, negative in zip(sets[::2], sets[1::2], strict=True):
        assert positive.same and not negative.same
        assert len(positive.members) == len(negative.members) <= 4
        assert positive.center in positive.members and negative.center in negative.members
        distances = cdist(coords[[positive.center]], coords)[0]
        others = [m for m in positive.members if m != positive.center]
        assert (distances[others] <= RADIUS).all()
        far = [m for m in negative.members if m != negative.center]
        assert (distances[far] > RADIUS).all()


def test_same_neighborhood_table_accuracy_and_round_trip(model, osmfish, tmp_path):
    spatial_neighbors(osmfish, radius=RADIUS)
    result = predict_same_neighborhood(osmfish, model, n_pairs=4, max_cells=4, top_k=8, seed=3)
    table = result.table
    assert table.columns.tolist() == ["center", "same", "predicted", "p_yes", "n_cells",
                                      "members"]
    assert table["same"].tolist() == [True, False] * 4
    coords = pd.DataFrame(osmfish.obsm["spatial"], index=osmfish.obs_names)
    for row in table.itertuples():
        members = row.members.split(",")
        assert row.center in members and len(members) == row.n_cells
        gap = np.linalg.norm(coords.loc[members].to_numpy() - coords.loc[row.center].to_numpy(),
                             axis=1)
        others = np.array([m != row.center for m in members])
        assert (gap[others] <= RADIUS).all() if row.same else (gap[others] > RADIUS).all()
    assert ((table["p_yes"] >= 0) & (table["p_yes"] <= 1)).all()
    assert (table["predicted"] == (table["p_yes"] >= 0.5)).all()
    assert result.accuracy == pytest.approx((table["same"] == table["predicted"]).mean())
    truth, guess = table["same"].to_numpy(), table["predicted"].to_numpy()
    assert result.confusion.tolist() == [[int((truth & guess).sum()), int((truth & ~guess).sum())],
                                         [int((~truth & guess).sum()),
                                          int((~truth & ~guess).sum())]]
    stored = _round_trip(osmfish, tmp_path).uns["c2s"]["spatial_same_neighborhood"]
    assert stored["accuracy"] == pytest.approx(result.accuracy)
    assert stored["n_positive"] == 4 and stored["n_negative"] == 4
    assert list(stored["table"]["members"]) == table["members"].tolist()
    assert stored["params"]["neighbors"]["radius"] == RADIUS
    again = predict_same_neighborhood(osmfish, model, n_pairs=4, max_cells=4, top_k=8, seed=3)
    pd.testing.assert_frame_equal(again.table, table)


def test_same_neighborhood_needs_the_graph(model, osmfish):
    with pytest.raises(SpatialDataError, match="run c2s_engine.tasks.spatial.spatial_neighbors"):
        predict_same_neighborhood(osmfish, model, n_pairs=2)


# ------------------------------------------------------------------ neighbour generation

def test_generated_neighbors_structure_and_determinism(model, osmfish, tmp_path):
    spatial_neighbors(osmfish, radius=RADIUS)
    centers = osmfish.obs_names[:3]
    kwargs = {"center_cells": centers, "n": 2, "top_k": 8, "do_sample": True, "seed": 5,
              "max_new_tokens": 8, "cache": False}
    out = generate_neighbors(osmfish, model, **kwargs)
    assert out.shape == (6, osmfish.n_vars)
    assert out.var_names.tolist() == osmfish.var_names.tolist()
    assert out.obs["c2s_generated"].all()
    assert out.obs["c2s_center_cell"].tolist() == np.repeat(centers, 2).tolist()
    graph = osmfish.obsp["c2s_spatial_connectivities"]
    for row in out.obs.itertuples():
        members = row.c2s_neighborhood.split(",")
        center = osmfish.obs_names.get_loc(row.c2s_center_cell)
        assert members[0] == row.c2s_center_cell and len(members) == row.c2s_n_context_cells
        near = set(osmfish.obs_names[graph[center].indices])
        assert set(members[1:]) <= near
    np.testing.assert_array_equal(
        out.obsm["spatial"], osmfish[np.repeat(centers, 2)].obsm["spatial"])
    rebuilt = reconstruct(out.obs["cell_sentence"], osmfish, osmfish.uns["c2s"]["reverse"])
    np.testing.assert_allclose(out.X.toarray(), rebuilt.X.toarray())
    prov = out.uns["c2s"]["spatial_neighbor_generation"]
    assert prov == osmfish.uns["c2s"]["spatial_neighbor_generation"]
    assert prov["params"]["max_new_tokens"] == 8 and prov["seed"] == 5

    again = generate_neighbors(osmfish, model, **kwargs)
    assert again.obs["cell_sentence"].tolist() == out.obs["cell_sentence"].tolist()
    other = generate_neighbors(osmfish, model, **{**kwargs, "seed": 6})
    assert other.obs["cell_sentence"].tolist() != out.obs["cell_sentence"].tolist()

    back = _round_trip(out, tmp_path)
    assert back.obs["c2s_neighborhood"].tolist() == out.obs["c2s_neighborhood"].tolist()
    assert back.uns["c2s"]["spatial_neighbor_generation"]["task"] == \
        "spatial_neighbor_generation"
