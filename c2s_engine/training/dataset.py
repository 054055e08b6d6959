"""Prompt/completion training data for every task of the prompt registry.

One call, :func:`build_dataset`, turns one or more AnnData (objects or files) into a
``datasets.DatasetDict`` with a ``'train'`` and a ``'test'`` split. Each example is one filled
prompt template (a wording drawn at random per example, seeded) and its expected answer, in
TRL's prompt/completion format so the loss falls on the completion only.

How examples are made:

* Cells are split first (:mod:`c2s_engine.training.splits`); every example of a split is built
  from that split's cells only, and so are the facts behind derived text (marker genes are
  computed on the split's own cells).
* Single-cell tasks (annotation, generation, niche labels, perturbation response) make
  ``examples_per_cell`` examples per eligible cell. With ``sentence_draws`` above 1, the
  rounds of a cell cycle through that many sentences of it that differ only in the order of
  equally expressed genes (each tie order is as true as any other), so a model learns that
  such orders carry no meaning; with ``count_thinning`` those other draws are also the cell's
  counts thinned at random, as if it had been sequenced less deeply. The other tasks make about
  ``examples_per_task`` examples per dataset, shared between the splits in proportion to their
  cells, each from ``cells_per_example`` cells (5-20 in the paper) of one sample (donor when
  ``donor_key`` is set, else the dataset), cluster or tissue; samples and clusters with fewer
  cells than the smallest example are not used. Spatial sets are a cell and its neighbours
  (at most ``cells_per_example[1]`` cells).
* Perturbation pairs: each perturbed cell is paired with a random control cell of the same
  cell type (``label_key``) and donor (``donor_key``) when those columns are set, or with
  ``perturbation_pairing: nearest`` one of the few such controls nearest to it. A test
  example takes its control from the train split when its group has no control cell in the
  test split (a held-out perturbed cell type); this is counted in :attr:`SplitInfo.notes`.
  With ``control_pairs_per_cell``, control cells also make identity pairs (control in,
  another control of the same group out, under the control condition's name).
* Captions, summaries, QA answers and marker gene sets are derived from the data
  (:mod:`c2s_engine.training.targets`) and marked ``source='derived'``; abstracts and gene sets
  supplied by the user are ``source='data'``, as is everything read off labels.

Columns of every split (:data:`FEATURES`): ``prompt``, ``completion``, ``task``, ``source``
(``'data'``/``'derived'``), ``template_variant``, ``dataset``, ``cell_ids`` (obs names used, in
prompt order; for perturbation ``[control, perturbed]``), and the references used by rewards and
evaluation: ``label`` (expected short answer: cell type, tissue, niche, yes/no, cell types
joined by ``', '``, gene set name), ``reference_sentence`` (expected single cell sentence or
gene list), ``reference_sentences`` (expected cells of multi-cell generation),
``control_sentence``, ``perturbation``, ``question`` and ``reference_text`` (expected free text).
Text fields that do not apply are ``''`` and lists ``[]``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from c2s_engine.errors import TaskOptionError
from c2s_engine.prompts import PromptTemplate, default_registry, format_cells
from c2s_engine.tasks.facts import DatasetFacts, dataset_facts
from c2s_engine.tasks.neighborhoods import (
    neighbor_graph,
    neighborhood_sets,
    neighbors_of,
    spatial_coordinates,
)
from c2s_engine.training.splits import SPLITS, SplitConfig, SplitInfo, split_cells, split_names
from c2s_engine.training.targets import (
    Composition,
    cluster_caption,
    composition,
    dataset_summary,
    marker_gene_sets,
    qa_pairs,
    read_gmt,
)

# The twelve tasks of Table 1 of the C2S-Scale paper.
TABLE1_TASKS = (
    "cell_type_prediction", "cell_type_generation", "cell_language_modeling",
    "multi_cell_language_modeling", "tissue_prediction", "sample_cell_types_prediction",
    "tissue_conditioned_sample_generation", "cell_types_conditioned_sample_generation",
    "abstract_conditioned_sample_generation", "natural_language_interpretation",
    "gene_set_naming", "gene_set_enumeration",
)
GENE_SET_TASKS = ("gene_set_naming", "gene_set_enumeration")
SOURCES = ("data", "derived")
PAIRINGS = ("random", "nearest")
PAIRING_NEIGHBORS = 5  # 'nearest' draws among this many controls, so pairs still vary
PAIRING_COMPONENTS = 30

_TEXT_COLUMNS = ("prompt", "completion", "task", "source", "dataset", "label",
                 "reference_sentence", "control_sentence", "perturbation", "question",
                 "reference_text")
_LIST_COLUMNS = ("cell_ids", "reference_sentences")


def _features():
    from datasets import Features, List, Value

    spec = {name: Value("string") for name in _TEXT_COLUMNS}
    spec.update({name: List(Value("string")) for name in _LIST_COLUMNS})
    spec["template_variant"] = Value("int32")
    return Features(spec)


class _Unavailable(Exception):
    """A task cannot be built from this dataset (the reason is the message)."""


@dataclass
class DatasetConfig:
    """What :func:`build_dataset` builds; every field can be set from a YAML mapping.

    Attributes
    ----------
    inputs
        Data files read when :func:`build_dataset` gets no AnnData.
    tasks
        ``'all'`` (every registry task the data support; the others are skipped and listed
        in :attr:`SplitInfo.skipped`) or a list of task ids (each must yield examples).
    top_k
        Genes per cell sentence.
    examples_per_cell
        Examples per eligible cell for single-cell tasks (each with its own wording).
    sentence_draws
        Tie orders per cell: round ``r`` of a cell's single-cell examples uses its sentence
        ranked with seed ``seed + r % sentence_draws`` (ties are broken at random). 1: every
        example of a cell has the same sentence. Multi-cell tasks use the first draw.
    count_thinning
        Lowest fraction of a cell's counts kept in its other draws (1: none). Draw ``r >= 1``
        keeps each count with probability ``f``, ``f`` drawn per cell between this and 1, so
        those sentences look like the same cell sequenced less deeply: the low-count genes
        come and go and neighbouring ranks swap, as they do between two real cells of a type.
        Draw 0 stays the cell as measured. Needs raw counts.
    max_examples_per_task
        Cap per dataset, split and task (0: none).
    examples_per_task
        Examples per dataset of each task not built cell by cell, shared between the splits
        in proportion to their cells.
    cells_per_example
        Smallest and largest number of cells in a multi-cell example (drawn uniformly).
    label_key, cluster_key, donor_key, condition_key, tissue_key, niche_key
        obs columns: cell type, clusters for captions/QA/marker sets (default: ``label_key``),
        donor or sample, condition (perturbation), tissue, spatial niche.
    control_value
        Value of ``condition_key`` marking control cells.
    perturbation_names
        Words for each perturbed condition value in prompts (default: the value itself).
    perturbation_pairing
        Which control cell (always of the same cell type and donor) a perturbed cell is paired
        with: ``'random'`` (any) or ``'nearest'`` (one of its ``PAIRING_NEIGHBORS`` nearest in
        the principal components of the train split's control cells). Nearest pairs share the
        cell's state, so an example teaches the change rather than a fresh draw of the cell
        type, which is what a model must apply to the controls of a held-out cell type.
    control_pairs_per_cell
        Identity examples of ``perturbation_response``: each control cell is also paired,
        this many times, with another control cell of its group under the control condition
        itself (named ``perturbation_names[control_value]``, e.g. ``none``). They show the
        model that a cell keeps its own identity, including the cell types whose perturbed
        cells are held out, whose controls it otherwise only reads. 0: none.
        ``max_examples_per_task`` caps these and the perturbed examples separately.
    tissue, abstract
        Tissue and study abstract, one text for every dataset or ``{dataset name: text}``.
    spatial_key, spatial_radius, spatial_n_neighbors
        obsm key of coordinates; neighbourhoods are the cells within ``spatial_radius`` when
        it is above 0, else the ``spatial_n_neighbors`` nearest cells.
    gmt_path
        A GMT file of gene sets for the gene-set tasks (split by set name).
    n_markers
        Marker genes per cluster (``rank_genes_groups``) in derived text and gene sets.
    organism
        Organism for data whose organism cannot be detected.
    keep
        Keep only cells whose obs values are listed: ``{column: [values]}`` (e.g.
        ``{'Valid': [1]}``).
    obs_columns
        Per dataset, which of its own obs columns plays a column named above:
        ``{dataset name: {configured column: its column}}`` (e.g. ``{kang_pbmc_ifnb:
        {bulk_labels: cell_type}}``), so datasets that name their labels differently can be
        trained on together under one ``label_key``.
    gene_panel
        Keep only these genes in a dataset's sentences: the path of a text file (one symbol
        per line) or of a data file (its var_names), one for every dataset or ``{dataset name:
        path}``. An auxiliary dataset cut to the target dataset's panel writes sentences
        from the same genes (a panel of highly variable genes leaves out the housekeeping
        genes that would otherwise lead every sentence). Ranks among the kept genes do not
        change: the C2S normalisation scales each cell as a whole.
    split
        How cells are split (:class:`~c2s_engine.training.splits.SplitConfig`).
    seed
        Seeds splits, cell draws and template wordings.
    """

    inputs: list[str] = field(default_factory=list)
    tasks: str | list[str] = "all"
    top_k: int = 200
    examples_per_cell: int = 1
    sentence_draws: int = 1
    count_thinning: float = 1.0
    max_examples_per_task: int = 0
    examples_per_task: int = 100
    cells_per_example: tuple[int, int] = (5, 20)
    label_key: str = ""
    cluster_key: str = ""
    donor_key: str = ""
    condition_key: str = ""
    control_value: str = ""
    perturbation_names: dict[str, str] = field(default_factory=dict)
    perturbation_pairing: str = "random"
    control_pairs_per_cell: int = 0
    tissue_key: str = ""
    tissue: str | dict[str, str] = ""
    abstract: str | dict[str, str] = ""
    niche_key: str = ""
    spatial_key: str = "spatial"
    spatial_radius: float = 0.0
    spatial_n_neighbors: int = 6
    gmt_path: str = ""
    n_markers: int = 10
    organism: str = ""
    keep: dict[str, list[str]] = field(default_factory=dict)
    obs_columns: dict[str, dict[str, str]] = field(default_factory=dict)
    gene_panel: str | dict[str, str] = ""
    split: SplitConfig = field(default_factory=SplitConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.split, Mapping):
            self.split = SplitConfig(**_known(dict(self.split), SplitConfig, "split"))
        self.cells_per_example = tuple(int(n) for n in self.cells_per_example)
        low, high = (self.cells_per_example + (0, 0))[:2]
        if len(self.cells_per_example) != 2 or not 1 <= low <= high:
            raise TaskOptionError(
                f"cells_per_example must be [smallest, largest] with 1 <= smallest <= largest, "
                f"got {list(self.cells_per_example)}", "use e.g. cells_per_example: [5, 20]")
        for name in ("top_k", "examples_per_cell", "sentence_draws", "examples_per_task"):
            if int(getattr(self, name)) < 1:
                raise TaskOptionError(f"{name} must be at least 1, got {getattr(self, name)}",
                                      f"set {name} to a positive whole number")
        if not 0.0 < self.count_thinning <= 1.0:
            raise TaskOptionError(f"count_thinning must be above 0 and at most 1, got "
                                  f"{self.count_thinning}",
                                  "set it to e.g. 0.5 (keep 50-100% of counts) or 1 (none)")
        if self.control_pairs_per_cell < 0:
            raise TaskOptionError("control_pairs_per_cell must be 0 (none) or more",
                                  "set it to 0 or a positive number")
        if self.max_examples_per_task < 0:
            raise TaskOptionError("max_examples_per_task must be 0 (no cap) or more",
                                  "set it to 0 or a positive number")
        self.keep = {str(k): [str(v) for v in (vs if isinstance(vs, list) else [vs])]
                     for k, vs in self.keep.items()}
        self.perturbation_names = {str(k): str(v) for k, v in self.perturbation_names.items()}
        if not all(isinstance(v, Mapping) for v in self.obs_columns.values()):
            raise TaskOptionError("obs_columns must map each dataset name to {configured "
                                  "column: its column}",
                                  "write e.g. obs_columns: {kang_pbmc_ifnb: {bulk_labels: "
                                  "cell_type}}")
        self.obs_columns = {str(d): {str(k): str(v) for k, v in m.items()}
                            for d, m in self.obs_columns.items()}
        if isinstance(self.gene_panel, Mapping):
            self.gene_panel = {str(k): str(v) for k, v in self.gene_panel.items()}
        else:
            self.gene_panel = str(self.gene_panel or "")
        self.inputs = [str(p) for p in self.inputs]
        self.control_value = str(self.control_value)
        if self.perturbation_pairing not in PAIRINGS:
            raise TaskOptionError(
                f"perturbation_pairing must be one of {', '.join(PAIRINGS)}, got "
                f"{self.perturbation_pairing!r}", "use random or nearest")
        if self.condition_key and not self.control_value:
            raise TaskOptionError(f"condition_key {self.condition_key!r} is set but not the value "
                                  "of the control cells", "set control_value, e.g. control")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetConfig:
        """Build from a mapping (e.g. the ``data:`` section of a YAML config).

        Raises
        ------
        TaskOptionError
            Unknown keys (the message lists the allowed ones) or invalid values.
        """
        return cls(**_known(dict(data), cls, "dataset config"))

    @classmethod
    def from_yaml(cls, path: str | Path) -> DatasetConfig:
        """Build from a YAML file holding the mapping of :meth:`from_dict`."""
        import yaml

        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, Mapping):
            raise TaskOptionError(f"{path} does not hold a YAML mapping",
                                  "write the settings as key: value lines")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready dict; ``DatasetConfig.from_dict(c.to_dict())`` equals ``c``."""
        out = asdict(self)
        out["cells_per_example"] = list(self.cells_per_example)
        return out

    def per_dataset(self, name: str, value: str | Mapping[str, str]) -> str:
        """``value`` for dataset ``name``: the text itself or its entry in a mapping."""
        return str(value.get(name, "")) if isinstance(value, Mapping) else str(value)


