"""The evaluation helpers of :mod:`c2s_engine.training.evaluation` on hand-made cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from c2s_engine.errors import C2SError
from c2s_engine.training.evaluation import _halves, annotation_baselines, held_out_mask
from c2s_engine.training.records import RunRecord
from c2s_engine.validation import prepare


def _two_types(n_per_type: int = 20, seed: int = 0) -> AnnData:
    """Counts where type 'A' expresses genes g0-g4 and type 'B' genes g5-g9 (Poisson noise)."""
    rng = np.random.default_rng(seed)
    high = np.r_[np.full(5, 50.0), np.full(5, 1.0)]
    counts = np.vstack([rng.poisson(high, (n_per_type, 10)),
                        rng.poisson(high[::-1], (n_per_type, 10))]).astype(np.float32)
    adata = AnnData(X=counts, obs=pd.DataFrame(
        {"cell_type": ["A"] * n_per_type + ["B"] * n_per_type},
        index=[f"c{i}" for i in range(2 * n_per_type)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(10)]))
    prepare(adata, organism="Homo sapiens")  # the C2S-convention matrix the baselines read
    return adata


def test_baselines_separate_two_distinct_cell_types():
    adata = _two_types()
    scored = np.zeros(adata.n_obs, dtype=bool)
    scored[[0, 1, 2, 20, 21]] = True
    result = annotation_baselines(adata, scored, "cell_type", n_pcs=5, n_neighbors=3)
    for name in ("logistic_regression", "knn_pca"):
        assert result[name]["accuracy"] == 1.0 and result[name]["macro_f1"] == 1.0
        assert result[name]["n_train"] == 35 and result[name]["n_test"] == 5
    assert "LogisticRegression" in result["logistic_regression"]["method"]
    assert "PCA(5)" in result["knn_pca"]["method"]


def test_baselines_learn_only_from_unscored_cells():
    adata = _two_types()
    # Training labels swapped: a baseline that learns from the training cells alone must
    # then get every held-out cell wrong.
    scored = np.zeros(adata.n_obs, dtype=bool)
    scored[[0, 20]] = True
    adata.obs["swapped"] = np.where(scored, adata.obs["cell_type"],
                                    adata.obs["cell_type"].map({"A": "B", "B": "A"}))
    result = annotation_baselines(adata, scored, "swapped", n_pcs=5, n_neighbors=3)
    assert result["logistic_regression"]["accuracy"] == 0.0
    assert result["knn_pca"]["accuracy"] == 0.0


def test_baselines_need_training_cells():
    adata = _two_types(4)
    with pytest.raises(C2SError, match="no cell is left to fit the baselines on"):
        annotation_baselines(adata, np.ones(adata.n_obs, dtype=bool), "cell_type")


def test_halves_split_every_type_in_two():
    adata = _two_types(5)
    first, second = _halves(adata, "cell_type", seed=1)
    assert first.obs["cell_type"].value_counts().to_dict() == {"A": 2, "B": 2}
    assert second.obs["cell_type"].value_counts().to_dict() == {"A": 3, "B": 3}
    assert not set(first.obs_names) & set(second.obs_names)


def test_held_out_mask_reads_the_recorded_split():
    adata = _two_types(3)
    record = RunRecord(kind="pretrain", config={}, seed=0,
                       split={"test_cells": {"cells": ["c1", "c4"]}})
    mask, chosen = held_out_mask(adata, "data/cells.h5ad", record, "auto")
    assert chosen == "held-out" and adata.obs_names[mask].tolist() == ["c1", "c4"]
    mask, chosen = held_out_mask(adata, "data/cells.h5ad", record, "all")
    assert chosen == "all" and mask.all()
    mask, chosen = held_out_mask(adata, "other.h5ad", record, "auto")
    assert chosen == "all" and mask.all()
    with pytest.raises(C2SError, match="names no held-out cells of other.h5ad"):
        held_out_mask(adata, "other.h5ad", record, "held-out")
    record.split["test_cells"]["cells"] = ["x"]
    with pytest.raises(C2SError, match="none of the 1 held-out cells recorded for cells"):
        held_out_mask(adata, "data/cells.h5ad", record, "held-out")


def test_sentence_features_weight_genes_by_rank():
    from c2s_engine.training.evaluation import sentence_features

    values = np.array([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    features = sentence_features(values, 2)
    np.testing.assert_allclose(features, [[0, 1, 0, 1 / np.log2(3)], [1, 0, 0, 0]])


def test_sentence_baseline_sees_only_the_top_genes():
    # The label lives in the weakest genes: visible to the expression baselines, not to a
    # sentence of the top 5 genes, which is the same for both types.
    rng = np.random.default_rng(1)
    n = 40
    counts = np.tile(np.r_[np.full(5, 80.0), np.zeros(5)], (n, 1))
    kind = np.repeat(["A", "B"], n // 2)
    counts[kind == "A", 5:7] = 3.0
    counts[kind == "B", 7:9] = 3.0
    counts = rng.poisson(counts).astype(np.float32)
    counts[:, :5] = [100, 90, 80, 70, 60]  # one top-5 sentence for every cell
    adata = AnnData(X=counts, obs=pd.DataFrame({"cell_type": kind},
                                               index=[f"c{i}" for i in range(n)]),
                    var=pd.DataFrame(index=[f"g{i}" for i in range(10)]))
    prepare(adata, organism="Homo sapiens")
    scored = np.zeros(n, dtype=bool)
    scored[::4] = True
    result = annotation_baselines(adata, scored, "cell_type", n_pcs=5, n_neighbors=3,
                                  sentence_top_k=5)
    assert result["logistic_regression"]["accuracy"] == 1.0
    # Identical sentences: the majority training class for all, half the balanced test cells.
    assert result["logistic_regression_on_sentences"]["accuracy"] == 0.5
    assert "top-5 cell sentence" in result["logistic_regression_on_sentences"]["method"]
    widened = annotation_baselines(adata, scored, "cell_type", n_pcs=5, n_neighbors=3,
                                   sentence_top_k=9)
    assert widened["logistic_regression_on_sentences"]["accuracy"] == 1.0
