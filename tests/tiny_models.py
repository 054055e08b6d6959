"""Tiny, locally trained stand-ins for real model assets (no downloads), shared by tests.

``train_tiny_tokenizer`` builds a Hugging Face fast tokenizer from a text corpus with the
``tokenizers`` library. Its pre-tokenizer keeps gene symbols whole (``HLA-DRA``,
``AL627309.1``) and makes a newline and a word-final punctuation mark (``.``, ``:``, ...)
tokens of their own, so with the WordLevel model every gene is exactly one token and
token counts can be computed by hand. Models built on top of it (tiny random-weight
GPT-NeoX / Gemma-2) belong in this module too.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK, BOS = "<pad>", "<eos>", "<unk>", "<bos>"
SPECIAL_TOKENS = [PAD, EOS, UNK, BOS]  # ids 0, 1, 2, 3


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
        # Only punctuation that ends a word: the dot inside AL627309.1 stays in the gene.
        pre_tokenizers.Split(Regex(r"[.,:;?!]+(?=\s|$)"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
    ])


def train_tiny_tokenizer(corpus_texts: Iterable[str], vocab_size: int = 4000, *,
                         model: str = "wordlevel", add_bos: bool = True
                         ) -> PreTrainedTokenizerFast:
    """Train a small tokenizer on ``corpus_texts``.

    Parameters
    ----------
    corpus_texts
        Training texts (gene symbols, template words, ...).
    vocab_size
        Largest vocabulary, special tokens included; rarer words map to ``<unk>``
        (WordLevel) or are split into pieces (BPE).
    model
        ``'wordlevel'`` (one token per word: exact hand-countable lengths) or ``'bpe'``
        (sub-word pieces, closer to real LLM tokenizers).
    add_bos
        Prepend ``<bos>`` to every encoded text, as Gemma tokenizers do.
    """
    if model == "wordlevel":
        tok = Tokenizer(models.WordLevel(unk_token=UNK))
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    elif model == "bpe":
        # The end-of-word suffix lets decode() put the spaces back between words.
        tok = Tokenizer(models.BPE(unk_token=UNK, end_of_word_suffix="</w>"))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
            end_of_word_suffix="</w>")
        tok.decoder = decoders.BPEDecoder(suffix="</w>")
    else:
        raise ValueError(f"model must be 'wordlevel' or 'bpe', not {model!r}")
    tok.pre_tokenizer = _pre_tokenizer()
    tok.train_from_iterator(list(corpus_texts), trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, bos_token=BOS,
    )


@functools.lru_cache(maxsize=1)
def pbmc_gene_symbols() -> tuple[str, ...]:
    """The 765 gene symbols of scanpy's bundled pbmc68k_reduced (no download)."""
    import scanpy as sc

    return tuple(sc.datasets.pbmc68k_reduced().var_names)


def template_corpus() -> list[str]:
    """Every built-in prompt and response wording, placeholders included."""
    from c2s_engine.prompts import Registry

    registry = Registry(use_env=False)
    return [part for task in registry.list_tasks()
            for variant in registry.spec(task).variants for part in variant]


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(model: str = "wordlevel") -> PreTrainedTokenizerFast:
    """A tokenizer trained on pbmc68k gene symbols, template words and a few labels.

    The vocabulary is large enough that every word of the corpus has its own token.
    """
    extra = ["Homo sapiens Mus musculus B cell CD4 T cell NK cell monocyte blood yes no",
             " ".join(str(i) for i in range(1001))]  # counts such as num_genes
    corpus = [" ".join(pbmc_gene_symbols()), *template_corpus(), *extra]
    return train_tiny_tokenizer(corpus, vocab_size=8000, model=model)
