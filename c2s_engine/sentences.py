"""Cell sentences: per cell, the expressed genes in descending order of expression, top K.

The transform is compiled (numba) and aware of sparsity: it reads each cell's stored values
once and never builds a dense matrix. Every candidate value gets one ``uint64`` sort key::

    key = (0x7FFFFFFF - float32_bits(value)) << g | tie_priority[gene]

For non-negative float32 values the raw bits order exactly like the values, so inverting them
sorts by *descending* expression, and ``g`` low bits hold the gene's tie priority; because the
tie priority is a permutation of the genes, the gene is recovered from the low bits through its
inverse.

Per cell, values are grouped into "buckets" of the float32 exponent and top mantissa bits
(monotone in the value). A histogram of every 8th value sets a floor meant to leave ~1.5 K
candidates (a cell where fewer than K pass keeps every value instead); an exact histogram of the
candidates then finds the bucket holding the K-th largest value. Values above that bucket are
in the top K; the values in it (every value tied with the K-th among them) compete for the
places left by their keys. The K selected keys of a block of cells are sorted with numpy's
vectorised row sort. The result is exactly that of sorting whole rows. Blocks of cells run in
parallel threads (the kernels release the GIL).

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

import codecs
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
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
# Buckets of the per-cell histogram: float32 exponent plus 3 mantissa bits (values within ~9%).
_BUCKET_SHIFT = 20
# Every 8th value of a row goes into the histogram that sets its candidates' floor.
_SAMPLE_STEP = 8
# Histogram buckets at most: 4096 of 1/8 octave span 2**512, all of float32 in practice; below
# that the lowest bucket holds the rest (still exact, only slower).
_MAX_BUCKETS = 4096
_PAD_KEY = np.uint64(2**64 - 1)
# Stored values per block handed to one thread: large enough that thread start-up is noise,
# small enough that the blocks of a chunk spread over the threads.
_BLOCK_VALUES = 2_000_000
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
_THREADS = min(_CPUS or 1, 8)  # the gain flattens out beyond 8
# Bytes of fixed-width word text built per pass when turning ranks into strings.
_SENTENCE_PASS_BYTES = 32 * 2**20


@numba.njit(nogil=True, cache=True)
def _select_smallest(keys, n, k):
    """Reorder keys[:n] in place so that its k smallest come first (quickselect, k < n)."""
    left, right = 0, n - 1
    while right > left:
        mid = (left + right) // 2  # median of three guards against sorted runs
        if keys[mid] < keys[left]:
            keys[mid], keys[left] = keys[left], keys[mid]
        if keys[right] < keys[left]:
            keys[right], keys[left] = keys[left], keys[right]
        if keys[right] < keys[mid]:
            keys[right], keys[mid] = keys[mid], keys[right]
        pivot = keys[mid]
        i, j = left, right
        while i <= j:
            while keys[i] < pivot:
                i += 1
            while keys[j] > pivot:
                j -= 1
            if i <= j:
                keys[i], keys[j] = keys[j], keys[i]
                i += 1
                j -= 1
        if k - 1 <= j:
            right = j
        elif k - 1 >= i:
            left = i
        else:
            return


@numba.njit(nogil=True, cache=True)
def _bucket_index(b, lowest):
    """Histogram bucket of float32 bits ``b``: 0 for zero, 1 for ``lowest`` and below."""
    return max(np.int64(b >> _BUCKET_SHIFT) - lowest + 1, 1) if b != 0 else 0


@numba.njit(nogil=True, cache=True)
def _bucket_floor(bucket, lowest):
    """Smallest nonzero float32 bits that fall in ``bucket`` (>= 1)."""
    return np.uint32(max((bucket - 1 + lowest) << _BUCKET_SHIFT, 1)) if bucket > 1 else np.uint32(1)


@numba.njit(nogil=True, cache=True)
def _top_keys(indptr, indices, bits, priority, gene_bits, lowest, n_buckets, out):
    """Write the K smallest sort keys of every CSR row into ``out`` (rows x K, unsorted).

    ``out`` comes filled with the padding key, which short rows keep. Per row, a histogram of
    every ``_SAMPLE_STEP``-th value sets a floor meant to leave ~1.5 K candidates (a row where
    fewer than K pass keeps all its values instead), the candidates' positions are gathered
    without branches, and an exact histogram of the candidates finds the bucket of the K-th
    largest value: values above it are in the top K, and its own values (every value tied with
    the K-th among them) compete for the places left by their sort keys.
    """
    top_k = out.shape[1]
    shift = np.uint64(gene_bits)
    widest = 0
    for row in range(indptr.size - 1):
        widest = max(widest, indptr[row + 1] - indptr[row])
    hist = np.empty(n_buckets + 1, np.int64)
    kept = np.empty(widest, np.int64)
    ties = np.empty(widest, np.uint64)
    target = 1.5 * top_k / _SAMPLE_STEP + 4
    for row in range(indptr.size - 1):
        # Slices, not offsets into the whole arrays: indices from 0 let the loops vectorise.
        row_bits = bits[indptr[row] : indptr[row + 1]]
        row_genes = indices[indptr[row] : indptr[row + 1]]
        floor = np.uint32(1)
        if row_bits.size > 2 * top_k:  # shorter rows are cheap to take whole
            hist[:] = 0
            for j in range(0, row_bits.size, _SAMPLE_STEP):
                hist[_bucket_index(row_bits[j], lowest)] += 1
            seen, bucket = 0, n_buckets
            while bucket > 1 and seen + hist[bucket] < target:
                seen += hist[bucket]
                bucket -= 1
            floor = _bucket_floor(bucket, lowest)
        n_kept = 0
        for j in range(row_bits.size):
            kept[n_kept] = j
            n_kept += row_bits[j] >= floor
        if n_kept < top_k and floor > 1:  # an unlucky sample: take every value after all
            floor, n_kept = np.uint32(1), 0
            for j in range(row_bits.size):
                kept[n_kept] = j
                n_kept += row_bits[j] >= floor
        # Exact counts of the candidates locate the bucket of the K-th largest value (the cut).
        hist[:] = 0
        for i in range(n_kept):
            hist[_bucket_index(row_bits[kept[i]], lowest)] += 1
        n_above, cut = 0, n_buckets
        while cut > 1 and n_above + hist[cut] < top_k:
            n_above += hist[cut]
            cut -= 1
        if n_above + hist[cut] <= top_k:  # the whole cut bucket fits: no tie to break there
            cut -= 1
        n_out, n_ties = 0, 0
        for i in range(n_kept):
            b = row_bits[kept[i]]
            bucket = _bucket_index(b, lowest)
            if bucket >= cut:
                key = (np.uint64(_MAX_VALUE_BITS - b) << shift) | priority[row_genes[kept[i]]]
                if bucket > cut:
                    out[row, n_out] = key
                    n_out += 1
                else:
                    ties[n_ties] = key
                    n_ties += 1
        if n_ties > top_k - n_out:
            if top_k > n_out:
                _select_smallest(ties, n_ties, top_k - n_out)
            n_ties = top_k - n_out
        out[row, n_out : n_out + n_ties] = ties[:n_ties]


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
        bits = _value_bits(np.asarray(block.data, dtype=np.float32))
        lowest, n_buckets = _bucket_range(bits)
        indptr, indices = block.indptr, block.indices

        def rank_rows(start: int, stop: int) -> None:
            keys = np.full((stop - start, self.top_k), _PAD_KEY, dtype=np.uint64)
            _top_keys(
                indptr[start : stop + 1], indices, bits, self.priority, self.gene_bits,
                lowest, n_buckets, keys,
            )
            keys.sort(axis=1)  # numpy's vectorised sort: far faster than a compiled loop here
            # The padding key's low bits may exceed the last priority: clip, then mask it out.
            genes = self.gene_of_priority.take(keys & self.gene_mask, mode="clip")
            out[start:stop] = np.where(keys != _PAD_KEY, genes, -1)

        bounds = _row_blocks(indptr)
        if len(bounds) == 1 or _THREADS == 1:
            for start, stop in bounds:
                rank_rows(start, stop)
        else:
            # The kernel releases the GIL (nogil) as do numpy's sorts, so blocks run in parallel
            # threads; plain threads rather than numba's parallel layer keep concurrent callers
            # (the web app's background jobs) safe.
            for _ in _pool().map(rank_rows, *zip(*bounds, strict=True)):
                pass  # iterating re-raises a block's error here
        return out


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """One thread pool for the process (starting threads per call costs more than small data)."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(_THREADS, thread_name_prefix="c2s-sentences")
    return _POOL


