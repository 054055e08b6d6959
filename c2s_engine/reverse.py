"""Reverse transform: from cell sentences back to expression.

A gene's expression is predicted from its 0-based position (rank) in the cell sentence with a
per-dataset linear model in log space, ``expr = slope * log10(1 + rank) + intercept`` (C2S paper,
section 4.2; the paper reports R^2 = 0.85). :func:`fit_reverse` fits it on a dataset's own
sentences, :func:`reconstruct` turns any sentences (generated ones included) into an expression
AnnData, and :func:`reconstruction_r2` measures the round trip.

Big and backed data are handled chunk by chunk: the fit keeps only sufficient statistics
(count, means, centred sums of squares and cross-products), merged between chunks with the
parallel update of Chan et al., so no list of points is ever held.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from c2s_engine.errors import SentenceError
from c2s_engine.sentences import RANKS_KEY, get_sentences, stored_ranks

DUPLICATE_RULES = ("first", "mean")


@dataclass(frozen=True)
class ReverseFit:
    """``expr = max(0, slope * log10(1 + rank) + intercept)`` with its goodness of fit.

    Attributes
    ----------
    slope, intercept
        Coefficients of the least-squares line.
    r2
        ``1 - SS_res / SS_tot`` on the points it was fitted on.
    n_points
        Number of (rank, expression) points: expressed genes of all sentences.
    top_k
        Sentence length of the ranks it was fitted on.
    """

    slope: float
    intercept: float
    r2: float
    n_points: int
    top_k: int

    def predict(self, rank: np.ndarray) -> np.ndarray:
        """Expression (float64, clipped at 0) of genes at 0-based sentence positions ``rank``."""
        rank = np.asarray(rank, dtype=np.float64)
        return np.maximum(0.0, self.slope * np.log10(1.0 + rank) + self.intercept)

    def to_dict(self) -> dict[str, float | int]:
        """Plain values for ``uns['c2s']['reverse']`` (survive an h5ad round trip)."""
        return {
            k: (int(v) if k in ("n_points", "top_k") else float(v)) for k, v in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ReverseFit:
        """Rebuild a fit stored by :meth:`to_dict` (e.g. ``adata.uns['c2s']['reverse']``)."""
        try:
            return cls(
                slope=float(values["slope"]),
                intercept=float(values["intercept"]),
                r2=float(values["r2"]),
                n_points=int(values["n_points"]),
                top_k=int(values["top_k"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SentenceError(
                f"the reverse-transform parameters are incomplete or invalid ({exc})",
                "fit them again with c2s_engine.reverse.fit_reverse(adata)",
            ) from exc


class _Moments:
    """Running count, means and centred second moments of paired samples (x, y)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean_x = self.mean_y = 0.0
        self.sxx = self.syy = self.sxy = 0.0

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        n_b = x.size
        if n_b == 0:
            return
        mx, my = float(x.mean()), float(y.mean())
        dx, dy = x - mx, y - my
        sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
        n = self.n + n_b
        delta_x, delta_y = mx - self.mean_x, my - self.mean_y
        weight = self.n * n_b / n
        self.sxx += sxx + delta_x * delta_x * weight
        self.syy += syy + delta_y * delta_y * weight
        self.sxy += sxy + delta_x * delta_y * weight
        self.mean_x += delta_x * n_b / n
        self.mean_y += delta_y * n_b / n
        self.n = n


def _values_at(block: sp.csr_matrix, genes: np.ndarray) -> np.ndarray:
    """``block[i, genes[i, j]]`` for every valid (>= 0) entry of ``genes``, row-major, float64.

    Looked up with one ``searchsorted`` over (row, gene) codes of the stored entries instead of
    sparse fancy indexing.
    """
    block = block.tocsr()
    if not block.has_canonical_format:
        block = block.copy()
        block.sum_duplicates()
    n_cols = np.int64(block.shape[1])
    stored_rows = np.repeat(np.arange(block.shape[0], dtype=np.int64), np.diff(block.indptr))
    stored = stored_rows * n_cols + block.indices  # sorted: canonical CSR is row then column
    rows, positions = np.nonzero(genes >= 0)
    wanted = rows.astype(np.int64) * n_cols + genes[rows, positions]
    found = np.minimum(np.searchsorted(stored, wanted), max(stored.size - 1, 0))
    values = np.zeros(wanted.size, dtype=np.float64)
    if stored.size:
        hit = stored[found] == wanted
        values[hit] = block.data[found[hit]]
    return values


