"""predict_perturbation on Kang et al. IFN-beta PBMCs (control cells) with tiny random models."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import shared_file

from c2s_engine.errors import ContextBudgetError, ObsColumnError, TaskOptionError
from c2s_engine.models import load_model
from c2s_engine.reverse import reconstruct
from c2s_engine.tasks.perturb import (
    answer_tokens,
    contrasting_sentences,
    label_columns,
    predict_perturbation,
    replicate_index,
)
from c2s_engine.tasks.runtime import TaskNotSupportedError, TaskNotSupportedWarning, cell_sentences
from c2s_engine.validation import prepare

pytest_plugins = ["tiny_checkpoints"]

CARD = {"base": "vandijklab/C2S-Scale-Gemma-2-2B", "tasks": ["perturbation_response"],
        "context_length": 256, "top_k": 12}


@pytest.fixture(scope="module")
def model(build_checkpoint, tmp_path_factory):
    """Tiny Gemma-2 whose card lists perturbation_response (context 256, top_k 12)."""
    folder = build_checkpoint(tmp_path_factory.mktemp("perturb") / "gemma2", "gemma2", card=CARD)
    return load_model(str(folder), "fp32", "cpu")


@pytest.fixture(scope="module")
def kang_block():
    """30 Kang PBMCs (control and stimulated, several cell types), prepared."""
    adata = ad.read_h5ad(shared_file("kang_pbmc_ifnb/kang_pbmc_ifnb.h5ad"))[:30].copy()
    prepare(adata)
    return adata


@pytest.fixture
def kang(kang_block):
    return kang_block.copy()


def _controls(adata):
    return adata.obs_names[adata.obs["condition"] == "control"]


def test_replicate_index_counts_earlier_draws():
    assert replicate_index(np.array([5, 3, 5, 5, 3, 7])).tolist() == [0, 0, 1, 2, 1, 0]


def test_label_columns_are_the_text_and_category_columns():
    adata = ad.AnnData(np.ones((2, 1), np.float32), obs=pd.DataFrame(
        {"cell_type": pd.Categorical(["B", "T"]), "donor": ["a", "b"], "flag": [True, False],
         "n_counts": [10.0, 20.0]}, index=["c1", "c2"]))
    assert label_columns(adata) == ["cell_type", "donor", "flag"]
    assert label_columns(adata, exclude=["donor"]) == ["cell_type", "flag"]


def test_predicted_cells_structure_provenance_and_round_trip(model, kang, tmp_path):
    controls = _controls(kang)
    out = predict_perturbation(kang, "IFN-beta", model, control_key="condition",
                               control_value="control", n=6, seed=1, max_new_tokens=10)
    assert out.shape == (6, kang.n_vars)
    assert out.var_names.tolist() == kang.var_names.tolist()
    assert out.obs_names.tolist() == [f"c2s_perturbed_{i}" for i in range(6)]
    assert out.obs["c2s_generated"].all()
    assert (out.obs["c2s_perturbation"] == "IFN-beta").all()
    sources = out.obs["c2s_control_cell"].tolist()
    assert set(sources) <= set(controls) and len(set(sources)) == 6  # drawn without replacement
    assert out.obs["cell_type"].astype(str).tolist() == \
        kang.obs.loc[sources, "cell_type"].astype(str).tolist()
    assert "condition" not in out.obs  # it would call the predicted cells controls
    rebuilt = reconstruct(out.obs["cell_sentence"], kang, kang.uns["c2s"]["reverse"])
    np.testing.assert_allclose(out.X.toarray(), rebuilt.X.toarray())

    prov = kang.uns["c2s"]["perturb"]
    assert out.uns["c2s"]["perturb"] == prov
    assert prov["task"] == "perturbation_response" and prov["card_lists_task"] is True
    assert prov["top_k"] == 12 and prov["seed"] == 1
    assert prov["params"]["perturbation"] == "IFN-beta"
    assert prov["params"]["n_controls"] == len(controls)
    assert prov["params"]["control_value"] == "control"
    assert prov["params"]["max_new_tokens"] == 10
    assert out.uns["c2s"]["identifiers"]["organism"] == "Homo sapiens"

    path = tmp_path / "predicted.h5ad"
    out.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert back.obs["c2s_control_cell"].tolist() == sources
    assert back.uns["c2s"]["perturb"]["params"]["perturbation"] == "IFN-beta"
    kang.write_h5ad(tmp_path / "input.h5ad")
    assert ad.read_h5ad(tmp_path / "input.h5ad").uns["c2s"]["perturb"]["task"] == \
        "perturbation_response"


def test_without_n_every_control_is_used_once_in_order(model, kang):
    chosen = kang.obs_names[[0, 3, 4]]
    out = predict_perturbation(kang, "IFN-beta", model, cells=chosen, max_new_tokens=6)
    assert out.obs["c2s_control_cell"].tolist() == chosen.tolist()
    assert out.uns["c2s"]["perturb"]["params"]["n_unique_controls"] == 3


def test_more_cells_than_controls_draws_with_replacement_and_sampled_repeats_differ(model, kang):
    chosen = kang.obs_names[:2]
    out = predict_perturbation(kang, "IFN-beta", model, cells=chosen, n=6, do_sample=True,
                               seed=0, max_new_tokens=10, cache=False)
    sources = out.obs["c2s_control_cell"]
    assert set(sources) <= set(chosen) and out.uns["c2s"]["perturb"]["params"][
        "n_unique_controls"] <= 2
    # A control drawn several times is generated with seed, seed + 1, ...: not copies.
    repeated = sources[sources == sources.iloc[0]].index
    assert out.obs.loc[repeated, "cell_sentence"].nunique() > 1


def test_same_seed_same_cells_other_seed_other_cells(model, kang):
    kwargs = {"control_key": "condition", "control_value": "control", "n": 4,
              "do_sample": True, "max_new_tokens": 10, "cache": False}
    first = predict_perturbation(kang, "IFN-beta", model, seed=7, **kwargs)
    second = predict_perturbation(kang, "IFN-beta", model, seed=7, **kwargs)
    other = predict_perturbation(kang, "IFN-beta", model, seed=8, **kwargs)
    assert first.obs["c2s_control_cell"].tolist() == second.obs["c2s_control_cell"].tolist()
    assert first.obs["cell_sentence"].tolist() == second.obs["cell_sentence"].tolist()
    np.testing.assert_array_equal(first.X.toarray(), second.X.toarray())
    assert other.obs["cell_sentence"].tolist() != first.obs["cell_sentence"].tolist()


def test_repeated_call_comes_from_the_cache(model, kang):
    kwargs = {"cells": kang.obs_names[:3], "max_new_tokens": 6}
    first = predict_perturbation(kang, "IFN-beta", model, **kwargs)
    second = predict_perturbation(kang, "IFN-beta", model, **kwargs)
    assert second.uns["c2s"]["perturb"]["calls"]["n_cached"] == 3
    assert second.obs["cell_sentence"].tolist() == first.obs["cell_sentence"].tolist()


def test_answer_length_is_capped_by_the_context(model):
    prompt = "Control cell sentence: " + " ".join(["CD74"] * 40) + ".\nPerturbed cell sentence:"
    prompt_tokens = len(model.tokenizer(prompt)["input_ids"])
    assert answer_tokens(model, [prompt], ["CD74 LYZ"], 10_000) == 256 - prompt_tokens
    # By default: the longest input cell (2 genes, one token each) plus 8 tokens.
    assert answer_tokens(model, [prompt], ["CD74 LYZ", "B2M"], None) == 2 + 8
    with pytest.raises(ContextBudgetError, match="leaving no room for an answer"):
        answer_tokens(model, [" ".join(["CD74"] * 300)], ["CD74"], None)


def test_model_without_the_task_is_refused_or_marked(tiny_gemma2_dir, kang):
    spatial_only = load_model(str(tiny_gemma2_dir), "fp32", "cpu")
    with pytest.raises(TaskNotSupportedError, match="not trained for perturbation_response"):
        predict_perturbation(kang, "IFN-beta", spatial_only)
    with pytest.warns(TaskNotSupportedWarning):
        out = predict_perturbation(kang, "IFN-beta", spatial_only, cells=kang.obs_names[:1],
                                   max_new_tokens=4, allow_unsupported=True)
    assert out.uns["c2s"]["perturb"]["card_lists_task"] is False


def test_bad_control_selection_is_explained(model, kang):
    with pytest.raises(ObsColumnError, match="obs has no column 'treatment'"):
        predict_perturbation(kang, "IFN-beta", model, control_key="treatment",
                             control_value="ctrl")
    with pytest.raises(TaskOptionError, match=r"no cell has condition == 'ctrl' \(values: "
                                              r"control, stimulated\)"):
        predict_perturbation(kang, "IFN-beta", model, control_key="condition",
                             control_value="ctrl")
    with pytest.raises(TaskOptionError, match="perturbation name is empty"):
        predict_perturbation(kang, "  ", model)


def test_contrasting_cells_are_of_another_cell_type_and_follow_the_seed(kang):
    is_control = (kang.obs["condition"] == "control").to_numpy()
    drawn = np.flatnonzero(is_control)
    types = kang.obs["cell_type"].astype(str).to_numpy()
    type_of = {}
    for position, sentence in zip(drawn, cell_sentences(kang, 12, drawn), strict=True):
        type_of.setdefault(sentence, set()).add(types[position])
    got, n_pool = contrasting_sentences(kang, drawn, is_control, "cell_type", 12, seed=3)
    assert n_pool == is_control.sum() and len(got) == drawn.size
    for position, sentence in zip(drawn, got, strict=True):
        assert types[position] not in type_of[sentence]
    assert contrasting_sentences(kang, drawn, is_control, "cell_type", 12, seed=3)[0] == got
    others = [contrasting_sentences(kang, drawn, is_control, "cell_type", 12, seed=s)[0]
              for s in range(4, 8)]
    assert any(o != got for o in others)
    # Without a key any contrasting cell may come; an AnnData of cells works as well.
    pool = kang[is_control].copy()
    unkeyed, n_cells = contrasting_sentences(kang, drawn, pool, None, 12, seed=3)
    assert n_cells == pool.n_obs and set(unkeyed) <= set(type_of)


def test_a_contrast_without_another_cell_type_is_explained(kang):
    monocytes = np.flatnonzero(((kang.obs["condition"] == "control")
                                & (kang.obs["cell_type"] == "CD14+Mono")).to_numpy())
    with pytest.raises(TaskOptionError, match="no contrasting cell has a cell_type other than "
                                              "'CD14\\+Mono'"):
        contrasting_sentences(kang, monocytes, monocytes, "cell_type", 12, seed=0)
    with pytest.raises(ObsColumnError, match="no obs column 'lineage' to contrast by"):
        contrasting_sentences(kang, monocytes, None, "lineage", 12, seed=0)
    with pytest.raises(TaskOptionError, match="contrast_weight -1 is negative"):
        predict_perturbation(kang, "IFN-beta", "demo", contrast_weight=-1)


def test_contrastive_guidance_is_recorded_and_cached_apart_from_plain_answers(model, kang):
    controls = (kang.obs["condition"] == "control").to_numpy()
    kwargs = {"cells": controls, "max_new_tokens": 6, "seed": 2}
    plain = predict_perturbation(kang, "IFN-beta", model, **kwargs)
    guided = predict_perturbation(kang, "IFN-beta", model, contrast_weight=4.0,
                                  contrast_key="cell_type", **kwargs)
    params = guided.uns["c2s"]["perturb"]["params"]
    assert params["contrast_weight"] == 4.0 and params["contrast_key"] == "cell_type"
    assert params["n_contrast_cells"] == controls.sum()
    assert guided.uns["c2s"]["perturb"]["calls"]["n_cached"] == 0  # not the plain answers
    assert guided.obs["cell_sentence"].tolist() != plain.obs["cell_sentence"].tolist()
    again = predict_perturbation(kang, "IFN-beta", model, contrast_weight=4.0,
                                 contrast_key="cell_type", **kwargs)
    assert again.uns["c2s"]["perturb"]["calls"]["n_cached"] == controls.sum()
    assert again.obs["cell_sentence"].tolist() == guided.obs["cell_sentence"].tolist()
    assert plain.uns["c2s"]["perturb"]["params"]["contrast_weight"] == 0.0
    assert plain.uns["c2s"]["perturb"]["params"]["n_contrast_cells"] == 0
