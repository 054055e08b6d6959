"""The corpus tokenizer (gene symbols whole) and a tiny from-scratch GPT-NeoX run."""

from __future__ import annotations

import math

import pytest
from datasets import Dataset

from c2s_engine.models import load_model
from c2s_engine.training.pretrain import PretrainConfig, run_pretrain
from c2s_engine.training.records import RECORD_FILENAME, RunRecord
from c2s_engine.training.tokenizer import train_tokenizer

CORPUS = ["The cell type is: B cell.\nCell sentence: CD3E AL627309.1 HLA-DRA.",
          "The cell type is: T cell."]
GENES = ["CD3E", "HLA-DRA", "AL627309.1", "MS4A1", "Cd74"]


def test_tokenizer_keeps_gene_symbols_whole():
    tok = train_tokenizer(CORPUS, GENES, subword_vocab_size=100)
    pieces = tok.convert_ids_to_tokens(tok("Cell sentence: MS4A1 HLA-DRA AL627309.1 Cd74.")
                                       ["input_ids"])
    # MS4A1 and Cd74 never occur in the corpus, yet are single tokens; the inner dot of
    # AL627309.1 stays, the sentence-final period and the colon are split off.
    assert pieces == ["Cell", "sentence", ":", "MS4A1", "HLA-DRA", "AL627309.1", "Cd74", "."]
    assert tok.convert_ids_to_tokens(tok("The cell type is: T cell.")["input_ids"]) == \
        ["The", "cell", "type", "is", ":", "T", "cell", "."]
    assert tok.decode(tok("Cell sentence: MS4A1 HLA-DRA.")["input_ids"]) == \
        "Cell sentence : MS4A1 HLA-DRA."


def test_tokenizer_spells_unseen_words_instead_of_unk():
    tok = train_tokenizer(CORPUS, GENES, subword_vocab_size=100)
    ids = tok("What about zebrafish?")["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == "What about zebrafish?"
    assert [tok.pad_token, tok.eos_token, tok.unk_token, tok.bos_token] == \
        ["<pad>", "<eos>", "<unk>", "<bos>"]
    assert [tok.pad_token_id, tok.eos_token_id] == [0, 1]


def test_tokenizer_whole_words_need_min_frequency():
    # A trainer vocabulary smaller than the alphabet learns no merges: whole words come only
    # from the frequency rule and the gene list.
    tok = train_tokenizer(CORPUS, [], subword_vocab_size=10, min_word_frequency=2)
    vocab = tok.get_vocab()
    assert "cell" in vocab and "type" in vocab  # twice in the corpus
    assert "HLA-DRA" not in vocab  # once, and not given as a gene
    assert tok.convert_ids_to_tokens(tok("HLA-DRA")["input_ids"]) == \
        ["H", "##L", "##A", "##-", "##D", "##R", "##A"]


@pytest.fixture(scope="module")
def examples(pbmc68k):
    genes = list(pbmc68k.var_names[:40])
    rows = [{"prompt": f"Cell sentence: {' '.join(genes[i:i + 10])}.\nThe cell type is:",
             "completion": f" {label}.", "task": "cell_type_prediction"}
            for i, label in enumerate(["B cell", "T cell", "NK cell", "monocyte"] * 3)]
    return Dataset.from_list(rows)


def test_pretrain_tiny_run_loads_like_a_released_checkpoint(tmp_path, examples, pbmc68k):
    config = PretrainConfig(output_dir=str(tmp_path / "scratch"), hidden_size=32,
                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            max_position_embeddings=128, max_steps=4,
                            per_device_train_batch_size=4, logging_steps=1, top_k=10,
                            learning_rate=3e-3)
    result = run_pretrain(examples, config, gene_symbols=list(pbmc68k.var_names),
                          eval_dataset=examples.select(range(4)))
    metrics = result.metrics
    assert metrics["steps"] == 4
    assert all(math.isfinite(x) for x in [*metrics["losses"], metrics["eval_loss"]])

    loaded = load_model(str(result.output_dir))
    assert loaded.notices == []
    assert type(loaded.model).__name__ == "GPTNeoXForCausalLM"  # the Pythia family
    card = loaded.card
    assert (card.tasks, card.top_k, card.context_length) == (("cell_type_prediction",), 10, 128)
    assert card.n_parameters == metrics["n_parameters"] == loaded.n_parameters
    # Every gene of the data is one token, even those no example names.
    assert len(loaded.tokenizer(" ".join(pbmc68k.var_names[-5:]))["input_ids"]) == 5
    record = RunRecord.load(result.output_dir / RECORD_FILENAME)
    assert record.kind == "pretrain" and record.config["train"]["hidden_size"] == 32
