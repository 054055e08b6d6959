"""Normalisation: detection of each kind of matrix and exact conversion to the C2S convention."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import shared_file

from c2s_engine.errors import NegativeValuesError, NonFiniteValuesError, NormalizationError
from c2s_engine.genes import use_gene_symbols
from c2s_engine.normalization import (
    classify_matrix,
    detect_normalization,
    expression_matrix,
    iter_expression_chunks,
    iter_source_chunks,
    normalize,
    to_c2s,
)

COUNTS = np.array([[0, 3, 0, 1, 7], [2, 0, 0, 0, 1], [0, 0, 5, 4, 0], [1, 1, 1, 0, 9]], float)


def c2s_reference(counts) -> np.ndarray:
    """The convention written out: rows scaled to 1e4, then log10(1 + x)."""
    counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts, dtype=np.float64)
    return np.log10(1 + counts / counts.sum(axis=1, keepdims=True) * 1e4)


def _plain(record: dict) -> dict:
    """A uns record after an h5ad round trip holds lists as arrays."""
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in record.items()}


def _dense(m) -> np.ndarray:
    return m.toarray() if sp.issparse(m) else np.asarray(m)


def _counts_adata(n_cells=60, n_genes=40, seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.gamma(0.5, 2.0, size=(n_cells, n_genes))).astype(np.float32)
    counts[:, 0] += 1  # no all-zero cells
    return ad.AnnData(sp.csr_matrix(counts))


def test_to_c2s_on_hand_made_counts():
    out = to_c2s(COUNTS, "counts")
    assert out.dtype == np.float32 and sp.isspmatrix_csr(out)
    assert out.nnz == np.count_nonzero(COUNTS)  # no explicit zeros
    np.testing.assert_allclose(out.toarray(), c2s_reference(COUNTS), rtol=1e-6)
    # Row 2 by hand: 2/3 and 1/3 of 1e4.
    np.testing.assert_allclose(
        out[1].toarray().ravel()[[0, 4]], np.log10(1 + np.array([2e4 / 3, 1e4 / 3])), rtol=1e-6
    )


@pytest.mark.parametrize(
    ("make", "kind", "target"),
    [
        (lambda c: c, "counts", 0.0),
        (lambda c: np.log1p(c / c.sum(1, keepdims=True) * 1e4), "log1p", 1e4),
        (lambda c: np.log1p(c / c.sum(1, keepdims=True) * 1e6), "log1p", 1e6),
        (lambda c: np.log10(1 + c / c.sum(1, keepdims=True) * 1e4), "c2s", 1e4),
        (lambda c: c / c.sum(1, keepdims=True) * 1e4, "normalized", 1e4),
        (lambda c: (c - c.mean(0)) / (c.std(0) + 1), "scaled", 0.0),
        (lambda c: c - 2, "negative", 0.0),
        (lambda c: np.sqrt(c), "unknown", 0.0),
    ],
)
def test_classify_matrix(make, kind, target):
    counts = _dense(_counts_adata().X).astype(np.float64)
    found, total = classify_matrix(make(counts))
    assert found == kind
    assert total == pytest.approx(target, rel=1e-3)


def test_log1p_after_gene_subset_is_still_detected():
    counts = _dense(_counts_adata().X).astype(np.float64)
    logged = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)[:, :25]
    assert classify_matrix(logged) == ("log1p", 0.0)


def test_pbmc68k_reduced_uses_raw(pbmc68k_copy, tmp_path):
    adata = pbmc68k_copy
    x_before = adata.X.copy()
    state = normalize(adata)
    assert state.candidates[0].kind == "scaled"
    assert (state.source, state.detected) == ("raw", "log1p")
    assert state.steps == [
        "expm1",
        "normalize_total(target_sum=10000)",
        "log1p(base=10)",
        "subset raw to var_names",
    ]
    out = adata.layers["c2s_norm"]
    sums = (np.power(10.0, out.toarray().astype(np.float64)) - 1).sum(axis=1)
    np.testing.assert_allclose(sums, 1e4, rtol=1e-3)
    np.testing.assert_array_equal(adata.X, x_before)  # X untouched
    record = adata.uns["c2s"]["normalization"]
    assert record["matrix"] == "layers/c2s_norm" and record["source"] == "raw"
    path = tmp_path / "pbmc.h5ad"
    adata.write_h5ad(path)
    assert _plain(ad.read_h5ad(path).uns["c2s"]["normalization"]) == record


def test_pbmc68k_with_counts_prefers_counts_layer():
    adata = ad.read_h5ad(shared_file("pbmc68k_with_counts/pbmc68k_reduced_with_counts.h5ad"))
    state = normalize(adata)
    assert (state.source, state.detected) == ("layers/counts", "counts")
    np.testing.assert_allclose(
        adata.layers["c2s_norm"].toarray(),
        c2s_reference(adata.layers["counts"]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_kang_natural_log_is_converted_exactly():
    adata = ad.read_h5ad(shared_file("kang_pbmc_ifnb/kang_pbmc_ifnb.h5ad"))
    by_default = detect_normalization(adata)
    assert by_default.source == "layers/counts_recovered"  # counts beat log data
    state = normalize(adata, layer="X")
    assert (state.source, state.detected) == ("X", "log1p")
    assert state.source_target_sum == 0.0  # genes were subset after normalising: rows differ
    converted = adata.layers["c2s_norm"].toarray()
    expected = c2s_reference(adata.layers["counts_recovered"])
    np.testing.assert_allclose(converted, expected, atol=2e-3)


def test_baron_counts_convention_and_round_trip(tmp_path):
    adata = ad.read_h5ad(shared_file("baron_mouse_pancreas/baron_mouse1_pancreas.h5ad"))
    state = normalize(adata)
    assert (state.source, state.detected, state.matrix) == ("X", "counts", "layers/c2s_norm")
    np.testing.assert_allclose(
        adata.layers["c2s_norm"].toarray(), c2s_reference(adata.X), rtol=1e-5, atol=1e-6
    )
    expected_record = {
        "detected": "counts",
        "source": "X",
        "steps": ["normalize_total(target_sum=10000)", "log1p(base=10)"],
        "target_sum": 10000.0,
        "matrix": "layers/c2s_norm",
        "source_target_sum": 0.0,
    }
    assert adata.uns["c2s"]["normalization"] == expected_record
    path = tmp_path / "baron.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert _plain(back.uns["c2s"]["normalization"]) == expected_record
    np.testing.assert_array_equal(
        back.layers["c2s_norm"].toarray(), adata.layers["c2s_norm"].toarray()
    )


def test_c2s_x_is_used_without_copy():
    adata = _counts_adata()
    adata.X = sp.csr_matrix(c2s_reference(adata.X).astype(np.float32))
    state = normalize(adata)
    assert (state.source, state.detected, state.matrix, state.steps) == ("X", "c2s", "X", [])
    assert "c2s_norm" not in adata.layers
    assert expression_matrix(adata) is adata.X


def test_raw_after_gene_symbols_is_matched_through_gene_ids():
    counts = _counts_adata(n_genes=4)
    ids = [f"ENSG{n:011d}" for n in range(1, 5)]
    adata = ad.AnnData(
        np.zeros_like(counts.X.toarray()) - 1.5,  # scaled-like X
        var={"gene_symbols": ["A1", "B2", "C3", "D4"]},
    )
    adata.var_names = ids
    adata.raw = ad.AnnData(counts.X.copy(), var=adata.var.copy())
    adata.X[0, 0] = 0.3
    use_gene_symbols(adata)
    state = normalize(adata)
    assert state.source == "raw"
    np.testing.assert_allclose(
        adata.layers["c2s_norm"].toarray(), c2s_reference(counts.X), rtol=1e-5
    )


def test_scaled_without_alternative_raises(pbmc68k_copy):
    adata = pbmc68k_copy
    adata.raw = None
    with pytest.raises(NegativeValuesError) as info:
        normalize(adata)
    message = str(info.value)
    assert "X looks scaled (z-scored): it has negative values" in message
    assert "Fix: provide raw counts in layers['counts'] or adata.raw" in message
    assert "c2s_norm" not in adata.layers


def test_negative_counts_raise():
    adata = ad.AnnData(np.array([[1.0, -2.0, 3.0], [0.0, 4.0, 5.0]]))
    with pytest.raises(
        NegativeValuesError, match=r"X holds counts with negative values \(min -2\)"
    ):
        detect_normalization(adata)


def test_nonfinite_values_raise_with_location():
    adata = _counts_adata()
    adata.X = adata.X.toarray()
    adata.X[3, 7] = np.nan
    adata.X[10, 2] = np.inf
    with pytest.raises(NonFiniteValuesError) as info:
        normalize(adata)
    assert "X has 2 NaN/infinite value(s), first at cell '3', gene '7'" in str(info.value)


def test_nonfinite_in_x_with_counts_layer_uses_counts():
    adata = _counts_adata()
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.toarray()
    adata.X[0, 0] = np.nan
    assert detect_normalization(adata).source == "layers/counts"


def test_unknown_matrix_raises_normalization_error():
    adata = _counts_adata()
    adata.X = np.sqrt(adata.X.toarray())
    with pytest.raises(
        NormalizationError, match="no matrix suitable for the C2S expression convention"
    ):
        normalize(adata)


def test_missing_layer_named():
    with pytest.raises(NormalizationError, match=r"layer 'counts' does not exist \(layers: none\)"):
        normalize(_counts_adata(), layer="counts")


def test_iter_chunks_in_memory_matches_layer():
    adata = _counts_adata(n_cells=25)
    normalize(adata)
    chunks = list(iter_expression_chunks(adata, chunk_size=10))
    assert [(a, b) for a, b, _ in chunks] == [(0, 10), (10, 20), (20, 25)]
    stacked = sp.vstack([c for _, _, c in chunks]).toarray()
    np.testing.assert_array_equal(stacked, adata.layers["c2s_norm"].toarray())
    assert all(c.dtype == np.float32 and sp.isspmatrix_csr(c) for _, _, c in chunks)


def test_iter_chunks_backed_equals_in_memory():
    path = shared_file("baron_mouse_pancreas/baron_mouse1_pancreas.h5ad")
    in_memory = ad.read_h5ad(path)
    normalize(in_memory)
    backed = ad.read_h5ad(path, backed="r")
    state = normalize(backed)
    assert state.matrix == "on_the_fly"
    assert "c2s_norm" not in backed.layers
    seen = 0
    for start, stop, chunk in iter_expression_chunks(backed, chunk_size=300):
        assert chunk.shape == (stop - start, backed.n_vars)
        assert chunk.dtype == np.float32 and not np.any(chunk.data == 0)
        expected = in_memory.layers["c2s_norm"][start:stop]
        assert (chunk != expected).nnz == 0
        seen = stop
    assert seen == backed.n_obs
    # Without a recorded state it detects on its own.
    fresh = ad.read_h5ad(path, backed="r")
    first = next(iter_expression_chunks(fresh, chunk_size=100))[2]
    assert (first != in_memory.layers["c2s_norm"][:100]).nnz == 0
    np.testing.assert_array_equal(
        expression_matrix(fresh).toarray(), in_memory.layers["c2s_norm"].toarray()
    )


def test_iter_chunks_detects_nan_in_chunk():
    adata = ad.AnnData(sp.csr_matrix(np.log10(1 + COUNTS / COUNTS.sum(1, keepdims=True) * 1e4)))
    normalize(adata)
    adata.X.data[-1] = np.nan
    with pytest.raises(NonFiniteValuesError, match=r"cells 2-3, first at cell '3', gene '4'"):
        list(iter_expression_chunks(adata, chunk_size=2))


def _scanpy_c2s(linear) -> np.ndarray:
    """The convention through scanpy itself: normalize_total(1e4) then log1p(base=10)."""
    import scanpy as sc

    chunk = ad.AnnData(sp.csr_matrix(linear, dtype=np.float64))
    sc.pp.normalize_total(chunk, target_sum=1e4)
    sc.pp.log1p(chunk, base=10)
    return chunk.X.toarray()


def _kang_log1p_only() -> ad.AnnData:
    """Kang with only the natural-log X, so that X is the detected source."""
    adata = ad.read_h5ad(shared_file("kang_pbmc_ifnb/kang_pbmc_ifnb.h5ad"))
    del adata.layers["counts_recovered"]
    return adata


def test_to_c2s_equals_scanpy_on_real_data(pbmc68k):
    baron = ad.read_h5ad(shared_file("baron_mouse_pancreas/baron_mouse1_pancreas.h5ad"))
    kang = _kang_log1p_only()
    cases = [
        (baron.X, "counts", baron.X),
        (pbmc68k.raw.X, "log1p", np.expm1(_dense(pbmc68k.raw.X).astype(np.float64))),
        (kang.X, "log1p", np.expm1(_dense(kang.X).astype(np.float64))),
    ]
    for stored, kind, linear in cases:
        ours = to_c2s(stored, kind)
        assert ours.dtype == np.float32 and ours.nnz == sp.csr_matrix(stored).count_nonzero()
        np.testing.assert_allclose(ours.toarray(), _scanpy_c2s(linear), rtol=1e-6, atol=0)


def test_to_c2s_keeps_empty_cells_empty_and_input_unchanged():
    counts = sp.csr_matrix(np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 3.0]]))
    before = counts.copy()
    out = to_c2s(counts, "counts")
    np.testing.assert_allclose(
        out.toarray(), [[0.0, 0.0, 0.0], np.log10(1 + np.array([2500.0, 0.0, 7500.0]))]
    )
    assert out.nnz == 2
    assert (counts != before).nnz == 0


def test_iter_source_chunks_reads_the_detected_source_as_stored(pbmc68k_copy):
    baron = ad.read_h5ad(shared_file("baron_mouse_pancreas/baron_mouse1_pancreas.h5ad"))
    chunks = list(iter_source_chunks(baron, chunk_size=300))
    assert [(a, b) for a, b, _ in chunks] == [(0, 300), (300, 600), (600, 822)]
    stacked = sp.vstack([c for _, _, c in chunks])
    assert (stacked != baron.X).nnz == 0  # the raw counts, not normalised
    assert "c2s" not in baron.uns  # reading writes nothing

    # pbmc68k_reduced: X is scaled, the source is raw (log1p) subset to var_names.
    pbmc = pbmc68k_copy
    stacked = sp.vstack([c for _, _, c in iter_source_chunks(pbmc, chunk_size=256)])
    expected = pbmc.raw[:, pbmc.var_names].X
    assert stacked.shape == pbmc.shape
    np.testing.assert_array_equal(stacked.toarray(), _dense(expected))

    # Once normalize() stored the C2S layer, that layer is read (nothing left to compute).
    normalize(pbmc)
    stacked = sp.vstack([c for _, _, c in iter_source_chunks(pbmc, chunk_size=256)])
    np.testing.assert_array_equal(stacked.toarray(), pbmc.layers["c2s_norm"].toarray())


def test_iter_source_chunks_backed_and_nan_location():
    path = shared_file("baron_mouse_pancreas/baron_mouse1_pancreas.h5ad")
    backed = ad.read_h5ad(path, backed="r")
    start, stop, first = next(iter_source_chunks(backed, chunk_size=100))
    assert (start, stop) == (0, 100)
    assert (first != ad.read_h5ad(path).X[:100]).nnz == 0
    backed.file.close()

    adata = ad.AnnData(sp.csr_matrix(np.log10(1 + COUNTS / COUNTS.sum(1, keepdims=True) * 1e4)))
    normalize(adata)
    adata.X.data[-1] = np.nan
    with pytest.raises(NonFiniteValuesError, match=r"cells 2-3, first at cell '3', gene '4'"):
        list(iter_source_chunks(adata, chunk_size=2))
