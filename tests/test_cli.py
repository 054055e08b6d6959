"""The `c2s` command line: a stable contract other tools call."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import shared_file

from c2s_engine.cli import EXIT_USER_ERROR, main


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


@pytest.fixture
def counts_h5ad(tmp_path):
    """Six cells x five human genes of integer counts with known orders (cell 4 is all zero)."""
    X = np.array(
        [
            [5, 0, 1, 3, 0],
            [0, 2, 0, 0, 7],
            [1, 1, 4, 0, 0],
            [0, 0, 0, 0, 9],
            [0, 0, 0, 0, 0],
            [2, 8, 0, 1, 3],
        ],
        dtype=np.float32,
    )
    adata = ad.AnnData(
        X=sp.csr_matrix(X),
        obs=pd.DataFrame(index=[f"cell,{i}" for i in range(6)]),  # a comma must survive CSV quoting
        var=pd.DataFrame(index=["CD3E", "MS4A1", "LYZ", "NKG7", "GNLY"]),
    )
    path = tmp_path / "counts.h5ad"
    adata.write_h5ad(path)
    return path


def test_sentences_writes_one_row_per_cell_in_input_order(counts_h5ad, tmp_path):
    out = tmp_path / "out.csv"
    assert main(["sentences", str(counts_h5ad), "--top-k", "2", "--out", str(out), "--quiet"]) == 0
    rows = _read_csv(out)
    assert rows[0] == ["cell_id", "cell_sentence"]
    assert [r[0] for r in rows[1:]] == [f"cell,{i}" for i in range(6)]
    assert rows[1][1] == "CD3E NKG7"
    assert rows[2][1] == "GNLY MS4A1"
    first, second = rows[3][1].split()
    assert first == "LYZ" and second in {"CD3E", "MS4A1"}  # CD3E and MS4A1 tie at 1 count
    assert rows[4][1] == "GNLY"
    assert rows[5][1] == ""  # all-zero cell: empty sentence, row still written
    assert rows[6][1] == "MS4A1 GNLY"
    # the seeded tie rule is deterministic across runs
    out2 = tmp_path / "out2.csv"
    main(["sentences", str(counts_h5ad), "--top-k", "2", "--out", str(out2), "--quiet"])
    assert _read_csv(out2) == rows


def test_sentences_index_tie_break_uses_var_order(counts_h5ad, tmp_path):
    out = tmp_path / "out.csv"
    main(["sentences", str(counts_h5ad), "--top-k", "3", "--tie-break", "index", "--out", str(out), "--quiet"])
    assert _read_csv(out)[3] == ["cell,2", "LYZ CD3E MS4A1"]


def test_sentences_match_python_api_on_real_data(tmp_path):
    import c2s_engine as c2s

    path = shared_file("baron_mouse_pancreas/baron_mouse1_pancreas.h5ad")
    out = tmp_path / "baron.csv"
    assert main(["sentences", str(path), "--top-k", "50", "--out", str(out), "--quiet"]) == 0
    rows = _read_csv(out)[1:]

    adata = c2s.read(path)
    c2s.pp.prepare(adata)
    c2s.tl.sentences(adata, top_k=50)
    expected = c2s.get_sentences(adata)
    assert [r[0] for r in rows] == list(adata.obs_names)
    assert [r[1] for r in rows] == expected
    assert all(len(s.split()) <= 50 for s in expected)
    # mouse symbols are kept as they are (title case), never upper-cased
    assert any(w[0].isupper() and w[1:].islower() for w in expected[0].split() if w.isalpha())


def test_inspect_prints_report_and_json(capsys):
    path = shared_file("mouse10x_ensembl/mouse10x_10k_subset_ensembl.h5ad")
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "10000" in text and "Mus musculus" in text and "feature_name" in text

    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_cells"] == 10000
    assert report["n_genes"] == 1000


@pytest.mark.parametrize(
    ("filename", "content", "needle"),
    [
        ("data.xlsx", b"PK\x03\x04 not really", "xlsx"),
        ("data.h5ad", b"cell,CD3E\nc1,1\n", "not hdf5"),
        ("data.csv", b"cell,CD3E,LYZ\nc1,1,abc\n", "abc"),
    ],
)
def test_bad_input_exits_2_with_one_readable_line(tmp_path, capsys, filename, content, needle):
    path = tmp_path / filename
    path.write_bytes(content)
    code = main(["sentences", str(path), "--top-k", "10", "--out", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER_ERROR
    assert len(err.splitlines()) == 1
    assert err.startswith("c2s sentences: error: ")
    assert needle in err.lower()
    assert "Traceback" not in err
    assert not (tmp_path / "o.csv").exists()


def test_ensembl_without_symbols_names_the_fix(tmp_path, capsys):
    adata = ad.AnnData(
        X=sp.csr_matrix(np.array([[1, 0], [0, 3]], dtype=np.float32)),
        var=pd.DataFrame(index=["ENSG00000167286", "ENSG00000105374"]),
    )
    path = tmp_path / "ens.h5ad"
    adata.write_h5ad(path)
    code = main(["sentences", str(path), "--out", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR
    assert "Ensembl" in err and "gene symbols" in err


def test_missing_file_and_bad_top_k(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope.h5ad")]) == EXIT_USER_ERROR
    assert "nope.h5ad" in capsys.readouterr().err
    assert main(["sentences", "x.h5ad", "--top-k", "0", "--out", "o.csv"]) == EXIT_USER_ERROR
    assert "--top-k" in capsys.readouterr().err


def test_console_script_runs_as_a_process(counts_h5ad, tmp_path):
    out = tmp_path / "p.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "c2s_engine.cli", "sentences", str(counts_h5ad), "--top-k", "1",
         "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "cells/s" in proc.stderr
    assert _read_csv(out)[1] == ["cell,0", "CD3E"]
