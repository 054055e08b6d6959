"""The `c2s perturb` and `c2s spatial` commands on a tiny model and real data."""

from __future__ import annotations

import argparse

import anndata
import numpy as np
import pytest
from conftest import shared_file
from scipy.spatial.distance import cdist

from c2s_engine.commands.perturb_spatial import register
from c2s_engine.errors import InteractionTableError, SpatialDataError, TaskOptionError

pytest_plugins = ["tiny_checkpoints"]


@pytest.fixture(scope="module")
def model_dir(build_checkpoint, tmp_path_factory):
    card = {"base": "vandijklab/C2S-Scale-Gemma-2-2B", "context_length": 256, "top_k": 8,
            "tasks": ["perturbation_response", "spatial_*"]}
    return build_checkpoint(tmp_path_factory.mktemp("cli_ps") / "m", "gemma2", card=card)


@pytest.fixture(scope="module")
def kang_h5ad(tmp_path_factory):
    adata = anndata.read_h5ad(shared_file("kang_pbmc_ifnb/kang_pbmc_ifnb.h5ad"))[:20].copy()
    path = tmp_path_factory.mktemp("cli_kang") / "kang.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def osmfish_h5ad(tmp_path_factory):
    adata = anndata.read_h5ad(shared_file("osmfish_sscortex/osmfish_sscortex.h5ad"))
    adata = adata[adata.obs["Valid"] == 1]
    coords = np.asarray(adata.obsm["spatial"])
    nearest = np.argsort(cdist(coords[[100]], coords)[0])[:24]
    path = tmp_path_factory.mktemp("cli_osm") / "osmfish.h5ad"
    adata[np.sort(nearest)].copy().write_h5ad(path)
    return path


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="c2s")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_perturb_writes_predicted_cells_from_the_controls(kang_h5ad, model_dir, tmp_path,
                                                          capsys):
    out = tmp_path / "perturbed.h5ad"
    assert run(["perturb", str(kang_h5ad), "--perturbation", "IFN-beta", "--n", "5",
                "--control-from", "condition", "--control", "control", "--model",
                str(model_dir), "--max-new-tokens", "6", "--seed", "2", "--out", str(out),
                "--quiet"]) == 0
    result = anndata.read_h5ad(out)
    source = anndata.read_h5ad(kang_h5ad)
    controls = set(source.obs_names[source.obs["condition"] == "control"])
    assert result.n_obs == 5 and result.n_vars == source.n_vars
    assert set(result.obs["c2s_control_cell"]) <= controls
    assert result.obs["c2s_generated"].all()
    prov = result.uns["c2s"]["perturb"]
    assert prov["seed"] == 2 and prov["params"]["max_new_tokens"] == 6
    assert prov["params"]["control_key"] == "condition"
    unique = prov["params"]["n_unique_controls"]
    assert f"predicted 5 cells under IFN-beta from {unique} of {len(controls)} control cells" \
        in capsys.readouterr().out


def test_perturb_contrast_options_reach_the_prediction(kang_h5ad, model_dir, tmp_path):
    out = tmp_path / "contrasted.h5ad"
    assert run(["perturb", str(kang_h5ad), "--perturbation", "IFN-beta", "--control-from",
                "condition", "--control", "control", "--contrast-weight", "0.75",
                "--contrast-by", "cell_type", "--model", str(model_dir), "--max-new-tokens",
                "4", "--out", str(out), "--quiet"]) == 0
    params = anndata.read_h5ad(out).uns["c2s"]["perturb"]["params"]
    source = anndata.read_h5ad(kang_h5ad)
    assert params["contrast_weight"] == 0.75 and params["contrast_key"] == "cell_type"
    assert params["n_contrast_cells"] == (source.obs["condition"] == "control").sum()


def test_perturb_control_options_go_together(kang_h5ad, model_dir, tmp_path):
    with pytest.raises(TaskOptionError, match="--control-from and --control go together"):
        run(["perturb", str(kang_h5ad), "--perturbation", "IFN-beta", "--control-from",
             "condition", "--model", str(model_dir), "--out", str(tmp_path / "x.h5ad")])


def test_spatial_writes_graph_niches_and_same_neighborhood_table(osmfish_h5ad, model_dir,
                                                                 tmp_path, capsys):
    table = tmp_path / "pairs.csv"
    table.write_text(",0,1,2\n0,GAD2,SLC32A1,GABA\n1,TGFB1,TGFBR1,TGFb\n", encoding="utf-8")
    out = tmp_path / "spatial.h5ad"
    assert run(["spatial", str(osmfish_h5ad), "--radius", "300", "--niche-labels-from",
                "Region", "--ligrec", str(table), "--ligrec-columns", "0,1", "--n-pairs", "3",
                "--max-cells", "4", "--model", str(model_dir), "--out", str(out),
                "--quiet"]) == 0
    result = anndata.read_h5ad(out)
    assert result.obsp["c2s_spatial_connectivities"].shape == (24, 24)
    assert result.uns["c2s"]["spatial_neighbors"]["radius"] == 300.0
    assert set(result.obs["c2s_niche"].astype(str)) <= set(result.obs["Region"].astype(str))
    niche = result.uns["c2s"]["spatial_niche"]
    assert niche["params"]["ligrec"] and niche["params"]["ligrec_pairs"] == 2
    same = result.uns["c2s"]["spatial_same_neighborhood"]
    assert same["n_positive"] == same["n_negative"] == 3
    printed = capsys.readouterr().out
    assert f"niche accuracy {niche['metrics']['accuracy']:.3f}" in printed
    assert f"same-neighbourhood accuracy {same['accuracy']:.3f} on 6 cell sets" in printed


def test_spatial_errors_are_readable(osmfish_h5ad, kang_h5ad, model_dir, tmp_path):
    out = str(tmp_path / "x.h5ad")
    with pytest.raises(SpatialDataError, match=r"adata.obsm\['spatial'\] is missing"):
        run(["spatial", str(kang_h5ad), "--model", str(model_dir), "--out", out])
    with pytest.raises(InteractionTableError, match="no 'ligand' and 'receptor' columns"):
        bad = tmp_path / "bad.csv"
        bad.write_text("a,b\nX,Y\n", encoding="utf-8")
        run(["spatial", str(osmfish_h5ad), "--ligrec", str(bad), "--model", str(model_dir),
             "--out", out, "--quiet"])
    with pytest.raises(TaskOptionError, match="does not name two columns"):
        run(["spatial", str(osmfish_h5ad), "--ligrec", "x.csv", "--ligrec-columns", "a",
             "--model", str(model_dir), "--out", out])