def _known(data: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    allowed = [f.name for f in dataclass_fields(cls)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise TaskOptionError(f"unknown key(s) in the {where}: {', '.join(unknown)}",
                              f"use only {', '.join(allowed)}")
    return data


# --------------------------------------------------------------------------- building


@dataclass
class _Part:
    """The cells of one dataset in one split, ready to make examples from."""

    dataset: str
    split: str
    adata: AnnData
    sentences: np.ndarray  # object array, one sentence per cell ('' when none is expressed)
    organism: str
    redrawn: list[np.ndarray]  # the same cells' sentences with other tie orders (may be [])
    n_dataset: int  # cells of the whole dataset
    train: _Part | None = None  # the train part of the same dataset (for test parts)
    _facts: DatasetFacts | None = None
    _control_pca: Any = None  # train parts: the PCA of their controls ('nearest' pairing)

    def __post_init__(self) -> None:
        self.names = self.adata.obs_names.to_numpy().astype(str)

    def sentence(self, cell: int, draw: int) -> str:
        """The cell's sentence of tie order ``draw`` (cycling through the orders made)."""
        draw %= 1 + len(self.redrawn)
        return str(self.sentences[cell] if draw == 0 else self.redrawn[draw - 1][cell])

    def column(self, key: str) -> np.ndarray:
        """obs ``key`` as strings, missing values as None."""
        return self.adata.obs[key].astype(object).map(str, na_action="ignore").to_numpy()


class _Builder:
    """Makes the examples of every task from one part; one method per task id."""

    def __init__(self, part: _Part, config: DatasetConfig, notes: list[str]) -> None:
        self.part, self.config, self.notes = part, config, notes
        self.expressed = np.flatnonzero(part.sentences != "")
        self.n_multi = max(1, round(config.examples_per_task * part.adata.n_obs / part.n_dataset))
        self._graph = None
        self._control_space: dict[str, np.ndarray] | None = None

    # ---- shared helpers

    def build(self, task: str, template: Callable[[], PromptTemplate],
              rng: np.random.Generator) -> list[dict[str, Any]]:
        self.template, self.rng = template, rng
        method = getattr(self, task, None)
        if method is None:
            raise _Unavailable(f"no example builder for the task {task!r}")
        rows = method()
        if not rows:
            raise _Unavailable("no eligible cells")
        cap = self.config.max_examples_per_task
        # perturbation_response caps its perturbed and identity examples each on its own
        return rows[:cap] if cap and task != "perturbation_response" else rows

    def row(self, filled: Mapping[str, Any], *, cells: Sequence[int] = (), source: str = "data",
            **refs: Any) -> dict[str, Any]:
        template = self.template()
        row: dict[str, Any] = dict.fromkeys(_TEXT_COLUMNS, "")
        row.update(dict.fromkeys(_LIST_COLUMNS, []))
        row.update(prompt=template.format_prompt(**filled),
                   completion=template.format_response(**filled), task=template.task,
                   source=source, template_variant=template.variant, dataset=self.part.dataset,
                   cell_ids=[str(n) for n in self.part.names[list(cells)]])
        row.update(refs)
        return row

    def require(self, key: str, what: str) -> str:
        value = getattr(self.config, key)
        if not value:
            raise _Unavailable(f"{what} needs {key} to be set")
        return value

    def labelled(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(expressed cells with a value in obs ``key``, the values of every cell)."""
        values = self.part.column(key)
        return self.expressed[pd.notna(values[self.expressed])], values

    def per_cell(self, cells: np.ndarray, times: int | None = None) -> list[tuple[int, int]]:
        """``(cell, round)`` for each cell ``times`` (default ``examples_per_cell``) times,
        each round in its own shuffled order (the round picks the cell's tie order,
        :meth:`_Part.sentence`)."""
        times = self.config.examples_per_cell if times is None else times
        order = [(int(cell), r) for r in range(times) for cell in self.rng.permutation(cells)]
        cap = self.config.max_examples_per_task
        return order[:cap] if cap else order

    def groups(self, cells: np.ndarray, keys: Sequence[str]) -> list[np.ndarray]:
        """``cells`` grouped by the values of obs ``keys`` (all together when none)."""
        if not keys:
            return [cells] if cells.size else []
        table = pd.DataFrame({k: self.part.column(k)[cells] for k in keys}).fillna("\0")
        return [cells[idx] for _, idx in sorted(table.groupby(list(keys)).indices.items())]

    def sample_groups(self, cells: np.ndarray) -> list[np.ndarray]:
        return self.groups(cells, [self.config.donor_key] if self.config.donor_key else [])

    def draw(self, pool: np.ndarray, low: int | None = None) -> np.ndarray:
        """A random number of cells (``cells_per_example``, at most the pool) from ``pool``."""
        smallest, largest = self.config.cells_per_example
        smallest = max(smallest, low or 1)
        n = min(int(self.rng.integers(smallest, max(largest, smallest) + 1)), pool.size)
        return self.rng.choice(pool, size=n, replace=False)

    def multi_rows(self, pools: list[np.ndarray], make: Callable[[np.ndarray], dict[str, Any]]
                   ) -> list[dict[str, Any]]:
        """``n_multi`` examples, each from cells drawn within a pool chosen at random.

        Pools smaller than the smallest example (``cells_per_example[0]``) are not used.
        """
        pools = [p for p in pools if p.size >= self.config.cells_per_example[0]]
        if not pools:
            return []
        return [make(self.draw(pools[int(self.rng.integers(len(pools)))]))
                for _ in range(self.n_multi)]

    def cell_fields(self, cells: np.ndarray) -> dict[str, Any]:
        sentences = self.part.sentences[cells].tolist()
        return {"num_genes": max(len(s.split()) for s in sentences), "num_cells": len(cells),
                "organism": self.part.organism, "cells": format_cells(sentences)}

    def facts(self) -> DatasetFacts:
        if self.part._facts is None:
            groupby = self.config.cluster_key or self.config.label_key or None
            self.part._facts = dataset_facts(self.part.adata, groupby,
                                             n_markers=self.config.n_markers)
        return self.part._facts

    def compositions(self, cells: np.ndarray, keys: Sequence[str]) -> list[tuple[str, Composition]]:
        return [(k, composition(self.part.column(k)[cells])) for k in keys if k]

    def tissue_pools(self) -> tuple[list[np.ndarray], np.ndarray | None, str]:
        """(pools of one donor and tissue, tissue per cell or None, the dataset's tissue)."""
        donor = [self.config.donor_key] if self.config.donor_key else []
        if self.config.tissue_key:
            cells, tissues = self.labelled(self.config.tissue_key)
            return self.groups(cells, [self.config.tissue_key, *donor]), tissues, ""
        tissue = self.config.per_dataset(self.part.dataset, self.config.tissue)
        if not tissue:
            raise _Unavailable("tissue tasks need tissue_key or tissue to be set")
        return self.groups(self.expressed, donor), None, tissue

    def abstract(self) -> tuple[str, str]:
        """(the dataset's abstract, its source): the user's text or a derived summary."""
        text = self.config.per_dataset(self.part.dataset, self.config.abstract)
        if text:
            return text, "data"
        tissue = self.config.per_dataset(self.part.dataset, self.config.tissue)
        keys = [k for k in (self.config.condition_key, self.config.donor_key) if k]
        return dataset_summary(self.facts(), tissue=tissue,
                               compositions=self.compositions(self.expressed, keys)), "derived"

    # ---- single-cell tasks

    def _single(self, cells: np.ndarray, fields_of: Callable[[int, str], dict[str, Any]], *,
                reference: bool = False, **refs_of: Callable[[int], str]
                ) -> list[dict[str, Any]]:
        """One example per ``(cell, round)``; ``reference``: the sentence is also the
        expected answer (``reference_sentence``)."""
        rows = []
        for cell, round_ in self.per_cell(cells):
            sentence = self.part.sentence(cell, round_)
            filled = {"num_genes": len(sentence.split()), "organism": self.part.organism,
                       "cell_sentence": sentence, **fields_of(cell, sentence)}
            refs = {k: f(cell) for k, f in refs_of.items()}
            if reference:
                refs["reference_sentence"] = sentence
            rows.append(self.row(filled, cells=[cell], **refs))
        return rows

    def cell_language_modeling(self) -> list[dict[str, Any]]:
        labels = self.part.column(self.config.label_key) if self.config.label_key else None
        return self._single(self.expressed, lambda c, s: {}, reference=True,
                            label=lambda c: (labels[c] or "") if labels is not None else "")

    def cell_type_generation(self) -> list[dict[str, Any]]:
        cells, labels = self.labelled(self.require("label_key", "cell type generation"))
        return self._single(cells, lambda c, s: {"cell_type": labels[c]}, reference=True,
                            label=lambda c: labels[c])

    def cell_type_prediction(self) -> list[dict[str, Any]]:
        cells, labels = self.labelled(self.require("label_key", "cell type prediction"))
        return self._single(cells, lambda c, s: {"cell_type": labels[c]},
                            label=lambda c: labels[c])

    def spatial_niche_label_prediction(self) -> list[dict[str, Any]]:
        cells, niches = self.labelled(self.require("niche_key", "niche label prediction"))
        return self._single(cells, lambda c, s: {"niche_label": niches[c]},
                            label=lambda c: niches[c])

    def perturbation_response(self) -> list[dict[str, Any]]:
        key = self.require("condition_key", "perturbation response")
        config, part = self.config, self.part
        match = [k for k in (config.label_key, config.donor_key) if k]

        def pools(source: _Part) -> dict[tuple, np.ndarray]:
            expressed = np.flatnonzero(source.sentences != "")
            controls = expressed[source.column(key)[expressed] == config.control_value]
            values = [source.column(k) for k in match]
            out: dict[tuple, list[int]] = {}
            for cell in controls.tolist():
                out.setdefault(tuple(v[cell] for v in values), []).append(cell)
            return {k: np.array(v) for k, v in out.items()}

        conditions = part.column(key)
        known = pd.notna(conditions[self.expressed])
        perturbed = self.expressed[known & (conditions[self.expressed] != config.control_value)]
        controls = self.expressed[known & (conditions[self.expressed] == config.control_value)]
        own = pools(part)
        borrowed = pools(part.train) if part.train is not None else {}
        values = [part.column(k) for k in match]
        labels = part.column(config.label_key) if config.label_key else None

        def pair(cell: int, round_: int, source: _Part, pool: np.ndarray) -> dict[str, Any]:
            if config.perturbation_pairing == "nearest":
                pool = self.nearest_controls(cell, source, pool)
            control = int(self.rng.choice(pool))
            control_sentence = source.sentence(control, round_)
            name = config.perturbation_names.get(conditions[cell], conditions[cell])
            filled = {"num_genes": len(control_sentence.split()), "perturbation_name": name,
                      "control_cell_sentence": control_sentence,
                      "perturbed_cell_sentence": part.sentence(cell, round_)}
            row = self.row(filled, cells=[cell],
                           label=(labels[cell] or "") if labels is not None else "",
                           reference_sentence=filled["perturbed_cell_sentence"],
                           control_sentence=control_sentence, perturbation=name)
            row["cell_ids"] = [str(source.names[control]), row["cell_ids"][0]]
            return row

        rows, n_borrowed, unmatched = [], 0, set()
        for cell, round_ in self.per_cell(perturbed):
            group = tuple(v[cell] for v in values)
            source = part if group in own else part.train if group in borrowed else None
            if source is None:
                unmatched.add(cell)
                continue
            n_borrowed += source is not part
            rows.append(pair(cell, round_, source, (own if source is part else borrowed)[group]))
        # Identity pairs: a control cell and another control of its group (never itself, so
        # the answer is a fresh cell of the same kind rather than a copy).
        for cell, round_ in self.per_cell(controls, config.control_pairs_per_cell):
            pool = own[tuple(v[cell] for v in values)]
            pool = pool[pool != cell]
            if pool.size:
                rows.append(pair(cell, round_, part, pool))
        by = " and ".join(match) or "nothing"
        if n_borrowed:
            self.notes.append(
                f"perturbation_response ({part.dataset}, {part.split}): {n_borrowed} examples "
                f"take their control cell from the train split, because their group (matched "
                f"by {by}) has no control cell in the {part.split} split")
        if unmatched:
            self.notes.append(
                f"perturbation_response ({part.dataset}, {part.split}): {len(unmatched)} "
                f"perturbed cells have no control cell of the same {by} and make no example")
        return rows

    def nearest_controls(self, cell: int, source: _Part, pool: np.ndarray) -> np.ndarray:
        """The ``PAIRING_NEIGHBORS`` cells of ``pool`` (controls of ``source``) nearest to
        ``cell`` in the principal components of the train split's controls."""
        if self._control_space is None:
            self._control_space = _control_space(self.part, self.config)
        here = self._control_space[self.part.split][cell]
        there = self._control_space[source.split][pool]
        distance = ((there - here) ** 2).sum(axis=1)
        k = min(PAIRING_NEIGHBORS, pool.size)
        return pool[np.argpartition(distance, k - 1)[:k]]

    # ---- multi-cell tasks

    def multi_cell_language_modeling(self) -> list[dict[str, Any]]:
        return self.multi_rows(self.sample_groups(self.expressed), lambda cells: self.row(
            self.cell_fields(cells), cells=cells,
            reference_sentences=self.part.sentences[cells].tolist()))

    def _tissue_rows(self, source_cells: Callable[[np.ndarray, str], dict[str, Any]]
                     ) -> list[dict[str, Any]]:
        pools, tissues, tissue = self.tissue_pools()
        return self.multi_rows(pools, lambda cells: source_cells(
            cells, tissues[cells[0]] if tissues is not None else tissue))

    def tissue_prediction(self) -> list[dict[str, Any]]:
        return self._tissue_rows(lambda cells, tissue: self.row(
            {**self.cell_fields(cells), "tissue": tissue}, cells=cells, label=tissue))

    def tissue_conditioned_sample_generation(self) -> list[dict[str, Any]]:
        return self._tissue_rows(lambda cells, tissue: self.row(
            {**self.cell_fields(cells), "tissue": tissue}, cells=cells, label=tissue,
            reference_sentences=self.part.sentences[cells].tolist()))

    def _typed_rows(self, make: Callable[[np.ndarray, str], dict[str, Any]]
                    ) -> list[dict[str, Any]]:
        cells, labels = self.labelled(self.require("label_key", "cell type tasks"))
        return self.multi_rows(self.sample_groups(cells),
                               lambda drawn: make(drawn, ", ".join(labels[drawn])))

    def sample_cell_types_prediction(self) -> list[dict[str, Any]]:
        return self._typed_rows(lambda cells, types: self.row(
            {**self.cell_fields(cells), "cell_types": types}, cells=cells, label=types))

    def cell_types_conditioned_sample_generation(self) -> list[dict[str, Any]]:
        return self._typed_rows(lambda cells, types: self.row(
            {**self.cell_fields(cells), "cell_types": types}, cells=cells, label=types,
            reference_sentences=self.part.sentences[cells].tolist()))

    def abstract_conditioned_sample_generation(self) -> list[dict[str, Any]]:
        abstract, source = self.abstract()
        return self.multi_rows(self.sample_groups(self.expressed), lambda cells: self.row(
            {**self.cell_fields(cells), "abstract": abstract}, cells=cells, source=source,
            reference_sentences=self.part.sentences[cells].tolist()))

    def natural_language_interpretation(self) -> list[dict[str, Any]]:
        abstract, source = self.abstract()
        return self.multi_rows(self.sample_groups(self.expressed), lambda cells: self.row(
            {**self.cell_fields(cells), "abstract": abstract}, cells=cells, source=source,
            reference_text=abstract))

    def cluster_captioning(self) -> list[dict[str, Any]]:
        groupby = self.config.cluster_key or self.require("label_key", "cluster captioning")
        facts = self.facts()
        cells, clusters = self.labelled(groupby)
        pools = {str(clusters[p[0]]): p for p in self.groups(cells, [groupby])
                 if p.size >= self.config.cells_per_example[0]}
        names = [c.name for c in facts.clusters if c.name in pools]
        extra = [k for k in (self.config.label_key, self.config.condition_key)
                 if k and k != groupby]
        order = [names[i] for i in self.rng.permutation(len(names))]
        rows = []
        for i in range(self.n_multi if order else 0):
            name = order[i % len(order)]  # every cluster in turn
            drawn = self.draw(pools[name])
            caption = cluster_caption(facts.cluster(name), groupby,
                                      self.compositions(pools[name], extra))
            rows.append(self.row({**self.cell_fields(drawn), "caption": caption}, cells=drawn,
                                 source="derived", label=name, reference_text=caption))
        return rows

    def question_answering(self) -> list[dict[str, Any]]:
        facts = self.facts()
        context = facts.to_text(max_clusters=10)
        label_key = self.config.label_key
        labels = self.part.column(label_key) if label_key else None
        keys = [k for k in (self.config.condition_key, self.config.donor_key) if k]
        compositions = self.compositions(self.expressed, keys)

        def make(cells: np.ndarray) -> dict[str, Any]:
            shown = [str(v) for v in labels[cells] if v is not None] if labels is not None else []
            pairs = qa_pairs(facts, shown_labels=shown, label_key=label_key,
                             compositions=compositions)
            question, answer = pairs[int(self.rng.integers(len(pairs)))]
            return self.row({**self.cell_fields(cells), "context": context, "question": question,
                             "answer": answer}, cells=cells, source="derived",
                            question=question, reference_text=answer)

        return self.multi_rows([self.expressed], make)

    # ---- gene sets (derived from marker genes; the user's GMT sets are added separately)

    def gene_set_naming(self) -> list[dict[str, Any]]:
        if not (self.config.cluster_key or self.config.label_key):
            raise _Unavailable("derived gene sets need cluster_key or label_key (or give "
                               "gmt_path)")
        return gene_set_rows(marker_gene_sets(self.facts()), self.template,
                             dataset=self.part.dataset, source="derived")

    def gene_set_enumeration(self) -> list[dict[str, Any]]:
        return self.gene_set_naming()

    # ---- spatial tasks

    def graph(self):
        if self._graph is None:
            coords = spatial_coordinates(self.part.adata, self.config.spatial_key)
            if self.config.spatial_radius > 0:
                self._graph = neighbor_graph(coords, radius=self.config.spatial_radius)
            else:
                k = min(self.config.spatial_n_neighbors, self.part.adata.n_obs - 1)
                self._graph = neighbor_graph(coords, n_neighbors=k)
        return self._graph

    def spatial_available(self) -> None:
        if self.config.spatial_key not in self.part.adata.obsm:
            raise _Unavailable(f"spatial tasks need coordinates in "
                               f"obsm[{self.config.spatial_key!r}]")

    def spatial_neighborhood_prediction(self) -> list[dict[str, Any]]:
        self.spatial_available()
        sets = neighborhood_sets(self.graph(), n_pairs=math.ceil(self.n_multi / 2),
                                 max_cells=self.config.cells_per_example[1], rng=self.rng,
                                 candidates=self.expressed)
        rows = []
        for found in sets[:self.n_multi]:
            cells = np.array(found.members)
            if (self.part.sentences[cells] == "").any():  # a cell without genes tells nothing
                continue
            answer = "yes" if found.same else "no"
            rows.append(self.row({**self.cell_fields(cells), "same_neighborhood": answer},
                                 cells=cells, label=answer))
        return rows

    def spatial_neighbor_generation(self) -> list[dict[str, Any]]:
        self.spatial_available()
        graph = self.graph()
        sentences = self.part.sentences
        centers = [c for c in self.expressed.tolist()
                   if sum(sentences[n] != "" for n in neighbors_of(graph, c)) >= 2]
        rows = []
        for center in self.rng.permutation(np.array(centers, dtype=np.int64))[:self.n_multi]:
            near = np.array([n for n in neighbors_of(graph, center) if sentences[n] != ""])
            target = int(self.rng.choice(near))
            others = self.rng.permutation(near[near != target])
            shown = np.append(others[:self.config.cells_per_example[1] - 1], center)
            self.rng.shuffle(shown)
            rows.append(self.row({**self.cell_fields(shown), "cell_sentence": sentences[target]},
                                 cells=[*shown.tolist(), target],
                                 reference_sentence=sentences[target]))
        return rows

    def spatial_same_niche_prediction(self) -> list[dict[str, Any]]:
        self.spatial_available()
        cells, niches = self.labelled(self.require("niche_key", "same niche prediction"))
        pools = [p for p in self.groups(cells, [self.config.niche_key]) if p.size >= 2]
        if len(pools) < 2:
            raise _Unavailable("same niche prediction needs two niches with two cells or more")
        rows = []
        for i in range(self.n_multi):
            same = i % 2 == 0  # balanced yes/no
            if same:
                drawn = self.draw(pools[int(self.rng.integers(len(pools)))], low=2)
            else:
                drawn = self.draw(cells, low=2)
                if len(set(niches[drawn])) == 1:  # make it a true negative
                    others = cells[niches[cells] != niches[drawn[0]]]
                    drawn[int(self.rng.integers(drawn.size))] = self.rng.choice(others)
            answer = "yes" if same else "no"
            rows.append(self.row({**self.cell_fields(drawn), "same_niche": answer},
                                 cells=drawn, label=answer))
        return rows


def gene_set_rows(sets: Mapping[str, Sequence[str]], template: Callable[[], PromptTemplate],
                  *, dataset: str, source: str) -> list[dict[str, Any]]:
    """One example per gene set, for the task of the templates ``template()`` returns.

    Genes are space-separated, like a cell sentence; ``label`` is the set name and
    ``reference_sentence`` the genes.
    """
    rows = []
    for name, genes in sets.items():
        chosen = template()
        text = " ".join(genes)
        filled = {"gene_set_name": name, "genes": text, "num_genes": len(genes)}
        row: dict[str, Any] = dict.fromkeys(_TEXT_COLUMNS, "")
        row.update(dict.fromkeys(_LIST_COLUMNS, []))
        row.update(prompt=chosen.format_prompt(**filled),
                   completion=chosen.format_response(**filled), task=chosen.task,
                   source=source, template_variant=chosen.variant, dataset=dataset,
                   label=name, reference_sentence=text)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- inputs

AnnDataLike = AnnData | str | Path


def _named_inputs(adatas: AnnDataLike | Sequence[AnnDataLike] | Mapping[str, AnnDataLike]
                  ) -> list[tuple[str, AnnDataLike]]:
    if isinstance(adatas, Mapping):
        return [(str(k), v) for k, v in adatas.items()]
    if isinstance(adatas, (AnnData, str, Path)):
        adatas = [adatas]
    named: list[tuple[str, AnnDataLike]] = []
    for i, item in enumerate(adatas):
        if isinstance(item, AnnData):
            path = str(item.uns.get("c2s", {}).get("source", {}).get("path", ""))
            name = Path(path).stem if path else f"dataset{i}"
        else:
            name = Path(item).stem
        taken = {n for n, _ in named}
        named.append((name if name not in taken else f"{name}_{i}", item))
    if not named:
        raise TaskOptionError("no data to build a training dataset from",
                              "pass AnnData objects or files, or list files under inputs")
    return named


def _load(item: AnnDataLike, config: DatasetConfig, name: str
          ) -> tuple[AnnData, list[np.ndarray]]:
    """The data ready for sentences (read, filtered by ``keep``, columns mapped by
    ``obs_columns``, cut to ``gene_panel``, prepared, ranked with ``config.seed``) and the
    sentences of its other tie orders (``sentence_draws``)."""
    from c2s_engine.readers import read
    from c2s_engine.sentences import compute_sentences, get_sentences
    from c2s_engine.validation import prepare

    adata = item if isinstance(item, AnnData) else read(item, backed=False)
    if config.keep:
        mask = np.ones(adata.n_obs, dtype=bool)
        for column, values in config.keep.items():
            mask &= _obs_strings(adata, column).isin(values).to_numpy()
        adata = adata[mask].copy()
    columns = config.obs_columns.get(name, {})
    panel = config.per_dataset(name, config.gene_panel)
    if columns and adata is item:
        adata = adata.copy()  # the caller's AnnData keeps its own columns
    for target, source in columns.items():
        adata.obs[target] = _obs_strings(adata, source, f"obs_columns[{name}][{target}]")
    for key in ("label_key", "cluster_key", "donor_key", "condition_key", "tissue_key",
                "niche_key"):
        _obs_strings(adata, getattr(config, key), key)
    if "normalization" not in adata.uns.get("c2s", {}):
        prepare(adata, organism=config.organism or None)
    if panel:  # after prepare, which turns the genes into symbols
        adata = _cut_to_panel(adata, panel, name)
    redrawn = []
    for draw in range(1, config.sentence_draws):
        source = adata
        if config.count_thinning < 1.0:
            source = _thinned(adata, config.count_thinning, config.seed + draw)
        compute_sentences(source, top_k=config.top_k, seed=config.seed + draw)
        redrawn.append(np.array(get_sentences(source), dtype=object))
    compute_sentences(adata, top_k=config.top_k, seed=config.seed)  # what the data keep
    return adata, redrawn


def _panel_genes(path: str) -> list[str]:
    """Gene symbols of a panel file: one per line in a text file, or a data file's genes."""
    source = Path(path)
    if not source.is_file():
        raise TaskOptionError(f"gene_panel file {path} does not exist",
                              "give the path of a text file (one gene per line) or a data file")
    if source.suffix.lower() in {".txt", ".tsv", ".csv", ".list"}:
        lines = source.read_text(encoding="utf-8").splitlines()
        return [line.split(",")[0].split("\t")[0].strip() for line in lines if line.strip()]
    from c2s_engine.readers import read

    panel = read(path)
    try:
        return panel.var_names.astype(str).tolist()
    finally:
        if panel.isbacked:
            panel.file.close()


def _cut_to_panel(adata: AnnData, path: str, name: str) -> AnnData:
    """``adata`` with only the genes of the panel at ``path`` (see ``gene_panel``)."""
    wanted = set(_panel_genes(path))
    keep = adata.var_names.astype(str).isin(wanted)
    if not keep.any():
        raise TaskOptionError(
            f"none of the {len(wanted)} genes of the gene_panel {path} are among the genes of "
            f"{name} (first genes there: {', '.join(map(str, adata.var_names[:5]))})",
            "check that both name genes the same way (symbols or Ensembl IDs)")
    return adata[:, keep].copy()


def _thinned(adata: AnnData, lowest: float, seed: int) -> AnnData:
    """The cells' raw counts binomially thinned (see ``DatasetConfig.count_thinning``), as a
    bare AnnData ready for sentences (same cells and genes)."""
    import scipy.sparse as sp

    from c2s_engine.normalization import normalize, source_matrix

    record = adata.uns["c2s"]["normalization"]
    if record["detected"] != "counts":
        raise TaskOptionError(
            f"count_thinning needs raw counts, but the expression of this dataset was detected "
            f"as {record['detected']!r} (from {record['source']})",
            "give the data with a raw-count layer (e.g. layers['counts']) or set count_thinning "
            "to 1")
    counts = sp.csr_matrix(source_matrix(adata, record["source"]), dtype=np.float64)
    rng = np.random.default_rng(seed)
    kept = rng.uniform(lowest, 1.0, size=adata.n_obs)
    counts.data = rng.binomial(np.rint(counts.data).astype(np.int64),
                               np.repeat(kept, np.diff(counts.indptr))).astype(np.float32)
    counts.eliminate_zeros()
    thinned = AnnData(counts, obs=pd.DataFrame(index=adata.obs_names),
                      var=pd.DataFrame(index=adata.var_names))
    normalize(thinned, layer="X")
    return thinned


def _obs_strings(adata: AnnData, column: str, role: str = "keep") -> pd.Series:
    from c2s_engine.errors import ObsColumnError

    if not column:
        return pd.Series(dtype=object)
    if column not in adata.obs.columns:
        shown = ", ".join(map(str, adata.obs.columns[:30])) or "none"
        raise ObsColumnError(f"{role} names the obs column {column!r}, which the data lack "
                             f"(columns: {shown})", f"set {role} to one of these columns")
    return adata.obs[column].astype(object).map(str, na_action="ignore")


def _organism(adata: AnnData, config: DatasetConfig, name: str) -> str:
    from c2s_engine.genes import resolve_organism

    if config.organism:
        return resolve_organism(config.organism)
    found = adata.uns.get("c2s", {}).get("identifiers", {}).get("organism", "unknown")
    if found == "unknown":
        raise TaskOptionError(f"the organism of {name} could not be detected from its genes",
                              "set organism (e.g. 'Homo sapiens' or 'Mus musculus')")
    return str(found)


def _control_space(part: _Part, config: DatasetConfig) -> dict[str, np.ndarray]:
    """``{split: cells x components}`` for ``part`` and its train part: PCA of the C2S-convention
    expression fitted on the train split's control cells, so the components describe cell
    state and not the perturbation."""
    from sklearn.decomposition import PCA

    from c2s_engine.metrics import cell_matrix

    train = part.train or part
    train_values = cell_matrix(train.adata)
    if train._control_pca is None:  # fitted once, shared by the train and test builders
        fit = train_values[train.column(config.condition_key) == config.control_value]
        n = max(1, min(PAIRING_COMPONENTS, fit.shape[0] - 1, fit.shape[1] - 1))
        train._control_pca = PCA(n_components=n, random_state=config.seed).fit(fit)
    space = {train.split: train._control_pca.transform(train_values)}
    if part is not train:
        space[part.split] = train._control_pca.transform(cell_matrix(part.adata))
    return space


def _parts(name: str, adata: AnnData, test: np.ndarray, organism: str,
           redrawn: list[np.ndarray]) -> dict[str, _Part]:
    from c2s_engine.sentences import get_sentences

    sentences = np.array(get_sentences(adata), dtype=object)
    parts: dict[str, _Part] = {}
    for split, mask in zip(SPLITS, (~test, test), strict=True):
        parts[split] = _Part(dataset=name, split=split, adata=adata[mask].copy(),
                             sentences=sentences[mask], organism=organism,
                             redrawn=[draw[mask] for draw in redrawn],
                             n_dataset=adata.n_obs, train=parts.get("train"))
    return parts


def _check_dataset_names(config: DatasetConfig, names: list[str]) -> None:
    """Per-dataset settings must name datasets that exist (a typo would silently do
    nothing)."""
    for key in ("obs_columns", "gene_panel", "tissue", "abstract"):
        value = getattr(config, key)
        unknown = sorted(set(value) - set(names)) if isinstance(value, Mapping) else []
        if unknown:
            raise TaskOptionError(f"{key} names dataset(s) {', '.join(unknown)}, but the "
                                  f"datasets are {', '.join(names)}",
                                  "use the dataset names (file names without extension)")


def _task_list(config: DatasetConfig) -> tuple[list[str], bool]:
    """(task ids, whether the user named them)."""
    registry = default_registry()
    if config.tasks == "all":
        return registry.list_tasks(), False
    tasks = [config.tasks] if isinstance(config.tasks, str) else list(config.tasks)
    for task in tasks:
        registry.spec(task)  # raises with the list of known tasks
    return list(dict.fromkeys(tasks)), True


def build_dataset(adatas: AnnDataLike | Sequence[AnnDataLike] | Mapping[str, AnnDataLike]
                  | None = None, config: DatasetConfig | Mapping[str, Any] | None = None
                  ) -> tuple[Any, SplitInfo]:
    """Build train/test prompt-completion examples for every requested task.

    Parameters
    ----------
    adatas
        AnnData objects or data files (one, a list, or ``{name: ...}``); None reads
        ``config.inputs``. Datasets are named by the mapping key, the file stem, or
        ``dataset<i>``. AnnData objects are prepared (:func:`c2s_engine.pp.prepare`, when not
        yet) and ranked in place; with ``keep`` a filtered copy is used instead.
    config
        A :class:`DatasetConfig` or a mapping for :meth:`DatasetConfig.from_dict`.

    Returns
    -------
    tuple of (datasets.DatasetDict, SplitInfo)
        ``{'train', 'test'}`` datasets with the columns of :data:`FEATURES` (module docstring)
        and the record of the split.

    Writes
    ------
    ``adata.obsm['c2s_ranks']``, ``adata.uns['c2s']['sentences']`` (and what ``prepare``
    writes) on each input AnnData.

    Raises
    ------
    TaskOptionError
        Invalid settings, a split that leaves a side empty, or a named task that the data
        cannot make examples for (the message says what it needs).
    ObsColumnError
        A configured obs column is missing.
    PromptError
        An unknown task id.
    """
    from datasets import Dataset, DatasetDict

    if config is None:
        config = DatasetConfig()
    elif isinstance(config, Mapping):
        config = DatasetConfig.from_dict(config)
    tasks, named_tasks = _task_list(config)
    registry = default_registry()
    info = SplitInfo(method=config.split.by, seed=config.seed,
                     test_fraction=config.split.test_fraction)
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    skipped: dict[str, list[str]] = {}
    made: set[str] = set()

    def template_for(task: str, rng: np.random.Generator) -> Callable[[], PromptTemplate]:
        return lambda: registry.get_template(task, variant="random", rng=rng)

    items = _named_inputs(adatas if adatas is not None else config.inputs)
    _check_dataset_names(config, [name for name, _ in items])
    for d, (name, item) in enumerate(items):
        adata, redrawn = _load(item, config, name)
        test, held = split_cells(adata, config.split, seed=config.seed,
                                 label_key=config.label_key, donor_key=config.donor_key)
        for column, values in held.items():
            info.held_out[column] = sorted(set(info.held_out.get(column, [])) | set(values))
        info.test_cells[name] = adata.obs_names[test].astype(str).tolist()
        info.n_cells[name] = {"train": int((~test).sum()), "test": int(test.sum())}
        parts = _parts(name, adata, test, _organism(adata, config, name), redrawn)
        for s, split in enumerate(SPLITS):
            builder = _Builder(parts[split], config, info.notes)
            for t, task in enumerate(tasks):
                rng = np.random.default_rng([config.seed, d, s, t])
                try:
                    found = builder.build(task, template_for(task, rng), rng)
                except _Unavailable as reason:
                    skipped.setdefault(task, []).append(f"{name} ({split}): {reason}")
                    continue
                rows[split].extend(found)
                made.add(task)

    if config.gmt_path:
        sets = read_gmt(config.gmt_path)
        info.test_gene_sets = split_names(list(sets), config.split.test_fraction,
                                          seed=config.seed)
        source_name = f"gmt:{Path(config.gmt_path).name}"
        for s, split in enumerate(SPLITS):
            chosen = {k: v for k, v in sets.items()
                      if (k in info.test_gene_sets) == (split == "test")}
            for t, task in enumerate(t for t in tasks if t in GENE_SET_TASKS):
                rng = np.random.default_rng([config.seed, len(items), s, t])
                found = gene_set_rows(chosen, template_for(task, rng), dataset=source_name,
                                      source="data")
                cap = config.max_examples_per_task
                rows[split].extend(found[:cap] if cap else found)
                made.add(task)

    info.skipped = {task: "; ".join(reasons) for task, reasons in skipped.items()
                    if task not in made}
    missing = [t for t in tasks if t not in made]
    if named_tasks and missing:
        raise TaskOptionError(
            "no example could be made for " + "; ".join(
                f"{t} ({info.skipped.get(t, 'no data')})" for t in missing),
            "set the config keys these tasks need, or leave the tasks out")
    if missing:
        warnings.warn(f"tasks skipped (the data do not support them): {', '.join(missing)}; "
                      "see SplitInfo.skipped", stacklevel=2)
    features = _features()
    out = DatasetDict({split: Dataset.from_list(rows[split], features=features)
                       for split in SPLITS})
    info.counts = {split: {t: int(n) for t, n in
                           sorted(pd.Series(out[split]["task"], dtype=object).value_counts()
                                  .items())} for split in SPLITS}
    return out, info


# --------------------------------------------------------------------------- saving

SPLIT_FILE = "split.json"
CONFIG_FILE = "dataset_config.json"


def save_dataset(dataset: Any, split_info: SplitInfo, path: str | Path,
                 config: DatasetConfig | None = None) -> Path:
    """Save a built dataset: the DatasetDict (``save_to_disk``), ``split.json`` and the config.

    Parameters
    ----------
    dataset
        The ``DatasetDict`` from :func:`build_dataset`.
    split_info
        Its :class:`SplitInfo`.
    path
        Folder to write (created).
    config
        The :class:`DatasetConfig` used, saved as ``dataset_config.json`` when given.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dataset.save_to_disk(str(path))
    split_info.save(path / SPLIT_FILE)
    if config is not None:
        (path / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=1, sort_keys=True),
                                        encoding="utf-8")
    return path


def load_saved_dataset(path: str | Path) -> tuple[Any, SplitInfo]:
    """Read back what :func:`save_dataset` wrote: ``(DatasetDict, SplitInfo)``."""
    from datasets import load_from_disk

    path = Path(path)
    return load_from_disk(str(path)), SplitInfo.load(path / SPLIT_FILE)
