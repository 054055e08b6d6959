"""Check an AnnData before C2S use and report every problem at once.

:func:`validate` never raises for data problems: it collects them as :class:`Problem` entries
(errors block the run, warnings do not). :func:`prepare` is the one call the CLI and the app make
after :func:`~c2s_engine.readers.read`: validate, stop on the first error with its typed
exception (leaving the data untouched), then apply gene symbols and the C2S normalisation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from anndata.abc import CSCDataset, CSRDataset

from c2s_engine import errors
from c2s_engine.genes import (
    UNKNOWN,
    detect_identifiers,
    duplicate_names,
    resolve_gene_symbols,
    use_gene_symbols,
)
from c2s_engine.normalization import (
    C2S_TARGET_SUM,
    detect_normalization,
    normalize,
    sample_rows,
    source_label,
    source_matrix,
)

# Genes below which sentences get short enough to mention it (targeted spatial panels).
FEW_GENES = 200
SPATIAL_KEYS = ("spatial", "X_spatial")
_ID_WORDS = ("barcode", "cell_id", "cellid", "obs_names", "index")

_CODES: dict[type[errors.C2SError], str] = {
    errors.EmptyDataError: "empty_data",
    errors.NonFiniteValuesError: "non_finite_values",
    errors.NegativeValuesError: "negative_values",
    errors.NormalizationError: "no_usable_matrix",
    errors.GeneIdentifierError: "gene_identifiers",
}
_ERROR_TYPES = {code: cls for cls, code in _CODES.items()}


@dataclass
class Problem:
    """One finding: ``severity`` is ``'error'`` (blocks C2S use) or ``'warning'``."""

    severity: str
    code: str
    message: str
    fix: str = ""

    @classmethod
    def from_error(cls, err: errors.C2SError) -> Problem:
        """An error Problem carrying a typed exception's message and fix."""
        return cls("error", _CODES.get(type(err), "error"), err.message, err.fix or "")


