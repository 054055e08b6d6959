"""Gene identifiers (symbols vs Ensembl IDs) and organism detection.

C2S models read gene *symbols*, so Ensembl IDs have to be swapped for the symbol column that
most files carry (CELLxGENE ``feature_name``, 10x ``gene_symbols``, ...). The organism is only
needed for the prompt words "Homo sapiens" / "Mus musculus".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from anndata import AnnData

from c2s_engine.errors import GeneIdentifierError

HUMAN = "Homo sapiens"
MOUSE = "Mus musculus"
UNKNOWN = "unknown"

ENSEMBL_RE = r"^ENS[A-Z]*G\d{11}(\.\d+)?$"
# Searched case-insensitively, in this order of preference.
SYMBOL_COLUMNS = (
    "feature_name",
    "gene_symbols",
    "gene_symbol",
    "gene_name",
    "gene_names",
    "symbol",
    "symbols",
    "gene",
    "features",
    "name",
)
_ORGANISM_ALIASES = {
    "human": HUMAN,
    "homo sapiens": HUMAN,
    "hs": HUMAN,
    "mouse": MOUSE,
    "mus musculus": MOUSE,
    "mm": MOUSE,
}
# Above this fraction of Ensembl-looking names the var_names are called 'ensembl', at or below
# the lower one 'symbol'; in between 'mixed'.
_ENSEMBL_KIND_MIN = 0.9
_SYMBOL_KIND_MAX = 0.1


@dataclass
class GeneIdentifiers:
    """What the var_names are and which organism they belong to.

    Attributes
    ----------
    kind
        ``'symbol'``, ``'ensembl'`` or ``'mixed'`` (of ``adata.var_names``).
    fraction_ensembl
        Fraction of var_names matching the Ensembl gene-id pattern.
    symbol_column
        The var column holding gene symbols (only looked for when var_names are not symbols),
        or ``None``.
    organism
        ``'Homo sapiens'``, ``'Mus musculus'`` or ``'unknown'``.
    organism_source
        ``'detected'`` or ``'user'``.
    examples
        A few var_names, for reports.
    """

    kind: str
    fraction_ensembl: float
    symbol_column: str | None
    organism: str
    organism_source: str
    examples: list[str] = field(default_factory=list)


def is_ensembl(names: pd.Index | pd.Series | list[str]) -> np.ndarray:
    """Boolean mask of the names that look like Ensembl gene IDs (``ENSG...``, ``ENSMUSG...``)."""
    series = pd.Series(np.asarray(names, dtype=object)).astype(str)
    return series.str.match(ENSEMBL_RE).to_numpy(dtype=bool)


def resolve_organism(organism: str) -> str:
    """Map a user's organism word ('human', 'Mus musculus', ...) to the prompt word."""
    resolved = _ORGANISM_ALIASES.get(str(organism).strip().lower())
    if resolved is None:
        raise GeneIdentifierError(
            f"organism {organism!r} is not supported",
            fix="pass organism='human' (Homo sapiens) or organism='mouse' (Mus musculus)",
        )
    return resolved


def organism_from_ensembl(ids: pd.Index | np.ndarray) -> str:
    """Organism by majority of Ensembl prefixes: ``ENSG`` -> human, ``ENSMUSG`` -> mouse."""
    ids = pd.Series(np.asarray(ids, dtype=object)).astype(str)
    n_human = int(ids.str.match(r"^ENSG\d").sum())
    n_mouse = int(ids.str.match(r"^ENSMUSG\d").sum())
    if n_human == n_mouse:
        return UNKNOWN
    return HUMAN if n_human > n_mouse else MOUSE


