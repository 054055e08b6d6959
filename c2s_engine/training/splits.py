"""Train/test splits of cells for training datasets, recorded exactly.

Four ways to split the cells of a dataset:

* ``'cell'``: a seeded random ``test_fraction`` of the cells, stratified by label when a
  label column is given (each label keeps about the same share in both splits).
* ``'donor'``: whole donors go to the test split, either the donors named in ``held_out``
  (``{donor_key: [...]}``) or a seeded random ``test_fraction`` of them.
* ``'condition'``: the cells matching every ``held_out`` entry (``{column: [values]}``, e.g.
  ``{'cell_type': ['CD4T'], 'condition': ['stimulated']}``) are the test split.
* ``'spatial'``: a contiguous stripe of the tissue is the test split: the ``test_fraction`` of
  the cells whose coordinate along ``axis`` (of ``obsm[spatial_key]``) comes after the first
  ``stripe_start`` of the cells. Holding out a block of tissue instead of scattered cells keeps
  a test cell's neighbours out of training, as the C2S-Scale paper does for its spatial tasks.

The split is recorded in a :class:`SplitInfo`: the method, the held-out values and the names of
every held-out cell, so anyone can rebuild the same test set from the data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from c2s_engine.errors import ObsColumnError, TaskOptionError

SPLIT_METHODS = ("cell", "donor", "condition", "spatial")
SPLITS = ("train", "test")


def _as_values(value: Any) -> list[str]:
    """One value or a list of values, as strings (obs values are compared as text)."""
    if isinstance(value, (str, int, float, bool)):
        return [str(value)]
    return [str(v) for v in value]


@dataclass
class SplitConfig:
    """How cells are split between train and test.

    Attributes
    ----------
    by
        ``'cell'``, ``'donor'``, ``'condition'`` or ``'spatial'``.
    test_fraction
        Share of cells (``'cell'``, ``'spatial'``) or donors (``'donor'`` without named
        donors) held out; gene sets from a GMT file are split by name with the same share.
    held_out
        ``'condition'``: ``{obs column: value or [values]}``; a cell is held out when it
        matches every column. ``'donor'``: optionally ``{donor_key: [donors]}``.
    stratify
        ``'cell'`` split: draw the test cells label by label (needs a label column).
    spatial_key, axis
        ``'spatial'`` split: the obsm key of the coordinates and the coordinate (0: x, 1: y)
        along which the stripe is cut.
    stripe_start
        ``'spatial'`` split: share of the cells (ordered along ``axis``) before the held-out
        stripe; ``None`` puts the stripe at the far end (``1 - test_fraction``).
    """

    by: str = "cell"
    test_fraction: float = 0.2
    held_out: dict[str, list[str]] = field(default_factory=dict)
    stratify: bool = True
    spatial_key: str = "spatial"
    axis: int = 0
    stripe_start: float | None = None

    def __post_init__(self) -> None:
        if self.by not in SPLIT_METHODS:
            raise TaskOptionError(f"unknown split method {self.by!r}",
                                  f"use split.by one of {', '.join(SPLIT_METHODS)}")
        if not 0.0 < float(self.test_fraction) < 1.0:
            raise TaskOptionError(
                f"split.test_fraction must be between 0 and 1 (exclusive), got "
                f"{self.test_fraction}", "use e.g. test_fraction: 0.2")
        self.test_fraction = float(self.test_fraction)
        if not isinstance(self.held_out, Mapping):
            raise TaskOptionError("split.held_out must map obs columns to held-out values",
                                  "write e.g. held_out: {cell_type: CD4T, condition: stimulated}")
        self.held_out = {str(k): _as_values(v) for k, v in self.held_out.items()}
        if self.by == "condition" and not self.held_out:
            raise TaskOptionError(
                "a condition split needs the held-out condition",
                "set split.held_out, e.g. {cell_type: CD4T, condition: stimulated}")
        if self.stripe_start is None:
            self.stripe_start = 1.0 - self.test_fraction
        self.stripe_start = float(self.stripe_start)
        if not 0.0 <= self.stripe_start <= 1.0 - self.test_fraction + 1e-9:
            raise TaskOptionError(
                f"split.stripe_start {self.stripe_start} with test_fraction "
                f"{self.test_fraction} puts the stripe past the end of the tissue",
                f"use a stripe_start between 0 and {1.0 - self.test_fraction:g}")
        if int(self.axis) < 0:
            raise TaskOptionError(f"split.axis must be 0 (x), 1 (y), ..., got {self.axis}",
                                  "use axis: 0 or axis: 1")
        self.axis = int(self.axis)


@dataclass
class SplitInfo:
    """What went into each split, saved next to the dataset as JSON.

    Attributes
    ----------
    method, seed, test_fraction
        How the split was drawn.
    held_out
        ``'condition'``: ``{column: [values]}`` of the held-out cells; ``'donor'``:
        ``{donor_key: [held-out donors]}``; ``'spatial'``:
        ``{"obsm['spatial'][:, axis]": ['[low, high)']}``, the coordinate range held out;
        ``'cell'``: empty.
    test_cells
        ``{dataset name: [obs names of every held-out cell]}`` (exact and complete).
    n_cells
        ``{dataset name: {'train': n, 'test': n}}``.
    test_gene_sets
        Names of the user's gene sets (GMT) that only appear in the test split.
    counts
        ``{split: {task: number of examples}}``.
    skipped
        ``{task: reason}`` for tasks that made no example for some dataset.
    notes
        Further facts a reader of the split must know (e.g. where test inputs come from).
    """

    method: str
    seed: int
    test_fraction: float
    held_out: dict[str, list[str]] = field(default_factory=dict)
    test_cells: dict[str, list[str]] = field(default_factory=dict)
    n_cells: dict[str, dict[str, int]] = field(default_factory=dict)
    test_gene_sets: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(**dict(data))

    def save(self, path: str | Path) -> Path:
        """Write the split as indented JSON to ``path``."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> SplitInfo:
        """Read a split written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def test_mask(self, dataset: str, adata: AnnData) -> np.ndarray:
        """Boolean mask of ``adata``'s cells that are in the test split of ``dataset``."""
        return np.asarray(adata.obs_names.isin(self.test_cells.get(dataset, [])))


