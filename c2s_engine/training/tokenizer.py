"""A tokenizer trained on a C2S corpus in which every gene symbol is one token.

Cell sentences are lists of gene symbols, so a model learns far more easily when each gene is
a single token than when ``HLA-DRA`` is cut into ``HL``/``A-``/``DRA``. The tokenizer built
here is a WordPiece model (``tokenizers``) whose vocabulary holds

* every gene symbol given (and so every gene the corpus can contain) as a whole word,
* every corpus word seen at least ``min_word_frequency`` times as a whole word,
* sub-word pieces learnt by the WordPiece trainer plus every printable ASCII character, so an
  unseen word (a user's question) is spelt out in pieces instead of collapsing to ``<unk>``.

WordPiece matches the longest vocabulary entry first, so a whole word in the vocabulary is
always one token. Words are split on whitespace, newlines are tokens of their own, and only
punctuation that ends a word is split off, so the dot inside ``AL627309.1`` stays in the gene
while the period after the last gene of a sentence does not. Case is kept (mouse genes are
title case). Like the Pythia tokenizers of the released GPT-NeoX checkpoints, no ``<bos>`` is
added; ``<eos>`` ends every training text.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK, BOS = "<pad>", "<eos>", "<unk>", "<bos>"
SPECIAL_TOKENS = (PAD, EOS, UNK, BOS)  # ids 0, 1, 2, 3
SUBWORD_PREFIX = "##"
# Longer than any gene symbol or English word; longer inputs become <unk>.
MAX_WORD_CHARS = 100
# Every printable ASCII character can start or continue a word, so no ASCII word is <unk>.
_ALPHABET = sorted(set(string.ascii_letters + string.digits + string.punctuation))


def pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Word splitting shared by training and encoding (see the module docstring)."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"[.,:;?!]+(?=\s|$)"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"[ \t]+"), behavior="removed"),
    ])


def train_tokenizer(
    texts: Iterable[str],
    gene_symbols: Iterable[str] = (),
    *,
    subword_vocab_size: int = 2000,
    min_word_frequency: int = 2,
    model_max_length: int = 1024,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on ``texts`` that keeps gene symbols whole.

    Parameters
    ----------
    texts
        The training corpus (prompts and completions).
    gene_symbols
        Genes that must be single tokens even if the corpus never shows them (e.g. every
        ``var_name`` of the training data, so a generated sentence can name any gene).
    subword_vocab_size
        Size of the WordPiece trainer's vocabulary (characters and pieces) before whole words
        are added.
    min_word_frequency
        Corpus words seen at least this often become whole tokens.
    model_max_length
        Longest sequence the model accepts (its ``max_position_embeddings``).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        With ``<pad>``, ``<eos>``, ``<unk>`` and ``<bos>`` (ids 0-3) as special tokens.
    """
    texts = list(texts)
    splitter = pre_tokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in splitter.pre_tokenize_str(text))

    pieces = Tokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix=SUBWORD_PREFIX))
    pieces.pre_tokenizer = splitter
    pieces.train_from_iterator(texts, trainer=trainers.WordPieceTrainer(
        vocab_size=subword_vocab_size, special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix=SUBWORD_PREFIX, show_progress=False))

    vocab = dict(sorted(pieces.get_vocab().items(), key=lambda item: item[1]))
    for char in _ALPHABET:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(SUBWORD_PREFIX + char, len(vocab))
    frequent = sorted(word for word, n in counts.items() if n >= min_word_frequency)
    for word in [*dict.fromkeys(str(g) for g in gene_symbols), *frequent]:
        vocab.setdefault(word, len(vocab))

    tokenizer = Tokenizer(models.WordPiece(
        vocab=vocab, unk_token=UNK, continuing_subword_prefix=SUBWORD_PREFIX,
        max_input_chars_per_word=MAX_WORD_CHARS))
    tokenizer.pre_tokenizer = splitter
    # cleanup=True removes the space the word joiner puts before ".", ",", "?" and "!".
    tokenizer.decoder = decoders.WordPiece(prefix=SUBWORD_PREFIX, cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, unk_token=UNK, bos_token=BOS,
        model_max_length=model_max_length,
    )