def _forget_pool() -> None:
    global _POOL
    _POOL = None  # a forked child has none of the parent's threads


os.register_at_fork(after_in_child=_forget_pool)


def _bucket_range(bits: np.ndarray) -> tuple[int, int]:
    """(lowest bucket, number of buckets) spanned by the nonzero values, at most _MAX_BUCKETS."""
    if bits.size == 0:
        return 0, 1
    lowest_bits = bits.min()
    if lowest_bits == 0:  # stored zeros do not count
        nonzero = bits[bits != 0]
        lowest_bits = nonzero.min() if nonzero.size else 0
    highest = int(bits.max()) >> _BUCKET_SHIFT
    lowest = max(int(lowest_bits) >> _BUCKET_SHIFT, highest - _MAX_BUCKETS + 1)
    return lowest, highest - lowest + 1


def _row_blocks(indptr: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) row blocks of about _BLOCK_VALUES stored values, at least one per thread."""
    n_rows, n_values = indptr.size - 1, int(indptr[-1])
    n_blocks = max(1, min(n_rows, max(_THREADS, -(-n_values // _BLOCK_VALUES))))
    if n_blocks == 1 or n_values < _BLOCK_VALUES // 8:  # too little work to share out
        return [(0, n_rows)] if n_rows else []
    cuts = np.searchsorted(indptr, np.linspace(0, n_values, n_blocks + 1)[1:-1])
    edges = np.unique(np.concatenate(([0], cuts, [n_rows])))
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


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
        # The same object when already a CSR matrix: scipy remembers its format checks there.
        yield X if isinstance(X, sp.csr_matrix) else sp.csr_matrix(X)
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


@numba.njit(nogil=True, cache=True)
def _join_words(ranks, slots, lengths):
    """UTF-8 text of every row of ``ranks`` joined by single spaces, as one byte buffer, and
    each row's end in it. Gene ``g`` is the first ``lengths[g]`` bytes of ``slots[g]`` (uint64
    words, little-endian, padded with spaces); ``g < 0`` is skipped."""
    n_rows, width = ranks.shape
    ends = np.empty(n_rows, np.int64)
    total = 0
    for row in range(n_rows):
        n_words = 0
        for col in range(width):
            gene = ranks[row, col]
            if gene >= 0:
                total += lengths[gene]
                n_words += 1
        total += max(n_words - 1, 0)
        ends[row] = total
    text = np.empty(total + 8 * slots.shape[1], np.uint8)  # room for a last whole word
    # Unsigned positions: numba then skips its negative-index checks in the copy loop.
    position = np.uint64(0)
    for row in range(n_rows):
        start = position
        for col in range(width):
            gene = ranks[row, col]
            if gene < 0:
                continue
            g = np.uint64(gene)
            n_bytes = np.uint64(lengths[gene] + 1)  # the name and a space
            # Whole 8-byte words are copied (the next word overwrites what lies past the
            # space): a few fixed-size moves run faster than one byte at a time.
            for chunk in range((n_bytes + np.uint64(7)) >> np.uint64(3)):
                word = slots[g, chunk]
                base = position + np.uint64(8 * chunk)
                for byte in range(8):
                    text[base + np.uint64(byte)] = np.uint8((word >> np.uint64(8 * byte)) & 255)
            position += n_bytes
        if position > start:
            position -= np.uint64(1)  # no space after the last word
    return text[:total], ends


@numba.njit(nogil=True, cache=True)
def _fill_slots(data, starts, lengths, slots):
    """Copy name ``i`` (``lengths[i]`` bytes of ``data`` from ``starts[i]``) into ``slots[i]``."""
    for word in range(lengths.size):
        for byte in range(lengths[word]):
            slots[word, byte] = data[starts[word] + byte]


class _Vocabulary:
    """Gene names encoded once as UTF-8, to build sentences from gene indices.

    Each name sits in a fixed-width row of spaces (``slots``, viewed as uint64 words). A block
    of ranks becomes one compiled pass that copies words into a byte buffer, one decode and one
    slice per cell (of the decoded text when every name is ASCII, so that byte and character
    positions agree; of the bytes otherwise).
    """

    def __init__(self, gene_names: Sequence[str]) -> None:
        names = gene_names.tolist() if hasattr(gene_names, "tolist") else list(gene_names)
        try:
            joined = "\0".join(names)
        except TypeError:  # names that are not all str (numbers, bytes): as str() shows them
            names = [str(name) for name in names]
            joined = "\0".join(names)
        encoded = joined.encode()
        data = np.frombuffer(encoded, dtype=np.uint8)
        separators = np.flatnonzero(data == 0)
        if separators.size != max(len(names) - 1, 0):  # HDF5 cannot store NUL either
            raise SentenceError(
                "a gene name contains a NUL character, which cannot be written into a sentence",
                "rename the genes (adata.var_names) so that none contains '\\x00'",
            )
        starts = np.concatenate(([0], separators + 1))
        self.lengths = np.append(separators, data.size) - starts if names else starts[:0]
        self.ascii = encoded.isascii()
        n_words = (int(self.lengths.max(initial=0)) + 1 + 7) // 8
        slots = np.full((len(names), 8 * n_words), ord(" "), dtype=np.uint8)
        _fill_slots(data, starts, self.lengths, slots)
        self.slots = slots.view("<u8")

    def sentences(self, ranks: np.ndarray) -> list[str]:
        """One sentence per row of ``ranks`` (indices into the names, ``-1`` = no gene)."""
        ranks = np.asarray(ranks)
        if ranks.size and ranks.max() >= self.lengths.size:
            raise SentenceError(
                f"the ranks refer to gene {int(ranks.max())} but there are only "
                f"{self.lengths.size} gene names",
                "pass the gene names the ranks were computed for (adata.var_names)",
            )
        # Rows per pass bound the text buffer to about _SENTENCE_PASS_BYTES.
        per_row = max(ranks.shape[1] * 8 * self.slots.shape[1], 1)
        rows_at_once = max(1, _SENTENCE_PASS_BYTES // per_row)
        out: list[str] = []
        for start in range(0, ranks.shape[0], rows_at_once):
            out += self._block(ranks[start : start + rows_at_once])
        return out

    def _block(self, ranks: np.ndarray) -> list[str]:
        buffer, ends = _join_words(np.ascontiguousarray(ranks), self.slots, self.lengths)
        starts = np.concatenate(([0], ends[:-1])).tolist()  # rows follow each other directly
        if self.ascii:
            text = codecs.decode(memoryview(buffer), "ascii")
            return [text[a:b] for a, b in zip(starts, ends.tolist(), strict=True)]
        raw = buffer.tobytes()
        return [raw[a:b].decode() for a, b in zip(starts, ends.tolist(), strict=True)]


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
