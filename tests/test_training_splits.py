"""Train/test splits by cell, donor and held-out condition (hand-made AnnData)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from c2s_engine.errors import ObsColumnError, TaskOptionError
from c2s_engine.training.splits import SplitConfig, SplitInfo, split_cells, split_names


def _adata(obs: dict[str, list]) -> AnnData:
    n = len(next(iter(obs.values())))
    return AnnData(X=np.ones((n, 3), dtype=np.float32),
                   obs=pd.DataFrame(obs, index=[f"c{i}" for i in range(n)]))


@pytest.fixture
def cells() -> AnnData:
    # 60 A + 40 B cells; 5 donors of 20 cells; half of each donor stimulated.
    return _adata({
        "cell_type": ["A"] * 60 + ["B"] * 40,
        "donor": [f"d{i // 20}" for i in range(100)],
        "condition": ["stimulated" if i % 2 else "control" for i in range(100)],
    })


def test_cell_split_is_stratified_by_label_and_seeded(cells):
    config = SplitConfig(by="cell", test_fraction=0.25)
    test, held = split_cells(cells, config, seed=3, label_key="cell_type")
    assert held == {}
    labels = cells.obs["cell_type"].to_numpy()
    assert (labels[test] == "A").sum() == 15 and (labels[test] == "B").sum() == 10
    again, _ = split_cells(cells, config, seed=3, label_key="cell_type")
    other, _ = split_cells(cells, config, seed=4, label_key="cell_type")
    np.testing.assert_array_equal(test, again)
    assert (test != other).any()


def test_cell_split_without_labels_takes_the_fraction_of_all_cells(cells):
    test, _ = split_cells(cells, SplitConfig(test_fraction=0.3), seed=0)
    assert test.sum() == 30


def test_cell_split_refuses_an_empty_side():
    with pytest.raises(TaskOptionError, match="leaves one split empty"):
        split_cells(_adata({"x": ["a", "b"]}), SplitConfig(test_fraction=0.1), seed=0)


def test_donor_split_holds_out_whole_donors(cells):
    test, held = split_cells(cells, SplitConfig(by="donor", test_fraction=0.4), seed=0,
                             donor_key="donor")
    donors = cells.obs["donor"].to_numpy()
    assert len(held["donor"]) == 2
    assert set(donors[test]) == set(held["donor"])
    assert not set(donors[~test]) & set(held["donor"])
    assert test.sum() == 40


def test_donor_split_uses_named_donors(cells):
    config = SplitConfig(by="donor", held_out={"donor": ["d4", "d1"]})
    test, held = split_cells(cells, config, donor_key="donor")
    assert held == {"donor": ["d1", "d4"]}
    np.testing.assert_array_equal(np.flatnonzero(test),
                                  np.r_[np.arange(20, 40), np.arange(80, 100)])


def test_donor_split_errors_name_the_problem(cells):
    with pytest.raises(TaskOptionError, match=r"held-out donor\(s\) d9 are not in 'donor'"):
        split_cells(cells, SplitConfig(by="donor", held_out={"donor": "d9"}), donor_key="donor")
    with pytest.raises(TaskOptionError, match="needs the donor column"):
        split_cells(cells, SplitConfig(by="donor"))
    one = _adata({"donor": ["d0"] * 4})
    with pytest.raises(TaskOptionError, match="has 1 donor"):
        split_cells(one, SplitConfig(by="donor"), donor_key="donor")
    with pytest.raises(ObsColumnError, match="'sample' is not in adata.obs"):
        split_cells(cells, SplitConfig(by="donor"), donor_key="sample")


def test_condition_split_holds_out_exactly_the_matching_cells(cells):
    config = SplitConfig(by="condition", held_out={"cell_type": "B", "condition": "stimulated"})
    test, held = split_cells(cells, config)
    assert held == {"cell_type": ["B"], "condition": ["stimulated"]}
    np.testing.assert_array_equal(np.flatnonzero(test), np.arange(61, 100, 2))


def test_condition_split_errors(cells):
    with pytest.raises(TaskOptionError, match=r"no cell has cell_type in \['T'\]"):
        split_cells(cells, SplitConfig(by="condition", held_out={"cell_type": "T"}))
    with pytest.raises(TaskOptionError, match="nothing is left to train on"):
        split_cells(cells, SplitConfig(by="condition", held_out={"cell_type": ["A", "B"]}))
    with pytest.raises(TaskOptionError, match="no cell matches every held-out condition"):
        split_cells(_adata({"a": ["x", "y"], "b": ["u", "v"]}),
                    SplitConfig(by="condition", held_out={"a": "x", "b": "v"}))
    with pytest.raises(ObsColumnError, match="'tissue' is not in adata.obs"):
        split_cells(cells, SplitConfig(by="condition", held_out={"tissue": "lung"}))


@pytest.mark.parametrize(("options", "message"), [
    ({"by": "batch"}, "unknown split method 'batch'"),
    ({"test_fraction": 1.0}, "between 0 and 1"),
    ({"test_fraction": 0}, "between 0 and 1"),
    ({"by": "condition"}, "needs the held-out condition"),
])
def test_split_config_is_checked(options, message):
    with pytest.raises(TaskOptionError, match=message):
        SplitConfig(**options)


def test_split_info_round_trips_through_json(tmp_path):
    adata = _adata({"x": ["a", "b", "c"]})
    info = SplitInfo(method="condition", seed=1, test_fraction=0.2,
                     held_out={"x": ["b"]}, test_cells={"toy": ["c1"]},
                     n_cells={"toy": {"train": 2, "test": 1}}, notes=["a note"])
    loaded = SplitInfo.load(info.save(tmp_path / "split.json"))
    assert loaded == info
    np.testing.assert_array_equal(loaded.test_mask("toy", adata), [False, True, False])
    np.testing.assert_array_equal(loaded.test_mask("other", adata), [False, False, False])


def test_split_names_draws_a_seeded_share():
    names = [f"SET_{i}" for i in range(10)]
    held = split_names(names, 0.3, seed=0)
    assert len(held) == 3 and set(held) <= set(names) and held == sorted(held)
    assert split_names(names, 0.3, seed=0) == held
    assert split_names(["ONLY"], 0.5) == []
    assert len(split_names(["A", "B"], 0.01)) == 1  # at least one, never all


def _tissue() -> AnnData:
    # 10 cells on a line x = 0..9 (y constant); cells 8 and 9 share x = 8 (same spot).
    x = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 8], dtype=float)
    adata = _adata({"region": ["r"] * 10})
    adata.obsm["spatial"] = np.column_stack([x, np.zeros(10)])
    return adata


def test_spatial_split_holds_out_a_stripe_of_tissue_and_records_its_range():
    test, held = split_cells(_tissue(), SplitConfig(by="spatial", test_fraction=0.3), seed=0)
    # The last 30% along x: x >= 7 (cells 7, 8, 9).
    np.testing.assert_array_equal(np.flatnonzero(test), [7, 8, 9])
    assert held == {"obsm['spatial'][:, 0]": ["[7, inf)"]}


def test_spatial_split_stripe_start_and_ties_at_the_border():
    config = SplitConfig(by="spatial", test_fraction=0.2, stripe_start=0.3)
    test, held = split_cells(_tissue(), config, seed=0)
    np.testing.assert_array_equal(np.flatnonzero(test), [3, 4])
    assert held == {"obsm['spatial'][:, 0]": ["[3, 5)"]}
    # A stripe ending inside a group of cells at the same place takes the whole group.
    test, _ = split_cells(_tissue(), SplitConfig(by="spatial", test_fraction=0.1,
                                                 stripe_start=0.8), seed=0)
    np.testing.assert_array_equal(np.flatnonzero(test), [8, 9])


def test_spatial_split_along_y_and_its_errors():
    adata = _tissue()
    adata.obsm["spatial"] = adata.obsm["spatial"][:, ::-1].copy()
    test, held = split_cells(adata, SplitConfig(by="spatial", axis=1, test_fraction=0.5,
                                                stripe_start=0.0), seed=0)
    np.testing.assert_array_equal(np.flatnonzero(test), [0, 1, 2, 3, 4])
    assert held == {"obsm['spatial'][:, 1]": ["[0, 5)"]}
    with pytest.raises(TaskOptionError, match=r"split.axis 2 is not a column"):
        split_cells(adata, SplitConfig(by="spatial", axis=2), seed=0)
    with pytest.raises(TaskOptionError, match=r"obsm\['xy'\] \(obsm keys: spatial\)"):
        split_cells(adata, SplitConfig(by="spatial", spatial_key="xy"), seed=0)
    with pytest.raises(TaskOptionError, match="past the end of the tissue"):
        SplitConfig(by="spatial", test_fraction=0.3, stripe_start=0.8)