@dataclass
class ValidationReport:
    """What the data hold and what C2S will use.

    Attributes
    ----------
    n_cells, n_genes
        Shape.
    identifier_kind
        ``'symbol'``, ``'ensembl'`` or ``'mixed'``.
    symbol_source
        ``'var_names'`` or ``"var['<column>']"`` (``''`` when no symbols are available).
    organism, organism_source
        Prompt word and ``'detected'`` / ``'user'``.
    normalization
        Human-readable state of the matrices.
    matrix
        The matrix C2S values are derived from (``'X'``, ``'layers/<name>'``, ``'raw'``).
    label_columns
        obs columns that look like cell labels, with their number of levels.
    embeddings
        obsm keys.
    spatial
        ``{'key': ..., 'shape': [n, d]}`` or ``{}``.
    sparse, backed
        Storage of X.
    problems
        Errors and warnings.
    """

    n_cells: int
    n_genes: int
    identifier_kind: str = ""
    symbol_source: str = ""
    organism: str = UNKNOWN
    organism_source: str = "detected"
    normalization: str = ""
    matrix: str = ""
    label_columns: dict[str, int] = field(default_factory=dict)
    embeddings: list[str] = field(default_factory=list)
    spatial: dict = field(default_factory=dict)
    sparse: bool = False
    backed: bool = False
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem is an error."""
        return not any(p.severity == "error" for p in self.problems)

    def to_dict(self) -> dict:
        """JSON-serialisable dict of every field plus ``ok``."""
        out = asdict(self)
        out["ok"] = self.ok
        return out

    def to_text(self) -> str:
        """A readable multi-line report (what ``c2s inspect`` prints)."""
        labels = ", ".join(f"{k} ({v})" for k, v in self.label_columns.items()) or "none"
        spatial = (
            f"obsm['{self.spatial['key']}'] {tuple(self.spatial['shape'])}"
            if self.spatial
            else "none"
        )
        lines = [
            f"Cells x genes:   {self.n_cells} x {self.n_genes} "
            f"({'sparse' if self.sparse else 'dense'}{', backed on disk' if self.backed else ''})",
            f"Gene names:      {self.identifier_kind or '-'}"
            f" (symbols from {self.symbol_source or 'nowhere'})",
            f"Organism:        {self.organism} ({self.organism_source})",
            f"Expression:      {self.normalization or '-'}",
            f"C2S values from: {self.matrix or '-'}",
            f"Label columns:   {labels}",
            f"Embeddings:      {', '.join(self.embeddings) or 'none'}",
            f"Spatial:         {spatial}",
        ]
        if self.problems:
            lines.append("Problems:")
            for p in self.problems:
                fix = f" Fix: {p.fix.rstrip('.')}." if p.fix else ""
                lines.append(f"  [{p.severity}] {p.message.rstrip('.')}.{fix}")
        else:
            lines.append("Problems:        none")
        return "\n".join(lines)

    def raise_for_errors(self) -> None:
        """Raise the typed error of the first error problem, if any."""
        for p in self.problems:
            if p.severity == "error":
                raise _ERROR_TYPES.get(p.code, errors.C2SError)(p.message, p.fix or None)


def label_columns(adata: AnnData) -> dict[str, int]:
    """obs columns that look like cell labels: text/categorical with 2..min(200, n/2) levels."""
    max_levels = min(200, adata.n_obs // 2)
    found = {}
    for name, values in adata.obs.items():
        is_text = isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object
        if not is_text or any(word in str(name).lower() for word in _ID_WORDS):
            continue
        n_levels = int(values.nunique(dropna=True))
        if 2 <= n_levels <= max_levels:
            found[str(name)] = n_levels
    return found


def _spatial(adata: AnnData) -> dict:
    for key in SPATIAL_KEYS:
        if key in adata.obsm:
            return {"key": key, "shape": [int(n) for n in np.shape(adata.obsm[key])]}
    return {}


def _all_zero_cells(adata: AnnData) -> tuple[int, int]:
    """Cells without any non-zero value in X: (count, cells examined); sampled when backed."""
    rows = sample_rows(adata.n_obs) if adata.isbacked else slice(None)
    block = source_matrix(adata, "X")[rows]
    if sp.issparse(block):
        per_cell = np.diff(block.tocsr().indptr)
    else:
        per_cell = np.count_nonzero(np.asarray(block), axis=1)
    return int((per_cell == 0).sum()), int(len(per_cell))


def _check_genes(
    adata: AnnData, report: ValidationReport, organism: str | None, gene_symbols: str | None
) -> None:
    identifiers = detect_identifiers(adata, organism=organism)
    report.identifier_kind = identifiers.kind
    report.organism, report.organism_source = identifiers.organism, identifiers.organism_source
    try:
        names, column = resolve_gene_symbols(adata, gene_symbols, identifiers)
    except errors.GeneIdentifierError as err:
        report.problems.append(Problem.from_error(err))
        return
    report.symbol_source = f"var['{column}']" if column else "var_names"
    if identifiers.kind == "mixed" and not column:
        report.problems.append(
            Problem(
                "warning",
                "mixed_identifiers",
                f"{identifiers.fraction_ensembl:.0%} of var_names are Ensembl IDs and no symbol "
                "column was found; those genes appear as IDs in cell sentences",
                "pass gene_symbols= the var column holding gene symbols",
            )
        )
    n_dup = duplicate_names(names)
    if n_dup:
        examples = ", ".join(map(str, pd.Index(names)[pd.Index(names).duplicated()][:3]))
        report.problems.append(
            Problem(
                "warning",
                "duplicate_gene_names",
                f"{n_dup} duplicated gene name(s) (e.g. {examples}) will be made unique "
                "by appending -1, -2 and so on",
            )
        )
    if report.organism == UNKNOWN:
        report.problems.append(
            Problem(
                "warning",
                "unknown_organism",
                "the organism could not be told from the gene names",
                "pass organism='human' or organism='mouse'",
            )
        )


def validate(
    adata: AnnData,
    *,
    organism: str | None = None,
    gene_symbols: str | None = None,
    layer: str | None = None,
) -> ValidationReport:
    """Inspect ``adata`` for C2S use without modifying it.

    Cheap on big or backed data: value checks read a sample of rows.

    Parameters
    ----------
    adata
        In memory or backed.
    organism
        'human', 'mouse', 'Homo sapiens' or 'Mus musculus'; detected when ``None``.
    gene_symbols
        var column holding gene symbols; detected when ``None``.
    layer
        Matrix to derive C2S values from (layer name, 'X' or 'raw'); detected when ``None``.

    Returns
    -------
    ValidationReport
        Data problems are recorded in ``problems``, never raised.
    """
    report = ValidationReport(
        n_cells=int(adata.n_obs),
        n_genes=int(adata.n_vars),
        label_columns=label_columns(adata) if adata.n_obs else {},
        embeddings=[str(k) for k in adata.obsm],
        spatial=_spatial(adata),
        sparse=bool(sp.issparse(adata.X) or isinstance(adata.X, (CSRDataset, CSCDataset))),
        backed=bool(adata.isbacked),
    )
    if adata.n_obs == 0 or adata.n_vars == 0:
        report.problems.append(
            Problem(
                "error",
                "empty_data",
                f"the data have {adata.n_obs} cells and {adata.n_vars} genes",
                "provide a matrix with at least one cell and one gene",
            )
        )
        return report
    _check_genes(adata, report, organism, gene_symbols)
    try:
        state = detect_normalization(adata, layer=layer)
    except errors.C2SError as err:
        report.problems.append(Problem.from_error(err))
    else:
        report.normalization = state.description
        report.matrix = state.source
        for candidate in state.candidates:
            if candidate.kind in ("scaled", "negative", "nonfinite") and (
                candidate.source != state.source
            ):
                report.problems.append(
                    Problem(
                        "warning",
                        f"unused_{candidate.kind}_matrix",
                        f"{candidate.description}; using {source_label(state.source)} instead",
                    )
                )
    n_zero, n_seen = _all_zero_cells(adata)
    if n_zero:
        scope = f" of {n_seen} sampled" if n_seen < adata.n_obs else ""
        report.problems.append(
            Problem(
                "warning",
                "all_zero_cells",
                f"{n_zero}{scope} cell(s) have no expressed gene; their cell sentences are empty",
                "filter them out (sc.pp.filter_cells(adata, min_genes=1))",
            )
        )
    if adata.n_vars < FEW_GENES:
        report.problems.append(
            Problem(
                "warning",
                "few_genes",
                f"only {adata.n_vars} genes: cell sentences hold at most {adata.n_vars} genes "
                "(expected for targeted panels, but far from the 200 the models were trained on)",
            )
        )
    if adata.obs_names.has_duplicates:
        report.problems.append(
            Problem(
                "warning",
                "duplicate_cell_names",
                f"{int(adata.obs_names.duplicated().sum())} duplicated cell names",
                "make them unique (adata.obs_names_make_unique())",
            )
        )
    return report


def prepare(
    adata: AnnData,
    *,
    organism: str | None = None,
    gene_symbols: str | None = None,
    layer: str | None = None,
    target_sum: float = C2S_TARGET_SUM,
) -> ValidationReport:
    """Validate, then make ``adata`` ready for cell sentences (the call to make after ``read``).

    Steps: :func:`validate`; raise the typed error of the first error (``adata`` is still
    untouched then); :func:`~c2s_engine.genes.use_gene_symbols` (symbols, unique names);
    :func:`~c2s_engine.normalization.normalize`.

    Parameters
    ----------
    adata
        Modified in place on success.
    organism, gene_symbols, layer
        As for :func:`validate`.
    target_sum
        C2S per-cell total (1e4).

    Returns
    -------
    ValidationReport
        The report made before any change.

    Writes
    ------
    ``uns['c2s']['identifiers']``, ``uns['c2s']['normalization']``, ``layers['c2s_norm']``
        See :func:`~c2s_engine.genes.use_gene_symbols` and
        :func:`~c2s_engine.normalization.normalize`.

    Raises
    ------
    C2SError
        The typed error of the first problem with severity 'error'.
    """
    report = validate(adata, organism=organism, gene_symbols=gene_symbols, layer=layer)
    report.raise_for_errors()
    use_gene_symbols(adata, gene_symbols, organism=organism)
    normalize(adata, layer=layer, target_sum=target_sum)
    return report