def organism_from_symbols(symbols: pd.Index | np.ndarray) -> str:
    """Organism by majority vote of symbol casing over symbols that contain letters.

    Human symbols are upper case (``CD3E``; the ``orf`` of ``C1orf112`` is the one lower-case
    exception), mouse symbols are title case (``Cd3e``, ``0610007P14Rik``).
    """
    names = pd.Series(np.asarray(symbols, dtype=object)).astype(str)
    names = names[names.str.contains(r"[A-Za-z]") & ~names.str.match(ENSEMBL_RE)]
    without_orf = names.str.replace(r"\d+orf\d+", "", regex=True)
    human = without_orf.str.contains(r"[A-Z]") & ~without_orf.str.contains(r"[a-z]")
    mouse = names.str.contains(r"[A-Z][a-z]")
    n_human, n_mouse = int(human.sum()), int((mouse & ~human).sum())
    if n_human == n_mouse:
        return UNKNOWN
    return HUMAN if n_human > n_mouse else MOUSE


def find_symbol_column(adata: AnnData) -> str | None:
    """The var column holding gene symbols: a known name whose values are mostly not Ensembl IDs."""
    by_lower = {str(col).lower(): col for col in adata.var.columns}
    for name in SYMBOL_COLUMNS:
        col = by_lower.get(name)
        if col is None:
            continue
        values = adata.var[col]
        if values.dtype.kind in "biufc":
            continue
        present = values.dropna().astype(str)
        present = present[present.str.strip() != ""]
        if len(present) >= 0.5 * adata.n_vars and is_ensembl(present).mean() < 0.5:
            return str(col)
    return None


def detect_identifiers(adata: AnnData, organism: str | None = None) -> GeneIdentifiers:
    """Describe ``adata.var_names``: symbol or Ensembl, the symbol column, and the organism.

    Parameters
    ----------
    adata
        The data; not modified.
    organism
        Overrides detection ('human', 'mouse', 'Homo sapiens', 'Mus musculus').

    Returns
    -------
    GeneIdentifiers
        The organism is taken from Ensembl prefixes when var_names are Ensembl IDs, else from
        the casing of the symbols.
    """
    names = adata.var_names
    fraction = float(is_ensembl(names).mean()) if len(names) else 0.0
    if fraction >= _ENSEMBL_KIND_MIN:
        kind = "ensembl"
    elif fraction <= _SYMBOL_KIND_MAX:
        kind = "symbol"
    else:
        kind = "mixed"
    symbol_column = find_symbol_column(adata) if kind != "symbol" else None

    if organism is not None:
        organism_word, source = resolve_organism(organism), "user"
    else:
        source = "detected"
        organism_word = organism_from_ensembl(names) if kind != "symbol" else UNKNOWN
        if organism_word == UNKNOWN:
            symbols = adata.var[symbol_column] if symbol_column else names
            organism_word = organism_from_symbols(symbols)
    return GeneIdentifiers(
        kind=kind,
        fraction_ensembl=fraction,
        symbol_column=symbol_column,
        organism=organism_word,
        organism_source=source,
        examples=[str(n) for n in names[:5]],
    )


def symbol_column_error(adata: AnnData) -> GeneIdentifierError:
    """The error for Ensembl var_names without a usable symbol column."""
    example = adata.var_names[0] if adata.n_vars else "ENSG..."
    columns = ", ".join(map(str, adata.var.columns)) or "none"
    return GeneIdentifierError(
        f"var_names look like Ensembl IDs (e.g. {example}) and no gene-symbol column was found "
        f"(var columns: {columns})",
        fix="choose the var column holding gene symbols (gene_symbols=...), or add one "
        "(e.g. var['gene_symbols']) before loading; C2S models read gene symbols",
    )


