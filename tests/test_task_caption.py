"""caption_clusters and set_caption (tiny random models: assert on evidence, keys and
packing, never on the garbage captions)."""

from __future__ import annotations

import anndata as ad
import pandas as pd
import pytest

from c2s_engine.errors import GroupingError, ObsColumnError, TaskOptionError
from c2s_engine.models import load_model
from c2s_engine.packing import count_tokens
from c2s_engine.tasks.caption import caption_clusters, captions_table, set_caption
from c2s_engine.tasks.facts import marker_genes
from c2s_engine.tasks.runtime import TaskNotSupportedError, cell_sentences
from c2s_engine.validation import prepare

pytest_plugins = ["tiny_checkpoints"]

TEXT_CARD = {"base": "vandijklab/C2S-Scale-Gemma-2-2B", "context_length": 256, "top_k": 16,
             "tasks": ["cluster_captioning", "natural_language_interpretation",
                       "question_answering"]}


@pytest.fixture(scope="module")
def text_model(build_checkpoint, tmp_path_factory):
    path = build_checkpoint(tmp_path_factory.mktemp("text") / "gpt_neox", "gpt_neox",
                            card=TEXT_CARD)
    return load_model(str(path), precision="fp32", device="cpu")


@pytest.fixture(scope="module")
def prepared(pbmc68k):
    adata = pbmc68k[:30].copy()
    prepare(adata)
    adata.obs["group"] = pd.Categorical(
        adata.obs["louvain"].astype(str).map({"0": "T", "1": "Mono"}).fillna("Other"))
    return adata


@pytest.fixture
def adata(prepared):
    return prepared.copy()


def test_every_cluster_gets_a_caption_with_its_evidence(adata, text_model):
    result = caption_clusters(adata, text_model, groupby="group", n_cells=4, max_new_tokens=8,
                              n_markers=3)
    sizes = adata.obs["group"].value_counts()
    assert sorted(result.captions) == ["Mono", "Other", "T"]
    markers = marker_genes(adata, "group", n_genes=3)
    for cluster in result.clusters:
        members = set(adata.obs_names[adata.obs["group"] == cluster.cluster])
        assert cluster.n_cells == sizes[cluster.cluster]
        assert 1 <= len(cluster.cells_used) <= 4 and set(cluster.cells_used) <= members
        assert cluster.markers == markers[cluster.cluster]
        positions = adata.obs_names.get_indexer(cluster.cells_used)
        sentences = cell_sentences(adata, 16, positions)
        for i, sentence in enumerate(sentences, start=1):
            assert f"Cell {i}:\n{sentence}.\n" in cluster.prompt
        assert cluster.prompt.endswith("Cluster caption:")
        # Top genes: those in the most used cells first.
        counts = [sum(g in s.split() for s in sentences) for g in cluster.top_genes]
        assert counts == sorted(counts, reverse=True) and counts[0] == len(sentences)
        assert cluster.n_tokens == count_tokens(text_model.tokenizer, cluster.prompt)
        assert cluster.n_tokens <= cluster.budget == 256 - 8
    # Per cell: its cluster's caption.
    expected = adata.obs["group"].astype(str).map(result.captions)
    assert (adata.obs["c2s_caption"].astype(str) == expected).all()
    prov = adata.uns["c2s"]["caption_clusters"]
    assert prov["task"] == "cluster_captioning" and prov["template"] == "cluster_captioning:0"
    assert prov["top_k"] == 16 and prov["seed"] == 0 and prov["params"]["groupby"] == "group"


def test_cells_are_drawn_with_the_seed(adata, text_model):
    kwargs = {"groupby": "group", "n_cells": 3, "max_new_tokens": 4}
    first = caption_clusters(adata, text_model, seed=1, **kwargs)
    same = caption_clusters(adata, text_model, seed=1, **kwargs)
    other = caption_clusters(adata, text_model, seed=2, **kwargs)
    used = [c.cells_used for c in first.clusters]
    assert used == [c.cells_used for c in same.clusters]
    assert same.captions == first.captions
    assert used != [c.cells_used for c in other.clusters]
    # The repeat was answered from the result cache.
    assert same.provenance["calls"]["n_cached"] == 3


