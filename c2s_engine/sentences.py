"""Cell sentences: per cell, the expressed genes in descending order of expression, top K.

The transform is vectorised over cells and aware of sparsity; the only Python loops are over
blocks of rows. Every stored nonzero gets one ``uint64`` sort key::

    key = (0x7FFFFFFF - float32_bits(value)) << g | tie_priority[gene]

For non-negative float32 values the raw bits order exactly like the values, so inverting them
sorts by *descending* expression, and ``g`` low bits hold the gene's tie priority. The keys of a
block of cells are laid out as a padded cells x genes array, partitioned along rows at K when
rows are wider than K, and the first K sorted in one ``sort(axis=1)`` call; because the tie
priority is a permutation of the genes, the gene is recovered from the low bits through its
inverse (no argsort).

Before sorting, two filters drop values that cannot reach a cell's top K; both work on the
float32 exponent and top mantissa bits (a "bucket", monotone in the value). The first sets a
per-cell threshold from a histogram of every 8th value, aiming at ~1.5 K survivors, and checks
that at least K survived (otherwise the cell keeps everything). The second counts the survivors
of each cell per bucket and keeps the buckets from the top down to the one holding the K-th
largest value. Keeping a whole bucket keeps every value tied with the K-th, so the result is
exactly that of sorting whole rows, only cheaper when K is much smaller than the number of
expressed genes.

Rules (also in :func:`rank_genes`):

* A gene is *expressed* when its value is nonzero; explicitly stored zeros are ignored.
* Values are ranked as float32 (float64 and integer input is converted first, so two float64
  values that round to the same float32 are a tie).
* Ties: ``tie_break='random'`` draws one priority per gene,
  ``np.random.default_rng(seed).permutation(n_genes)``; among equal values the gene with the
  lower priority comes first. The order is the same for every cell and does not depend on how
  the matrix is chunked. ``tie_break='index'`` puts tied genes in ``var_names`` order.
* Cells with fewer than K expressed genes are padded with ``-1``; an all-zero cell gives an
  all ``-1`` row and an empty sentence.

Ranks are stored compactly as ``adata.obsm['c2s_ranks']`` (int32 gene indices into
``adata.var_names``) and turned into strings only on demand (:func:`get_sentences`,
:func:`iter_sentence_chunks`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from c2s_engine.errors import NegativeValuesError, NonFiniteValuesError, SentenceError

RANKS_KEY = "c2s_ranks"
TIE_BREAKS = ("random", "index")

_VALUE_BITS = 31
_MAX_VALUE_BITS = np.uint32(0x7FFFFFFF)
_INF_BITS = np.uint32(0x7F800000)
# Buckets of the top-K filter: float32 exponent plus 3 mantissa bits (values within ~12%).
_BUCKET_SHIFT = np.uint32(20)
# The filter's threshold is estimated from every 8th value of a row.
_SAMPLE_STEP = 8
_PAD_KEY = np.uint64(2**64 - 1)
# Keys (rows x widest row) per block. Small blocks keep the temporaries in cache: on the
# benchmark's 20k-gene data, 1M keys per block ran ~1.3x faster than 4M with two threads.
_BLOCK_KEYS = 1_000_000
# Blocks of one chunk are ranked by this many threads (at most 8: the gain flattens out).
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
_THREADS = min(_CPUS or 1, 8)
# Bytes of fixed-width word text built per pass when turning ranks into strings.
_SENTENCE_PASS_BYTES = 32 * 2**20


def _check_top_k(top_k: Any) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise SentenceError(
            f"top_k must be a whole number of genes of at least 1, got {top_k!r}",
            "pass top_k >= 1, e.g. top_k=200 as used by the released C2S Pythia cell-type models",
        )
    return int(top_k)


def _tie_order(n_genes: int, tie_break: str, seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Return (priority of each gene, gene of each priority) for the documented tie rule."""
    if tie_break == "index":
        order = np.arange(n_genes, dtype=np.int64)
        return order, order
    if tie_break == "random":
        priority = np.random.default_rng(seed).permutation(n_genes).astype(np.int64)
        gene_of_priority = np.empty_like(priority)
        gene_of_priority[priority] = np.arange(n_genes, dtype=np.int64)
        return priority, gene_of_priority
    raise SentenceError(
        f"unknown tie_break {tie_break!r}",
        f"use one of {', '.join(repr(t) for t in TIE_BREAKS)}",
    )


