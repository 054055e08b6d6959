"""The training dataset builder on real data: every task, filled templates, recorded splits."""

from __future__ import annotations

import re
import warnings

import anndata
import numpy as np
import pytest
from conftest import shared_file

from c2s_engine.errors import GeneSetFileError, PromptError, TaskOptionError
from c2s_engine.metrics import cell_matrix
from c2s_engine.prompts import list_tasks
from c2s_engine.sentences import compute_sentences, get_sentences
from c2s_engine.tasks.facts import ClusterFacts, DatasetFacts
from c2s_engine.tasks.neighborhoods import neighbor_graph, neighbors_of
from c2s_engine.training.dataset import (
    TABLE1_TASKS,
    DatasetConfig,
    build_dataset,
    load_saved_dataset,
    save_dataset,
)
from c2s_engine.training.targets import (
    DERIVED_PREFIX,
    cluster_caption,
    dataset_summary,
    qa_pairs,
    read_gmt,
)

TOP_K = 12
SPATIAL_TASKS = ("spatial_niche_label_prediction", "spatial_neighborhood_prediction",
                 "spatial_neighbor_generation", "spatial_same_niche_prediction")
MULTI_CELL_TASKS = ("multi_cell_language_modeling", "tissue_prediction",
                    "sample_cell_types_prediction", "tissue_conditioned_sample_generation",
                    "cell_types_conditioned_sample_generation",
                    "abstract_conditioned_sample_generation", "natural_language_interpretation",
                    "cluster_captioning", "question_answering")
GMT_TEXT = "".join(f"SET_{i}\tdescription\tG{i}A\tG{i}B\tG{i}C\n" for i in range(5))


def _rows(ds, task: str) -> list[dict]:
    return [r for r in ds if r["task"] == task]


def _n_cells_in_block(text: str) -> int:
    return len(re.findall(r"^Cell \d+:$", text, flags=re.M))


# ---------------------------------------------------------------- PBMC: every non-spatial task


@pytest.fixture(scope="module")
def pbmc_config(tmp_path_factory):
    gmt = tmp_path_factory.mktemp("gmt") / "toy.gmt"
    gmt.write_text(GMT_TEXT, encoding="utf-8")
    return DatasetConfig(top_k=TOP_K, label_key="bulk_labels", donor_key="sample",
                         tissue="peripheral blood", examples_per_task=20,
                         cells_per_example=(5, 8), gmt_path=str(gmt), n_markers=5, seed=7)


@pytest.fixture(scope="module")
def pbmc_data(pbmc68k):
    adata = pbmc68k.copy()
    # The barcode suffix (-1 ... -8) names the 10x sample each cell was sequenced in.
    adata.obs["sample"] = [name.rsplit("-", 1)[1] for name in adata.obs_names]
    return adata