def resolve_gene_symbols(
    adata: AnnData, column: str | None = None, identifiers: GeneIdentifiers | None = None
) -> tuple[pd.Index, str]:
    """The var names C2S will use, without modifying ``adata``.

    Parameters
    ----------
    adata
        The data.
    column
        A var column of gene symbols to use; auto-detected when ``None``.
    identifiers
        A previous :func:`detect_identifiers` result, to avoid detecting twice.

    Returns
    -------
    names, column
        The new names (not yet made unique; a missing symbol falls back to the current name)
        and the column they came from (``''`` when the var_names are kept).

    Raises
    ------
    GeneIdentifierError
        ``column`` does not exist, or var_names are Ensembl IDs and no symbol column exists.
    """
    if column is not None and column not in adata.var.columns:
        columns = ", ".join(map(str, adata.var.columns)) or "none"
        raise GeneIdentifierError(
            f"var column {column!r} does not exist (var columns: {columns})",
            fix="pass gene_symbols= one of the var columns that holds gene symbols",
        )
    if column is None:
        identifiers = identifiers or detect_identifiers(adata)
        if identifiers.kind == "symbol":
            return pd.Index(adata.var_names.astype(str)), ""
        if identifiers.symbol_column is None:
            if identifiers.kind == "ensembl":
                raise symbol_column_error(adata)
            return pd.Index(adata.var_names.astype(str)), ""
        column = identifiers.symbol_column
    symbols = adata.var[column].astype(object)
    missing = symbols.isna() | (symbols.astype(str).str.strip() == "")
    names = symbols.astype(str).where(~missing, pd.Series(adata.var_names, index=symbols.index))
    return pd.Index(names.astype(str).to_numpy()), column


def use_gene_symbols(
    adata: AnnData, column: str | None = None, *, organism: str | None = None
) -> None:
    """Make ``adata.var_names`` unique gene symbols, in place.

    When var_names are Ensembl IDs they move to ``var['gene_ids']`` and var_names are taken
    from the symbol column (``column`` or the auto-detected one); a missing symbol keeps its ID.
    Duplicated names are made unique with anndata's ``var_names_make_unique`` and a warning
    is issued. Mouse symbols are kept as they are (never upper-cased).

    Parameters
    ----------
    adata
        Modified in place.
    column
        Var column holding gene symbols; auto-detected when ``None``.
    organism
        Overrides organism detection ('human', 'mouse', 'Homo sapiens', 'Mus musculus').

    Writes
    ------
    ``adata.uns['c2s']['identifiers']``
        ``{kind, symbol_column ('' when var_names are used), organism, organism_source,
        n_duplicates_renamed}``.

    Raises
    ------
    GeneIdentifierError
        Ensembl var_names and no symbol column, an unknown ``column`` or ``organism``.
    """
    identifiers = detect_identifiers(adata, organism=organism)
    names, used_column = resolve_gene_symbols(adata, column, identifiers)
    if used_column:
        adata.var["gene_ids"] = adata.var_names.astype(str).to_numpy()
        adata.var_names = names
    duplicated = adata.var_names.duplicated()
    n_renamed = int(duplicated.sum())
    if n_renamed:
        examples = ", ".join(map(str, adata.var_names[duplicated][:3]))
        adata.var_names_make_unique()
        warnings.warn(
            f"{n_renamed} duplicated gene name(s) made unique by appending -1, -2 and so on "
            f"(e.g. {examples})",
            UserWarning,
            stacklevel=2,
        )
    adata.uns.setdefault("c2s", {})["identifiers"] = {
        "kind": identifiers.kind,
        "symbol_column": used_column,
        "organism": identifiers.organism,
        "organism_source": identifiers.organism_source,
        "n_duplicates_renamed": n_renamed,
    }


def duplicate_names(names: pd.Index) -> int:
    """How many names would be renamed by ``var_names_make_unique``."""
    return int(pd.Index(names).duplicated().sum())


__all__ = [
    "ENSEMBL_RE",
    "HUMAN",
    "MOUSE",
    "SYMBOL_COLUMNS",
    "UNKNOWN",
    "GeneIdentifiers",
    "detect_identifiers",
    "duplicate_names",
    "find_symbol_column",
    "is_ensembl",
    "organism_from_ensembl",
    "organism_from_symbols",
    "resolve_gene_symbols",
    "resolve_organism",
    "symbol_column_error",
    "use_gene_symbols",
]