class _Ranker:
    """Ranks row blocks of a matrix with ``n_genes`` columns under one tie rule."""

    def __init__(self, n_genes: int, top_k: int, tie_break: str, seed: int | None) -> None:
        self.top_k = _check_top_k(top_k)
        priority, self.gene_of_priority = _tie_order(n_genes, tie_break, seed)
        self.priority = priority.astype(np.uint64)  # the low bits of every sort key
        self.gene_bits = max(1, int(n_genes - 1).bit_length())
        if _VALUE_BITS + self.gene_bits > 63:  # the top bit stays free for the padding key
            raise SentenceError(
                f"{n_genes} genes is more than the sentence transform supports (2**32)",
                "subset the genes (e.g. to highly variable or protein-coding genes) first",
            )
        self.gene_mask = np.uint64((1 << self.gene_bits) - 1)

    def rank(self, block: sp.csr_matrix) -> np.ndarray:
        """Top-K gene indices (int32, -1 padded) of every row of a CSR block."""
        if not block.has_canonical_format:  # a duplicated (cell, gene) entry must count once
            block = block.copy()
            block.sum_duplicates()
        out = np.full((block.shape[0], self.top_k), -1, dtype=np.int32)
        bounds = _row_blocks(np.diff(block.indptr))

        def rank_rows(start: int, stop: int) -> None:
            self._rank_rows(block, start, stop, out[start:stop])

        if len(bounds) == 1 or _THREADS == 1:
            for start, stop in bounds:
                rank_rows(start, stop)
        else:
            # numpy releases the GIL in sorts, takes and ufunc loops, so blocks run in parallel.
            with ThreadPoolExecutor(_THREADS) as pool:
                for _ in pool.map(rank_rows, *zip(*bounds, strict=True)):
                    pass  # iterating re-raises a block's error here
        return out

    def _rank_rows(self, block: sp.csr_matrix, start: int, stop: int, out: np.ndarray) -> None:
        lo, hi = int(block.indptr[start]), int(block.indptr[stop])
        n_rows = stop - start
        per_row = np.diff(block.indptr[start : stop + 1]).astype(np.int64)
        bits = _value_bits(np.asarray(block.data[lo:hi], dtype=np.float32))
        genes = np.asarray(block.indices[lo:hi])
        if bits.size and bits.min() == 0:  # explicitly stored zeros are not expressed
            stored_zero = bits == 0
            row_of_value = np.repeat(np.arange(n_rows), per_row)
            per_row = per_row - np.bincount(row_of_value[stored_zero], minlength=n_rows)
            expressed = np.flatnonzero(~stored_zero)
            bits, genes = bits.take(expressed), genes.take(expressed)
        if bits.size == 0:
            return
        if per_row.max() > 2 * self.top_k:  # otherwise sorting whole rows is as cheap
            # Positions, not boolean masks: take() is far faster than mask indexing here.
            candidates, per_row = self._candidates(bits, per_row)
            bits = bits.take(candidates)
            kept, per_row = self._top_buckets(bits, per_row)
            bits, genes = bits.take(kept), genes.take(candidates.take(kept))

        # One row of keys per cell, padded with a key above any real one, sorted along rows.
        keys = (_MAX_VALUE_BITS - bits).astype(np.uint64)
        keys <<= np.uint64(self.gene_bits)
        keys |= self.priority.take(genes)
        width = int(per_row.max())
        # Flat position of each key: its row's start in the padded array plus its place in row.
        row_start = np.arange(n_rows, dtype=np.int64) * width - (np.cumsum(per_row) - per_row)
        position = np.repeat(row_start, per_row)
        position += np.arange(keys.size, dtype=np.int64)
        padded = np.full((n_rows, width), _PAD_KEY, dtype=np.uint64)
        padded.ravel()[position] = keys
        if width > self.top_k:  # only the first K need ordering: partition, then sort those
            padded.partition(self.top_k - 1, axis=1)
            padded = padded[:, : self.top_k]
        padded.sort(axis=1)
        # The padding key's low bits may exceed the last priority: clip, then mask it out.
        genes = self.gene_of_priority.take(padded & self.gene_mask, mode="clip")
        out[:, : padded.shape[1]] = np.where(padded != _PAD_KEY, genes, -1)

    def _candidates(self, bits: np.ndarray, per_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the values that can reach their row's top K, and their count per row.

        Each row gets a threshold on the float32 bits, estimated from a histogram of every
        ``_SAMPLE_STEP``-th value and chosen to leave about 1.5 K values above it. Rows where
        fewer than K values (or fewer than all of a short row's values) pass keep everything.
        A row that keeps at least K values keeps every value >= its K-th largest, ties included,
        so the top K after sorting is exactly that of the whole row.
        """
        n_rows = per_row.size
        bounds = np.concatenate(([0], np.cumsum(per_row)))
        # Row of every sampled position: the multiples of the step inside each row's bounds.
        first_sample = -(-bounds // _SAMPLE_STEP)  # ceil division
        sample_row = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(first_sample))
        bucket = bits[::_SAMPLE_STEP] >> _BUCKET_SHIFT
        lowest = int(bucket.min())
        n_buckets = int(bucket.max()) - lowest + 1
        hist = np.bincount(
            sample_row * n_buckets + (bucket - lowest), minlength=n_rows * n_buckets
        ).reshape(n_rows, n_buckets)
        from_top = np.cumsum(hist[:, ::-1], axis=1)
        reached = from_top >= 1.5 * self.top_k / _SAMPLE_STEP + 4
        threshold = (n_buckets - 1 - np.argmax(reached, axis=1) + lowest).astype(np.uint32)
        threshold <<= _BUCKET_SHIFT
        threshold[~reached[:, -1]] = 0
        kept, kept_per_row = self._above(bits, threshold, per_row, bounds)
        too_high = kept_per_row < np.minimum(per_row, self.top_k)
        if too_high.any():  # an unlucky sample: those rows keep everything
            threshold[too_high] = 0
            kept, kept_per_row = self._above(bits, threshold, per_row, bounds)
        return kept, kept_per_row

    @staticmethod
    def _above(
        bits: np.ndarray, threshold: np.ndarray, per_row: np.ndarray, bounds: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        kept = np.flatnonzero(bits >= np.repeat(threshold, per_row))
        return kept, np.diff(np.searchsorted(kept, bounds))

    def _top_buckets(self, bits: np.ndarray, per_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the values in buckets that can reach their row's top K, and their count.

        The bucket is the exponent and top mantissa bits of the float32 value, which is
        monotone in the value, so the bucket holding a row's K-th largest value also holds
        every value tied with it and keeping that bucket and those above it is exact.
        """
        bucket = (bits >> _BUCKET_SHIFT).astype(np.int64)  # int64 is what bincount counts
        bucket -= bucket.min()
        n_buckets = int(bucket.max()) + 1
        n_rows = per_row.size
        flat = np.repeat(np.arange(n_rows, dtype=np.int64) * n_buckets, per_row)
        flat += bucket
        hist = np.bincount(flat, minlength=n_rows * n_buckets)
        from_top = np.cumsum(hist.reshape(n_rows, n_buckets)[:, ::-1], axis=1)
        # The first bucket (from the top) whose cumulative count reaches K holds the K-th value.
        reached = from_top >= self.top_k
        first_reached = np.argmax(reached, axis=1)
        lowest_kept = n_buckets - 1 - first_reached
        kept = from_top[np.arange(n_rows), first_reached]
        short = ~reached[:, -1]  # fewer than K expressed genes: keep the whole row
        lowest_kept[short] = 0
        kept[short] = per_row[short]
        return np.flatnonzero(bucket >= np.repeat(lowest_kept, per_row)), kept


def _row_blocks(per_row: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) row blocks whose padded rows x widest-row key array fits _BLOCK_KEYS."""
    bounds = []
    start, n_rows = 0, per_row.size
    while start < n_rows:
        # No block has more rows than _BLOCK_KEYS / its first row, so look no further.
        window = per_row[start : start + _BLOCK_KEYS // max(int(per_row[start]), 1) + 1]
        widest = np.maximum.accumulate(np.maximum(window, 1))
        fits = widest * np.arange(1, widest.size + 1) <= _BLOCK_KEYS
        stop = start + max(1, int(np.argmin(fits)) if not fits.all() else widest.size)
        bounds.append((start, stop))
        start = stop
    return bounds


def _value_bits(values: np.ndarray) -> np.ndarray:
    """float32 bit patterns of non-negative finite values (they order like the values)."""
    bits = values.view(np.uint32)
    if bits.size == 0 or bits.max() < _INF_BITS:  # one pass: sign bit clear and finite
        return bits
    if not np.isfinite(values).all():
        n_bad = int((~np.isfinite(values)).sum())
        raise NonFiniteValuesError(
            f"the expression matrix holds {n_bad} NaN or infinite values",
            "remove or impute them before making cell sentences",
        )
    if values.min() < 0:
        raise NegativeValuesError(
            "the expression matrix holds negative values, so genes cannot be ranked by expression",
            "rank non-negative expression (counts or log-normalised data), not scaled data",
        )
    return bits & _MAX_VALUE_BITS  # only -0.0 is left: it is a zero


def _as_row_blocks(X: Any, chunk_size: int) -> Iterator[sp.csr_matrix]:
    """Yield CSR row blocks of a dense array or any scipy sparse matrix.

    Sparse input comes whole (the ranker works on row ranges of it); dense input comes
    ``chunk_size`` rows at a time so only that much is converted at once.
    """
    if sp.issparse(X):
        yield sp.csr_matrix(X)  # no copy when X is already CSR
        return
    X = np.asarray(X)
    if X.ndim != 2:
        raise SentenceError(
            f"expected a 2-D cells x genes matrix, got an array of shape {X.shape}",
            "pass a matrix with one row per cell and one column per gene",
        )
    for start in range(0, X.shape[0], chunk_size):
        yield sp.csr_matrix(X[start : start + chunk_size])


def rank_genes(
    X: Any,
    top_k: int,
    *,
    tie_break: str = "random",
    seed: int | None = 0,
    chunk_size: int = 10_000,
) -> np.ndarray:
    """Rank the expressed genes of every cell (row) by descending expression.

    Parameters
    ----------
    X
        Cells x genes matrix: a dense ``numpy`` array or any ``scipy.sparse`` matrix/array,
        integer or float, non-negative.
    top_k
        Number of genes kept per cell (K >= 1). K may exceed the number of genes.
    tie_break
        ``'random'``: each gene gets the priority
        ``np.random.default_rng(seed).permutation(n_genes)[gene]``; among equal values the gene
        with the lower priority comes first, identically in every cell. ``'index'``: tied genes
        keep their column order (``seed`` is ignored).
    seed
        Seed of the tie priorities for ``tie_break='random'``; ``None`` draws a fresh order.
    chunk_size
        Rows of dense input converted to CSR at a time (bounds the extra memory). Sparse input
        is ranked in place. The result does not depend on it.

    Returns
    -------
    numpy.ndarray
        int32 array of shape ``(n_cells, top_k)``: column indices of the top genes, highest
        expression first, padded with ``-1`` when a cell has fewer than ``top_k`` expressed
        (nonzero) genes. Explicitly stored zeros are not expressed. Values are compared as
        float32 (float64 input is converted first).

    Raises
    ------
    SentenceError
        ``top_k < 1``, an unknown ``tie_break`` or a matrix that is not 2-D.
    NegativeValuesError, NonFiniteValuesError
        The matrix holds negative, NaN or infinite values.
    """
    shape = X.shape
    if len(shape) != 2:
        raise SentenceError(
            f"expected a 2-D cells x genes matrix, got shape {shape}",
            "pass a matrix with one row per cell and one column per gene",
        )
    ranker = _Ranker(shape[1], top_k, tie_break, seed)
    blocks = [ranker.rank(block) for block in _as_row_blocks(X, chunk_size)]
    if not blocks:
        return np.empty((0, ranker.top_k), dtype=np.int32)
    return np.concatenate(blocks)


def _ranking_chunks(adata: AnnData, chunk_size: int) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    # The source matrix as stored, not normalised: every C2S conversion step is strictly
    # increasing within a cell, so the ranks are the same and normalising (the bulk of the time
    # on real data) is skipped. Where float32 rounding of the C2S values would merge two distinct
    # stored values into a tie, the stored order is the faithful one. See iter_source_chunks.
    # Imported here so this module is usable on plain matrices without the normalisation layer.
    from c2s_engine.normalization import iter_source_chunks

    return iter_source_chunks(adata, chunk_size=chunk_size)


def compute_sentences(
    adata: AnnData,
    top_k: int = 200,
    *,
    tie_break: str = "random",
    seed: int | None = 0,
    key_added: str = RANKS_KEY,
    chunk_size: int = 10_000,
) -> None:
    """Compute the cell sentences of ``adata`` as gene ranks (in place).

    Genes are ranked by their C2S-convention expression (total 1e4, then ``log10(1 + x)``).
    That conversion does not change the order of the genes within a cell, so the matrix it would
    start from is ranked as stored, read chunk by chunk through
    :func:`c2s_engine.normalization.iter_source_chunks` (backed AnnData works and only the ranks
    are held in memory). Ranking and tie rules are those of :func:`rank_genes`; values that are
    equal in the stored matrix are ties.

    Parameters
    ----------
    adata
        Cells x genes AnnData whose ``var_names`` are the gene symbols used in sentences.
    top_k
        Genes per sentence (200 for the released C2S Pythia cell-type models).
    tie_break, seed
        Tie rule, see :func:`rank_genes`.
    key_added
        ``obsm`` key of the ranks.
    chunk_size
        Cells read and ranked at a time.

    Writes
    ------
    ``adata.obsm[key_added]``
        int32 ``(n_cells, top_k)`` gene indices into ``var_names``, best first, ``-1`` padded.
    ``adata.uns['c2s']['sentences']``
        ``key``, ``top_k``, ``tie_break``, ``seed`` (-1 when none applies), ``n_vars``,
        ``n_empty_cells`` (no expressed gene) and ``n_short_cells`` (at least one but fewer than
        ``top_k`` expressed genes).
    """
    ranker = _Ranker(adata.n_vars, top_k, tie_break, seed)
    ranks = np.full((adata.n_obs, ranker.top_k), -1, dtype=np.int32)
    for start, stop, block in _ranking_chunks(adata, chunk_size):
        ranks[start:stop] = ranker.rank(block)
    adata.obsm[key_added] = ranks

    n_ranked = (ranks >= 0).sum(axis=1)
    adata.uns.setdefault("c2s", {})["sentences"] = {
        "key": key_added,
        "top_k": ranker.top_k,
        "tie_break": tie_break,
        "seed": -1 if seed is None or tie_break == "index" else int(seed),
        "n_vars": int(adata.n_vars),
        "n_empty_cells": int((n_ranked == 0).sum()),
        "n_short_cells": int(((n_ranked > 0) & (n_ranked < ranker.top_k)).sum()),
    }


class _Vocabulary:
    """Gene names encoded once, to build sentences from gene indices without per-word work.

    Each name is stored as UTF-8 plus its trailing space in one fixed-width, NUL-padded bytes
    array, with one extra empty entry that the ``-1`` padding of the ranks selects. A block of
    ranks becomes text by one ``take`` of those entries (a copy of fixed-size items), dropping
    the NUL padding in one boolean selection, and one slice and decode per cell.
    """

    def __init__(self, gene_names: Sequence[str]) -> None:
        encoded = list(map(str.encode, gene_names))
        if b"\0" in b"".join(encoded):  # NUL is the padding (and HDF5 cannot store it either)
            raise SentenceError(
                "a gene name contains a NUL character, which cannot be written into a sentence",
                "rename the genes (adata.var_names) so that none contains '\\x00'",
            )
        n_bytes = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        width = int(n_bytes.max(initial=0)) + 1
        encoded.append(b"")  # ranks of -1 select this entry
        self.words = np.array(encoded, dtype=f"S{width}")
        self.words.view(np.uint8).reshape(-1, width)[np.arange(n_bytes.size), n_bytes] = ord(" ")
        self.n_bytes = np.append(n_bytes + 1, 0)

    def sentences(self, ranks: np.ndarray) -> list[str]:
        """One sentence per row of ``ranks`` (indices into the names, ``-1`` = no gene)."""
        ranks = np.asarray(ranks)
        # Rows per pass bound the fixed-width temporaries to about _SENTENCE_PASS_BYTES.
        per_row = max(ranks.shape[1] * self.words.itemsize, 1)
        rows_at_once = max(1, _SENTENCE_PASS_BYTES // per_row)
        out: list[str] = []
        for start in range(0, ranks.shape[0], rows_at_once):
            out += self._block(ranks[start : start + rows_at_once])
        return out

    def _block(self, ranks: np.ndarray) -> list[str]:
        padded = self.words.take(ranks).view(np.uint8)
        text = padded[padded != 0].tobytes()
        row_bytes = self.n_bytes.take(ranks).sum(axis=1)
        ends = np.cumsum(row_bytes)
        starts = ends - row_bytes
        stops = np.maximum(ends - 1, starts)  # drop the last word's space; '' for an empty row
        return [text[a:b].decode() for a, b in zip(starts.tolist(), stops.tolist(), strict=True)]


def sentences_from_ranks(ranks: np.ndarray, gene_names: Sequence[str]) -> list[str]:
    """Join the genes of each row of ``ranks`` (``-1`` = no gene) with single spaces.

    Parameters
    ----------
    ranks
        Integer array ``(n_cells, n)`` of indices into ``gene_names``.
    gene_names
        Gene symbols, one per column of the original matrix.

    Returns
    -------
    list of str
        One sentence per row, genes in column order of ``ranks``; ``''`` for a row without genes.

    Raises
    ------
    SentenceError
        A gene name contains a NUL character.
    """
    return _Vocabulary(gene_names).sentences(ranks)


def iter_sentence_chunks(
    adata: AnnData,
    top_k: int = 200,
    *,
    tie_break: str = "random",
    seed: int | None = 0,
    chunk_size: int = 10_000,
) -> Iterator[tuple[pd.Index, list[str]]]:
    """Stream ``(cell ids, sentences)`` chunk by chunk, in input order, with bounded memory.

    Nothing is written to ``adata``; use it to write sentences of data too big to rank at once
    (e.g. ``cell_id,cell_sentence`` CSV rows). Ranking and tie rules are those of
    :func:`rank_genes`, in the order of C2S-convention expression (see
    :func:`compute_sentences`).

    Yields
    ------
    tuple of (pandas.Index, list of str)
        The ``obs_names`` of the chunk and one space-joined sentence per cell (``''`` for a cell
        without expressed genes).
    """
    ranker = _Ranker(adata.n_vars, top_k, tie_break, seed)
    vocabulary = _Vocabulary(adata.var_names)
    for start, stop, block in _ranking_chunks(adata, chunk_size):
        yield adata.obs_names[start:stop], vocabulary.sentences(ranker.rank(block))


def stored_ranks(adata: AnnData, key: str = RANKS_KEY) -> np.ndarray:
    """The ranks under ``obsm[key]``, checked against the current genes.

    Raises
    ------
    SentenceError
        No ranks under ``key``, or the genes changed since they were computed.
    """
    if key not in adata.obsm:
        raise SentenceError(
            f"no cell sentences found under adata.obsm[{key!r}]",
            "run c2s_engine.sentences.compute_sentences(adata) first",
        )
    ranks = np.asarray(adata.obsm[key])
    info = adata.uns.get("c2s", {}).get("sentences", {})
    n_vars = info.get("n_vars") if info.get("key") == key else None
    if (n_vars is not None and int(n_vars) != adata.n_vars) or (
        ranks.size and ranks.max() >= adata.n_vars
    ):
        raise SentenceError(
            f"the cell sentences in adata.obsm[{key!r}] were computed for "
            f"{n_vars if n_vars is not None else 'a different number of'} genes but the data now "
            f"has {adata.n_vars}",
            "recompute them with compute_sentences(adata) after changing the genes",
        )
    return ranks


def _cell_positions(adata: AnnData, cells: Any) -> np.ndarray | slice:
    if cells is None:
        return slice(None)
    cells = np.asarray(cells)
    if cells.dtype == bool:
        if cells.shape != (adata.n_obs,):
            raise SentenceError(
                f"the boolean cell mask has {cells.size} entries but there are {adata.n_obs} cells",
                "pass one True/False per cell, or a list of cell ids",
            )
        return np.flatnonzero(cells)
    if np.issubdtype(cells.dtype, np.integer):
        return cells
    positions = adata.obs_names.get_indexer(cells.astype(str))
    if (positions < 0).any():
        missing = cells[positions < 0][:3].tolist()
        raise SentenceError(
            f"{int((positions < 0).sum())} requested cells are not in the data, e.g. {missing}",
            "pass ids from adata.obs_names, integer positions or a boolean mask",
        )
    return positions


def get_sentences(
    adata: AnnData,
    *,
    key: str = RANKS_KEY,
    n_genes: int | None = None,
    cells: Any = None,
) -> list[str]:
    """Materialise cell sentences (space-joined gene symbols from ``var_names``).

    Parameters
    ----------
    adata
        AnnData with ranks from :func:`compute_sentences`.
    key
        ``obsm`` key of the ranks.
    n_genes
        Keep only the first ``n_genes`` genes of each sentence (at most the stored ``top_k``).
    cells
        Which cells, in the order given: ``obs_names``, integer positions or a boolean mask.
        ``None`` means all cells.

    Returns
    -------
    list of str
        One sentence per selected cell; ``''`` for a cell without expressed genes.

    Raises
    ------
    SentenceError
        Missing or stale ranks, ``n_genes`` outside ``1..top_k`` or unknown cells.
    """
    ranks = stored_ranks(adata, key)
    if n_genes is not None:
        if isinstance(n_genes, bool) or not isinstance(n_genes, (int, np.integer)) or n_genes < 1:
            raise SentenceError(
                f"n_genes must be a whole number of at least 1, got {n_genes!r}",
                "pass n_genes >= 1 or None for the full sentences",
            )
        if n_genes > ranks.shape[1]:
            raise SentenceError(
                f"n_genes={n_genes} asks for more genes than the {ranks.shape[1]} stored per cell",
                f"recompute with compute_sentences(adata, top_k={n_genes}) or ask for fewer genes",
            )
        ranks = ranks[:, :n_genes]
    return sentences_from_ranks(ranks[_cell_positions(adata, cells)], adata.var_names)