def _obs_column(adata: AnnData, key: str, role: str) -> pd.Series:
    if key not in adata.obs.columns:
        columns = ", ".join(map(str, adata.obs.columns[:30])) or "none"
        raise ObsColumnError(f"the {role} column {key!r} is not in adata.obs (columns: {columns})",
                             f"set the {role} key to one of these columns")
    return adata.obs[key].astype(object).map(str, na_action="ignore")


def _cell_split(adata: AnnData, fraction: float, rng: np.random.Generator,
                labels: pd.Series | None) -> np.ndarray:
    test = np.zeros(adata.n_obs, dtype=bool)
    if labels is None:
        groups = [np.arange(adata.n_obs)]
    else:  # unlabelled cells form a group of their own
        keys = pd.Series(labels.fillna("\0").to_numpy())
        groups = [members for _, members in sorted(keys.groupby(keys).indices.items())]
    for members in groups:
        n_test = int(round(fraction * members.size))
        test[rng.permutation(members)[:n_test]] = True
    if not test.any() or test.all():
        raise TaskOptionError(
            f"a test fraction of {fraction} of {adata.n_obs} cells leaves one split empty",
            "use more cells or a test_fraction nearer 0.5")
    return test


def _donor_split(adata: AnnData, config: SplitConfig, donor_key: str,
                 rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    if not donor_key:
        raise TaskOptionError("a donor split needs the donor column",
                              "set donor_key to the obs column that names each cell's donor")
    donors = _obs_column(adata, donor_key, "donor")
    present = sorted(donors.dropna().unique())
    if len(present) < 2:
        raise TaskOptionError(
            f"the donor column {donor_key!r} has {len(present)} donor(s); a donor split needs "
            "at least 2", "split by cell instead (split.by: cell)")
    named = config.held_out.get(donor_key)
    if named:
        unknown = sorted(set(named) - set(present))
        if unknown:
            raise TaskOptionError(f"held-out donor(s) {', '.join(unknown)} are not in "
                                  f"{donor_key!r} (donors: {', '.join(present[:20])})",
                                  "name donors that exist in the data")
        held = sorted(named)
    else:
        n_test = min(max(1, int(round(config.test_fraction * len(present)))), len(present) - 1)
        held = sorted(rng.permutation(np.array(present, dtype=object))[:n_test].tolist())
    test = donors.isin(held).to_numpy()
    if test.all():
        raise TaskOptionError("every donor is held out, so nothing is left to train on",
                              "hold out fewer donors")
    return test, held


def _condition_split(adata: AnnData, held_out: Mapping[str, list[str]]) -> np.ndarray:
    test = np.ones(adata.n_obs, dtype=bool)
    for column, values in held_out.items():
        observed = _obs_column(adata, column, "held-out condition")
        matched = observed.isin(values).to_numpy()
        if not matched.any():
            present = ", ".join(sorted(observed.dropna().unique())[:20])
            raise TaskOptionError(f"no cell has {column} in {values} (values: {present})",
                                  "hold out values that exist in the data")
        test &= matched
    if not test.any():
        described = " and ".join(f"{c} in {v}" for c, v in held_out.items())
        raise TaskOptionError(f"no cell matches every held-out condition ({described})",
                              "hold out a combination that some cells have")
    if test.all():
        raise TaskOptionError("every cell matches the held-out condition, so nothing is left "
                              "to train on", "hold out a narrower condition")
    return test


def _spatial_split(adata: AnnData, config: SplitConfig) -> tuple[np.ndarray, dict[str, list[str]]]:
    if config.spatial_key not in adata.obsm:
        keys = ", ".join(map(str, adata.obsm.keys())) or "none"
        raise TaskOptionError(f"a spatial split needs coordinates in obsm[{config.spatial_key!r}]"
                              f" (obsm keys: {keys})", "set split.spatial_key to the obsm key "
                              "holding the x/y coordinates, or split by cell")
    coords = np.asarray(adata.obsm[config.spatial_key], dtype=float)
    if coords.ndim != 2 or config.axis >= coords.shape[1]:
        raise TaskOptionError(f"split.axis {config.axis} is not a column of "
                              f"obsm[{config.spatial_key!r}] (shape {coords.shape})",
                              "use axis: 0 (x) or axis: 1 (y)")
    values = coords[:, config.axis]
    order = np.sort(values)
    first = int(round(config.stripe_start * values.size))
    last = min(first + int(round(config.test_fraction * values.size)), values.size)
    if first >= last:
        raise TaskOptionError(f"a test fraction of {config.test_fraction} of {values.size} "
                              "cells leaves the held-out stripe empty",
                              "use more cells or a larger test_fraction")
    # Thresholds on coordinates (not positions) so that cells at the same place stay together.
    low = order[first]
    after = order[last:][order[last:] > low]  # a stripe is never narrower than one spot
    high = after[0] if after.size else np.inf
    test = (values >= low) & (values < high)
    if test.all():
        raise TaskOptionError("the held-out stripe holds every cell, so nothing is left to "
                              "train on", "use a smaller test_fraction")
    described = f"[{low:.6g}, {high:.6g})"
    return test, {f"obsm[{config.spatial_key!r}][:, {config.axis}]": [described]}


def split_cells(adata: AnnData, config: SplitConfig, *, seed: int = 0, label_key: str = "",
                donor_key: str = "") -> tuple[np.ndarray, dict[str, list[str]]]:
    """Decide which cells of ``adata`` are held out.

    Parameters
    ----------
    adata
        The cells to split.
    config
        The split method and its settings.
    seed
        Seeds the random draws (the same seed gives the same split).
    label_key
        obs column of the labels, used to stratify a ``'cell'`` split.
    donor_key
        obs column of the donors, needed by a ``'donor'`` split.

    Returns
    -------
    tuple of (numpy.ndarray, dict)
        Boolean test mask (one entry per cell) and the held-out values (see
        :attr:`SplitInfo.held_out`).

    Raises
    ------
    ObsColumnError
        A named column is not in ``adata.obs``.
    TaskOptionError
        A split that would leave train or test empty, too few donors, held-out values that
        no cell has, or (``'spatial'``) missing coordinates.
    """
    rng = np.random.default_rng(seed)
    if config.by == "cell":
        labels = _obs_column(adata, label_key, "label") if label_key and config.stratify else None
        return _cell_split(adata, config.test_fraction, rng, labels), {}
    if config.by == "donor":
        test, held = _donor_split(adata, config, donor_key, rng)
        return test, {donor_key: held}
    if config.by == "spatial":
        return _spatial_split(adata, config)
    return _condition_split(adata, config.held_out), dict(config.held_out)


def split_names(names: Sequence[str], fraction: float, *, seed: int = 0) -> list[str]:
    """A seeded ``fraction`` of ``names`` (at least one when there are two or more), sorted."""
    names = sorted(set(names))
    if len(names) < 2:
        return []
    n_test = min(max(1, int(round(fraction * len(names)))), len(names) - 1)
    return sorted(np.random.default_rng(seed).permutation(np.array(names, dtype=object))[:n_test])
