"""Gene-level agreement of generated with real cells: Kendall tau, Pearson r, gene overlap.

**Kendall tau over a gene program** (paper section 4.6.9). Each cell gives every gene of the
program a rank:

* a cell sentence (a string, or a list of genes in descending expression): the gene's 1-based
  position; a program gene the sentence does not name is not expressed and gets the shared
  lowest rank ``n + 1``, ``n`` being the number of distinct genes in the sentence ("if 950
  genes are generated, the remaining 28 share rank 951");
* expression values (a mapping or :class:`pandas.Series` gene -> value, e.g. a real cell or
  the mean of real perturbed cells from :func:`mean_expression`): ranks by descending value,
  equal values tied; genes with value 0 or absent share the lowest rank.

Tau is ``scipy.stats.kendalltau`` (tau-b) of the two rank vectors. The paper writes
``(n_c - n_d) / (n (n - 1) / 2)`` (tau-a) and stresses that tied ranks are handled; tau-b is
that formula with the denominator corrected for ties, and equal to it when there are none.
When every program gene is tied in one of the cells (e.g. the generated sentence names none
of them) tau is undefined and NaN is returned.

**Pearson r of the mean expression change**: ``r(mean(real perturbed) - mean(control),
mean(predicted perturbed) - mean(control))`` over genes (``scipy.stats.pearsonr``).

**Gene overlap** (paper section "Evaluation"): ``|G_gen ∩ G_ref| / |G_ref|`` for the gene sets
of a generated and a reference sentence, as a fraction (x100 for %).

Sentences are split on whitespace and a trailing ``'.'`` is stripped from each word, as in
:func:`c2s_engine.reverse.reconstruct`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.stats import kendalltau, pearsonr, rankdata

from c2s_engine.errors import MetricError
from c2s_engine.metrics.embeddings import cell_matrix

CellLike = str | Sequence[str] | Mapping[str, float] | pd.Series


def sentence_genes(sentence: str | Sequence[str]) -> list[str]:
    """The genes of a sentence in order (words, trailing ``'.'`` stripped, empties dropped)."""
    words = sentence.split() if isinstance(sentence, str) else [str(w) for w in sentence]
    return [w for w in (w.rstrip(".") for w in words) if w]


def gene_ranks(cell: CellLike, genes: Sequence[str]) -> np.ndarray:
    """Rank (1 = highest) of each of ``genes`` in ``cell``; unexpressed genes share the last.

    Parameters
    ----------
    cell
        A cell sentence (string or list of genes, highest first), or expression values
        (mapping / Series gene -> value).
    genes
        The gene program.

    Returns
    -------
    numpy.ndarray
        float64 ranks, one per gene of ``genes`` (see the module docstring).
    """
    if isinstance(cell, Mapping | pd.Series):
        values = pd.Series(cell, dtype=np.float64).groupby(level=0).first()
        program = values.reindex(list(genes)).fillna(0.0).clip(lower=0.0).to_numpy()
        # Rank among the program genes only: for tau just the order and the ties matter.
        return rankdata(-program, method="min").astype(np.float64)
    position: dict[str, int] = {}
    for gene in sentence_genes(cell):
        position.setdefault(gene, len(position) + 1)  # a repeated gene keeps its first place
    lowest = len(position) + 1
    return np.array([position.get(g, lowest) for g in genes], dtype=np.float64)


def _program(program: Sequence[str]) -> list[str]:
    genes = list(dict.fromkeys(str(g) for g in program))
    if len(genes) < 2:
        raise MetricError(f"a gene program needs at least 2 genes, got {len(genes)}",
                          "pass the program's gene symbols, e.g. interferon-stimulated genes")
    return genes


def kendall_tau(generated: CellLike, reference: CellLike, program: Sequence[str]) -> float:
    """Kendall tau-b between the program-gene ranks of a generated and a reference cell.

    Parameters
    ----------
    generated
        Generated cell sentence (string or list of genes).
    reference
        Real cell: a sentence, or expression values (e.g. the mean of the real perturbed cells).
    program
        Genes to compare (e.g. hallmark apoptosis genes); duplicates are ignored.

    Returns
    -------
    float
        In [-1, 1]; NaN when all program genes are tied in either cell.
    """
    genes = _program(program)
    tau = kendalltau(gene_ranks(generated, genes), gene_ranks(reference, genes)).statistic
    return float(tau)


def mean_kendall_tau(generated: Sequence[CellLike], references: Sequence[CellLike],
                     program: Sequence[str]) -> float:
    """Mean of :func:`kendall_tau` over paired cells (``generated[i]`` vs ``references[i]``).

    Pairs where tau is undefined (NaN) are left out of the mean, as the paper averages over
    test samples; NaN if every pair is undefined.

    Raises
    ------
    MetricError
        Different numbers of generated and reference cells, or none.
    """
    if len(generated) != len(references) or not len(generated):
        raise MetricError(f"{len(generated)} generated cells but {len(references)} references",
                          "pass one reference per generated cell (repeat a shared one)")
    genes = _program(program)
    taus = np.array([kendall_tau(g, r, genes) for g, r in zip(generated, references, strict=True)])
    return float(np.nanmean(taus)) if np.isfinite(taus).any() else float("nan")


def mean_expression(adata: AnnData, *, layer: str | None = None) -> pd.Series:
    """Mean expression of every gene over the cells of ``adata``.

    Parameters
    ----------
    adata
        The cells (e.g. the real perturbed cells of one condition).
    layer
        Matrix to average (see :func:`c2s_engine.metrics.embeddings.cell_matrix`).

    Returns
    -------
    pandas.Series
        float64, indexed by ``var_names``.
    """
    if adata.n_obs == 0:
        raise MetricError("no cells to average", "select a non-empty set of cells")
    means = np.asarray(cell_matrix(adata, layer).mean(axis=0), dtype=np.float64).ravel()
    return pd.Series(means, index=adata.var_names.astype(str), name="mean_expression")


def pearson_delta(control: AnnData, real: AnnData, predicted: AnnData, *,
                  genes: Sequence[str] | None = None, layer: str | None = None) -> float:
    """Pearson r between the real and the predicted mean expression change from control.

    Parameters
    ----------
    control
        Control (unperturbed) cells.
    real
        Real perturbed cells.
    predicted
        Predicted perturbed cells (e.g. reconstructed from generated sentences).
    genes
        Genes to compare; default: every gene present in all three (in ``control``'s order).
    layer
        Matrix to average in all three (see :func:`mean_expression`).

    Returns
    -------
    float
        ``pearsonr(real_mean - control_mean, predicted_mean - control_mean)``; NaN when either
        change is the same for every gene.

    Raises
    ------
    MetricError
        Named genes missing from a set, or fewer than 2 genes to compare.
    """
    means = [mean_expression(a, layer=layer) for a in (control, real, predicted)]
    if genes is None:
        shared = means[0].index.intersection(means[1].index).intersection(means[2].index)
    else:
        shared = pd.Index(list(dict.fromkeys(str(g) for g in genes)))
        for which, m in zip(("control", "real", "predicted"), means, strict=True):
            absent = shared.difference(m.index)
            if len(absent):
                raise MetricError(
                    f"{len(absent)} requested genes are not in the {which} cells, "
                    f"e.g. {list(absent[:3])}", "pass genes measured in all three sets")
    if len(shared) < 2:
        raise MetricError(f"only {len(shared)} gene(s) shared by control, real and predicted cells",
                          "use cells over the same gene symbols")
    control_mean, real_mean, predicted_mean = (m.groupby(level=0).first()[shared] for m in means)
    delta_real = (real_mean - control_mean).to_numpy()
    delta_predicted = (predicted_mean - control_mean).to_numpy()
    if np.ptp(delta_real) == 0 or np.ptp(delta_predicted) == 0:
        return float("nan")
    return float(pearsonr(delta_real, delta_predicted).statistic)


def gene_overlap(generated: str | Sequence[str], reference: str | Sequence[str]) -> float:
    """Fraction of the reference sentence's genes that the generated sentence names.

    Parameters
    ----------
    generated, reference
        Cell sentences (strings or lists of genes); order and repeats do not matter.

    Returns
    -------
    float
        ``|G_gen ∩ G_ref| / |G_ref|`` in [0, 1].

    Raises
    ------
    MetricError
        The reference names no gene.
    """
    reference_genes = set(sentence_genes(reference))
    if not reference_genes:
        raise MetricError("the reference sentence names no gene",
                          "compare against a non-empty reference cell sentence")
    return len(set(sentence_genes(generated)) & reference_genes) / len(reference_genes)
