"""Detect how expression values were processed and bring them to the C2S convention.

The C2S convention is library-size normalisation to a total of 1e4 followed by ``log10(1 + x)``
(base 10, not the natural log scanpy uses by default). Each candidate matrix (``X``, the layers,
``adata.raw``) is classified from a sample of rows:

``counts``
    non-negative integers (raw counts).
``log1p``
    ``expm1(x)`` gives per-cell rows that are library-size normalised (scanpy's default).
``c2s``
    ``10**x - 1`` gives normalised rows (already the C2S convention).
``normalized``
    ``x`` itself is normalised (no log).
``scaled`` / ``negative`` / ``nonfinite`` / ``empty`` / ``unknown``
    not usable.

"Normalised rows" means either rows that sum to a near-constant total (the detected target sum)
or, when genes were subset after normalisation so row sums differ, rows whose values are integer
multiples of the row's smallest value (each value is ``count * size_factor`` and the smallest
count is 1). The second test skips values equal to the row minimum, because any wrong log base
maps equal values to equal values and would pass trivially.

Conversion is exact: the values are mapped back to the linear scale (``expm1`` or ``10**x - 1``),
every cell is rescaled to ``target_sum`` over the genes of its matrix (this equals normalising the
counts when they were normalised to a different total, and re-normalises over the kept genes when
genes were subset), then ``log10(1 + x)`` is applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from c2s_engine.errors import (
    NegativeValuesError,
    NonFiniteValuesError,
    NormalizationError,
)

C2S_TARGET_SUM = 1e4
SAMPLE_ROWS = 2000
ON_THE_FLY = "on_the_fly"
USABLE_KINDS = ("counts", "log1p", "normalized", "c2s")
# Layers that usually hold counts are tried first, in this order.
COUNT_LAYER_NAMES = ("counts", "raw_counts", "count", "umi", "umis", "counts_recovered")

_DESCRIPTIONS = {
    "counts": "raw integer counts",
    "log1p": "log1p (natural log) of library-size-normalised values",
    "c2s": "log10(1 + x) of library-size-normalised values (C2S convention)",
    "normalized": "library-size-normalised values without log",
    "scaled": "scaled / z-scored values (negative, non-integer)",
    "negative": "integer values with negatives (not valid counts)",
    "nonfinite": "contains NaN or infinite values",
    "empty": "no non-zero values",
    "unknown": "non-negative values of unknown processing",
}
_TO_LINEAR = {
    "counts": None,
    "normalized": None,
    "log1p": np.expm1,
    "c2s": lambda v: np.power(10.0, v) - 1.0,
}
_TO_LINEAR_STEP = {"log1p": "expm1", "c2s": "10**x - 1"}
# A row total within 1% of the median counts as "constant" (float32 rounding, HVG-free data).
_CONSTANT_SUM_RTOL = 0.01
# Fraction of non-minimal values within 0.05 of an integer multiple of the row minimum.
_INTEGER_RATIO_MIN = 0.9
_INTEGER_RATIO_ATOL = 0.05
_MIN_RATIO_VALUES = 20


@dataclass
class MatrixState:
    """Classification of one candidate matrix.

    Attributes
    ----------
    source
        ``'X'``, ``'layers/<name>'`` or ``'raw'``.
    kind
        One of ``counts, log1p, c2s, normalized, scaled, negative, nonfinite, empty, unknown``.
    target_sum
        Detected per-cell total on the linear scale (0.0 when rows do not sum to a constant).
    n_nonfinite
        NaN/inf values found (over the whole matrix in memory, over the sample when backed).
    nonfinite_where
        Where the first one is, e.g. ``"cell 'AAAC-1', gene 'CD3E'"`` ('' when none).
    min_value
        Smallest value seen in the sample.
    """

    source: str
    kind: str
    target_sum: float = 0.0
    n_nonfinite: int = 0
    nonfinite_where: str = ""
    min_value: float = 0.0

    @property
    def description(self) -> str:
        """One human-readable line."""
        text = f"{source_label(self.source)}: {_DESCRIPTIONS[self.kind]}"
        if self.kind in ("log1p", "c2s", "normalized") and self.target_sum:
            text += f" (target sum {self.target_sum:.4g})"
        return text


@dataclass
class NormalizationState:
    """Which matrix feeds the C2S expression values and how it is converted.

    Attributes
    ----------
    detected
        Kind of the chosen source matrix (see :class:`MatrixState`).
    source
        ``'X'``, ``'layers/<name>'`` or ``'raw'``.
    steps
        The conversion steps, e.g. ``["normalize_total(target_sum=10000)", "log1p(base=10)"]``
        (empty when the source already follows the convention).
    target_sum
        The C2S target sum (1e4).
    matrix
        Where the C2S values live: ``'X'``, ``'layers/<name>'``, or ``'on_the_fly'`` (backed data:
        computed per chunk by :func:`iter_expression_chunks`); ``''`` before :func:`normalize`.
    source_target_sum
        Detected per-cell total of the source (0.0 when unknown or counts).
    candidates
        Every matrix that was inspected.
    """

    detected: str
    source: str
    steps: list[str]
    target_sum: float
    matrix: str = ""
    source_target_sum: float = 0.0
    candidates: list[MatrixState] = field(default_factory=list)

    @property
    def description(self) -> str:
        """Human-readable summary, e.g. for the validation report."""
        chosen = next(c for c in self.candidates if c.source == self.source)
        how = " -> ".join(self.steps) if self.steps else "used as is"
        return f"{chosen.description}; {how}"

    def to_uns(self) -> dict:
        """The dict stored in ``adata.uns['c2s']['normalization']`` (h5ad-safe)."""
        return {
            "detected": self.detected,
            "source": self.source,
            "steps": list(self.steps),
            "target_sum": float(self.target_sum),
            "matrix": self.matrix,
            "source_target_sum": float(self.source_target_sum),
        }


def source_label(source: str) -> str:
    """``'layers/counts'`` -> ``"layers['counts']"``, ``'raw'`` -> ``'adata.raw'``."""
    if source.startswith("layers/"):
        return f"layers['{source[len('layers/') :]}']"
    return "adata.raw" if source == "raw" else source


def source_matrix(adata: AnnData, source: str):
    """The matrix named ``'X'``, ``'layers/<name>'`` or ``'raw'`` (may be backed)."""
    if source == "X":
        return adata.X
    if source == "raw":
        return adata.raw.X
    return adata.layers[source[len("layers/") :]]


def _candidate_sources(adata: AnnData, layer: str | None) -> list[str]:
    if layer is not None:
        if layer in ("X", "raw"):
            if layer == "raw" and adata.raw is None:
                raise NormalizationError(
                    "layer='raw' was requested but adata.raw is empty",
                    fix="omit layer= or name one of the layers",
                )
            return [layer]
        if layer not in adata.layers:
            available = ", ".join(adata.layers.keys()) or "none"
            raise NormalizationError(
                f"layer {layer!r} does not exist (layers: {available})",
                fix="pass layer= one of the layers, 'X' or 'raw', or omit it to auto-detect",
            )
        return [f"layers/{layer}"]
    names = list(adata.layers.keys())
    ordered = [n for n in COUNT_LAYER_NAMES if n in names]
    ordered += sorted(n for n in names if n not in ordered)
    sources = ["X", *(f"layers/{n}" for n in ordered)]
    if adata.raw is not None and _raw_columns(adata) is not None:
        sources.append("raw")
    return sources


def _raw_columns(adata: AnnData) -> np.ndarray | None:
    """Positions of ``adata.var_names`` in ``adata.raw``; None when they cannot be matched.

    After :func:`~c2s_engine.genes.use_gene_symbols` the var_names are symbols while raw still
    has the original IDs, kept in ``var['gene_ids']``.
    """
    raw_names = adata.raw.var_names
    for names in (adata.var_names, adata.var.get("gene_ids")):
        if names is None:
            continue
        positions = raw_names.get_indexer(names)
        if (positions >= 0).all():
            return positions
    return None


def sample_rows(n_obs: int, n_sample: int = SAMPLE_ROWS) -> np.ndarray:
    """Sorted row positions of a reproducible random sample (all rows when few)."""
    if n_obs <= n_sample:
        return np.arange(n_obs)
    return np.sort(np.random.default_rng(0).choice(n_obs, n_sample, replace=False))


def _as_csr(block) -> sp.csr_matrix:
    return block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block))


def _locate_nonfinite(block: sp.csr_matrix, obs_names, var_names) -> tuple[int, str]:
    """Number of NaN/inf values in ``block`` and where the first one is."""
    bad = np.flatnonzero(~np.isfinite(block.data))
    if bad.size == 0:
        return 0, ""
    row = int(np.searchsorted(block.indptr, bad[0], side="right") - 1)
    return int(bad.size), f"cell {obs_names[row]!r}, gene {var_names[block.indices[bad[0]]]!r}"


def _var_names(adata: AnnData, source: str):
    return adata.raw.var_names if source == "raw" else adata.var_names


def _count_nonfinite(adata: AnnData, source: str) -> tuple[int, str] | None:
    """NaN/inf over a whole in-memory matrix; None when it is on disk (backed)."""
    matrix = source_matrix(adata, source)
    names = _var_names(adata, source)
    if sp.issparse(matrix):
        return _locate_nonfinite(matrix.tocsr(), adata.obs_names, names)
    if not isinstance(matrix, np.ndarray):
        return None
    bad = ~np.isfinite(matrix)
    count = int(bad.sum())
    if not count:
        return 0, ""
    row, col = np.argwhere(bad)[0]
    return count, f"cell {adata.obs_names[row]!r}, gene {names[col]!r}"


def _rows_normalised(block: sp.csr_matrix) -> tuple[bool, float]:
    """Whether the linear-scale rows look library-size normalised, and their common total."""
    sums = np.asarray(block.sum(axis=1)).ravel()
    sums = sums[sums > 0]
    median = float(np.median(sums))
    if (sums.max() - sums.min()) <= _CONSTANT_SUM_RTOL * median:
        return True, median
    ratios = []
    for i in range(block.shape[0]):
        values = block.data[block.indptr[i] : block.indptr[i + 1]]
        values = values[values > 0]
        if values.size < 2:
            continue
        r = values / values.min()
        ratios.append(r[r > 1.5])
    ratios = np.concatenate(ratios) if ratios else np.empty(0)
    if ratios.size < _MIN_RATIO_VALUES:
        return False, 0.0
    close = np.abs(ratios - np.round(ratios)) < _INTEGER_RATIO_ATOL
    return bool(close.mean() >= _INTEGER_RATIO_MIN), 0.0


def classify_matrix(block) -> tuple[str, float]:
    """Classify a (sampled) block of expression values.

    Parameters
    ----------
    block
        Rows of one matrix (dense or sparse), finite values.

    Returns
    -------
    kind, target_sum
        See the module docstring; ``target_sum`` is the detected row total (0.0 if none).
    """
    csr = _as_csr(block).astype(np.float64)
    csr.eliminate_zeros()
    values = csr.data
    if values.size == 0:
        return "empty", 0.0
    if values.min() < 0:
        return ("negative" if np.all(values == np.round(values)) else "scaled"), 0.0
    if np.all(values == np.round(values)):
        return "counts", 0.0
    for kind in ("c2s", "log1p", "normalized"):
        linear = csr.copy()
        to_linear = _TO_LINEAR[kind]
        if to_linear is not None:
            with np.errstate(over="ignore"):
                linear.data = to_linear(linear.data)
            if not np.all(np.isfinite(linear.data)):
                continue
        ok, target = _rows_normalised(linear)
        if ok:
            return kind, target
    return "unknown", 0.0


def inspect_matrix(adata: AnnData, source: str) -> MatrixState:
    """Classify one candidate matrix from a sample of up to ``SAMPLE_ROWS`` rows."""
    rows = sample_rows(adata.n_obs)
    block = _as_csr(source_matrix(adata, source)[rows]).astype(np.float64)
    counted = _count_nonfinite(adata, source)
    if counted is None:
        counted = _locate_nonfinite(block, adata.obs_names[rows], _var_names(adata, source))
    n_bad, where = counted
    min_value = float(block.data.min()) if block.nnz else 0.0
    if n_bad:
        return MatrixState(source, "nonfinite", 0.0, n_bad, where, min_value)
    kind, target = classify_matrix(block)
    return MatrixState(source, kind, target, 0, "", min_value)


def _is_c2s_ready(state: MatrixState, target_sum: float) -> bool:
    return state.kind == "c2s" and abs(state.target_sum - target_sum) <= (
        _CONSTANT_SUM_RTOL * target_sum
    )


def _unusable_error(states: list[MatrixState]) -> Exception:
    listing = "; ".join(s.description for s in states)
    nonfinite = [s for s in states if s.kind == "nonfinite"]
    if nonfinite:
        s = nonfinite[0]
        return NonFiniteValuesError(
            f"{source_label(s.source)} has {s.n_nonfinite} NaN/infinite value(s), first at "
            f"{s.nonfinite_where}, and no other usable matrix exists ({listing})",
            fix="remove or replace the NaN/inf values, or provide raw counts in "
            "layers['counts'] or adata.raw",
        )
    scaled = [s for s in states if s.kind == "scaled"]
    if scaled:
        return NegativeValuesError(
            f"{source_label(scaled[0].source)} looks scaled (z-scored): it has negative values "
            f"(min {scaled[0].min_value:.3g}) and no raw counts or log-normalised matrix "
            f"was found ({listing})",
            fix="provide raw counts in layers['counts'] or adata.raw (e.g. save the AnnData "
            "before sc.pp.scale)",
        )
    negative = [s for s in states if s.kind == "negative"]
    if negative:
        return NegativeValuesError(
            f"{source_label(negative[0].source)} holds counts with negative values "
            f"(min {negative[0].min_value:.3g}); counts cannot be negative",
            fix="provide the unmodified raw counts (layers['counts'] or adata.raw)",
        )
    return NormalizationError(
        f"no matrix suitable for the C2S expression convention was found ({listing})",
        fix="provide raw counts in layers['counts'] or adata.raw, or log1p-normalised values "
        "in X (sc.pp.normalize_total then sc.pp.log1p)",
    )


def _steps(kind: str, source: str, target_sum: float, to_c2s: bool) -> list[str]:
    if not to_c2s:
        return []
    steps = [_TO_LINEAR_STEP[kind]] if kind in _TO_LINEAR_STEP else []
    steps += [f"normalize_total(target_sum={target_sum:g})", "log1p(base=10)"]
    if source == "raw":
        steps.append("subset raw to var_names")
    return steps


def detect_normalization(
    adata: AnnData, layer: str | None = None, target_sum: float = C2S_TARGET_SUM
) -> NormalizationState:
    """Find the best matrix to derive C2S expression values from.

    Preference: ``X`` if it already follows the convention (nothing to compute); else the first
    raw-count matrix (X, counts-like layers, other layers, raw), because then the convention is
    applied exactly; else a natural-log log1p (or linear) normalised matrix, converted exactly;
    else a base-10 log-normalised matrix with another total, rescaled.

    Parameters
    ----------
    adata
        In memory or backed; only a sample of rows is read.
    layer
        Restrict to one matrix: a layer name, ``'X'`` or ``'raw'``.
    target_sum
        The C2S total (1e4).

    Raises
    ------
    NonFiniteValuesError, NegativeValuesError, NormalizationError
        When no candidate is usable; NaN/inf are reported first, then scaled data.
    """
    states = [inspect_matrix(adata, s) for s in _candidate_sources(adata, layer)]
    by_kind = {k: [s for s in states if s.kind == k] for k in USABLE_KINDS}
    if states[0].source != "raw" and _is_c2s_ready(states[0], target_sum):
        chosen, convert = states[0], False
    else:
        ordered = by_kind["counts"] + by_kind["log1p"] + by_kind["normalized"] + by_kind["c2s"]
        if not ordered:
            raise _unusable_error(states)
        chosen = ordered[0]
        convert = not (_is_c2s_ready(chosen, target_sum) and chosen.source != "raw")
    return NormalizationState(
        detected=chosen.kind,
        source=chosen.source,
        steps=_steps(chosen.kind, chosen.source, target_sum, convert),
        target_sum=float(target_sum),
        matrix=chosen.source if not convert else "",
        source_target_sum=chosen.target_sum,
        candidates=states,
    )


def to_c2s(block, kind: str, target_sum: float = C2S_TARGET_SUM) -> sp.csr_matrix:
    """Convert rows of a ``kind`` matrix to C2S expression (pure; used per chunk).

    The arithmetic is that of ``sc.pp.normalize_total(target_sum=...)`` followed by
    ``sc.pp.log1p(base=10)``, done on the CSR arrays directly: wrapping every chunk in an
    AnnData and going through scanpy cost far more than the arithmetic itself on small chunks.

    Parameters
    ----------
    block
        Rows (dense or sparse) of a matrix classified as ``kind``.
    kind
        ``'counts'``, ``'normalized'``, ``'log1p'`` or ``'c2s'``.
    target_sum
        Per-cell total after normalisation.

    Returns
    -------
    scipy.sparse.csr_matrix
        float32, ``log10(1 + x)`` of rows normalised to ``target_sum``, no explicit zeros.
    """
    out = _as_csr(block).astype(np.float64)  # a copy: the caller's block is left as it was
    to_linear = _TO_LINEAR[kind]
    if to_linear is not None:
        out.data = to_linear(out.data)
    size_factors = np.asarray(out.sum(axis=1)).ravel() / target_sum
    size_factors[size_factors == 0] = 1.0  # an empty cell stays empty, as in scanpy
    out.data /= np.repeat(size_factors, np.diff(out.indptr))
    np.log1p(out.data, out=out.data)
    out.data /= np.log(10)  # base-10 log1p computed the way scanpy computes it
    out = out.astype(np.float32)
    out.eliminate_zeros()
    return out


def _read_rows(adata: AnnData, source: str, start: int, stop: int) -> sp.csr_matrix:
    return _as_csr(source_matrix(adata, source)[start:stop])


def _convert_rows(
    adata: AnnData, source: str, kind: str, target_sum: float, start: int, stop: int
) -> sp.csr_matrix:
    block = to_c2s(_read_rows(adata, source, start, stop), kind, target_sum)
    if source == "raw":
        block = block[:, _raw_columns(adata)]
    return block


def normalize(
    adata: AnnData,
    *,
    layer: str | None = None,
    target_sum: float = C2S_TARGET_SUM,
    key_added: str = "c2s_norm",
) -> NormalizationState:
    """Make C2S-convention expression available, without modifying ``X``.

    Parameters
    ----------
    adata
        In memory or backed (``backed='r'``).
    layer
        Use this matrix (layer name, ``'X'`` or ``'raw'``) instead of auto-detecting.
    target_sum
        Per-cell total (1e4 for C2S).
    key_added
        Layer to write the converted matrix to.

    Returns
    -------
    NormalizationState

    Writes
    ------
    ``adata.layers[key_added]``
        float32 CSR C2S matrix, unless ``X`` (or a layer) already follows the convention or the
        data are backed (then values are computed per chunk by :func:`iter_expression_chunks`).
    ``adata.uns['c2s']['normalization']``
        ``{detected, source, steps, target_sum, matrix, source_target_sum}``; ``matrix`` is
        ``'X'``, ``'layers/<name>'`` or ``'on_the_fly'``.
    """
    state = detect_normalization(adata, layer=layer, target_sum=target_sum)
    if not state.matrix:
        if adata.isbacked:
            state.matrix = ON_THE_FLY
        else:
            adata.layers[key_added] = _convert_rows(
                adata, state.source, state.detected, target_sum, 0, adata.n_obs
            )
            state.matrix = f"layers/{key_added}"
    adata.uns.setdefault("c2s", {})["normalization"] = state.to_uns()
    return state


def _recorded_plan(adata: AnnData) -> tuple[str, str | None, float]:
    """(matrix source, kind to convert from or None, target) from uns, else from detection."""
    record = adata.uns.get("c2s", {}).get("normalization")
    if record:
        matrix = str(record["matrix"])
        if matrix == "X" or matrix.startswith("layers/") and matrix[7:] in adata.layers:
            return matrix, None, float(record["target_sum"])
        if matrix == ON_THE_FLY:
            return str(record["source"]), str(record["detected"]), float(record["target_sum"])
    state = detect_normalization(adata)
    if state.matrix:
        return state.matrix, None, state.target_sum
    return state.source, state.detected, state.target_sum


def _iter_chunks(
    adata: AnnData, chunk_size: int, convert: bool
) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """Row chunks of the planned matrix, converted to C2S values when ``convert``."""
    source, kind, target_sum = _recorded_plan(adata)
    raw_columns = _raw_columns(adata) if source == "raw" else None
    for start in range(0, adata.n_obs, chunk_size):
        stop = min(start + chunk_size, adata.n_obs)
        block = _read_rows(adata, source, start, stop)
        if kind is None:  # the recorded matrix already holds C2S values
            block = block.astype(np.float32, copy=False)
        elif convert:
            block = to_c2s(block, kind, target_sum)
        if raw_columns is not None:
            block = block[:, raw_columns]
        if kind is None or convert:
            block.eliminate_zeros()
        n_bad, where = _locate_nonfinite(block, adata.obs_names[start:stop], adata.var_names)
        if n_bad:
            raise NonFiniteValuesError(
                f"{source_label(source)} has {n_bad} NaN/infinite value(s) in cells "
                f"{start}-{stop - 1}, first at {where}",
                fix="remove or replace the NaN/inf values, or provide raw counts in "
                "layers['counts'] or adata.raw",
            )
        yield start, stop, block


def iter_expression_chunks(
    adata: AnnData, chunk_size: int = 10_000
) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """Yield ``(start, stop, X)`` row chunks of C2S-convention expression.

    Works for in-memory and backed AnnData: only ``chunk_size`` rows are read and converted at a
    time. Uses the matrix recorded by :func:`normalize` when present, otherwise detects.

    Parameters
    ----------
    adata
        The data (``n_obs x n_vars``).
    chunk_size
        Rows per chunk.

    Yields
    ------
    start, stop, X
        ``X`` is float32 CSR of shape ``(stop - start, n_vars)`` without explicit zeros.

    Raises
    ------
    NonFiniteValuesError
        A chunk holds NaN/inf values.
    """
    return _iter_chunks(adata, chunk_size, convert=True)


def iter_source_chunks(
    adata: AnnData, chunk_size: int = 10_000
) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """Yield ``(start, stop, X)`` row chunks that order genes within a cell like C2S expression.

    The matrix is the one :func:`iter_expression_chunks` would use (same plan: the C2S matrix
    recorded by :func:`normalize`, else the detected source: counts layer, ``X`` or ``raw``,
    subset to ``var_names``), read as stored, without the conversion. Every conversion step is
    strictly increasing within a cell (``expm1`` or ``10**x - 1``, one positive scale factor per
    cell, ``log10(1 + x)``), so the genes of a cell sort the same on both and equal values stay
    equal; use it where only the order matters (cell sentences). The one difference is float
    rounding: two distinct stored values can round to the same float32 C2S value and become a
    tie there, while here they keep the order of the stored values.

    Parameters
    ----------
    adata
        The data (``n_obs x n_vars``), in memory or backed.
    chunk_size
        Rows per chunk.

    Yields
    ------
    start, stop, X
        CSR of shape ``(stop - start, n_vars)`` in the source's dtype (float32 C2S values when
        a recorded C2S matrix is used); it may hold explicit zeros.

    Raises
    ------
    NonFiniteValuesError
        A chunk holds NaN/inf values.
    """
    return _iter_chunks(adata, chunk_size, convert=False)


def expression_matrix(adata: AnnData) -> sp.csr_matrix | np.ndarray:
    """The in-memory C2S expression matrix (``X`` or ``layers['c2s_norm']``) for small data.

    When :func:`normalize` has not stored one (or the data are backed), the chunks of
    :func:`iter_expression_chunks` are stacked; nothing is written to ``adata``.
    """
    source, kind, _ = _recorded_plan(adata)
    if kind is None and not (adata.isbacked and source == "X"):
        return source_matrix(adata, source)
    return sp.vstack([block for _, _, block in iter_expression_chunks(adata)], format="csr")