def test_cells_are_packed_to_the_context_budget(adata, text_model):
    result = caption_clusters(adata, text_model, groupby="group", n_cells=10, max_new_tokens=8,
                              context_length=140)
    largest = result.clusters[0]
    assert 1 <= len(largest.cells_used) < 10  # 10 cells of 16 genes cannot fit 132 tokens
    assert all(c.n_tokens <= c.budget == 132 for c in result.clusters)
    # One cell more would not have fitted.
    positions = adata.obs_names.get_indexer(largest.cells_used)
    assert largest.n_tokens + len(cell_sentences(adata, 16, positions[:1])[0].split()) > 132
    tight = caption_clusters(adata, text_model, groupby="group", n_cells=3, max_new_tokens=8,
                             context_length=85)
    for cluster in tight.clusters:  # not even one whole cell: its top genes that fit
        assert len(cluster.cells_used) == 1 and cluster.n_tokens <= 77
        line = cluster.prompt.split("Cell 1:\n")[1].split(".\n")[0]
        assert 1 <= len(line.split()) < 16


def test_set_caption_updates_both_places_and_marks_the_edit(adata, text_model):
    result = caption_clusters(adata, text_model, groupby="group", n_cells=2, max_new_tokens=4)
    set_caption(adata, "Mono", "  Classical   monocytes ")
    table = captions_table(adata).set_index("cluster")
    assert table.loc["Mono", "caption"] == "Classical monocytes" and table.loc["Mono", "edited"]
    assert table.loc["T", "caption"] == result.captions["T"] and not table.loc["T", "edited"]
    mono = adata.obs["group"] == "Mono"
    assert (adata.obs.loc[mono, "c2s_caption"] == "Classical monocytes").all()
    assert (adata.obs.loc[~mono, "c2s_caption"] != "Classical monocytes").all()
    listed = ", ".join(repr(c) for c in table.index)  # largest cluster first
    with pytest.raises(GroupingError) as error:
        set_caption(adata, "B", "B cells")
    assert str(error.value) == (f"group has no cluster 'B'; its clusters are {listed}. "
                                "Fix: pass one of these names.")
    with pytest.raises(TaskOptionError, match="the new caption of cluster 'T' is empty"):
        set_caption(adata, "T", "  ")
    fresh = adata.copy()
    del fresh.uns["c2s"]["captions"]
    with pytest.raises(TaskOptionError, match="no cluster captions yet"):
        set_caption(fresh, "T", "T cells")


def test_captions_with_slashes_in_names_survive_h5ad(pbmc68k, text_model, tmp_path):
    adata = pbmc68k[:12].copy()
    prepare(adata)
    caption_clusters(adata, text_model, groupby="bulk_labels", n_cells=2, max_new_tokens=4)
    names = set(adata.obs["bulk_labels"].astype(str))
    assert any("/" in n for n in names)
    adata.write_h5ad(tmp_path / "captions.h5ad")
    back = ad.read_h5ad(tmp_path / "captions.h5ad")
    table = captions_table(back)
    assert set(table["cluster"]) == names
    assert table.equals(captions_table(adata))
    slashed = next(n for n in names if "/" in n)
    set_caption(back, slashed, "regulatory T cells")
    assert (back.obs.loc[back.obs["bulk_labels"] == slashed, "c2s_caption"]
            == "regulatory T cells").all()
    back.write_h5ad(tmp_path / "edited.h5ad")
    edited = captions_table(ad.read_h5ad(tmp_path / "edited.h5ad")).set_index("cluster")
    assert edited.loc[slashed, "caption"] == "regulatory T cells" and edited.loc[slashed, "edited"]


def test_refusal_and_bad_groupby(adata, text_model, tiny_gemma2_dir):
    model = load_model(str(tiny_gemma2_dir), precision="fp32", device="cpu")
    with pytest.raises(TaskNotSupportedError, match="not trained for cluster_captioning"):
        caption_clusters(adata, model, groupby="group")
    with pytest.raises(ObsColumnError, match="'cluster' is not in adata.obs"):
        caption_clusters(adata, text_model, groupby="cluster")
    assert "captions" not in adata.uns["c2s"]
