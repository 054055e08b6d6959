"""summarize_dataset (tiny random models: assert on the context, packing, reproducibility and
keys, never on the garbage text)."""

from __future__ import annotations

import anndata as ad
import pytest

from c2s_engine.models import load_model
from c2s_engine.packing import count_tokens
from c2s_engine.prompts import format_cells, get_template
from c2s_engine.tasks.facts import order_cells
from c2s_engine.tasks.runtime import TaskNotSupportedError, cell_sentences
from c2s_engine.tasks.summarize import summarize_dataset
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
    adata = pbmc68k[:40].copy()
    prepare(adata)
    return adata


@pytest.fixture
def adata(prepared):
    return prepared.copy()


def test_summary_holds_text_context_and_provenance_through_h5ad(adata, text_model, tmp_path):
    summary = summarize_dataset(adata, text_model, n_cells=3, max_new_tokens=8)
    assert summary.n_cells_used == len(summary.cells_used) == 3
    assert summary.n_genes_per_cell == 16 and summary.context_length == 256
    assert summary.prompt.endswith("Abstract summary:")
    assert "for 3 different Homo sapiens cells" in summary.prompt
    assert format_cells(summary.sentences) in summary.prompt
    positions = adata.obs_names.get_indexer(summary.cells_used)
    assert summary.sentences == cell_sentences(adata, 16, positions)
    assert summary.n_tokens == count_tokens(text_model.tokenizer, summary.prompt)
    assert summary.n_tokens <= summary.budget == 256 - 8
    adata.write_h5ad(tmp_path / "summary.h5ad")
    stored = ad.read_h5ad(tmp_path / "summary.h5ad").uns["c2s"]["summary"]
    assert stored["text"] == summary.text and list(stored["cells_used"]) == summary.cells_used
    assert stored["n_tokens"] == summary.n_tokens and stored["budget"] == summary.budget
    assert stored["prompt"] == summary.prompt
    prov = stored["provenance"]
    assert prov["task"] == "natural_language_interpretation" and prov["card_lists_task"]
    assert prov["template"] == "natural_language_interpretation:0" and prov["seed"] == 0


def test_summary_is_reproducible_with_the_seed(adata, text_model):
    first = summarize_dataset(adata, text_model, n_cells=4, seed=5, max_new_tokens=8,
                              cache=False)
    again = summarize_dataset(adata, text_model, n_cells=4, seed=5, max_new_tokens=8,
                              cache=False)
    other = summarize_dataset(adata, text_model, n_cells=4, seed=6, max_new_tokens=8,
                              cache=False)
    assert (again.text, again.cells_used, again.prompt) == (first.text, first.cells_used,
                                                            first.prompt)
    assert other.cells_used != first.cells_used
    sampled = summarize_dataset(adata, text_model, n_cells=4, seed=5, max_new_tokens=8,
                                do_sample=True, temperature=1.5, cache=False)
    assert sampled.text == summarize_dataset(adata, text_model, n_cells=4, seed=5,
                                             max_new_tokens=8, do_sample=True,
                                             temperature=1.5, cache=False).text


def test_cells_are_stratified_by_groupby(adata, text_model):
    summary = summarize_dataset(adata, text_model, n_cells=4, groupby="louvain",
                                max_new_tokens=8)
    clusters = adata.obs.loc[summary.cells_used, "louvain"]
    assert clusters.nunique() == 4  # one cell from each of the four largest clusters
    largest = adata.obs["louvain"].value_counts().index[:4]
    assert set(clusters) == set(largest)


def test_without_n_cells_the_context_is_filled(adata, text_model):
    summary = summarize_dataset(adata, text_model, n_cells=None, max_new_tokens=8,
                                context_length=200)
    assert summary.n_tokens <= summary.budget == 192
    # The next cell in the seeded order would not have fitted.
    order = order_cells(adata, seed=0)
    more = cell_sentences(adata, 16, order[:summary.n_cells_used + 1])
    template = get_template("natural_language_interpretation")
    bigger = template.format_prompt(num_genes=16, num_cells=len(more), organism="Homo sapiens",
                                    cells=format_cells(more))
    assert count_tokens(text_model.tokenizer, bigger) > 192
    assert summary.cells_used == list(adata.obs_names[order[:summary.n_cells_used]])


def test_repeat_hits_the_cache_and_refusal(adata, text_model, tiny_gemma2_dir):
    summarize_dataset(adata, text_model, n_cells=2, max_new_tokens=8)
    again = summarize_dataset(adata, text_model, n_cells=2, max_new_tokens=8)
    assert again.provenance["calls"]["n_cached"] == 1
    model = load_model(str(tiny_gemma2_dir), precision="fp32", device="cpu")
    with pytest.raises(TaskNotSupportedError,
                       match="not trained for natural_language_interpretation"):
        summarize_dataset(adata, model)