def _ranked_chunks(
    adata: AnnData, ranks: np.ndarray, chunk_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(sentence positions, gene indices, true C2S expression) of each chunk's ranked genes."""
    from c2s_engine.normalization import iter_expression_chunks

    for start, stop, block in iter_expression_chunks(adata, chunk_size=chunk_size):
        chunk = ranks[start:stop]
        rows, positions = np.nonzero(chunk >= 0)
        yield positions, chunk[rows, positions], _values_at(block, chunk)


def fit_reverse(adata: AnnData, *, key: str = RANKS_KEY, chunk_size: int = 10_000) -> ReverseFit:
    """Fit ``expr ~ slope * log10(1 + rank) + intercept`` on the dataset's own sentences.

    Every expressed gene of every sentence is one point: ``rank`` is its 0-based position in the
    sentence and ``expr`` its C2S-convention expression (total 1e4, ``log10(1 + x)``), read chunk
    by chunk so backed data works.

    Parameters
    ----------
    adata
        AnnData with ranks from :func:`c2s_engine.sentences.compute_sentences`.
    key
        ``obsm`` key of the ranks.
    chunk_size
        Cells read at a time.

    Returns
    -------
    ReverseFit

    Writes
    ------
    ``adata.uns['c2s']['reverse']``
        ``slope``, ``intercept``, ``r2`` (``1 - SS_res/SS_tot`` on the fitted points),
        ``n_points`` and ``top_k``.

    Raises
    ------
    SentenceError
        Missing or stale ranks, or fewer than two distinct ranks to fit a line to.
    """
    ranks = stored_ranks(adata, key)
    moments = _Moments()
    for positions, _, expression in _ranked_chunks(adata, ranks, chunk_size):
        moments.update(np.log10(1.0 + positions), expression)
    if moments.n < 2 or moments.sxx <= 0:
        raise SentenceError(
            f"the sentences in adata.obsm[{key!r}] hold too few genes to fit the reverse "
            "transform (every expressed gene sits at the same position)",
            "use data whose cells express at least two genes, or a larger top_k",
        )
    slope = moments.sxy / moments.sxx
    intercept = moments.mean_y - slope * moments.mean_x
    residual = max(moments.syy - slope * moments.sxy, 0.0)  # SS_res of the least-squares line
    r2 = 1.0 - residual / moments.syy if moments.syy > 0 else 1.0
    fit = ReverseFit(slope, intercept, r2, moments.n, int(ranks.shape[1]))
    adata.uns.setdefault("c2s", {})["reverse"] = fit.to_dict()
    return fit


def _vocabulary(var_names: Sequence[str] | pd.Index | AnnData) -> tuple[pd.Index, pd.DataFrame]:
    if isinstance(var_names, AnnData):
        return var_names.var_names, var_names.var.copy()
    names = pd.Index(np.asarray(var_names, dtype=str))
    return names, pd.DataFrame(index=names)


def _as_fit(fit: ReverseFit | Mapping[str, Any]) -> ReverseFit:
    return fit if isinstance(fit, ReverseFit) else ReverseFit.from_dict(fit)


def reconstruct(
    sentences: Sequence[str] | pd.Series,
    var_names: Sequence[str] | pd.Index | AnnData,
    fit: ReverseFit | Mapping[str, Any],
    *,
    duplicate: str = "first",
) -> AnnData:
    """Expression AnnData from any cell sentences (the dataset's own or generated ones).

    Each sentence is split on whitespace and a trailing ``'.'`` is stripped from every word.
    A word's rank is its 0-based position in the sentence as written (unknown and repeated words
    keep their place, so what follows them is not moved up). Words that are not in the
    vocabulary (exact, case-sensitive match) are dropped and counted. A gene written more than
    once is kept once, at its first position (``duplicate='first'``) or at the mean of its
    positions (``duplicate='mean'``). Expression is
    ``max(0, slope * log10(1 + rank) + intercept)``.

    Parameters
    ----------
    sentences
        One string per cell. A :class:`pandas.Series` lends its index to ``obs_names``.
    var_names
        The vocabulary: gene symbols, or an AnnData whose ``var_names`` (and ``var``) are used
        (duplicated symbols map to their first occurrence).
    fit
        A :class:`ReverseFit` or its dict form, e.g. ``adata.uns['c2s']['reverse']``.
    duplicate
        ``'first'`` or ``'mean'``: where a repeated gene is placed.

    Returns
    -------
    AnnData
        Cells x vocabulary, ``X`` float32 CSR. ``obs``: ``n_genes_reconstructed`` (genes with
        positive expression), ``n_unknown_words``, ``n_repeated_genes`` (genes written more than
        once). ``uns['c2s']['reverse']``: the fit; ``uns['c2s']['reconstruction']``: totals
        (``n_sentences``, ``n_words``, ``n_unknown_words``, ``n_repeated_genes``,
        ``n_empty_sentences``, ``duplicate``).

    Raises
    ------
    SentenceError
        An unknown ``duplicate`` rule, a sentence that is not a string or an invalid fit.
    """
    if duplicate not in DUPLICATE_RULES:
        raise SentenceError(
            f"unknown duplicate rule {duplicate!r}",
            f"use one of {', '.join(repr(d) for d in DUPLICATE_RULES)}",
        )
    fit = _as_fit(fit)
    names, var = _vocabulary(var_names)
    if isinstance(sentences, pd.Series):
        obs_names = sentences.index.astype(str)
        sentences = sentences.tolist()
    else:
        sentences = list(sentences)
        obs_names = pd.Index([str(i) for i in range(len(sentences))])
    bad = [i for i, s in enumerate(sentences) if not isinstance(s, str)]
    if bad:
        raise SentenceError(
            f"{len(bad)} sentences are not text (first at position {bad[0]}: "
            f"{sentences[bad[0]]!r})",
            "pass one string of space-separated gene names per cell",
        )

    # Splitting is the only per-sentence Python step; everything after works on flat arrays.
    # A lone "." (e.g. "CD3D CD3E .") strips to nothing and is not a word.
    words = [[w for w in (t.rstrip(".") for t in s.split()) if w] for s in sentences]
    lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
    flat_words = pd.Index([w for ws in words for w in ws], dtype=object)
    sentence_of = np.repeat(np.arange(len(words), dtype=np.int64), lengths)
    position = np.arange(flat_words.size, dtype=np.int64) - np.repeat(
        np.cumsum(lengths) - lengths, lengths
    )
    first_occurrence = np.flatnonzero(~names.duplicated())
    hit = names[first_occurrence].get_indexer(flat_words)
    gene = np.where(hit >= 0, first_occurrence[hit], -1)
    n_unknown = np.bincount(sentence_of[gene < 0], minlength=len(words))

    known = gene >= 0
    code = sentence_of[known] * names.size + gene[known]
    unique_code, first_index, inverse, times = np.unique(
        code, return_index=True, return_inverse=True, return_counts=True
    )
    known_position = position[known]
    if duplicate == "first":
        rank = known_position[first_index]  # flat order is by sentence then position
    else:
        rank = np.bincount(inverse, weights=known_position) / times
    cell, gene_idx = np.divmod(unique_code, names.size)
    X = sp.csr_matrix(
        (fit.predict(rank).astype(np.float32), (cell, gene_idx)),
        shape=(len(words), names.size),
    )
    X.eliminate_zeros()
    n_repeated = np.bincount(cell[times > 1], minlength=len(words))

    out = AnnData(X=X, var=var)
    out.obs_names = obs_names
    out.obs["n_genes_reconstructed"] = np.diff(X.indptr).astype(np.int64)
    out.obs["n_unknown_words"] = n_unknown.astype(np.int64)
    out.obs["n_repeated_genes"] = n_repeated.astype(np.int64)
    out.uns["c2s"] = {
        "reverse": fit.to_dict(),
        "reconstruction": {
            "n_sentences": len(words),
            "n_words": int(flat_words.size),
            "n_unknown_words": int(n_unknown.sum()),
            "n_repeated_genes": int(n_repeated.sum()),
            "n_empty_sentences": int((np.diff(X.indptr) == 0).sum()),
            "duplicate": duplicate,
        },
    }
    return out


def reconstruction_r2(
    adata: AnnData,
    *,
    key: str = RANKS_KEY,
    fit: ReverseFit | Mapping[str, Any] | None = None,
    chunk_size: int = 10_000,
) -> float:
    """Round-trip fidelity: R^2 of reconstructed against real expression at the sentence genes.

    The dataset's own sentences are materialised as strings, turned back into expression with
    :func:`reconstruct`, and compared with the real C2S-convention expression of the same cells
    at the genes each sentence names: ``1 - SS_res / SS_tot`` over all those (cell, gene) pairs.

    Parameters
    ----------
    adata
        AnnData with ranks from :func:`c2s_engine.sentences.compute_sentences`.
    key
        ``obsm`` key of the ranks.
    fit
        The reverse fit; by default ``adata.uns['c2s']['reverse']``, fitted (and stored) with
        :func:`fit_reverse` when absent.
    chunk_size
        Cells handled at a time.

    Returns
    -------
    float
        The R^2 (the C2S paper reports 0.85).
    """
    ranks = stored_ranks(adata, key)
    if fit is None:
        stored = adata.uns.get("c2s", {}).get("reverse")
        fit = ReverseFit.from_dict(stored) if stored is not None else fit_reverse(adata, key=key)
    fit = _as_fit(fit)
    from c2s_engine.normalization import iter_expression_chunks

    moments = _Moments()
    for start, stop, block in iter_expression_chunks(adata, chunk_size=chunk_size):
        sentences = get_sentences(adata, key=key, cells=np.arange(start, stop))
        rebuilt = reconstruct(sentences, adata, fit).X
        # Compare at every gene the sentence names, also where the prediction clipped to 0.
        named = ranks[start:stop]
        moments.update(_values_at(rebuilt, named), _values_at(block, named))
    if moments.n == 0 or moments.syy <= 0:
        raise SentenceError(
            "no expressed genes to compare: the sentences are empty",
            "compute sentences on data with expressed genes first",
        )
    # SS_res = sum((y - x)^2) from the moments: centred parts plus the gap between the means.
    residual = moments.syy + moments.sxx - 2 * moments.sxy
    residual += moments.n * (moments.mean_y - moments.mean_x) ** 2
    return float(1.0 - residual / moments.syy)
