"""embed(): obsm['X_c2s'] from the prompt or the bare sentence, cache, layer, card check."""

from __future__ import annotations

import anndata
import numpy as np
import pytest

from c2s_engine.errors import TaskOptionError
from c2s_engine.inference import embed as embed_texts
from c2s_engine.models import load_model
from c2s_engine.prompts import get_template
from c2s_engine.sentences import compute_sentences, get_sentences
from c2s_engine.tasks.embed import embed
from c2s_engine.tasks.runtime import TaskNotSupportedError, TaskNotSupportedWarning
from c2s_engine.validation import prepare

pytest_plugins = ["tiny_checkpoints"]

N_CELLS = 12
TOP_K = 20


@pytest.fixture(scope="module")
def embedder(build_checkpoint, tmp_path_factory):
    """Tiny GPT-NeoX (hidden size 128, 2 layers) whose card lists 'embedding'."""
    path = build_checkpoint(tmp_path_factory.mktemp("embedder") / "m", "gpt_neox",
                            card={"tasks": ["embedding"], "top_k": TOP_K})
    return load_model(str(path), precision="fp32", device="cpu")


@pytest.fixture(scope="module")
def prepared(pbmc68k):
    adata = pbmc68k[:N_CELLS].copy()
    prepare(adata)
    return adata


@pytest.fixture
def data(prepared):
    return prepared.copy()


def sentences_by_hand(adata, top_k=TOP_K) -> list[str]:
    fresh = adata.copy()
    compute_sentences(fresh, top_k=top_k)
    return get_sentences(fresh)


def test_prompt_embeddings_are_the_pooled_prompts(data, embedder):
    result = embed(data, embedder, batch_size=5)
    x = data.obsm["X_c2s"]
    assert x.shape == (N_CELLS, 128) and x.dtype == np.float32
    assert result.key == "X_c2s" and result.text == "prompt" and result.layer == -1
    np.testing.assert_array_equal(result.embeddings, x)
    template = get_template("cell_type_prediction")
    prompts = [template.format_prompt(num_genes=len(s.split()), organism="Homo sapiens",
                                      cell_sentence=s) for s in sentences_by_hand(data)]
    np.testing.assert_allclose(x, embed_texts(embedder, None, prompts), atol=1e-5)

    prov = data.uns["c2s"]["embed"]
    assert prov["task"] == "embedding" and prov["template"] == "cell_type_prediction:0"
    assert prov["top_k"] == TOP_K and prov["card_lists_task"] is True
    assert prov["params"] == {"layer": -1, "text": "prompt", "key_added": "X_c2s",
                              "hidden_size": 128, "organism": "Homo sapiens"}
    assert prov["calls"]["n_items"] == N_CELLS and prov["calls"]["n_cached"] == 0


def test_bare_sentences_other_layer_and_key(data, embedder):
    result = embed(data, embedder, text="sentence", layer=0, top_k=8, key_added="X_tok")
    expected = embed_texts(embedder, None, sentences_by_hand(data, top_k=8), layer=0)
    np.testing.assert_allclose(data.obsm["X_tok"], expected, atol=1e-5)
    assert "X_c2s" not in data.obsm
    prov = result.provenance
    assert prov["template"] == "" and "organism" not in prov["params"]
    assert prov["params"]["layer"] == 0 and prov["top_k"] == 8
    last = embed(data, embedder, text="sentence", top_k=8, key_added="X_last")
    assert not np.allclose(last.embeddings, result.embeddings)


def test_second_call_comes_from_the_cache_and_h5ad_round_trip(data, embedder, tmp_path):
    first = embed(data, embedder)
    second = embed(data, embedder)
    assert second.provenance["calls"]["n_cached"] == N_CELLS
    np.testing.assert_array_equal(second.embeddings, first.embeddings)
    path = tmp_path / "embedded.h5ad"
    data.write_h5ad(path)
    back = anndata.read_h5ad(path)
    np.testing.assert_array_equal(back.obsm["X_c2s"], first.embeddings)
    stored = back.uns["c2s"]["embed"]
    assert stored["params"] == second.provenance["params"]
    assert stored["calls"] == second.provenance["calls"]
    assert stored["card_lists_task"] is True and stored["seed"] == -1


def test_bad_options_are_refused(data, embedder):
    with pytest.raises(TaskOptionError, match=r"layer=3 .*2 layers.*from -3 to 2"):
        embed(data, embedder, layer=3)
    with pytest.raises(TaskOptionError, match="unknown text='cells'"):
        embed(data, embedder, text="cells")
    assert "X_c2s" not in data.obsm


def test_card_without_embedding_is_refused_or_marked(data, tiny_gemma2_dir):
    model = load_model(str(tiny_gemma2_dir), precision="fp32", device="cpu")  # lists no embedding
    with pytest.raises(TaskNotSupportedError, match="not trained for embedding"):
        embed(data, model)
    with pytest.warns(TaskNotSupportedWarning):
        result = embed(data, model, allow_unsupported=True)
    assert data.obsm["X_c2s"].shape == (N_CELLS, model.model.config.hidden_size)
    assert result.provenance["card_lists_task"] is False