@pytest.fixture(scope="module")
def pbmc_built(pbmc_data, pbmc_config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the spatial and perturbation tasks are skipped
        return build_dataset({"pbmc": pbmc_data}, pbmc_config)


def test_every_non_spatial_task_makes_examples_on_pbmc(pbmc_built):
    ds, info = pbmc_built
    expected = set(TABLE1_TASKS) | {"cluster_captioning", "question_answering"}
    assert len(TABLE1_TASKS) == 12
    for split in ("train", "test"):
        assert expected <= set(info.counts[split]), split
        assert set(ds[split]["task"]) == set(info.counts[split])
    assert set(info.skipped) == {"perturbation_response", *SPATIAL_TASKS}
    assert "needs condition_key" in info.skipped["perturbation_response"]
    assert set(list_tasks()) == expected | set(info.skipped)


def test_templates_are_filled_and_completions_start_with_a_space(pbmc_built):
    ds, _ = pbmc_built
    for split in ("train", "test"):
        for row in ds[split]:
            assert "{" not in row["prompt"] and "}" not in row["prompt"], row["task"]
            assert "{" not in row["completion"] and "}" not in row["completion"], row["task"]
            assert row["completion"][:1].isspace() and row["completion"].strip()
            assert row["source"] in ("data", "derived")


def test_cell_type_prediction_rows_hold_the_cells_sentence_and_label(pbmc_built, pbmc_data):
    ds, _ = pbmc_built
    rows = _rows(ds["train"], "cell_type_prediction")
    assert len(rows) == 558  # one per train cell (examples_per_cell=1)
    for row in rows[:25]:
        (cell,) = row["cell_ids"]
        label = pbmc_data.obs.loc[cell, "bulk_labels"]
        sentence = get_sentences(pbmc_data, n_genes=TOP_K, cells=[cell])[0]
        assert row["label"] == label and row["completion"] == f" {label}."
        assert f"Cell sentence: {sentence}.\n" in row["prompt"]
        assert f"{TOP_K}" in row["prompt"] and "Homo sapiens" in row["prompt"]
        assert row["source"] == "data"


def test_sentence_draws_cycle_through_tie_orders_of_the_same_ranking(pbmc68k):
    adata = pbmc68k[:120].copy()
    config = DatasetConfig(top_k=TOP_K, label_key="bulk_labels", examples_per_cell=4,
                           sentence_draws=2, tasks=["cell_type_prediction",
                                                    "cell_type_generation"], seed=5)
    ds, _ = build_dataset({"pbmc": adata}, config)
    # The data keep the sentences of the config's seed; the second order is seed + 1.
    first = dict(zip(adata.obs_names, get_sentences(adata), strict=True))
    other = adata.copy()
    compute_sentences(other, top_k=TOP_K, seed=6)
    second = dict(zip(other.obs_names, get_sentences(other), strict=True))
    assert sum(first[c] != second[c] for c in first) > 60  # 12 genes of integer-like values tie
    for task in ("cell_type_prediction", "cell_type_generation"):
        seen: dict[str, list[str]] = {}
        for row in _rows(ds["train"], task):
            (cell,) = row["cell_ids"]
            sentence = (row["completion"] if task == "cell_type_generation"
                        else row["prompt"].split("Cell sentence: ")[1].split(".\n")[0])
            seen.setdefault(cell, []).append(sentence.strip().rstrip("."))
            if task == "cell_type_generation":
                assert row["reference_sentence"] == seen[cell][-1]
        for cell, sentences in seen.items():
            # Rounds 0 and 2 use the first order, 1 and 3 the second: two of each.
            assert sorted(sentences) == sorted([first[cell], second[cell]] * 2), cell
    # The orders differ only among equal values: position by position the same expression.
    values = np.asarray(cell_matrix(adata).todense())
    column = {g: i for i, g in enumerate(adata.var_names)}
    for row, cell in enumerate(adata.obs_names):
        at = [values[row, [column[g] for g in s.split()]] for s in (first[cell], second[cell])]
        np.testing.assert_array_equal(at[0], at[1])
        assert (np.diff(at[0]) <= 0).all()
    with pytest.raises(TaskOptionError, match="sentence_draws must be at least 1"):
        DatasetConfig(sentence_draws=0)


def test_count_thinning_draws_read_like_the_same_cell_sequenced_less_deeply():
    adata = anndata.read_h5ad(
        shared_file("pbmc68k_with_counts/pbmc68k_reduced_with_counts.h5ad"))[:200].copy()
    counts = np.asarray(adata.layers["counts"].todense())
    config = DatasetConfig(top_k=1000, label_key="bulk_labels", examples_per_cell=2,
                           sentence_draws=2, count_thinning=0.5,
                           tasks=["cell_type_prediction"], seed=3)
    ds, _ = build_dataset({"pbmc": adata}, config)
    column = {g: i for i, g in enumerate(adata.var_names)}
    measured = {}  # cell -> its genes expressed as measured
    for row, cell in enumerate(adata.obs_names):
        measured[cell] = set(adata.var_names[counts[row] > 0])
    singles_kept, singles, shorter = 0, 0, 0
    seen: dict[str, list[list[str]]] = {}
    for row in _rows(ds["train"], "cell_type_prediction"):
        sentence = row["prompt"].split("Cell sentence: ")[1].split(".\n")[0].split()
        seen.setdefault(row["cell_ids"][0], []).append(sentence)
    assert len(seen) > 100
    for cell, (first, thinned) in seen.items():
        # Round 0 is the cell as measured: every expressed gene (top_k covers them all).
        assert set(first) == measured[cell]
        # Round 1 only loses genes, never gains one.
        assert set(thinned) <= measured[cell]
        shorter += len(thinned) < len(first)
        row = adata.obs_names.get_loc(cell)
        ones = {g for g in measured[cell] if counts[row, column[g]] == 1}
        singles += len(ones)
        singles_kept += len(ones & set(thinned))
    assert shorter > 0.95 * len(seen)
    # A count of 1 survives with probability f, f uniform on [0.5, 1]: 0.75 on average.
    assert 0.70 < singles_kept / singles < 0.80
    with pytest.raises(TaskOptionError, match="count_thinning must be above 0"):
        DatasetConfig(count_thinning=0)


def test_count_thinning_needs_raw_counts(pbmc68k_copy):
    config = DatasetConfig(top_k=TOP_K, label_key="bulk_labels", sentence_draws=2,
                           count_thinning=0.5, tasks=["cell_type_prediction"])
    with pytest.raises(TaskOptionError, match="count_thinning needs raw counts"):
        build_dataset({"pbmc": pbmc68k_copy}, config)


def test_multi_cell_examples_draw_cells_of_one_split_and_one_sample(pbmc_built, pbmc_data):
    ds, info = pbmc_built
    test_cells = set(info.test_cells["pbmc"])
    sample = pbmc_data.obs["sample"]
    for split in ("train", "test"):
        for task in MULTI_CELL_TASKS:
            for row in _rows(ds[split], task):
                cells = row["cell_ids"]
                assert 5 <= len(cells) <= 8 and len(set(cells)) == len(cells)
                assert all((c in test_cells) == (split == "test") for c in cells)
                assert _n_cells_in_block(row["prompt"] + row["completion"]) == len(cells)
                if task not in ("cluster_captioning", "question_answering"):
                    assert sample[cells].nunique() == 1, task


def test_labels_of_multi_cell_answers_follow_the_cells(pbmc_built, pbmc_data):
    ds, _ = pbmc_built
    labels = pbmc_data.obs["bulk_labels"]
    for row in _rows(ds["train"], "sample_cell_types_prediction"):
        assert row["label"] == ", ".join(labels[row["cell_ids"]])
        assert row["completion"] == f" {row['label']}."
    for row in _rows(ds["train"], "cell_types_conditioned_sample_generation"):
        assert f"{row['label']}" in row["prompt"]
        assert row["reference_sentences"] == get_sentences(pbmc_data, n_genes=TOP_K,
                                                           cells=row["cell_ids"])
    for row in _rows(ds["train"], "cluster_captioning"):
        assert set(labels[row["cell_ids"]]) == {row["label"]}
    for row in _rows(ds["train"], "tissue_prediction"):
        assert row["completion"] == " peripheral blood."


def test_derived_text_says_it_is_derived(pbmc_built):
    ds, _ = pbmc_built
    for split in ("train", "test"):
        for task in ("cluster_captioning", "question_answering", "natural_language_interpretation"):
            for row in _rows(ds[split], task):
                assert row["source"] == "derived"
                assert row["reference_text"].startswith(DERIVED_PREFIX)
                assert row["completion"] == f" {row['reference_text']}"
        for row in _rows(ds[split], "abstract_conditioned_sample_generation"):
            assert row["source"] == "derived" and f"Abstract: {DERIVED_PREFIX}" in row["prompt"]
        for row in _rows(ds[split], "question_answering"):
            assert f"Question: {row['question']}\n" in row["prompt"]
            assert "Dataset facts: " in row["prompt"]


def test_derived_captions_describe_the_splits_own_cells(pbmc_built, pbmc_data):
    ds, info = pbmc_built
    labels = pbmc_data.obs["bulk_labels"]
    for split in ("train", "test"):
        in_split = pbmc_data.obs_names.isin(info.test_cells["pbmc"]) == (split == "test")
        sizes = labels[in_split].value_counts()
        for row in _rows(ds[split], "cluster_captioning"):
            assert (f"this cluster of {sizes[row['label']]} cells is labelled {row['label']} "
                    "in bulk_labels") in row["completion"]


def test_gene_sets_come_from_the_gmt_file_split_by_name_and_from_markers(pbmc_built):
    ds, info = pbmc_built
    assert len(info.test_gene_sets) == 1 and info.test_gene_sets[0].startswith("SET_")
    for split in ("train", "test"):
        for task in ("gene_set_naming", "gene_set_enumeration"):
            rows = _rows(ds[split], task)
            from_file = [r for r in rows if r["dataset"] == "gmt:toy.gmt"]
            derived = [r for r in rows if r["source"] == "derived"]
            assert all(r["source"] == "data" for r in from_file)
            held = [r["label"] for r in from_file]
            assert (held == info.test_gene_sets) if split == "test" else \
                (len(held) == 4 and not set(held) & set(info.test_gene_sets))
            i = int(from_file[0]["label"].split("_")[1])
            assert from_file[0]["reference_sentence"] == f"G{i}A G{i}B G{i}C"
            assert derived and all(r["label"].startswith("marker genes of ") for r in derived)
        naming = _rows(ds[split], "gene_set_naming")[0]
        assert naming["completion"] == f" {naming['label']}."


def test_splits_are_disjoint_and_recorded(pbmc_built, pbmc_data):
    ds, info = pbmc_built
    test_cells = set(info.test_cells["pbmc"])
    assert info.method == "cell" and info.n_cells["pbmc"]["test"] == len(test_cells)
    assert info.n_cells["pbmc"]["train"] + len(test_cells) == pbmc_data.n_obs
    train_used = {c for cells in ds["train"]["cell_ids"] for c in cells}
    test_used = {c for cells in ds["test"]["cell_ids"] for c in cells}
    assert not train_used & test_cells and test_used <= test_cells
    assert test_used == test_cells  # every held-out cell is annotated once


def test_paraphrases_vary_and_are_reproducible_with_the_seed(pbmc_built, pbmc_data, pbmc_config):
    ds, _ = pbmc_built
    variants = [r["template_variant"] for r in _rows(ds["train"], "cell_type_prediction")]
    assert set(variants) == set(range(8))  # canonical + 7 paraphrases all drawn
    small = DatasetConfig(**{**pbmc_config.to_dict(), "tasks": ["cell_type_prediction",
                                                                "tissue_prediction"],
                             "gmt_path": ""})
    first, _ = build_dataset({"pbmc": pbmc_data}, small)
    again, _ = build_dataset({"pbmc": pbmc_data}, small)
    assert first["train"]["prompt"] == again["train"]["prompt"]
    assert first["test"]["cell_ids"] == again["test"]["cell_ids"]
    other, _ = build_dataset({"pbmc": pbmc_data}, DatasetConfig(
        **{**small.to_dict(), "seed": 8}))
    assert other["train"]["template_variant"] != first["train"]["template_variant"]


def test_save_and_load_round_trip(pbmc_built, pbmc_config, tmp_path):
    ds, info = pbmc_built
    folder = save_dataset(ds, info, tmp_path / "data", config=pbmc_config)
    loaded, loaded_info = load_saved_dataset(folder)
    assert loaded_info == info
    assert loaded["test"][:] == ds["test"][:]
    import json

    saved = json.loads((folder / "dataset_config.json").read_text())
    assert DatasetConfig.from_dict(saved) == pbmc_config


def test_donor_split_keeps_each_sample_on_one_side(pbmc_data):
    config = DatasetConfig(top_k=TOP_K, label_key="bulk_labels", donor_key="sample",
                           tasks=["multi_cell_language_modeling", "cell_type_prediction"],
                           examples_per_task=10, split={"by": "donor", "test_fraction": 0.25})
    ds, info = build_dataset({"pbmc": pbmc_data}, config)
    held = info.held_out["sample"]
    assert len(held) == 2
    sample = pbmc_data.obs["sample"]
    assert set(sample[info.test_cells["pbmc"]]) == set(held)
    for split in ("train", "test"):
        used = {c for cells in ds[split]["cell_ids"] for c in cells}
        assert (set(sample[list(used)]) <= set(held)) == (split == "test")


# ---------------------------------------------------------------- Kang: perturbation pairs


@pytest.fixture(scope="module")
def kang():
    return anndata.read_h5ad(shared_file("kang_pbmc_ifnb/kang_pbmc_ifnb.h5ad"))


def test_perturbation_pairs_match_cell_type_and_hold_out_a_condition(kang):
    config = DatasetConfig(
        top_k=TOP_K, label_key="cell_type", condition_key="condition", control_value="control",
        perturbation_names={"stimulated": "IFN-beta"}, tasks=["perturbation_response"],
        split={"by": "condition", "held_out": {"cell_type": "CD4T", "condition": "stimulated"}})
    ds, info = build_dataset({"kang": kang}, config)
    obs = kang.obs
    held = obs.index[(obs["cell_type"] == "CD4T") & (obs["condition"] == "stimulated")]
    assert info.held_out == {"cell_type": ["CD4T"], "condition": ["stimulated"]}
    assert sorted(info.test_cells["kang"]) == sorted(held) and len(held) == 356
    assert info.counts == {"train": {"perturbation_response": 1039 - 356},
                           "test": {"perturbation_response": 356}}
    assert any("356 examples take their control cell from the train split" in n
               for n in info.notes)
    sentences = dict(zip(kang.obs_names, get_sentences(kang, n_genes=TOP_K), strict=True))
    for split in ("train", "test"):
        for row in ds[split]:
            control, perturbed = row["cell_ids"]
            assert obs.loc[control, "condition"] == "control"
            assert obs.loc[perturbed, "condition"] == "stimulated"
            assert obs.loc[control, "cell_type"] == obs.loc[perturbed, "cell_type"] == row["label"]
            assert (perturbed in held) == (split == "test")
            assert control not in held
            assert row["perturbation"] == "IFN-beta" and "IFN-beta" in row["prompt"]
            assert row["control_sentence"] == sentences[control]
            assert f"Control cell sentence: {sentences[control]}.\n" in row["prompt"]
            assert row["completion"] == f" {sentences[perturbed]}."
            assert row["reference_sentence"] == sentences[perturbed]


def test_nearest_pairing_takes_one_of_the_closest_controls_of_the_cell_type(kang):
    from sklearn.decomposition import PCA

    split = {"by": "condition", "held_out": {"cell_type": "CD14+Mono", "condition": "stimulated"}}
    common = dict(top_k=TOP_K, label_key="cell_type", condition_key="condition",
                  control_value="control", tasks=["perturbation_response"], split=split,
                  examples_per_cell=2)
    near, _ = build_dataset({"kang": kang}, DatasetConfig(perturbation_pairing="nearest", **common))
    randomly, _ = build_dataset({"kang": kang}, DatasetConfig(**common))
    # Every control is a training cell, so the space is the PCA of all controls.
    values = cell_matrix(kang)
    controls = (kang.obs["condition"] == "control").to_numpy()
    space = PCA(n_components=30, random_state=0).fit(values[controls]).transform(values)
    where = {name: i for i, name in enumerate(kang.obs_names)}
    kind = kang.obs["cell_type"].astype(str).to_numpy()

    def distance(pair: list[str]) -> float:
        return float(np.linalg.norm(space[where[pair[0]]] - space[where[pair[1]]]))

    for split_name in ("train", "test"):
        for pair in near[split_name]["cell_ids"]:
            control, perturbed = where[pair[0]], where[pair[1]]
            pool = np.flatnonzero(controls & (kind == kind[perturbed]))
            ranked = pool[np.argsort(np.linalg.norm(space[pool] - space[perturbed], axis=1))]
            assert control in ranked[:5]
    # Held-out stimulated monocytes get controls far closer to them than a random monocyte.
    near_test = np.mean([distance(p) for p in near["test"]["cell_ids"]])
    random_test = np.mean([distance(p) for p in randomly["test"]["cell_ids"]])
    assert near_test < 0.8 * random_test
    # Two rounds per cell still draw more than one control for most cells.
    firsts = {}
    for control, perturbed in near["train"]["cell_ids"]:
        firsts.setdefault(perturbed, set()).add(control)
    assert np.mean([len(c) > 1 for c in firsts.values()]) > 0.5
    with pytest.raises(TaskOptionError, match="perturbation_pairing must be one of"):
        DatasetConfig(perturbation_pairing="optimal", **common)


def test_identity_pairs_give_every_control_another_control_of_its_type(kang):
    split = {"by": "condition", "held_out": {"cell_type": "CD14+Mono", "condition": "stimulated"}}
    common = dict(top_k=TOP_K, label_key="cell_type", condition_key="condition",
                  control_value="control", tasks=["perturbation_response"], split=split,
                  perturbation_names={"stimulated": "IFN-beta", "control": "none (control)"})
    plain, _ = build_dataset({"kang": kang}, DatasetConfig(**common))
    ds, info = build_dataset({"kang": kang}, DatasetConfig(control_pairs_per_cell=1, **common))
    obs = kang.obs
    controls = obs.index[obs["condition"] == "control"]
    identity = [r for r in ds["train"] if r["perturbation"] == "none (control)"]
    # One identity pair answered by each control cell, the held-out type's controls included ...
    assert sorted(r["cell_ids"][1] for r in identity) == sorted(controls)
    assert (obs.loc[[r["cell_ids"][1] for r in identity], "cell_type"] == "CD14+Mono").sum() == 238
    sentences = dict(zip(kang.obs_names, get_sentences(kang, n_genes=TOP_K), strict=True))
    for row in identity:
        control, answer = row["cell_ids"]
        # ... each read from another control cell of the same type, never the cell itself.
        assert answer != control and obs.loc[answer, "condition"] == "control"
        assert obs.loc[control, "cell_type"] == obs.loc[answer, "cell_type"] == row["label"]
        assert "none (control)" in row["prompt"]
        assert row["completion"] == f" {sentences[answer]}."
    # The perturbed examples and the held-out test split are as without identity pairs.
    perturbed = [r["cell_ids"][1] for r in ds["train"] if r["perturbation"] == "IFN-beta"]
    assert sorted(perturbed) == sorted(c for _, c in plain["train"]["cell_ids"])
    assert ds["test"]["cell_ids"] == plain["test"]["cell_ids"]
    assert info.counts["train"]["perturbation_response"] == len(perturbed) + len(controls)
    # A cap applies to the perturbed and the identity examples each on their own.
    capped, _ = build_dataset({"kang": kang}, DatasetConfig(control_pairs_per_cell=1,
                                                            max_examples_per_task=100, **common))
    kinds = [r["perturbation"] for r in capped["train"]]
    assert kinds.count("IFN-beta") == kinds.count("none (control)") == 100
    with pytest.raises(TaskOptionError, match="control_pairs_per_cell must be 0"):
        DatasetConfig(control_pairs_per_cell=-1, **common)


def test_a_cell_split_pairs_controls_within_the_same_split(kang):
    config = DatasetConfig(top_k=TOP_K, label_key="cell_type", condition_key="condition",
                           control_value="control", tasks=["perturbation_response"])
    ds, info = build_dataset({"kang": kang}, config)
    test_cells = set(info.test_cells["kang"])
    assert not info.notes
    for split in ("train", "test"):
        for row in ds[split]:
            assert all((c in test_cells) == (split == "test") for c in row["cell_ids"])
            assert row["perturbation"] == "stimulated"  # no name given: the obs value


# ---------------------------------------------------------------- osmFISH: spatial tasks


@pytest.fixture(scope="module")
def osmfish_built():
    adata = anndata.read_h5ad(shared_file("osmfish_sscortex/osmfish_sscortex.h5ad"))
    config = DatasetConfig(top_k=TOP_K, label_key="cell_type", niche_key="Region",
                           keep={"Valid": [1]}, tasks=list(SPATIAL_TASKS), examples_per_task=40,
                           max_examples_per_task=60, cells_per_example=(3, 7))
    ds, info = build_dataset({"osmfish": adata}, config)
    valid = adata[adata.obs["Valid"] == 1].copy()
    return ds, info, valid


def test_every_spatial_task_makes_examples_on_osmfish(osmfish_built):
    ds, info, valid = osmfish_built
    for split in ("train", "test"):
        assert set(info.counts[split]) == set(SPATIAL_TASKS)
    assert sum(info.n_cells["osmfish"].values()) == valid.n_obs == 4839
    assert {r["label"] for r in _rows(ds["train"], "spatial_neighborhood_prediction")} == \
        {"yes", "no"}
    for row in _rows(ds["test"], "spatial_niche_label_prediction"):
        assert row["label"] == valid.obs.loc[row["cell_ids"][0], "Region"]
        assert row["completion"] == f" {row['label']}."
        assert "Mus musculus" in row["prompt"]


def test_spatial_sets_are_neighbourhoods_of_the_splits_cells(osmfish_built):
    ds, info, valid = osmfish_built
    for split in ("train", "test"):
        held = valid.obs_names.isin(info.test_cells["osmfish"])
        part = valid[held if split == "test" else ~held]
        graph = neighbor_graph(np.asarray(part.obsm["spatial"], dtype=float), n_neighbors=6)
        names = part.obs_names

        def near(cell, graph=graph, names=names):
            return set(names[neighbors_of(graph, names.get_loc(cell))])

        for row in _rows(ds[split], "spatial_neighborhood_prediction"):
            cells = set(row["cell_ids"])
            if row["label"] == "yes":  # a center whose neighbours are all the other cells
                assert any(cells - {c} <= near(c) for c in cells), row["cell_ids"]
            else:  # a center none of whose neighbours is among the other cells
                assert any(not (cells - {c}) & near(c) for c in cells), row["cell_ids"]
        for row in _rows(ds[split], "spatial_neighbor_generation"):
            *shown, target = row["cell_ids"]
            assert any(target in near(c) for c in shown)
            assert row["completion"] == f" {row['reference_sentence']}."
        for row in _rows(ds[split], "spatial_same_niche_prediction"):
            same = part.obs.loc[row["cell_ids"], "Region"].nunique() == 1
            assert row["label"] == ("yes" if same else "no")


def test_a_second_dataset_joins_under_its_own_label_column_and_the_first_ones_genes(
        pbmc68k, kang, tmp_path):
    pbmc, other = pbmc68k[:100].copy(), kang[:150].copy()
    panel = tmp_path / "panel.txt"
    panel.write_text("\n".join(pbmc.var_names) + "\n", encoding="utf-8")
    config = DatasetConfig(top_k=TOP_K, label_key="bulk_labels", tasks=["cell_type_prediction"],
                           obs_columns={"kang": {"bulk_labels": "cell_type"}},
                           gene_panel={"kang": str(panel)}, seed=3)
    ds, info = build_dataset({"pbmc": pbmc, "kang": other}, config)
    # The caller's AnnData keep their own columns and genes.
    assert "bulk_labels" not in other.obs and other.n_vars == kang.n_vars
    rows = [r for split in ("train", "test") for r in _rows(ds[split], "cell_type_prediction")]
    by_dataset = {name: [r for r in rows if r["dataset"] == name] for name in ("pbmc", "kang")}
    assert len(by_dataset["pbmc"]) == 100 and len(by_dataset["kang"]) == 150
    assert info.n_cells["kang"]["train"] + info.n_cells["kang"]["test"] == 150
    for name, column, data in (("pbmc", "bulk_labels", pbmc), ("kang", "cell_type", other)):
        for row in by_dataset[name]:
            (cell,) = row["cell_ids"]
            assert row["label"] == data.obs.loc[cell, column]
    # Kang's sentences hold the TOP_K most expressed of its genes that are in the panel.
    shared = [g for g in other.var_names if g in set(pbmc.var_names)]
    assert 0 < len(shared) < other.n_vars
    values = other[:, shared].X.toarray() if hasattr(other.X, "toarray") else other[:, shared].X
    column = {g: i for i, g in enumerate(shared)}
    row_of = {c: i for i, c in enumerate(other.obs_names)}
    for row in by_dataset["kang"][:40]:
        (cell,) = row["cell_ids"]
        genes = row["prompt"].split("Cell sentence: ")[1].split(".\n")[0].split()
        assert set(genes) <= set(shared)
        cell_values = values[row_of[cell]]
        picked = cell_values[[column[g] for g in genes]]
        assert (np.diff(picked) <= 0).all() and (picked > 0).all()
        others = np.delete(cell_values, [column[g] for g in genes])
        assert len(genes) == min(TOP_K, int((cell_values > 0).sum()))
        assert others.max(initial=0) <= picked[-1]
    # A data file gives its genes as the panel too.
    pbmc_file = tmp_path / "pbmc.h5ad"
    pbmc68k[:5].write_h5ad(pbmc_file)
    config_file = DatasetConfig(**{**config.to_dict(), "gene_panel": {"kang": str(pbmc_file)},
                                   "split": config.split})
    again, _ = build_dataset({"pbmc": pbmc, "kang": other}, config_file)
    assert again["train"]["prompt"] == ds["train"]["prompt"]


def test_per_dataset_settings_name_real_datasets_columns_and_genes(pbmc68k, kang, tmp_path):
    from c2s_engine.errors import ObsColumnError

    pbmc, other = pbmc68k[:60].copy(), kang[:60].copy()
    base = {"top_k": TOP_K, "label_key": "bulk_labels", "tasks": ["cell_type_prediction"]}
    with pytest.raises(TaskOptionError, match="obs_columns names dataset.*kangg.*datasets are "
                                              "pbmc, kang"):
        build_dataset({"pbmc": pbmc, "kang": other},
                      {**base, "obs_columns": {"kangg": {"bulk_labels": "cell_type"}}})
    with pytest.raises(ObsColumnError, match="obs_columns\\[kang\\]\\[bulk_labels\\] names the "
                                             "obs column 'celltype'"):
        build_dataset({"pbmc": pbmc, "kang": other},
                      {**base, "obs_columns": {"kang": {"bulk_labels": "celltype"}}})
    ensembl = tmp_path / "ensembl.txt"
    ensembl.write_text("ENSG00000141510\nENSG00000012048\n", encoding="utf-8")
    with pytest.raises(TaskOptionError, match="none of the 2 genes of the gene_panel"):
        build_dataset({"pbmc": pbmc, "kang": other},
                      {**base, "obs_columns": {"kang": {"bulk_labels": "cell_type"}},
                       "gene_panel": {"kang": str(ensembl)}})
    with pytest.raises(TaskOptionError, match="gene_panel file .*missing.txt does not exist"):
        build_dataset({"pbmc": pbmc}, {**base, "gene_panel": str(tmp_path / "missing.txt")})
    with pytest.raises(TaskOptionError, match="obs_columns must map each dataset name"):
        DatasetConfig(obs_columns={"kang": "cell_type"})


# ---------------------------------------------------------------- config and errors


def test_config_round_trips_and_rejects_unknown_keys():
    config = DatasetConfig.from_dict({"top_k": 50, "cells_per_example": [2, 4],
                                      "split": {"by": "condition", "held_out": {"a": "b"}}})
    assert config.split.held_out == {"a": ["b"]} and config.cells_per_example == (2, 4)
    assert DatasetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(TaskOptionError, match="unknown key.*top_n.*use only inputs, tasks"):
        DatasetConfig.from_dict({"top_n": 5})
    with pytest.raises(TaskOptionError, match="unknown key.*in the split: fraction"):
        DatasetConfig.from_dict({"split": {"fraction": 0.1}})
    with pytest.raises(TaskOptionError, match="cells_per_example"):
        DatasetConfig(cells_per_example=(6, 5))
    with pytest.raises(TaskOptionError, match="set control_value"):
        DatasetConfig(condition_key="condition")


def test_config_loads_from_yaml(tmp_path):
    path = tmp_path / "data.yaml"
    path.write_text("label_key: bulk_labels\ntasks: [cell_type_prediction]\n"
                    "split:\n  by: donor\n  test_fraction: 0.5\n", encoding="utf-8")
    config = DatasetConfig.from_yaml(path)
    assert config.tasks == ["cell_type_prediction"] and config.split.by == "donor"


def test_named_tasks_the_data_cannot_support_are_refused(pbmc_data):
    with pytest.raises(TaskOptionError, match="spatial_niche_label_prediction.*needs niche_key"):
        build_dataset({"pbmc": pbmc_data.copy()},
                      {"top_k": TOP_K, "tasks": ["spatial_niche_label_prediction"]})
    with pytest.raises(PromptError, match="Unknown prompt task 'cell_typing'"):
        build_dataset({"pbmc": pbmc_data.copy()}, {"tasks": ["cell_typing"]})


# ---------------------------------------------------------------- derived targets and GMT


def test_read_gmt_parses_sets_and_reports_bad_lines(tmp_path):
    path = tmp_path / "sets.gmt"
    path.write_text("A\thttp://x\tG1\tG2\tG1\n\nB\t-\tG3\n", encoding="utf-8")
    assert read_gmt(path) == {"A": ["G1", "G2"], "B": ["G3"]}
    path.write_text("A\t-\tG1\nB only-a-name\n", encoding="utf-8")
    with pytest.raises(GeneSetFileError, match="sets.gmt line 2 is not a GMT gene set"):
        read_gmt(path)


def test_read_gmt_reads_the_msigdb_hallmarks():
    sets = read_gmt(shared_file("genesets/h.all.v7.0.symbols.gmt"))
    assert len(sets) == 50
    assert len(sets["HALLMARK_INTERFERON_ALPHA_RESPONSE"]) == 97


def _facts() -> DatasetFacts:
    return DatasetFacts(n_cells=100, n_genes=50, organism="Homo sapiens", groupby="cell_type",
                        clusters=[ClusterFacts("T", 70, ["CD3D", "IL7R"]),
                                  ClusterFacts("B", 30, ["MS4A1"])],
                        top_expressed=["FTL", "B2M"], marker_method="wilcoxon")


def test_derived_caption_summary_and_answers_read_exactly():
    facts = _facts()
    assert cluster_caption(facts.clusters[0], "cell_type", [("condition", [("ctrl", 3),
                                                                           ("stim", 1)])]) == (
        "Derived from the data: this cluster of 70 cells is labelled T in cell_type; its top "
        "marker genes are CD3D and IL7R. By condition, its cells are ctrl (75%) and stim (25%).")
    assert dataset_summary(facts, tissue="blood") == (
        "Derived from the data: a single-cell dataset of 100 Homo sapiens cells from blood and "
        "50 genes. By cell_type, its cells are T (70%) and B (30%). Marker genes: T: CD3D, "
        "IL7R; B: MS4A1. The most expressed genes are FTL and B2M.")
    pairs = dict(qa_pairs(facts, shown_labels=["T", "B", "T"], label_key="cell_type"))
    assert pairs["Which cell_type group is the largest?"] == (
        "Derived from the data: the largest cell_type group is T with 70 cells (70%).")
    assert pairs["What are the marker genes of B?"] == (
        "Derived from the data: the top marker genes of B against the other cells are MS4A1.")
    assert pairs["Which cell_type group has IL7R among its top marker genes?"] == (
        "Derived from the data: IL7R is a top marker gene of T.")
    assert pairs["What cell_type labels do the cells shown have?"] == (
        "Derived from the data: the 3 cells shown are 2 T and 1 B.")
    assert all(answer.startswith(DERIVED_PREFIX) for answer in pairs.values())
