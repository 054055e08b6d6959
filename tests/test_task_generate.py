"""generate_cells(): sampled sentences turned into expression over the reference's genes."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest

from c2s_engine.errors import TaskOptionError
from c2s_engine.models import load_model
from c2s_engine.reverse import ReverseFit, reconstruct
from c2s_engine.tasks.generate import default_max_new_tokens, generate_cells, sentence_from_answer
from c2s_engine.tasks.runtime import TaskNotSupportedError, TaskNotSupportedWarning
from c2s_engine.validation import prepare

pytest_plugins = ["tiny_checkpoints"]

TOP_K = 20
TOKENS = 8  # short answers keep the tests fast


@pytest.fixture(scope="module")
def generator(build_checkpoint, tmp_path_factory):
    """Tiny GPT-NeoX whose card lists both conditional generation tasks."""
    card = {"tasks": ["cell_type_generation", "tissue_conditioned_sample_generation"],
            "top_k": TOP_K}
    path = build_checkpoint(tmp_path_factory.mktemp("generator") / "m", "gpt_neox", card=card)
    return load_model(str(path), precision="fp32", device="cpu")


@pytest.fixture(scope="module")
def prepared(pbmc68k):
    adata = pbmc68k[:40].copy()
    prepare(adata)
    return adata


@pytest.fixture
def reference(prepared):
    return prepared.copy()


def test_generated_anndata_is_marked_and_uses_the_reference_genes(reference, generator):
    out = generate_cells(reference, generator, cell_type=["B cell", "T cell"], n=2,
                         max_new_tokens=TOKENS, seed=3)
    assert out.n_obs == 4 and list(out.obs_names) == [f"c2s_gen_{i}" for i in range(4)]
    assert list(out.var_names) == list(reference.var_names)
    pd.testing.assert_frame_equal(out.var, reference.var)
    assert out.obs["c2s_generated"].dtype == bool and out.obs["c2s_generated"].all()
    assert list(out.obs["c2s_condition"]) == ["B cell", "B cell", "T cell", "T cell"]
    assert list(out.obs["c2s_condition"].cat.categories) == ["B cell", "T cell"]
    assert list(out.obs["c2s_sample"]) == [0, 1, 0, 1]
    for column in ("n_genes_reconstructed", "n_unknown_words", "n_repeated_genes"):
        assert out.obs[column].dtype == np.int64

    # The reverse fit was computed on the reference and stored there.
    fit = ReverseFit.from_dict(reference.uns["c2s"]["reverse"])
    assert out.uns["c2s"]["reverse"] == fit.to_dict()
    rebuilt = reconstruct(out.obs["cell_sentence"], reference, fit)
    np.testing.assert_array_equal(out.X.toarray(), rebuilt.X.toarray())
    np.testing.assert_array_equal(out.obs["n_unknown_words"], rebuilt.obs["n_unknown_words"])
    assert out.uns["c2s"]["identifiers"]["organism"] == "Homo sapiens"

    prov = out.uns["c2s"]["generate"]
    assert prov["task"] == "cell_type_generation"
    assert prov["template"] == "cell_type_generation:0"
    assert prov["top_k"] == TOP_K and prov["seed"] == 3 and prov["card_lists_task"] is True
    assert prov["params"]["conditions"] == ["B cell", "T cell"] and prov["params"]["n"] == 2
    assert prov["params"]["max_new_tokens"] == TOKENS
    assert prov["params"]["max_new_tokens_source"] == "given"
    assert prov["params"]["do_sample"] is True and prov["calls"]["n_items"] == 4


def test_same_seed_same_cells_other_seed_other_cells(reference, generator):
    kwargs = {"cell_type": "B cell", "n": 3, "max_new_tokens": TOKENS, "cache": False}
    first = generate_cells(reference, generator, seed=7, **kwargs)
    again = generate_cells(reference, generator, seed=7, **kwargs)
    other = generate_cells(reference, generator, seed=8, **kwargs)
    assert list(again.obs["cell_sentence"]) == list(first.obs["cell_sentence"])
    assert list(other.obs["cell_sentence"]) != list(first.obs["cell_sentence"])
    # Identical prompts still give distinct samples within one call.
    assert len(set(first.obs["cell_sentence"])) > 1


def test_repeated_request_comes_from_the_cache(reference, generator):
    kwargs = {"cell_type": "T cell", "n": 3, "max_new_tokens": TOKENS, "seed": 11}
    first = generate_cells(reference, generator, **kwargs)
    assert first.uns["c2s"]["generate"]["calls"]["n_cached"] == 0
    second = generate_cells(reference, generator, **kwargs)
    assert second.uns["c2s"]["generate"]["calls"]["n_cached"] == 3
    assert list(second.obs["cell_sentence"]) == list(first.obs["cell_sentence"])
    # n is part of the request: the first 3 of n=4 are not served from the n=3 entry.
    bigger = generate_cells(reference, generator, **{**kwargs, "n": 4})
    assert bigger.uns["c2s"]["generate"]["calls"]["n_cached"] == 0


def test_tissue_condition_and_default_answer_length(reference, generator, tmp_path):
    out = generate_cells(reference, generator, tissue="blood", n=2, top_k=10, seed=0)
    prov = out.uns["c2s"]["generate"]
    assert prov["task"] == "tissue_conditioned_sample_generation"
    assert prov["params"]["condition_kind"] == "tissue"
    # Every tiny-tokenizer gene is one token: ceil(10 * 1.0 * 1.1) + 8.
    assert prov["params"]["max_new_tokens"] == 19
    assert prov["params"]["max_new_tokens_source"] == "measured"
    assert list(out.obs["c2s_condition"]) == ["blood", "blood"]

    path = tmp_path / "generated.h5ad"
    out.write_h5ad(path)
    back = anndata.read_h5ad(path)
    assert back.obs["c2s_generated"].all()
    assert list(back.obs["cell_sentence"]) == list(out.obs["cell_sentence"])
    np.testing.assert_array_equal(back.X.toarray(), out.X.toarray())
    assert back.uns["c2s"]["generate"]["params"]["condition_kind"] == "tissue"
    assert list(back.uns["c2s"]["generate"]["params"]["conditions"]) == ["blood"]


def test_sentence_from_answer():
    assert sentence_from_answer("CD3D CD3E IL7R. CCR7", "cell_type") == "CD3D CD3E IL7R"
    assert sentence_from_answer("AL627309.1 CD3D.", "cell_type") == "AL627309.1 CD3D"
    assert sentence_from_answer("Cell 1:\nLYZ CD14 S100A9.\nCell 2:\nMS4A1", "tissue") == \
        "LYZ CD14 S100A9"
    assert sentence_from_answer("LYZ CD14", "tissue") == "LYZ CD14"


def test_default_max_new_tokens_from_measured_tokens_per_gene():
    def two_per_word(texts, add_special_tokens=True):
        return {"input_ids": [[0] * (2 * len(t.split())) for t in texts]}

    assert default_max_new_tokens(two_per_word, ["A B C", "D E"], top_k=10) == 30
    assert default_max_new_tokens(two_per_word, ["", ""], top_k=10) == 41  # 3 per gene


def test_bad_requests_are_refused(reference, generator, tiny_gemma2_dir):
    with pytest.raises(TaskOptionError, match="exactly one of cell_type and tissue"):
        generate_cells(reference, generator, n=2)
    with pytest.raises(TaskOptionError, match="exactly one of cell_type and tissue"):
        generate_cells(reference, generator, cell_type="B", tissue="blood")
    with pytest.raises(TaskOptionError, match="n must be a whole number"):
        generate_cells(reference, generator, cell_type="B", n=0)
    with pytest.raises(TaskOptionError, match="empty cell type"):
        generate_cells(reference, generator, cell_type=[" "])

    gemma = load_model(str(tiny_gemma2_dir), precision="fp32", device="cpu")
    with pytest.raises(TaskNotSupportedError, match="not trained for cell_type_generation"):
        generate_cells(reference, gemma, cell_type="B cell", n=1)
    with pytest.warns(TaskNotSupportedWarning):
        out = generate_cells(reference, gemma, cell_type="B cell", n=1, max_new_tokens=4,
                             allow_unsupported=True)
    assert out.uns["c2s"]["generate"]["card_lists_task"] is False
