"""Predicted cell-type labels against true ones, and their majority per cluster.

Model answers and dataset labels often differ only in spelling ("CD14+ monocyte." versus
"CD14+ Monocyte"), so labels are compared after :func:`normalize_label`: case-folded, runs of
whitespace collapsed to one space, outer whitespace and trailing periods removed. Reports show
each label as first spelled in the truth (or, for labels only the model used, in the
predictions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from c2s_engine.errors import LabelsError

LABEL_NORMALIZATION = ("case-folded, whitespace runs collapsed, outer whitespace and trailing "
                       "periods removed")


def normalize_label(label: Any) -> str:
    """The form in which two labels are compared (see the module docstring)."""
    return " ".join(str(label).split()).rstrip(".").strip().casefold()


@dataclass
class LabelMetrics:
    """Agreement of predicted with true labels over the cells that have a true label.

    Attributes
    ----------
    accuracy
        Fraction of labelled cells whose normalised prediction equals the normalised truth.
    macro_f1
        Mean F1 over the true classes (``sklearn.metrics.f1_score(average='macro')`` restricted
        to ``labels[:n_true_labels]``): a prediction outside the true classes counts against
        its cell's class but adds no class of its own.
    confusion
        ``(n_labels, n_labels)`` int64 counts, rows = truth, columns = prediction, in the order
        of ``labels`` (``sklearn.metrics.confusion_matrix``).
    labels
        The true classes (sorted, case-insensitively), then the labels only the model predicted.
    n_true_labels
        How many of ``labels`` are true classes.
    n_cells, n_unlabelled
        Cells compared, and cells skipped because their true label is missing.
    """

    accuracy: float
    macro_f1: float
    confusion: np.ndarray
    labels: list[str]
    n_true_labels: int
    n_cells: int
    n_unlabelled: int

    def to_dict(self) -> dict[str, Any]:
        """Plain values for ``uns`` (survive an ``.h5ad`` round trip)."""
        return {"accuracy": float(self.accuracy), "macro_f1": float(self.macro_f1),
                "confusion": np.asarray(self.confusion, dtype=np.int64),
                "labels": list(self.labels), "n_true_labels": int(self.n_true_labels),
                "n_cells": int(self.n_cells), "n_unlabelled": int(self.n_unlabelled),
                "label_normalization": LABEL_NORMALIZATION}


def _display_names(*spellings: Sequence[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    for labels in spellings:
        for label in labels:
            names.setdefault(normalize_label(label), " ".join(str(label).split()))
    return names


def classification_metrics(truth: Sequence[Any], predicted: Sequence[Any]) -> LabelMetrics:
    """Accuracy, macro-F1 and confusion matrix of ``predicted`` against ``truth``.

    Parameters
    ----------
    truth
        True label per cell; missing values (None/NaN) mark unlabelled cells, which are skipped.
    predicted
        Predicted label per cell, same length.

    Raises
    ------
    LabelsError
        Different lengths, or no cell with a true label.
    """
    truth = pd.Series(list(truth), dtype=object)
    predicted = pd.Series(list(predicted), dtype=object)
    if len(truth) != len(predicted):
        raise LabelsError(f"{len(truth)} true labels but {len(predicted)} predictions",
                          "pass one true label per predicted cell")
    labelled = truth.notna().to_numpy()
    if not labelled.any():
        raise LabelsError("no cell has a true label to compare with",
                          "choose an obs column that holds the cell types")
    truth, predicted = truth[labelled].astype(str), predicted[labelled].astype(str)
    names = _display_names(truth, predicted)
    y_true = truth.map(normalize_label).to_numpy()
    y_pred = predicted.map(normalize_label).to_numpy()
    true_classes = sorted(set(y_true), key=lambda k: (names[k].casefold(), names[k]))
    extra = sorted(set(y_pred) - set(true_classes), key=lambda k: (names[k].casefold(), names[k]))
    order = true_classes + extra
    return LabelMetrics(
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(f1_score(y_true, y_pred, labels=true_classes, average="macro",
                                zero_division=0)),
        confusion=confusion_matrix(y_true, y_pred, labels=order).astype(np.int64),
        labels=[names[k] for k in order],
        n_true_labels=len(true_classes),
        n_cells=int(labelled.sum()),
        n_unlabelled=int((~labelled).sum()),
    )


def paired_accuracy_test(truth: Sequence[Any], first: Sequence[Any],
                         second: Sequence[Any]) -> dict[str, Any]:
    """Exact McNemar test: do two annotators of the same cells differ in accuracy?

    Only the cells where exactly one of them is right carry information; under the null
    hypothesis each such cell is a fair coin, so the two-sided p-value is the binomial test
    of ``first_only`` successes in ``first_only + second_only`` trials at 0.5
    (``scipy.stats.binomtest``). Labels are compared as in :func:`classification_metrics`;
    unlabelled cells are skipped.

    Returns
    -------
    dict
        ``n_cells``, ``first_only`` (cells only ``first`` gets right), ``second_only``,
        ``both_right``, ``both_wrong`` and ``p_value`` (1.0 when no cell is discordant).

    Raises
    ------
    LabelsError
        The three sequences differ in length.
    """
    from scipy.stats import binomtest

    truth, first, second = (pd.Series(list(x), dtype=object) for x in (truth, first, second))
    if not len(truth) == len(first) == len(second):
        raise LabelsError(f"{len(truth)} true labels but {len(first)} and {len(second)} "
                          "predictions", "pass one prediction of each annotator per cell")
    labelled = truth.notna().to_numpy()
    y_true, y_first, y_second = (x[labelled].astype(str).map(normalize_label).to_numpy()
                                 for x in (truth, first, second))
    right_first, right_second = y_first == y_true, y_second == y_true
    first_only = int(np.sum(right_first & ~right_second))
    second_only = int(np.sum(right_second & ~right_first))
    discordant = first_only + second_only
    return {"n_cells": int(labelled.sum()), "first_only": first_only,
            "second_only": second_only,
            "both_right": int(np.sum(right_first & right_second)),
            "both_wrong": int(np.sum(~right_first & ~right_second)),
            "p_value": float(binomtest(first_only, discordant).pvalue) if discordant else 1.0}


def cluster_summary(groups: pd.Series, predicted: Sequence[Any],
                    confidence: Sequence[float] | None = None) -> pd.DataFrame:
    """Majority predicted label per cluster and the fraction of cells that agree with it.

    Labels are counted exactly as written; a tie goes to the label that sorts first. Cells
    without a cluster (NaN) are left out.

    Parameters
    ----------
    groups
        Cluster of every cell (e.g. ``adata.obs['leiden']``); categories keep their order,
        other values are sorted.
    predicted
        Predicted label per cell.
    confidence
        Optional per-cell confidence; adds a ``mean_confidence`` column.

    Returns
    -------
    pandas.DataFrame
        Indexed by cluster (as str), columns ``cell_type`` (majority label), ``agreement``
        (its share of the cluster's cells), ``n_cells`` and, with ``confidence``,
        ``mean_confidence``.
    """
    groups = pd.Series(groups).reset_index(drop=True)
    has_group = groups.notna().to_numpy()
    if isinstance(groups.dtype, pd.CategoricalDtype):
        present = set(groups[has_group])
        order = [str(c) for c in groups.cat.categories if c in present]
    else:
        order = sorted({str(g) for g in groups[has_group]})
    cluster = groups[has_group].astype(str).to_numpy()
    label = np.asarray([str(p) for p in predicted], dtype=object)[has_group]
    counts = pd.crosstab(cluster, label).reindex(order)
    summary = pd.DataFrame({
        "cell_type": counts.idxmax(axis=1),  # columns are sorted: ties go to the first
        "agreement": counts.max(axis=1) / counts.sum(axis=1),
        "n_cells": counts.sum(axis=1).astype(np.int64),
    })
    if confidence is not None:
        values = pd.Series(np.asarray(confidence, dtype=np.float64)[has_group])
        summary["mean_confidence"] = values.groupby(cluster).mean().reindex(order)
    summary.index.name = "cluster"
    return summary
